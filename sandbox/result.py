"""A jailed function's return value (or exception), brought back to the parent.

The child pickles ("ok", value, "") or ("err", exception, traceback text) onto
the spawn's sync socket, which the executor kept open for that (keep_sync: the
child said "ready" with a record instead of closing it), and exits.  The socket
is SOCK_SEQPACKET: the pickle goes in records of at most CHUNK bytes, and the
parent reads one record per read of CHUNK bytes.  The parent
must not trust those bytes: the function ran in a jail precisely because it
may be hostile, and a pickle can name any callable.  `loads` therefore only
rebuilds plain values (numbers, strings, bytes, lists, tuples, dicts, sets,
None, bool) and exception classes: the built-in ones and those of modules the
parent has already imported (its own exception types).  Anything else is
refused with ResultRefused.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Sequence

_PLAIN = {"set", "frozenset", "bytearray", "complex", "range", "slice"}
CHUNK = 65536  # bytes per record, and per read


class ResultRefused(RuntimeError):
    """The jail sent something other than a plain value or an exception."""


class JailDied(RuntimeError):
    """The jail ended without sending a result (killed, or it called os._exit)."""


def traceback_text(exc: BaseException) -> str:
    """A traceback without source lines: linecache would open the source files,
    which the jail's policy may forbid."""
    lines = ["Traceback (most recent call last):\n"]
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        lines.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
    lines.append(f"{type(exc).__qualname__}: {exc}\n")
    return "".join(lines)


def call_and_send(fd: int, target: Callable[..., object], args: Sequence[object]) -> int:
    """In the child: run target(*args), write its outcome to `fd`; the exit code."""
    try:
        payload, code = _dumps(("ok", target(*args), "")), 0
    except SystemExit as e:
        raise e
    except BaseException as e:
        payload, code = _dumps(("err", e, traceback_text(e))), 1
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view[:CHUNK]):]
    os.close(fd)
    return code


def _dumps(outcome: tuple[str, object, str]) -> bytes:
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # an unpicklable value or exception: say what it was
        kind, value, tb = outcome
        what = "exception" if kind == "err" else "return value"
        error = TypeError(f"the jailed function's {what} cannot be sent back: "
                          f"{type(value).__qualname__}: {e}")
        return pickle.dumps(("err", error, tb), protocol=pickle.HIGHEST_PROTOCOL)


class _Plain(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if module == "builtins" and name in _PLAIN:
            return getattr(builtins, name)
        owner = sys.modules.get(module)
        found = getattr(owner, name, None) if owner is not None else None
        if isinstance(found, type) and issubclass(found, BaseException):
            return found
        raise ResultRefused(f"the jail sent {module}.{name}, which is not a plain value")


def loads(data: bytes) -> object:
    """The function's return value; raises its exception (with the jail's traceback
    as a note), ResultRefused, or JailDied for no data."""
    if not data:
        raise JailDied("the jail ended without sending a result")
    try:
        kind, value, tb = _Plain(io.BytesIO(data)).load()
    except ResultRefused:
        raise
    except Exception as e:
        raise ResultRefused(f"the jail sent a malformed result: {e}") from None
    if kind == "ok":
        return value
    if kind == "err" and isinstance(value, BaseException):
        value.add_note(f"raised in the jail:\n{tb}".rstrip())
        raise value
    raise ResultRefused(f"the jail sent a malformed result ({kind!r})")
