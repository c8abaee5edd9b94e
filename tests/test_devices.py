"""Device and dtype consistency, checked on the CPU (issue 17; tests/test_cuda.py runs the real thing on a GPU).

Two tools stand in for a GPU here:
* ``FactoriesNameTheirDevice``: a torch function mode that records every tensor factory (randn, zeros, arange, …)
  called from revgn_cli code without an explicit ``device=``. Such a tensor lands on the host whatever the model's
  device — the diagnostics tracker's probe vector u did, and every CUDA run with diagnostics then failed at its
  epoch-0 row. Host tensors on purpose (seeded draws that must match across devices) say ``device="cpu"``.
* the ``meta`` device: a model moved there has shapes and dtypes but no data, so constructing state on it shows
  where a tensor does not follow the model (and shape-only passes run at the paper's size for free). Anything that
  reads a value (``float``, ``bool``) cannot run there, so only construction, state loading and passes are checked.
"""
from __future__ import annotations

import shutil
import sys

import pandas as pd
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.devices import off_device
from revgn_cli.metrics import DiagnosticsTracker
from revgn_cli.models import RevMLP
from revgn_cli.optim import OPTIMIZERS, gn as gn_mod, make_optimizer
from revgn_cli.results.store import RunDir

META = torch.device("meta")


class FactoriesNameTheirDevice(TorchFunctionMode):
    """Collects (factory, file, line) for every device-less tensor factory called directly from revgn_cli code."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: set[tuple[str, str, int]] = set()
        self._factories = _device_constructors()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._factories and kwargs.get("device") is None:
            caller = sys._getframe(1)  # the frame that called the factory
            if caller.f_globals.get("__name__", "").startswith("revgn_cli"):
                self.hits.add((func.__name__, caller.f_code.co_filename, caller.f_lineno))
        return func(*args, **kwargs)


def _train(overrides: list[str]) -> None:
    r = CliRunner().invoke(app, ["--quiet", "train", *overrides])
    assert r.exit_code == 0, r.output


def test_the_check_catches_the_old_tracker_probe():
    # The tracker's old probe draw, verbatim, run as revgn_cli code: the check must report it.
    src = "def probe():\n    return torch.randn(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)\n"
    ns = {"__name__": "revgn_cli.metrics.tracker", "torch": torch}
    exec(compile(src, "revgn_cli/metrics/tracker.py", "exec"), ns)
    mode = FactoriesNameTheirDevice()
    with mode:
        ns["probe"]()
        torch.randn(4, device="cpu")  # named: fine
    assert [h[0] for h in mode.hits] == ["randn"]


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_every_factory_in_a_run_names_its_device(tiny, results, opt):
    """Every optimiser with every diagnostic (and the loss change): no tensor of revgn_cli is created on an implicit
    device. (The resume path is checked below.)"""
    mode = FactoriesNameTheirDevice()  # every torch call goes through Python in the mode: one short epoch each
    with mode:
        _train([f"optimizer={opt}", "regularizer=noise", *tiny, "train.epochs=1", "regime.batch_size=512"])
        if opt == "sgd":  # the full-batch subset draw is the same for every optimiser
            _train([f"optimizer={opt}", "regime=full_batch", "regime.n_samples=64", "regime.subset=random", *tiny,
                    "train.epochs=1"])
    assert not mode.hits, "tensor factories without device=: " + "; ".join(
        f"{f} at {file}:{line}" for f, file, line in sorted(mode.hits))


def test_resume_from_an_epoch_checkpoint_is_bit_identical(tiny, results):
    """Resume reads the checkpoint onto the host and maps it to the run's device; on the CPU the rows (loss change
    read back per epoch, diagnostics, optimiser state) must equal the uninterrupted run's."""
    ov = ["optimizer=adam", "train.keep_checkpoints=[1]", *tiny]
    _train(ov)
    (run_path,) = [p for p in (results / "default").iterdir() if p.is_dir()]
    run = RunDir(run_path)
    full = pd.read_parquet(run.metrics_path)
    shutil.copyfile(run.ckpt_dir / "epoch_1.pt", run.ckpt_path)
    run.write_meta(status="interrupted")
    mode = FactoriesNameTheirDevice()
    with mode:
        _train(ov)
    assert not mode.hits
    assert run.read_meta()["resumed"]
    pd.testing.assert_frame_equal(pd.read_parquet(run.metrics_path), full)


def _meta_model(d: int = 64, n_blocks: int = 2, hidden: int | None = 24) -> RevMLP:
    return RevMLP(d, n_blocks, hidden, seed=0).to(META)


def test_device_only_move_keeps_the_readout_dtype():
    # A device-only move (.cuda(), .to("meta")) used to turn the float32 read-out U into float64 (its float64
    # master copy moved as it was), and the first float32 matmul with it failed.
    for m in (RevMLP(16, 1, 4).to(META), RevMLP(16, 1, 4).double().to(META)):
        assert m.readout.device == META and m.readout.dtype == m.blocks[0].F.weight.dtype


def test_tracker_state_is_on_the_model_device_after_construction_and_load():
    x = torch.randn(32, 64, device="cpu")
    cpu_tracker = DiagnosticsTracker(RevMLP(64, 2, 24, seed=0), x[:4], x, cka="off")
    tracker = DiagnosticsTracker(_meta_model(), x[:4], x, cka="off")
    assert off_device(tracker, META) == []  # the probe vector u was a host tensor here
    tracker.load_state_dict(cpu_tracker.state_dict())  # a host checkpoint resumed on another device
    assert off_device(tracker, META) == [] and tracker.u.dtype == torch.float64


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimiser_state_follows_the_model_device(name):
    """State taken after two steps on the host, loaded into the same optimiser over a meta model: every tensor it
    holds is then on the model's device (torch.optim's 0-d host step counters excepted, by torch's design)."""
    torch.manual_seed(0)
    host = RevMLP(64, 2, 24, seed=0)
    x, t = torch.randn(16, 64, device="cpu"), torch.eye(10, device="cpu")[torch.arange(16, device="cpu") % 10]
    opt = make_optimizer(host, {"name": name})
    for _ in range(2):
        opt.step(x, t)
    model = _meta_model()
    moved = make_optimizer(model, {"name": name})
    assert off_device(moved, META) == []
    moved.load_state_dict(opt.state_dict())
    assert off_device(moved, META) == []


def test_gn_passes_at_the_paper_mnist_shape_on_meta():
    """The GN step's forward, inverse-network JVP and its activations, and the NTK, at h = 8000, n = 1024, L = 2,
    d = 784 — shapes, dtypes and devices only (no memory, no time)."""
    model = RevMLP(784, 2, 8000, seed=0).to(META)
    x = torch.empty(1024, 784, device=META)
    with torch.no_grad():
        xl = gn_mod._features(model, x)
        eps = torch.empty_like(xl)
        pairs = gn_mod._targets_and_activations(model, xl, eps)
    assert xl.shape == (1024, 784) and len(pairs) == 2
    for t, (b, feat_f, y1, feat_g) in pairs:
        assert t.shape == (1024, 784) and b.shape == y1.shape == (1024, 392)
        for f in (feat_f, feat_g):
            assert f is None or (f.shape == (1024, 8000) and f.dtype == torch.float32 and f.device == META)
    from revgn_cli.metrics.ntk import empirical_ntk

    assert empirical_ntk(model, x[:100]).shape == (1000, 1000)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check would run")
def test_gpu_check_without_cuda_is_one_line():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "tools" / "gpu_check.py"), "--python", sys.executable],
                       capture_output=True, text=True, timeout=300)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 3 and len(lines) == 1, (r.returncode, lines)
    assert lines[0].startswith("gpu-check: no CUDA device here") and "nothing was run" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: make gpu-check would run")
@pytest.mark.skipif(shutil.which("make") is None, reason="no make here")
def test_make_gpu_check_without_cuda_fails():
    """`make gpu-check` ran nothing: it must not exit 0 (make passes the script's 3 on as its own failure, 2, with
    make's `Error 3` line), and the script's one line is all it prints on stdout."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["make", "-s", "--no-print-directory", "gpu-check", f"PYTHON={sys.executable}",
                        f"GPU_PYTHON={sys.executable}"], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0, (r.stdout, r.stderr)
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device here"), lines
    assert "Error 3" in r.stderr, r.stderr
