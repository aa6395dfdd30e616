"""Stapling an OCSP response in the worker: the TLS status callback, through ctypes.

Apart from titus/supervisor/ocsp.py (which reads and checks response files with
`cryptography` and logs) because this part runs in the zygote and its
workers, which must stay small and never import those.

Python's ssl has no server-side stapling API, so the status callback is set
with ctypes on the SSL_CTX behind each vhost's SSLContext, through the very
libssl that _ssl uses (``remotekey._lib``).  The callback runs inside the jail:
it only reads memory, asks the clock (vDSO), and hands libssl a copy in an
OPENSSL_malloc'd buffer that libssl frees with the connection.  On any doubt it
staples nothing (SSL_TLSEXT_ERR_NOACK): a missing staple costs the client one
OCSP query, a failed handshake costs the connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import ssl
import time
from dataclasses import dataclass

from titus.worker import remotekey

_SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB = 63
_SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP = 71  # (65 is ..._STATUS_REQ_TYPE)
_SSL_TLSEXT_ERR_OK = 0
_SSL_TLSEXT_ERR_NOACK = 3


class StaplingError(RuntimeError):
    pass


class Stapled:
    """What a vhost's workers staple: a checked response and when it expires."""

    def __init__(self, der: bytes | None = None, expires: float | None = None) -> None:
        self.der = der
        self.expires = expires

    def current(self, now: float) -> bytes | None:
        """The bytes to staple at wall-clock ``now``, or None (a worker forked before
        the response expired checks the clock itself)."""
        if self.der is None or (self.expires is not None and now >= self.expires):
            return None
        return self.der

    @property
    def value(self) -> tuple[bytes | None, float | None]:
        return self.der, self.expires


_STATUS_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)


@dataclass(frozen=True)
class _Functions:
    callback_ctrl: ctypes._CFuncPtr
    ssl_ctrl: ctypes._CFuncPtr
    malloc: ctypes._CFuncPtr
    free: ctypes._CFuncPtr


def _bind(lib: ctypes.CDLL, name: str, argtypes: list, restype: object) -> ctypes._CFuncPtr:
    fn = lib[name]  # a fresh function object: other modules' argtypes stay theirs
    fn.argtypes, fn.restype = argtypes, restype
    return fn


_functions: _Functions | None = None


def _openssl() -> _Functions:
    """Bound once, in the zygote: a forked worker inherits them ready to call."""
    global _functions
    if _functions is None:
        lib = remotekey._lib()
        c = ctypes
        _functions = _Functions(
            callback_ctrl=_bind(lib, "SSL_CTX_callback_ctrl", [c.c_void_p, c.c_int, _STATUS_CB],
                                c.c_long),
            ssl_ctrl=_bind(lib, "SSL_ctrl", [c.c_void_p, c.c_int, c.c_long, c.c_void_p],
                           c.c_long),
            malloc=_bind(lib, "CRYPTO_malloc", [c.c_size_t, c.c_void_p, c.c_int], c.c_void_p),
            free=_bind(lib, "CRYPTO_free", [c.c_void_p, c.c_void_p, c.c_int], None),
        )
    return _functions


def _staple_now(staple: Stapled, ssl_ptr: int | None) -> int:
    """The status callback's body: hand libssl a copy of the response, or staple nothing."""
    buffer = None
    try:
        der = staple.current(time.time())
        if not der or not ssl_ptr or _functions is None:
            return _SSL_TLSEXT_ERR_NOACK
        buffer = _functions.malloc(len(der), None, 0)
        if not buffer:
            return _SSL_TLSEXT_ERR_NOACK
        ctypes.memmove(buffer, der, len(der))
        if _functions.ssl_ctrl(ssl_ptr, _SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP, len(der),
                               buffer) != 1:
            return _SSL_TLSEXT_ERR_NOACK
        buffer = None  # libssl owns it now and frees it with the connection
        return _SSL_TLSEXT_ERR_OK
    except BaseException:
        return _SSL_TLSEXT_ERR_NOACK
    finally:
        if buffer and _functions is not None:
            with contextlib.suppress(BaseException):
                _functions.free(buffer, None, 0)


def enable(ctx: ssl.SSLContext, staple: Stapled) -> None:
    """Make ``ctx`` staple ``staple``'s current response to clients that ask for one.

    The callback object is kept on ``ctx`` itself: it lives exactly as long as the
    SSL_CTX that calls it (every SSLObject holds its context), and an old
    generation's callbacks go away with its contexts after a reload.
    """
    functions = _openssl()
    ptr = remotekey.ssl_ctx_pointer(ctx)
    callback = _STATUS_CB(lambda ssl_ptr, _arg: _staple_now(staple, ssl_ptr))
    ctx._titus_ocsp_callback = callback  # type: ignore[attr-defined]
    if functions.callback_ctrl(ptr, _SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB, callback) != 1:
        raise StaplingError("libssl refused the OCSP status callback")
