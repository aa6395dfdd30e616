"""The configuration model: what the supervisor, workers and key holder consume.

Both file formats (titus 0.4's ``titus.conf`` and the native ``titus.toml``)
end up as these frozen dataclasses, so nothing downstream knows or cares which
format an operator wrote.  Everything here is already validated and complete:
inheritance from the global section is resolved, paths are absolute, and
defaults are filled in.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Transparency = Literal["no", "yes", "backend-only"]
ProxyProtocol = Literal["v1", "v2"]
LogFormat = Literal["json", "text", "auto"]

# Mozilla "intermediate" (v5.7) TLS <= 1.2 suites, forward-secret ECDHE only.
DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
# Mozilla's DHE suites; added to the default only when a dhgroup is configured.
DEFAULT_DHE_CIPHERS = (
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
DEFAULT_CURVES = ("X25519", "prime256v1", "secp384r1")

# Same defaults as sandbox.spec.UidRange: 64 Ki host uids for jails.
DEFAULT_UID_FIRST = 200_000
DEFAULT_UID_COUNT = 65_536


@dataclass(frozen=True)
class Source:
    """Where a setting came from, for error messages: a file and a 1-based line.

    Line 0 means "the file as a whole" (e.g. a setting that is missing from it) and
    is written as the file name alone: no message cites a line 0.
    Command-line settings use the file name ``<command line>`` and the number of
    the ``--option`` argument as the line.
    """

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


def one_line(text: str) -> str:
    """Escape everything that could break a log line or a terminal (newlines, controls)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


class ConfigError(ValueError):
    """A configuration problem; ``str()`` is one line, ``FILE:LINE: message``."""

    def __init__(self, source: Source, message: str) -> None:
        self.source = source
        self.message = one_line(message)
        super().__init__(f"{one_line(str(source))}: {self.message}")


@dataclass(frozen=True)
class Notice:
    """Something the operator should know, logged once at start-up; not an error."""

    source: Source
    message: str

    def __str__(self) -> str:
        return f"{one_line(str(self.source))}: {one_line(self.message)}"


@dataclass(frozen=True)
class Listener:
    """One listening socket.

    ``dual_stack`` is true only for the wildcard ``::`` when no ``0.0.0.0``
    listener shares its port: the socket then clears IPV6_V6ONLY and accepts
    IPv4 too, as titus 0.4 did.  Every other IPv6 listener sets IPV6_V6ONLY.
    Port 0 lets the kernel pick a port (useful for tests).
    """

    address: IPAddress
    port: int
    dual_stack: bool = False
    source: Source | None = field(default=None, compare=False)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.address.version == 6 else socket.AF_INET

    @property
    def sockaddr(self) -> tuple[str, int] | tuple[str, int, int, int]:
        if self.address.version == 6:
            return (str(self.address), self.port, 0, 0)
        return (str(self.address), self.port)

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class DHGroup:
    """Finite-field Diffie-Hellman parameters for DHE (public data).

    ``pem`` is PKCS#3 "BEGIN DH PARAMETERS", ready for a temporary file and
    ``SSLContext.load_dh_params``.  ``name`` is "rfc3526-14" (titus's named
    groups 14/15/16) or the path of the file it was read from.
    """

    name: str
    bits: int
    pem: bytes = field(repr=False)
    path: Path | None = None


@dataclass(frozen=True)
class TLSSettings:
    """TLS parameters of one vhost.  TLS compression is always off (CRIME).

    ``ciphers`` is an OpenSSL cipher string for TLS <= 1.2 and is already the
    effective one: when an operator supplied it, the builder appended
    exclusions (RSA key exchange, anonymous/null, PSK/SRP, static DH/ECDH,
    RC4/DES/3DES/MD5, and DHE unless a dhgroup is set) because a worker signs
    through the key holder and can never decrypt.  ``ciphersuites`` (TLS 1.3)
    None means OpenSSL's default.  ``curves`` is in preference order, OpenSSL
    names.  ``alpn`` empty means no ALPN.
    """

    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str = DEFAULT_CIPHERS
    ciphersuites: str | None = None
    curves: tuple[str, ...] = DEFAULT_CURVES
    dhgroup: DHGroup | None = None
    honor_client_cipher_order: bool = False
    alpn: tuple[str, ...] = ()
    # Client certificates: "none", "optional" (verified when sent) or "required".
    client_auth: Literal["none", "optional", "required"] = "none"
    client_ca: Path | None = None
    client_crl: Path | None = None  # PEM CRLs of client_ca, checked for the leaf
    # Identities admitted (any one listed suffices); all empty: any certificate client_ca
    # signed.  Decided by the supervisor on the worker's report (supervisor/clientid.py).
    client_allow_cn: tuple[str, ...] = ()
    client_allow_dns: tuple[str, ...] = ()  # lower case
    client_allow_uri: tuple[str, ...] = ()

    @property
    def client_allow_list(self) -> bool:
        return bool(self.client_allow_cn or self.client_allow_dns or self.client_allow_uri)

    def __post_init__(self) -> None:
        if self.min_version < ssl.TLSVersion.TLSv1_2:
            raise ValueError("TLS versions below 1.2 are not supported")
        if self.max_version < self.min_version:
            raise ValueError("max_version is below min_version")
        if self.client_auth != "none" and self.client_ca is None:
            raise ValueError("client-auth needs client-ca")


def _unmap(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 (what a dual-stack socket reports) -> plain IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_server_name(name: str | None) -> str:
    """A client's SNI as we compare it: lower case, no trailing dot, "" if absent."""
    if not name:
        return ""
    return name.rstrip(".").lower()


def sni_matches(pattern: str, server_name: str) -> bool:
    """Exact (case-insensitive) match, or "*.example.com" for exactly one label."""
    if pattern.startswith("*."):
        head, dot, tail = server_name.partition(".")
        return bool(head) and bool(dot) and tail == pattern[2:]
    return pattern == server_name


@dataclass(frozen=True)
class VHost:
    """One virtual host: how connections are matched and where they go.

    Matching (titus 0.4 order): a vhost matches a connection when its
    ``local_address`` and ``local_port`` (None = any) equal the connection's
    local (or, in transparent mode, original destination) address and port,
    and its ``sni_names`` (empty = any) contain the client's server name;
    "" in ``sni_names`` matches a client that sent no SNI.

    ``backend_host`` None means "the local address the client connected to"
    (titus 0.4's behaviour when ``backend`` is omitted).  With
    ``transparent = "yes"`` both backend fields are None: the backend is the
    client's original destination.  ``key`` is only a path: nothing but the
    key holder ever opens it.
    """

    name: str
    cert: Path
    key: Path
    backend_host: str | None
    backend_port: int | None
    tls: TLSSettings = field(default_factory=TLSSettings)
    local_address: IPAddress | None = None
    local_port: int | None = None
    sni_names: tuple[str, ...] = ()
    proxy_protocol: ProxyProtocol | None = None
    # The backend speaks HTTP/2 in cleartext: only then may ALPN offer clients h2.
    backend_h2: bool = False
    # A DER OCSP response file to staple (re-read when it changes); None: no stapling.
    ocsp_response: Path | None = None
    source: Source = field(default=Source("<built-in>", 0), compare=False)
    key_source: Source = field(default=Source("<built-in>", 0), compare=False)
    # Where each setting in effect was written (option name -> file and line), so an
    # error found after loading (a backend that does not resolve) names its line.
    lines: tuple[tuple[str, Source], ...] = field(default=(), compare=False)

    def where(self, option: str) -> Source:
        """The line that set `option` for this vhost (its own or the global one), else
        the vhost's."""
        return next((src for name, src in self.lines if name == option), self.source)

    def matches_local(self, address: IPAddress | str, port: int) -> bool:
        if (
            self.local_address is not None
            and _unmap(ipaddress.ip_address(address)) != self.local_address
        ):
            return False
        return self.local_port is None or self.local_port == port

    def matches_sni(self, server_name: str | None) -> bool:
        if not self.sni_names:
            return True
        wanted = normalize_server_name(server_name)
        return any(sni_matches(pattern, wanted) for pattern in self.sni_names)



@dataclass(frozen=True)
class Config:
    """The whole validated configuration.

    ``vhosts`` are in file order and the first match wins.  Timeouts are in
    seconds.  ``uid_first``/``uid_count`` is the host uid range from which
    every live worker (and the key holder) gets its own uid.
    ``keyholder_budget`` is the number of signatures one connection may ask
    for.  ``sources`` lists every configuration file read, ``notices`` what
    the supervisor should log at start-up (superseded titus 0.4 options,
    cipher suites removed, unreachable vhosts).
    """

    listeners: tuple[Listener, ...]
    vhosts: tuple[VHost, ...]
    min_spare_children: int = 3
    max_children: int = 1000  # docs/sizing.md: what a worker costs, and what limits this
    max_handshake_time: float = 10.0
    transparent: Transparency = "no"
    daemon: bool = False
    pid_file: Path | None = None
    uid_first: int = DEFAULT_UID_FIRST
    uid_count: int = DEFAULT_UID_COUNT
    keyholder_budget: int = 1
    keyholder_timeout: float = 2.0
    backend_connect_timeout: float = 10.0
    dns_timeout: float = 5.0
    dns_refresh: float = 60.0  # backend names re-resolved in the background this often
    drain_timeout: float = 30.0  # SIGTERM: how long connections in flight may still run
    log_format: LogFormat = "auto"
    metrics_listen: Listener | None = None
    sources: tuple[Path, ...] = ()
    notices: tuple[Notice, ...] = ()

