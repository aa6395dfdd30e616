"""Every option both formats understand: its scope, how its value lands in the draft
(titus.config.draft), its TOML form, and its line of help -- the one source for
`titus --help`, docs/options.md and titus(8).

An option is applied from its titus.conf text form (TOML values are turned
into that form first), so each value has one parser and one meaning whatever
the format.  Values land in a mutable Draft together with the file and line
that set them; titus.config.build turns the Draft into the frozen model, so the
last setting wins and errors about a missing or bad file can name the line.

titus 0.4 options that our design makes unnecessary are accepted and recorded
as notices, without checking their value against the system (a user, group
or directory we will never use cannot make start-up fail):

* network-user, network-group: every worker runs under its own dynamic uid
  from the jail range, in its own user namespace.
* keyserver-user, keyserver-group: the key holder runs under a uid of its own
  from the same range, in its own user namespace.
* chroot: every jail gets an empty read-only root of its own.

Options whose "yes" would weaken TLS (sslv3, tlsv1, tlsv1.1, compression) are
accepted with "no" and refused with "yes", saying why.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from titus.config import draft as d
from titus.config import values as v
from titus.config.draft import Draft, Handler, VHostDraft, shown
from titus.config.model import ConfigError, Source

Scope = Literal["global", "any", "vhost"]
# The TOML value kind of an option: "str", "int", "bool", "seconds", "port", "list",
# "each" (a string or a list, applied once per item), or None if not in titus.toml.
TomlKind = Literal["str", "int", "bool", "seconds", "port", "list", "each", "dh"] | None


@dataclass(frozen=True)
class Option:
    name: str
    scope: Scope
    handler: Handler | None  # None: config/config-directory, handled by the readers
    toml: TomlKind
    conf: bool = True  # False: titus.toml only
    separator: str = ":"  # joins a TOML list into the text form
    help: str = field(kw_only=True)  # one line, for --help and the docs


_NETWORK_USER = (
    "every worker runs under its own dynamic uid from the jail uid range, "
    "in its own user namespace"
)
_KEYSERVER_USER = "the key holder runs under its own uid from the jail uid range"
_CHROOT = "every jail gets an empty read-only root of its own"


def _options() -> dict[str, Option]:
    def seconds(maximum: float) -> Callable[[str], float]:
        return lambda t: v.parse_seconds(t, maximum)

    def count(minimum: int, maximum: int) -> Callable[[str], int]:
        return lambda t: v.parse_int(t, minimum, maximum)

    def refuse(reason: str) -> Handler:
        return d.refuse_yes(reason + "; remove the line")

    old_tls = "is below the TLS 1.2 minimum and is not supported"
    table = [
        # titus 0.4 options, in titus(8) order.
        Option("config", "global", None, "each",
               help="include another configuration file (titus.conf, or TOML if it ends in "
                    ".toml)"),
        Option("config-directory", "global", None, "each",
               help="include every non-hidden file of a directory, in name order"),
        Option("daemon", "global", d.setting("daemon", v.parse_bool), "bool",
               help="yes: detach after start-up succeeded (errors still reach the shell)"),
        Option("pid-file", "global", d.path_setting("pid-file"), "str",
               help="write the supervisor's pid here (daemon mode)"),
        Option("port", "global", d.setting("port", lambda t: v.parse_port(t, allow_zero=True)),
               "port",
               help="port to listen on for listeners that name none (default address [::], "
                    "dual-stack)"),
        Option("transparent", "global", d.setting("transparent", v.parse_transparent), "str",
               help="no | yes (backend = the client's original destination, source kept; needs "
                    "a TPROXY rule) | backend-only (source kept); both need CAP_NET_ADMIN and "
                    "the backend's replies to clients routed back to titus (fwmark rule)"),
        Option("backend", "any", d.vhost_field("backend", v.parse_host), "str",
               help="backend address: IP or DNS name (resolved at start-up and reload, then "
                    "every dns-refresh seconds in the background); omitted = the local address "
                    "the client connected to"),
        Option("backend-port", "any", d.vhost_field("backend_port", v.parse_port), "port",
               help="backend port"),
        Option("min-spare-children", "global",
               d.setting("min-spare-children", count(0, 100_000)), "int",
               help="idle, already jailed workers kept ready (default 3)"),
        Option("max-children", "global", d.setting("max-children", count(1, 100_000)), "int",
               help="connections served at once, one worker each (default 1000); more wait in "
                    "the listen backlog (logged and counted; docs/sizing.md says how to size it)"),
        Option("max-handshake-time", "global",
               d.setting("max-handshake-time", seconds(3600.0)), "seconds",
               help="seconds a client may take to finish its TLS handshake (default 10)"),
        Option("network-user", "global", d.superseded("network-user", _NETWORK_USER), None,
               help="superseded: every worker gets its own dynamic uid (accepted, ignored)"),
        Option("network-group", "global", d.superseded("network-group", _NETWORK_USER), None,
               help="superseded: every worker gets its own dynamic gid (accepted, ignored)"),
        Option("keyserver-user", "global", d.superseded("keyserver-user", _KEYSERVER_USER), None,
               help="superseded: the key holder runs under its own jail uid (accepted, ignored)"),
        Option("keyserver-group", "global", d.superseded("keyserver-group", _KEYSERVER_USER),
               None,
               help="superseded: the key holder runs under its own jail gid (accepted, ignored)"),
        Option("chroot", "global", d.superseded("chroot", _CHROOT), None,
               help="superseded: every jail has an empty read-only root (accepted, ignored)"),
        Option("key", "any", d.vhost_path("key"), "str",
               help="private key (PEM, RSA 2048-4096 or ECDSA P-256/P-384); only the key "
                    "holder opens it"),
        Option("cert", "any", d.vhost_path("cert"), "str",
               help="certificate chain (PEM, leaf first)"),
        Option("ciphers", "any", d.tls_field("ciphers", v.parse_cipher_string), "list",
               help="TLS 1.2 cipher suites (OpenSSL syntax); RSA key exchange is always removed"),
        Option("honor-client-cipher-order", "any",
               d.tls_field("honor_client_cipher_order", v.parse_bool), "bool",
               help="yes: the client's preference order wins (default no)"),
        Option("dhgroup", "any", d.dhgroup, "dh",
               help="14, 15, 16 (RFC 3526) or a DH parameter file: enables DHE suites"),
        Option("ecdhcurve", "any", d.tls_field("curves", v.parse_curves), "list",
               help="key-exchange groups in order, e.g. X25519:prime256v1"),
        Option("compression", "any",
               refuse("TLS compression leaks secrets (CRIME) and is refused"), None,
               help="must be no: TLS compression leaks secrets (CRIME)"),
        Option("sslv3", "any", refuse("SSLv3 is broken (POODLE) and is not supported"), None,
               help="must be no: SSLv3 is broken (POODLE)"),
        Option("tlsv1", "any", refuse(f"TLS 1.0 {old_tls}"), None,
               help="must be no: TLS 1.0 is below the TLS 1.2 minimum"),
        Option("tlsv1.1", "any", refuse(f"TLS 1.1 {old_tls}"), None,
               help="must be no: TLS 1.1 is below the TLS 1.2 minimum"),
        Option("tlsv1.2", "any", d.tls12, None,
               help="no: TLS 1.3 only"),
        Option("local-address", "vhost", d.local_address, "str",
               help="vhost: match connections to this local IP address"),
        Option("local-port", "vhost", d.vhost_field("local_port", v.parse_port), "port",
               help="vhost: match connections to this local port"),
        Option("sni-name", "vhost", d.sni_name, "each",
               help="vhost: match this server name (repeatable; *.example.com matches one "
                    "label)"),
        # Extensions (titus 0.5).
        Option("name", "vhost", d.vhost_field("name", v.parse_name), "str",
               help="vhost: a name for logs and metrics"),
        Option("listen", "global", d.listen, None,
               help="ADDRESS:PORT to listen on (repeatable; [v6]:port for IPv6)"),
        Option("tlsv1.3", "any", d.tls13, None,
               help="no: TLS 1.2 only"),
        Option("min-tls-version", "any", d.tls_field("min_version", v.parse_tls_version), "str",
               help="1.2 or 1.3"),
        Option("max-tls-version", "any", d.tls_field("max_version", v.parse_tls_version), "str",
               help="1.2 or 1.3"),
        Option("ciphersuites", "any", d.tls_field("ciphersuites", v.parse_ciphersuites), "list",
               help="TLS 1.3 cipher suites (OpenSSL syntax)"),
        Option("alpn", "any", d.tls_field("alpn", v.parse_alpn), "list", separator=",",
               help="ALPN protocols offered, comma separated, e.g. http/1.1; h2 only with "
                    "backend-h2 yes"),
        Option("backend-h2", "any", d.vhost_field("backend_h2", v.parse_bool), "bool",
               help="yes: the backend speaks HTTP/2 in cleartext (prior knowledge), so alpn "
                    "may offer h2; without it h2 is refused (an HTTP/1.1 backend would answer "
                    "h2 clients with nothing)"),
        Option("client-auth", "any", d.tls_field("client_auth", v.parse_client_auth), "str",
               help="none | optional | required: ask clients for a certificate, verified "
                    "against client-ca; the identity goes to the backend in PROXY v2"),
        Option("client-ca", "any", d.tls_path("client_ca"), "str",
               help="CA certificates (PEM) that client certificates must chain to"),
        Option("client-crl", "any", d.tls_path("client_crl"), "str",
               help="revoked client certificates: a PEM file of CRLs issued by client-ca, "
                    "re-read on every reload (SIGHUP); a revoked certificate fails the "
                    "handshake"),
        Option("client-allow-cn", "any", d.tls_each("client_allow_cn", v.parse_client_cn),
               "each",
               help="only clients whose certificate's subject CN is this (repeatable; with "
                    "client-allow-dns/-uri: any one listed identity admits); needs client-auth "
                    "required; a refused client is logged with its subject"),
        Option("client-allow-dns", "any", d.tls_each("client_allow_dns", v.parse_client_dns),
               "each",
               help="only clients whose certificate has this DNS name SAN (repeatable, "
                    "case-insensitive); see client-allow-cn"),
        Option("client-allow-uri", "any", d.tls_each("client_allow_uri", v.parse_client_uri),
               "each",
               help="only clients whose certificate has this URI SAN, e.g. "
                    "spiffe://example.org/web (repeatable, exact); see client-allow-cn"),
        Option("proxy-protocol", "any",
               d.vhost_field("proxy_protocol", v.parse_proxy_protocol), "str",
               help="v1 | v2 | no: send a PROXY header to the backend (written by the "
                    "supervisor, never by a worker)"),
        Option("ocsp-response", "any", d.vhost_path("ocsp_response"), "str",
               help="a DER OCSP response file to staple for this vhost's certificate; re-read "
                    "when it changes (an expired or mismatching one is not stapled)"),
        Option("backend-connect-timeout", "global",
               d.setting("backend-connect-timeout", seconds(3600.0)), "seconds",
               help="seconds to connect to a backend (default 10)"),
        Option("dns-timeout", "global", d.setting("dns-timeout", seconds(600.0)), "seconds",
               help="seconds to resolve a backend name; A and AAAA are asked separately "
                    "(default 5)"),
        Option("dns-refresh", "global", d.setting("dns-refresh", seconds(86400.0)), "seconds",
               help="seconds between background re-resolutions of backend names, never on "
                    "a connection's path; a family (A or AAAA) that does not answer keeps its "
                    "addresses (default 60)"),
        Option("drain-timeout", "global", d.setting("drain-timeout", seconds(86400.0)),
               "seconds",
               help="seconds connections in flight may still run after SIGTERM before they are "
                    "cut (default 30)"),
        Option("log-format", "global", d.setting("log-format", v.parse_log_format), "str",
               help="json | text | auto (text on a terminal)"),
        Option("metrics-listen", "global", d.setting("metrics-listen", v.parse_endpoint), "str",
               help="ADDRESS:PORT of the Prometheus endpoint (GET /metrics)"),
        Option("keyholder-budget", "global", d.setting("keyholder-budget", count(1, 16)), "int",
               help="signatures one connection may ask of the key holder (default 1)"),
        Option("keyholder-timeout", "global", d.setting("keyholder-timeout", seconds(60.0)),
               "seconds",
               help="seconds a worker waits for a signature (default 2)"),
        Option("uid-first", "global", d.setting("uid-first", count(1, 2**32 - 2)), "int",
               conf=False,
               help="first host uid of the jail range (titus.toml [jail] only)"),
        Option("uid-count", "global", d.setting("uid-count", count(1, 2**32 - 2)), "int",
               conf=False,
               help="number of host uids in the jail range (titus.toml [jail] only)"),
    ]
    return {option.name: option for option in table}


OPTIONS = _options()
INCLUDES = ("config", "config-directory")
IncludeFn = Callable[[str, str, Source, Path], None]


def unknown_option(name: str, src: Source, candidates: list[str], where: str = "option") -> None:
    message = f"unknown {where} '{shown(name, 40)}'"
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean '{close[0]}'?"
    raise ConfigError(src, message)


def apply_option(
    draft: Draft,
    name: str,
    text: str,
    src: Source,
    base: Path,
    *,
    vhost: VHostDraft | None,
    include: IncludeFn | None,
    fmt: Literal["conf", "toml"] = "conf",
    label: str | None = None,
) -> None:
    """Apply one ``name value`` setting to the global section or to ``vhost``.

    ``label`` is how the operator spelled the option (a TOML key), for messages.
    """
    option = OPTIONS.get(name)
    shown_name = label or name
    if option is None or (fmt == "conf" and not option.conf):
        if option is not None:
            raise ConfigError(src, f"{name} can only be set in titus.toml (section [jail])")
        unknown_option(name, src, [o.name for o in OPTIONS.values() if o.conf])
        return
    if vhost is not None and option.scope == "global":
        raise ConfigError(
            src, f"{name} is a global option and cannot be set inside a vhost block"
        )
    if vhost is None and option.scope == "vhost":
        raise ConfigError(src, f"{name} is only valid inside a vhost block")
    if text == "":
        raise ConfigError(src, f"{shown_name}: missing value")
    try:
        if option.handler is None:
            if include is None:
                raise v.BadValue("includes are not allowed here")
            include(name, text, src, base)
        else:
            option.handler(draft, vhost or draft.defaults, text, src, base)
    except v.BadValue as e:
        raise ConfigError(src, f"{shown_name} {shown(text)}: {e}") from None


def cwd() -> Path:
    """Base directory for relative paths given on the command line."""
    return Path(os.getcwd())


def options_text(width: int = 26) -> str:
    """`--option  help` lines for every titus.conf option, in the table's order."""
    lines = []
    for name, option in OPTIONS.items():
        if option.conf:
            lines.append(f"  --{name:<{width}} {option.help}")
    return "\n".join(lines)
