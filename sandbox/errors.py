"""Errors that name the jail layer that failed."""

from __future__ import annotations

import errno as _errno


class JailError(RuntimeError):
    """A layer of the jail could not be applied; the spawn was aborted."""

    def __init__(self, layer: str, err: int, message: str) -> None:
        self.layer = layer
        self.errno = err
        self.message = message
        self.pid: int | None = None  # set when the failed jail is another process's child
        code = _errno.errorcode.get(err, str(err)) if err else "-"
        super().__init__(f"jail layer '{layer}' failed ({code}): {message}")
