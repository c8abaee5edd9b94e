"""Shared fixtures: tiny configs and an isolated results dir for end-to-end tests."""
from __future__ import annotations

import os

import pytest
import torch

# Tests are CPU-only and must not fight over the 2 cores of CI.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = ["dataset=digits", "model=tiny", "regime=mini_batch", "regime.batch_size=256", "train.epochs=2",
        "metrics.every=1", "metrics.probe_size=8", "metrics.cka_probe_size=64", "device=cpu"]


@pytest.fixture(scope="module")
def one_thread():
    """Small problems: one BLAS/LAPACK thread is as fast, and robust when other jobs share the (2-core) CPU
    (multi-threaded eigh slowed down 5-20× under contention in our measurements)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def results(tmp_path):
    return tmp_path / "results"


@pytest.fixture
def tiny(results):
    """Overrides for a seconds-long digits run writing into a temporary results dir."""
    return TINY + [f"results_dir={results}"]


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory, monkeypatch):
    # mnist5k caches its parsed arrays under the data root: keep one shared cache per test session.
    if "REVGN_DATA" not in os.environ:
        monkeypatch.setenv("REVGN_DATA", str(tmp_path_factory.getbasetemp() / "data-root"))
