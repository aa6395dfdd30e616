"""Building each vhost's SSLContext, with its private key held by the key holder.

The one place that defines titus's TLS settings.  Built once in the zygote with
Python's ssl, before any worker is cloned: a worker inherits ready contexts and
needs no file.  What Python's ssl cannot set (TLS 1.3 suites, the groups list,
the session cache, an ALPN callback in C) is set through the worker's extension
module on the same SSL_CTX.  No session resumption at all: a session
cache dies with its one-connection worker, and session tickets would need a
ticket key in every worker's memory, so one compromised worker could decrypt
the resumed sessions of all others.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from titus.config.model import TLSSettings, VHost
from titus.worker import remotekey


class TLSConfigError(ValueError):
    pass


def _set_groups(ctx: ssl.SSLContext, names: str) -> bool:
    """SSL_CTX_set1_groups_list; False if OpenSSL refuses."""
    try:
        return bool(remotekey._native().set_groups(ctx, names))
    except RuntimeError as e:
        raise remotekey.RemoteKeyError(str(e)) from None


def alpn_wire(protocols: Sequence[str]) -> bytes:
    """The ALPN protocol list in its wire format (each name length-prefixed)."""
    out = bytearray()
    for name in protocols:
        data = name.encode()
        if not 0 < len(data) < 256:
            raise ValueError(f"ALPN protocol {name!r} is not 1..255 bytes")
        out += bytes((len(data),)) + data
    return bytes(out)


def openssl_knows_groups(names: str) -> bool:
    """Whether this OpenSSL takes `names` ("X25519:prime256v1") as its key exchange
    groups, asked the way _apply_settings sets them.  (SSLContext.set_ecdh_curve is no
    test: before Python 3.11.5 it knows only EC curves, so not X25519.)"""
    try:
        return _set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), names)
    except remotekey.RemoteKeyError:
        return True  # no hook into this OpenSSL: titus refuses to start, with that reason


def _apply_settings(ctx: ssl.SSLContext, tls: TLSSettings, where: str) -> None:
    native = remotekey._native()
    ctx.minimum_version = tls.min_version
    ctx.maximum_version = tls.max_version
    try:
        ctx.set_ciphers(tls.ciphers)
    except ssl.SSLError:
        raise TLSConfigError(f"{where}: no usable cipher in {tls.ciphers!r}") from None
    if tls.ciphersuites is not None and not native.set_ciphersuites(ctx, tls.ciphersuites):
        raise TLSConfigError(f"{where}: no usable TLS 1.3 cipher suite in {tls.ciphersuites!r}")
    if not _set_groups(ctx, ":".join(tls.curves)):
        raise TLSConfigError(f"{where}: unknown curve in {':'.join(tls.curves)}")
    # A TCP FIN without close_notify is a half-close for titus (wk_pump.c), as it
    # was for titus 0.4.  Without this option OpenSSL 3 turns it into a fatal
    # error (a decode_error alert, and every later SSL_write fails), so the
    # backend's answer could never reach the client.
    options = (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
               | ssl.OP_IGNORE_UNEXPECTED_EOF)
    ctx.options |= options
    # Python's SSLContext starts with OP_CIPHER_SERVER_PREFERENCE set, so
    # "honor-client-cipher-order yes" must clear it, not just leave it alone.
    if tls.honor_client_cipher_order:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    native.disable_session_cache(ctx)
    if tls.dhgroup is not None:
        _load_dh(ctx, tls.dhgroup.pem)
    if tls.alpn:  # selected by a C callback (wk_ctx.c): a worker never re-enters Python
        native.set_alpn(ctx, alpn_wire(tls.alpn))
    if tls.client_auth != "none" and tls.client_ca is not None:
        ctx.load_verify_locations(cafile=str(tls.client_ca))
        ctx.verify_mode = (ssl.CERT_REQUIRED if tls.client_auth == "required"
                           else ssl.CERT_OPTIONAL)
        if tls.client_crl is not None:  # read anew by every generation's zygote (SIGHUP)
            ctx.load_verify_locations(cafile=str(tls.client_crl))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _load_dh(ctx: ssl.SSLContext, pem: bytes) -> None:
    # load_dh_params takes only a path; the parameters are public.  (tempfile is
    # imported here: it brings random, whose after-fork reseed every worker would run.)
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="titus-dh-", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        ctx.load_dh_params(f.name)


def build_context(vhost: VHost, key_id: int, chain: remotekey.CertChain | None = None
                  ) -> ssl.SSLContext:
    """`chain` is the vhost's certificate chain as read_chain parsed it (default: read
    its file now)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    where = f"{vhost.source} (vhost {vhost.name})"
    _apply_settings(ctx, vhost.tls, where)
    try:
        remotekey.install(ctx, chain or vhost.cert, key_id,
                          allow_dhe=vhost.tls.dhgroup is not None)
    except (remotekey.RemoteKeyError, OSError, ValueError) as e:
        raise TLSConfigError(f"{where}: {e}") from None
    return ctx


def build_contexts(vhosts: Sequence[VHost], key_ids: Sequence[int],
                   chains: Sequence[remotekey.CertChain] | None = None) -> list[ssl.SSLContext]:
    remotekey.check_runtime()
    return [build_context(v, k, chains[k] if chains else None)
            for v, k in zip(vhosts, key_ids, strict=True)]
