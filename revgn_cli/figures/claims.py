"""The paper's claims as checks on the results (``revgn verify``).

Each claim is a number (or a few) computed from a figure's runs, a threshold that is part of the claim's definition
(written in its text and in ``threshold``), and a verdict: PASS, FAIL, or MISSING when the runs it needs are not in
the results dir. Nothing here knows or expects an outcome: the checks report what the data says. Values are the
mean over the seeds whose run finished (``done``); a setting whose every seed diverged counts as an infinite loss.
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from revgn_cli.figures.data import MissingRunsError
from revgn_cli.figures.plots import cka_blocks, col, datasets, epoch_rows, for_dataset, half_layers, plain, step_rows
from revgn_cli.figures.style import OPT_LABELS, dataset_label, fmt


class NotMeasurable(Exception):
    """The runs exist but lack what the claim needs (a series or a metric); reported as MISSING."""


@dataclass(frozen=True)
class Measured:
    value: str
    passed: bool


@dataclass(frozen=True)
class Claim:
    id: str
    figure: str
    text: str
    threshold: str
    check: Callable[[pd.DataFrame], Measured]


@dataclass
class Outcome:
    claim: Claim
    dataset: str
    value: str
    status: str  # PASS | FAIL | MISSING


# ---------------------------------------------------------------------------------------------------------------
# Measurements


def select(df: pd.DataFrame, **sel: object) -> pd.DataFrame:
    """Rows whose config matches ``sel`` (``optimizer__name="gn"`` → column ``optimizer.name``); no switch runs
    unless ``train__switch_to`` is given."""
    d = df if "train__switch_to" in sel else plain(df)
    for k, v in sel.items():
        d = d[col(d, k.replace("__", ".")).astype(str) == str(v)]
    return d


def _label(sel: dict) -> str:
    """"GN", or "GN (regularizer.name=weight_decay)": names every selection, so "no … runs" says which are missing."""
    opt = str(sel.get("optimizer__name", ""))
    rest = [f"{k.replace('__', '.')}={v}" for k, v in sel.items() if k != "optimizer__name"]
    return (OPT_LABELS.get(opt, opt) or "runs") + (f" ({', '.join(rest)})" if rest else "")


def per_run_last(df: pd.DataFrame, metric: str) -> pd.Series:
    """run_id → the metric at the run's last epoch row where it is finite."""
    ep = epoch_rows(df)
    if metric not in ep.columns:
        return pd.Series(dtype=float)
    ep = ep[np.isfinite(ep[metric].astype(float))]
    if ep.empty:
        return pd.Series(dtype=float)
    last = ep.loc[ep.groupby("run_id")["epoch"].idxmax()]
    return last.set_index("run_id")[metric].astype(float)


def final(df: pd.DataFrame, metric: str, *, diverged: float = math.inf, **sel: object) -> float:
    """Mean over done seeds of the metric at the last epoch; ``diverged`` when every seed diverged."""
    d = select(df, **sel)
    if d.empty:
        raise NotMeasurable(f"no {_label(sel)} runs")
    done = d[d["status"] == "done"]
    if done.empty:
        return diverged
    v = per_run_last(done, metric)
    if v.empty:
        raise NotMeasurable(f"{metric} not logged for {_label(sel)}")
    return float(v.mean())


def at_epoch(df: pd.DataFrame, metric: str, epoch: float, **sel: object) -> float:
    d = select(df, **sel)
    ep = epoch_rows(d[d["status"] == "done"])
    if metric not in ep.columns:
        raise NotMeasurable(f"{metric} not logged")
    v = ep.loc[np.isclose(ep["epoch"].astype(float), epoch), metric].astype(float).dropna()
    if v.empty:
        if d.empty:
            raise NotMeasurable(f"no {_label(sel)} runs")
        return math.inf if (d["status"] == "diverged").any() else _missing(f"{metric} at epoch {epoch:g}")
    return float(v.mean())


def _missing(what: str) -> float:
    raise NotMeasurable(f"{what} not logged")


def epochs_to_fraction(df: pd.DataFrame, metric: str, frac: float, **sel: object) -> float:
    """Mean over seeds of the first epoch at which ``metric`` ≤ frac × its epoch-0 value (∞ if never)."""
    d = select(df, **sel)
    if d.empty:
        raise NotMeasurable(f"no {_label(sel)} runs")
    out = []
    for _, r in epoch_rows(d).groupby("run_id"):
        r = r.dropna(subset=[metric]).sort_values("epoch") if metric in r.columns else r.iloc[0:0]
        if r.empty:
            continue
        first = float(r[metric].iloc[0])
        hit = r[r[metric].astype(float) <= frac * first]
        out.append(float(hit["epoch"].iloc[0]) if not hit.empty else math.inf)
    if not out:
        raise NotMeasurable(f"{metric} not logged for {_label(sel)}")
    return float(np.mean(out))


def step_mean(df: pd.DataFrame, metric: str, lo: float, hi: float, **sel: object) -> float:
    """Mean of a per-update metric over the updates with lo < epoch ≤ hi, pooled over the done seeds."""
    d = select(df, **sel)
    st = step_rows(d[d["status"] == "done"])
    if metric not in st.columns:
        raise NotMeasurable(f"{metric} not logged")
    e = st["epoch"].astype(float)
    v = st.loc[(e > lo + 1e-9) & (e <= hi + 1e-9), metric].astype(float).dropna()
    if v.empty:
        raise NotMeasurable(f"no {_label(sel)} updates in epochs ({lo:g}, {hi:g}]")
    return float(v.mean())


def last_epoch(df: pd.DataFrame) -> float:
    ep = epoch_rows(df)
    return float(ep["epoch"].max()) if not ep.empty else 0.0


def rel_decrease(df: pd.DataFrame, metric: str, start: float, **sel: object) -> float:
    """Mean over done seeds of (m(start) − m(end)) / m(start): the fraction of the loss removed after ``start``."""
    d = select(df, **sel)
    if d.empty:
        raise NotMeasurable(f"no runs for {sel}")
    d = d[d["status"] == "done"]
    vals = []
    for _, r in epoch_rows(d).groupby("run_id"):
        r = r.dropna(subset=[metric]) if metric in r.columns else r.iloc[0:0]
        a = r.loc[np.isclose(r["epoch"].astype(float), start), metric]
        if r.empty or a.empty:
            continue
        a0, b = float(a.iloc[0]), float(r.sort_values("epoch")[metric].iloc[-1])
        vals.append((a0 - b) / a0 if a0 else 0.0)
    if not vals:
        return -math.inf  # every seed diverged: no progress
    return float(np.mean(vals))


def _opts(**vals: float) -> str:
    return ", ".join(f"{OPT_LABELS.get(k, k)} {fmt(v)}" for k, v in vals.items())


# ---------------------------------------------------------------------------------------------------------------
# The claims (thresholds are part of each definition)

FB_FRACTION = 0.1  # fig1: "fast" = epochs until the train loss is ≤ 10% of its initial value


def c_fb_lowest(df: pd.DataFrame) -> Measured:
    v = {o: final(df, "train_loss", optimizer__name=o) for o in ("gn", "adam", "sgd")}
    return Measured(_opts(**v), v["gn"] < min(v["adam"], v["sgd"]))


def c_fb_fastest(df: pd.DataFrame) -> Measured:
    v = {o: epochs_to_fraction(df, "train_loss", FB_FRACTION, optimizer__name=o) for o in ("gn", "adam", "sgd")}
    return Measured(_opts(**v) + " epochs", v["gn"] < min(v["adam"], v["sgd"]))


def _adam_vs_gn(metric: str, adam_better: Callable[[float, float], bool], diverged: float = math.inf):
    def check(df: pd.DataFrame) -> Measured:
        gn = final(df, metric, diverged=diverged, optimizer__name="gn")
        adam = final(df, metric, diverged=diverged, optimizer__name="adam")
        return Measured(_opts(adam=adam, gn=gn), adam_better(adam, gn))

    return check


def c_gn_fast_start(df: pd.DataFrame) -> Measured:
    gn = at_epoch(df, "train_loss", 1, optimizer__name="gn")
    adam = at_epoch(df, "train_loss", 1, optimizer__name="adam")
    return Measured(_opts(gn=gn, adam=adam) + " (epoch 1)", gn < adam)


def c_batch_drop(early: bool):
    def check(df: pd.DataFrame) -> Measured:
        E = last_epoch(df)
        lo, hi = (0.0, 1.0) if early else (E - 1.0, E)
        gn = step_mean(df, "loss_change_pct", lo, hi, optimizer__name="gn")
        adam = step_mean(df, "loss_change_pct", lo, hi, optimizer__name="adam")
        return Measured(_opts(gn=gn, adam=adam) + f" % (epochs {lo:g}–{hi:g})", gn < adam)

    return check


def _gn_above_adam(metric: str):
    def check(df: pd.DataFrame) -> Measured:
        gn = final(df, metric, diverged=math.nan, optimizer__name="gn")
        adam = final(df, metric, diverged=math.nan, optimizer__name="adam")
        return Measured(_opts(gn=gn, adam=adam), gn > adam)

    return check


def c_cka_last(df: pd.DataFrame) -> Measured:
    ks = cka_blocks(epoch_rows(df))
    if not ks:
        raise NotMeasurable("cka_block* not logged")
    m = _gn_above_adam(f"cka_block{max(ks)}")(df)
    return Measured(m.value + f" (block {max(ks)})", m.passed)


def c_cka_every_block(df: pd.DataFrame) -> Measured:
    ks = cka_blocks(epoch_rows(df))
    if not ks:
        raise NotMeasurable("cka_block* not logged")
    diffs = [final(df, f"cka_block{k}", diverged=math.nan, optimizer__name="gn")
             - final(df, f"cka_block{k}", diverged=math.nan, optimizer__name="adam") for k in ks]
    wins = sum(d > 0 for d in diffs)
    return Measured(f"GN > Adam in {wins}/{len(ks)} blocks; min GN − Adam {fmt(min(diffs))}", wins == len(ks))


def c_wcos(df: pd.DataFrame) -> Measured:
    hls = half_layers(epoch_rows(df))
    if not hls:
        raise NotMeasurable("wcos_* not logged")
    v = {o: float(np.mean([final(df, f"wcos_{h}", diverged=math.nan, optimizer__name=o) for h in hls]))
         for o in ("gn", "adam")}
    return Measured(_opts(**v) + f" (mean over {len(hls)} half-layers)", v["gn"] > v["adam"])


def c_long_plateau(df: pd.DataFrame) -> Measured:
    E = last_epoch(df)
    half = float(int(E // 2))
    gn = rel_decrease(df, "train_loss", half, optimizer__name="gn")
    adam = rel_decrease(df, "train_loss", half, optimizer__name="adam")
    return Measured(_opts(gn=gn, adam=adam) + f" (fraction of the train loss removed in epochs {half:g}–{E:g})",
                    gn < adam)


def c_switch(df: pd.DataFrame) -> Measured:
    sw = col(df, "train.switch_epoch").dropna()
    if sw.empty:
        raise NotMeasurable("no switch runs")
    s = float(sw.iloc[0])
    to_adam = rel_decrease(df, "train_loss", s, optimizer__name="gn", train__switch_to="adam")
    to_gn = rel_decrease(df, "train_loss", s, optimizer__name="adam", train__switch_to="gn")
    return Measured(f"GN→Adam {fmt(to_adam)}, Adam→GN {fmt(to_gn)} (fraction of the train loss removed after "
                    f"epoch {s:g})", to_adam > to_gn)


def c_nb_fullbatch(df: pd.DataFrame) -> Measured:
    return c_fb_lowest(select(df, regime__name="full_batch"))


def c_nb_minibatch(df: pd.DataFrame) -> Measured:
    return _adam_vs_gn("test_loss", lambda a, g: a < g)(select(df, regime__name="mini_batch"))


def _variants_above_adam(regs: tuple[str, ...]):
    def check(df: pd.DataFrame) -> Measured:
        adam = final(df, "test_loss", optimizer__name="adam")
        v = {r: final(df, "test_loss", optimizer__name="gn", regularizer__name=r) for r in regs}
        text = ", ".join(f"GN ({r}) {fmt(x)}" for r, x in v.items()) + f", Adam {fmt(adam)}"
        return Measured(text, min(v.values()) > adam)

    return check


CLAIMS: list[Claim] = [
    Claim("fig1.lowest_train_loss", "fig1",
          "Full batch: GN reaches a lower final train loss than Adam and SGD",
          "final train loss: GN < min(Adam, SGD)", c_fb_lowest),
    Claim("fig1.fastest", "fig1",
          f"Full batch: GN needs fewer epochs than Adam and SGD to bring the train loss to {FB_FRACTION:.0%} of its "
          "initial value", f"epochs to ≤ {FB_FRACTION:g}×initial: GN < min(Adam, SGD) (never = ∞)", c_fb_fastest),
    Claim("fig2.test_loss", "fig2", "Mini-batch: Adam's final test loss is below GN's",
          "final test loss: Adam < GN", _adam_vs_gn("test_loss", lambda a, g: a < g)),
    Claim("fig2.test_acc", "fig2", "Mini-batch: Adam's final test accuracy is above GN's",
          "final test accuracy: Adam > GN", _adam_vs_gn("test_acc", lambda a, g: a > g, diverged=0.0)),
    Claim("fig2.train_saturates", "fig2",
          "Mini-batch: GN's progress saturates even on the training loss — Adam ends with the lower train loss",
          "final train loss: Adam < GN", _adam_vs_gn("train_loss", lambda a, g: a < g)),
    Claim("fig2.fast_start", "fig2", "Mini-batch: GN leads early — its train loss after epoch 1 is below Adam's",
          "train loss at epoch 1: GN < Adam", c_gn_fast_start),
    Claim("fig3.batch_drop_early", "fig3",
          "GN's loss drop on the batch just used exceeds Adam's early in training (updates of epoch 1)",
          "mean loss change (%) over epoch-1 updates: GN < Adam", c_batch_drop(early=True)),
    Claim("fig3.batch_drop_late", "fig3",
          "GN still overfits each batch at the end: its loss drop on the batch just used exceeds Adam's in the last "
          "epoch", "mean loss change (%) over last-epoch updates: GN < Adam", c_batch_drop(early=False)),
    Claim("fig4.ntk_lazy", "fig4", "NTK similarity to init after training: GN > Adam (GN trains lazily)",
          "final ntk_sim_init: GN > Adam", _gn_above_adam("ntk_sim_init")),
    Claim("fig4.cka_last", "fig4", "CKA to init of the last block after training: GN > Adam",
          "final cka_block{L}: GN > Adam", c_cka_last),
    Claim("fig5.full_batch", "fig5", "No bottleneck, full batch: GN reaches a lower final train loss than Adam and SGD",
          "final train loss: GN < min(Adam, SGD)", c_nb_fullbatch),
    Claim("fig5.mini_batch", "fig5", "No bottleneck, mini-batch: Adam's final test loss is below GN's",
          "final test loss: Adam < GN", c_nb_minibatch),
    Claim("fig6.plateau", "fig6",
          "Long training: GN plateaus while Adam keeps improving — GN removes a smaller fraction of its train loss "
          "over the second half of training", "relative train-loss decrease over the second half: GN < Adam",
          c_long_plateau),
    Claim("fig7.switch", "fig7",
          "After the switch, GN→Adam lowers the train loss by a larger fraction than Adam→GN",
          "relative train-loss decrease after the switch: GN→Adam > Adam→GN", c_switch),
    Claim("fig9.weights_stay", "fig9",
          "GN's weights stay closer to their init: mean cosine(W_init, W_end) over half-layers, GN > Adam",
          "mean wcos at the end: GN > Adam", c_wcos),
    Claim("fig10.cka_every_block", "fig10", "CKA to init after training is higher for GN than for Adam in every block",
          "final cka_block{k}: GN > Adam for every k", c_cka_every_block),
    Claim("fig11.cka_every_block", "fig11",
          "Second setting: CKA to init after training is higher for GN than for Adam in every block",
          "final cka_block{k}: GN > Adam for every k", c_cka_every_block),
    Claim("fig13.weight_decay", "fig13", "Weight decay does not fix GN: GN + weight decay's final test loss is above "
          "Adam's", "final test loss: GN+wd > Adam", _variants_above_adam(("weight_decay",))),
    Claim("fig14.regularisers", "fig14",
          "No pseudoinverse regulariser fixes GN: with truncation, damping and noise GN's final test loss stays above "
          "Adam's", "final test loss: min over GN variants > Adam", _variants_above_adam(("truncation", "damping", "noise"))),
]


def claims_for(figures: Iterable[str]) -> list[Claim]:
    figs = list(figures)
    return [c for c in CLAIMS if c.figure in figs]


def evaluate(claims: list[Claim], results_dir: str | Path, scale: str, overrides: Iterable[str] = (), *,
             allow_partial: bool = False) -> list[Outcome]:
    """Every claim on every dataset its figure's runs cover; MISSING where the runs are absent. A present but
    unreadable run stops it (``CorruptRunError``) unless ``allow_partial``; a value measured without some of the
    figure's runs says which are missing."""
    from revgn_cli.figures.data import load_figure_runs, reproduce_command
    from revgn_cli.figures.registry import get

    ov = tuple(overrides)
    cache: dict[str, pd.DataFrame | MissingRunsError] = {}
    notes: dict[str, str] = {}
    out: list[Outcome] = []
    for c in claims:
        spec = get(c.figure)
        if c.figure not in cache:
            try:
                cache[c.figure], av = load_figure_runs(spec.name, scale, spec.presets_for(scale), results_dir, ov,
                                                       allow_partial=allow_partial)
                notes[c.figure] = "" if av.complete else f" [partial: {av.missing_note()}]"
            except MissingRunsError as e:
                cache[c.figure] = e
        df = cache[c.figure]
        if isinstance(df, MissingRunsError):
            out.append(Outcome(c, "—", f"no runs: `{reproduce_command(c.figure, scale, results_dir, ov)}`", "MISSING"))
            continue
        for ds in datasets(df):
            try:
                m = c.check(for_dataset(df, ds))
                out.append(Outcome(c, dataset_label(ds), m.value + notes[c.figure], "PASS" if m.passed else "FAIL"))
            except NotMeasurable as e:
                out.append(Outcome(c, dataset_label(ds), f"not measurable: {e}", "MISSING"))
    return out


def to_markdown(outcomes: list[Outcome], *, scale: str, results_dir: str | Path) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = {s: sum(o.status == s for o in outcomes) for s in ("PASS", "FAIL", "MISSING")}
    lines = [
        "# Paper claims checked on the results",
        "",
        f"Scale `{scale}`, results `{results_dir}`, {when}. "
        f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['MISSING']} MISSING. "
        "Values are means over the seeds that finished; the threshold is part of each claim's definition "
        "(revgn_cli/figures/claims.py).",
        "",
        "| figure | claim | dataset | measured | threshold | result |",
        "|---|---|---|---|---|---|",
    ]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    for o in outcomes:
        lines.append(f"| {o.claim.figure} | {esc(o.claim.text)} | {esc(o.dataset)} | {esc(o.value)} | "
                     f"{esc(o.claim.threshold)} | **{o.status}** |")
    return "\n".join(lines) + "\n"
