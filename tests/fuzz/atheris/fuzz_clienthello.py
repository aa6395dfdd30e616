"""Coverage-guided fuzzing of the worker's ClientHello parser (titus.worker.clienthello).

parse_sni sees every byte a client sends before TLS starts: it may answer
"need more", a server name, or NotTLS, and nothing else.  A name it returns
is lower-case ASCII without a trailing dot.
"""

from __future__ import annotations

import ssl

import atheris
import runner

with atheris.instrument_imports(include=["titus"]):
    from titus.worker.clienthello import NotTLS, parse_sni


def one_input(data: bytes) -> None:
    try:
        complete, name = parse_sni(data)
    except NotTLS as e:
        assert "\n" not in str(e)
        return
    if name is not None:
        assert complete and name.isascii() and name == name.lower() and not name.endswith(".")


def seeds() -> list[bytes]:
    from tests.titus_harness import client_hello

    out = []
    for name in ("fuzz.test", None, "Mixed.Case.Example."):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        out.append(client_hello(ctx, name))
    return out


if __name__ == "__main__":
    runner.fuzz(one_input, seeds)
