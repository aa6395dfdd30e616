"""titus 0.4's DH groups 14/15/16: derived from pi, checked against OpenSSL and for safety."""

from __future__ import annotations

import random
import ssl
import subprocess
from pathlib import Path

import pytest

from titus.config.dh import (
    RFC3526_GROUPS,
    _parse_dh_pem,
    load_dh_file,
    named_group,
    pkcs3_pem,
    rfc3526_prime,
)
from titus.config.values import BadValue


def probably_prime(n: int, rounds: int = 8) -> bool:
    """Miller-Rabin with fixed-seed random bases."""
    if n % 2 == 0:
        return n == 2
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(n)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_group_14_matches_rfc_3526_text() -> None:
    p = f"{rfc3526_prime('14'):X}"
    assert p.startswith("FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1")
    assert p.endswith("15728E5A8AACAA68FFFFFFFFFFFFFFFF")


@pytest.mark.parametrize("group", sorted(RFC3526_GROUPS))
def test_groups_are_safe_primes_of_the_right_size(group: str) -> None:
    p = rfc3526_prime(group)
    assert p.bit_length() == RFC3526_GROUPS[group][0]
    assert probably_prime(p, 4) and probably_prime((p - 1) // 2, 4)


@pytest.mark.parametrize(("group", "name"), [("14", "modp_2048"), ("15", "modp_3072"),
                                               ("16", "modp_4096")])
def test_groups_are_byte_identical_to_openssl(group: str, name: str) -> None:
    out = subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", f"group:{name}"],
        check=True, capture_output=True,
    ).stdout
    assert named_group(group).pem == out


def test_named_group_loads_into_python_ssl(tmp_path: Path) -> None:
    path = tmp_path / "dh.pem"
    path.write_bytes(named_group("14").pem)
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_dh_params(str(path))
    group = load_dh_file(path)
    assert (group.bits, group.path, group.pem) == (2048, path, named_group("14").pem)


def test_x942_parameters_are_read(tmp_path: Path) -> None:
    out = subprocess.run(
        ["openssl", "genpkey", "-genparam", "-algorithm", "DHX", "-pkeyopt", "dh_rfc5114:2"],
        check=True, capture_output=True,
    ).stdout
    assert out.startswith(b"-----BEGIN X9.42 DH PARAMETERS-----")
    p, g = _parse_dh_pem(out)
    assert p.bit_length() == 2048 and 1 < g < p and g.bit_length() > 224  # g, not q
    path = tmp_path / "x942.pem"
    path.write_bytes(out)
    assert load_dh_file(path).pem == pkcs3_pem(p, g)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"-----BEGIN DH PARAMETERS-----\n!!!\n-----END DH PARAMETERS-----\n",
         "not a PEM file of DH parameters"),
        (b"-----BEGIN DH PARAMETERS-----\nMAA=\n-----END DH PARAMETERS-----\n",
         "malformed DH parameters"),
        (b"-----BEGIN DH PARAMETERS-----\nMAYCAQUCAQI=\n-----END DH PARAMETERS-----\n",
         "3-bit DH is too weak"),
        (pkcs3_pem(rfc3526_prime("14"), 1), "bad generator"),
    ],
)
def test_bad_parameter_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "dh.pem"
    path.write_bytes(content)
    with pytest.raises(BadValue, match=message):
        load_dh_file(path)
