"""`revgn tune`: rates chosen on a validation hold-out by mean final val_loss; the record and its API."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli import tune
from revgn_cli.figures.protocols import NoTunedRates, tuned_variants_for
from revgn_cli.tune import (OptimizerTune, TuneError, TuneMissing, TuneRecord, choose, load_record, next_rate_out,
                            run_tune, run_tune_cells, save_record, setting_key, tune_plan, tuned_rates)

SETTING = ["dataset=digits", "model=tiny", "regime.n_samples=256", "train.epochs=2", "device=cpu"]
TUNE = ["tune.grid.sgd=[0.03,0.3,10000.0]", "tune.seeds=[1,2]", "tune.val_size=200"]


def test_choose_takes_the_lowest_mean_and_never_a_rate_that_diverged():
    inf = math.inf
    assert choose({0.1: {1: 0.5, 2: 0.7}, 0.3: {1: 0.4, 2: 0.9}, 1.0: {1: 0.45, 2: 0.5}}) == 1.0
    # 3.0 has the best seed and the best finite mean, but diverged once: never chosen while another rate did not.
    assert choose({0.1: {1: 0.9, 2: 0.9}, 3.0: {1: 0.1, 2: inf}}) == 0.1
    # Every rate diverged somewhere: fewest diverged seeds, then the lowest mean of the rest.
    assert choose({0.1: {1: inf, 2: inf, 3: 0.2}, 0.3: {1: inf, 2: 0.9, 3: 0.8}, 1.0: {1: inf, 2: 0.5, 3: 0.6}}) == 1.0


def test_a_choice_on_an_edge_asks_for_the_next_rate_out_until_it_is_bracketed():
    inf = math.inf
    ext = [3e-6, 1e-5, 3e-3, 3.0, 10.0]
    # top edge: the smallest extension above; bottom edge: the largest below; interior: none
    assert next_rate_out({0.1: {1: 0.5}, 0.3: {1: 0.4}, 1.0: {1: 0.3}}, ext) == 3.0
    assert next_rate_out({3e-5: {1: 0.3}, 1e-4: {1: 0.4}, 1e-3: {1: 0.5}}, ext) == 1e-5
    assert next_rate_out({0.1: {1: 0.5}, 0.3: {1: 0.3}, 1.0: {1: 0.4}}, ext) is None
    # the next rate out won: on the edge again, so the one after it; it lost or diverged: bracketed, done
    assert next_rate_out({0.3: {1: 0.4}, 1.0: {1: 0.3}, 3.0: {1: 0.2}}, ext) == 10.0
    assert next_rate_out({0.3: {1: 0.4}, 1.0: {1: 0.3}, 3.0: {1: 0.35}}, ext) is None
    assert next_rate_out({0.3: {1: 0.4}, 1.0: {1: 0.3}, 3.0: {1: inf, 2: 0.1}}, ext) is None
    # nothing left beyond the edge, or no extension at all: the choice stays on the edge and is recorded so
    assert next_rate_out({3.0: {1: 0.4}, 10.0: {1: 0.3}}, ext) is None and next_rate_out({1.0: {1: 0.3}}, []) is None
    # a single rate is on both edges: upward first, then downward once the rate above lost
    assert next_rate_out({1e-5: {1: 0.3}}, ext) == 3e-3
    assert next_rate_out({1e-5: {1: 0.3}, 3e-3: {1: 0.9}}, ext) == 3e-6
    t = OptimizerTune(1.0, [0.3, 1.0], [1], 10, {0.3: {1: 0.4}, 1.0: {1: 0.3}})
    assert t.at_edge and t.to_json()["at_edge"] is True
    assert not OptimizerTune(0.3, [0.1, 0.3, 1.0], [1], 10, {0.1: {1: 0.5}, 0.3: {1: 0.3}, 1.0: {1: 0.4}}).at_edge


def test_tune_extends_past_an_edge_choice_and_records_every_rate_tried(results):
    """Grid {0.03} (one rate: on both edges) with rates out of it above: the rates tried must be exactly the sequence
    that next_rate_out replays from the recorded losses (10000 diverges if it is reached, so it can never end a
    climb). Downward steps are in the table test above; each step here is one more launch (a few seconds)."""
    ext = [0.3, 10000.0]
    tune_ov = ["tune.grid.sgd=[0.03]", f"++tune.extend.sgd=[{','.join(map(str, ext))}]", "tune.seeds=[1,2]",
               "tune.val_size=200"]
    rec = run_tune("fig1_quick", [*SETTING, *tune_ov, "optimizer=sgd"], results, n_jobs=1, quiet=True)
    sgd = rec.optimizers["sgd"]
    assert sgd.grid[:2] == [0.03, 0.3] and set(sgd.grid) == set(sgd.val_loss)
    replay = {0.03: sgd.val_loss[0.03]}
    for r in sgd.grid[1:]:
        assert next_rate_out(replay, ext) == r  # each rate out was asked for by the losses before it
        replay[r] = sgd.val_loss[r]
    assert next_rate_out(replay, ext) is None and sgd.chosen == choose(sgd.val_loss) != 10000.0
    assert sgd.at_edge == (sgd.chosen == 0.03)  # 0.03 won: nothing below it to try; 0.3 won: 10000 brackets it
    if 10000.0 in sgd.val_loss:
        assert sgd.diverged[10000.0] == 2
    n_runs = len(list((results / "fig1_quick_tune").glob("*/meta.json")))
    assert n_runs == 2 * len(sgd.grid)  # only the rates tried were trained, each on both seeds
    assert load_record(results, "fig1_quick", SETTING) == rec
    # A rerun (the record's rates out of the grid already trained) trains nothing and chooses the same.
    assert run_tune("fig1_quick", [*SETTING, *tune_ov, "optimizer=sgd"], results, n_jobs=1, quiet=True) == rec
    assert len(list((results / "fig1_quick_tune").glob("*/meta.json"))) == n_runs
    # The CLI's table lists every rate tried and marks the choice (and says whether it is still on the edge).
    r = CliRunner().invoke(app, ["--quiet", "tune", "fig1_quick", *SETTING, *tune_ov, "optimizer=sgd", "--jobs", "1",
                                 "--results", str(results)])
    assert r.exit_code == 0, r.output
    assert all(f"{x:g}" in r.output for x in sgd.grid) and "◀" in r.output
    assert f"sgd={sgd.chosen:g}{' (edge)' if sgd.at_edge else ''}" in r.output


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
    # What tuning cost: the six tune runs' meta.json wall_s, summed.
    walls = [json.loads(p.read_text())["wall_s"] for p in (results / "fig1_quick_tune").glob("*/meta.json")]
    assert len(walls) == 6 and data[rec.setting]["sgd"]["run_s"] == pytest.approx(sum(walls)) and sgd.run_s > 0
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
    r = CliRunner().invoke(app, ["tune", "fig5_paper", "--results", str(results)])
    assert r.exit_code == 2, r.output
    assert "declares no tune grid" in r.output and "Traceback" not in r.output
    with pytest.raises(TuneError, match="optimizer=kfac has no tune grid"):
        run_tune("fig1_quick", [*SETTING, "optimizer=kfac"], results, n_jobs=1, quiet=True)


# --- how each appendix preset is tuned: per axis value, from another preset, or not at all (the rate is its axis) ---

def test_tune_plan_per_axis_rates_from_fixed_and_switch():
    p = tune_plan("fig5_quick", [])
    assert p.cells == [["regime=full_batch"], ["regime=mini_batch"]] and p.tuned == ["gn", "adam", "sgd"]
    assert tune_plan("fig5_quick", ["regime=mini_batch"]).cells == [[]]  # pinned by the setting: one cell
    p = tune_plan("fig8_quick", [])
    assert [c[0].split("=")[0] for c in p.cells] == ["model.init_std"] * 3 and p.optimizers == ["gn"]
    assert [float(c[0].split("=")[1]) for c in p.cells] == [1e-2, 1e-3, 1e-6]
    assert tune_plan("fig14_quick", []).cells == [["regularizer=damping"], ["regularizer=noise"]]
    p = tune_plan("fig7_quick", [])
    assert p.source == "minibatch_quick" and p.switch_to == {"adam": "gn", "gn": "adam"}
    p = tune_plan("fig12_quick", [])
    assert p.fixed == ["gn"] and p.tuned == [] and p.source == "fig12_quick"
    # fig13 inherits minibatch_quick's Adam and SGD grids, but runs GN only: only GN is tuned
    assert tune_plan("fig13_quick", []).tuned == ["gn"]
    with pytest.raises(TuneError, match="tune.per names model.hidden, which the preset does not sweep"):
        tune_plan("fig13_quick", ["tune.per=[model.hidden]"])
    with pytest.raises(TuneError, match="exclude each other"):
        tune_plan("fig5_quick", ["tune.rates_from=minibatch_quick"])


def _fake(results, experiment, setting, rates):
    save_record(results, TuneRecord(experiment, setting, {
        o: OptimizerTune(r, [r], [1], 10, {r: {1: 0.5}}) for o, r in rates.items()}))


def test_tuned_variants_per_cell_switch_fixed_and_the_missing_cell_named(results):
    _fake(results, "minibatch_quick", "", {"gn": 1.0, "adam": 3e-4, "sgd": 0.1})
    # fig7: the rates of minibatch_quick, and each switch at the other optimiser's tuned rate
    assert tuned_variants_for("fig7_quick", results) == [
        ("optimizer=adam", "optimizer.lr=0.0003", "train.switch_lr=1.0"),
        ("optimizer=gn", "optimizer.lr=1.0", "train.switch_lr=0.0003")]
    # fig12: GN's rate is the figure's axis: the preset's own GN jobs, no record needed
    assert tuned_variants_for("fig12_quick", results) == [("optimizer=gn",)]
    # fig14: one record entry per regulariser, each variant pinned to its cell
    _fake(results, "fig14_quick", "regularizer=damping", {"gn": 0.3})
    with pytest.raises(NoTunedRates, match=r"setting 'regularizer=noise'.*revgn tune fig14_quick regularizer=noise"):
        tuned_variants_for("fig14_quick", results)
    _fake(results, "fig14_quick", "regularizer=noise", {"gn": 1.0})
    v = tuned_variants_for("fig14_quick", results)
    assert v == [("regularizer=damping", "optimizer=gn", "optimizer.lr=0.3"),
                 ("regularizer=noise", "optimizer=gn", "optimizer.lr=1.0")]
    # the variants select exactly the preset's jobs at those rates (the regulariser axis is pinned, not doubled)
    from revgn_cli.figures.data import preset_jobs

    jobs = [j for extra in v for j in preset_jobs("fig14_quick", extra)]
    assert len(jobs) == 20 and len({j.run_id for j in jobs}) == 20


def test_run_tune_cells_tunes_each_axis_value_into_its_own_entry(results):
    """fig5 is tuned per regime: two settings, two record entries, each from its own runs (tiny digits runs)."""
    setting = ["dataset=digits", "model=tiny", "regime.n_samples=256", "regime.batch_size=128", "train.epochs=2"]
    recs = run_tune_cells("fig5_quick", [*setting, "device=cpu", "optimizer=sgd", "tune.grid.sgd=[0.03,0.3]",
                                         "tune.seeds=[1,2]", "tune.val_size=100"], results, n_jobs=1, quiet=True)
    assert [r.setting for r in recs] == [" ".join(sorted([*setting, f"regime={g}"]))
                                         for g in ("full_batch", "mini_batch")]
    data = json.loads((results / "tune" / "fig5_quick.json").read_text())
    assert set(data) == {r.setting for r in recs}
    from revgn_cli.results import load_runs

    df = load_runs(results, {"experiment": "fig5_quick_tune"}, statuses=("done", "diverged"))
    assert df.run_id.nunique() == 8 and set(df["regime.name"]) == {"full_batch", "mini_batch"}
    for rec in recs:  # each entry's chosen rate is the argmin of its own regime's runs
        g = rec.setting.split("regime=")[1].split()[0]
        last = df[(df.split == "epoch") & (df["regime.name"] == g)].sort_values("epoch").groupby("run_id").tail(1)
        assert rec.optimizers["sgd"].chosen == float(last.groupby("optimizer.lr").val_loss.mean().idxmin())


def test_run_tune_cells_delegates_rates_from_and_skips_fixed(results, monkeypatch):
    calls = []
    monkeypatch.setattr(tune, "run_tune", lambda p, ov, res, **kw: calls.append((p, list(ov))) or p)
    assert run_tune_cells("fig6_quick", ["train.epochs=3"], results) == ["minibatch_quick"]
    assert calls == [("minibatch_quick", ["train.epochs=3"])]
    assert run_tune_cells("fig12_quick", [], results) == [] and len(calls) == 1
    assert run_tune_cells("fig8_quick", [], results) == ["fig8_quick"] * 3
    assert [ov for _, ov in calls[1:]] == [[c] for c in ("model.init_std=0.01", "model.init_std=0.001",
                                                          "model.init_std=1e-06")]
