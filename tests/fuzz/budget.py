"""How much fuzzing a run does: small enough for CI by default, more on request.

Every fuzz test states its CI-sized number of examples; ``TITUS_FUZZ_EXAMPLES=N``
replaces it with N for a longer hunt (e.g. overnight), and scales the
network fuzzing's connection count and time limit with it.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, Phase, settings

ENV = "TITUS_FUZZ_EXAMPLES"


def examples(ci: int) -> int:
    """`ci`, unless the environment asks for a longer run."""
    wanted = os.environ.get(ENV, "").strip()
    if not wanted:
        return ci
    try:
        value = int(wanted)
    except ValueError:
        raise ValueError(f"{ENV} must be a whole number, not {wanted!r}") from None
    if value < 1:
        raise ValueError(f"{ENV} must be at least 1")
    return value


def scale(ci: float, ci_examples: int) -> float:
    """A limit (seconds, connections) grown in proportion when more examples are asked for."""
    return ci * max(1.0, examples(ci_examples) / ci_examples)


def fuzz_settings(ci: int, *, deadline: float | None = 5.0) -> settings:
    """Hypothesis settings for a fuzz test: `ci` examples, and a deadline that is a hang
    detector (seconds per example, generous: CPU is shared), not a benchmark."""
    return settings(
        max_examples=examples(ci),
        deadline=None if deadline is None else timedelta(seconds=deadline),
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        print_blob=True,
    )
