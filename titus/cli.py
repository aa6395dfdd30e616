"""The titus command line, as titus 0.4 had it: `titus --config FILE [--option value]...`.

Any titus.conf option may also be given as `--option value`; `--check`
validates the configuration (and that every key matches its certificate)
without starting anything.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from titus import logs
from titus.config.model import Config
from titus.config.options import options_text

USAGE = ("titus --config FILE [--check] [--OPTION VALUE]...\n"
         "       titus status --config FILE   (what the metrics endpoint says, for a person)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titus", usage=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="TLS terminating proxy: a fresh jailed process per connection, private "
                    "keys in a separately jailed key holder.",
        epilog="titus.conf options (in the file as `option value`, or on the command line as\n"
               "--option value, where later ones win over the file):\n\n"
               f"{options_text()}\n\n"
               "vhost blocks: a line `vhost [NAME]`, then indented options; the first vhost\n"
               "matching the local address/port and then the SNI wins. See titus.toml.example\n"
               "for the native TOML format.")
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="configuration file: titus.conf format, or TOML if it ends in .toml")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration, keys, listen addresses and backend "
                             "names, then exit")
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
    argv = sys.argv[1:] if argv is None else argv
    status = bool(argv) and argv[0] == "status"
    args, overrides = parse_args(argv[1:] if status else argv)
    from titus.config.load import ConfigError, load_config

    try:
        config = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"titus: {e}", file=sys.stderr)
        return 2
    if status:
        from titus.status import StatusError, fetch, summarize

        try:
            print(summarize(fetch(config)))
        except StatusError as e:
            print(f"titus: {e}", file=sys.stderr)
            return 1
        return 0
    if args.check:
        return _check(config, args.config)
    if os.geteuid() != 0:
        print("titus: must run as root: it builds a jail (namespaces, seccomp) per connection",
              file=sys.stderr)
        return 1
    if config.daemon:
        return _run_daemon(config, (args.config, overrides))
    logs.setup(config.log_format)
    return _serve(config, ready=None, source=(args.config, overrides))


def _check(config: Config, path: str) -> int:
    """`--check`: the configuration, every key against its certificate, and what start-up
    needs from the system (ports free, backend names resolving); 2 on the first problem."""
    from titus.keyholder.checks import check_keys
    from titus.supervisor.preflight import preflight

    problem = check_keys(config)
    notes: list[str] = []
    if not problem:
        problem, notes = preflight(config)
    if problem:
        print(f"titus: {problem}", file=sys.stderr)
        return 2
    for note in [*map(str, config.notices), *notes]:
        print(f"titus: note: {note}", file=sys.stderr)
    print(f"titus: {path}: OK ({len(config.vhosts)} vhosts, {len(config.listeners)} listeners)")
    return 0


def _serve(config: Config, ready: int | None,
           source: tuple[str, list[tuple[str, str]]] | None = None) -> int:
    """Start, report readiness (or the one-line reason) on fd `ready`, serve until stopped."""
    from titus.supervisor import StartupError, Supervisor

    try:
        supervisor = Supervisor(config, *(source or ()))
        supervisor.start()
    except (StartupError, RuntimeError, OSError, ValueError) as e:
        if ready is not None:
            os.write(ready, f"{e}".encode(errors="replace"))
        else:
            print(f"titus: {e}", file=sys.stderr)
        return 1
    if config.pid_file is not None:
        config.pid_file.write_text(f"{os.getpid()}\n")
    if ready is not None:
        os.write(ready, b"ok")
        os.close(ready)
    try:
        supervisor.serve_forever()
    finally:
        if config.pid_file is not None:
            with contextlib.suppress(OSError):
                config.pid_file.unlink()
    return 0


def _run_daemon(config: Config, source: tuple[str, list[tuple[str, str]]]) -> int:
    """titus 0.4's `daemon yes`: detach, but only after start-up succeeded.

    The parent waits for the daemon to say "ok" (listeners bound, key holder
    up), so a start-up error still reaches the shell that ran titus.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            answer = f.read().decode(errors="replace")
        if answer != "ok":
            print(f"titus: {answer or 'the daemon died during start-up'}", file=sys.stderr)
            return 1
        return 0
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    logs.setup_daemon(config.log_format)
    code = _serve(config, ready=w, source=source)
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
