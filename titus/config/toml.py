"""Reader for the native ``titus.toml`` format (see titus.toml.example).

Layout: global keys at the top level (before any table), then the tables
``[tls]`` (TLS defaults), ``[[listen]]``, ``[[vhost]]`` (with an optional
``[vhost.tls]``), ``[log]``, ``[metrics]``, ``[jail]`` and ``[keyholder]``.
Key names are titus.conf's option names where one exists, and every value is
applied through the same option parsers, so both formats mean the same.

Top-level keys are applied in file order (``config`` / ``config-directory``
includes too), then the tables, then listeners, then vhosts: vhosts from an
included file come before this file's own.  tomllib reports no line numbers
for keys: sandbox.tomlsource.KeyLines finds the line of each key and table
header for error messages (the one TOML line finder, shared with sandbox).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from sandbox.tomlsource import KeyLines, Table, syntax_error_line
from titus.config.draft import Draft, VHostDraft
from titus.config.model import ConfigError, Source
from titus.config.options import OPTIONS, IncludeFn, apply_option, unknown_option

ROOT_KEYS = (
    "config",
    "config-directory",
    "port",
    "daemon",
    "pid-file",
    "transparent",
    "min-spare-children",
    "max-children",
    "max-handshake-time",
    "cert",
    "key",
    "backend",
    "backend-port",
    "backend-h2",
    "proxy-protocol",
    "backend-connect-timeout",
    "dns-timeout",
    "dns-refresh",
    "drain-timeout",
    "ocsp-response",
)
# TOML key -> option name, per table.
TLS_KEYS = {
    "min-version": "min-tls-version",
    "max-version": "max-tls-version",
    "ciphers": "ciphers",
    "ciphersuites": "ciphersuites",
    "curves": "ecdhcurve",
    "dhgroup": "dhgroup",
    "honor-client-cipher-order": "honor-client-cipher-order",
    "client-auth": "client-auth",
    "client-ca": "client-ca",
    "client-crl": "client-crl",
    "client-allow-cn": "client-allow-cn",
    "client-allow-dns": "client-allow-dns",
    "client-allow-uri": "client-allow-uri",
    "alpn": "alpn",
}
SECTIONS = {
    "tls": TLS_KEYS,
    "log": {"format": "log-format"},
    "metrics": {"listen": "metrics-listen"},
    "jail": {"uid-first": "uid-first", "uid-count": "uid-count"},
    "keyholder": {"budget": "keyholder-budget", "timeout": "keyholder-timeout"},
}
ARRAYS = ("listen", "vhost")
VHOST_KEYS = (
    "name",
    "local-address",
    "local-port",
    "sni-name",
    "cert",
    "key",
    "backend",
    "backend-port",
    "backend-h2",
    "proxy-protocol",
    "ocsp-response",
)
LISTEN_KEYS = ("address", "port")

def places() -> dict[str, dict[str, str]]:
    """Every table an operator can write, with its TOML keys and the option each one sets."""
    found = {"the top level": {key: key for key in ROOT_KEYS}}
    for name, keys in SECTIONS.items():
        found[f"[{name}]"] = keys
    found["[[vhost]]"] = {key: key for key in VHOST_KEYS}
    found["[vhost.tls]"] = TLS_KEYS
    found["[[listen]]"] = {"address": "listen", "port": "listen"}
    return found


def misplaced(key: str, here: str) -> str | None:
    """Where `key` belongs when it is unknown `here`: "'ciphers' belongs in [vhost.tls]", or
    how titus.toml spells a titus.conf option ("'log-format' is 'format' in [log]")."""
    if key in ARRAYS:
        return f"'{key}' is a table of its own: write [[{key}]] after the top-level keys"
    tables = places()
    homes = [name for name, keys in tables.items() if key in keys and name != here]
    if homes:
        # From a vhost, its own [vhost.tls] before the global [tls]; at most two places.
        near = {"[[vhost]]": "[vhost.tls]", "[vhost.tls]": "[[vhost]]"}.get(here)
        homes.sort(key=lambda name: name != near)
        return f"'{key}' belongs in {' or '.join(homes[:2])}"
    spelled = [(toml_key, name) for name, keys in tables.items()
               for toml_key, option in keys.items()
               if option == key and toml_key != key and name != "[[listen]]"]
    if spelled:
        toml_key, name = spelled[0]
        return f"'{key}' is written '{toml_key}' in {name}"
    return None


def _texts(kind: str, separator: str, label: str, value: Any, src: Source) -> list[str]:
    """The titus.conf text form(s) of a TOML value, after checking its TOML type."""

    def wrong(expected: str) -> ConfigError:
        return ConfigError(src, f"{label}: expected {expected}, got {type(value).__name__}")

    if kind == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return ["yes" if value else "no"]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return [str(value)]
    if kind == "seconds":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number of seconds")
        if isinstance(value, float):
            if not value == value or value in (float("inf"), float("-inf")):
                raise ConfigError(src, f"{label}: expected a finite number of seconds")
            return [f"{value:.9f}".rstrip("0").rstrip(".")]
        return [str(value)]
    if kind in ("port", "dh"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise wrong("an integer")
        return [str(value)]
    if kind == "str":
        if not isinstance(value, str):
            raise wrong("a string")
        return [value]
    # "list" and "each": a string, or a non-empty list of strings
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise wrong("a string or a list of strings")
    if not value:
        raise ConfigError(src, f"{label}: empty list; leave the key out instead")
    if kind == "each":
        return list(value)
    if any(separator in item for item in value):
        raise ConfigError(src, f"{label}: an item contains '{separator}'")
    return [separator.join(value)]


class _Reader:
    def __init__(self, draft: Draft, path: Path, text: str, include: IncludeFn) -> None:
        self.draft, self.path, self.include = draft, path, include
        self.base = path.parent
        self.lines = KeyLines(text)

    def src(self, table: Table, key: str | None = None) -> Source:
        return Source(str(self.path), self.lines.line(table, key))

    def apply(
        self, table: Table, key: str, option: str, value: Any, vhost: VHostDraft | None
    ) -> None:
        src = self.src(table, key)
        spec = OPTIONS[option]
        assert spec.toml is not None, option
        for text in _texts(spec.toml, spec.separator, key, value, src):
            if option == "sni-name" and text == "":
                text = '""'  # titus.conf's spelling of "a client that sends no SNI"
            apply_option(
                self.draft, option, text, src, self.base,
                vhost=vhost, include=self.include, fmt="toml", label=key,
            )

    def table(self, table: Table, value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(self.src(table), f"{what} must be a table")
        return value

    def array(self, name: str, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ConfigError(self.src((name,), None), f"{name} must be written as [[{name}]]")
        return value

    def section(self, table: Table, data: dict[str, Any], keys: dict[str, str],
                vhost: VHostDraft | None) -> None:
        here = "[vhost.tls]" if vhost is not None else f"[{table[-1]}]"
        for key, value in data.items():
            if key not in keys:
                self.unknown(table, key, here, list(keys))
            self.apply(table, key, keys[key], value, vhost)

    def unknown(self, table: Table, key: str, here: str, candidates: list[str]) -> None:
        """A key this table does not know: where it belongs if it belongs anywhere, else the
        closest spelling."""
        src = self.src(table, key)
        hint = misplaced(key, here)
        if hint is not None:
            raise ConfigError(src, hint if " is " in hint else f"{hint}, not {here}")
        unknown_option(key, src, candidates, f"key in {here}" if here != "the top level"
                       else "key")

    def read(self, data: dict[str, Any]) -> None:
        root_keys = {key: key for key in ROOT_KEYS}
        for key, value in data.items():
            if key in SECTIONS or key in ARRAYS:
                continue
            if key in root_keys:
                self.apply((), key, key, value, None)
                continue
            self.unknown((), key, "the top level", [*ROOT_KEYS, *SECTIONS, *ARRAYS])
        for name, keys in SECTIONS.items():
            if name in data:
                table = self.table((name,), data[name], f"[{name}]")
                self.section((name,), table, keys, None)
        for index, entry in enumerate(self.array("listen", data.get("listen", []))):
            self.listen(("listen", index), entry)
        for index, entry in enumerate(self.array("vhost", data.get("vhost", []))):
            self.vhost(("vhost", index), entry)

    def listen(self, table: Table, entry: dict[str, Any]) -> None:
        for key in entry:
            if key not in LISTEN_KEYS:
                self.unknown(table, key, "[[listen]]", list(LISTEN_KEYS))
        address = entry.get("address", "::")
        if not isinstance(address, str):
            raise ConfigError(self.src(table, "address"), "address: expected a string")
        text = address
        if "port" in entry:
            port = entry["port"]
            if isinstance(port, bool) or not isinstance(port, int | str):
                raise ConfigError(self.src(table, "port"), "port: expected an integer")
            bracketed = ":" in address and not address.startswith("[")
            text = f"[{address}]:{port}" if bracketed else f"{address}:{port}"
        src = self.src(table, "address" if "address" in entry else "port")
        apply_option(self.draft, "listen", text, src, self.base, vhost=None, include=None)

    def vhost(self, table: Table, entry: dict[str, Any]) -> None:
        vhost = VHostDraft(source=self.src(table))
        self.draft.vhosts.append(vhost)
        for key, value in entry.items():
            if key == "tls":
                tls_table = (*table, "tls")
                self.section(tls_table, self.table(tls_table, value, "[vhost.tls]"), TLS_KEYS,
                             vhost)
            elif key in VHOST_KEYS:
                self.apply(table, key, key, value, vhost)
            else:
                self.unknown(table, key, "[[vhost]]", [*VHOST_KEYS, "tls"])


def read_toml(draft: Draft, path: Path, text: str, include: IncludeFn) -> None:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            Source(str(path), syntax_error_line(str(e), text)), f"TOML syntax error: {e}"
        ) from None
    except RecursionError:
        raise ConfigError(Source(str(path), 1), "TOML nested too deeply") from None
    _Reader(draft, path, text, include).read(data)
