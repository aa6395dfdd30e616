"""Property-based tests draw the same examples on every run unless asked to explore.

CI must not pass or fail by luck: by default hypothesis is derandomized (its examples
depend only on the test), so a red run is reproducible and a green one means the same
thing every time.  A hunt for new cases sets TITUS_FUZZ_EXAMPLES=N (tests/fuzz/budget.py),
which also turns randomness back on; `make fuzz` runs the coverage-guided harnesses.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("reproducible", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile("explore" if os.environ.get("TITUS_FUZZ_EXAMPLES") else "reproducible")
