# From a fresh clone: `make demo`, then `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARA   := $(VENV)/bin/para

.PHONY: demo test venv kernels system-deps lint bench clean

# The editable install's compat mode puts the checkout's path in a .pth file instead of
# setuptools' import hook, which added 25 ms to the start of every para command (para fold's
# is measured against perl's); the hook is the fallback for a setuptools without compat.
$(VENV)/.stamp: pyproject.toml setup.py $(wildcard para/cython_ext/*.pyx)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat || \
	  $(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

# A kernel that did not build would leave para (and the twin tests) on its pure-Python twin.
kernels: venv
	@$(PY) -c 'import sys; from para.cython_ext import unbuilt; u = unbuilt(); \
	  sys.exit("error: Cython kernels not built: " + ", ".join(u) + "; see make venv") if u else 0'

demo: venv
	$(PARA) profile --functions -o demo.para -- $(PY) benchmarks/workloads/phases.py
	$(PARA) report demo.para --html demo.html
	@echo "Wrote demo.para and demo.html. Next: $(PARA) show demo.para"

# Debian packages of the real components the tests drive: perf, headless Chromium and its
# driver, sysstat (sadc, pidstat), Open MPI (with mpicc for mpi4py), a single-node Slurm with
# munge, Java for Spark, Prometheus (prometheus, promtool), tmux; gcc and binutils (objdump) for
# the C programs the profiling tests build, procps (free), perl for FlameGraph's reference script.
DEB_PKGS := linux-perf chromium chromium-driver sysstat openmpi-bin libopenmpi-dev python3-mpi4py \
	slurm-wlm munge openjdk-17-jre-headless prometheus tmux perl gcc binutils procps

system-deps:
	@missing=""; \
	for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	    echo "installing$$missing"; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	    { $$sudo apt-get update -q >/dev/null && \
	      $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	  else echo "error: please install$$missing (the tests drive them; make test fails without them)"; exit 1; fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check para tests benchmarks
	$(VENV)/bin/ruff format --check para tests benchmarks
	$(VENV)/bin/mypy

# The pure-Python pass runs what reaches a kernel: tests marked no_kernel (the collector's and
# the live engine's, which load none; conftest fails a marked test that does) run once.
test: venv kernels system-deps
	PARA_STRICT=1 $(PY) -m pytest -q
	PARA_STRICT=1 PARA_PURE_PYTHON=1 $(PY) -m pytest -q -m "not no_kernel"
	$(MAKE) --no-print-directory lint

bench: venv system-deps
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build $(VENV) para/cython_ext/_*.c para/cython_ext/*.so demo.para demo.html
