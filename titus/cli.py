"""The titus command line, as titus 0.4 had it: `titus --config FILE [--option value]...`.

Any titus.conf option may also be given as `--option value`; `--check`
validates the configuration (and that every key matches its certificate)
without starting anything.
"""

from __future__ import annotations

import argparse
import os
import sys

from titus import logs
from titus.config_options import OPTIONS

USAGE = "titus --config FILE [--check] [--OPTION VALUE]..."


def _parser() -> argparse.ArgumentParser:
    options = ", ".join(sorted(name for name, o in OPTIONS.items()
                               if o.conf and name not in ("config", "config-directory")))
    parser = argparse.ArgumentParser(
        prog="titus", usage=USAGE,
        description="TLS terminating proxy: a fresh jailed process per connection, private "
                    "keys in a separately jailed key holder.",
        epilog="Every titus.conf option can be given on the command line as --OPTION VALUE "
               f"(later ones win over the file): {options}. "
               "See titus.toml.example for the native TOML format.")
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="configuration file: titus.conf format, or TOML if it ends in .toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration and keys, then exit")
    return parser


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(rest):
        word = rest[i]
        if not word.startswith("--"):
            parser.error(f"unexpected argument {word!r}")
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(rest):
                parser.error(f"--{name} needs a value")
            value = rest[i + 1]
            i += 1
        overrides.append((name, value))
        i += 1
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    from titus.config import ConfigError, load_config

    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"titus: {e}", file=sys.stderr)
        return 2
    if args.check:
        from titus.check import check_keys

        problem = check_keys(config)
        if problem:
            print(f"titus: {problem}", file=sys.stderr)
            return 2
        for notice in config.notices:
            print(f"titus: note: {notice}", file=sys.stderr)
        print(f"titus: {args.config}: OK ({len(config.vhosts)} vhosts, "
              f"{len(config.listeners)} listeners)")
        return 0
    if os.geteuid() != 0:
        print("titus: must run as root: it builds a jail (namespaces, seccomp) per connection",
              file=sys.stderr)
        return 1
    logs.setup(config.log_format)
    from titus.supervisor import StartupError, Supervisor

    try:
        supervisor = Supervisor(config)
        supervisor.start()
    except StartupError as e:
        print(f"titus: {e}", file=sys.stderr)
        return 1
    supervisor.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
