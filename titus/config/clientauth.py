"""Client-certificate settings of a vhost: who may connect, checked before anything starts.

client-auth asks for a certificate signed by client-ca; client-crl revokes some
of them (OpenSSL checks it during the handshake, in the worker); the
client-allow-* lists admit only some identities (the supervisor decides, on the
worker's report: supervisor/clientid.py).  A setting that could not work is an
error naming its line: an allow-list with an optional certificate (a client
would simply send none), a CRL that client-ca did not sign or that leaves a
client-ca certificate without one (OpenSSL would refuse all its clients).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from titus.config.draft import Sourced, shown
from titus.config.files import rfc3339
from titus.config.model import ConfigError, Notice

MAX_CRL_FILE = 16 * 1024 * 1024
_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)
Pick = Callable[[str], "Sourced[Any] | None"]


def client_settings(pick: Pick, notices: list[Notice]) -> dict[str, Any]:
    """The client_* fields of TLSSettings from what the vhost (or the global section) set."""
    auth, ca, crl = pick("client_auth"), pick("client_ca"), pick("client_crl")
    allow = {kind: pick(f"client_allow_{kind}") for kind in ("cn", "dns", "uri")}
    mode = auth.value if auth else "none"
    if mode != "none" and ca is None:
        assert auth is not None
        raise ConfigError(auth.source, f"client-auth {mode} needs client-ca (the CA file "
                                       "that signs client certificates)")
    for kind, chosen in allow.items():
        if chosen is not None and mode != "required":
            raise ConfigError(chosen.source, f"client-allow-{kind} needs client-auth required "
                                             "(with optional, a client could send no "
                                             "certificate at all)")
    if crl is not None and mode == "none":
        raise ConfigError(crl.source, "client-crl needs client-auth optional or required")
    if mode == "none":
        return {"client_auth": "none", "client_ca": None}
    assert ca is not None
    try:
        authorities = x509.load_pem_x509_certificates(ca.value.read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(ca.source, f"client-ca {ca.value}: not a readable PEM "
                                     f"certificate file ({e})") from None
    if crl is not None:
        check_crl(crl, authorities, notices)
    return {
        "client_auth": mode, "client_ca": ca.value,
        "client_crl": crl.value if crl else None,
        "client_allow_cn": allow["cn"].value if allow["cn"] else (),
        "client_allow_dns": tuple(n.lower() for n in allow["dns"].value) if allow["dns"] else (),
        "client_allow_uri": allow["uri"].value if allow["uri"] else (),
    }


def read_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """Every CRL of a PEM file; ValueError (one line) if there is none or one is broken."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CRL_FILE + 1)
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror or e}") from None
    if len(data) > MAX_CRL_FILE:
        raise ValueError("larger than 16 MiB")
    blocks = _CRL_BLOCK.findall(data)
    if not blocks:
        raise ValueError("no PEM CRL (-----BEGIN X509 CRL-----) in it")
    try:
        return [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError as e:
        raise ValueError(f"a CRL in it cannot be parsed ({e})") from None


def check_crl(crl: Sourced[Path], authorities: list[x509.Certificate],
              notices: list[Notice]) -> None:
    where = f"client-crl {shown(str(crl.value))}"
    try:
        crls = read_crls(crl.value)
    except ValueError as e:
        raise ConfigError(crl.source, f"{where}: {e}") from None
    covered = set()
    now = datetime.datetime.now(datetime.UTC)
    for one in crls:
        issuer = next((ca for ca in authorities if ca.subject == one.issuer
                       and one.is_signature_valid(ca.public_key())), None)  # type: ignore[arg-type]
        if issuer is None:
            raise ConfigError(crl.source, f"{where}: the CRL of {one.issuer.rfc4514_string()} "
                                          "is not signed by a client-ca certificate")
        covered.add(issuer.subject)
        if one.next_update_utc is not None and one.next_update_utc < now:
            notices.append(Notice(crl.source, f"{where}: the CRL of "
                                              f"{one.issuer.rfc4514_string()} is out of date "
                                              f"(nextUpdate {rfc3339(one.next_update_utc)}): "
                                              "every client it covers is refused until a "
                                              "fresh one is loaded (SIGHUP)"))
    missing = [ca.subject.rfc4514_string() for ca in authorities if ca.subject not in covered]
    if missing:
        raise ConfigError(crl.source, f"{where}: no CRL for the client-ca certificate "
                                      f"{missing[0]}: every client it signed would be refused")
