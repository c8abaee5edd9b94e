"""step_size_ratio = ‖J_Z(θ_after − θ_before)‖_F / ‖ε_Z‖_F in the step rows, against a dense float64 reference."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch.func import functional_call, jacrev

from revgn_cli.config import compose_config
from revgn_cli.metrics.step_size import snapshot, step_size_ratio
from revgn_cli.models import RevMLP
from revgn_cli.train.loop import batches_of_epoch, build_model, load_checkpoint_file, prepare_data
from revgn_cli.train.runner import execute


def dense_ratio(model, x, t, before, after, point=None, z=None):
    """J_Z by torch.func.jacrev, flattened to (n·C) × |θ|, times vec(Δθ); ε_Z = softmax(Z) − T, all float64."""
    point = before if point is None else point
    buffers = dict(model.named_buffers())
    names = list(before)
    jac = jacrev(lambda p: functional_call(model, (p, buffers), (x,)))(point)
    n, c = x.shape[0], t.shape[1]
    J = torch.cat([jac[k].reshape(n * c, -1) for k in names], 1)
    dtheta = torch.cat([(after[k] - before[k]).reshape(-1) for k in names])
    z = functional_call(model, (point, buffers), (x,)) if z is None else z
    eps = torch.softmax(z, 1) - t
    return float((J @ dtheta).norm() / eps.norm())


def test_ratio_matches_dense_jacobian_reference():
    m = RevMLP(8, 2, 6, n_classes=4, init_std=0.5, seed=1).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    t = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 1]), 4).double()
    before = snapshot(m)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    after = {k: v.detach().clone() for k, v in m.named_parameters()}
    got = float(step_size_ratio(m, x, t, before))
    assert got == pytest.approx(dense_ratio(m, x, t, before, after), rel=1e-10)
    # Another linearisation point and given logits (the linearised optimiser's case).
    point = {k: v + 0.05 for k, v in before.items()}
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    got = float(step_size_ratio(m, x, t, before, point=point, z_before=z))
    assert got == pytest.approx(dense_ratio(m, x, t, before, after, point=point, z=z), rel=1e-10)


OPTS = {"gn": ["optimizer.lr=0.5"], "adam": ["optimizer.lr=0.01"], "sgd": ["optimizer.lr=0.5"],
        "ggn_cg": ["optimizer.lr=0.5", "optimizer.cg_iters=5"], "kfac": ["optimizer.lr=0.5", "optimizer.damping=0.1"],
        "linearised": ["optimizer.lr=0.5"]}


@pytest.mark.parametrize("opt", list(OPTS))
def test_every_optimiser_logs_the_ratio_of_its_applied_update(opt, results):
    """Full batch, two updates, float64: the logged ratios are the dense reference's for θ_0 → θ_1 → θ_2 (θ_1 from
    the epoch-1 checkpoint; the linearised run's J is at its anchor θ_0, its Z = f_lin(θ_1))."""
    cfg = compose_config(["dataset=digits", "model=tiny", "regime=full_batch", "regime.n_samples=12",
                          "train.epochs=2", "train.keep_checkpoints=[1]", "metrics.every=0",
                          "metrics.loss_change=false", "precision=float64", "device=cpu", f"results_dir={results}",
                          f"optimizer={opt}", *OPTS[opt]])
    out = execute(cfg)
    assert out.status == "done"
    steps = pd.read_parquet(out.path / "metrics.parquet").query("split == 'step'").sort_values("step")
    td = prepare_data(cfg, torch.device("cpu"))
    model = build_model(cfg, td.data, torch.device("cpu"), torch.float64)
    th = [snapshot(model)]
    for name in ("epoch_1.pt", "last.pt"):
        saved = load_checkpoint_file(out.path / "checkpoints" / name)["model"]
        th.append({k: saved[k] for k in th[0]})
    idx = batches_of_epoch(cfg, td.x_tr.shape[0], 0, 0)[0]
    x, t = td.x_tr[idx], torch.nn.functional.one_hot(td.y_tr[idx], 10).double()
    for s in (0, 1):
        point, z = None, None
        if opt == "linearised" and s == 1:  # f_lin about θ_0: J at θ_0, Z = f(θ_0) + J(θ_0)(θ_1 − θ_0)
            point = th[0]
            buffers = dict(model.named_buffers())
            jac = jacrev(lambda p: functional_call(model, (p, buffers), (x,)))(th[0])
            dz = sum(torch.einsum("nc...,...->nc", jac[k], th[1][k] - th[0][k]) for k in th[0])
            z = functional_call(model, (th[0], buffers), (x,)) + dz
        want = dense_ratio(model, x, t, th[s], th[s + 1], point=point, z=z)
        assert steps.step_size_ratio.iloc[s] == pytest.approx(want, rel=1e-8), s
        assert want > 0


def test_schedule_every_update_of_the_first_epoch_then_the_first_of_each(tiny):
    out = execute(compose_config(tiny + ["optimizer=sgd", "optimizer.lr=0.1", "train.epochs=3", "metrics.every=0"]))
    steps = pd.read_parquet(out.path / "metrics.parquet").query("split == 'step'").sort_values("step")
    per_epoch = steps.groupby(steps.epoch.apply(math.ceil))
    first, later = per_epoch.get_group(1), [per_epoch.get_group(e) for e in (2, 3)]
    assert len(first) > 1 and first.step_size_ratio.notna().all() and (first.step_size_ratio > 0).all()
    for g in later:
        assert g.step_size_ratio.notna().tolist() == [True] + [False] * (len(g) - 1)
    off = execute(compose_config(tiny + ["optimizer=sgd", "optimizer.lr=0.1", "metrics.every=0",
                                         "metrics.step_size_ratio=false"]))
    assert "step_size_ratio" not in pd.read_parquet(off.path / "metrics.parquet").columns
