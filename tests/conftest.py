"""Property-based tests draw the same examples on every run unless asked to explore.

CI must not pass or fail by luck: by default hypothesis is derandomized (its examples
depend only on the test), so a red run is reproducible and a green one means the same
thing every time.  A hunt for new cases sets TITUS_FUZZ_EXAMPLES=N (tests/fuzz/budget.py),
which also turns randomness back on; `make fuzz` runs the coverage-guided harnesses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Iterator

import pytest
from hypothesis import settings

settings.register_profile("reproducible", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile("explore" if os.environ.get("TITUS_FUZZ_EXAMPLES") else "reproducible")


# Every titus a test started writes only records that docs/logging.schema.json describes:
# checked after each test that passed (a failing test keeps its own error).
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_PASSED] = report.passed
    return report


_PASSED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def _titus_records_match_the_log_schema(request: pytest.FixtureRequest) -> Iterator[None]:
    from tests import titus_harness

    before = len(titus_harness.STARTED)
    yield
    started = titus_harness.STARTED[before:]
    del titus_harness.STARTED[before:]
    if not request.node.stash.get(_PASSED, False):
        return
    for titus in started:
        titus.assert_records_valid()


# No titus may outlive the session (a test that started one twice, say, and stopped only
# the second): each left is killed, and the session fails.
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    harness = sys.modules.get("tests.titus_harness")
    left = harness.kill_leftovers() if harness is not None else []
    if left:
        print(f"\ntitus processes left running by the tests (killed): {left}", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
