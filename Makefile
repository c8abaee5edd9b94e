# All set-up lives here: `make test` and `make demo` work on a fresh clone with nothing but Python 3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pin torch first, from the CPU wheel on disk where there is one, so pip never pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench bench-smoke clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]' "$(TORCH_SPEC)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/revgn reproduce main scale=quick

bench: $(STAMP)
	$(PY) bench/gn_step.py --quick
	$(PY) bench/metrics_overhead.py

bench-smoke: $(STAMP)
	$(PY) bench/gn_step.py --smoke
	$(PY) bench/metrics_overhead.py --smoke

clean-venv:
	rm -rf $(VENV)
