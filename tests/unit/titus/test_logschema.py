"""The log schema (titus/logschema.py, docs/logging.md, docs/logging.schema.json) covers every
record titus can write: every `logs.event(...)` call in titus names a documented event, with
documented fields and levels, and nothing is documented that no call writes."""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tests.titus_harness import ROOT, invalid_records
from titus import logs
from titus.logschema import EVENTS, json_schema

LEVELS = {"logging.INFO": "INFO", "logging.WARNING": "WARNING", "logging.ERROR": "ERROR"}


def event_calls() -> list[tuple[str, str, str | None, set[str]]]:
    """(where, event name, level or None if computed, keyword names) of every call."""
    found = []
    for path in sorted((ROOT / "titus").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "event" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "logs"):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            assert node.args and isinstance(node.args[0], ast.Constant), \
                f"{where}: the event name must be a literal"
            level = "INFO" if len(node.args) < 2 else LEVELS.get(ast.unparse(node.args[1]))
            assert not any(k.arg is None for k in node.keywords), f"{where}: no **fields"
            found.append((where, node.args[0].value, level, {k.arg for k in node.keywords}))
    return found


CALLS = event_calls()


def test_the_schema_is_valid_json_schema() -> None:
    Draft202012Validator.check_schema(json_schema())
    committed = json.loads((ROOT / "docs" / "logging.schema.json").read_text())
    assert committed == json_schema(), "docs/logging.schema.json is out of date: make docs"


@pytest.mark.parametrize(("where", "name", "level", "fields"), CALLS,
                         ids=[c[0] for c in CALLS])
def test_every_event_written_is_documented(where: str, name: str, level: str | None,
                                           fields: set[str]) -> None:
    assert name in EVENTS, f"{where}: event {name!r} is not in titus/logschema.py"
    documented = set(EVENTS[name].fields)
    assert fields == documented, (f"{where}: {name} writes {sorted(fields)}, "
                                  f"documented: {sorted(documented)}")
    if level is not None:
        assert level in EVENTS[name].levels, f"{where}: {name} at {level}"


def test_nothing_is_documented_that_is_never_written() -> None:
    assert set(EVENTS) == {name for _, name, _, _ in CALLS}


def test_a_record_as_titus_writes_it_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(stream, "isatty", lambda: False, raising=False)
    logs.setup("json", stream=stream)
    try:
        logs.event("started", listeners=[logs.endpoint(("127.0.0.1", 443)),
                                         logs.endpoint(("::1", 8443, 0, 0))],
                   metrics=None, vhosts=1, min_spare=3, max_children=100)
        logs.event("reload-refused", logging.ERROR, error="x")
    finally:
        logs.setup("json", stream=io.StringIO())
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records[0]["listeners"] == ["127.0.0.1:443", "[::1]:8443"]
    assert records[0]["time"].endswith("Z") and "T" in records[0]["time"]
    assert invalid_records(records) == []
    # What titus wrote before: a Python tuple for an address, a local time without offset.
    before = dict(records[0], listeners=["('127.0.0.1', 443)"])
    assert invalid_records([before])
    assert invalid_records([dict(records[1], time="2026-12-02 17:10:39,896")])
    assert invalid_records([dict(records[1], surprise=1)])  # no undocumented field


@pytest.mark.parametrize(("addr", "text"), [
    (("127.0.0.1", 443), "127.0.0.1:443"),
    (("::1", 443, 0, 0), "[::1]:443"),
    (("::ffff:192.0.2.1", 443, 0, 0), "192.0.2.1:443"),
    (("fe80::1%lo", 80), "[fe80::1%lo]:80"),
])
def test_endpoint(addr: tuple, text: str) -> None:
    assert logs.endpoint(addr) == text


def test_docs_list_every_event() -> None:
    markdown = (Path(ROOT) / "docs" / "logging.md").read_text()
    for name in EVENTS:
        assert f"### {name}\n" in markdown


@pytest.mark.parametrize("created", [
    1733463346.9609995,  # half a microsecond: datetime rounds it to even
    1609659685.4119995, 2167923688.9349995, 1764870000.0, 1764870000.9995, 1764870000.999999,
    1764870059.9999996,  # rounds up into the next second, and the next minute
    1764870060.0004])
def test_record_times_are_datetimes_rfc3339(created: float) -> None:
    """rfc3339 keeps the text up to the second between records: each time still reads as
    datetime writes it, whichever second came before."""
    import datetime

    expected = datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")
    assert logs.rfc3339(created) == expected
    assert logs.rfc3339(created - 1) != expected  # another second in between
    assert logs.rfc3339(created) == expected
