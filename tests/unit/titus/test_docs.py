"""The generated docs cannot drift from the code.

docs/options.md and docs/titus.8 must be what `make docs` writes now; every
option the parser knows is in both (and nothing else is); every example in
them is read by the real parser, and its titus.conf and titus.toml forms mean
the same; the defaults stated in the help text are the model's; the man page
renders without a groff warning; the hand-written pages link to files that exist.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from titus.config import toml as config_toml
from titus.config.conf import read_conf
from titus.config.draft import Draft, Sourced
from titus.config.model import ConfigError, Source
from titus.config.options import OPTIONS
from titus.config.toml import read_toml
from titus.docs import options as docs_options
from titus.docs.gen import DOCS, GENERATED
from titus.docs.man import esc
from titus.docs.options import OptionDoc, all_options

REPO = DOCS.parent
DOCUMENTED = all_options()


def test_committed_docs_are_what_make_docs_writes(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "titus.docs.gen", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        committed = DOCS / name
        assert committed.exists(), f"docs/{name} is missing: run make docs"
        assert (tmp_path / name).read_text() == committed.read_text(), (
            f"docs/{name} is out of date: run make docs")


def test_every_option_and_nothing_else_is_documented() -> None:
    markdown = (DOCS / "options.md").read_text()
    man = (DOCS / "titus.8").read_text()
    headings = re.findall(r"^### `([^`]+)`$", markdown, re.MULTILINE)
    assert sorted(headings) == sorted(OPTIONS)
    configuration = man.split("\n.SH CONFIGURATION\n")[1].split("\n.SH ")[0]
    entries = re.findall(r"^\.TP\n\\fB(.+?)\\fP", configuration, re.MULTILINE)
    assert sorted(entries) == sorted(esc(name) for name in OPTIONS)
    # every place titus.toml reads, spelled from config_toml's own tables
    places = [f"`{key}` (top level)" for key in config_toml.ROOT_KEYS]
    places += [f"`[{section}] {key}`" for section, keys in config_toml.SECTIONS.items()
               for key in keys]
    places += [f"`[[vhost]] {key}`" for key in config_toml.VHOST_KEYS]
    places += [f"`[vhost.tls] {key}`" for key in config_toml.TLS_KEYS]
    places += [f"`[[listen]] {', '.join(config_toml.LISTEN_KEYS)}`"]
    for place in places:
        assert place in markdown, place


def test_doc_tables_name_only_known_options() -> None:
    """A renamed or removed option must not leave a stale example or placeholder behind."""
    for table in (docs_options._SYNTAX, docs_options._EXAMPLES, docs_options._DEFAULT_WORDS,
                  docs_options._FIELDS):
        assert set(table) <= set(OPTIONS)
    assert set(docs_options.TITUS_04) <= set(OPTIONS)


def test_handler_families_are_recognised() -> None:
    """The superseded and refused options are found by their handler factory."""
    by_status: dict[str, set[str]] = {}
    for doc in DOCUMENTED:
        by_status.setdefault(doc.status, set()).add(doc.name)
    assert by_status["superseded"] == {
        "network-user", "network-group", "keyserver-user", "keyserver-group", "chroot"}
    assert by_status["refused"] == {"compression", "sslv3", "tlsv1", "tlsv1.1"}
    assert {doc.name for doc in DOCUMENTED if doc.syntax == "FILE"} >= {
        "pid-file", "key", "cert", "client-ca"}


def _plain(value: Any) -> Any:
    """A draft without the file/line it came from, to compare two drafts."""
    if isinstance(value, Sourced):
        return _plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name not in ("source", "main", "sources")}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _read(reader: Any, path: Path, text: str) -> tuple[Any, list[tuple[str, str]]]:
    included: list[tuple[str, str]] = []
    draft = Draft.new(Source(str(path), 0))
    reader(draft, path, text, lambda name, value, src, base: included.append((name, value)))
    return _plain(draft), included


@pytest.mark.parametrize("doc", [d for d in DOCUMENTED if d.conf_example or d.toml_example],
                         ids=lambda d: d.name)
def test_examples_are_read_by_the_parser_and_mean_the_same(doc: OptionDoc,
                                                           tmp_path: Path) -> None:
    results = []
    if doc.conf_example:
        results.append(_read(read_conf, tmp_path / "titus.conf", doc.conf_example + "\n"))
    if doc.toml_example:
        results.append(_read(read_toml, tmp_path / "titus.toml", doc.toml_example + "\n"))
    empty = _read(read_conf, tmp_path / "titus.conf", "")
    for result in results:
        # a refused option's "no" is what titus does anyway; its "yes" must be refused
        assert (result == empty) == (doc.status == "refused"), doc.name
    if doc.status == "refused":
        with pytest.raises(ConfigError, match=r"refused|not supported"):
            _read(read_conf, tmp_path / "titus.conf", f"{doc.name} yes\n")
    if len(results) == 2:
        assert results[0] == results[1], f"{doc.name}: titus.conf and TOML examples differ"


@pytest.mark.parametrize("name", [n for n, o in OPTIONS.items()
                                  if re.search(r"\(default \S+?\)", o.help)])
def test_help_text_defaults_are_the_models(name: str) -> None:
    stated = re.search(r"\(default (\S+?)\)", OPTIONS[name].help).group(1)  # type: ignore[union-attr]
    assert stated == docs_options.default(name)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff-base (make deps) not installed")
@pytest.mark.parametrize("device", ["ps", "utf8"])
def test_man_page_renders_without_warnings(device: str) -> None:
    result = subprocess.run(["groff", "-man", "-ww", "-z", f"-T{device}", str(DOCS / "titus.8")],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff-base (make deps) not installed")
def test_man_page_shows_every_option_as_typed() -> None:
    text = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou", str(DOCS / "titus.8")],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "CONFIGURATION", "SIGNALS",
                    "FILES", "SEE ALSO"):
        assert re.search(rf"^{section}$", text, re.MULTILINE), section
    for doc in DOCUMENTED:
        assert re.search(rf"^ +{re.escape(doc.name)} ", text, re.MULTILINE), doc.name
    assert "ECDHE-RSA-AES128-GCM-SHA256" in text  # hyphens print as ASCII, not U+2010/2212


def _slugs(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown page."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_pages_link_to_files_and_headings_that_exist() -> None:
    pages = sorted(DOCS.glob("*.md"))
    assert {p.name for p in pages} >= {"README.md", "options.md", "migrating-from-titus.md",
                                        "security-model.md"}
    for page in [*pages, REPO / "README.md"]:
        for target, fragment in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)",
                                           page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path = page.parent / target if target else page
            assert path.exists(), f"{page.name}: broken link {target}"
            if fragment and path.suffix == ".md":
                assert fragment in _slugs(path), f"{page.name}: no heading #{fragment} in {target}"
