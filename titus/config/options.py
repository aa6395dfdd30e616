"""Every option both formats understand, and the draft they are applied to.

An option is applied from its titus.conf text form (TOML values are turned
into that form first), so each value has one parser and one meaning whatever
the format.  Values land in a mutable Draft together with the file and line
that set them; config_build turns the Draft into the frozen model, so the
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
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from titus.config import values as v
from titus.config.model import ConfigError, IPAddress, Notice, ProxyProtocol, Source, one_line

T = TypeVar("T")


@dataclass
class Sourced(Generic[T]):
    value: T
    source: Source


@dataclass
class TLSDraft:
    min_version: Sourced[ssl.TLSVersion] | None = None
    max_version: Sourced[ssl.TLSVersion] | None = None
    ciphers: Sourced[str] | None = None
    ciphersuites: Sourced[str] | None = None
    curves: Sourced[tuple[str, ...]] | None = None
    dhgroup: Sourced[tuple[str, Path | None]] | None = None
    honor_client_cipher_order: Sourced[bool] | None = None
    alpn: Sourced[tuple[str, ...]] | None = None
    client_auth: Sourced[str] | None = None
    client_ca: Sourced[Path] | None = None
    client_crl: Sourced[Path] | None = None
    client_allow_cn: Sourced[tuple[str, ...]] | None = None
    client_allow_dns: Sourced[tuple[str, ...]] | None = None
    client_allow_uri: Sourced[tuple[str, ...]] | None = None


@dataclass
class VHostDraft:
    """A vhost block, or (as Draft.defaults) the global section it inherits from."""

    source: Source
    name: Sourced[str] | None = None
    local_address: Sourced[IPAddress | None] | None = None
    local_port: Sourced[int] | None = None
    sni_names: list[Sourced[str]] = field(default_factory=list)
    cert: Sourced[Path] | None = None
    key: Sourced[Path] | None = None
    backend: Sourced[str] | None = None
    backend_port: Sourced[int] | None = None
    backend_h2: Sourced[bool] | None = None
    proxy_protocol: Sourced[ProxyProtocol | None] | None = None
    ocsp_response: Sourced[Path] | None = None
    tls: TLSDraft = field(default_factory=TLSDraft)


@dataclass
class Draft:
    """Everything read so far; ``main`` is where whole-configuration errors point."""

    main: Source
    defaults: VHostDraft
    vhosts: list[VHostDraft] = field(default_factory=list)
    listen: list[Sourced[tuple[IPAddress, int | None]]] = field(default_factory=list)
    settings: dict[str, Sourced[Any]] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    @classmethod
    def new(cls, main: Source) -> Draft:
        return cls(main=main, defaults=VHostDraft(source=main))


Scope = Literal["global", "any", "vhost"]
Handler = Callable[[Draft, VHostDraft, str, Source, Path], None]
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


def resolve_path(text: str, base: Path) -> Path:
    """A path from a config value; relative ones are relative to ``base``."""
    if "\0" in text:
        raise v.BadValue("a path cannot contain a NUL character")
    try:
        os.fsencode(text)  # argv's undecodable bytes (U+DC80..) pass; other lone surrogates not
    except UnicodeEncodeError:
        raise v.BadValue("a path must be valid text (it has a lone surrogate)") from None
    path = Path(text)
    return path if path.is_absolute() else base / path


def _setting(name: str, parse: Callable[[str], Any]) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        draft.settings[name] = Sourced(parse(text), src)

    return handler


def _path_setting(name: str) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        draft.settings[name] = Sourced(resolve_path(text, base), src)

    return handler


def _field(attr: str, parse: Callable[[str], Any]) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        setattr(target, attr, Sourced(parse(text), src))

    return handler


def _path_field(attr: str) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        setattr(target, attr, Sourced(resolve_path(text, base), src))

    return handler


def _tls_path(attr: str) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        setattr(target.tls, attr, Sourced(resolve_path(text, base), src))

    return handler


def _tls(attr: str, parse: Callable[[str], Any]) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        setattr(target.tls, attr, Sourced(parse(text), src))

    return handler


def _tls_each(attr: str, parse: Callable[[str], str]) -> Handler:
    """A repeatable TLS option: each line (or TOML list item) adds one value; a vhost that
    sets its own list replaces the inherited one."""
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        value = parse(text)
        before = getattr(target.tls, attr)
        if before is None:
            setattr(target.tls, attr, Sourced((value,), src))
        elif value in before.value:
            raise v.BadValue("listed twice")
        else:
            before.value = (*before.value, value)

    return handler


def _listen(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    draft.listen.append(Sourced(v.parse_listen(text), src))


def _sni_name(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    # titus 0.4 kept only the last sni-name of a vhost; we keep them all (any may match).
    target.sni_names.append(Sourced(v.parse_sni_name(text), src))


def _local_address(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    address = v.parse_ip(text)
    # The wildcard address matched every connection in titus 0.4; say so explicitly.
    target.local_address = Sourced(None if address.is_unspecified else address, src)


def _dhgroup(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    """titus 0.4's RFC 3526 group numbers 14/15/16, or (extension) a DH parameter file."""
    if text.isdigit() and text not in ("14", "15", "16"):
        raise v.BadValue("unknown DH group; use 14, 15, 16 or the path of a DH parameter file")
    path = None if text in ("14", "15", "16") else resolve_path(text, base)
    target.tls.dhgroup = Sourced((text, path), src)


def _tls12(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    # "tlsv1.2 no" leaves only TLS 1.3; "yes" restores the 1.2 minimum.
    version = ssl.TLSVersion.TLSv1_2 if v.parse_bool(text) else ssl.TLSVersion.TLSv1_3
    target.tls.min_version = Sourced(version, src)


def _tls13(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    version = ssl.TLSVersion.TLSv1_3 if v.parse_bool(text) else ssl.TLSVersion.TLSv1_2
    target.tls.max_version = Sourced(version, src)


def _refuse_yes(reason: str) -> Handler:
    """Accept "no" (already our behaviour); refuse "yes" with the reason."""
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        if v.parse_bool(text):
            raise v.BadValue(reason)

    return handler


def _superseded(name: str, why: str) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        value = v.parse_name(text)
        draft.notices.append(Notice(src, f"{name} {value}: superseded and ignored: {why}"))

    return handler


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
        return _refuse_yes(reason + "; remove the line")

    old_tls = "is below the TLS 1.2 minimum and is not supported"
    table = [
        # titus 0.4 options, in titus(8) order.
        Option("config", "global", None, "each"),
        Option("config-directory", "global", None, "each"),
        Option("daemon", "global", _setting("daemon", v.parse_bool), "bool"),
        Option("pid-file", "global", _path_setting("pid-file"), "str"),
        Option("port", "global", _setting("port", lambda t: v.parse_port(t, allow_zero=True)),
               "port"),
        Option("transparent", "global", _setting("transparent", v.parse_transparent), "str"),
        Option("backend", "any", _field("backend", v.parse_host), "str"),
        Option("backend-port", "any", _field("backend_port", v.parse_port), "port"),
        Option("min-spare-children", "global",
               _setting("min-spare-children", count(0, 100_000)), "int"),
        Option("max-children", "global", _setting("max-children", count(1, 100_000)), "int"),
        Option("max-handshake-time", "global",
               _setting("max-handshake-time", seconds(3600.0)), "seconds"),
        Option("network-user", "global", _superseded("network-user", _NETWORK_USER), None),
        Option("network-group", "global", _superseded("network-group", _NETWORK_USER), None),
        Option("keyserver-user", "global", _superseded("keyserver-user", _KEYSERVER_USER), None),
        Option("keyserver-group", "global", _superseded("keyserver-group", _KEYSERVER_USER),
               None),
        Option("chroot", "global", _superseded("chroot", _CHROOT), None),
        Option("key", "any", _path_field("key"), "str"),
        Option("cert", "any", _path_field("cert"), "str"),
        Option("ciphers", "any", _tls("ciphers", v.parse_cipher_string), "list"),
        Option("honor-client-cipher-order", "any",
               _tls("honor_client_cipher_order", v.parse_bool), "bool"),
        Option("dhgroup", "any", _dhgroup, "dh"),
        Option("ecdhcurve", "any", _tls("curves", v.parse_curves), "list"),
        Option("compression", "any",
               refuse("TLS compression leaks secrets (CRIME) and is refused"), None),
        Option("sslv3", "any", refuse("SSLv3 is broken (POODLE) and is not supported"), None),
        Option("tlsv1", "any", refuse(f"TLS 1.0 {old_tls}"), None),
        Option("tlsv1.1", "any", refuse(f"TLS 1.1 {old_tls}"), None),
        Option("tlsv1.2", "any", _tls12, None),
        Option("local-address", "vhost", _local_address, "str"),
        Option("local-port", "vhost", _field("local_port", v.parse_port), "port"),
        Option("sni-name", "vhost", _sni_name, "each"),
        # Extensions (titus 0.5).
        Option("name", "vhost", _field("name", v.parse_name), "str"),
        Option("listen", "global", _listen, None),
        Option("tlsv1.3", "any", _tls13, None),
        Option("min-tls-version", "any", _tls("min_version", v.parse_tls_version), "str"),
        Option("max-tls-version", "any", _tls("max_version", v.parse_tls_version), "str"),
        Option("ciphersuites", "any", _tls("ciphersuites", v.parse_ciphersuites), "list"),
        Option("alpn", "any", _tls("alpn", v.parse_alpn), "list", separator=","),
        Option("backend-h2", "any", _field("backend_h2", v.parse_bool), "bool"),
        Option("client-auth", "any", _tls("client_auth", v.parse_client_auth), "str"),
        Option("client-ca", "any", _tls_path("client_ca"), "str"),
        Option("client-crl", "any", _tls_path("client_crl"), "str"),
        Option("client-allow-cn", "any", _tls_each("client_allow_cn", v.parse_client_cn),
               "each"),
        Option("client-allow-dns", "any", _tls_each("client_allow_dns", v.parse_client_dns),
               "each"),
        Option("client-allow-uri", "any", _tls_each("client_allow_uri", v.parse_client_uri),
               "each"),
        Option("proxy-protocol", "any", _field("proxy_protocol", v.parse_proxy_protocol), "str"),
        Option("ocsp-response", "any", _path_field("ocsp_response"), "str"),
        Option("backend-connect-timeout", "global",
               _setting("backend-connect-timeout", seconds(3600.0)), "seconds"),
        Option("dns-timeout", "global", _setting("dns-timeout", seconds(600.0)), "seconds"),
        Option("drain-timeout", "global", _setting("drain-timeout", seconds(86400.0)),
               "seconds"),
        Option("log-format", "global", _setting("log-format", v.parse_log_format), "str"),
        Option("metrics-listen", "global", _setting("metrics-listen", v.parse_endpoint), "str"),
        Option("keyholder-budget", "global", _setting("keyholder-budget", count(1, 16)), "int"),
        Option("keyholder-timeout", "global", _setting("keyholder-timeout", seconds(60.0)),
               "seconds"),
        Option("uid-first", "global", _setting("uid-first", count(1, 2**32 - 2)), "int",
               conf=False),
        Option("uid-count", "global", _setting("uid-count", count(1, 2**32 - 2)), "int",
               conf=False),
    ]
    return {option.name: option for option in table}


OPTIONS = _options()
INCLUDES = ("config", "config-directory")
IncludeFn = Callable[[str, str, Source, Path], None]


def shown(text: str, limit: int = 200) -> str:
    """A value as quoted in an error message: one line, not too long."""
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
