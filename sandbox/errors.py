"""Errors that name what failed: a jail layer, or a line of a policy or profile file."""

from __future__ import annotations

import errno as _errno

TYPE_CHECKING = False
if TYPE_CHECKING:  # not at run time: `sandbox run` from its cache imports this module
    from collections.abc import Iterable
    from pathlib import Path


class JailError(RuntimeError):
    """A layer of the jail could not be applied; the spawn was aborted."""

    def __init__(self, layer: str, err: int, message: str) -> None:
        self.layer = layer
        self.errno = err
        self.message = message
        self.pid: int | None = None  # set when the failed jail is another process's child
        code = _errno.errorcode.get(err, str(err)) if err else "-"
        super().__init__(f"jail layer '{layer}' failed ({code}): {message}")


class PolicyError(ValueError):
    """A policy or profile file is wrong; str() is ``FILE:LINE: message``."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        from pathlib import Path  # here: only a profile's errors need it

        self.path = Path(path)
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}")


def suggest(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` or nothing: every error should point at the fix."""
    import difflib  # here: only a misspelt name needs it

    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
