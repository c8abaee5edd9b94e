"""The gn_family study: its presets' grid, and its figure and table drawn from a synthetic results dir."""
from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.config import config_dict, run_id
from revgn_cli.figures.registry import render
from revgn_cli.figures.style import visible_lines
from revgn_cli.results import RunDir
from revgn_cli.studies.figures import summary
from revgn_cli.sweep import expand

QUICK = ("gn_family_quick", "gn_family_cg_quick")
FINAL_ACC = {"gn": 0.80, "adam": 0.90, "sgd": 0.88, "kfac": 0.85, "ggn_cg": 0.82}


def _jobs(presets=QUICK):
    return [j.cfg for p in presets for j in expand([f"experiment={p}"])]


def test_presets_cover_every_method_and_seed_once():
    cfgs = _jobs()
    methods = sorted({(c.optimizer.name, c.optimizer.damping if c.optimizer.name == "ggn_cg" else None) for c in cfgs},
                     key=str)
    assert methods == sorted([("adam", None), ("ggn_cg", 1e-3), ("ggn_cg", 1.0), ("gn", None), ("kfac", None),
                              ("sgd", None)], key=str)
    assert len(cfgs) == 6 * 3 and {c.seed for c in cfgs} == {42, 43, 44}
    assert len({run_id(c) for c in cfgs}) == len(cfgs) and {c.exp_name for c in cfgs} == {"gn_family_quick"}
    assert all(c.regime.name == "mini_batch" and c.regime.batch_size == 256 and c.metrics.every == 1 for c in cfgs)
    lr = {c.optimizer.name: c.optimizer.lr for c in cfgs}
    assert lr == {"gn": 0.1, "adam": 1e-4, "sgd": 0.1, "kfac": 1.0, "ggn_cg": 1.0}
    paper = _jobs(("gn_family_paper", "gn_family_cg_paper"))
    assert len(paper) == 18 and {c.dataset.name for c in paper} == {"mnist"} and {c.scale for c in paper} == {"paper"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    res = tmp_path_factory.mktemp("gn_family") / "results"
    for cfg in _jobs():
        o = cfg.optimizer.name
        acc = FINAL_ACC[o] + (0.02 if o == "ggn_cg" and cfg.optimizer.damping == 1.0 else 0.0) + (cfg.seed - 43) * 0.01
        run = RunDir(res / cfg.exp_name / run_id(cfg))
        run.path.mkdir(parents=True, exist_ok=True)
        run.config_path.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
        E = cfg.train.epochs
        rows = [{"run_id": run.run_id, "split": "epoch", "epoch": float(e), "step": 16 * e,
                 "train_loss": 2.3 * 0.7 ** e, "test_loss": 2.3 - 2 * acc * e / E, "test_acc": 0.1 + (acc - 0.1) * e / E,
                 "ntk_sim_init": 1 - 0.1 * e, "cka_block1": 1.0, "cka_block2": 1 - acc * e / 10}
                for e in range(E + 1)]
        run.write_rows(rows)
        run.write_meta(status="done", run_id=run.run_id, experiment=cfg.exp_name, seed=cfg.seed, wall_s=10.0)
    return res


def test_figure_draws_every_method_in_every_panel(synth, tmp_path):
    r = render("gn_family", synth, tmp_path)
    assert [p.name for p in r.paths] == ["gn_family.png", "gn_family.pdf"] and all(p.exists() for p in r.paths)
    axes = r.figure.axes
    assert len(axes) == 5
    want = ["GN", "Adam", "SGD", "GGN-CG λ=0.001", "GGN-CG λ=1", "K-FAC λ=0.1"]
    for ax in axes:
        assert list({ln.get_label(): ln for ln in visible_lines(ax)}) == want
    acc = {ln.get_label(): ln for ln in visible_lines(axes[2])}
    assert acc["Adam"].get_ydata()[-1] == pytest.approx(90.0)  # mean over seeds, in %
    assert acc["GGN-CG λ=1"].get_ydata()[-1] == pytest.approx(84.0)
    assert "logit kernel" in axes[3].get_title() and "last block (2)" in axes[4].get_title()


def test_table_places_each_method_between_gn_and_adam(synth):
    from revgn_cli.figures.data import load_figure_runs

    df, _ = load_figure_runs("gn_family", "quick", QUICK, synth)
    t = summary("gn_family", df).set_index("method")
    assert list(t.index) == ["GN", "Adam", "SGD", "GGN-CG λ=0.001", "GGN-CG λ=1", "K-FAC λ=0.1"]
    assert t.loc["Adam", "test_acc"] == "0.9000 ± 0.0100" and (t["seeds"] == 3).all()
    pos = t["test_acc GN→Adam"]
    assert pos["GN"] == 0 and pos["Adam"] == 1 and pos["K-FAC λ=0.1"] == pytest.approx(0.5)
    assert pos["GGN-CG λ=1"] == pytest.approx(0.4)
    assert (t["wall_s/run"] == 10.0).all()


def test_study_run_trains_nothing_when_finished_and_prints_the_table(synth, tmp_path):
    out = CliRunner().invoke(app, ["--quiet", "study", "run", "gn_family", "scale=quick", "--results", str(synth),
                                   "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "gn_family.png").exists() and "K-FAC λ=0.1" in out.output
    metas = [json.loads(p.read_text()) for p in synth.rglob("meta.json")]
    assert all(m["status"] == "done" and m["wall_s"] == 10.0 for m in metas)  # skipped, not retrained
    assert len(metas) == 18
