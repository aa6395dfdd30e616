"""The worker's side of the remote key: TLS with Python's ssl, signatures from the key holder.

Python's _ssl links the system libssl/libcrypto dynamically, so ctypes can
reach the very SSL_CTX behind an ssl.SSLContext.  Into it we install the
certificate chain and a "foreign" private key that holds only the public half:
an RSA with an RSA_METHOD whose priv_enc, or an EC_KEY with an EC_KEY_METHOD
whose sign, forwards the operation to the key holder over a channel.  OpenSSL 3
keeps calling a foreign key's methods instead of its providers.

Rules that keep this from corrupting the process: every ctypes function has
argtypes/restype; buffers are c_void_p; every symbol is looked up through
_ssl's own link map, and the SSL_CTX pointer is checked against Python's view
before use; callbacks never raise (they fail the operation instead) and check
the answer's length against RSA_size / ECDSA_size; methods, callbacks and keys
live as long as the process.  RSA key exchange is switched off: it would need a
decryption, which a foreign key cannot (and the key holder will not) do.

The channel is set after fork (``set_channel``); a fork clears it in the child,
so a context built before fork is used with the child's own channel.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import ssl
import time
from _thread import allocate_lock  # threading's Lock, without threading's after-fork hook
from dataclasses import dataclass, field
from typing import Protocol

from titus.wire.keyproto import (
    EC_CURVES,
    MAX_RESPONSE,
    RSA_MAX_BITS,
    RSA_MIN_BITS,
    Op,
    ProtocolError,
    Request,
    Status,
    decode_response_packet,
    encode_request,
)

DEFAULT_TIMEOUT = 2.0
_RSA_PKCS1_PADDING = 1
_RSA_NO_PADDING = 3
_SSL_CTRL_CHAIN = 88
_SSL_CTRL_CHAIN_CERT = 89
_OPENSSL_VERSION = 0  # OpenSSL_version(OPENSSL_VERSION)


class RemoteKeyError(RuntimeError):
    """The remote key cannot be installed or used safely; refuse to run."""


# --- OpenSSL through _ssl's link map ----------------------------------------------------------

_c = ctypes
PRIV_ENC = _c.CFUNCTYPE(_c.c_int, _c.c_int, _c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_int)
PRIV_DEC = PRIV_ENC
EC_SIGN = _c.CFUNCTYPE(
    _c.c_int,
    _c.c_int,
    _c.c_void_p,
    _c.c_int,
    _c.c_void_p,
    _c.POINTER(_c.c_uint),
    _c.c_void_p,
    _c.c_void_p,
    _c.c_void_p,
)

_SIGNATURES: dict[str, tuple[list, object]] = {
    "OpenSSL_version_num": ([], _c.c_ulong),
    "OpenSSL_version": ([_c.c_int], _c.c_void_p),
    "ERR_clear_error": ([], None),
    "BN_bin2bn": ([_c.c_void_p, _c.c_int, _c.c_void_p], _c.c_void_p),
    "BN_free": ([_c.c_void_p], None),
    "RSA_new": ([], _c.c_void_p),
    "RSA_free": ([_c.c_void_p], None),
    "RSA_set0_key": ([_c.c_void_p, _c.c_void_p, _c.c_void_p, _c.c_void_p], _c.c_int),
    "RSA_size": ([_c.c_void_p], _c.c_int),
    "RSA_get_default_method": ([], _c.c_void_p),
    "RSA_meth_dup": ([_c.c_void_p], _c.c_void_p),
    "RSA_meth_set1_name": ([_c.c_void_p, _c.c_void_p], _c.c_int),
    "RSA_meth_set_priv_enc": ([_c.c_void_p, PRIV_ENC], _c.c_int),
    "RSA_meth_set_priv_dec": ([_c.c_void_p, PRIV_DEC], _c.c_int),
    "RSA_set_method": ([_c.c_void_p, _c.c_void_p], _c.c_int),
    "EC_KEY_get_default_method": ([], _c.c_void_p),
    "EC_KEY_METHOD_new": ([_c.c_void_p], _c.c_void_p),
    "EC_KEY_METHOD_set_sign": ([_c.c_void_p, EC_SIGN, _c.c_void_p, _c.c_void_p], None),
    "EC_KEY_new_by_curve_name": ([_c.c_int], _c.c_void_p),
    "EC_KEY_set_method": ([_c.c_void_p, _c.c_void_p], _c.c_int),
    "EC_KEY_oct2key": ([_c.c_void_p, _c.c_void_p, _c.c_size_t, _c.c_void_p], _c.c_int),
    "EC_KEY_free": ([_c.c_void_p], None),
    "ECDSA_size": ([_c.c_void_p], _c.c_int),
    "OBJ_sn2nid": ([_c.c_void_p], _c.c_int),
    "EVP_PKEY_new": ([], _c.c_void_p),
    "EVP_PKEY_free": ([_c.c_void_p], None),
    "EVP_PKEY_set1_RSA": ([_c.c_void_p, _c.c_void_p], _c.c_int),
    "EVP_PKEY_set1_EC_KEY": ([_c.c_void_p, _c.c_void_p], _c.c_int),
    "d2i_X509": ([_c.c_void_p, _c.POINTER(_c.c_void_p), _c.c_long], _c.c_void_p),
    "X509_free": ([_c.c_void_p], None),
    "SSL_CTX_get_options": ([_c.c_void_p], _c.c_uint64),
    "SSL_CTX_use_certificate": ([_c.c_void_p, _c.c_void_p], _c.c_int),
    "SSL_CTX_use_PrivateKey": ([_c.c_void_p, _c.c_void_p], _c.c_int),
    "SSL_CTX_check_private_key": ([_c.c_void_p], _c.c_int),
    "SSL_CTX_ctrl": ([_c.c_void_p, _c.c_int, _c.c_long, _c.c_void_p], _c.c_long),
}


def _load_openssl() -> ctypes.CDLL:
    """Resolve every symbol through _ssl's own handle: the libssl/libcrypto Python's TLS uses.

    dlsym on the _ssl extension searches its dependency tree, so a second
    OpenSSL in the process (cryptography bundles one) can never be picked up.
    """
    import _ssl

    lib = ctypes.CDLL(_ssl.__file__)
    missing = [name for name in _SIGNATURES if not hasattr(lib, name)]
    if missing:
        raise RemoteKeyError(
            f"_ssl does not link a shared OpenSSL 3 (missing {', '.join(missing[:3])})"
        )
    for name, (argtypes, restype) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype
    num = lib.OpenSSL_version_num()
    text = ctypes.string_at(lib.OpenSSL_version(_OPENSSL_VERSION)).decode()
    if num != ssl.OPENSSL_VERSION_NUMBER or text != ssl.OPENSSL_VERSION:
        raise RemoteKeyError(
            f"ctypes reaches {text!r} ({num:#x}) but ssl runs {ssl.OPENSSL_VERSION!r} "
            f"({ssl.OPENSSL_VERSION_NUMBER:#x}): not the same OpenSSL"
        )
    if not 0x30000000 <= num < 0x40000000:
        raise RemoteKeyError(f"{text}: foreign keys are only known to work on OpenSSL 3.x")
    return lib


_lib_cache: ctypes.CDLL | None = None
_lib_lock = allocate_lock()


def _lib() -> ctypes.CDLL:
    global _lib_cache
    with _lib_lock:
        if _lib_cache is None:
            _lib_cache = _load_openssl()
        return _lib_cache


def check_runtime() -> str:
    """Refuse early (RemoteKeyError) if this process can't use remote keys; returns the version."""
    _lib()
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ssl_ctx_pointer(probe)
    return ssl.OPENSSL_VERSION


def ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The SSL_CTX* behind ``ctx``, after proving it is one by flipping an option both ways."""
    if not isinstance(ctx, ssl.SSLContext):
        raise TypeError("an ssl.SSLContext is needed")
    # PySSLContext: PyObject_HEAD, then SSL_CTX *ctx.
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        raise RemoteKeyError("no SSL_CTX pointer where CPython 3.11 keeps it")
    _check_ctx_pointer(ctx, ptr)
    return ptr


def _check_ctx_pointer(ctx: ssl.SSLContext, ptr: int) -> None:
    lib = _lib()
    original = int(ctx.options)
    flipped = original ^ ssl.OP_NO_TICKET
    seen = [lib.SSL_CTX_get_options(ptr)]
    try:
        ctx.options = flipped
        seen.append(lib.SSL_CTX_get_options(ptr))
    finally:
        ctx.options = original
    seen.append(lib.SSL_CTX_get_options(ptr))
    if seen != [original, flipped, original]:
        raise RemoteKeyError(
            "the pointer after the object header is not this context's SSL_CTX "
            f"(options seen {[hex(v) for v in seen]}, expected {original:#x}/{flipped:#x})"
        )


# --- transport --------------------------------------------------------------------------------


class Transport(Protocol):
    def call(self, op: Op, key_id: int, payload: bytes) -> bytes:
        """Return the signature or raise; must never block past its own timeout."""
        ...


class ChannelTransport:
    """Requests over the worker's SOCK_SEQPACKET channel, one at a time, each with a deadline.

    Any failure breaks the channel for good: a late answer to a timed-out
    request must never be taken for the answer to the next one.
    """

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            raise ValueError("the key-holder channel must be an AF_UNIX SOCK_SEQPACKET socket")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.sock = sock
        self.timeout = timeout
        self._next_id = 1
        self._broken: str | None = None
        self._lock = allocate_lock()

    def call(self, op: Op, key_id: int, payload: bytes) -> bytes:
        with self._lock:
            if self._broken is not None:
                raise RemoteKeyError(f"key-holder channel unusable: {self._broken}")
            try:
                return self._call(op, key_id, payload)
            except BaseException as e:
                self._broken = f"{type(e).__name__}: {e}"
                raise

    def _wait(self, events: int, deadline: float) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), events)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the key holder in {self.timeout} s")
            ready = poller.poll(max(1, int(left * 1000 + 0.999)))
            if not ready:
                continue
            revents = ready[0][1]
            if revents & (select.POLLERR | select.POLLNVAL):
                raise ConnectionError("key-holder channel failed")
            if revents & (events | select.POLLHUP):
                return  # on POLLHUP the read or write below reports what happened

    def _call(self, op: Op, key_id: int, payload: bytes) -> bytes:
        deadline = time.monotonic() + self.timeout
        request_id = self._next_id
        self._next_id = (self._next_id % 0xFFFFFFFF) + 1
        frame = encode_request(Request(op, key_id, request_id, payload))
        flags = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
        while True:
            try:
                self.sock.send(frame, flags)
                break
            except BlockingIOError:
                self._wait(select.POLLOUT, deadline)
        while True:
            self._wait(select.POLLIN, deadline)
            try:
                packet = self.sock.recv(MAX_RESPONSE + 1, socket.MSG_DONTWAIT)
                break
            except BlockingIOError:
                continue
        if not packet:
            raise ConnectionError("the key holder closed the channel")
        resp = decode_response_packet(packet)
        if resp.request_id != request_id:
            raise ProtocolError(f"answer to request {resp.request_id}, not {request_id}")
        if resp.status != Status.OK:
            raise RemoteKeyError(f"key holder refused: {resp.status.name}")
        return resp.payload


_transport: Transport | None = None


def set_transport(transport: Transport | None) -> None:
    """Where signatures come from in this process (None: nowhere, every signature fails)."""
    global _transport
    _transport = transport


def set_channel(sock: socket.socket | None, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Use ``sock`` (the worker's end of its key-holder channel); call it after fork."""
    set_transport(None if sock is None else ChannelTransport(sock, timeout))


def _forget_channel_after_fork() -> None:
    # A channel shared by two processes would mix up their answers.
    global _transport, _stats_lock, _lib_lock
    _transport = None
    _stats_lock = allocate_lock()
    _lib_lock = allocate_lock()


os.register_at_fork(after_in_child=_forget_channel_after_fork)


# --- statistics -------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the callbacks did in this process; for logs and tests, never for decisions."""

    ok: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_latency: float | None = None


_stats = Stats()
_stats_lock = allocate_lock()


def stats() -> Stats:
    with _stats_lock:
        return Stats(dict(_stats.ok), dict(_stats.failed), _stats.last_error, _stats.last_latency)


def reset_stats() -> None:
    global _stats
    with _stats_lock:
        _stats = Stats()


def _record(op: Op, error: BaseException | None, latency: float | None) -> None:
    with _stats_lock:
        if error is None:
            _stats.ok[op.name] = _stats.ok.get(op.name, 0) + 1
            _stats.last_latency = latency
        else:
            _stats.failed[op.name] = _stats.failed.get(op.name, 0) + 1
            _stats.last_error = f"{type(error).__name__}: {error}"


def _remote_sign(key: RemoteKey, op: Op, payload: bytes) -> bytes:
    transport = _transport
    if transport is None:
        raise RemoteKeyError("no key-holder channel in this process (set_channel)")
    start = time.perf_counter()
    sig = transport.call(op, key.key_id, payload)
    _record(op, None, time.perf_counter() - start)
    return sig


# --- the callbacks ----------------------------------------------------------------------------

_keys_by_native: dict[int, RemoteKey] = {}  # RSA* / EC_KEY* -> key; entries are never removed


def _priv_enc(flen: int, from_: int | None, to: int | None, rsa_ptr: int | None, pad: int) -> int:
    op = Op.SIGN_RSA_RAW if pad == _RSA_NO_PADDING else Op.SIGN_RSA_PKCS1
    try:
        key = _keys_by_native.get(rsa_ptr or 0)
        if key is None or key.kind != "rsa" or not from_ or not to:
            raise RemoteKeyError("priv_enc called for a key we did not install")
        if pad not in (_RSA_NO_PADDING, _RSA_PKCS1_PADDING):
            raise RemoteKeyError(f"RSA padding {pad} is not served")
        if not 0 < flen <= key.signature_size:
            raise RemoteKeyError(f"{flen}-byte input for RSA-{key.bits}")
        sig = _remote_sign(key, op, ctypes.string_at(from_, flen))
        if len(sig) != key.signature_size:
            raise RemoteKeyError(f"{len(sig)}-byte answer, RSA_size is {key.signature_size}")
        ctypes.memmove(to, sig, len(sig))
        return len(sig)
    except BaseException as e:
        _record(op, e, None)
        return -1


def _priv_dec(flen: int, from_: int | None, to: int | None, rsa_ptr: int | None, pad: int) -> int:
    # RSA key exchange is off; if anything still asks for a decryption, there is none.
    _record(Op.SIGN_RSA_RAW, RemoteKeyError("RSA decryption requested and refused"), None)
    return -1


def _ec_sign(
    type_: int,
    dgst: int | None,
    dlen: int,
    sig: int | None,
    siglen: ctypes._Pointer,  # type: ignore[name-defined]
    kinv: int | None,
    r: int | None,
    eckey: int | None,
) -> int:
    op = Op.SIGN_ECDSA
    try:
        key = _keys_by_native.get(eckey or 0)
        if key is None or key.kind != "ec" or not dgst or not sig or not siglen:
            raise RemoteKeyError("ECDSA sign called for a key we did not install")
        if kinv or r:
            raise RemoteKeyError("a caller-chosen ECDSA nonce is not served")
        if not 0 < dlen <= 64:
            raise RemoteKeyError(f"{dlen}-byte digest")
        der = _remote_sign(key, op, ctypes.string_at(dgst, dlen))
        if not 0 < len(der) <= key.signature_size:
            raise RemoteKeyError(f"{len(der)}-byte answer, ECDSA_size is {key.signature_size}")
        ctypes.memmove(sig, der, len(der))
        siglen[0] = len(der)
        return 1
    except BaseException as e:
        _record(op, e, None)
        return 0


# CFUNCTYPE objects and methods are created once and kept for the life of the process.
_PRIV_ENC_CB = PRIV_ENC(_priv_enc)
_PRIV_DEC_CB = PRIV_DEC(_priv_dec)
_EC_SIGN_CB = EC_SIGN(_ec_sign)
_methods: dict[str, int] = {}


def _rsa_method() -> int:
    if "rsa" not in _methods:
        lib = _lib()
        meth = lib.RSA_meth_dup(lib.RSA_get_default_method())
        if not meth:
            raise RemoteKeyError("RSA_meth_dup failed")
        if not (
            lib.RSA_meth_set1_name(meth, b"titus remote key\0")
            and lib.RSA_meth_set_priv_enc(meth, _PRIV_ENC_CB)
            and lib.RSA_meth_set_priv_dec(meth, _PRIV_DEC_CB)
        ):
            raise RemoteKeyError("cannot build the remote RSA_METHOD")
        _methods["rsa"] = meth
    return _methods["rsa"]


def _ec_method() -> int:
    if "ec" not in _methods:
        lib = _lib()
        meth = lib.EC_KEY_METHOD_new(lib.EC_KEY_get_default_method())
        if not meth:
            raise RemoteKeyError("EC_KEY_METHOD_new failed")
        # sign_setup and sign_sig stay NULL: OpenSSL then fails those paths closed.
        lib.EC_KEY_METHOD_set_sign(meth, _EC_SIGN_CB, None, None)
        _methods["ec"] = meth
    return _methods["ec"]


# --- installing a key -------------------------------------------------------------------------


@dataclass(frozen=True)
class CertChain:
    """A certificate chain, parsed (with `cryptography`) by `read_chain`.

    Picklable and free of `cryptography` objects, so a process that must stay
    small (the zygote that forks workers) can install it without importing that
    library: what OpenSSL needs is the DER of each certificate and the leaf's
    public key."""

    name: str  # file name, for messages
    ders: tuple[bytes, ...]  # leaf first
    subjects: tuple[str, ...]
    kind: str  # "rsa" or "ec"
    bits: int
    curve: str | None
    public: bytes  # RSA: the modulus, big-endian; EC: the X9.62 uncompressed point
    exponent: int = 0  # RSA's public exponent


@dataclass(frozen=True)
class RemoteKey:
    """A certificate's public key, served by the key holder as ``key_id``."""

    key_id: int
    kind: str  # "rsa" or "ec"
    bits: int
    curve: str | None
    signature_size: int  # RSA_size, or ECDSA_size (the longest DER signature)
    chain: CertChain = field(repr=False)
    _native: int = field(default=0, repr=False)  # RSA* / EC_KEY*, owned forever
    _pkey: int = field(default=0, repr=False)  # EVP_PKEY*, owned forever

    @property
    def chain_length(self) -> int:
        return len(self.chain.ders)


def _buf(data: bytes) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(data, len(data))


def _foreign_rsa(n: bytes, exponent: int) -> tuple[int, int]:
    lib = _lib()
    e = exponent.to_bytes((exponent.bit_length() + 7) // 8, "big")
    bn_n = lib.BN_bin2bn(_buf(n), len(n), None)
    bn_e = lib.BN_bin2bn(_buf(e), len(e), None)
    rsa_ptr = lib.RSA_new()
    if not (bn_n and bn_e and rsa_ptr and lib.RSA_set0_key(rsa_ptr, bn_n, bn_e, None)):
        for bn in (bn_n, bn_e):
            if bn:
                lib.BN_free(bn)
        if rsa_ptr:
            lib.RSA_free(rsa_ptr)
        raise RemoteKeyError("cannot build the public RSA key")
    # The method must be set before EVP_PKEY_set1_RSA, which decides "foreign" on assignment.
    if not lib.RSA_set_method(rsa_ptr, _rsa_method()):
        lib.RSA_free(rsa_ptr)
        raise RemoteKeyError("RSA_set_method failed")
    pkey = lib.EVP_PKEY_new()
    if not pkey or not lib.EVP_PKEY_set1_RSA(pkey, rsa_ptr):
        raise RemoteKeyError("EVP_PKEY_set1_RSA failed")
    return rsa_ptr, pkey


def _foreign_ec(curve: str, point: bytes) -> tuple[int, int]:
    lib = _lib()
    sn = {"secp256r1": b"prime256v1\0", "secp384r1": b"secp384r1\0"}[curve]
    nid = lib.OBJ_sn2nid(sn)
    eckey = lib.EC_KEY_new_by_curve_name(nid) if nid else None
    if not eckey:
        raise RemoteKeyError(f"libcrypto does not know {curve}")
    if not lib.EC_KEY_set_method(eckey, _ec_method()):
        lib.EC_KEY_free(eckey)
        raise RemoteKeyError("EC_KEY_set_method failed")
    if not lib.EC_KEY_oct2key(eckey, _buf(point), len(point), None):
        lib.EC_KEY_free(eckey)
        raise RemoteKeyError("EC_KEY_oct2key rejected the certificate's public key")
    pkey = lib.EVP_PKEY_new()
    if not pkey or not lib.EVP_PKEY_set1_EC_KEY(pkey, eckey):
        raise RemoteKeyError("EVP_PKEY_set1_EC_KEY failed")
    return eckey, pkey


def _x509(der: bytes, subject: str) -> int:
    buf = _buf(der)
    p = ctypes.c_void_p(ctypes.addressof(buf))
    ptr = _lib().d2i_X509(None, ctypes.byref(p), len(der))
    if not ptr:
        raise RemoteKeyError(f"libssl cannot parse certificate {subject}")
    return ptr


def read_chain(chain: bytes | str | os.PathLike[str], name: str | None = None) -> CertChain:
    """Parse a PEM chain (leaf first) from bytes or a file; checks the leaf's key type."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(chain, bytes):
        pem, name = chain, name or "<certificate chain>"
    else:
        name = os.fspath(chain)
        with open(name, "rb") as f:
            pem = f.read()
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise RemoteKeyError(f"{name}: not a PEM certificate chain: {e}") from None
    ders = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
    subjects = tuple(c.subject.rfc4514_string() for c in certs)
    pub = certs[0].public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        if not RSA_MIN_BITS <= pub.key_size <= RSA_MAX_BITS:
            raise RemoteKeyError(f"{name}: RSA-{pub.key_size} is outside 2048-4096 bits")
        numbers = pub.public_numbers()
        n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
        return CertChain(name, ders, subjects, "rsa", pub.key_size, None, n, numbers.e)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.name not in EC_CURVES:
            raise RemoteKeyError(f"{name}: curve {pub.curve.name} is not P-256 or P-384")
        point = pub.public_bytes(serialization.Encoding.X962,
                                 serialization.PublicFormat.UncompressedPoint)
        return CertChain(name, ders, subjects, "ec", EC_CURVES[pub.curve.name], pub.curve.name,
                         point)
    raise RemoteKeyError(f"{name}: a {type(pub).__name__} is neither RSA nor ECDSA")


def restrict_to_ecdhe(ctx: ssl.SSLContext, allow_dhe: bool = False) -> list[str]:
    """Keep only ECDHE suites below TLS 1.3 (and DHE ones with `allow_dhe`, for a
    context given DH parameters): RSA key exchange needs a decryption, an
    ephemeral key exchange only a signature."""
    kx = ("kx-ecdhe", "kx-dhe") if allow_dhe else ("kx-ecdhe",)
    keep = [
        c["name"]
        for c in ctx.get_ciphers()
        if c["protocol"] != "TLSv1.3"
        and c["kea"] in kx
        and c["auth"] in ("auth-rsa", "auth-ecdsa")
    ]
    if keep:
        ctx.set_ciphers(":".join(keep))
    elif ctx.minimum_version != ssl.TLSVersion.TLSv1_3:
        raise RemoteKeyError("no ECDHE cipher suite is enabled for TLS 1.2")
    left = [
        c["name"]
        for c in ctx.get_ciphers()
        if c["protocol"] != "TLSv1.3" and c["kea"] not in kx
    ]
    if left:
        raise RemoteKeyError(f"non-ECDHE suites still enabled: {left}")
    return keep


def install(ctx: ssl.SSLContext, chain: CertChain | bytes | str | os.PathLike[str],
            key_id: int, *, allow_dhe: bool = False) -> RemoteKey:
    """Serve ``ctx``'s certificate ``chain`` (leaf first) with key ``key_id`` of the key holder.

    Call it before the jail: a path is read here, and libssl copies what it needs.
    ``allow_dhe`` keeps DHE suites (only for a context that has DH parameters).
    """
    if not 0 <= key_id <= 0xFFFF:
        raise ValueError(f"key id {key_id} is not a u16")
    if not isinstance(chain, CertChain):
        chain = read_chain(chain)
    ctx_ptr = ssl_ctx_pointer(ctx)
    lib = _lib()
    name = chain.name
    if chain.kind == "rsa":
        native, pkey = _foreign_rsa(chain.public, chain.exponent)
        size = lib.RSA_size(native)
    else:
        assert chain.curve is not None
        native, pkey = _foreign_ec(chain.curve, chain.public)
        size = lib.ECDSA_size(native)
    key = RemoteKey(key_id, chain.kind, chain.bits, chain.curve, size, chain, native, pkey)
    _keys_by_native[native] = key  # before libssl may call us, and forever after

    lib.ERR_clear_error()
    x_leaf = _x509(chain.ders[0], chain.subjects[0])
    try:
        if lib.SSL_CTX_use_certificate(ctx_ptr, x_leaf) != 1:
            raise RemoteKeyError(f"{name}: SSL_CTX_use_certificate failed")
    finally:
        lib.X509_free(x_leaf)
    if lib.SSL_CTX_use_PrivateKey(ctx_ptr, pkey) != 1:
        raise RemoteKeyError(f"{name}: SSL_CTX_use_PrivateKey refused the remote key")
    lib.SSL_CTX_ctrl(ctx_ptr, _SSL_CTRL_CHAIN, 0, None)  # clear this slot's old chain
    for der, subject in zip(chain.ders[1:], chain.subjects[1:], strict=True):
        x = _x509(der, subject)
        try:
            if lib.SSL_CTX_ctrl(ctx_ptr, _SSL_CTRL_CHAIN_CERT, 1, x) != 1:
                raise RemoteKeyError(f"{name}: cannot add {subject}")
        finally:
            lib.X509_free(x)
    if lib.SSL_CTX_check_private_key(ctx_ptr) != 1:
        raise RemoteKeyError(f"{name}: the installed key does not match the certificate")
    lib.ERR_clear_error()
    restrict_to_ecdhe(ctx, allow_dhe)
    return key
