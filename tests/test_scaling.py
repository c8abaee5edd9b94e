"""The scale ladder (`revgn study run scaling`): rungs from conf/study, training only what is missing, per-seed
margins into ladder.parquet, the verdict per rung and the figure — on synthetic runs (no training)."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from revgn_cli import sweep
from revgn_cli.cli import app
from revgn_cli.studies import scaling
from revgn_cli.studies.scaling import CLAIM_IDS, Ladder, ladder_path, ladder_table, load_ladder, read_ladder
from test_figures import write_preset

runner = CliRunner()


def test_the_declared_ladder():
    lad = load_ladder("quick")
    rungs = lad.rungs()
    assert [(r.axis, r.value) for r in rungs[:3]] == [("length", 1.0), ("batch", 1024.0), ("hidden", 2048.0)]
    assert {(r.axis, r.value) for r in rungs} == {("length", v) for v in (1, 4, 16)} | {
        ("hidden", v) for v in (1024, 2048, 4096, 8000)} | {("batch", v) for v in (256, 1024)}
    # the x1 rungs of every axis are the quick setting itself: the same runs, trained once
    quick = [r for r in rungs if (r.axis, r.value) in {("length", 1.0), ("hidden", 1024.0), ("batch", 256.0)}]
    assert len(quick) == 3 and all(r.overrides == () for r in quick)
    jobs = sweep.expand(lad.overrides(lad.rung("length", 16)))
    assert len(jobs) == 6 and {j.cfg.train.epochs for j in jobs} == {192}
    assert {(j.cfg.optimizer.name, j.cfg.seed) for j in jobs} == {(o, s) for o in ("gn", "adam") for s in (42, 43, 44)}
    assert lad.axes["hidden"]["paper"] == 8000
    from revgn_cli.config import ConfigError

    with pytest.raises(ConfigError, match="no scale ladder"):
        load_ladder("paper")


def test_study_run_scaling_trains_missing_rungs_and_writes_the_ladder(tmp_path, monkeypatch):
    res, out = tmp_path / "results", tmp_path / "figs"
    lad = Ladder(base=("experiment=minibatch_quick",), grid={"optimizer": ["gn", "adam"], "seed": [42, 43, 44]},
                 axes={"batch": {"label": "batch", "paper": 1024, "rungs": {256: [], 1024: ["regime.batch_size=1024"]}},
                       "hidden": {"label": "h", "paper": 8000, "rungs": {1024: [], 2048: ["model.hidden=2048"]}}},
                 order=(("batch", 256.0), ("batch", 1024.0), ("hidden", 2048.0)))
    write_preset(res, "minibatch_quick")  # quick setting: paper-like in every seed
    write_preset(res, "minibatch_quick", flip=True, overrides=("regime.batch_size=1024",))  # every seed disagrees
    launched = []
    monkeypatch.setattr(scaling, "load_ladder", lambda scale: lad)
    monkeypatch.setattr(sweep, "launch", lambda ov, force=False, quiet=False, jobs=None: launched.append(ov) or [])
    r = runner.invoke(app, ["--quiet", "study", "run", "scaling", "scale=quick", "--results", str(res), "--out", str(out)])
    assert r.exit_code == 0, r.output
    # only the rung with missing runs (h = 2048) is launched, with the joblib launcher by default
    assert len(launched) == 1 and "model.hidden=2048" in launched[0] and "hydra/launcher=joblib" in launched[0]
    df, meta = read_ladder(ladder_path(res))
    assert meta["hidden"] == {"label": "h", "paper": 8000}
    assert set(df["claim"]) == set(CLAIM_IDS)
    t = ladder_table(df).set_index(["claim", "axis", "value"])
    assert t.loc[("fig2.test_loss", "batch", 256.0), "verdict"] == "HOLDS"
    assert t.loc[("fig2.test_loss", "batch", 1024.0), "verdict"] == "REVERSED"
    assert t.loc[("fig2.test_loss", "hidden", 2048.0), "verdict"] == "MISSING"
    assert t.loc[("fig4.ntk_lazy", "batch", 256.0), "n"] == 3
    # margins are the claims' own per-seed margins (paired by seed)
    base = df[(df["axis"] == "batch") & (df["value"] == 256.0) & (df["claim"] == "fig2.test_loss")]
    assert sorted(base["seed"]) == [42, 43, 44] and (base["margin"] > 0).all()
    assert (out / "scaling.png").exists() and "not run" not in r.output
    assert "fig2.test_loss" in r.output and "HOLDS" in r.output and "REVERSED" in r.output
    # the figure: one row per claim, one column per axis; a point per rung with finished runs
    from revgn_cli.figures.registry import render

    fig = render("scaling", res, None, "quick").figure
    assert len(fig.axes) == len(CLAIM_IDS) * 2
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("not run") == len(CLAIM_IDS)  # h = 2048 in every claim's row
