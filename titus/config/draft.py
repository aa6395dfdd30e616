"""What the configuration readers fill in: every setting read so far, each with the file and
line that set it, and the handlers by which an option's text lands there.

Both readers (titus.conf, titus.toml) apply options through the table in
`titus.config.options`; `titus.config.build` turns the Draft into the frozen
model, so the last setting wins and an error about a missing or bad file can
name its line.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from titus.config import values as v
from titus.config.model import IPAddress, Notice, ProxyProtocol, Source, one_line

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


Handler = Callable[[Draft, VHostDraft, str, Source, Path], None]


def shown(text: str, limit: int = 200) -> str:
    """A value as quoted in an error message: one line, not too long."""
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


# ---------------------------------------------------------------------------
# Handlers: how one option's text lands in the draft


def setting(name: str, parse: Callable[[str], Any]) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        draft.settings[name] = Sourced(parse(text), src)

    return handler


def path_setting(name: str) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        draft.settings[name] = Sourced(resolve_path(text, base), src)

    return handler


def vhost_field(attr: str, parse: Callable[[str], Any]) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        setattr(target, attr, Sourced(parse(text), src))

    return handler


def vhost_path(attr: str) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        setattr(target, attr, Sourced(resolve_path(text, base), src))

    return handler


def tls_path(attr: str) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        setattr(target.tls, attr, Sourced(resolve_path(text, base), src))

    return handler


def tls_field(attr: str, parse: Callable[[str], Any]) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        setattr(target.tls, attr, Sourced(parse(text), src))

    return handler


def tls_each(attr: str, parse: Callable[[str], str]) -> Handler:
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


def listen(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    draft.listen.append(Sourced(v.parse_listen(text), src))


def sni_name(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    # titus 0.4 kept only the last sni-name of a vhost; we keep them all (any may match).
    target.sni_names.append(Sourced(v.parse_sni_name(text), src))


def local_address(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    address = v.parse_ip(text)
    # The wildcard address matched every connection in titus 0.4; say so explicitly.
    target.local_address = Sourced(None if address.is_unspecified else address, src)


def dhgroup(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    """titus 0.4's RFC 3526 group numbers 14/15/16, or (extension) a DH parameter file."""
    if text.isdigit() and text not in ("14", "15", "16"):
        raise v.BadValue("unknown DH group; use 14, 15, 16 or the path of a DH parameter file")
    path = None if text in ("14", "15", "16") else resolve_path(text, base)
    target.tls.dhgroup = Sourced((text, path), src)


def tls12(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    # "tlsv1.2 no" leaves only TLS 1.3; "yes" restores the 1.2 minimum.
    version = ssl.TLSVersion.TLSv1_2 if v.parse_bool(text) else ssl.TLSVersion.TLSv1_3
    target.tls.min_version = Sourced(version, src)


def tls13(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
    version = ssl.TLSVersion.TLSv1_3 if v.parse_bool(text) else ssl.TLSVersion.TLSv1_2
    target.tls.max_version = Sourced(version, src)


def refuse_yes(reason: str) -> Handler:
    """Accept "no" (already our behaviour); refuse "yes" with the reason."""
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        if v.parse_bool(text):
            raise v.BadValue(reason)

    return handler


def superseded(name: str, why: str) -> Handler:
    def handler(draft: Draft, target: VHostDraft, text: str, src: Source, base: Path) -> None:
        value = v.parse_name(text)
        draft.notices.append(Notice(src, f"{name} {value}: superseded and ignored: {why}"))

    return handler
