"""The GPU suite (issue 17): end to end on CUDA. Skipped without a GPU; `make gpu-check` runs it on one.

    pytest -m cuda tests/test_cuda.py                         # on a machine with a CUDA build of torch
    REVGN_CUDA_SUITE_DEVICE=cpu pytest -m cuda tests/test_cuda.py   # dry run of the same tests on the CPU

The dry run checks the tests themselves where no GPU is lent (the cross-device resumes then go CPU → CPU, and the
paper-shaped step runs at a reduced size); it proves nothing about CUDA.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.devices import off_device
from revgn_cli.models import RevMLP
from revgn_cli.optim import OPTIMIZERS, REGULARIZERS, GaussNewton, gn_direction, make_optimizer
from revgn_cli.results import run_summaries
from revgn_cli.results.store import RunDir

DEVICE = os.environ.get("REVGN_CUDA_SUITE_DEVICE", "cuda")
DRY = DEVICE != "cuda"
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not DRY and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
OTHER = "cpu"  # the device a run moves to or from

SMALL = ["dataset=digits", "model=tiny", "regime=mini_batch", "regime.batch_size=256", "train.epochs=2",
         "metrics.every=1", "metrics.probe_size=8", "metrics.cka_probe_size=64"]


def _train(*overrides: str, ok: bool = True):
    r = CliRunner().invoke(app, ["--quiet", "train", *overrides])
    if ok:
        assert r.exit_code == 0, r.output
    return r


def _only_run(results: Path) -> RunDir:
    (path,) = [p for p in (results / "default").iterdir() if p.is_dir()]
    return RunDir(path)


def _check_rows(rows: pd.DataFrame, diagnostics: list[str]) -> None:
    ep, steps = rows[rows.split == "epoch"], rows[rows.split == "step"]
    assert list(ep.epoch) == [0.0, 1.0, 2.0]
    for col in ("train_loss", "train_acc", "test_loss", "test_acc", *diagnostics):
        assert ep[col].notna().all() and ep[col].map(math.isfinite).all(), col
    assert steps.batch_loss.map(math.isfinite).all() and steps.loss_change_pct.notna().all()


# ---------------------------------------------------------------------------------------------------------------
# Every optimiser (from the registry: new ones are covered as they are added) with every diagnostic, 2 epochs.

DIAG = ["ntk_sim_init", "ntk_dist_init", "ntk_probe_sim", "cka_block1", "cka_block2", "wcos_F1",
        "wnorm_ratio_G2"]


@pytest.mark.parametrize("opt", OPTIMIZERS)
@pytest.mark.parametrize("cka", ["linear", "debiased"])
def test_every_optimiser_with_every_diagnostic(tmp_path, opt, cka):
    res = tmp_path / "results"
    _train(f"optimizer={opt}", f"metrics.cka={cka}", *SMALL, f"device={DEVICE}", f"results_dir={res}")
    run = _only_run(res)
    assert run.read_meta()["device"].startswith(DEVICE)
    rows = pd.read_parquet(run.metrics_path)
    _check_rows(rows, DIAG)
    assert rows[rows.split == "epoch"].ntk_velocity.iloc[1:].map(math.isfinite).all()  # NaN at init by design


def test_step_unit_diagnostics_and_noise(tmp_path):
    res = tmp_path / "results"
    _train(*SMALL, "optimizer=gn", "regularizer=noise", "metrics.unit=step", "metrics.every=3",
           f"device={DEVICE}", f"results_dir={res}")
    rows = pd.read_parquet(_only_run(res).metrics_path)
    assert rows[rows.split == "step"].ntk_sim_init.notna().sum() == 4  # steps 3, 6, 9, 12


@pytest.mark.skipif(DRY, reason="counts CUDA host syncs")
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_a_first_order_update_reads_the_loss_only(name):
    """torch.cuda.set_sync_debug_mode flags every host sync: an Adam/SGD update has exactly one, the loss read. (A GN
    update has more by nature: torch.linalg.eigh synchronises on CUDA, once per half-layer solve.)"""
    import warnings

    dev = torch.device(DEVICE)
    model = RevMLP(64, 2, 32, seed=0).to(dev)
    x = torch.randn(32, 64, device=dev)
    t = torch.nn.functional.one_hot(torch.arange(32, device=dev) % 10, 10).float()
    opt = make_optimizer(model, {"name": name})
    opt.step(x, t)  # the optimiser's state is created on the first step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            opt.step(x, t)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, syncs


# ---------------------------------------------------------------------------------------------------------------
# Interrupt and resume.

# Long enough that the signal after the first checkpoint lands well before the end, even on a fast GPU (the CPU
# dry run, far slower per epoch, needs fewer).
LONG = ["dataset=digits", "model=tiny", "regime=mini_batch", "regime.batch_size=256", f"train.epochs={4 if DRY else 20}",
        "train.checkpoint_every=1", "metrics.every=5", "metrics.probe_size=6", "metrics.cka_probe_size=64",
        "optimizer=gn", "optimizer.lr=0.1", "regularizer=truncation"]


def _ckpt_epoch(res: Path) -> int:
    try:
        return torch.load(_only_run(res).ckpt_path, map_location="cpu", weights_only=False)["state"]["epoch"]
    except Exception:  # not there yet, or being written
        return 0


def test_sigint_then_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    _train(*LONG, f"device={DEVICE}", f"results_dir={ref}")
    res = tmp_path / "results"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "-m", "revgn_cli.cli", "--quiet", "train", *LONG, f"device={DEVICE}",
                             f"results_dir={res}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    t0 = time.time()
    while not ((res / "default").exists() and _ckpt_epoch(res) >= 1):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() - t0 < 300, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    run = _only_run(res)
    assert run.read_meta()["status"] == "interrupted"
    r = _train(*LONG, f"device={DEVICE}", f"results_dir={res}")
    assert "resumed" in r.output
    got, want = pd.read_parquet(run.metrics_path), pd.read_parquet(_only_run(ref).metrics_path)
    # Same device, same kernels: equal up to the GPU's reduction order (bit-identical on the CPU).
    pd.testing.assert_frame_equal(got, want, check_exact=DRY, rtol=1e-5)


@pytest.mark.parametrize("src, dst", [(DEVICE, OTHER), (OTHER, DEVICE)])
def test_checkpoint_resumes_on_the_other_device(tmp_path, src, dst):
    """Train 2 epochs on ``src`` keeping the epoch-1 checkpoint; roll back to it and finish on ``dst`` (the device
    is not part of a run's identity). The optimiser (Adam's moments), tracker (Θ_0, previous Θ, u) and RNG states
    travel; the resumed epoch-2 row must agree with the uninterrupted one to float32 accuracy across devices."""
    res = tmp_path / "results"
    ov = ["optimizer=adam", "train.keep_checkpoints=[1]", *SMALL, f"results_dir={res}"]
    _train(*ov, f"device={src}")
    run = _only_run(res)
    full = pd.read_parquet(run.metrics_path)
    ck = torch.load(run.ckpt_dir / "epoch_1.pt", map_location="cpu", weights_only=False)
    assert ck["tracker"]["u"] is not None
    shutil.copyfile(run.ckpt_dir / "epoch_1.pt", run.ckpt_path)
    run.write_meta(status="interrupted")
    _train(*ov, f"device={dst}")
    meta = run.read_meta()
    assert meta["status"] == "done" and meta["device"].startswith(dst)
    got = pd.read_parquet(run.metrics_path)
    assert list(got.columns) == list(full.columns) and len(got) == len(full)
    first = full.epoch <= 1.0
    pd.testing.assert_frame_equal(got[first], full[first])  # restored from the checkpoint as written
    a, b = got[got.split == "epoch"].iloc[-1], full[full.split == "epoch"].iloc[-1]
    for col in ("train_loss", "test_loss", "ntk_sim_init", "cka_block2", "wcos_F1"):
        assert a[col] == pytest.approx(b[col], rel=1e-3, abs=1e-5), col


def test_resumed_state_is_on_the_run_device(tmp_path):
    """After a resume from a host checkpoint, every tensor of the model, optimiser and tracker is on the device."""
    from revgn_cli.config import compose_config
    from revgn_cli.train import loop

    res = tmp_path / "results"
    ov = ["optimizer=linearised", *SMALL, "train.epochs=1", f"results_dir={res}"]
    _train(*ov, f"device={OTHER}")
    cfg = compose_config([*ov, "train.epochs=2", f"device={DEVICE}"])
    dev = torch.device(DEVICE)
    td = loop.prepare_data(cfg, dev)
    model = loop.build_model(cfg, td.data, dev, torch.float32)
    ck = loop.load_checkpoint(_only_run(res))
    model.load_state_dict(ck["model"])
    tracker = loop.build_tracker(cfg, model, td.x_tr)
    tracker.load_state_dict(ck["tracker"])
    opt = make_optimizer(model, asdict(cfg.optimizer), asdict(cfg.regularizer), loss=cfg.train.loss)
    opt.load_state_dict(ck["optimizer"])
    assert off_device(model, dev) == off_device(tracker, dev) == off_device(opt, dev) == []


# ---------------------------------------------------------------------------------------------------------------
# GN direction: CUDA vs the CPU, float64.


@pytest.mark.parametrize("reg", REGULARIZERS)
@pytest.mark.parametrize("n, h", [(48, 96), (160, 40)])  # Gram on the n side / on the (h+1) side
def test_gn_direction_matches_cpu_float64(reg, n, h):
    torch.manual_seed(0)
    model = RevMLP(64, 3, h, n_classes=10, init_std=0.2, seed=0).double()
    x = torch.randn(n, 64, dtype=torch.float64, device="cpu")
    t = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), device="cpu"), 10).double()
    def direction(m, xx, tt):
        g = torch.Generator().manual_seed(5)  # a host generator: the noise regulariser draws the same G
        return torch.cat([d.reshape(-1) for d in gn_direction(m, xx, tt, regularizer=reg, generator=g)])

    ref = direction(model, x, t)
    dev = torch.device(DEVICE)
    got = direction(model.to(dev), x.to(dev), t.to(dev))
    assert got.device.type == dev.type and got.dtype == torch.float64
    assert ((got.cpu() - ref).norm() / ref.norm()).item() < 1e-8


# ---------------------------------------------------------------------------------------------------------------
# A figure from runs trained on the device (the real sweep machinery, then the plot that reads parquet only).


def test_figure_from_device_runs(tmp_path):
    res, out = tmp_path / "results", tmp_path / "figs"
    small = ["dataset=digits", "model=tiny", "regime.n_samples=128", "train.epochs=2", "metrics.every=0",
             f"device={DEVICE}"]
    r = CliRunner().invoke(app, ["--quiet", "reproduce", "fig1", "scale=quick", *small, "--results", str(res),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "fig1.png").stat().st_size > 10_000
    runs = run_summaries(res)
    assert {x["optimizer.name"] for x in runs} == {"gn", "adam", "sgd"} and {x["status"] for x in runs} == {"done"}
    for x in runs:
        assert json.loads((Path(x["path"]) / "meta.json").read_text())["device"].startswith(DEVICE)


# ---------------------------------------------------------------------------------------------------------------
# One paper-shaped GN step: h = 8000, n = 1024 at the MNIST (L = 2, d = 784) and CIFAR (L = 6, d = 3072) shapes.

PAPER = {"mnist": (784, 2), "cifar": (3072, 6)}


@pytest.mark.parametrize("shape", PAPER)
def test_paper_shaped_gn_step(shape, capsys):
    d, L = PAPER[shape]
    h, n = (8000, 1024) if not DRY else (256, 128)  # the dry run only exercises the code
    dev = torch.device(DEVICE)
    g = torch.Generator().manual_seed(0)
    model = RevMLP(d, L, h, seed=0).to(dev)
    x = torch.randn(n, d, generator=g, device="cpu").to(dev)
    t = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=g, device="cpu"), 10).float().to(dev)
    opt = GaussNewton(model, lr=0.5, regularizer="truncation")  # the paper preset
    opt.step(x, t)  # warm-up: kernels, the cached QR of the linear block's expansion
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    loss = opt.step(x, t)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if dev.type == "cuda" else float("nan")
    with capsys.disabled():
        print(f"\nGPU-SUITE paper-shaped GN step ({shape}: L={L} d={d} h={h} n={n}, float32, truncation) on "
              f"{torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}: {dt * 1e3:.1f} ms, "
              f"peak {peak:.0f} MiB above the model and batch, {model.n_trainable() / 1e6:.1f}M parameters")
    assert math.isfinite(loss) and all(torch.isfinite(p).all() for p in model.trainable())
