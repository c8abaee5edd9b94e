# All set-up lives here: `make test` and `make demo` work on a fresh clone with nothing but Python 3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Pin torch first, from the CPU wheel on disk where there is one, so pip never pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench bench-smoke clean-venv gpu-check gpu-wheels

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
	$(PY) bench/gn_truncation.py

bench-smoke: $(STAMP)
	$(PY) bench/gn_step.py --smoke
	$(PY) bench/metrics_overhead.py --smoke
	$(PY) bench/gn_truncation.py --smoke

clean-venv:
	rm -rf $(VENV)

# On a GPU machine (README "GPU check"): the python3 with a CUDA torch (or GPU_PYTHON=...), missing requirements
# from WHEELS=<dir> when offline, then tests/test_cuda.py and bench/gn_step.py on the GPU. Without one: one line.
GPU_PYTHON ?=
WHEELS ?=
gpu-check:
	@$(PYTHON) tools/gpu_check.py $(if $(GPU_PYTHON),--python $(GPU_PYTHON)) $(if $(WHEELS),--wheels $(WHEELS)); \
	rc=$$?; [ $$rc -eq 3 ] && exit 0; exit $$rc

# On a connected machine: the requirements (torch left out) for the GPU machine's Python and platform.
GPU_PY_VERSION ?= 3.11
GPU_PLATFORM ?= manylinux2014_x86_64,manylinux_2_17_x86_64,manylinux_2_28_x86_64
gpu-wheels:
	@$(PYTHON) tools/gpu_check.py --download $(or $(WHEELS),.gpu-wheels) --python-version $(GPU_PY_VERSION) \
	--platform $(GPU_PLATFORM)

# A one-node SLURM cluster on this machine (root; apt installs slurm and munge when missing): docs/cluster.md.
# tests/test_slurm.py runs against it; without it those tests skip.
.PHONY: slurm-up slurm-down
slurm-up:
	@tools/slurm_cluster.sh up

slurm-down:
	@tools/slurm_cluster.sh down
