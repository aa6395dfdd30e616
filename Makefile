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
PROMTOOL := build/promtool/usr/bin/promtool
# Debian packages: python3-venv lets Debian's python3 make the venv; gcc, python3-dev
# and libssl-dev build the C extensions (setup.py; the worker links the system's libssl,
# the one Python's _ssl runs); libcap-dev builds python-prctl; clang and
# libclang-rt-dev build the libFuzzer harnesses of the C decoders; groff-base checks
# the man page; the rest are real TLS clients for the tests (testssl.sh and sslscan
# grade the default TLS settings) and nginx-light, a real backend (HTTP/1.1,
# cleartext HTTP/2, PROXY protocol); nginx-light, redis-server and busybox-static are
# also the real daemons and shell the example profiles are tested with
# (tests/debian.py installs them through `deps` too when a test runs on its own).
SYSTEM_PACKAGES := python3-venv gcc python3-dev libssl-dev libcap-dev libseccomp2 openssl curl \
                   iproute2 groff-base nftables testssl.sh sslscan nginx-light clang \
                   libclang-rt-dev redis-server busybox-static
# bubblewrap: bench/jail_spawn.py measures `sandbox run` side by side with bwrap;
# linux-perf: bench/cpu_profile.py says where titus's CPU goes.
BENCH_PACKAGES  := stunnel4 hitch nginx-light wrk bubblewrap linux-perf
# The C extensions' sources: a change rebuilds them in place (setup.py lists the flags).
C_SOURCES := setup.py $(shell find sandbox titus -name '*.[ch]' 2>/dev/null)
EXTENSIONS := $(VENV)/.extensions
LAUNCHER := $(VENV)/bin/sandbox

.PHONY: run test test-asan soak test-container test-systemd lint docs fuzz deps bench clean

run: $(EXTENSIONS)
	$(PY) -m titus.demo

test: $(EXTENSIONS) $(PROMTOOL)
	@$(MAKE) --no-print-directory deps
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider tests

# promtool (Prometheus's metric linter, for the metrics test), taken out of Debian's
# prometheus package without installing it: installing would start a Prometheus server.
$(PROMTOOL):
	@$(MAKE) --no-print-directory deps
	rm -rf build/promtool.new && mkdir -p build/promtool.new
	cd build/promtool.new && { apt-get download -q prometheus 2>/dev/null \
	  || { apt-get update -qq && apt-get download -q prometheus; }; } \
	  && dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool \
	  && rm -f prometheus_*.deb
	rm -rf build/promtool && mv build/promtool.new build/promtool

# The sandbox tests against the C extensions built with ASan and UBSan, in a copy of the
# tree under build/asan (the in-place build stays the hardened one).  Python itself is
# not instrumented: libasan is preloaded.  See docs/sandbox-executor.md for what needs care.
ASAN_TESTS := tests/security/test_layers.py tests/security/test_spawn_leaks.py \
              tests/security/test_executor.py tests/security/test_layer_removal.py \
              tests/integration/test_forkserver.py tests/integration/test_sandbox_cli.py \
              tests/integration/test_runcache.py tests/unit/sandbox/test_plan.py tests/unit/sandbox/test_fds.py \
              tests/unit/sandbox/test_landlock.py tests/unit/sandbox/test_seccomp.py tests/fuzz/test_plan_fuzz.py \
              tests/security/test_spawn_result.py tests/security/test_landlock_order.py \
              tests/integration/test_sandbox_limits.py tests/integration/test_seccomp_notify.py \
              tests/integration/test_sandbox_errors.py \
              tests/fuzz/test_forkserver_fuzz.py
# ... and titus's integration tests against the C worker built the same way, its jails
# given ASan's allowances (tests/asan_policies.py: its syscalls, no address-space limit).
# Left out: the memory scan (ASan's shadow is terabytes to read) and the tests that run
# external clients (curl, openssl s_client), which libasan would be preloaded into too.
TITUS_ASAN_TESTS := tests/integration/test_cworker.py tests/integration/test_remotekey.py \
              tests/integration/test_titus_tls.py tests/integration/test_titus_data.py \
              tests/integration/test_titus_client_identity.py \
              tests/integration/test_titus_proxy_protocol.py tests/unit/titus/test_zygote.py \
              tests/integration/test_uids_host_wide.py
TITUS_ASAN_SKIP := -k "not curl and not s_client and not no_private_key_bytes"
test-asan: $(VENV)/.stamp $(LAUNCHER)
	rm -rf build/asan && mkdir -p build/asan
	tar -c --exclude=./.venv --exclude=./build --exclude=./.git --exclude='*.so' \
	    --exclude=__pycache__ . | tar -x -C build/asan
	cd build/asan && SANITIZE=1 ../../$(PY) setup.py -q build_ext --inplace
	cd build/asan && PYTHONPATH=$(CURDIR)/build/asan SANDBOX_CACHE_DIR=$(CURDIR)/build/asan/cache \
	    LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=16:malloc_context_size=8 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    ../../$(PY) -m pytest -q -p no:cacheprovider $(ASAN_TESTS)
	cd build/asan && ../../$(PY) -m tests.asan_policies asan-policies
	cd build/asan && PYTHONPATH=$(CURDIR)/build/asan SANDBOX_CACHE_DIR=$(CURDIR)/build/asan/cache \
	    SANDBOX_POLICY_PATH=$(CURDIR)/build/asan/asan-policies \
	    LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:quarantine_size_mb=16:malloc_context_size=8 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    ../../$(PY) -m pytest -q -p no:cacheprovider $(TITUS_ASAN_TESTS) $(TITUS_ASAN_SKIP)

# The Dockerfile, built and run privileged with podman; titus must serve TLS from
# real jails inside it (installs podman, runc, debootstrap; caches in build/).
test-container: $(EXTENSIONS)
	bash contrib/test-container.sh

# contrib/titus.service and contrib/titus.socket under Debian's systemd as PID 1 of a
# podman container: start (sd_notify), reload, stop (drain), a crash, socket activation.
test-systemd: $(EXTENSIONS)
	bash contrib/test-systemd.sh

# The churn soak at full size (`make test` runs it with 600 connections): 10,000
# connections of random client behaviours, then nothing may have leaked.
soak: $(EXTENSIONS)
	TITUS_SOAK_CONNECTIONS=$(or $(SOAK_CONNECTIONS),10000) \
	  $(PY) -m pytest -q -s -p no:cacheprovider tests/soak

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .

# docs/options.md and docs/titus.8, generated from the option table (tests check they are current).
docs: $(EXTENSIONS)
	$(PY) -m titus.docs.gen

# Coverage-guided fuzzing, FUZZ_SECONDS per harness: libFuzzer on the C decoders (the
# worker's, the fork server's requests: tests/fuzz/c, built with clang; in
# build/fuzz-c/NAME/), then atheris on the Python parsers (corpora and crash inputs in
# build/fuzz/NAME/).
# Longer hypothesis runs: TITUS_FUZZ_EXAMPLES=N pytest tests/fuzz.
FUZZ_SECONDS ?= 60
fuzz: $(EXTENSIONS)
	$(PY) -m tests.fuzz.cfuzz --seconds $(FUZZ_SECONDS)
	@for h in tests/fuzz/atheris/fuzz_*.py; do \
	  n=$$(basename $$h .py); n=$${n#fuzz_}; mkdir -p build/fuzz/$$n/corpus; echo "== $$n"; \
	  TMPDIR=$(CURDIR)/build/fuzz/$$n $(PY) $$h -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/$$n/ build/fuzz/$$n/corpus || exit 1; \
	done

bench: $(EXTENSIONS)
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

# compat: a plain .pth with the tree's path.  The default editable finder imports
# pathlib & co. at every interpreter start (~20 ms here, before `sandbox run` starts).
$(VENV)/.stamp: requirements.lock pyproject.toml
	@$(MAKE) --no-print-directory deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.lock
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
	    --config-settings editable_mode=compat -e .
	touch $@
	@$(MAKE) --no-print-directory $(LAUNCHER)

# The `sandbox` command, started without site (-S): site costs `sandbox run` ~5 ms
# here (distutils-precedence.pth, Debian's sitecustomize, the os module it imports).
# pip writes bin/sandbox's `#!python` as the venv's interpreter and drops any flag, so
# after every `pip install -e` (and when this rule changes) the script is replaced by
# this launcher.  It appends the tree to sys.path itself, where the editable install's
# .pth would (PYTHONPATH still comes first), and sandbox/entry.py runs site before the
# full CLI's imports (pyseccomp is in site-packages) on a cache miss.
# A non-editable install (pip install ., the Dockerfile) keeps pip's script, with site.
$(LAUNCHER): $(VENV)/.stamp Makefile
	printf '%s\n' '#!$(CURDIR)/$(VENV)/bin/python3 -S' \
	  '"""`sandbox`, written by the Makefile: Python without site (the Makefile says why)."""' \
	  'import sys' '' 'sys.path.append("$(CURDIR)")  # what site would add: the editable install' \
	  'from sandbox.entry import main' '' 'sys.exit(main())' > $@.new
	chmod 755 $@.new && mv $@.new $@

$(EXTENSIONS): $(VENV)/.stamp $(C_SOURCES) | $(LAUNCHER)
	$(PY) setup.py -q build_ext --inplace
	touch $@

clean:
	rm -rf $(VENV) demo build *.egg-info sandbox/*.so titus/*.so titus/*/*.so
