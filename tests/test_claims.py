"""The claims' verdicts (`revgn verify`): divergence is never evidence, each verdict arises as constructed, Holm per
family, both protocols side by side, the claim definitions (late slope, matched train loss, fig8/12/15).
Synthetic runs only: in-memory rows for the definitions, written results dirs for the command."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.figures import claims as C
from revgn_cli.figures import protocols
from revgn_cli.stats import holm, judge
from test_figures import write_preset

runner = CliRunner()
SEEDS = (42, 43, 44, 45, 46)
FIVE = (f"seed={','.join(map(str, SEEDS))}",)  # five seeds keep these tests quick; same rules as ten


def rows(curves: dict[tuple[str, int], dict[str, np.ndarray]], diverged: set = frozenset(), **cfg: object) -> pd.DataFrame:
    """Epoch rows of one run per (optimizer, seed): {metric: values at epochs 0..E}; ``diverged``: (opt, seed)."""
    out = []
    for (opt, seed), c in curves.items():
        n = len(next(iter(c.values())))
        st = "diverged" if (opt, seed) in diverged else "done"
        for e in range(n):
            out.append({"run_id": f"{opt}{seed}", "epoch": float(e), "split": "epoch", "status": st, "seed": seed,
                        "optimizer.name": opt, "optimizer.lr": 0.1, **cfg, **{k: float(v[e]) for k, v in c.items()}})
    return pd.DataFrame(out)


def measure(claim_id: str, df: pd.DataFrame):
    c = next(c for c in C.CLAIMS if c.id == claim_id)
    m, tally = C.tallied(lambda: c.check(df))
    return m, judge(m.margins, c.sesoi), tally


# ---------------------------------------------------------------------------------------------------------------
# Divergence is never evidence


def _test_loss_runs(gn: list[float], adam: list[float]) -> dict:
    return {(o, s): {"train_loss": np.array([2.3, v]), "test_loss": np.array([2.3, v]),
                     "train_acc": np.array([0.1, 0.9]), "test_acc": np.array([0.1, 0.9 - (v - 0.5) / 10])}
            for o, vals in (("gn", gn), ("adam", adam)) for s, v in zip(SEEDS, vals)}


def test_a_diverged_seed_alone_never_holds_or_reverses():
    # GN diverged in every seed: the old rule scored +inf for GN (evidence that GN generalises worse)
    df = rows(_test_loss_runs([9.0] * 5, [0.5] * 5), diverged={("gn", s) for s in SEEDS})
    for cid in ("fig2.test_loss", "fig2.test_acc"):
        m, v, tally = measure(cid, df)
        assert v.verdict == "INSUFFICIENT" and v.n == 0 and v.n_nonfinite == 5, (cid, v)
        assert tally["GN"] == (5, 5) and tally["Adam"] == (0, 5)
    # one diverged seed beside two ties ([inf, eps, eps] before): INSUFFICIENT, not HOLDS
    df = rows(_test_loss_runs([9.0, 0.5 + 1e-9, 0.5 + 1e-9], [0.5] * 3), diverged={("gn", 42)})
    m, v, tally = measure("fig2.test_loss", df)
    assert v.verdict == "INSUFFICIENT" and v.n == 2 and math.isnan(m.margins[42]) and tally["GN"] == (1, 3)
    assert judge([math.inf, 1e-9, 1e-9], sesoi=0.01).verdict != "HOLDS"


def test_a_diverged_run_is_no_accuracy_evidence():
    """A diverged GN seed drops out of the accuracy claim: its accuracy is not 0.0, the others decide."""
    df = rows(_test_loss_runs([0.6, 0.6, 0.6, 0.6, 0.6], [0.5] * 5), diverged={("gn", 42)})
    m, v, tally = measure("fig2.test_acc", df)
    assert v.n == 4 and v.n_nonfinite == 1 and math.isnan(m.margins[42])
    assert v.mean == pytest.approx(0.01)  # Adam 0.9 vs GN 0.89 in the four finite pairs; 0.0 for 42 would say 0.18
    assert "GN 1 of 5 diverged" in C.diverged_text(tally)


# ---------------------------------------------------------------------------------------------------------------
# Claim definitions


def test_train_saturates_is_not_passed_by_a_slower_gn():
    """GN = Adam slowed down 3x: its final train loss is higher (the old level claim said "saturates"), but late in
    the run it still removes a larger fraction of its loss than Adam — not saturation."""
    e = np.arange(31, dtype=float)
    adam = 0.05 + 2.25 * np.exp(-e / 3.0)
    gn = 0.05 + 2.25 * np.exp(-e / 9.0)
    df = rows({(o, s): {"train_loss": c * (1 + 0.01 * (s - 42))} for o, c in (("gn", gn), ("adam", adam)) for s in SEEDS})
    level = judge({s: gn[-1] - adam[-1] + 0.001 * (s - 42) for s in SEEDS}, 0.01)
    assert level.verdict == "HOLDS"  # what the old definition (GN − Adam of the final train loss) would say
    m, v, _ = measure("fig2.train_saturates", df)
    assert v.verdict == "REVERSED" and v.mean < 0, (m.value, v)
    # a GN that truly plateaus (flat over the last third while Adam still descends) holds
    flat = np.maximum(gn, gn[15])
    slow_adam = 0.05 + 2.25 * np.exp(-e / 20.0)
    df = rows({(o, s): {"train_loss": c * (1 + 0.01 * (s - 42))} for o, c in (("gn", flat), ("adam", slow_adam))
               for s in SEEDS})
    assert measure("fig2.train_saturates", df)[1].verdict == "HOLDS"


def test_matched_train_loss_reads_each_run_where_both_reach_the_same_loss():
    """Level ℓ* = the lowest train loss both runs reach; each metric interpolated at its first crossing."""
    gn_loss = np.array([2.0, 1.0, 0.8, 0.8])  # plateaus at 0.8
    adam_loss = np.array([2.0, 1.5, 0.6, 0.3])  # crosses 0.8 between epochs 1 and 2
    gn_sim = np.array([1.0, 0.99, 0.98, 0.97])
    adam_sim = np.array([1.0, 0.9, 0.5, 0.2])
    df = rows({**{("gn", s): {"train_loss": gn_loss, "ntk_feat_sim_init": gn_sim} for s in SEEDS},
               **{("adam", s): {"train_loss": adam_loss, "ntk_feat_sim_init": adam_sim + 0.01 * (s - 42)}
                  for s in SEEDS}})
    m, v, _ = measure("fig4.ntk_lazy_matched", df)
    w = (1.5 - 0.8) / (1.5 - 0.6)
    for s in SEEDS:
        adam_at = (0.9 + 0.01 * (s - 42)) + w * (0.5 - 0.9)
        assert m.margins[s] == pytest.approx(0.98 - adam_at)  # GN first reaches 0.8 at epoch 2 exactly
    assert v.verdict == "HOLDS" and "mean level 0.8" in m.value
    assert C.at_level(np.array([0.5, 0.4]), np.array([3.0, 4.0]), 0.9) == 3.0  # starts below: the first value


def test_fast_start_reports_each_methods_first_step_size():
    df = rows({(o, s): {"train_loss": np.array([2.3, v + 0.01 * (s - 42)])} for o, v in (("gn", 1.0), ("adam", 1.5))
               for s in SEEDS})
    step = pd.DataFrame([{"run_id": f"{o}{s}", "epoch": 0.5, "split": "step", "status": "done", "seed": s,
                          "optimizer.name": o, "step_size_ratio": r} for o, r in (("gn", 0.19), ("adam", 0.69))
                         for s in SEEDS])
    m, v, _ = measure("fig2.fast_start", pd.concat([df, step], ignore_index=True))
    assert v.verdict == "HOLDS" and "GN 0.19, Adam 0.69" in m.value


def _sweep_runs(key: str, values: tuple, gn_test: dict, adam_test: float) -> pd.DataFrame:
    parts = [rows({("gn", s): {"train_loss": np.array([2.3, 0.5]), "test_loss": np.array([2.3, gn_test[v] + 0.002 * s])}
                   for s in SEEDS}, **{key: v}) for v in values]
    parts.append(rows({("adam", s): {"train_loss": np.array([2.3, 0.4]), "test_loss": np.array([2.3, adam_test])}
                       for s in SEEDS}, **{key: values[1]}))
    return pd.concat(parts, ignore_index=True).assign(run_id=lambda d: d["run_id"] + d[key].astype(str))


@pytest.mark.parametrize("cid,key,values", [("fig8.no_init_fixes", "model.init_std", (1e-2, 1e-3, 1e-6)),
                                            ("fig12.no_lr_fixes", "optimizer.lr", (1e-1, 1e-3, 1e-4))])
def test_no_setting_fixes_gn_is_judged_on_the_best_gn_setting(cid, key, values):
    above = {values[0]: 0.9, values[1]: 0.8, values[2]: 0.85}
    m, v, _ = measure(cid, _sweep_runs(key, values, above, 0.5))
    assert v.verdict == "HOLDS" and v.mean == pytest.approx(0.3 + 0.002 * np.mean(SEEDS))  # the best GN setting
    fixed = {**above, values[2]: 0.3}  # one setting brings GN's test loss below Adam's
    assert measure(cid, _sweep_runs(key, values, fixed, 0.5))[1].verdict == "REVERSED"


def test_fig15_generalisation_gap():
    def runs(gn_gap: float) -> pd.DataFrame:
        return rows({(o, s): {"train_acc": np.array([0.1, 0.95]), "test_acc": np.array([0.1, 0.95 - g - 0.001 * s])}
                     for o, g in (("gn", gn_gap), ("adam", 0.02)) for s in SEEDS})

    assert measure("fig15.generalisation_gap", runs(0.06))[1].verdict == "HOLDS"
    assert measure("fig15.generalisation_gap", runs(0.02))[1].verdict == "NEGLIGIBLE"


def test_every_claim_declares_a_sesoi_and_every_figure_has_one():
    assert all(c.sesoi > 0 and c.sesoi_why for c in C.CLAIMS)
    assert {c.figure for c in C.CLAIMS} == {f"fig{i}" for i in range(1, 16)}
    assert {c.figure for c in C.CLAIMS if c.primary} == {"fig1", "fig2", "fig3", "fig4"}


# ---------------------------------------------------------------------------------------------------------------
# The command on written results: every verdict as constructed, Holm, protocols


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """minibatch_quick (five seeds) as: paper-like, swapped, identical GN/Adam, split seeds, GN diverged."""
    base = tmp_path_factory.mktemp("claims")
    cases = {"holds": {}, "reversed": {"flip": True}, "split": {"flip": {42, 44}},
             "insufficient": {"diverge": {"gn": 3}}}
    for name, kw in cases.items():
        write_preset(base / name, "minibatch_quick", overrides=FIVE, **kw)
    return base


def _by_id(outcomes, protocol="paper"):
    return {o.claim.id: o for o in outcomes if o.protocol == protocol}


def test_verify_gives_each_verdict_as_constructed(results, monkeypatch):
    got = {k: _by_id(C.evaluate(C.claims_for(["fig2"]), results / k, "quick", FIVE, protocols=("paper",)))
           for k in ("holds", "reversed", "split", "insufficient")}
    assert got["holds"]["fig2.test_loss"].status == "HOLDS"
    assert got["reversed"]["fig2.test_loss"].status == "REVERSED"
    o = got["split"]["fig2.test_loss"]  # seeds 42, 44 swapped: margins of both signs
    assert o.status == "INCONCLUSIVE" and o.verdict.n == 5 and o.verdict.low < 0 < o.verdict.high
    o = got["insufficient"]["fig2.test_loss"]
    assert o.status == "INSUFFICIENT" and o.verdict.n == 0 and o.diverged == "GN 5 of 5 diverged; Adam 0 of 5 diverged"
    # NEGLIGIBLE: GN's rows are Adam's (identical curves, margins exactly 0 in every seed)
    from test_figures import _curves

    monkeypatch.setattr("test_figures._curves", lambda opt, e, regime, flip: _curves("adam" if opt == "gn" else opt,
                                                                                      e, regime, False))
    write_preset(results / "same", "minibatch_quick", overrides=FIVE)
    o = _by_id(C.evaluate(C.claims_for(["fig2"]), results / "same", "quick", FIVE, protocols=("paper",)))["fig2.test_loss"]
    assert o.status == "NEGLIGIBLE" and o.verdict.mean == 0


def test_holm_columns_are_stats_holm_over_each_family(results):
    outcomes = C.evaluate(C.claims_for(["fig2", "fig3", "fig4", "fig9", "fig10"]), results / "split", "quick", FIVE,
                          protocols=("paper",))
    for primary in (True, False):
        fam = [o for o in outcomes if o.verdict is not None and o.claim.primary is primary]
        assert len(fam) >= 3
        raw = [o.verdict.p for o in fam]
        assert [o.verdict.p_adj for o in fam] == pytest.approx(holm(raw))
        for o in fam:  # the verdict is decided on the adjusted p
            if o.status in ("HOLDS", "REVERSED"):
                assert o.verdict.p_adj < 0.05


def test_both_protocols_side_by_side(results, tmp_path, monkeypatch):
    res = results / "holds"
    # no tune record: the tuned rows say so (no crash, no number)
    r = runner.invoke(app, ["verify", "fig2", *FIVE, "--results", str(res), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "claims.md").read_text()
    assert "| fig2.test_loss | mnist5k | paper (GN 0.1, Adam 0.0001, SGD 0.1) |" in md
    assert "| fig2.test_loss | mnist5k | tuned |" not in md and "no tuned rates" in md
    assert "indicative (5 seeds)" in md
    # with tuned rates, the tuned runs are found and judged beside the paper ones, their rates in the table
    rates = {"gn": 0.3, "adam": 3e-4, "sgd": 0.03}
    for o, lr in rates.items():
        write_preset(res, "minibatch_quick", overrides=(*FIVE, f"optimizer={o}", f"optimizer.lr={lr!r}"))
    real = protocols.tuned_rates_for
    monkeypatch.setattr(protocols, "tuned_rates_for",
                        lambda p, r, ov=(): rates if p == "minibatch_quick" else real(p, r, ov))
    r = runner.invoke(app, ["verify", "fig2", *FIVE, "--results", str(res), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "claims.md").read_text()
    assert "| fig2.test_loss | mnist5k | tuned (GN 0.3, Adam 0.0003, SGD 0.03) | " in md
    outcomes = C.evaluate(C.claims_for(["fig2"]), res, "quick", FIVE)
    assert {(o.claim.id, o.protocol) for o in outcomes} == {(c.id, p) for c in C.claims_for(["fig2"])
                                                            for p in ("paper", "tuned")}
    assert all(o.status == "HOLDS" for o in outcomes)
    r = runner.invoke(app, ["verify", "fig2", "protocol=paper", *FIVE, "--results", str(res), "--out", str(tmp_path)])
    assert r.exit_code == 0 and "| tuned" not in (tmp_path / "claims.md").read_text()


def test_reproduce_tuned_protocol_tunes_then_trains_at_the_chosen_rates(tmp_path, monkeypatch):
    """protocol=both: `revgn tune` for the preset with a grid (its setting without the seeds), then the paper runs
    and, per optimiser, the preset's runs at its chosen rate. Launch and tuning are replaced by recorders."""
    import revgn_cli.tune as tune
    from revgn_cli import sweep

    tuned, launched = [], []
    monkeypatch.setattr(tune, "run_tune", lambda p, ov, res, **kw: tuned.append((p, list(ov))))
    rates = {"gn": 0.3, "adam": 3e-4, "sgd": 0.03}
    monkeypatch.setattr(protocols, "tuned_rates_for", lambda p, r, ov=(): rates)
    monkeypatch.setattr(sweep, "launch", lambda ov, force=False, quiet=False: launched.append(list(ov)) or [])
    res = tmp_path / "results"
    r = runner.invoke(app, ["--quiet", "reproduce", "fig1", "scale=quick", "protocol=both", "seed=42,43,44",
                            "dataset=digits", "--results", str(res), "--out", str(tmp_path / "f")])
    assert tuned == [("fig1_quick", ["dataset=digits"])], r.output
    base = ["experiment=fig1_quick", "seed=42,43,44", "dataset=digits"]
    assert launched[0] == [*base, f"results_dir={res}"]
    assert launched[1:] == [[*base, f"optimizer={o}", f"optimizer.lr={lr!r}", f"results_dir={res}"]
                            for o, lr in rates.items()]
    r = runner.invoke(app, ["reproduce", "fig1", "protocol=sometimes", "--dry-run", "--results", str(res)])
    assert r.exit_code == 2 and "protocol='sometimes'" in r.output
