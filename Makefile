# Two commands do everything on a fresh machine:
#   make demo   simulate a CSST-like dense field and run detection + evaluation on it
#   make test   run the default test suite
# Both create .venv and install skyvar on first use. On a GPU box the same
# `pip install torch==2.13.0` pulls the CUDA build from PyPI; here it is the CPU build.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: demo test test-all bench lint clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/skyvar infer $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q $(ARGS)

test-all: $(VENV)/.installed
	$(PY) -m pytest -q -m "" $(ARGS)

bench: $(VENV)/.installed
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

lint: $(VENV)/.installed
	$(PY) -m ruff check src tests benchmarks train.py infer.py

clean-venv:
	rm -rf $(VENV)
