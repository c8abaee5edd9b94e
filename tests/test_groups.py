"""Runs grouped over seeds (``revgn runs --group-by`` / ``--fold-seeds``), paired comparisons with verdicts
(``revgn compare --by``), and ``revgn plot runs`` refusing to average different settings — on synthetic runs
written with the store's own writer, checked against scipy computed by hand."""
from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as st
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.config import compose_config, config_dict, run_id
from revgn_cli.results import RunDir

runner = CliRunner()

# test_loss / test_acc per (optimizer, lr, seed): lr 0.3 beats lr 0.1 on the loss by ~0.1 every seed (beyond noise);
# accuracies differ by far less than the 0.005 SESOI.
LOSS = {("sgd", 0.1): [1.00, 1.05, 0.97], ("sgd", 0.3): [0.90, 0.97, 0.85], ("sgd", 0.03): [1.02, 1.04, 0.99],
        ("adam", 0.1): [0.70, 0.75, 0.72]}
ACC = {("sgd", 0.1): [0.800, 0.810, 0.790], ("sgd", 0.3): [0.801, 0.8105, 0.7905], ("sgd", 0.03): [0.78, 0.8, 0.79],
       ("adam", 0.1): [0.85, 0.86, 0.84]}
SEEDS = (1, 2, 3)


def write_run(res: Path, opt: str, lr: float, seed: int, loss: float, acc: float, *, exp: str = "lr",
              status: str = "done", val: float | None = None, val_in_meta: bool = True) -> str:
    """One finished run as `revgn train` leaves it: config.yaml, metrics.parquet (3 evaluations), meta.json.
    ``val``: the run held out a validation split and its final val_loss is this (``val_in_meta=False``: its
    meta.final predates the val_* entries, so only its rows have them)."""
    cfg = compose_config(["dataset=digits", "model=tiny", f"optimizer={opt}", f"optimizer.lr={lr}", f"seed={seed}",
                          f"exp_name={exp}", "train.epochs=2", "metrics.every=0",
                          *(["regime.val_size=50"] if val is not None else [])])
    rid = run_id(cfg)
    run = RunDir(res / exp / rid)
    run.path.mkdir(parents=True, exist_ok=True)
    run.config_path.write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    rows = [{"run_id": rid, "epoch": float(e), "step": 4 * e, "split": "epoch", "train_loss": loss + (2 - e) * 0.5,
             "test_loss": loss + (2 - e) * 0.5, "train_acc": acc, "test_acc": acc,
             **({"val_loss": val + (2 - e) * 0.5, "val_acc": acc} if val is not None else {})} for e in range(3)]
    run.write_rows(rows)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", *(("val_loss", "val_acc") if val_in_meta else ()))
    final = {k: rows[-1][k] for k in keys if k in rows[-1]}
    run.write_meta(status=status, run_id=rid, experiment=exp, seed=seed, epochs_done=2, final=final, wall_s=1.0)
    return rid


def write_setting(res: Path, opt: str, lr: float, seeds=SEEDS, **kw) -> list[str]:
    return [write_run(res, opt, lr, s, LOSS[opt, lr][s - 1], ACC[opt, lr][s - 1], **kw) for s in seeds]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two learning rates × three seeds of SGD (exp lr), plus Adam at one rate (exp other)."""
    res = tmp_path_factory.mktemp("groups") / "results"
    for lr in (0.1, 0.3):
        write_setting(res, "sgd", lr)
    write_setting(res, "adam", 0.1, exp="other")
    return res


def invoke(*args: str):
    return runner.invoke(app, ["--quiet", *args])


def ok(*args: str) -> str:
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return r.stdout


def one_error(result, *contains: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for c in contains:
        assert c in lines[0], lines[0]
    return lines[0]


def t_interval(values) -> tuple[float, float]:
    """Mean and 95 % t half-width by hand (scipy's interval)."""
    v = np.asarray(values, dtype=float)
    lo, hi = st.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=st.sem(v))
    return float(v.mean()), float((hi - lo) / 2)


# --- runs --group-by ------------------------------------------------------------------------------------------------

def test_group_by_prints_one_row_per_rate_with_mean_interval_over_three_seeds(sweep):
    text = ok("runs", "exp_name=lr", "--group-by", "optimizer.lr", "--results", str(sweep))
    rows = [ln.split() for ln in text.splitlines() if ln.strip()[:3] in ("0.1", "0.3")]
    assert [r[0] for r in rows] == ["0.1", "0.3"]
    for r, lr in zip(rows, (0.1, 0.3)):
        assert r[1] == "3" and r[2] == "0"  # n, diverged
        mean, half = t_interval(LOSS["sgd", lr])
        i = r.index("±", r.index("±") + 1)  # train loss first, then test loss
        assert float(r[i - 1]) == pytest.approx(mean, rel=1e-3) and float(r[i + 1]) == pytest.approx(half, rel=0.05)

    df = pd.read_csv(io.StringIO(ok("runs", "exp_name=lr", "--group-by", "optimizer.lr", "--format", "csv",
                                    "--results", str(sweep))))
    assert list(df["optimizer.lr"]) == [0.1, 0.3] and list(df.n) == [3, 3]
    for lr, row in zip(df["optimizer.lr"], df.itertuples()):
        mean, half = t_interval(LOSS["sgd", lr])
        assert row.test_loss == pytest.approx(mean, abs=1e-12) and row.test_loss_ci95 == pytest.approx(half)
        members = {s["run_id"] for s in _summaries(sweep) if s["optimizer.lr"] == lr and s["experiment"] == "lr"}
        assert set(row.run_ids.split()) == members and row.seeds == "1 2 3"
    js = json.loads(ok("runs", "exp_name=lr", "--group-by", "optimizer.lr", "--format", "json", "--results",
                       str(sweep)))
    assert [len(g["run_ids"]) for g in js] == [3, 3] and js[1]["test_acc_n"] == 3


def _summaries(res):
    from revgn_cli.results import run_summaries

    return run_summaries(res)


def test_group_sort_by_a_group_mean_and_fold_seeds(sweep):
    def groups(*opts):
        return pd.read_csv(io.StringIO(ok("runs", "--format", "csv", "--results", str(sweep), *opts)))

    by_loss = groups("exp_name=lr", "--group-by", "optimizer.lr", "--sort", "test_loss:asc")
    assert list(by_loss["optimizer.lr"]) == [0.3, 0.1]  # lower mean test loss first
    assert list(groups("exp_name=lr", "--group-by", "optimizer.lr", "--sort", "test_loss:desc")["optimizer.lr"]) \
        == [0.1, 0.3]
    folded = groups("--fold-seeds")  # every run: the varying keys but the seed (optimizer and lr) make the groups
    assert len(folded) == 3 and set(folded["optimizer.name"]) == {"sgd", "adam"} and list(folded.n) == [3, 3, 3]


def test_group_by_refuses_groups_that_mix_settings_and_unknown_keys(sweep):
    one_error(invoke("runs", "--group-by", "optimizer.lr", "--results", str(sweep)),
              "also differ in optimizer.name", "--group-by")
    one_error(invoke("runs", "--group-by", "optimizer.lrr", "--results", str(sweep)), "did you mean optimizer.lr")
    one_error(invoke("runs", "--group-by", "optimizer.lr", "--format", "md", "--results", str(sweep)), "table, csv")


def test_diverged_runs_are_counted_apart_and_unfinished_ones_named(tmp_path):
    res = tmp_path / "results"
    write_setting(res, "sgd", 0.1)
    write_setting(res, "sgd", 0.3, seeds=(1, 2))
    write_run(res, "sgd", 0.3, 3, 99.0, 0.1, status="diverged")
    rid = write_run(res, "sgd", 0.3, 4, 0.5, 0.9, status="interrupted")
    r = invoke("runs", "--group-by", "optimizer.lr", "--format", "csv", "--results", str(res))
    assert r.exit_code == 0, r.output
    df = pd.read_csv(io.StringIO(r.stdout))
    g = df[df["optimizer.lr"] == 0.3].iloc[0]
    assert (g.n, g.diverged, g.test_loss_n) == (3, 1, 2)
    assert g.test_loss == pytest.approx(np.mean(LOSS["sgd", 0.3][:2]))  # the diverged run's 99 is not in the mean
    assert rid[:8] in r.stderr and "interrupted" in r.stderr

    rec = json.loads(ok("compare", "--by", "optimizer.lr", "--format", "json", "--results", str(res)))
    (c,) = rec["comparisons"]
    assert (c["n_pairs"], c["n_nonfinite"], c["verdict"]) == (2, 1, "INSUFFICIENT")
    assert any("lr=0.3 1 of 3 diverged" in n for n in rec["notes"])
    assert any(rid[:8] in n for n in rec["notes"])


# --- compare --by ---------------------------------------------------------------------------------------------------

def test_compare_by_prints_one_verdict_that_agrees_with_scipy(sweep):
    text = ok("compare", "--by", "optimizer.lr", "exp_name=lr", "--metric", "test_loss", "--results", str(sweep))
    verdicts = [w for w in text.split() if w in ("HOLDS:", "REVERSED:", "NEGLIGIBLE:", "INCONCLUSIVE",
                                                 "INSUFFICIENT:")]
    assert verdicts == ["HOLDS:"] and "HOLDS: B better" in text
    assert "lower is better" in text and "A = lr=0.1 (baseline)" in text

    a, b = np.array(LOSS["sgd", 0.1]), np.array(LOSS["sgd", 0.3])
    (rec,) = json.loads(ok("compare", "--by", "optimizer.lr", "exp_name=lr", "--format", "json", "--results",
                           str(sweep)))["comparisons"]
    mean, half = t_interval(b - a)
    assert rec["diff_b_minus_a"] == pytest.approx(mean) and rec["ci95"] == pytest.approx(half)
    assert rec["p"] == pytest.approx(st.ttest_rel(b, a).pvalue) and rec["p_holm"] == rec["p"]
    d = a - b  # oriented: > 0 means B (lr 0.3) has the lower loss
    p_tost = max(st.ttest_1samp(d, -0.01, alternative="greater").pvalue,
                 st.ttest_1samp(d, 0.01, alternative="less").pvalue)
    assert rec["p_tost"] == pytest.approx(p_tost) and rec["sesoi"] == 0.01
    assert rec["verdict"] == ("HOLDS" if rec["p"] < 0.05 and p_tost >= 0.05 and d.mean() > 0 else "?")
    assert (rec["a"], rec["b"], rec["n_pairs"], rec["seeds"]) == (0.1, 0.3, 3, [1, 2, 3])
    # The row in the table shows that difference, with the p-value
    assert "optimizer.lr: A = 0.1, B = 0.3" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("test loss"))
    assert f"{mean:.4g} ± {half:.2g}" in row and f"{rec['p']:.2g}" in row


def test_compare_accuracy_orientation_sesoi_and_baseline(sweep):
    def rec(*opts):
        return json.loads(ok("compare", "--by", "optimizer.lr", "exp_name=lr", "--format", "json", "--results",
                             str(sweep), *opts))["comparisons"]

    acc = rec("--metric", "test_acc")[0]
    assert acc["better"] == "higher" and acc["sesoi"] == 0.005 and acc["verdict"] == "NEGLIGIBLE"
    # A tighter SESOI than the differences' spread can show: not negligible any more.
    tight = rec("--metric", "test_acc", "--sesoi", "test_acc=0.0001")[0]
    assert tight["sesoi"] == 0.0001 and tight["verdict"] in ("INCONCLUSIVE", "HOLDS")
    # Baseline 0.3: the same difference with the sign turned round, and the verdict with it.
    flipped = rec("--baseline", "0.3")[0]
    plain = rec()[0]
    assert flipped["diff_b_minus_a"] == pytest.approx(-plain["diff_b_minus_a"]) and flipped["verdict"] == "REVERSED"
    one_error(invoke("compare", "--by", "optimizer.lr", "exp_name=lr", "--baseline", "0.2", "--results", str(sweep)),
              "--baseline 0.2", "0.1, 0.3")
    one_error(invoke("compare", "--by", "optimizer.lr", "exp_name=lr", "--sesoi", "test_acc=0.1", "--results",
                     str(sweep)), "not a compared metric")
    one_error(invoke("compare", "--by", "optimizer.lr", "exp_name=lr", "--sesoi", "test_loss=-1", "--results",
                     str(sweep)), "positive")
    one_error(invoke("compare", "--by", "optimizer.lr", "exp_name=lr", "--metric", "test_los", "--results",
                     str(sweep)), "did you mean test_loss")


def test_compare_val_loss_of_runs_with_a_validation_split(sweep, tmp_path):
    """`--metric val_loss` compares the held-out split's loss (tuning runs), read from meta.final or, for a run whose
    meta.final predates it, from its rows; runs without a validation split say so instead of comparing nothing."""
    res = tmp_path / "results"
    val = {0.1: [0.60, 0.64, 0.61], 0.3: [0.50, 0.55, 0.52]}
    for lr in (0.1, 0.3):
        for s in SEEDS:
            write_run(res, "sgd", lr, s, LOSS["sgd", lr][s - 1], ACC["sgd", lr][s - 1], exp="tune",
                      val=val[lr][s - 1], val_in_meta=s != 2)
    (rec,) = json.loads(ok("compare", "--by", "optimizer.lr", "--metric", "val_loss", "--format", "json",
                           "--results", str(res)))["comparisons"]
    a, b = np.array(val[0.1]), np.array(val[0.3])
    assert rec["metric"] == "val_loss" and rec["n_pairs"] == 3 and rec["better"] == "lower"
    assert rec["diff_b_minus_a"] == pytest.approx((b - a).mean()) and rec["p"] == pytest.approx(st.ttest_rel(b, a).pvalue)
    one_error(invoke("compare", "--by", "optimizer.lr", "exp_name=lr", "--metric", "val_loss", "--results",
                     str(sweep)), "no matching run logged val_loss")


def test_compare_by_refuses_runs_differing_in_another_key(sweep):
    one_error(invoke("compare", "--by", "optimizer.lr", "--results", str(sweep)), "also differ in optimizer.name")
    one_error(invoke("compare", "--by", "optimizer.lr", "optimizer.lr=0.1", "exp_name=lr", "--results", str(sweep)),
              "one value")
    # Existing form still works: two run ids side by side.
    ids = [next(s["run_id"] for s in _summaries(sweep) if s["optimizer.lr"] == lr and s["seed"] == 1
                and s["experiment"] == "lr") for lr in (0.1, 0.3)]
    assert "optimizer.lr" in ok("compare", *ids, "--results", str(sweep))
    one_error(invoke("compare", *ids, "--format", "md", "--results", str(sweep)), "go with --by KEY")


def test_three_groups_each_against_the_first_holm_adjusted_and_a_missing_seed_named(sweep, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(sweep, res)
    write_setting(res, "sgd", 0.03, seeds=(1, 2, 3))
    lone = write_run(res, "sgd", 0.3, 4, 0.88, 0.8)  # seed 4 exists for lr 0.3 only
    out = json.loads(ok("compare", "--by", "optimizer.lr", "exp_name=lr", "--metric", "test_loss", "--format", "json",
                        "--results", str(res)))
    recs = out["comparisons"]
    assert [(c["a"], c["b"]) for c in recs] == [(0.03, 0.1), (0.03, 0.3)]
    raw = [st.ttest_rel(LOSS["sgd", c["b"]], LOSS["sgd", 0.03]).pvalue for c in recs]
    assert [c["p"] for c in recs] == pytest.approx(raw)
    lo, hi = sorted(range(2), key=lambda i: raw[i])
    holm = {lo: min(1, 2 * raw[lo])}
    holm[hi] = max(holm[lo], raw[hi])
    assert [c["p_holm"] for c in recs] == pytest.approx([holm[0], holm[1]])
    assert all(c["n_pairs"] == 3 and c["seeds"] == [1, 2, 3] for c in recs)
    (miss,) = out["unpaired"]
    assert "seed 4" in miss and "lr=0.3" in miss and lone[:8] in miss and "no lr=0.03 run with seed 4" in miss
    text = ok("compare", "--by", "optimizer.lr", "exp_name=lr", "--results", str(res))
    assert "unpaired: seed 4" in text and "Holm-adjusted over the 2 comparisons" in text


def test_compare_table_fits_80_columns_with_every_value_whole(sweep, tmp_path, monkeypatch):
    from rich.console import Console

    from revgn_cli import cli

    res = tmp_path / "results"
    shutil.copytree(sweep, res)
    write_setting(res, "sgd", 0.03)
    recs = json.loads(ok("compare", "--by", "optimizer.lr", "exp_name=lr", "--metric", "test_loss,test_acc",
                         "--format", "json", "--results", str(res)))["comparisons"]
    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=80))
    r = runner.invoke(app, ["compare", "--by", "optimizer.lr", "exp_name=lr", "--metric", "test_loss,test_acc",
                            "--results", str(res)])
    assert r.exit_code == 0, r.output
    text = buf.getvalue()
    assert max(len(ln.rstrip()) for ln in text.splitlines()) <= 80 and "…" not in text
    for c in recs:  # each difference appears whole in its row
        assert any(f"{c['diff_b_minus_a']:.4g} ± {c['ci95']:.2g}" in ln for ln in text.splitlines())


def test_compare_markdown_is_a_table_ready_to_paste(sweep):
    md = ok("compare", "--by", "optimizer.lr", "exp_name=lr", "--metric", "test_loss,test_acc", "--format", "md",
            "--results", str(sweep))
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 4  # header, rule, two metrics
    assert len({ln.count("|") for ln in table}) == 1  # no stray pipe in a cell
    assert set(table[1].replace("|", "").replace("-", "").replace(":", "")) == set()
    assert "HOLDS: B better" in table[2] and "NEGLIGIBLE" in table[3]
    assert "Holm-adjusted over the 2 comparisons" in md and "- B − A in the metric's units" in md


# --- plot runs and csv ------------------------------------------------------------------------------------------------

def test_plot_runs_mixing_settings_is_an_error_unless_averaged_over(sweep, tmp_path):
    one_error(invoke("plot", "runs", "--hue", "optimizer.lr", "--results", str(sweep), "--out", str(tmp_path / "a.png")),
              "differ in optimizer.name", "--average-over optimizer.name")
    assert not (tmp_path / "a.png").exists()
    ok("plot", "runs", "--hue", "optimizer.lr", "--average-over", "optimizer.name", "--results", str(sweep), "--out",
       str(tmp_path / "b.png"))
    assert (tmp_path / "b.png").exists()
    one_error(invoke("plot", "runs", "--average-over", "optimizer.nme", "--results", str(sweep)),
              "did you mean optimizer.name")


def test_runs_csv_with_columns_keeps_run_id(sweep):
    for fmt, read in (("csv", lambda t: list(pd.read_csv(io.StringIO(t)).columns)),
                      ("json", lambda t: list(json.loads(t)[0]))):
        cols = read(ok("runs", "--columns", "seed,test_loss", "--format", fmt, "--results", str(sweep)))
        assert cols == ["run_id", "seed", "test_loss"]


def test_metric_rules_are_one_table():
    from revgn_cli.results.groups import METRIC_RULES, metric_rule

    assert metric_rule("test_loss") == ("lower", 0.01) and metric_rule("train_acc") == ("higher", 0.005)
    assert metric_rule("wall_s") == ("lower", None)
    assert all(better in ("lower", "higher") for _, better, _, _ in METRIC_RULES)
    assert math.isclose(metric_rule("val_loss")[1], 0.01)
