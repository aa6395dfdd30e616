"""The configuration loader against any input: a Config, or one ConfigError line.

tests/unit/titus/test_config_errors.py throws random bytes and token soup at
load_config.  Here the inputs start from rich, valid configurations (both
formats, every option family, includes, several vhosts) and are mutated
structurally (lines dropped, doubled, swapped, re-indented, values swapped
between options, TOML keys moved between tables) and byte-wise, plus random
command-line overrides and argument lists.  Whatever happens, the only
exception is ConfigError, its text is one `FILE:LINE: message` line, and no
example takes more than a few seconds (a hang is a failure).  Finally the
real `titus --check` runs on a few mutants: exit 0 or 2, and on error one
`titus: ...` line on stderr and no traceback.

Option names come from titus.config.options.OPTIONS and the TOML tables from
titus.config.toml, so options added later are fuzzed too.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from tests.fuzz.budget import examples, fuzz_settings
from tests.titus_harness import run_cli
from tests.unit.titus.test_config_support import make_cert, write
from titus.config.load import ConfigError, load_config, parse_command_line
from titus.config.options import OPTIONS
from titus.config.toml import ARRAYS, ROOT_KEYS, SECTIONS, VHOST_KEYS

# FILE:LINE: message, or FILE: message for what is missing from a whole file (never :0).
ERROR_FORMAT = re.compile(r"^[^\n]+?(:[1-9][0-9]*)?: [^\n]+$")


def conf_seed(d: Path) -> str:
    return f"""# a titus.conf that uses most of what the format has
port 0
listen 127.0.0.1:0
listen [::1]
min-spare-children 1
max-children 8
max-handshake-time 2.5
backend-connect-timeout 3
keyholder-budget 2
keyholder-timeout 1.5
log-format json
network-user nobody
chroot /var/empty
cert certs/a.crt
key certs/a.key
backend 127.0.0.1
backend-port 8080
ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384
ecdhcurve X25519:prime256v1
tlsv1.3 yes
config inc.conf

vhost www
\tsni-name www.example.com
\tsni-name *.example.org
\tcert certs/b.crt
\tkey certs/b.key
\talpn h2,http/1.1
\tbackend-h2 yes
\tproxy-protocol v2
vhost
\tlocal-address 127.0.0.1
\tlocal-port 443
\tdhgroup 14
\tciphers DHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256
\tmin-tls-version 1.2
\tbackend-port 9000
\tclient-auth optional
\tclient-ca {d}/certs/a.crt
"""


def toml_seed(d: Path) -> str:
    return f"""# a titus.toml that uses most of what the format has
port = 0
cert = "certs/a.crt"
key = "certs/a.key"
backend = "localhost"
backend-port = 8080
backend-h2 = true
max-children = 8
min-spare-children = 1
max-handshake-time = 2.5
config = ["inc.conf"]

[tls]
min-version = "1.2"
max-version = "1.3"
curves = ["X25519", "prime256v1"]
alpn = ["h2", "http/1.1"]
honor-client-cipher-order = false

[[listen]]
address = "127.0.0.1"

[[listen]]
address = "::1"
port = 0

[[vhost]]
name = "www"
sni-name = ["www.example.com", ""]
cert = "certs/b.crt"
key = "certs/b.key"
proxy-protocol = "v1"

[vhost.tls]
min-version = "1.3"
client-auth = "required"
client-ca = "{d}/certs/a.crt"

[[vhost]]
local-address = "127.0.0.1"
local-port = 443
backend-port = 9443

[log]
format = "auto"

[jail]
uid-first = 300000
uid-count = 1000

[keyholder]
budget = 1
timeout = 2
"""


@pytest.fixture(scope="module")
def fuzz_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="titus-config-fuzz-") as name:
        d = Path(name)
        make_cert(d / "certs", "a", kind="ec")
        make_cert(d / "certs", "b")
        write(d / "inc.conf", "dns-timeout 2\n")
        write(d / "empty.conf", "")
        write(d / "seed.conf", conf_seed(d))
        write(d / "seed.toml", toml_seed(d))
        os.mkfifo(d / "fifo")
        yield d


def load(path: Path, overrides: list[tuple[str, str]] | None = None) -> str:
    """Load; 'ok' or the ConfigError, which must be one FILE:LINE: message line."""
    try:
        load_config(path, overrides or [])
    except ConfigError as e:
        message = str(e)
        assert ERROR_FORMAT.match(message), repr(message)
        return "error"
    return "ok"


def test_the_seeds_are_valid(fuzz_dir: Path) -> None:
    """Mutations start from configurations that load, so they reach deep into the checks."""
    for name in ("seed.conf", "seed.toml"):
        config = load_config(fuzz_dir / name)
        assert len(config.vhosts) == 2, name


# --- mutations -------------------------------------------------------------------------------


def value_pool(d: Path) -> list[str]:
    """Values that are valid for some option, so a swapped value often parses."""
    return [
        "0", "1", "2", "443", "65535", "65536", "-1", "1.5", "0.000000001", "3600", "1e3",
        "yes", "no", "on", "backend-only", "v1", "v2", "json", "text", "1.2", "1.3", "1.1",
        "14", "16", "17", "X25519", "secp384r1", "h2", "none", "required", "127.0.0.1",
        "::1", "[::1]:0", "*:0", "0.0.0.0", "*.example.com", "example.com", '""', "é.example",
        "xn--e-9ia.example", "a" * 300, "certs/a.crt", "certs/b.key", "certs", "inc.conf",
        "empty.conf", "fifo", "/dev/null", "/nonexistent", str(d / "certs/a.key"), "a\tb",
        "TLS_AES_128_GCM_SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "eNULL", "ALL:!ECDHE",
        "seed.conf", ".", "..", "\x00", "\x7f", "\u2028", "\ud800",
    ]


TOML_VALUES = ['0', '1', '-1', '443', '65536', '1.5', 'nan', 'inf', 'true', 'false', '""',
               '"yes"', '"127.0.0.1"', '"::1"', '"1.3"', '["h2"]', '[]', '[1, 2]', '{}',
               '{a = 1}', '"certs/a.crt"', '"certs/b.key"', '"inc.conf"', '"seed.toml"',
               "1979-05-27", '"""x\ny"""', "'a'", '"\\u0000"', '"\\ud800"', '"\\t"']


def mutate_lines(text: str, rng: random.Random, names: list[str], values: list[str],
                 toml: bool) -> str:
    lines = text.split("\n")
    for _ in range(rng.choice([1, 1, 2, 3])):
        if not lines:
            lines = [""]
        i = rng.randrange(len(lines))
        pick = rng.randrange(9)
        if pick == 0:
            del lines[i]
        elif pick == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif pick == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif pick == 3:  # indentation decides vhost blocks in titus.conf
            stripped = lines[i].lstrip(" \t")
            lines[i] = rng.choice(["", "\t", " ", "  \t"]) + stripped
        elif pick == 4:  # another value for this option / key
            sep = " = " if toml else "\t"
            head = re.split(r"\s*=\s*|[ \t]+", lines[i].strip(), maxsplit=1)[0]
            indent = lines[i][: len(lines[i]) - len(lines[i].lstrip(" \t"))]
            lines[i] = f"{indent}{head}{sep}{rng.choice(values)}"
        elif pick == 5:  # another option with this line's value
            parts = re.split(r"(\s*=\s*|[ \t]+)", lines[i].strip(), maxsplit=1)
            rest = "".join(parts[1:]) if len(parts) > 1 else (" = 1" if toml else " 1")
            lines[i] = rng.choice(names) + rest
        elif pick == 6:  # a new line: any option, any value
            sep = " = " if toml else rng.choice([" ", "\t"])
            lines.insert(i, f"{rng.choice(names)}{sep}{rng.choice(values)}")
        elif pick == 7 and toml:  # a table header somewhere else
            tables = [f"[{n}]" for n in SECTIONS] + [f"[[{n}]]" for n in ARRAYS] + [
                "[vhost.tls]", "[tls.x]", "[[tls]]", "[listen]"]
            lines.insert(i, rng.choice(tables))
        else:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut]
    return "\n".join(lines)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(out) + 1)
        pick = rng.randrange(4)
        if pick == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif pick == 1:
            out[pos:pos] = rng.choice([b"\n", b"\t", b" ", b"=", b"#", b"[", b'"', b"\\",
                                       b"\r", b"\x00", b"\xff", b"\xc3", rng.randbytes(3)])
        elif pick == 2:
            del out[pos : pos + rng.randint(1, 8)]
        else:
            del out[pos:]
    return bytes(out)


CONF_NAMES = [*sorted(OPTIONS), "vhost", "vhost www", "prot", "#", "config-directory"]
TOML_NAMES = sorted({*ROOT_KEYS, *VHOST_KEYS, *(k for keys in SECTIONS.values() for k in keys),
                     "address", "name", "tls", "vhost", "listen", '"port"', "a.b", "tls.alpn"})


@fuzz_settings(400)
@given(st.sampled_from(["seed.conf", "seed.toml"]), st.integers(0, 2**32),
       st.integers(0, 3))
def test_mutated_configurations(fuzz_dir: Path, seed_name: str, seed: int,
                                byte_rounds: int) -> None:
    rng = random.Random(seed)
    toml = seed_name.endswith(".toml")
    text = (fuzz_dir / seed_name).read_text()
    text = mutate_lines(text, rng, TOML_NAMES if toml else CONF_NAMES,
                        TOML_VALUES if toml else value_pool(fuzz_dir), toml)
    data = text.encode("utf-8", "surrogatepass")
    for _ in range(byte_rounds):
        data = mutate_bytes(data, rng)
    path = fuzz_dir / f"mutant{'.toml' if toml else '.conf'}"
    path.write_bytes(data)
    event(load(path))


OVERRIDE_NAMES = st.one_of(st.sampled_from(sorted(OPTIONS)),
                           st.text(max_size=12), st.sampled_from(["config", "vhost", ""]))


@fuzz_settings(300)
@given(st.sampled_from(["seed.conf", "seed.toml"]),
       st.lists(st.tuples(OVERRIDE_NAMES, st.one_of(st.sampled_from(value_pool(Path("/x"))),
                                                    st.text(max_size=20))), max_size=4))
def test_command_line_overrides(fuzz_dir: Path, seed_name: str,
                                overrides: list[tuple[str, str]]) -> None:
    cwd = os.getcwd()
    os.chdir(fuzz_dir)  # relative paths on the command line are relative to the cwd
    try:
        event(load(fuzz_dir / seed_name, overrides))
    finally:
        os.chdir(cwd)


@fuzz_settings(400)
@given(st.lists(st.one_of(st.sampled_from(["--port", "--config", "--vhost", "--", "-", "--=",
                                           "--port=1", "=", "--sni-name"]),
                          st.text(max_size=10)), max_size=6))
def test_command_line_words(words: list[str]) -> None:
    try:
        pairs = parse_command_line(words)
    except ConfigError as e:
        assert ERROR_FORMAT.match(str(e)), str(e)
        return
    assert all(isinstance(n, str) and isinstance(v, str) for n, v in pairs)


# --- the real command ------------------------------------------------------------------------


CLI_RUNS = 6  # each is a whole titus process; a longer run does at most MAX_CLI_RUNS
MAX_CLI_RUNS = 60


@pytest.mark.timeout(600)
def test_titus_check_on_mutants_prints_one_line(fuzz_dir: Path) -> None:
    """`titus --config MUTANT --check`: exit 0 or 2; an error is one line, never a traceback."""
    rng = random.Random(int(os.environ.get("TITUS_FUZZ_SEED", "0") or 0))
    runs = min(examples(CLI_RUNS), MAX_CLI_RUNS)
    seen = {0: 0, 2: 0}
    for i in range(runs):
        toml = i % 2 == 1
        seed_text = (fuzz_dir / ("seed.toml" if toml else "seed.conf")).read_text()
        for _ in range(20):  # prefer mutants that fail, as errors are what is checked
            text = mutate_lines(seed_text, rng, TOML_NAMES if toml else CONF_NAMES,
                                TOML_VALUES if toml else value_pool(fuzz_dir), toml)
            path = fuzz_dir / f"cli{i}{'.toml' if toml else '.conf'}"
            path.write_text(text, errors="surrogatepass")
            if load(path) == "error" or _ == 19:
                break
        code, out, err = run_cli(path, "--check", timeout=60)
        assert code in seen, (code, out, err)
        seen[code] += 1
        assert "Traceback" not in err, err
        if code == 2:
            errors = [line for line in err.splitlines() if not line.startswith("titus: note:")]
            assert len(errors) == 1 and errors[0].startswith("titus: "), err
            assert ERROR_FORMAT.match(errors[0][len("titus: "):]), err
    assert seen[2] > 0


@pytest.mark.parametrize("option", ["config", "config-directory", "cert", "key", "dhgroup",
                                    "pid-file", "client-ca"])
def test_a_path_with_a_lone_surrogate_is_a_config_error(fuzz_dir: Path, option: str) -> None:
    """Regression: `config` with "\\ud800" (possible through the API, not from argv, whose
    undecodable bytes become U+DC80..U+DCFF) escaped as UnicodeEncodeError from realpath."""
    with pytest.raises(ConfigError, match="lone surrogate"):
        load_config(fuzz_dir / "seed.conf", [(option, "a\ud800b")])
    assert load(fuzz_dir / "seed.conf", [(option, "\udcff")]) in ("ok", "error")  # a byte 0xff
