"""`revgn tune`: rates chosen on a validation hold-out by mean final val_loss; the record and its API."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.tune import TuneError, TuneMissing, choose, load_record, run_tune, setting_key, tuned_rates

SETTING = ["dataset=digits", "model=tiny", "regime.n_samples=256", "train.epochs=2", "device=cpu"]
TUNE = ["tune.grid.sgd=[0.03,0.3,10000.0]", "tune.seeds=[1,2]", "tune.val_size=200"]


def test_choose_takes_the_lowest_mean_and_never_a_rate_that_diverged():
    inf = math.inf
    assert choose({0.1: {1: 0.5, 2: 0.7}, 0.3: {1: 0.4, 2: 0.9}, 1.0: {1: 0.45, 2: 0.5}}) == 1.0
    # 3.0 has the best seed and the best finite mean, but diverged once: never chosen while another rate did not.
    assert choose({0.1: {1: 0.9, 2: 0.9}, 3.0: {1: 0.1, 2: inf}}) == 0.1
    # Every rate diverged somewhere: fewest diverged seeds, then the lowest mean of the rest.
    assert choose({0.1: {1: inf, 2: inf, 3: 0.2}, 0.3: {1: inf, 2: 0.9, 3: 0.8}, 1.0: {1: inf, 2: 0.5, 3: 0.6}}) == 1.0


def test_setting_key_is_stable_and_ignores_what_does_not_define_the_setting():
    a = setting_key(["model.hidden=8000", "optimizer=gn", "results_dir=/x", "tune.seeds=[1]", "device=cpu",
                     "hydra/launcher=joblib", "dataset=digits"])
    assert a == setting_key(["dataset=digits", "model.hidden=8000"]) == "dataset=digits model.hidden=8000"
    assert setting_key([]) == ""


def test_tune_end_to_end_chooses_the_argmin_and_round_trips(results):
    rec = run_tune("fig1_quick", [*SETTING, *TUNE, "optimizer=sgd"], results, n_jobs=1, quiet=True)
    assert list(rec.optimizers) == ["sgd"] and rec.setting == " ".join(sorted(SETTING[:-1]))
    # By hand from the rows: the last epoch row's val_loss of every tune run, mean over seeds per rate.
    from revgn_cli.results import load_runs

    df = load_runs(results, {"experiment": "fig1_quick_tune"}, statuses=("done", "diverged"))
    ep = df[df.split == "epoch"].sort_values("epoch")
    assert set(ep["regime.val_size"]) == {200} and ep.val_loss.notna().all()
    last = ep.groupby("run_id").tail(1)
    done = last[last.status == "done"]
    assert set(last[last.status == "diverged"]["optimizer.lr"]) == {10000.0}  # the big rate diverged
    means = done.groupby("optimizer.lr").val_loss.mean()
    assert len(means) == 2 and done.groupby("optimizer.lr").size().eq(2).all()
    sgd = rec.optimizers["sgd"]
    assert sgd.chosen == float(means.idxmin()) and sgd.chosen != 10000.0
    assert sgd.mean_val_loss[sgd.chosen] == pytest.approx(means.min(), rel=1e-12)
    assert sgd.diverged == {0.03: 0, 0.3: 0, 10000.0: 2}
    # The JSON record round-trips, and tuned_rates reads the chosen rate for this setting (any override order).
    again = load_record(results, "fig1_quick", list(reversed(SETTING)))
    assert again == rec
    assert tuned_rates(results, "fig1_quick", SETTING) == {"sgd": sgd.chosen}
    data = json.loads((results / "tune" / "fig1_quick.json").read_text())
    assert data[rec.setting]["sgd"]["val_loss"]["10000.0"] == {"1": None, "2": None}
    # A rerun finds every run finished and trains nothing.
    mtimes = sorted(p.stat().st_mtime for p in (results / "fig1_quick_tune").glob("*/metrics.parquet"))
    assert run_tune("fig1_quick", [*SETTING, *TUNE, "optimizer=sgd"], results, n_jobs=1, quiet=True) == rec
    assert sorted(p.stat().st_mtime for p in (results / "fig1_quick_tune").glob("*/metrics.parquet")) == mtimes
    # Another setting was never tuned: the error names the command.
    with pytest.raises(TuneMissing, match=r"run `revgn tune fig1_quick .*model.hidden=32"):
        tuned_rates(results, "fig1_quick", [*SETTING, "model.hidden=32"])


def test_tuned_rates_without_a_record_names_the_command(results):
    with pytest.raises(TuneMissing, match=r"no tuned rates for minibatch_quick \(the preset's own setting\).*"
                                          r"run `revgn tune minibatch_quick --results"):
        tuned_rates(results, "minibatch_quick")


def test_cli_preset_without_a_grid_is_one_line_exit_2(results):
    r = CliRunner().invoke(app, ["tune", "fig5_quick", "--results", str(results)])
    assert r.exit_code == 2, r.output
    assert "declares no tune grid" in r.output and "Traceback" not in r.output
    with pytest.raises(TuneError, match="optimizer=kfac has no tune grid"):
        run_tune("fig1_quick", [*SETTING, "optimizer=kfac"], results, n_jobs=1, quiet=True)
