# Two commands on a fresh Debian 12 machine (root): `make run` and `make test`.
# Everything they need is installed here, nothing by hand.

# Debian's own python3 when there is one (even if another python3 comes first in PATH):
# it is what the container and a fresh Debian 12 run, its _ssl links the system's
# OpenSSL that the remote keys hook, and a fork of it is cheaper (statically linked
# libpython: measured 6.05 vs 7.30 ms of CPU per connection for bench/pyfork.py
# against a shared-libpython build of 3.11).
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
# Debian packages: python3-venv lets Debian's python3 make the venv; libcap-dev builds
# python-prctl; groff-base checks the man page; the rest are real TLS clients for the
# tests (testssl.sh and sslscan grade the default TLS settings), nginx-light, a real
# backend (HTTP/1.1, cleartext HTTP/2, PROXY protocol); nginx-light, redis-server and
# busybox-static are also the real daemons and shell the example profiles are tested
# with (tests/debian.py installs them through `deps` too when a test runs on its own).
SYSTEM_PACKAGES := python3-venv gcc libcap-dev libseccomp2 openssl curl iproute2 groff-base \
                   nftables testssl.sh sslscan nginx-light redis-server busybox-static
BENCH_PACKAGES  := stunnel4 hitch nginx-light wrk

.PHONY: run test soak test-container lint docs fuzz deps bench clean

run: $(VENV)/.stamp
	$(PY) -m titus.demo

test: $(VENV)/.stamp
	@$(MAKE) --no-print-directory deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests

# The Dockerfile, built and run privileged with podman; titus must serve TLS from
# real jails inside it (installs podman, runc, debootstrap; caches in build/).
test-container: $(VENV)/.stamp
	bash contrib/test-container.sh

# The churn soak at full size (`make test` runs it with 600 connections): 10,000
# connections of random client behaviours, then nothing may have leaked.
soak: $(VENV)/.stamp
	TITUS_SOAK_CONNECTIONS=$(or $(SOAK_CONNECTIONS),10000) \
	  $(PY) -m pytest -q -s -p no:cacheprovider tests/soak

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .

# docs/options.md and docs/titus.8, generated from the option table (tests check they are current).
docs: $(VENV)/.stamp
	$(PY) -m titus.docs.gen

# Coverage-guided fuzzing (atheris), FUZZ_SECONDS per harness; corpora and crash inputs
# stay in build/fuzz/NAME/.  Longer hypothesis runs: TITUS_FUZZ_EXAMPLES=N pytest tests/fuzz.
FUZZ_SECONDS ?= 60
fuzz: $(VENV)/.stamp
	@for h in tests/fuzz/atheris/fuzz_*.py; do \
	  n=$$(basename $$h .py); n=$${n#fuzz_}; mkdir -p build/fuzz/$$n/corpus; echo "== $$n"; \
	  TMPDIR=$(CURDIR)/build/fuzz/$$n $(PY) $$h -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/$$n/ build/fuzz/$$n/corpus || exit 1; \
	done

bench: $(VENV)/.stamp
	@$(MAKE) --no-print-directory deps PACKAGES="$(BENCH_PACKAGES)"
	$(PY) bench/run.py $(if $(TITUS04),--titus04 $(TITUS04))

deps:
	@missing=""; for p in $(or $(PACKAGES),$(SYSTEM_PACKAGES)); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    -o DPkg::Lock::Timeout=300 $$missing >/dev/null; \
	fi

$(VENV)/.stamp: requirements.lock pyproject.toml
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

clean:
	rm -rf $(VENV) demo build *.egg-info
