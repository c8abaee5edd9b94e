"""The gn_family study: its presets' grid, and its figure and table drawn from a synthetic results dir."""
from __future__ import annotations

import json
import math

import pandas as pd

import pytest
import yaml
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.config import ConfigError, config_dict, run_id
from revgn_cli.figures.catalog import render
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
    methods = sorted({(c.optimizer.name, c.optimizer.loss_hessian if c.optimizer.name == "ggn_cg" else None)
                      for c in cfgs}, key=str)
    assert methods == sorted([("adam", None), ("ggn_cg", "identity"), ("ggn_cg", "exact"), ("gn", None),
                              ("kfac", None), ("sgd", None)], key=str)
    assert len(cfgs) == 6 * 5 and {c.seed for c in cfgs} == {42, 43, 44, 45, 46}
    assert {c.train.epochs for c in cfgs} == {12} and {c.optimizer.kfac_step for c in cfgs} == {"momentum"}
    assert {(c.optimizer.cg_tol, c.optimizer.cg_iters) for c in cfgs} == {(1e-3, 500)}
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
        acc = FINAL_ACC[o] + (0.02 if o == "ggn_cg" and cfg.optimizer.loss_hessian == "exact" else 0.0) + (cfg.seed - 44) * 0.01
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
    want = ["GN", "Adam", "SGD", "GGN-CG λ=0.1", "GGN-CG exact H λ=0.1", "K-FAC λ=0.1"]
    for ax in axes:
        assert list({ln.get_label(): ln for ln in visible_lines(ax)}) == want
    acc = {ln.get_label(): ln for ln in visible_lines(axes[2])}
    assert acc["Adam"].get_ydata()[-1] == pytest.approx(90.0)  # mean over seeds, in %
    assert acc["GGN-CG exact H λ=0.1"].get_ydata()[-1] == pytest.approx(84.0)
    assert "logit kernel" in axes[3].get_title() and "last block (2)" in axes[4].get_title()


def test_table_places_each_method_between_gn_and_adam(synth):
    from revgn_cli.figures.data import load_figure_runs

    df, _ = load_figure_runs("gn_family", "quick", QUICK, synth)
    t = summary("gn_family", df).set_index("method")
    assert list(t.index) == ["GN", "Adam", "SGD", "GGN-CG λ=0.1", "GGN-CG exact H λ=0.1", "K-FAC λ=0.1"]
    assert t.loc["Adam", "test_acc"] == "0.9000 ± 0.0158" and (t["seeds"] == 5).all()
    pos = t["test_acc GN→Adam"]
    assert pos["GN"] == 0 and pos["Adam"] == 1 and pos["K-FAC λ=0.1"] == pytest.approx(0.5)
    assert pos["GGN-CG exact H λ=0.1"] == pytest.approx(0.4)
    assert (t["wall_s/run"] == 10.0).all()


def test_plot_draws_the_presets_runs_without_training(synth, tmp_path):
    out = CliRunner().invoke(app, ["--quiet", "plot", "gn_family", "--results", str(synth), "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "gn_family.png").exists()
    metas = [json.loads(p.read_text()) for p in synth.rglob("meta.json")]
    assert all(m["status"] == "done" and m["wall_s"] == 10.0 for m in metas)  # nothing retrained
    assert len(metas) == 30


# --- the tuned study (revgn_cli/studies/gn_family.py) ---------------------------------------------------------------

from revgn_cli.studies import gn_family as gf  # noqa: E402


def test_design_declares_every_method_and_its_runs_compose():
    d = gf.load_design("quick")
    assert list(d.methods) == ["GN sum", "GN mean", "GGN-CG", "GGN-CG exact H", "K-FAC", "Adam", "SGD"]
    assert len(d.seeds) >= 5 and all(3 <= len(m.lr) <= 5 or m.damping for m in d.methods.values())
    assert {m.optimizer for m in d.methods.values() if m.damping} == {"ggn_cg", "kfac"}
    assert {c.at for c in d.claims} == {"final", "matched"} and all(c.sesoi > 0 for c in d.claims)
    ids = set()
    for lab, m in d.methods.items():
        s = gf.Setting(m.lr[0], m.damping[0] if m.damping else None)
        cfgs = [j.cfg for j in expand(gf.run_overrides(d, m, s))]
        assert sorted(c.seed for c in cfgs) == list(d.seeds) and {c.train.epochs for c in cfgs} == {12}
        assert {c.optimizer.lr for c in cfgs} == {m.lr[0]} and {c.optimizer.name for c in cfgs} == {m.optimizer}
        ids |= {run_id(c) for c in cfgs}
    assert len(ids) == len(d.methods) * len(d.seeds)  # GN sum/mean and both GGN-CG Hessians are distinct runs
    ov = gf.tune_overrides(d, d.methods["K-FAC"], 0.1)
    assert "optimizer.damping=0.1" in ov and "++tune.grid.kfac=[0.3,1]" in ov and "tune.val_size=1000" in ov and "metrics.every=0" in ov


def _fake_tuner(val):
    """run_tune/tuned_rates over a table {(optimizer, damping or None, lr): [val_loss per seed]}."""
    def lam_of(ov):
        return next((float(o.split("=")[1]) for o in ov if o.startswith("optimizer.damping=")), None)

    def opt_of(ov):
        return next(o.split("=")[1] for o in ov if o.startswith("optimizer="))

    def entry(ov):  # the real record type, so the study reads what revgn_cli.tune.run_tune returns
        from revgn_cli.tune import OptimizerTune, TuneRecord

        o, lam = opt_of(ov), lam_of(ov)
        per = {lr: {42 + i: v for i, v in enumerate(vs)} for (oo, ll, lr), vs in val.items() if (oo, ll) == (o, lam)}
        means = {lr: (sum(v.values()) / len(v)) for lr, v in per.items()}
        run_s = 2.0 * sum(len(v) for v in per.values())  # each tune run "took" 2 s
        return TuneRecord("x", "", {o: OptimizerTune(min(means, key=means.get), sorted(per), [42, 43], 200, per,
                                                     run_s)})

    calls = []

    def run_tune(exp, ov, res):
        calls.append(list(ov))
        return entry(ov)

    def tuned_rates(res, exp, ov=()):
        return entry(ov).rates()

    return gf.TuneCalls(run_tune, tuned_rates), calls


def _small_design(tmp_path):
    import yaml as _y

    d = {"base": ["experiment=gn_family_quick", "dataset=digits", "model=tiny", "train.epochs=2"],
         "seeds": [42, 43, 44], "tune": {"seeds": [42, 43], "val_size": 200},
         "methods": {"GN sum": {"overrides": ["optimizer=gn"], "lr": [0.1, 0.3]},
                     "K-FAC": {"overrides": ["optimizer=kfac"], "lr": [0.3, 1.0], "damping": [0.01, 0.1]}},
         "claims": [{"id": "m", "a": "GN sum", "b": "K-FAC", "metric": "test_loss", "at": "matched", "sesoi": 0.02},
                    {"id": "f", "a": "GN sum", "b": "K-FAC", "metric": "test_loss", "at": "final", "sesoi": 0.02}]}
    path = tmp_path / "design.yaml"
    path.write_text(_y.safe_dump(d, sort_keys=False))
    return gf.load_design(path=path)


def test_tuning_picks_each_methods_lambda_by_its_lowest_validation_loss(tmp_path):
    d = _small_design(tmp_path)
    calls, seen = _fake_tuner({("gn", None, 0.1): [0.5, 0.6], ("gn", None, 0.3): [0.4, 0.45],
                               ("kfac", 0.01, 0.3): [0.35, 0.35], ("kfac", 0.01, 1.0): [0.2, float("inf")],
                               ("kfac", 0.1, 0.3): [0.33, 0.31], ("kfac", 0.1, 1.0): [0.6, 0.7]})
    st = gf.tune(d, tmp_path, calls)
    assert st["GN sum"] == gf.Setting(0.3, None, pytest.approx(0.425))
    # λ 0.01: its tuned rate is 0.3 (lr 1 diverged on a seed: +∞), val 0.35; λ 0.1 at lr 0.3 has 0.32: chosen.
    assert st["K-FAC"] == gf.Setting(0.3, 0.1, pytest.approx(0.32))
    assert len(seen) == 3 and all(any(o.startswith("++tune.grid.") for o in ov) for ov in seen)


def test_test_loss_at_matched_train_loss_is_interpolated_between_epoch_rows():
    ep = pd.DataFrame({"epoch": [0.0, 1, 2, 3], "train_loss": [2.0, 1.0, 0.6, 0.5], "test_loss": [2.1, 1.3, 1.1, 1.2]})
    assert gf.at_train_loss(ep, 0.8) == pytest.approx(1.3 + 0.5 * (1.1 - 1.3))
    assert gf.at_train_loss(ep, 1.0) == pytest.approx(1.3) and gf.at_train_loss(ep, 3.0) == pytest.approx(2.1)
    assert math.isnan(gf.at_train_loss(ep, 0.1))


def _runs(spec):
    """Rows of synthetic runs: {(method, seed): (train losses, test losses, status)} per epoch 0..E."""
    rows = []
    for (m, seed), (tr, te, status) in spec.items():
        rid = f"{m}-{seed}"
        for e, (a, b) in enumerate(zip(tr, te)):
            rows.append({"run_id": rid, "method": m, "seed": seed, "split": "epoch", "epoch": float(e), "step": e,
                         "train_loss": a, "test_loss": b, "test_acc": 1 - b / 3, "status": status,
                         "optimizer.lr": 0.1, "optimizer.damping": 0.1, "experiment": "x"})
        rows.append({"run_id": rid, "method": m, "seed": seed, "split": "step", "epoch": 0.5, "step": 1,
                     "step_size_ratio": 0.2 if m == "A" else 1.0, "status": status, "optimizer.lr": 0.1,
                     "optimizer.damping": 0.1, "experiment": "x"})
    return pd.DataFrame(rows)


def test_claims_are_judged_per_seed_at_matched_train_loss_and_at_the_final_epoch():
    # A trains slower (final train loss 0.8) than B (0.4); at B's train loss 0.8 (epoch 1) B's test loss is 1.0 + δ_s,
    # A's 1.2: d_s = 0.2 − δ_s at matched loss. At the final epoch A's test loss 1.2 vs B's 0.9 + δ_s.
    spec, deltas = {}, {42: 0.0, 43: 0.01, 44: -0.01, 45: 0.02, 46: 0.0}
    for s, dl in deltas.items():
        spec[("A", s)] = ([2.0, 1.2, 0.8], [2.0, 1.5, 1.2], "done")
        spec[("B", s)] = ([2.0, 0.8, 0.4], [2.0, 1.0 + dl, 0.9 + dl], "done")
    spec[("B", 46)] = ([2.0, float("inf")], [2.0, float("inf")], "diverged")
    runs = _runs(spec)
    claims = (gf.Claim("m", "A", "B", "test_loss", "matched", 0.02), gf.Claim("f", "A", "B", "test_loss", "final", 0.02),
              gf.Claim("n", "A", "A", "test_loss", "final", 0.05))
    m = gf.claim_diffs(runs, claims[0])
    assert {k: round(v, 12) for k, v in m.items() if k != 46} == {s: round(0.2 - dl, 12) for s, dl in deltas.items()
                                                                   if s != 46} and math.isnan(m[46])
    f = gf.claim_diffs(runs, claims[1])
    assert f[42] == pytest.approx(0.3) and math.isnan(f[46])  # A finite − B diverged (+∞) is not evidence
    t = gf.verdict_table(runs, claims).set_index("claim")
    assert list(t["verdict"]) == ["HOLDS", "HOLDS", "NEGLIGIBLE"]
    assert t.loc["m", "n"] == 4 and t.loc["m", "n_nonfinite"] == 1
    assert t.loc["m", "mean"] == pytest.approx(0.2 - sum(v for k, v in deltas.items() if k != 46) / 4)
    per = gf.per_seed_table(runs).set_index(["method", "seed"])
    assert per.loc[("B", 46), "diverged"] and math.isinf(per.loc[("B", 46), "final_test_loss"])
    assert per.loc[("A", 42), "final_train_loss"] == 0.8 and per.loc[("A", 42), "step_size_ratio_epoch1"] == 0.2


TUNED = {("gn", None, 0.1): [0.5, 0.5], ("gn", None, 0.3): [0.4, 0.4],
         ("kfac", 0.01, 0.3): [0.3, 0.3], ("kfac", 0.01, 1.0): [0.9, 0.9],
         ("kfac", 0.1, 0.3): [0.5, 0.5], ("kfac", 0.1, 1.0): [0.6, 0.6]}


def _fake_launch(res, launched, seeds=None):
    """A stand-in for the sweep that "trains" by writing finished synthetic runs (only ``seeds`` when given)."""
    def launch(ov, force=False, quiet=False):
        launched.append(list(ov))
        jobs = [j for j in expand(ov) if seeds is None or j.cfg.seed in seeds]
        for j in jobs:
            cfg, o = j.cfg, j.cfg.optimizer.name
            run = RunDir(res / cfg.exp_name / run_id(cfg))
            run.path.mkdir(parents=True, exist_ok=True)
            run.config_path.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
            slow = 1.0 if o == "gn" else 0.5
            run.write_rows([{"run_id": run.run_id, "split": "epoch", "epoch": float(e), "step": e,
                             "train_loss": 2.0 * slow ** e if o == "gn" else 2.0 * 0.3 ** e,
                             "test_loss": 2.0 - 0.3 * e - (0.1 if o == "kfac" else 0.0) + 0.001 * cfg.seed,
                             "test_acc": 0.5, "cka_block2": 1.0 - 0.01 * e} for e in range(3)]
                           + [{"run_id": run.run_id, "split": "step", "epoch": 0.5, "step": 1,
                               "step_size_ratio": 0.2 if o == "gn" else 0.9}])
            run.write_meta(status="done", run_id=run.run_id, experiment=cfg.exp_name, seed=cfg.seed, wall_s=1.0)
        return [{"status": "done"} for _ in jobs]
    return launch


def test_run_study_tunes_trains_only_through_the_sweep_and_writes_its_tables(tmp_path):
    d = _small_design(tmp_path)
    calls, _ = _fake_tuner(TUNED)
    res = tmp_path / "results"
    launched = []
    fake_launch = _fake_launch(res, launched)

    table, failed = gf.run_study("quick", [], res, tmp_path / "fig", calls=calls, launch=fake_launch,
                                 log=lambda s: None, design=d)
    assert failed == 0 and len(launched) == 2
    assert "optimizer.lr=0.3" in launched[0] and {"optimizer.lr=0.3", "optimizer.damping=0.01"} <= set(launched[1])
    assert any(o.startswith("hydra/launcher=joblib") for o in launched[0])
    per = pd.read_csv(res / "gn_family_quick" / gf.PER_SEED_FILE)
    assert len(per) == 6 and set(per["method"]) == {"GN sum", "K-FAC"} and set(per["seed"]) == {42, 43, 44}
    assert list(table["claim"]) == ["m", "f"] and (table["n"] == 3).all()
    assert (tmp_path / "fig" / "gn_family.png").exists()


def test_a_launcher_setting_given_alone_is_not_overridden_by_the_default_launcher(tmp_path):
    d = _small_design(tmp_path)
    calls, _ = _fake_tuner(TUNED)
    res, launched = tmp_path / "results", []
    gf.run_study("quick", ["hydra.launcher.n_jobs=1"], res, tmp_path / "fig", calls=calls,
                 launch=_fake_launch(res, launched), log=lambda s: None, design=d)
    assert launched and all([o for o in ov if o.startswith("hydra")] == ["hydra.launcher.n_jobs=1", "hydra/launcher=joblib"]
                            for ov in launched)


def test_the_record_carries_finished_methods_to_a_fresh_machine(tmp_path):
    """Method by method, a finished method's setting and curves go to the record CSV; a later run of the study on
    a machine without the runs neither tunes nor trains what the record holds and gives the same tables; a method
    whose design changed, or whose seeds did not all finish, is run again."""
    d = _small_design(tmp_path)
    rec = tmp_path / "docs" / "gn_family_quick.csv"
    calls, tuned = _fake_tuner(TUNED)
    launched: list = []
    res = tmp_path / "results"
    table, _ = gf.run_study("quick", [], res, tmp_path / "fig", calls=calls, launch=_fake_launch(res, launched),
                            log=lambda s: None, design=d, record=rec)
    per = pd.read_csv(res / "gn_family_quick" / gf.PER_SEED_FILE)
    df = pd.read_csv(rec)
    assert set(df["method"]) == {"GN sum", "K-FAC"} and set(df["seed"]) == {42, 43, 44}
    assert {"cka_block2", "step_size_ratio", "tuned_val_loss", "design"} <= set(df.columns)

    fresh, launched2, logs = tmp_path / "fresh", [], []
    calls2, tuned2 = _fake_tuner(TUNED)
    table2, failed = gf.run_study("quick", [], fresh, tmp_path / "fig2", calls=calls2,
                                  launch=_fake_launch(fresh, launched2), log=logs.append, design=d, record=rec)
    assert failed == 0 and launched2 == [] and tuned2 == []
    assert sum("not run again" in ln for ln in logs) == 2 and (tmp_path / "fig2" / "gn_family.png").exists()
    # What each method cost travels with the record: tuning (2 s a tune run; K-FAC tunes 2 λ × 2 rates × 2 seeds)
    # and the final runs (1 s each, their meta.json wall_s, 3 seeds).
    cost = gf.method_costs(df)
    assert cost.loc["GN sum"].tolist() == [8.0, 3.0, 11.0] and cost.loc["K-FAC"].tolist() == [16.0, 3.0, 19.0]
    assert "K-FAC: tuning 0.3 min + runs 0.1 min of training (summed over runs)" in logs
    pd.testing.assert_frame_equal(table2, table)
    per2 = pd.read_csv(fresh / "gn_family_quick" / gf.PER_SEED_FILE)
    pd.testing.assert_frame_equal(per2.drop(columns="run_id"), per.drop(columns="run_id"), check_dtype=False)
    assert per2.loc[per2.method == "K-FAC", "damping"].eq(0.01).all()
    assert per2.loc[per2.method == "GN sum", "damping"].isna().all()  # GN has no λ: the preset's value is not its

    # K-FAC's grid changed: its record is another design's, so it is tuned and trained again; GN sum is not.
    d2 = gf.Design(d.base, d.seeds, d.tune_seeds, d.val_size,
                   {**d.methods, "K-FAC": gf.Method("K-FAC", d.methods["K-FAC"].overrides, (0.3,), (0.01, 0.1))},
                   d.claims)
    again, launched3 = tmp_path / "again", []
    calls3, tuned3 = _fake_tuner(TUNED)
    gf.run_study("quick", [], again, tmp_path / "fig3", calls=calls3, launch=_fake_launch(again, launched3),
                 log=lambda s: None, design=d2, record=rec)
    assert len(launched3) == 1 and "optimizer=kfac" in launched3[0] and len(tuned3) == 2

    # The figure of a sitting that mixes recorded methods (no dataset column) with fresh runs draws them all.
    mixed = pd.concat([df[df.method == "GN sum"], df[df.method == "K-FAC"].assign(**{"dataset.name": "digits"})],
                      ignore_index=True)
    fig = gf.plot(mixed, d, "quick")
    labels = {t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()}
    assert {"GN sum", "K-FAC"} <= labels, labels
    assert all(ax.get_title().startswith("digits") for ax in gf.plot(df, d, "quick").axes)  # all from the record

    # A method whose seeds did not all finish is not recorded (it is not finished).
    part, rec_p = tmp_path / "part", tmp_path / "partial.csv"
    calls4, _ = _fake_tuner(TUNED)
    gf.run_study("quick", [], part, tmp_path / "fig4", calls=calls4, launch=_fake_launch(part, [], seeds={42, 43}),
                 log=lambda s: None, design=d, record=rec_p)
    assert not rec_p.exists() and gf.read_record(rec_p, d) == {}


def test_methods_trains_only_the_named_methods_and_a_later_sitting_finishes_from_the_record(tmp_path):
    """--methods: one sitting tunes and trains only the named methods (the claims missing a method are
    INSUFFICIENT, not judged on nothing); the next sitting takes them from the record and runs the rest."""
    d = _small_design(tmp_path)
    rec = tmp_path / "rec.csv"
    calls, tuned = _fake_tuner(TUNED)
    launched: list = []
    res = tmp_path / "results"
    logs: list[str] = []
    table, _ = gf.run_study("quick", [], res, tmp_path / "fig", calls=calls, launch=_fake_launch(res, launched),
                            log=logs.append, design=d, record=rec, methods=["GN sum"])
    assert len(launched) == 1 and "optimizer=gn" in launched[0] and set(pd.read_csv(rec)["method"]) == {"GN sum"}
    assert any("K-FAC: not run this sitting" in ln for ln in logs)
    assert (table["verdict"] == "INSUFFICIENT").all() and (table["n"] == 0).all()

    calls2, _ = _fake_tuner(TUNED)
    launched2: list = []
    table2, _ = gf.run_study("quick", [], res, tmp_path / "fig2", calls=calls2, launch=_fake_launch(res, launched2),
                             log=lambda s: None, design=d, record=rec)
    assert len(launched2) == 1 and "optimizer=kfac" in launched2[0]
    assert set(pd.read_csv(rec)["method"]) == {"GN sum", "K-FAC"} and (table2["n"] == 3).all()
    with pytest.raises(ConfigError, match="no method 'GN'"):
        gf.run_study("quick", [], res, tmp_path / "fig3", calls=calls2, launch=_fake_launch(res, []),
                     log=lambda s: None, design=d, record=rec, methods=["GN"])


def test_every_methods_tuning_overrides_compose_on_the_real_preset():
    """Each method × λ of the declared design composes with its tuning grid (the preset declares none for most)."""
    from revgn_cli.config import compose_config

    d = gf.load_design("quick")
    for m in d.methods.values():
        for lam in m.damping or (None,):
            cfg = compose_config([d.base[0], *gf.tune_overrides(d, m, lam)])
            assert list(cfg.tune.grid[m.optimizer]) == list(m.lr), m.label


def test_another_studys_flag_is_refused_and_nothing_trains(tmp_path, monkeypatch):
    """`revgn study run gn_family --plan` once trained for minutes: a flag of the scaling study is an error here."""
    monkeypatch.setattr(gf, "run_study", lambda *a, **k: pytest.fail("gn_family trained despite a scaling flag"))
    for flag in (["--plan"], ["--budget", "1h"], ["--redo", "paper"]):
        r = CliRunner().invoke(app, ["study", "run", "gn_family", "scale=quick", "--results", str(tmp_path), *flag])
        assert r.exit_code != 0 and f"{flag[0]}: not an option of study 'gn_family' (only of scaling)" in r.output
    r = CliRunner().invoke(app, ["study", "run", "scaling", "--plan", "--methods", "Adam", "--results", str(tmp_path)])
    assert r.exit_code != 0 and "--methods: not an option of study 'scaling' (only of gn_family)" in r.output
    assert not any(tmp_path.iterdir())


def test_the_archive_keeps_the_runs_an_interrupted_sitting_finished(tmp_path):
    """A sitting stopped mid-method (the sweep interrupted after two of three seeds) leaves those two runs in the
    archive; a sitting on a fresh machine restores them and trains only the third seed."""
    from revgn_cli.train.loop import Interrupted

    d = _small_design(tmp_path)
    arc = tmp_path / "arc"
    calls, _ = _fake_tuner(TUNED)

    def cut(res):
        inner = _fake_launch(res, [], seeds={42, 43})

        def launch(ov, force=False, quiet=False):
            inner(ov, force, quiet)
            raise Interrupted("stopped by signal 15")
        return launch

    with pytest.raises(Interrupted):
        gf.run_study("quick", [], tmp_path / "res", tmp_path / "fig", calls=calls, launch=cut(tmp_path / "res"),
                     log=lambda s: None, design=d, methods=["K-FAC"], archive=arc)
    kept = sorted((arc / "gn_family_quick").iterdir())
    assert len(kept) == 2 and all(sorted(p.name for p in r.iterdir()) == ["config.yaml", "meta.json",
                                                                           "metrics.parquet"] for r in kept)

    fresh, trained, logs = tmp_path / "fresh", [], []
    inner = _fake_launch(fresh, [])

    def launch(ov, force=False, quiet=False):  # like the sweep: a finished run dir is skipped, not trained
        for j in expand(ov):
            if not (fresh / j.cfg.exp_name / run_id(j.cfg) / "meta.json").exists():
                trained.append(j.cfg.seed)
        return inner(ov, force, quiet)

    calls2, _ = _fake_tuner(TUNED)
    gf.run_study("quick", [], fresh, tmp_path / "fig2", calls=calls2, launch=launch, log=logs.append, design=d,
                 methods=["K-FAC"], archive=arc)
    assert trained == [44] and "restored 2 finished run(s) from " + str(arc) in logs
    assert len(list((arc / "gn_family_quick").iterdir())) == 3
    per = pd.read_csv(fresh / "gn_family_quick" / gf.PER_SEED_FILE)
    assert sorted(per.loc[per.method == "K-FAC", "seed"]) == [42, 43, 44]
