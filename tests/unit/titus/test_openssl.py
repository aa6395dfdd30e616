"""titus/openssl.py: the one ctypes binding of OpenSSL — each caller's functions are its own,
and a missing symbol or a second OpenSSL is refused with the reason."""

from __future__ import annotations

import ctypes
import ssl
from pathlib import Path

import pytest

from titus import openssl

REPO = Path(__file__).resolve().parents[3]
VERSION: openssl.Prototypes = {"OpenSSL_version_num": ([], ctypes.c_ulong)}


def test_each_caller_gets_its_own_function_objects() -> None:
    a = openssl.bind_ssl(VERSION)
    b = openssl.bind_ssl({"OpenSSL_version_num": ([], ctypes.c_long)})
    assert a.OpenSSL_version_num is not b.OpenSSL_version_num
    assert a.OpenSSL_version_num.restype is ctypes.c_ulong
    assert a.OpenSSL_version_num() == ssl.OPENSSL_VERSION_NUMBER


def test_the_key_holder_s_libcrypto_is_openssl_3() -> None:
    lib = openssl.bind_libcrypto(VERSION)
    assert lib.OpenSSL_version_num() >= 0x30000000


def test_a_missing_symbol_is_named() -> None:
    with pytest.raises(openssl.OpenSSLError, match="missing no_such_function"):
        openssl.bind_ssl({"no_such_function": ([], None)})
    with pytest.raises(AttributeError, match="was not bound"):
        openssl.bind_ssl(VERSION).RSA_new  # noqa: B018


def test_another_openssl_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ssl, "OPENSSL_VERSION", "OpenSSL 9.9.9 (not the one ctypes sees)")
    with pytest.raises(openssl.OpenSSLError, match="not the same OpenSSL"):
        openssl.bind_ssl(VERSION)


def test_no_other_module_loads_openssl_itself() -> None:
    """One binder: nothing else in titus/ dlopens a library with ctypes."""
    loaders = [str(p.relative_to(REPO)) for p in (REPO / "titus").rglob("*.py")
               if "CDLL(" in p.read_text() and p.name != "openssl.py"]
    assert loaders == []
