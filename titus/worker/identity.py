"""The verified client certificate's identity, as the worker reports it in HandshakeDone.

The worker only reports; the supervisor decides whether the identity is
admitted (client-allow-*) and logs it.  Python's getpeercert() is empty unless
OpenSSL verified the certificate, so nothing unverified is ever reported.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

from titus.wire import control

# OpenSSL's long attribute names (getpeercert) -> RFC 4514 short names.
_SHORT = {"commonName": "CN", "countryName": "C", "localityName": "L",
          "stateOrProvinceName": "ST", "organizationName": "O",
          "organizationalUnitName": "OU", "streetAddress": "STREET",
          "domainComponent": "DC", "userId": "UID"}
_BUDGET = control.MAX_PACKET - 1024  # room left for the rest of HandshakeDone


def _escape(value: str) -> str:
    """RFC 4514 §2.4: the characters that would break the string, escaped."""
    out = "".join("\\" + ch if ch in ',+"\\<>;=' else ch for ch in value)
    if out.startswith(("#", " ")):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


def rfc4514(subject: tuple[Any, ...]) -> str:
    """getpeercert()'s subject (RDNs in certificate order) as an RFC 4514 string (last RDN
    first)."""
    rdns = ["+".join(f"{_SHORT.get(key, key)}={_escape(str(value))}" for key, value in rdn)
            for rdn in subject]
    return ",".join(reversed(rdns))


def client_identity(tls: ssl.SSLObject) -> dict[str, Any]:
    """client_cn, client_subject, client_dns, client_uri for HandshakeDone (empty without a
    verified certificate); SANs as many as fit in one control message."""
    cert = tls.getpeercert() or {}
    subject = cert.get("subject", ())
    cn = next((str(value) for rdn in subject for key, value in rdn if key == "commonName"),
              None)
    sans: dict[str, list[str]] = {"DNS": [], "URI": []}
    used = 0
    for kind, value in cert.get("subjectAltName", ()):
        if kind in sans and len(sans[kind]) < control.MAX_SANS:
            used += len(json.dumps(value)) + 1
            if used > _BUDGET // 2:
                break
            sans[kind].append(str(value))
    return {
        "client_cn": cn[:256] if cn else None,
        "client_subject": rfc4514(subject)[:1024] if subject else None,
        "client_dns": tuple(name[:253] for name in sans["DNS"]),
        "client_uri": tuple(uri[:1024] for uri in sans["URI"]),
    }
