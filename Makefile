# Two commands on a fresh Debian 12 machine (root): `make run` and `make test`.
# Everything they need is installed here, nothing by hand.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Debian packages: libcap-dev builds python-prctl; the rest are real TLS clients for the tests.
SYSTEM_PACKAGES := gcc libcap-dev libseccomp2 openssl curl iproute2
BENCH_PACKAGES  := stunnel4 hitch nginx-light wrk

.PHONY: run test lint deps bench clean

run: $(VENV)/.stamp
	$(PY) -m titus.demo

test: $(VENV)/.stamp
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .

bench: $(VENV)/.stamp
	@$(MAKE) --no-print-directory deps PACKAGES="$(BENCH_PACKAGES)"
	$(PY) bench/run.py

deps:
	@missing=""; for p in $(or $(PACKAGES),$(SYSTEM_PACKAGES)); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.stamp: requirements.lock pyproject.toml
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

clean:
	rm -rf $(VENV) demo build *.egg-info
