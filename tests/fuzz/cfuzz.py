"""libFuzzer harnesses for the C decoders (tests/fuzz/c/), built with clang.

Each harness links only the file it drives (no OpenSSL, no Python): the C worker's
decoder of supervisor messages, of key-holder answers, and the server-name parser
with the vhost chooser; the fork server's request decoder (sandbox/_jail/request.c).
Built with ASan+UBSan; a crash or a sanitizer report fails.

    python -m tests.fuzz.cfuzz [--seconds N | --runs N] [NAME ...]

runs each harness (`make fuzz` does, for FUZZ_SECONDS); corpora and crash
inputs stay in build/fuzz-c/NAME/.  The seeds are real messages.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = {  # name -> the C files it links (their folder is on the include path)
    "control": ["titus/worker/wk_control.c"],
    "keyreply": ["titus/worker/wk_keyproto.c"],
    "sni": ["titus/worker/wk_choose.c"],
    "spawnreq": ["sandbox/_jail/request.c"],
}
CFLAGS = ["-g", "-O1", "-std=c11", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
          "-fsanitize=fuzzer,address,undefined", "-fno-sanitize-recover=undefined"]


def clang() -> str | None:
    return shutil.which("clang")


def build(name: str, out_dir: Path) -> Path:
    """Compile harness `name` into out_dir; returns the binary's path."""
    compiler = clang()
    if compiler is None:
        raise RuntimeError("clang is not installed (make deps installs it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / f"fuzz_{name}"
    linked = [ROOT / s for s in HARNESSES[name]]
    sources = [str(ROOT / "tests" / "fuzz" / "c" / f"fuzz_{name}.c"), *map(str, linked)]
    includes = [f"-I{d}" for d in dict.fromkeys(s.parent for s in linked)]
    subprocess.run([compiler, *CFLAGS, *includes, *sources, "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    return binary


def seeds(name: str) -> list[bytes]:
    """Real inputs, so coverage starts past "not a message"."""
    if name == "spawnreq":
        from sandbox import _jail
        from sandbox.forkserver import encode_request

        return [encode_request(_jail.REQ_SPAWN, 1, "worker", 640_001, 3),
                encode_request(_jail.REQ_UPDATE, 2, "worker", 0, 1),
                encode_request(_jail.REQ_SPAWN, 2**64 - 1, "x" * _jail.REQ_MAX_NAME, 0, 16)]
    from titus.wire import control, keyproto

    if name == "control":
        return [control.encode(control.Connection(("127.0.0.1", 443))),
                control.encode(control.Connection(("::1", 8443))),
                control.encode(control.BackendReady()),
                control.encode(control.BackendFailed("connect: ECONNREFUSED"))]
    if name == "keyreply":
        return [keyproto.encode_response(keyproto.Response(keyproto.Status.OK, 1, bytes(256))),
                keyproto.encode_response(keyproto.Response(keyproto.Status.REFUSED_BUDGET, 7))]
    host = b"www.example.com"
    body = bytes((0,)) + len(host).to_bytes(2, "big") + host
    return [len(body).to_bytes(2, "big") + body]


def run(name: str, work: Path, seconds: int | None = None, runs: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Build and run one harness with its corpus under `work`; the finished process."""
    binary = build(name, work)
    corpus = work / name / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        for i, seed in enumerate(seeds(name)):
            (corpus / f"seed-{i:03d}").write_bytes(seed)
    limit = [f"-max_total_time={seconds}"] if seconds else [f"-runs={runs or 10000}"]
    return subprocess.run(
        [str(binary), *limit, "-seed=1", "-timeout=10", "-rss_limit_mb=1024",
         f"-artifact_prefix={work / name}/", str(corpus)],
        capture_output=True, text=True, timeout=(seconds or 0) + 300,
        env={**os.environ, "TMPDIR": str(work)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=sorted(HARNESSES))
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    for name in args.names:
        print(f"== {name}", flush=True)
        proc = run(name, ROOT / "build" / "fuzz-c", args.seconds, args.runs)
        sys.stderr.write(proc.stderr[-2000:])
        if proc.returncode != 0:
            raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
