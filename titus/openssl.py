"""The one ctypes binding of OpenSSL in titus: the worker's remote keys and OCSP stapling,
the TLS settings Python's ssl cannot make, and the key holder's signing all go through it.

Symbols are looked up through _ssl's own handle: dlsym on the extension searches
its dependency tree, so the libssl/libcrypto reached is the one Python's ssl runs,
never a second copy in the process (`cryptography` bundles one).  Each caller
binds the functions it uses with their full prototypes (`bind_ssl`,
`bind_libcrypto`): every function
object is the caller's own, so one module's argtypes never change another's, and
no call goes through ctypes' guessing.  Binding happens before fork (in the
zygote; in the key holder before it serves): a child inherits bound functions.
"""

from __future__ import annotations

import ctypes
import ssl
from _thread import allocate_lock  # threading's Lock, without threading's after-fork hook
from typing import Any

# name -> (argtypes, restype)
Prototypes = dict[str, tuple[list[Any], Any]]

_OPENSSL_VERSION = 0  # OpenSSL_version(OPENSSL_VERSION)
_VERSION: Prototypes = {
    "OpenSSL_version_num": ([], ctypes.c_ulong),
    "OpenSSL_version": ([ctypes.c_int], ctypes.c_void_p),
}


class OpenSSLError(RuntimeError):
    """This process cannot reach a usable OpenSSL 3 through ctypes."""


class Functions:
    """Bound OpenSSL functions, as attributes: ``lib = bind(...); lib.RSA_new()``."""

    def __init__(self, functions: dict[str, Any]) -> None:
        self.__dict__.update(functions)

    def __getattr__(self, name: str) -> Any:  # for type checkers: every attribute is a function
        raise AttributeError(f"{name} was not bound")


_handle: ctypes.CDLL | None = None
_handle_lock = allocate_lock()


def _ssl_handle() -> ctypes.CDLL:
    """_ssl's own handle (dlopen of an already loaded extension: no second library)."""
    global _handle
    with _handle_lock:
        if _handle is None:
            import _ssl

            _handle = ctypes.CDLL(_ssl.__file__)
        return _handle


def _bind(lib: ctypes.CDLL, prototypes: Prototypes, origin: str = "_ssl") -> Functions:
    """The functions named in `prototypes`, each a fresh object with its prototype set."""
    functions: dict[str, Any] = {}
    missing = []
    for name, (argtypes, restype) in prototypes.items():
        try:
            fn = lib[name]
        except AttributeError:
            missing.append(name)
            continue
        fn.argtypes, fn.restype = argtypes, restype
        functions[name] = fn
    if missing:
        raise OpenSSLError(
            f"{origin} does not link a shared OpenSSL 3 (missing {', '.join(missing[:3])})"
        )
    return Functions(functions)


def bind_ssl(prototypes: Prototypes) -> Functions:
    """Functions of the libssl/libcrypto that Python's ssl runs, checked to be that very
    OpenSSL, 3.x.

    For code that works on ssl's own objects (an SSLContext's SSL_CTX): a second
    OpenSSL, even of the same version, would corrupt them.
    """
    lib = _ssl_handle()
    version = _bind(lib, _VERSION)
    num = version.OpenSSL_version_num()
    text = ctypes.string_at(version.OpenSSL_version(_OPENSSL_VERSION)).decode()
    if num != ssl.OPENSSL_VERSION_NUMBER or text != ssl.OPENSSL_VERSION:
        raise OpenSSLError(
            f"ctypes reaches {text!r} ({num:#x}) but ssl runs {ssl.OPENSSL_VERSION!r} "
            f"({ssl.OPENSSL_VERSION_NUMBER:#x}): not the same OpenSSL"
        )
    if not 0x30000000 <= num < 0x40000000:
        raise OpenSSLError(f"{text}: foreign keys are only known to work on OpenSSL 3.x")
    return _bind(lib, prototypes)


class LazySSL:
    """`bind_ssl(prototypes)` on the first call (in the zygote, before any fork), the same
    functions on every later one; `functions` is None until then (a callback that runs
    in a jail must never be the one to bind: dlopen is not among its syscalls)."""

    def __init__(self, prototypes: Prototypes) -> None:
        self.prototypes = prototypes
        self.functions: Functions | None = None

    def __call__(self) -> Functions:
        if self.functions is None:
            self.functions = bind_ssl(self.prototypes)
        return self.functions


def bind_libcrypto(prototypes: Prototypes) -> Functions:
    """Functions of a libcrypto 3 for work on keys of our own (the key holder's signing):
    _ssl's when it links one, else the system's libcrypto.so.3."""
    try:
        lib, origin = _ssl_handle(), "_ssl"
        lib["OpenSSL_version_num"]
    except (ImportError, OSError, AttributeError):  # OpenSSL linked statically into _ssl
        lib, origin = ctypes.CDLL("libcrypto.so.3"), "libcrypto.so.3"
    if _bind(lib, _VERSION, origin).OpenSSL_version_num() < 0x30000000:
        # Before 3.0 EVP_PKEY_CTX_set_rsa_padding was a macro, and titus assumes 3.x.
        raise OpenSSLError(f"{origin}: titus needs OpenSSL 3")
    return _bind(lib, prototypes, origin)
