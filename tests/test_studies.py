"""Beyond-the-paper studies: linearised runs through the loop, the spawn/barrier pipeline on tiny digits runs, and
every study figure drawn from a synthetic results dir (checked on the matplotlib objects)."""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.config import compose_config, config_dict, run_id
from revgn_cli.figures import MissingRunsError
from revgn_cli.figures.data import load_figure_runs
from revgn_cli.figures.catalog import render
from revgn_cli.figures.style import visible_lines
from revgn_cli.results import RunDir, load_runs
from revgn_cli.studies.figures import k_value, study_figures, summary
from revgn_cli.studies.spawn import BARRIER_COLUMNS, barriers_path, read_barriers, run_spawn_study, write_barriers
from revgn_cli.train.runner import execute, run_dir_for

runner = CliRunner()
FAST = ["metrics.every=0", "metrics.loss_change=false"]


# ---------------------------------------------------------------------------------------------------------------
# linearised runs through the training loop


def test_linearised_run_logs_feature_updates_and_evaluates_the_tangent_model(tiny):
    from revgn_cli.optim import make_optimizer
    from revgn_cli.train.evaluate import evaluate
    from revgn_cli.train.loop import build_model, load_checkpoint_file, prepare_data

    cfg = compose_config(tiny + FAST + ["optimizer=linearised", "optimizer.relinearise_every=5",
                                        "optimizer.lr=0.5"])
    out = execute(cfg)
    assert out.status == "done"
    rows = RunDir(out.path).read_rows()
    ep = rows[rows["split"] == "epoch"].sort_values("epoch")
    steps = ep["step"].to_numpy()
    assert list(ep["feature_updates"]) == [s // 5 for s in steps] and steps[-1] >= 8
    # The logged metrics are those of f_lin(·; θ) about θ_s, not of the network at θ.
    ck = load_checkpoint_file(run_dir_for(cfg).ckpt_path)
    td = prepare_data(cfg, torch.device("cpu"))
    model = build_model(cfg, td.data, torch.device("cpu"), torch.float32)
    model.load_state_dict(ck["model"])
    opt = make_optimizer(model, config_dict(cfg)["optimizer"])
    opt.load_state_dict(ck["optimizer"])
    assert opt.since > 0  # mid-cycle at the end: f_lin ≠ f
    lin = evaluate(opt.eval_model(), td.x_te, td.y_te, 10, "ce", 2048)
    net = evaluate(model, td.x_te, td.y_te, 10, "ce", 2048)
    assert (ep["test_loss"].iloc[-1], ep["test_acc"].iloc[-1]) == pytest.approx(lin, rel=1e-6)
    assert lin[0] != net[0]


def test_spawned_continuation_switches_to_the_linearised_model(tiny):
    cfg = compose_config(tiny + FAST + ["optimizer=sgd", "train.spawn_epoch=1", "train.switch_lr=0.5"])
    out = execute(cfg)
    rows = RunDir(out.path).read_rows()
    ep = rows[rows["split"] == "epoch"].sort_values("epoch")
    assert list(ep["phase"]) == [0.0, 0.0, 1.0]
    assert ep["feature_updates"].iloc[-1] == 0.0  # K = ∞ after the spawn
    assert math.isnan(ep["feature_updates"].iloc[0])  # plain SGD has no such counter


# ---------------------------------------------------------------------------------------------------------------
# parent/child spawning


def test_spawn_study_writes_barriers_and_skips_finished_runs(tiny, results):
    ov = ["experiment=spawn_quick", *tiny, *FAST, "optimizer=choice(sgd)", "optimizer.lr=0.5", "train.eval_every=1",
          "extra.spawn.epochs=[0,1]", "extra.spawn.alphas=3"]
    logs: list[str] = []
    written = run_spawn_study(ov, log=logs.append)
    path = barriers_path(results, "spawn_quick")
    assert list(written) == [path] and path.exists()
    b = read_barriers(path)
    assert list(b.columns) == list(BARRIER_COLUMNS)
    assert list(b["spawn_epoch"]) == [0, 1] and list(b["child_epochs"]) == [2, 1]
    assert set(b["optimizer"]) == {"sgd"} and set(b["status_a"]) == {"done"}
    for _, r in b.iterrows():
        assert list(r["alphas"]) == [0.0, 0.5, 1.0]
        assert r["path_err"][0] == pytest.approx(r["err_a"]) and r["path_err"][-1] == pytest.approx(r["err_b"])
        assert r["barrier"] == pytest.approx(max(r["path_err"]) - (r["err_a"] + r["err_b"]) / 2)
        assert r["barrier"] >= 0 and 0 <= r["disagreement"] <= 1 and r["weight_distance"] > 0
        assert r["child_a"] != r["child_b"]
    # 1 parent + 2 spawn epochs × 2 children, all in the preset's folder; children start from θ_t.
    runs = load_runs(results, experiment="spawn_quick")
    assert runs["run_id"].nunique() == 5
    parent = runs[runs["train.init_from"].isna()]
    child = runs[runs["run_id"] == b["child_a"].iloc[1]]
    assert child["train.init_from"].iloc[0].endswith("checkpoints/epoch_1.pt")
    acc_parent_t1 = parent[(parent["split"] == "epoch") & (parent["epoch"] == 1)]["test_acc"].iloc[0]
    acc_child_0 = child[(child["split"] == "epoch") & (child["epoch"] == 0)]["test_acc"].iloc[0]
    assert acc_child_0 == acc_parent_t1
    # Rerun: every run is skipped, the barrier rows are recomputed identically.
    logs.clear()
    again = run_spawn_study(ov, log=logs.append)
    assert all("skipped" in line for line in logs if "child" in line or "parent" in line)
    pd.testing.assert_frame_equal(again[path], b)


# ---------------------------------------------------------------------------------------------------------------
# figures from synthetic results


def _write(res, cfg, rows, status="done"):
    run = RunDir(res / cfg.exp_name / run_id(cfg))
    run.path.mkdir(parents=True, exist_ok=True)
    run.config_path.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    for r in rows:
        r.update(run_id=run.run_id, split="epoch")
    run.write_rows(rows)
    run.write_meta(status=status, run_id=run.run_id, experiment=cfg.exp_name, seed=cfg.seed)
    return run


@functools.lru_cache(maxsize=None)
def _jobs(preset):
    from revgn_cli.sweep import expand

    return tuple(j.cfg for j in expand([f"experiment={preset}"]))


def _curve(cfg, acc_end, **extra):
    epochs, steps_per_epoch = cfg.train.epochs, math.ceil(4000 / cfg.regime.batch_size)  # mnist5k: 4,000 train
    rows = []
    for e in range(epochs + 1):
        r = {"epoch": float(e), "step": e * steps_per_epoch, "test_acc": 0.1 + (acc_end - 0.1) * (1 - 0.5 ** e),
             "train_loss": 2.3 * 0.7 ** e}
        r.update({k: (v(e) if callable(v) else v) for k, v in extra.items()})
        rows.append(r)
    return rows


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    res = tmp_path_factory.mktemp("studies") / "results"
    ref_acc = {"gn": 0.80, "adam": 0.90, "sgd": 0.86}
    for cfg in _jobs("minibatch_quick"):
        o = cfg.optimizer.name
        speed = {"gn": 0.02, "adam": 0.005, "sgd": 0.003}[o]
        _write(res, cfg, _curve(cfg, ref_acc[o], ntk_dist_init=lambda e, s=speed: s * e,
                                ntk_velocity=lambda e, s=speed: s if e else math.nan))
    for cfg in _jobs("linearisation_phase_quick"):
        k = k_value(cfg.optimizer.relinearise_every)
        acc = 0.86 + (0.0 if math.isinf(k) else 0.03 / k)
        spe = math.ceil(4000 / cfg.regime.batch_size)
        _write(res, cfg, _curve(cfg, acc,
                                feature_updates=lambda e, k=k: 0.0 if math.isinf(k) else float((spe * e) // k)))
    for cfg in _jobs("data_dependent_ntk_quick"):
        t = cfg.train.spawn_epoch
        acc = ref_acc[cfg.optimizer.name] - (0.0 if t is None else 0.05 / (1 + t))
        _write(res, cfg, _curve(cfg, acc))
    parents = []
    for cfg in _jobs("spawn_quick"):
        parents.append(_write(res, cfg, _curve(cfg, ref_acc[cfg.optimizer.name])))
    return res, parents


def _lines(ax):
    return {ln.get_label(): ln for ln in visible_lines(ax)}


def test_linearisation_phase_figure(synth):
    res, _ = synth
    r = render("linearisation_phase", res, None)
    axes = r.figure.axes
    heat = [a for a in axes if a.images]
    assert len(heat) == 2  # one row per inner optimiser (adam, sgd)
    ref = _jobs("minibatch_quick")[0]  # the phase preset inherits its batch size and length
    E, spe = ref.train.epochs, math.ceil(4000 / ref.regime.batch_size)
    img = heat[0].images[0].get_array()
    assert img.shape == (5, E)  # K ∈ {1, 4, 16, 64, ∞} × the evaluations after init
    assert [t.get_text() for t in heat[0].get_yticklabels()] == ["1", "4", "16", "64", "∞"]
    rows = r.figure.axes
    curves = [a for a in rows if "(b)" in a.get_title()][0]
    labels = list(_lines(curves))
    assert labels == ["K=1", "K=4", "K=16", "K=64", "K=∞", "GN (full network)"]
    gn = _lines(curves)["GN (full network)"]
    assert gn.get_ydata()[-1] == pytest.approx(100 * (0.1 + 0.7 * (1 - 0.5 ** E)))
    fu = [a for a in rows if "(c)" in a.get_title()][0]
    lens = [lab for lab in _lines(fu) if lab.endswith("updates")]
    S = spe * E
    assert lens[-1] == f"{S} updates" and len(lens) == 3
    x = _lines(fu)[f"{S} updates"].get_xdata()
    assert sorted(x) == [0, S // 64, S // 16, S // 4, S]  # at the end, for K = ∞, 64, 16, 4, 1
    spec = study_figures()["linearisation_phase"]
    df, _ = load_figure_runs("linearisation_phase", "quick", spec.presets_for("quick"), res)
    tab = summary("linearisation_phase", df)
    # 10 linearised runs (5 K × 2 inner optimisers) + one baseline row per minibatch_quick run
    assert {"K", "feature_updates", "test_acc"} <= set(tab.columns) and len(tab) == 10 + len(_jobs("minibatch_quick"))


def test_data_dependent_ntk_figure(synth):
    res, _ = synth
    r = render("data_dependent_ntk", res, None)
    ax = r.figure.axes[0]
    labels = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    for o in ("GN", "Adam", "SGD"):
        assert f"{o}, full training" in labels
    conts = {c.get_label(): c for c in ax.containers}
    assert set(conts) == {"GN → linearised at t", "Adam → linearised at t", "SGD → linearised at t"}
    xs, ys = conts["GN → linearised at t"].lines[0].get_data()
    E = _jobs("data_dependent_ntk_quick")[0].train.epochs
    assert list(xs) == [0, 1, 2, 4]
    assert ys[0] == pytest.approx(100 * (1 - (0.1 + (0.75 - 0.1) * (1 - 0.5 ** E))))
    base = [ln for ln in ax.get_lines() if ln.get_label() == "GN, full training"][0]
    assert base.get_ydata()[0] == pytest.approx(100 * (1 - (0.1 + 0.7 * (1 - 0.5 ** E))))


def test_barrier_figure_reads_barriers_parquet(synth, tmp_path):
    res, parents = synth
    with pytest.raises(MissingRunsError, match="revgn study spawn experiment=spawn_quick"):
        render("barrier", res, None)
    rows = []
    for p in parents:
        cfg = yaml.safe_load(p.config_path.read_text())
        for t in (0, 1, 2, 3):
            rows.append({"experiment": "spawn_quick", "parent_run_id": p.run_id, "optimizer": cfg["optimizer"]["name"],
                         "seed": 42, "spawn_epoch": t, "err_a": 0.1, "err_b": 0.12, "barrier": 0.05 / (1 + t),
                         "function_distance": 0.5 / (1 + t), "alphas": [0.0, 1.0], "path_err": [0.1, 0.12]})
    write_barriers(barriers_path(res, "spawn_quick"), rows)
    r = render("barrier", res, tmp_path)
    assert (tmp_path / "barrier.png").stat().st_size > 1000
    ax = r.figure.axes[0]
    conts = {c.get_label(): c for c in ax.containers}
    assert set(conts) == {"GN", "Adam", "SGD"}
    xs, ys = conts["Adam"].lines[0].get_data()
    assert list(xs) == [0, 1, 2, 3] and ys[0] == pytest.approx(5.0) and ys[-1] == pytest.approx(5 / 4)
    xs, ys = {c.get_label(): c for c in r.figure.axes[1].containers}["SGD"].lines[0].get_data()
    assert ys[1] == pytest.approx(0.25)


def test_kernel_dynamics_figure_and_cli(synth, tmp_path):
    res, _ = synth
    r = render("kernel_dynamics", res, None)
    a, b, c = r.figure.axes[:3]
    assert list(_lines(a)) == ["GN", "Adam", "SGD"] and list(_lines(b)) == ["GN", "Adam", "SGD"]
    E = _jobs("minibatch_quick")[0].train.epochs
    assert _lines(a)["GN"].get_ydata()[-1] == pytest.approx(0.02 * E)
    assert a.get_yscale() == "log" and b.get_yscale() == "log"
    assert list(_lines(c)) == ["GN", "Adam", "SGD"]
    assert min(_lines(a)["SGD"].get_xdata()) == 1  # epoch 0 (distance 0 by definition) is left out
    # `revgn plot <study figure>` goes through the figure registry.
    out = runner.invoke(app, ["plot", "kernel_dynamics", "--results", str(res), "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "kernel_dynamics.png").exists()
    lst = runner.invoke(app, ["study", "list"])
    assert lst.exit_code == 0 and all(n in lst.output for n in study_figures())


def test_study_presets():
    # (tests/test_figures.py composes every preset, these included; here: the grids the figures rely on)
    lin = _jobs("linearisation_phase_quick")
    assert sorted((c.optimizer.inner, k_value(c.optimizer.relinearise_every)) for c in lin) == sorted(
        (i, k) for i in ("sgd", "adam") for k in (1, 4, 16, 64, math.inf))
    assert {c.optimizer.lr for c in lin if c.optimizer.inner == "adam"} == {1e-4}
    spawn = _jobs("spawn_quick")
    assert [c.train.keep_checkpoints for c in spawn] == [[0, 1, 2, 3]] * 3
    assert np.isinf(k_value(None)) and k_value(4) == 4
