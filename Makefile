# All set-up lives here: `make test` and `make demo` work on a fresh clone with nothing but Python 3.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is installed first, pinned by TORCH_SPEC, from wherever pip is configured to look (pip.conf / PIP_FIND_LINKS /
# PIP_INDEX_URL: a local CPU wheel where there is one). Without one, PyPI's default build is used: on Linux x86_64
# that is the CUDA build (several GB). TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU-only build,
# TORCH_INDEX=https://download.pytorch.org/whl/cu126 a given CUDA build (docs/install.md).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

.PHONY: venv test test-kernels demo bench bench-smoke clean-venv gpu-check gpu-wheels

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]' "$(TORCH_SPEC)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The numerics-sensitive tests (marker `kernels`: GN exactness, parity with gn_naive, the pseudoinverse filters,
# short training runs, the kill-and-resume tests' reference run) again under other CPU kernels than the machine's
# best: ATen's AVX2 kernels, and MKL's conditional-numerical-reproducibility mode. They must pass on any CPU, not on
# one CPU's rounding. ~95 s of CPU time for both passes (docs/gn.md).
KERNEL_TESTS ?= tests/test_gn.py tests/test_damped.py tests/test_resume.py
test-kernels: $(STAMP)
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest -q -m kernels $(KERNEL_TESTS)
	MKL_CBWR=COMPATIBLE $(PY) -m pytest -q -m kernels $(KERNEL_TESTS)

# Indicative: 3 seeds (the reference set, docs/figures/claims.md, has 10), 4 NTK probes instead of 8, two runs at a
# time (joblib), so that it fits in 5 minutes on 2 cores.
DEMO_ARGS ?= seed=42,43,44 metrics.ntk_feature_probes=4 hydra/launcher=joblib hydra.launcher.n_jobs=2
demo: $(STAMP)
	$(VENV)/bin/revgn reproduce main scale=quick $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) bench/gn_step.py --quick
	$(PY) bench/metrics_overhead.py
	$(PY) bench/gn_truncation.py
	$(PY) bench/ggn_matvec.py
	$(PY) bench/ggn_solve.py

bench-smoke: $(STAMP)
	$(PY) bench/gn_step.py --smoke
	$(PY) bench/metrics_overhead.py --smoke
	$(PY) bench/gn_truncation.py --smoke
	$(PY) bench/ggn_matvec.py --smoke
	$(PY) bench/ggn_solve.py --smoke
	$(PY) bench/scaling_cost.py --smoke

clean-venv:
	rm -rf $(VENV)

# On a GPU machine (docs/gpu.md): the python3 with a CUDA torch (or GPU_PYTHON=...), missing requirements
# from WHEELS=<dir> when offline, then tests/test_cuda.py and bench/gn_step.py on the GPU. Without one: one line
# and the script's exit status 3 (make then fails: a check that ran nothing is not a pass).
GPU_PYTHON ?=
WHEELS ?=
gpu-check:
	@$(PYTHON) tools/gpu_check.py $(if $(GPU_PYTHON),--python $(GPU_PYTHON)) $(if $(WHEELS),--wheels $(WHEELS))

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
