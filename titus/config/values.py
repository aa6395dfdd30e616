"""Parsers for single option values, from their titus.conf text form.

Each parser raises BadValue with a short reason; the caller adds the file,
line, option name and value.  They are strict where titus 0.4 was lax
(``atoi`` took "443abc" as 443) because a typo should stop start-up, not
change its meaning.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
import ssl

from titus.config.model import IPAddress, LogFormat, ProxyProtocol, Transparency


class BadValue(Exception):
    """An option value that cannot be used; the message says why."""


_TRUE = {"yes", "true", "on"}
_FALSE = {"no", "false", "off"}
_DIGITS = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
_SERVICE = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,31}")
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def parse_bool(text: str) -> bool:
    """titus 0.4's yes/no: yes/true/on, no/false/off (any case), or a number."""
    word = text.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    if _DIGITS.fullmatch(text):
        return int(text) > 0
    raise BadValue("expected yes or no")


def parse_int(text: str, minimum: int, maximum: int) -> int:
    if not _DIGITS.fullmatch(text):
        raise BadValue("expected a whole number")
    value = int(text)
    if not minimum <= value <= maximum:
        raise BadValue(f"must be between {minimum} and {maximum}")
    return value


def parse_seconds(text: str, maximum: float = 86_400.0) -> float:
    """A positive duration in seconds; 0 is refused (in titus 0.4 it meant "no limit")."""
    if not _DECIMAL.fullmatch(text):
        raise BadValue("expected a number of seconds")
    value = float(text)
    if not 0 < value <= maximum:
        raise BadValue(f"must be more than 0 and at most {maximum:g} seconds")
    return value


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    """A TCP port number, or a service name from /etc/services (as titus's getaddrinfo)."""
    if _DIGITS.fullmatch(text):
        return parse_int(text, 0 if allow_zero else 1, 65535)
    if _SERVICE.fullmatch(text):
        try:
            return socket.getservbyname(text, "tcp")
        except OSError:
            raise BadValue("not a port number or a known TCP service name") from None
    raise BadValue("expected a port number (1-65535)")


def parse_ip(text: str) -> IPAddress:
    """An IP literal (IPv6 may be in brackets); IPv4-mapped IPv6 becomes IPv4."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise BadValue("expected an IP address (host names are not accepted here)") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_dns_name(text: str) -> str:
    """A DNS host name (IDNA allowed), returned in lower-case A-label form."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        raise BadValue("not a valid host name")
    try:
        name = name.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise BadValue("not a valid host name") from None
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise BadValue("not a valid host name")
    return name


def parse_host(text: str) -> str:
    """A backend host: an IP literal (normalised) or a DNS name, resolved at connect time."""
    try:
        return str(parse_ip(text))
    except BadValue:
        pass
    if ":" in text or text.startswith("["):
        raise BadValue("not a valid IP address")
    return parse_dns_name(text)


def parse_sni_name(text: str) -> str:
    """An SNI pattern: a host name, "*.domain" (one label), or literal "" for no SNI."""
    if text == '""':
        return ""
    try:
        parse_ip(text)
    except BadValue:
        pass
    else:
        raise BadValue("clients never send an IP address as SNI; use local-address instead")
    if text.startswith("*."):
        return "*." + parse_dns_name(text[2:])
    if "*" in text:
        raise BadValue('a wildcard must be a whole first label, as in "*.example.com"')
    return parse_dns_name(text)


def parse_listen(text: str) -> tuple[IPAddress, int | None]:
    """ADDRESS, ADDRESS:PORT, [IPV6]:PORT or *:PORT (* = every address, dual-stack)."""
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise BadValue("missing ']' after an IPv6 address")
        host, rest = text[: close + 1], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise BadValue("expected ':PORT' after ']'")
            port = parse_port(rest[1:], allow_zero=True)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = parse_port(port_text, allow_zero=True)
    if host == "*":
        return ipaddress.IPv6Address("::"), port
    return parse_ip(host), port


def parse_endpoint(text: str) -> tuple[IPAddress, int]:
    """Like parse_listen, but the port is required (e.g. the metrics endpoint)."""
    address, port = parse_listen(text)
    if port is None:
        raise BadValue("expected ADDRESS:PORT")
    return address, port


def parse_transparent(text: str) -> Transparency:
    if text.lower() == "backend-only":
        return "backend-only"
    try:
        return "yes" if parse_bool(text) else "no"
    except BadValue:
        raise BadValue("expected yes, no or backend-only") from None


def parse_proxy_protocol(text: str) -> ProxyProtocol | None:
    word = text.lower()
    if word in ("v1", "v2"):
        return "v1" if word == "v1" else "v2"
    if word in _FALSE:
        return None
    raise BadValue("expected v1, v2 or no")


_TLS_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
_OLD_TLS = {"1.0", "1", "tlsv1", "tlsv1.0", "1.1", "tlsv1.1", "sslv3", "3.0", "sslv2"}


def parse_tls_version(text: str) -> ssl.TLSVersion:
    word = text.lower()
    if word in _TLS_VERSIONS:
        return _TLS_VERSIONS[word]
    if word in _OLD_TLS:
        raise BadValue("versions below TLS 1.2 are insecure and not supported")
    raise BadValue("expected 1.2 or 1.3")


def parse_log_format(text: str) -> LogFormat:
    word = text.lower()
    if word == "json":
        return "json"
    if word == "text":
        return "text"
    if word == "auto":
        return "auto"
    raise BadValue("expected json, text or auto")


def split_list(text: str, separators: str) -> list[str]:
    items = [item.strip() for item in re.split(f"[{re.escape(separators)}]", text)]
    if not all(items):
        raise BadValue("empty item in the list")
    if len(set(items)) != len(items):
        raise BadValue("an item is listed twice")
    return items


# OpenSSL group names we offer, and the aliases operators use for them.
SUPPORTED_CURVES = ("X25519", "X448", "prime256v1", "secp384r1", "secp521r1")
_CURVE_ALIASES = {
    "x25519": "X25519",
    "x448": "X448",
    "prime256v1": "prime256v1",
    "secp256r1": "prime256v1",
    "p-256": "prime256v1",
    "secp384r1": "secp384r1",
    "p-384": "secp384r1",
    "secp521r1": "secp521r1",
    "p-521": "secp521r1",
}


@functools.cache
def _openssl_knows_curve(name: str) -> bool:
    from titus.worker.contexts import openssl_knows_groups  # ctypes on OpenSSL: only when asked

    return openssl_knows_groups(name)


def parse_curves(text: str) -> tuple[str, ...]:
    """ecdhcurve: one curve (titus 0.4) or an OpenSSL-style list "X25519:prime256v1"."""
    curves = []
    for item in split_list(text, ":,"):
        name = _CURVE_ALIASES.get(item.lower())
        if name is None:
            raise BadValue(f"unsupported curve {item}; use one of {', '.join(SUPPORTED_CURVES)}")
        if not _openssl_knows_curve(name):
            raise BadValue(f"this OpenSSL ({ssl.OPENSSL_VERSION}) does not support {name}")
        curves.append(name)
    if len(set(curves)) != len(curves):
        raise BadValue("a curve is listed twice")
    return tuple(curves)


TLS13_SUITES = (
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
)


def parse_ciphersuites(text: str) -> str:
    suites = split_list(text, ":")
    for suite in suites:
        if suite not in TLS13_SUITES:
            raise BadValue(f"unknown TLS 1.3 suite {suite}; known: {', '.join(TLS13_SUITES)}")
    return ":".join(suites)


def parse_alpn(text: str) -> tuple[str, ...]:
    protocols = split_list(text, ",")
    for protocol in protocols:
        if not protocol.isascii() or not protocol.isprintable() or " " in protocol:
            raise BadValue("ALPN protocol names are printable ASCII without spaces")
        if len(protocol) > 255:
            raise BadValue("an ALPN protocol name is at most 255 bytes")
    return tuple(protocols)


def parse_cipher_string(text: str) -> str:
    """Syntax only; what the string selects is checked once the dhgroup is known."""
    if not text.isascii() or not text.isprintable():
        raise BadValue("an OpenSSL cipher string is printable ASCII")
    return text


def parse_client_auth(text: str) -> str:
    word = text.lower()
    if word not in ("none", "optional", "required"):
        raise BadValue("expected none, optional or required")
    return word


def parse_client_cn(text: str) -> str:
    """A client certificate's subject CN, as written in it (spaces allowed)."""
    if not text.isprintable() or len(text) > 256:
        raise BadValue("expected a common name: printable, at most 256 characters")
    return text


def parse_client_dns(text: str) -> str:
    """A DNS name a client certificate may carry as a SAN (compared without case)."""
    return parse_dns_name(text)


def parse_client_uri(text: str) -> str:
    """A URI SAN, e.g. spiffe://example.org/service (compared exactly)."""
    scheme, colon, rest = text.partition(":")
    if not colon or not rest or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise BadValue("expected a URI with a scheme, e.g. spiffe://example.org/service")
    if not text.isascii() or not text.isprintable() or " " in text or len(text) > 1024:
        raise BadValue("a URI is printable ASCII without spaces, at most 1024 characters")
    return text


def parse_name(text: str) -> str:
    """A user, group or vhost name: printable, no whitespace."""
    if not text.isprintable() or any(ch.isspace() for ch in text) or len(text) > 255:
        raise BadValue("expected a name without spaces")
    return text
