"""The TLS 1.2 cipher string titus uses: the operator's, with what a worker cannot serve or
should not offer always removed.

A worker signs through the key holder and can never decrypt, so RSA key exchange
is out; static (EC)DH would need the key in the worker; DHE needs a dhgroup.
"""

from __future__ import annotations

import ssl

from titus.config.values import BadValue

# Appended to an operator's cipher string: a worker signs through the key holder
# and can never decrypt (no RSA key exchange), static (EC)DH needs the key in the
# worker, and the rest is broken.  DHE additionally needs a dhgroup.
FORCED_EXCLUSIONS = (
    ":!aNULL:!eNULL:!kRSA:!PSK:!SRP:!aDSS:!kECDHr:!kECDHe:!kDHr:!kDHd"
    ":!RC4:!DES:!3DES:!MD5:!EXP"
)
NO_DHE = ":!kDHE"


def _tls12_suites(cipher_string: str) -> list[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(cipher_string)
    except ssl.SSLError:
        return []
    return [c["name"] for c in context.get_ciphers() if c["protocol"] != "TLSv1.3"]


def effective_ciphers(text: str, with_dhe: bool, tls13_only: bool) -> tuple[str, list[str]]:
    """(cipher string to use, suites of the operator's string that it drops)."""
    wanted = _tls12_suites(text)
    if not wanted:
        raise BadValue("selects no cipher suite this OpenSSL knows")
    effective = text + FORCED_EXCLUSIONS + ("" if with_dhe else NO_DHE)
    kept = set(_tls12_suites(effective))
    if not kept and not tls13_only:
        raise BadValue(
            "leaves no usable TLS 1.2 suite: RSA key exchange, static DH, null and broken "
            "ciphers are always removed, DHE too unless a dhgroup is set; use ECDHE suites"
        )
    return effective, [name for name in wanted if name not in kept]
