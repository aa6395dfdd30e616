"""What the reference docs say about each option, derived from the code that parses it.

Every fact comes from the parser's own tables, so the docs cannot drift: the
option list, scope, titus.conf/TOML availability and the description (each
option's help) from titus.config.options, the TOML key and table from
titus.config.toml, and the default from the model's dataclass defaults.  Only
what the code cannot tell is written here: the value placeholder of some
options, example values, and which options titus 0.4 had.  An option added
later still gets a complete entry from its kind (a placeholder, and its
default as the example).
"""

from __future__ import annotations

import ssl
from dataclasses import MISSING, dataclass, fields
from typing import Any

from titus.config import toml as toml
from titus.config.model import Config, TLSSettings, VHost
from titus.config.options import OPTIONS, Option
from titus.config.values import parse_listen

# titus(8) of titus 0.4, in its order: a fixed fact about the old program.
TITUS_04 = (
    "config", "config-directory", "daemon", "pid-file", "port", "transparent", "backend",
    "backend-port", "min-spare-children", "max-children", "max-handshake-time", "network-user",
    "network-group", "keyserver-user", "keyserver-group", "chroot", "key", "cert", "ciphers",
    "honor-client-cipher-order", "dhgroup", "ecdhcurve", "compression", "sslv3", "tlsv1",
    "tlsv1.1", "tlsv1.2", "local-address", "local-port", "sni-name",
)

# Value placeholders the option's TOML kind cannot tell.
_SYNTAX = {
    "config": "FILE",
    "config-directory": "DIRECTORY",
    "transparent": "no | yes | backend-only",
    "backend": "HOST",
    "network-user": "USER",
    "network-group": "GROUP",
    "keyserver-user": "USER",
    "keyserver-group": "GROUP",
    "chroot": "DIRECTORY",
    "ciphers": "CIPHER[:CIPHER...]",
    "dhgroup": "14 | 15 | 16 | FILE",
    "ecdhcurve": "CURVE[:CURVE...]",
    "tlsv1.2": "yes | no",
    "tlsv1.3": "yes | no",
    "local-address": "IP",
    "sni-name": "NAME",
    "name": "NAME",
    "listen": "ADDRESS[:PORT]",
    "min-tls-version": "1.2 | 1.3",
    "max-tls-version": "1.2 | 1.3",
    "ciphersuites": "SUITE[:SUITE...]",
    "alpn": "PROTOCOL[,PROTOCOL...]",
    "client-auth": "none | optional | required",
    "client-allow-cn": "COMMON-NAME",
    "client-allow-dns": "DNS-NAME",
    "client-allow-uri": "URI",
    "proxy-protocol": "v1 | v2 | no",
    "log-format": "json | text | auto",
    "metrics-listen": "ADDRESS:PORT",
    "uid-first": "UID",
}
_KIND_SYNTAX = {"bool": "yes | no", "int": "NUMBER", "seconds": "SECONDS", "port": "PORT",
                "list": "VALUE[:VALUE...]", "each": "VALUE", "str": "VALUE", "dh": "VALUE"}
_TOML_TYPE = {"bool": "a boolean", "int": "an integer", "seconds": "a number of seconds",
              "port": "an integer or a service name", "str": "a string",
              "list": "a string or an array of strings",
              "each": "a string or an array of strings", "dh": "a group number or a path"}

# Example values in titus.conf form; an option not listed here shows its default.
_EXAMPLES = {
    "config": "titus.d/extra.conf",
    "config-directory": "/etc/titus/titus.d",
    "daemon": "yes",
    "pid-file": "/run/titus.pid",
    "port": "443",
    "transparent": "backend-only",
    "backend": "127.0.0.1",
    "backend-port": "8080",
    "network-user": "titus",
    "network-group": "nogroup",
    "keyserver-user": "titus-keys",
    "keyserver-group": "nogroup",
    "chroot": "/var/lib/titus/empty",
    "key": "/etc/titus/private/example.com.key",
    "cert": "/etc/titus/certs/example.com.chained.crt",
    "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
    "dhgroup": "14",
    "ecdhcurve": "X25519:prime256v1",
    "tlsv1.2": "no",
    "local-address": "192.0.2.5",
    "local-port": "443",
    "sni-name": "www.example.com",
    "name": "www",
    "listen": "[::1]:8443",
    "min-tls-version": "1.3",
    "ciphersuites": "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
    "alpn": "http/1.1",
    "client-auth": "required",
    "client-ca": "/etc/titus/client-ca.pem",
    "client-crl": "/etc/titus/client-ca.crl.pem",
    "client-allow-cn": "billing",
    "client-allow-dns": "billing.internal.example.com",
    "client-allow-uri": "spiffe://example.com/billing",
    "proxy-protocol": "v2",
    "ocsp-response": "/etc/titus/ocsp/example.com.der",
    "log-format": "json",
    "metrics-listen": "127.0.0.1:9100",
}

# Defaults the model spells as None or as the absence of a field.
_DEFAULT_WORDS = {
    "backend": "the local address the client connected to",
    "local-address": "any address",
    "local-port": "any port",
    "sni-name": "any server name",
    "proxy-protocol": "no",
    "alpn": "no ALPN",
    "client-allow-cn": "any certificate client-ca signed",
    "client-allow-dns": "any certificate client-ca signed",
    "client-allow-uri": "any certificate client-ca signed",
    "tlsv1.2": "yes",
    "tlsv1.3": "yes",
    "compression": "no",
    "sslv3": "no",
    "tlsv1": "no",
    "tlsv1.1": "no",
}
# Option name -> model field, where the two are spelled differently.
_FIELDS = {"ecdhcurve": "curves", "min-tls-version": "min_version",
           "max-tls-version": "max_version", "backend": "backend_host", "sni-name": "sni_names"}


@dataclass(frozen=True)
class OptionDoc:
    """One option as the reference shows it."""

    name: str
    help: str
    syntax: str
    scope: str  # "global", "vhost" or "global, vhost"
    conf: bool  # titus.conf and the command line
    command_line: bool
    toml: tuple[str, ...]  # where in titus.toml: "port" (top level), "[tls] curves" ...
    toml_type: str | None
    default: str | None
    status: str  # "titus 0.4", "superseded", "refused" or "new"
    conf_example: str | None  # a titus.conf fragment
    toml_example: str | None  # the same setting as a titus.toml fragment


def handler_family(option: Option) -> str:
    """The factory a handler came from ("superseded", "refuse_yes", "vhost_path" ...,
    in titus.config.draft)."""
    return getattr(option.handler, "__qualname__", "").split(".")[0]


def status(option: Option) -> str:
    family = handler_family(option)
    if family == "superseded":
        return "superseded"
    if family == "refuse_yes":
        return "refused"
    return "titus 0.4" if option.name in TITUS_04 else "new"


def syntax(option: Option) -> str:
    if option.name in _SYNTAX:
        return _SYNTAX[option.name]
    if status(option) == "refused":
        return "no"
    if "path" in handler_family(option):
        return "FILE"
    return _KIND_SYNTAX.get(option.toml or "", "VALUE")


def toml_places(name: str) -> tuple[str, ...]:
    """Where titus.toml takes the option, from config_toml's own tables."""
    places = []
    if name in toml.ROOT_KEYS:
        places.append(name)
    for section, keys in toml.SECTIONS.items():
        places += [f"[{section}] {key}" for key, option in keys.items() if option == name]
    if name in toml.VHOST_KEYS:
        places.append(f"[[vhost]] {name}")
    places += [f"[vhost.tls] {key}" for key, option in toml.TLS_KEYS.items() if option == name]
    if name in toml.ARRAYS and name != "vhost":
        places.append(f"[[{name}]] " + ", ".join(toml.LISTEN_KEYS))
    return tuple(places)


def show(value: Any) -> str | None:
    """A model value as an operator writes it; None for "not set"."""
    if value is None or value == ():
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, ssl.TLSVersion):
        return {ssl.TLSVersion.TLSv1_2: "1.2", ssl.TLSVersion.TLSv1_3: "1.3"}[value]
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple):
        return ":".join(str(item) for item in value)
    return str(value)


def model_default(name: str) -> str | None:
    """The default the model gives the option (a dataclass field default), if any."""
    attr = _FIELDS.get(name, name.replace("-", "_"))
    for model in (Config, VHost, TLSSettings):
        for f in fields(model):
            if f.name == attr and f.default is not MISSING:
                return show(f.default)
    return None


def default(name: str) -> str | None:
    return _DEFAULT_WORDS.get(name) or model_default(name)


def example(option: Option) -> str | None:
    if option.name in _EXAMPLES:
        return _EXAMPLES[option.name]
    if status(option) == "refused":
        return "no"
    # A default is a usable example when it is one word the parser reads back.
    value = default(option.name)
    return value if value and " " not in value else None


def toml_value(option: Option, text: str) -> str:
    """The TOML spelling of a titus.conf value (the inverse of config_toml._texts)."""
    kind = option.toml
    if kind == "bool":
        return "true" if text.lower() in ("yes", "true", "on", "1") else "false"
    if kind in ("int", "seconds") or (kind == "port" and text.isdigit()):
        return text
    if kind == "list":
        items = [item.strip() for item in text.split(option.separator)]
        return "[" + ", ".join(_quote(item) for item in items) + "]"
    return _quote(text)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_example(option: Option, text: str) -> str | None:
    """A titus.toml fragment that sets the option to ``text``."""
    if option.toml is None and option.name not in toml.ARRAYS:
        return None
    if option.name in toml.ROOT_KEYS:
        return f"{option.name} = {toml_value(option, text)}"
    for section, keys in toml.SECTIONS.items():
        for key, name in keys.items():
            if name == option.name:
                return f"[{section}]\n{key} = {toml_value(option, text)}"
    if option.name in toml.VHOST_KEYS:
        return f"[[vhost]]\n{option.name} = {toml_value(option, text)}"
    if option.name in toml.ARRAYS:
        address, port = parse_listen(text)
        lines = [f"[[{option.name}]]", f'address = "{address}"']
        return "\n".join(lines + ([f"port = {port}"] if port is not None else []))
    return None


def conf_example(option: Option, text: str) -> str | None:
    if not option.conf:
        return None
    if option.scope == "vhost":
        return f"vhost\n\t{option.name} {text}"
    return f"{option.name} {text}"


def toml_type(option: Option) -> str | None:
    if not toml_places(option.name):
        return None
    if option.toml == "str" and syntax(option) in ("FILE", "DIRECTORY"):
        return "a string (a path)"
    return _TOML_TYPE.get(option.toml or "")


def describe(option: Option) -> OptionDoc:
    value = example(option)
    return OptionDoc(
        name=option.name,
        help=option.help,
        syntax=syntax(option),
        scope={"global": "global", "vhost": "vhost", "any": "global, vhost"}[option.scope],
        conf=option.conf,
        command_line=option.conf and option.scope != "vhost",
        toml=toml_places(option.name),
        toml_type=toml_type(option),
        default=default(option.name),
        status=status(option),
        conf_example=conf_example(option, value) if value else None,
        toml_example=toml_example(option, value) if value else None,
    )


def all_options() -> list[OptionDoc]:
    """Every option the parser knows, in its table's order."""
    return [describe(option) for option in OPTIONS.values()]
