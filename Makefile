# From a fresh clone: `make demo`, then `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PARA   := $(VENV)/bin/para
# What the tests and benchmarks drive for real: perf, headless Chromium, sysstat's sadc, Open MPI, tmux.

.PHONY: demo test venv system-deps lint bench clean

$(VENV)/.stamp: pyproject.toml setup.py $(wildcard para/cython_ext/*.pyx)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.stamp

demo: venv
	$(PARA) profile --functions -o demo.para -- $(PY) benchmarks/workloads/phases.py
	$(PARA) report demo.para --html demo.html
	@echo "Wrote demo.para and demo.html. Next: $(PARA) show demo.para"

system-deps:
	@missing=""; \
	command -v perf >/dev/null 2>&1 || missing="$$missing linux-perf"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v mpirun >/dev/null 2>&1 || missing="$$missing openmpi-bin"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	test -x /usr/lib/sysstat/sadc || test -x /usr/lib64/sa/sadc || missing="$$missing sysstat"; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
	    echo "installing$$missing"; \
	    $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	    { $$sudo apt-get update -q >/dev/null && \
	      $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	  else echo "warning: please install$$missing (the tests that need them are skipped)"; fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check para tests benchmarks
	$(VENV)/bin/ruff format --check para tests benchmarks
	$(VENV)/bin/mypy

test: venv system-deps
	$(PY) -m pytest -q
	PARA_PURE_PYTHON=1 $(PY) -m pytest -q
	$(MAKE) --no-print-directory lint

bench: venv system-deps
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf build $(VENV) para/cython_ext/_*.c para/cython_ext/*.so demo.para demo.html
