"""Turn a Draft into the frozen Config: inheritance, defaults, file checks, cross-checks
(the cipher string is ciphers.py's, the notices for dead vhosts reach.py's).

Inheritance is titus 0.4's: each vhost setting that a vhost block leaves out
comes from the global section, wherever in the file that global line stands
(titus applied the global values after reading everything).  If there is no
vhost block at all, one implicit vhost matches every connection and uses the
global settings.  Files are checked for the values that are finally in
effect only, so an overridden path that does not exist is no error.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import ssl
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from titus.config.ciphers import effective_ciphers
from titus.config.clientauth import client_settings
from titus.config.dh import resolve_dhgroup
from titus.config.draft import Draft, Sourced, TLSDraft, VHostDraft, shown
from titus.config.files import check_cert_file, check_key_file, validity_problem
from titus.config.model import (
    DEFAULT_CIPHERS,
    DEFAULT_DHE_CIPHERS,
    Config,
    ConfigError,
    DHGroup,
    Listener,
    Notice,
    Source,
    TLSSettings,
    VHost,
)
from titus.config.reach import unreachable
from titus.config.values import BadValue
from titus.supervisor.ocsp import OCSPError, parse_response, read_response_file

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)}
# TLSDraft attribute -> option name, where they differ by more than "_" for "-".
_TLS_OPTION = {"min_version": "min-tls-version", "max_version": "max-tls-version",
               "curves": "ecdhcurve"}
_UNSPECIFIED_V4 = ipaddress.IPv4Address("0.0.0.0")
_UNSPECIFIED_V6 = ipaddress.IPv6Address("::")


class _Builder:
    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self.notices: list[Notice] = list(draft.notices)
        self.dh_cache: dict[tuple[str, Path | None], DHGroup] = {}
        self.checked_certs: set[tuple[Path, Path]] = set()
        self.checked_keys: set[Path] = set()
        self.checked_ocsp: set[Path] = set()

    def setting(self, name: str) -> Sourced[Any] | None:
        return self.draft.settings.get(name)

    def value(self, name: str, attr: str) -> Any:
        sourced = self.draft.settings.get(name)
        return _DEFAULTS[attr] if sourced is None else sourced.value

    def where(self, name: str) -> Source:
        sourced = self.draft.settings.get(name)
        return self.draft.main if sourced is None else sourced.source

    # --- listeners ---------------------------------------------------------

    def listeners(self) -> tuple[Listener, ...]:
        port = self.setting("port")
        wanted: list[tuple[Any, int, Source]] = []
        if not self.draft.listen:
            if port is None:
                raise ConfigError(self.draft.main, "no port to listen on; set `port` (e.g. 443)")
            wanted.append((_UNSPECIFIED_V6, port.value, port.source))
        for entry in self.draft.listen:
            address, entry_port = entry.value
            if entry_port is None:
                if port is None:
                    raise ConfigError(
                        entry.source, f"listen {address}: no port given and `port` is not set"
                    )
                entry_port = port.value
            wanted.append((address, entry_port, entry.source))
        seen: set[tuple[Any, int]] = set()
        for address, entry_port, source in wanted:
            if (address, entry_port) in seen:
                raise ConfigError(source, f"listen {address} port {entry_port}: listed twice")
            seen.add((address, entry_port))
        return tuple(
            Listener(
                address,
                entry_port,
                dual_stack=address == _UNSPECIFIED_V6 and (_UNSPECIFIED_V4, entry_port) not in seen,
                source=source,
            )
            for address, entry_port, source in wanted
        )

    # --- vhosts ------------------------------------------------------------

    def dhgroup(self, chosen: Sourced[tuple[str, Path | None]]) -> DHGroup:
        key = chosen.value
        if key not in self.dh_cache:
            try:
                self.dh_cache[key] = resolve_dhgroup(*key)
            except BadValue as e:
                raise ConfigError(chosen.source, f"dhgroup {shown(key[0])}: {e}") from None
        return self.dh_cache[key]

    def tls(self, own: TLSDraft, inherited: TLSDraft) -> TLSSettings:
        def pick(attr: str) -> Sourced[Any] | None:
            return getattr(own, attr) or getattr(inherited, attr)

        base = TLSSettings()
        low, high = pick("min_version"), pick("max_version")
        min_version = low.value if low else base.min_version
        max_version = high.value if high else base.max_version
        if min_version > max_version:
            source = (high or low).source  # type: ignore[union-attr]
            raise ConfigError(
                source,
                f"no TLS version left: the minimum ({min_version.name}) is above the maximum "
                f"({max_version.name})",
            )
        chosen_dh = pick("dhgroup")
        dh = self.dhgroup(chosen_dh) if chosen_dh else None
        chosen_ciphers = pick("ciphers")
        if chosen_ciphers is None:
            ciphers = DEFAULT_CIPHERS + (":" + DEFAULT_DHE_CIPHERS if dh else "")
        else:
            try:
                ciphers, removed = effective_ciphers(
                    chosen_ciphers.value, dh is not None, min_version >= ssl.TLSVersion.TLSv1_3
                )
            except BadValue as e:
                raise ConfigError(
                    chosen_ciphers.source, f"ciphers {shown(chosen_ciphers.value)}: {e}"
                ) from None
            if removed:
                listed = ", ".join(removed[:6]) + (", ..." if len(removed) > 6 else "")
                self.notices.append(
                    Notice(
                        chosen_ciphers.source,
                        f"ciphers: {len(removed)} suite(s) removed (no forward secrecy, "
                        f"not servable by the key holder, or broken): {listed}",
                    )
                )

        def value(attr: str) -> Any:
            chosen = pick(attr)
            return getattr(base, attr) if chosen is None else chosen.value

        return TLSSettings(
            min_version=min_version,
            max_version=max_version,
            ciphers=ciphers,
            ciphersuites=value("ciphersuites"),
            curves=value("curves"),
            dhgroup=dh,
            honor_client_cipher_order=value("honor_client_cipher_order"),
            alpn=value("alpn"),
            **client_settings(pick, self.notices),
        )

    def files(self, cert: Sourced[Path], key: Sourced[Path]) -> None:
        if key.value not in self.checked_keys:
            try:
                check_key_file(key.value)
            except BadValue as e:
                raise ConfigError(key.source, f"key {shown(str(key.value))}: {e}") from None
            self.checked_keys.add(key.value)
        if (cert.value, key.value) not in self.checked_certs:
            try:
                leaf = check_cert_file(cert.value, key.value)
            except BadValue as e:
                raise ConfigError(cert.source, f"cert {shown(str(cert.value))}: {e}") from None
            self.checked_certs.add((cert.value, key.value))
            problem = validity_problem(leaf)
            if problem:
                self.notices.append(Notice(cert.source, f"cert {shown(str(cert.value))}: "
                                                        f"{problem}"))

    def ocsp_file(self, chosen: Sourced[Path]) -> None:
        """It must exist and be an OCSP response; whether it fits the certificate and is
        still valid is checked when it is loaded, and again whenever it changes."""
        if chosen.value in self.checked_ocsp:
            return
        try:
            parse_response(read_response_file(chosen.value))
        except OCSPError as e:
            raise ConfigError(chosen.source,
                              f"ocsp-response {shown(str(chosen.value))}: {e}") from None
        self.checked_ocsp.add(chosen.value)

    def vhost(self, own: VHostDraft, index: int, implicit: bool) -> VHost:
        inherited = self.draft.defaults

        def pick(attr: str) -> Sourced[Any] | None:
            return getattr(own, attr) or getattr(inherited, attr)

        sni_names = tuple(dict.fromkeys(s.value for s in own.sni_names))
        if own.name is not None:
            name = own.name.value
        elif implicit:
            name = "default"
        else:
            name = next((s for s in sni_names if s), f"vhost{index + 1}")
        what = "" if implicit else f"vhost {name}: "
        where = "globally" if implicit else "in this vhost or globally"
        cert, key = pick("cert"), pick("key")
        if cert is None:
            raise ConfigError(own.source, f"{what}no cert; set `cert` {where}")
        if key is None:
            raise ConfigError(own.source, f"{what}no key; set `key` {where}")
        self.files(cert, key)
        backend, backend_port = pick("backend"), pick("backend_port")
        transparent = self.value("transparent", "transparent")
        if transparent == "yes":
            for given in (backend, backend_port):
                if given is not None:
                    raise ConfigError(
                        given.source,
                        "backend and backend-port cannot be set with `transparent yes`: the "
                        "backend is the client's original destination",
                    )
        elif backend_port is None:
            raise ConfigError(own.source, f"{what}no backend-port; set `backend-port` {where}")
        proxy = pick("proxy_protocol")
        backend_h2 = pick("backend_h2")
        ocsp_response = pick("ocsp_response")
        if ocsp_response is not None:
            self.ocsp_file(ocsp_response)
        local_address = own.local_address.value if own.local_address else None
        lines = {name: chosen.source for name, chosen in (
            ("cert", cert), ("key", key), ("backend", backend), ("backend-port", backend_port),
            ("proxy-protocol", proxy), ("ocsp-response", ocsp_response),
            ("backend-h2", backend_h2)) if chosen is not None}
        for attr in vars(own.tls):
            chosen = getattr(own.tls, attr) or getattr(inherited.tls, attr)
            if chosen is not None:
                lines[_TLS_OPTION.get(attr, attr.replace("_", "-"))] = chosen.source
        tls = self.tls(own.tls, inherited.tls)
        speaks_h2 = bool(backend_h2 and backend_h2.value)
        if "h2" in tls.alpn and not speaks_h2:
            raise ConfigError(
                lines["alpn"],
                f"{what}alpn offers h2, but the backend is not declared to speak HTTP/2: "
                "clients that choose h2 would get empty replies from an HTTP/1.1 backend; "
                "leave h2 out, or set `backend-h2 yes` if the backend speaks cleartext HTTP/2",
            )
        return VHost(
            name=name,
            cert=cert.value,
            key=key.value,
            backend_host=backend.value if backend else None,
            backend_port=backend_port.value if backend_port else None,
            tls=tls,
            local_address=local_address,
            local_port=own.local_port.value if own.local_port else None,
            sni_names=sni_names,
            proxy_protocol=proxy.value if proxy else None,
            backend_h2=speaks_h2,
            ocsp_response=ocsp_response.value if ocsp_response else None,
            source=own.source,
            key_source=key.source,
            lines=tuple(lines.items()),
        )

    def vhosts(self) -> tuple[VHost, ...]:
        drafts = self.draft.vhosts
        if not drafts:
            return (self.vhost(VHostDraft(source=self.draft.main), 0, implicit=True),)
        built: list[VHost] = []
        names: dict[str, VHost] = {}
        for index, own in enumerate(drafts):
            vhost = self.vhost(own, index, implicit=False)
            if vhost.name in names:
                if own.name is not None:
                    first = names[vhost.name]
                    raise ConfigError(
                        own.name.source,
                        f"vhost name {vhost.name} is already used by the vhost at {first.source}",
                    )
                vhost = replace(vhost, name=f"{vhost.name}#{index + 1}")
            names[vhost.name] = vhost
            built.append(vhost)
        return tuple(built)

    # --- global cross-checks -----------------------------------------------

    def children(self) -> tuple[int, int]:
        max_children = self.value("max-children", "max_children")
        min_spare = self.value("min-spare-children", "min_spare_children")
        if min_spare > max_children:
            if self.setting("min-spare-children") is None:
                min_spare = max_children  # only the default is too big: titus capped it too
            else:
                raise ConfigError(
                    self.where("min-spare-children"),
                    f"min-spare-children {min_spare} is more than max-children {max_children}",
                )
        return min_spare, max_children

    def uid_range(self, max_children: int) -> tuple[int, int]:
        first = self.value("uid-first", "uid_first")
        count = self.value("uid-count", "uid_count")
        if first + count - 1 > 2**32 - 2:
            raise ConfigError(
                self.where("uid-count"), f"jail uid range {first}+{count} goes past 4294967294"
            )
        if count < max_children + 1 and self.setting("max-children") is None:
            return first, count  # only the default is too big: build() caps max-children
        if count < max_children + 1:
            source = self.where("uid-count") if self.setting("uid-count") else self.where(
                "max-children"
            )
            raise ConfigError(
                source,
                f"uid-count {count} is too small: max-children {max_children} workers and the "
                f"key holder each need their own uid",
            )
        clash = _uid_clash(first, count)
        if clash:
            raise ConfigError(
                self.where("uid-first"),
                f"jail uid range {first}..{first + count - 1} contains {clash}; jails need "
                f"uids that nothing else uses",
            )
        return first, count

    def pid_file(self) -> Path | None:
        chosen = self.setting("pid-file")
        if chosen is None:
            return None
        parent = chosen.value.parent
        if not parent.is_dir():
            raise ConfigError(chosen.source, f"pid-file {chosen.value}: no directory {parent}")
        return chosen.value

    def metrics(self) -> Listener | None:
        chosen = self.setting("metrics-listen")
        if chosen is None:
            return None
        address, port = chosen.value
        return Listener(address, port, dual_stack=False, source=chosen.source)

    def build(self) -> Config:
        listeners = self.listeners()
        vhosts = self.vhosts()
        min_spare, max_children = self.children()
        uid_first, uid_count = self.uid_range(max_children)
        # A uid range smaller than the default max-children (1000) caps it: what fits.
        max_children = min(max_children, uid_count - 1)
        min_spare = min(min_spare, max_children)
        self.notices += unreachable(vhosts, listeners,
                                    self.value("transparent", "transparent") == "yes")
        return Config(
            listeners=listeners,
            vhosts=vhosts,
            min_spare_children=min_spare,
            max_children=max_children,
            max_handshake_time=self.value("max-handshake-time", "max_handshake_time"),
            transparent=self.value("transparent", "transparent"),
            daemon=self.value("daemon", "daemon"),
            pid_file=self.pid_file(),
            uid_first=uid_first,
            uid_count=uid_count,
            keyholder_budget=self.value("keyholder-budget", "keyholder_budget"),
            keyholder_timeout=self.value("keyholder-timeout", "keyholder_timeout"),
            backend_connect_timeout=self.value(
                "backend-connect-timeout", "backend_connect_timeout"
            ),
            dns_timeout=self.value("dns-timeout", "dns_timeout"),
            dns_refresh=self.value("dns-refresh", "dns_refresh"),
            drain_timeout=self.value("drain-timeout", "drain_timeout"),
            log_format=self.value("log-format", "log_format"),
            metrics_listen=self.metrics(),
            sources=tuple(dict.fromkeys(self.draft.sources)),
            notices=tuple(self.notices),
        )


def _uid_clash(first: int, count: int) -> str | None:
    """A user or group whose id lies in the jail range, described, or None."""
    last = first + count - 1
    try:
        for user in pwd.getpwall():
            if first <= user.pw_uid <= last:
                return f"user {user.pw_name} (uid {user.pw_uid})"
        for group in grp.getgrall():
            if first <= group.gr_gid <= last:
                return f"group {group.gr_name} (gid {group.gr_gid})"
    except OSError:
        return None
    return None


def build_config(draft: Draft) -> Config:
    return _Builder(draft).build()
