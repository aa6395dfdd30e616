#!/usr/bin/env bash
# Fill build/wheelhouse with every wheel the container image installs, so that
# `docker build` / `podman build` needs no PyPI of its own.
#
# The image runs Debian 12's python3 (3.11), so the wheels are made here by a
# Python 3.11 (.venv's, or $WHEEL_PYTHON) on a Debian 12 host: binary wheels as pip
# picks them for this glibc, python-prctl built from source against libcap-dev
# (which `make` installs).  Versions are the pins of requirements.lock: the
# runtime dependencies of pyproject.toml plus its build backend (setuptools),
# and nothing else.  Reruns are free while requirements.lock and pyproject.toml
# are unchanged (build/wheelhouse/.stamp holds their hash).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${WHEEL_PYTHON:-.venv/bin/python}
OUT=build/wheelhouse
key=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$key" ]; then
    echo "wheelhouse: up to date ($OUT, $(find "$OUT" -name '*.whl' | wc -l) wheels)"
    exit 0
fi
if [ ! -x "$PY" ] && ! command -v "$PY" >/dev/null; then
    echo "wheelhouse: no $PY: run \`make\` first (it builds .venv), or set WHEEL_PYTHON=" >&2
    exit 1
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    echo "wheelhouse: $PY is not Python 3.11, the image's (Debian 12) python3; set WHEEL_PYTHON=" >&2
    exit 1
fi

rm -rf "$OUT.new"
mkdir -p "$OUT.new"
trap 'rm -rf "$OUT.new"' EXIT
# What to install: pyproject's runtime dependencies and build requirements.
"$PY" - >"$OUT.new/requirements.in" <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"]))
EOF
echo "wheelhouse: pip wheel $(tr '\n' ' ' <"$OUT.new/requirements.in")(pinned by requirements.lock)"
"$PY" -m pip wheel -q --disable-pip-version-check --wheel-dir "$OUT.new" \
    -c requirements.lock -r "$OUT.new/requirements.in"
# Every wheel must be an exact pin of requirements.lock: an unpinned transitive
# dependency would make the image differ from the tested .venv.
"$PY" - "$OUT.new" <<'EOF'
import pathlib, re, sys

def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()

pins = {}
for line in pathlib.Path("requirements.lock").read_text().splitlines():
    if "==" in line and not line.lstrip().startswith("#"):
        name, version = line.split("==", 1)
        pins[norm(name.strip())] = version.strip()
bad = []
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if pins.get(norm(name)) != version:
        bad.append(f"{name} {version} (lock: {pins.get(norm(name), 'not pinned')})")
if bad:
    sys.exit("wheelhouse: not pinned by requirements.lock: " + ", ".join(bad))
EOF
echo "$key" >"$OUT.new/.stamp"
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
trap - EXIT
echo "wheelhouse: $(find "$OUT" -name '*.whl' | wc -l) wheels in $OUT"
