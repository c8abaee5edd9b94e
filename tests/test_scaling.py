"""The scale study (`revgn study run scaling` / `revgn study report scaling`): the declared design, the plan and its
budget, training only what is missing, the margins CSV, the trend and the report — on synthetic runs (no training)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from typer.testing import CliRunner

from revgn_cli import sweep
from revgn_cli.cli import app
from revgn_cli.config import ConfigError
from revgn_cli.stats import judge, trend
from revgn_cli.studies.scaling import (
    MARGIN_COLUMNS, CellPlan, RunPlan, describe_plan, estimate_run_s, fit_budget, load_design, merge_overrides,
    plan_study, run_study, runs_at_once, train_images, updates_of, wall_s,
)
from revgn_cli.studies.scaling_report import axis_trends, cell_verdicts, direction, read_margins
from test_figures import write_preset

runner = CliRunner()


def test_the_declared_design_expands_to_the_expected_cells():
    d = load_design()
    assert set(d.cells) == {"quick", "paper", "paper_h1024", "paper_e12", "paper_b256_epochs", "paper_b256_updates",
                            "paper_n1024", "paper_n2048"}
    assert d.order[:2] == ("quick", "paper") and d.methods == ("gn", "adam") and d.min_seeds >= 5
    assert all(c.seeds >= 5 for c in d.cells.values())
    # leave-one-axis-out: every axis holds the paper corner and cells that differ from it on that axis only
    for a in d.axes.values():
        assert d.axes[a.name].cells[a.paper] == "paper"
    cfg = {}
    for name, cell in d.cells.items():
        cfg[name] = sweep.expand(d.run_overrides(cell, "gn", [42], None))[0].cfg
    p = cfg["paper"]
    assert (p.model.hidden, p.regime.batch_size, p.train.epochs, train_images(p), updates_of(p)) == (
        8000, 1024, 100, 4000, 400)
    q = cfg["quick"]
    assert (q.model.hidden, q.regime.batch_size, q.train.epochs, updates_of(q)) == (1024, 256, 12, 192)
    assert cfg["paper_h1024"].model.hidden == 1024 and updates_of(cfg["paper_h1024"]) == 400
    assert updates_of(cfg["paper_e12"]) == 48
    # batch at a fixed number of epochs and at a fixed number of updates
    assert (cfg["paper_b256_epochs"].train.epochs, updates_of(cfg["paper_b256_epochs"])) == (100, 1600)
    assert (cfg["paper_b256_updates"].regime.batch_size, updates_of(cfg["paper_b256_updates"])) == (256, 400)
    assert [train_images(cfg[c]) for c in ("paper_n1024", "paper_n2048")] == [1024, 2048]
    assert [cfg[c].model.hidden for c in ("paper_n1024", "paper_n2048")] == [8000, 8000]
    assert d.axes_of("paper") == [(a, d.axes[a].paper) for a in d.axes]
    # each method's tuning overrides name the cell's setting plus the declared grid
    t = d.tune_overrides(d.cells["paper_n1024"])
    assert "regime.train_size=1024" in t and "++tune.grid.gn=[0.1,0.3,1.0]" in t
    assert "++tune.extend.adam=[3e-06,1e-05,0.003]" in t and d.extend("gn") == [3.0, 10.0]


def test_merge_overrides_later_keys_win_in_place():
    assert merge_overrides(["a=1", "b=2"], ["a=3", "c=4"]) == ("a=3", "b=2", "c=4")


DESIGN = """
base: [experiment=scaling_quick]
methods: [gn, adam]
seeds: [42, 43, 44, 45, 46, 47]
min_seeds: 5
rates: paper
claims: [fig2.test_loss, fig4.cka_last]
cells:
  quick: {overrides: [], seeds: 5}
  wide: {overrides: [model.hidden=2048], seeds: 6}
axes:
  width: {label: width, quick: 1024, paper: 2048, cells: {1024: quick, 2048: wide}}
order: [quick, wide]
cost:
  update_fixed_s: {gn: 0.15, adam: 0.06}
  update_scaled_s: {gn: 0.75, adam: 0.31}
  eval_s: 1.0
  eval_floor_s: 0.1
  diag_s: 10.0
  diag_floor_s: 1.0
  run_overhead_s: 5.0
"""


def test_only_missing_runs_are_launched_and_the_csv_is_written_per_cell(tmp_path, monkeypatch):
    res, csv = tmp_path / "results", tmp_path / "margins.csv"
    (tmp_path / "d.yaml").write_text(DESIGN)
    d = load_design(tmp_path / "d.yaml")
    write_preset(res, "scaling_quick", overrides=("seed=42,43,44,45,46",))  # the quick cell: every run finished
    write_preset(res, "scaling_quick", overrides=("seed=42", "model.hidden=2048"))  # wide: one seed per method
    plan = plan_study(d, [], str(res), budget_s=1e9)
    assert [len(c.todo()) for c in plan.cells] == [0, 10]
    launched = []
    monkeypatch.setattr(sweep, "launch", lambda ov, force=False, quiet=False, jobs=None: launched.append(ov) or [])
    assert run_study(d, plan, [], str(res), csv) == 0
    assert len(launched) == 2  # wide only, one multirun per method, without the finished seed 42
    assert all("seed=43,44,45,46,47" in ov and "model.hidden=2048" in ov for ov in launched)
    assert {o for ov in launched for o in ov if o.startswith("optimizer=")} == {"optimizer=gn", "optimizer=adam"}
    df = read_margins(csv)
    assert list(df.columns) == list(MARGIN_COLUMNS)
    q = df[df.cell == "quick"]
    assert set(q.claim) == {"fig2.test_loss", "fig4.cka_last"} and sorted(set(q.seed)) == [42, 43, 44, 45, 46]
    assert (q.runs_done == 10).all() and (q.runs_expected == 10).all() and (q["axes"] == "width=1024").all()
    w = df[df.cell == "wide"]
    assert (w.runs_done == 2).all() and (w.runs_expected == 12).all() and set(w.seed) == {42}
    # rerunning measures again and replaces the cells' rows rather than appending
    run_study(d, plan_study(d, [], str(res), budget_s=1e9), [], str(res), csv)
    assert len(read_margins(csv)) == len(df)


def _cell(name: str, seeds: int, per_run_s: float, done: int = 0) -> CellPlan:
    from revgn_cli.studies.scaling import Cell

    runs = [RunPlan(m, s, None, i < done, per_run_s) for m in ("gn", "adam") for i, s in enumerate(range(42, 52))]
    return CellPlan(Cell(name, (), seeds), seeds, None, False, 0.0, runs)


def test_the_budget_cuts_seeds_before_cells():
    cells = [_cell("a", 10, 60.0), _cell("b", 10, 60.0)]  # 2 × 20 runs × 1 min
    cut = fit_budget(cells, budget_s=25 * 60, min_seeds=5)  # b (last in the order) at 5: 10 min; a gets 7: 14 min
    assert [c.seeds for c in cells] == [7, 5] and cut == ["a: 10 → 7 seeds", "b: 10 → 5 seeds"]
    cells = [_cell("a", 10, 60.0), _cell("b", 10, 60.0)]
    cut = fit_budget(cells, budget_s=12 * 60, min_seeds=5)  # even 5 seeds each overruns: the last cell goes
    assert [c.cell.name for c in cells] == ["a"] and cells[0].seeds == 6
    assert cut == ["a: 10 → 6 seeds", "b: not run this time (~20 min)"]
    cells = [_cell("a", 10, 60.0, done=10)]  # finished runs cost nothing: nothing to cut
    assert fit_budget(cells, budget_s=1.0, min_seeds=5) == [] and cells[0].seeds == 10


def test_a_dropped_cell_gives_its_seeds_back_to_the_cells_kept():
    # a cheap first cell and a costly last one: the last cannot fit even at 5 seeds, so it goes and the first keeps
    # all its 10 seeds (it is not left at the 5 it would need were both kept)
    cells = [_cell("quick", 10, 60.0), _cell("corner", 5, 600.0)]
    cut = fit_budget(cells, budget_s=35 * 60, min_seeds=5)
    assert [(c.cell.name, c.seeds) for c in cells] == [("quick", 10)]
    assert cut == ["corner: not run this time (~100 min)"]
    # a finished cell at the end is kept (it costs nothing and its margins are still measured); the costly one goes
    cells = [_cell("quick", 10, 60.0), _cell("corner", 5, 600.0), _cell("done", 10, 60.0, done=10)]
    cut = fit_budget(cells, budget_s=35 * 60, min_seeds=5)
    assert [(c.cell.name, c.seeds) for c in cells] == [("quick", 10), ("done", 10)] and len(cut) == 1


def test_the_plan_counts_wall_time_with_runs_side_by_side():
    # the launcher's joblib hands out n_jobs runs at a time: a fifth run of a method goes alone
    assert runs_at_once([]) == 2  # the study's default launcher (default_launcher: n_jobs=2)
    assert runs_at_once(["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"]) == 4
    assert runs_at_once(["hydra/launcher=submitit_slurm"]) == 1  # parallelism unknown: counted one at a time
    assert runs_at_once(["hydra.launcher.n_jobs=1"]) == 1  # a setting given alone: the joblib launcher, 1 worker
    assert wall_s([60.0] * 5, 2) == 180.0 and wall_s([60.0, 30.0, 30.0], 2) == 90.0 and wall_s([], 2) == 0
    c = _cell("a", 5, 60.0)
    c.at_once = 2  # 5 GN + 5 Adam runs of 60 s, one launch per method: 3 batches each
    assert c.run_s == 600.0 and c.est_s == 360.0
    c.at_once = 1
    assert c.est_s == c.run_s == 600.0


def test_gn_s_batch_cubed_term_prices_its_gram_factorisation_apart_from_the_width():
    d = load_design()
    cfgs = {(m, h): sweep.expand([*d.base, f"optimizer={m}", f"model.hidden={h}", "regime.batch_size=1024"])[0].cfg
            for m in ("gn", "adam") for h in (1024, 8000)}
    cost = {**d.cost, "update_batch3_s": {"gn": 0.7, "adam": 0.0}}
    without = {k: v for k, v in d.cost.items() if k != "update_batch3_s"}  # a design without the term: none
    for h in (1024, 8000):
        extra = estimate_run_s(cfgs["gn", h], cost) - estimate_run_s(cfgs["gn", h], without)
        assert extra == pytest.approx(0.7 * updates_of(cfgs["gn", h]))  # the same at both widths: batch³ only
        assert estimate_run_s(cfgs["adam", h], cost) == estimate_run_s(cfgs["adam", h], without)


def test_the_per_update_metrics_are_priced_as_extra_passes_and_tuning_runs_skip_them():
    d = load_design()
    base = [*d.base, "optimizer=adam", "model.hidden=8000", "regime.batch_size=1024", "train.epochs=10"]
    on, off = (sweep.expand([*base, *ov])[0].cfg for ov in (
        [], ["metrics.loss_change=false", "metrics.step_size_ratio=false"]))
    per_epoch = updates_of(on) // 10  # 4 updates an epoch on mnist5k's 4,000 images
    passes = updates_of(on) + per_epoch * 1 + 9  # a loss change per update; step ratio: epoch 1 dense, then 1 each
    pass_s = d.cost["update_scaled_s"]["adam"] / 3  # batch 1024, h 8000: scale 1
    assert estimate_run_s(on, d.cost) - estimate_run_s(off, d.cost) == pytest.approx(passes * pass_s)


def test_direction_reads_the_slopes_interval_against_zero():
    assert direction(0.3, 0.1) == "toward" and direction(-0.3, 0.1) == "away"
    assert direction(0.05, 0.1) == direction(-0.05, 0.1) == "unclear"
    assert direction(0.1, 0.1) == "unclear"  # an interval that touches 0 does not exclude it
    assert direction(math.nan, math.nan) == direction(0.3, math.nan) == ""  # no slope: one axis value, mixed rates


def test_trend_matches_a_hand_computation():
    x = np.log2([1024, 1024, 2048, 2048, 4000, 4000])
    y = np.array([0.10, 0.14, 0.05, 0.09, -0.02, 0.03])
    t = trend(x, y)
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    slope = ((x - xm) * (y - ym)).sum() / sxx
    resid = y - (ym + slope * (x - xm))
    se = math.sqrt((resid ** 2).sum() / (len(x) - 2) / sxx)
    assert t.slope == pytest.approx(slope, rel=1e-12) and t.intercept == pytest.approx(ym - slope * xm)
    assert t.half == pytest.approx(st.t.ppf(0.975, 4) * se, rel=1e-12) and t.n == 6
    # non-finite pairs are left out; one x value has no slope
    assert trend([0, 1, 2, 3], [0.0, 1.0, 2.0, math.inf]).n == 3
    assert math.isnan(trend([1, 1, 1], [0.0, 1.0, 2.0]).slope)


def _csv_rows() -> pd.DataFrame:
    rng = np.random.RandomState(0)
    rows = []
    cells = {"quick": ("", 1024), "paper": ("width=8000 train_images=4000", None),
             "paper_h1024": ("width=1024", None), "paper_n1024": ("train_images=1024", None)}
    shift = {"quick": 0.0, "paper": 0.3, "paper_h1024": 0.1, "paper_n1024": -0.3}
    for cell, (axes, _) in cells.items():
        for claim, sesoi in (("fig2.test_loss", 0.01), ("fig4.cka_last", 0.01)):
            for s in range(42, 47):
                rows.append({"cell": cell, "axes": axes, "claim": claim, "seed": s,
                             "margin": shift[cell] + 0.001 * rng.randn(), "sesoi": sesoi, "rates": "tuned",
                             "lr": "gn=0.1 adam=0.0001", "runs_done": 10, "runs_expected": 10, "cell_wall_s": 600.0,
                             "hidden": 8000, "batch": 1024, "epochs": 100, "updates": 400, "train_images": 4000})
    return pd.DataFrame(rows, columns=list(MARGIN_COLUMNS))


def test_report_redraws_table_and_figure_from_the_csv_alone(tmp_path):
    csv = tmp_path / "m.csv"
    df = _csv_rows()
    df.to_csv(csv, index=False)
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- scaling:begin -->\nold\n<!-- scaling:end -->\nafter\n")
    r = runner.invoke(app, ["study", "report", "scaling", "--from", str(csv), "--out", str(tmp_path / "img"),
                            "--doc", str(doc)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "img" / "scaling.png").stat().st_size > 0
    text = doc.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    v = cell_verdicts(read_margins(csv)).set_index(["cell", "claim"])
    assert v.loc[("paper", "fig2.test_loss"), "verdict"] == "HOLDS"
    assert v.loc[("paper_n1024", "fig2.test_loss"), "verdict"] == "REVERSED"
    assert v.loc[("quick", "fig2.test_loss"), "verdict"] == "NEGLIGIBLE"
    m = df[(df.cell == "paper") & (df.claim == "fig2.test_loss")].margin
    assert v.loc[("paper", "fig2.test_loss"), "mean"] == pytest.approx(judge(m, 0.01).mean)
    # the trend per axis: the per-seed margins of its cells on log2(value), as computed by hand
    t = axis_trends(read_margins(csv)).set_index(["axis", "claim"])
    sel = df[df.claim == "fig2.test_loss"]
    x = np.r_[np.full(5, math.log2(4000)), np.full(5, math.log2(1024))]
    y = np.r_[sel[sel.cell == "paper"].margin, sel[sel.cell == "paper_n1024"].margin]
    assert t.loc[("train_images", "fig2.test_loss"), "slope"] == pytest.approx(trend(x, y).slope)
    assert f"{trend(x, y).slope:+.3g}" in text and "**HOLDS**" in text
    # REVERSED at 1,024 images and HOLDS at 4,000: the margin moves toward the paper's side as the data grows
    t_row = next(ln for ln in text.splitlines() if ln.startswith("| fig2.test_loss |") and "(n=10)" in ln)
    assert t.loc[("train_images", "fig2.test_loss"), "slope"] > 0 and "(n=10) *toward*" in t_row
    assert "| rates | gn=0.1 adam=0.0001 (tuned) |" in text
    # an axis whose cells were tuned under different protocols has no slope (the rates moved with it)
    mixed = df.assign(rates=np.where(df.cell == "paper_n1024", "tuned+extend", "tuned"))
    t = axis_trends(mixed).set_index(["axis", "claim"])
    assert t.loc[("train_images", "fig2.test_loss"), "mixed"]
    assert math.isnan(t.loc[("train_images", "fig2.test_loss"), "slope"])
    assert not t.loc[("width", "fig2.test_loss"), "mixed"] and math.isfinite(t.loc[("width", "fig2.test_loss"),
                                                                                  "slope"])
    mixed.to_csv(csv, index=False)
    r = runner.invoke(app, ["study", "report", "scaling", "--from", str(csv), "--out", str(tmp_path / "img"),
                            "--doc", str(doc)])
    assert r.exit_code == 0, r.output
    assert "— (mixed rate protocols)" in doc.read_text() and "(tuned+extend)" in doc.read_text()
    # a file that is not a margins CSV: one line, exit 2
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    r = runner.invoke(app, ["study", "report", "scaling", "--from", str(tmp_path / "bad.csv"), "--out",
                            str(tmp_path / "img")])
    assert r.exit_code == 2 and "not a scale-study margins file" in r.output


def test_plan_prints_cells_runs_and_estimate(tmp_path):
    r = runner.invoke(app, ["study", "run", "scaling", "--plan", "--budget", "1000h", "--results",
                            str(tmp_path / "res"), "--margins", str(tmp_path / "m.csv")])
    assert r.exit_code == 0, r.output
    assert "paper_n1024" in r.output and "total ~" in r.output and not (tmp_path / "m.csv").exists()
    r = runner.invoke(app, ["study", "run", "scaling", "--plan", "--budget", "soon"])
    assert r.exit_code == 2 and "--budget" in r.output
    r = runner.invoke(app, ["study", "run", "scaling", "--plan", "--only", "paper_n2048", "--results",
                            str(tmp_path / "res"), "--margins", str(tmp_path / "m.csv")])
    assert r.exit_code == 0, r.output
    assert "paper_n2048" in r.output and "quick" in r.output and "not in --only" in r.output
    r = runner.invoke(app, ["study", "run", "gn_family", "--only", "x"])
    assert r.exit_code == 2 and "--only" in r.output


class FakeTuner:
    """Stands in for revgn_cli.tune: no record until run() is called, then fixed rates per cell."""

    def __init__(self):
        self.tuned: dict[str, dict[str, float]] = {}

    def rates(self, cell):
        return self.tuned.get(cell.name)

    def run(self, cell):
        self.tuned[cell.name] = {"gn": 0.3, "adam": 3e-5}
        return self.tuned[cell.name]

    def pending(self, cell):
        return None  # unknown: the plan counts the whole grid


def test_tuned_rates_are_tuned_once_then_trained_and_recorded(tmp_path, monkeypatch):
    res, csv = tmp_path / "results", tmp_path / "margins.csv"
    (tmp_path / "d.yaml").write_text(DESIGN.replace("rates: paper", "rates: tuned\ntune: {grid: {gn: [0.1, 0.3], "
                                                    "adam: [3.0e-5, 1.0e-4]}, seeds: [42], val_size: 1000}"))
    d = load_design(tmp_path / "d.yaml")
    tuner = FakeTuner()
    plan = plan_study(d, [], str(res), budget_s=1e9, tuner=tuner)
    assert all(c.tuned and c.tune_s > 0 for c in plan.cells)  # not tuned yet: tuning is planned and costed
    launched = []
    monkeypatch.setattr(sweep, "launch", lambda ov, force=False, quiet=False, jobs=None: launched.append(ov) or [])
    run_study(d, plan, [], str(res), csv, tuner=tuner)
    assert set(tuner.tuned) == {"quick", "wide"}
    lrs = {o for ov in launched for o in ov if o.startswith("optimizer.lr=")}
    assert lrs == {"optimizer.lr=0.3", "optimizer.lr=3e-05"}
    df = read_margins(csv)
    assert set(df["lr"]) == {"gn=0.3 adam=3e-05"} and set(df["rates"]) == {"tuned"}
    # a second plan finds the records: no tuning planned
    assert not any(c.tuned for c in plan_study(d, [], str(res), budget_s=1e9, tuner=tuner).cells)


def test_a_tune_record_whose_choice_sits_on_an_edge_is_tuned_again_for_the_rate_out(tmp_path):
    """A record made before the design's `extend` (GN chose its top rate 1.0, never checked against 3.0) does not count
    as tuned; once 3.0 is in the record and lost, it does, at the recorded choice."""
    from revgn_cli.studies.scaling import RevgnTuner
    from revgn_cli.tune import OptimizerTune, TuneRecord, save_record, setting_key

    d = load_design()
    cell, tuner = d.cells["paper"], RevgnTuner(d, str(tmp_path))
    key = setting_key(d.tune_overrides(cell))
    gn = {0.1: {42: 0.6, 43: 0.6}, 0.3: {42: 0.5, 43: 0.5}, 1.0: {42: 0.4, 43: 0.4}}
    adam = {3e-5: {42: 0.5, 43: 0.5}, 1e-4: {42: 0.3, 43: 0.3}, 3e-4: {42: 0.4, 43: 0.4}, 1e-3: {42: 0.6, 43: 0.6}}

    def record(gn_losses):
        save_record(tmp_path, TuneRecord(d.experiment, key, {
            "gn": OptimizerTune(1.0, sorted(gn_losses), [42, 43], 1000, gn_losses),
            "adam": OptimizerTune(1e-4, sorted(adam), [42, 43], 1000, adam)}))

    assert tuner.rates(cell) is None  # no record at all
    record(gn)
    assert tuner.rates(cell) is None  # GN's choice on the grid's top edge, 3.0 not tried yet
    record({**gn, 3.0: {42: 0.45, 43: math.inf}})
    assert tuner.rates(cell) == {"gn": 1.0, "adam": 1e-4}


def test_the_archive_carries_the_tune_record_so_a_fresh_machine_plans_no_tuning(tmp_path):
    """The tuner's record travels with the runs: archived after a cell, restored on a fresh machine before the plan,
    which then counts the cell as tuned (no tuning time in the estimate). A restore never overwrites the entries a
    results dir holds; archiving replaces the archive's entries that differ."""
    from revgn_cli.results.archive import keeper
    from revgn_cli.studies.scaling import RevgnTuner
    from revgn_cli.tune import OptimizerTune, TuneRecord, copy_records, load_record, save_record, setting_key

    d = load_design()
    cell, key = d.cells["paper"], setting_key(d.tune_overrides(d.cells["paper"]))
    gn = {1.0: {42: 0.4, 43: 0.4}, 3.0: {42: 0.3, 43: 0.3}, 10.0: {42: 0.5, 43: 0.5}}
    adam = {1e-5: {42: 0.5, 43: 0.5}, 3e-5: {42: 0.3, 43: 0.3}, 1e-4: {42: 0.4, 43: 0.4}}

    def record(res, gn_rate):
        save_record(res, TuneRecord(d.experiment, key, {"gn": OptimizerTune(gn_rate, sorted(gn), [42, 43], 1000, gn),
                                                        "adam": OptimizerTune(3e-5, sorted(adam), [42, 43], 1000, adam)}))

    res, arc, fresh = tmp_path / "results", tmp_path / "arc", tmp_path / "fresh"
    record(res, 3.0)
    logs: list[str] = []
    keeper(arc, res, d.base, logs.append)()
    assert logs == [f"  0 finished run(s), 2 tune record entries → {arc}"]
    assert (arc / "tune" / f"{d.experiment}.json").exists()

    assert RevgnTuner(d, str(fresh)).rates(cell) is None
    before = plan_study(d, [], str(fresh), budget_s=1e9, tuner=RevgnTuner(d, str(fresh)), only=["paper"]).cells[0]
    assert before.tuned and before.tune_s > 0
    logs.clear()
    keeper(arc, fresh, d.base, logs.append)
    assert logs == [f"restored 0 finished run(s) and 2 tune record entries from {arc}"]
    assert RevgnTuner(d, str(fresh)).rates(cell) == {"gn": 3.0, "adam": 3e-5}
    after = plan_study(d, [], str(fresh), budget_s=1e9, tuner=RevgnTuner(d, str(fresh)), only=["paper"]).cells[0]
    assert not after.tuned and after.tune_s == 0 and after.est_s < before.est_s

    record(fresh, 1.0)  # this machine's own entry differs: a restore leaves it, archiving replaces the archive's
    assert copy_records(arc, fresh, d.experiment, replace=False) == 0
    assert load_record(fresh, d.experiment, d.tune_overrides(cell)).rates()["gn"] == 1.0
    assert copy_records(fresh, arc, d.experiment, replace=True) == 1  # gn only: adam's entry is the same
    assert load_record(arc, d.experiment, d.tune_overrides(cell)).rates() == {"gn": 1.0, "adam": 3e-5}


def test_cells_recorded_whole_in_the_csv_are_not_planned_again_on_a_fresh_machine(tmp_path, monkeypatch):
    """The committed CSV is what survives a session: a cell it records finished (every run, ≥ min_seeds, the
    design's rate protocol) is left out of the plan even with an empty results dir; a partial cell is not; --redo
    brings a recorded one back, and the recorded rows are never overwritten by a run that skipped the cell."""
    res, csv = tmp_path / "results", tmp_path / "margins.csv"
    (tmp_path / "d.yaml").write_text(DESIGN)
    d = load_design(tmp_path / "d.yaml")
    write_preset(res, "scaling_quick", overrides=("seed=42,43,44,45,46",))  # quick: all 10 runs
    write_preset(res, "scaling_quick", overrides=("seed=42", "model.hidden=2048"))  # wide: 2 of 12
    monkeypatch.setattr(sweep, "launch", lambda ov, force=False, quiet=False, jobs=None: [])
    run_study(d, plan_study(d, [], str(res), budget_s=1e9), [], str(res), csv)
    before = read_margins(csv)

    fresh = tmp_path / "fresh"  # another machine: no runs at all, only the committed CSV
    plan = plan_study(d, [], str(fresh), budget_s=1e9, margins=csv)
    assert list(plan.recorded) == ["quick"] and [c.cell.name for c in plan.cells] == ["wide"]
    assert "5 seeds" in plan.recorded["quick"]
    assert any("quick" in ln and "recorded" in ln for ln in describe_plan(plan))
    run_study(d, plan, [], str(fresh), csv)
    after = read_margins(csv)
    pd.testing.assert_frame_equal(after[after.cell == "quick"].reset_index(drop=True),
                                  before[before.cell == "quick"].reset_index(drop=True))
    assert [c.cell.name for c in plan_study(d, [], str(fresh), budget_s=1e9, margins=csv, redo=["quick"]).cells] \
        == ["quick", "wide"]
    with pytest.raises(ConfigError, match="no such cell"):
        plan_study(d, [], str(fresh), budget_s=1e9, margins=csv, redo=["nope"])
    # --only: one cell this sitting, the others wait (a recorded one stays recorded)
    plan = plan_study(d, [], str(fresh), budget_s=1e9, margins=csv, redo=["quick"], only=["wide"])
    assert [c.cell.name for c in plan.cells] == ["wide"] and plan.waiting == ["quick"]
    assert any("quick" in ln and "not in --only" in ln for ln in describe_plan(plan))
    assert plan_study(d, [], str(fresh), budget_s=1e9, margins=csv, only=["quick"]).cells == []
    with pytest.raises(ConfigError, match="--only nope: no such cell"):
        plan_study(d, [], str(fresh), budget_s=1e9, margins=csv, only=["nope"])
    # recorded under another rate protocol: not this design's result, so planned again
    (tmp_path / "t.yaml").write_text(DESIGN.replace("rates: paper", "rates: tuned\ntune: {grid: {gn: [0.1], "
                                                    "adam: [1.0e-4]}, seeds: [42], val_size: 1000}"))
    assert plan_study(load_design(tmp_path / "t.yaml"), [], str(fresh), budget_s=1e9, margins=csv,
                      tuner=FakeTuner()).recorded == {}
    # tuned on the grid only vs tuned with the rates out of it (tune.extend): two protocols, never mixed
    grid_only = load_design(tmp_path / "t.yaml")
    (tmp_path / "x.yaml").write_text(DESIGN.replace("rates: paper", "rates: tuned\ntune: {grid: {gn: [0.1], "
                                                    "adam: [1.0e-4]}, extend: {gn: [0.3]}, seeds: [42], "
                                                    "val_size: 1000}"))
    extended = load_design(tmp_path / "x.yaml")
    assert (grid_only.protocol, extended.protocol, d.protocol) == ("tuned", "tuned+extend", "paper")
    df = read_margins(csv)
    for design, label in ((grid_only, "tuned+extend"), (extended, "tuned")):
        df.assign(rates=label).to_csv(csv, index=False)
        assert plan_study(design, [], str(fresh), budget_s=1e9, margins=csv, tuner=FakeTuner()).recorded == {}
    df.assign(rates="tuned+extend").to_csv(csv, index=False)
    assert list(plan_study(extended, [], str(fresh), budget_s=1e9, margins=csv, tuner=FakeTuner()).recorded) \
        == ["quick"]


def test_every_cells_tuning_overrides_compose_on_the_real_preset():
    """The tuner composes the cell's preset with its tuning overrides: every declared grid must be accepted even
    where the preset declares no tune grid of its own (``tune.grid`` is a struct dict)."""
    from revgn_cli.config import compose_config

    d = load_design()
    for name, cell in d.cells.items():
        cfg = compose_config([*d.base, *d.tune_overrides(cell)])
        assert {m: list(cfg.tune.grid[m]) for m in d.methods} == {m: [float(v) for v in d.tune["grid"][m]]
                                                                  for m in d.methods}, name
        assert {m: list(cfg.tune.extend[m]) for m in d.methods} == {m: d.extend(m) for m in d.methods}, name


def test_report_of_the_quick_corner_alone_gives_its_table_and_no_figure(tmp_path):
    """The first cell to finish is the quick corner, which stands on no axis: its table is reported, the figure
    (trends along axes) waits for a cell on an axis instead of failing."""
    from revgn_cli.studies.scaling_report import report

    rows = [{"cell": "quick", "axes": "", "claim": "fig2.test_loss", "seed": s, "margin": 0.01 * (s - 40),
             "sesoi": 0.01, "rates": "tuned", "lr": "gn=1 adam=0.0003", "runs_done": 10, "runs_expected": 10,
             "cell_wall_s": 300.0, "hidden": 1024, "batch": 256, "epochs": 12, "updates": 192, "train_images": 4000}
            for s in range(42, 47)]
    csv = tmp_path / "m.csv"
    pd.DataFrame(rows, columns=list(MARGIN_COLUMNS)).to_csv(csv, index=False)
    table, paths = report(csv, tmp_path / "img")
    assert paths == [] and "quick" in table and "fig2.test_loss" in table


def test_the_archive_carries_an_interrupted_cells_finished_runs_to_a_fresh_machine(tmp_path, monkeypatch):
    """A sitting stopped mid-cell keeps the runs it finished in the archive (``keep`` runs even when the launch is
    interrupted); a fresh machine restores them before planning, so the plan counts them as done."""
    from revgn_cli.results.archive import keeper, study_experiments
    from revgn_cli.train.loop import Interrupted

    res, arc, csv = tmp_path / "results", tmp_path / "arc", tmp_path / "margins.csv"
    (tmp_path / "d.yaml").write_text(DESIGN.replace("order: [quick, wide]", "order: [wide, quick]"))
    d = load_design(tmp_path / "d.yaml")
    assert study_experiments(d.base) == {"scaling", "scaling_tune"}

    def stopped(ov, force=False, quiet=False, jobs=None):  # trains seed 42 of the method, then is stopped
        write_preset(res, "scaling_quick", overrides=("seed=42", "model.hidden=2048",
                                                      next(o for o in ov if o.startswith("optimizer="))))
        raise Interrupted("stopped by signal 15")

    monkeypatch.setattr(sweep, "launch", stopped)
    keep = keeper(arc, res, d.base)
    with pytest.raises(Interrupted):
        run_study(d, plan_study(d, [], str(res), budget_s=1e9), [], str(res), csv, keep=keep)
    assert len(list((arc / "scaling").iterdir())) == 1  # gn's seed 42: adam never started

    fresh, logs = tmp_path / "fresh", []
    keeper(arc, fresh, d.base, logs.append)
    assert logs == [f"restored 1 finished run(s) from {arc}"]
    todo = {c.cell.name: len(c.todo()) for c in plan_study(d, [], str(fresh), budget_s=1e9).cells}
    assert todo == {"wide": 11, "quick": 10}


def test_each_methods_launch_is_archived_before_the_next_method_trains(tmp_path, monkeypatch):
    """The archive is written after every launch, not once per cell: GN's finished runs are in it while Adam's
    launch is still going (a machine lost then keeps GN's hour of runs)."""
    from revgn_cli.results.archive import keeper

    res, arc, csv = tmp_path / "results", tmp_path / "arc", tmp_path / "margins.csv"
    (tmp_path / "d.yaml").write_text(DESIGN)
    d = load_design(tmp_path / "d.yaml")
    archived_at_launch = []

    def launch(ov, force=False, quiet=False, jobs=None):
        opt = next(o for o in ov if o.startswith("optimizer="))
        archived_at_launch.append((opt, len(list((arc / "scaling").glob("*"))) if (arc / "scaling").exists() else 0))
        write_preset(res, "scaling_quick", overrides=("seed=42", "model.hidden=2048", opt))
        return []

    monkeypatch.setattr(sweep, "launch", launch)
    plan = plan_study(d, [], str(res), budget_s=1e9, only=["wide"])
    run_study(d, plan, [], str(res), csv, keep=keeper(arc, res, d.base))
    assert archived_at_launch == [("optimizer=gn", 0), ("optimizer=adam", 1)]


def test_a_redone_cell_keeps_its_place_in_the_margins_file(tmp_path):
    """Rewriting a cell's rows puts them where the old ones stood (a new cell goes last), so the table's and the
    figure's column order does not change when a cell is redone."""
    from revgn_cli.results.store import replace_csv_groups

    path = tmp_path / "m.csv"
    frame = lambda cells, v: pd.DataFrame({"cell": [c for c in cells for _ in (0, 1)], "seed": [42, 43] * len(cells),
                                           "margin": [v] * 2 * len(cells)})
    replace_csv_groups(path, frame(["quick", "paper", "paper_e12"], 1.0), "cell")
    df = replace_csv_groups(path, frame(["paper"], 2.0), "cell")
    assert list(dict.fromkeys(df["cell"])) == ["quick", "paper", "paper_e12"]
    assert list(df.loc[df["cell"] == "paper", "margin"]) == [2.0, 2.0] and len(df) == 6
    df = replace_csv_groups(path, frame(["paper_n1024", "quick"], 3.0), "cell")
    assert list(dict.fromkeys(pd.read_csv(path)["cell"])) == ["quick", "paper", "paper_e12", "paper_n1024"]
    assert list(df["margin"]) == [3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 3.0, 3.0]


def test_the_plan_prices_only_the_tuning_runs_left_and_an_edge_check_once_the_grid_is_in(tmp_path):
    """The tuning estimate counts the tuner's unfinished runs (revgn_cli.tune.pending_runs): a half-tuned cell costs
    less than a fresh one, and a grid that finished with its choice on an edge is followed by the next rate out."""
    from revgn_cli.studies.scaling import RevgnTuner
    from revgn_cli.train.runner import run_dir_for
    from revgn_cli.tune import pending_runs

    d = load_design()
    cell, res = d.cells["paper"], tmp_path / "res"
    tuner = RevgnTuner(d, str(res))

    def finish(cfgs, loss_of_lr):
        for c in cfgs:
            run = run_dir_for(c)
            run.path.mkdir(parents=True, exist_ok=True)
            run.write_rows([{"run_id": run.run_id, "split": "epoch", "epoch": 1.0, "step": 1,
                             "val_loss": loss_of_lr(float(c.optimizer.lr))}])
            run.write_meta(status="done", run_id=run.run_id, seed=c.seed, wall_s=1.0)

    def tune_s():
        return plan_study(d, [], str(res), budget_s=1e9, tuner=tuner, only=["paper"]).cells[0].tune_s

    fresh = pending_runs(d.experiment, d.tune_overrides(cell), str(res))
    assert {m: len(c) for m, c in fresh.items()} == {"gn": 6, "adam": 8}  # grid × 2 tuning seeds
    assert all(c.train.epochs == 100 and c.model.hidden == 8000 for c in fresh["gn"])
    whole = tune_s()
    finish(fresh["adam"][:4], lambda lr: 1.0)
    assert len(tuner.pending(cell)["adam"]) == 4 and tune_s() < whole
    finish(fresh["gn"], lambda lr: 1.0 - lr / 10)  # GN's best rate is its grid's top, 1.0: 3.0 is checked next
    left = tuner.pending(cell)
    assert sorted({float(c.optimizer.lr) for c in left["gn"]}) == [3.0] and len(left["gn"]) == 2
    finish(left["gn"], lambda lr: 5.0)  # 3.0 lost: GN is bracketed, nothing left for it
    assert tuner.pending(cell)["gn"] == []
