"""titus/keyholder/keyrules.py: the configuration check, read_chain and the key holder's store
refuse the same keys, in the same words."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.titus.test_config_support import make_cert
from titus.config.files import check_cert_file
from titus.config.values import BadValue
from titus.keyholder.signer import KeyStore, KeyStoreError
from titus.worker.remotekey import RemoteKeyError, read_chain

REFUSED = [
    ("ed25519", 2048, "Ed25519 keys are not supported (use RSA 2048-4096 or ECDSA P-256/P-384)"),
    ("ec-k256", 2048, "EC curve secp256k1 is not supported (use P-256 or P-384)"),
    ("ec-p521", 2048, "EC curve secp521r1 is not supported (use P-256 or P-384)"),
    ("rsa", 1024, "RSA-1024 is not supported (RSA keys must have 2048 to 4096 bits)"),
    ("rsa", 4104, "RSA-4104 is not supported (RSA keys must have 2048 to 4096 bits)"),
]


def refusals(cert: Path, key: Path) -> list[str]:
    """What each of the three says of one certificate and its key."""
    said = []
    try:
        check_cert_file(cert, key)
    except BadValue as e:
        said.append(str(e))
    try:
        read_chain(cert)
    except RemoteKeyError as e:
        said.append(str(e).removeprefix(f"{cert}: "))
    try:
        KeyStore().add(1, key.read_bytes(), cert.read_bytes(), key_name=str(key))
    except KeyStoreError as e:
        said.append(str(e).removeprefix(f"{key}: "))
    return said


@pytest.mark.parametrize(("kind", "bits", "message"), REFUSED)
def test_all_three_refuse_alike(tmp_path: Path, kind: str, bits: int, message: str) -> None:
    cert, key = make_cert(tmp_path, kind=kind, bits=bits)
    assert refusals(cert, key) == [message] * 3


@pytest.mark.parametrize(("kind", "bits"), [("rsa", 2048), ("rsa", 4096), ("ec", 0)])
def test_all_three_accept_alike(tmp_path: Path, kind: str, bits: int) -> None:
    cert, key = make_cert(tmp_path, kind=kind, bits=bits or 2048)
    assert refusals(cert, key) == []
    chain = read_chain(cert)
    info = KeyStore().add(1, key.read_bytes(), cert.read_bytes())
    assert (chain.kind, chain.bits, chain.curve) == (info.kind, info.bits, info.curve)
