"""The paper's claims as checks on the results (``revgn verify``).

Each claim computes, for every seed, a *margin* signed so that > 0 is the paper's side (``threshold`` says which
difference), pairing the sides by seed. The verdict is ``revgn_cli.stats`` (the one implementation of the rules):
only finite pairs count; a seed where a side diverged gives no margin (NaN) and is reported per method as "k of n
seeds diverged", never as ±∞ evidence (nor as an accuracy of 0); fewer than 3 finite pairs is INSUFFICIENT. Each
claim declares its smallest effect size of interest (``sesoi``, with the reason): HOLDS / REVERSED need the 95 %
t-interval off zero, NEGLIGIBLE needs the effect shown to be below the SESOI (TOST). The main-text claims (figs 1–4)
form the primary family and the appendix claims a second one, each Holm-adjusted per protocol. Every claim is
judged under the paper protocol (the preset's rates) and the tuned protocol (``revgn tune``'s rates), side by side.
Nothing here knows or expects an outcome.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from revgn_cli.figures.data import MissingRunsError
from revgn_cli.figures.plots import cka_blocks, col, datasets, epoch_rows, for_dataset, half_layers, plain, step_rows
from revgn_cli.figures.protocols import PROTOCOLS, NoTunedRates
from revgn_cli.figures.style import OPT_LABELS, OPT_ORDER, dataset_label, fmt
from revgn_cli.stats import ALPHA, MIN_PAIRS, Verdict, diverged_text, judge, judge_family

LADDER_DOC = "docs/studies.md#5-scale-ladder--scaling"
REFERENCE_DOC = "docs/figures/claims.md"
PRIMARY = ("fig1", "fig2", "fig3", "fig4")  # the main-text figures: the primary family
STATUSES = ("HOLDS", "REVERSED", "NEGLIGIBLE", "INCONCLUSIVE", "INSUFFICIENT", "MISSING")


class NotMeasurable(Exception):
    """The runs exist but lack what the claim needs (a series or a metric); reported as MISSING."""


@dataclass(frozen=True)
class Measured:
    value: str  # the sides' means over seeds, for reading
    margins: dict[int, float]  # seed → margin (> 0: the paper's side; NaN where a side diverged)


@dataclass(frozen=True)
class Claim:
    id: str
    figure: str
    text: str
    threshold: str  # the margin, written as "X > Y" (margin = X − Y)
    check: Callable[[pd.DataFrame], Measured]
    sesoi: float  # the smallest margin that would matter, in the margin's units
    sesoi_why: str  # one phrase: why that size
    # presets the claim reads beyond its figure's, per scale (fig8 / fig12 compare GN with minibatch Adam)
    reference: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @property
    def primary(self) -> bool:
        return self.figure in PRIMARY


@dataclass
class Outcome:
    claim: Claim
    dataset: str
    value: str
    status: str  # a stats verdict (HOLDS … INSUFFICIENT) or MISSING
    protocol: str = "paper"
    verdict: Verdict | None = None
    diverged: str = ""  # "GN 1 of 10 diverged" (empty when nothing diverged)
    rates: str = ""  # the learning rate of each method in the runs judged


# ---------------------------------------------------------------------------------------------------------------
# Divergence tally: every per-seed measurement records, per side, how many of its seeds diverged.

_TALLY: contextvars.ContextVar[dict[str, tuple[int, int]] | None] = contextvars.ContextVar("claims_tally", default=None)


def _record(label: str, k: int, n: int) -> None:
    t = _TALLY.get()
    if t is not None:
        t[label] = (k, n)


def tallied(fn: Callable[[], Measured]) -> tuple[Measured, dict[str, tuple[int, int]]]:
    """Run a check and return what it measured with the per-side divergence counts {label: (k, n)}."""
    token = _TALLY.set({})
    try:
        m = fn()
        return m, dict(_TALLY.get() or {})
    finally:
        _TALLY.reset(token)


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
    if metric not in df.columns:
        return pd.Series(dtype=float)
    ep = epoch_rows(df[["run_id", "epoch", "split", metric]])  # three columns, not every config key
    ep = ep[np.isfinite(ep[metric].astype(float))]
    if ep.empty:
        return pd.Series(dtype=float)
    last = ep.loc[ep.groupby("run_id")["epoch"].idxmax()]
    return last.set_index("run_id")[metric].astype(float)


def _done(df: pd.DataFrame, **sel: object) -> pd.DataFrame:
    d = select(df, **sel)
    if d.empty:
        raise NotMeasurable(f"no {_label(sel)} runs")
    return d[d["status"] == "done"]


def final(df: pd.DataFrame, metric: str, **sel: object) -> float:
    """Mean over the done runs of the metric at the last epoch (NaN when none is done: diverged is no value)."""
    done = _done(df, **sel)
    if done.empty:
        return math.nan
    v = per_run_last(done, metric)
    if v.empty:
        raise NotMeasurable(f"{metric} not logged for {_label(sel)}")
    return float(v.mean())


def at_epoch(df: pd.DataFrame, metric: str, epoch: float, **sel: object) -> float:
    ep = epoch_rows(_done(df, **sel))
    if metric not in ep.columns:
        raise NotMeasurable(f"{metric} not logged")
    v = ep.loc[np.isclose(ep["epoch"].astype(float), epoch), metric].astype(float).dropna()
    if v.empty:
        raise NotMeasurable(f"{metric} at epoch {epoch:g} not logged")
    return float(v.mean())


def epochs_to_fraction(df: pd.DataFrame, metric: str, frac: float, **sel: object) -> float:
    """Mean over done runs of the first epoch at which ``metric`` ≤ frac × its epoch-0 value; a run that never gets
    there within its E epochs counts as E + 1 (censored: "later than the run")."""
    out = []
    for _, r in epoch_rows(_done(df, **sel)).groupby("run_id"):
        r = r.dropna(subset=[metric]).sort_values("epoch") if metric in r.columns else r.iloc[0:0]
        if r.empty:
            continue
        first = float(r[metric].iloc[0])
        hit = r[r[metric].astype(float) <= frac * first]
        out.append(float(hit["epoch"].iloc[0]) if not hit.empty else float(r["epoch"].max()) + 1.0)
    if not out:
        raise NotMeasurable(f"{metric} not logged for {_label(sel)}")
    return float(np.mean(out))


def step_mean(df: pd.DataFrame, metric: str, lo: float, hi: float, **sel: object) -> float:
    """Mean of a per-update metric over the updates with lo < epoch ≤ hi, pooled over the done runs."""
    st = step_rows(_done(df, **sel))
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
    """Mean over done runs of (m(start) − m(end)) / m(start): the fraction of the loss removed after ``start``."""
    vals = []
    for _, r in epoch_rows(_done(df, **sel)).groupby("run_id"):
        r = r.dropna(subset=[metric]) if metric in r.columns else r.iloc[0:0]
        a = r.loc[np.isclose(r["epoch"].astype(float), start), metric]
        if r.empty or a.empty:
            continue
        a0, b = float(a.iloc[0]), float(r.sort_values("epoch")[metric].iloc[-1])
        vals.append((a0 - b) / a0 if a0 else 0.0)
    if not vals:
        raise NotMeasurable(f"{metric} at epoch {start:g} not logged for {_label(sel)}")
    return float(np.mean(vals))


def curve(df: pd.DataFrame, metric: str, **sel: object) -> tuple[np.ndarray, np.ndarray]:
    """(train loss, metric) at the logged epochs of one seed's done run, in epoch order, both finite."""
    ep = epoch_rows(_done(df, **sel))
    if metric not in ep.columns or "train_loss" not in ep.columns:
        raise NotMeasurable(f"{metric} not logged for {_label(sel)}")
    ep = ep.sort_values("epoch")
    ok = np.isfinite(ep["train_loss"].astype(float)) & np.isfinite(ep[metric].astype(float))
    if not ok.any():
        raise NotMeasurable(f"{metric} not logged for {_label(sel)}")
    return ep.loc[ok, "train_loss"].to_numpy(float), ep.loc[ok, metric].to_numpy(float)


def at_level(loss: np.ndarray, metric: np.ndarray, level: float) -> float:
    """The metric where the train loss first reaches ``level``, linear in the loss between the two logged epochs
    that bracket the crossing (the first logged value when the run starts at or below it)."""
    hit = np.flatnonzero(loss <= level * (1 + 1e-12))
    if hit.size == 0:
        return math.nan
    i = int(hit[0])
    if i == 0 or loss[i - 1] == loss[i]:
        return float(metric[i])
    w = (loss[i - 1] - level) / (loss[i - 1] - loss[i])
    return float(metric[i - 1] + w * (metric[i] - metric[i - 1]))


def _opts(**vals: float) -> str:
    return ", ".join(f"{OPT_LABELS.get(k, k)} {fmt(v)}" for k, v in vals.items())


# ---------------------------------------------------------------------------------------------------------------
# Per seed

SeedValues = dict[int, float]


def _seeds(d: pd.DataFrame) -> list[int]:
    return sorted({int(v) for v in col(d, "seed").dropna()})


def _diverged(d: pd.DataFrame) -> bool:
    return bool((d["status"] == "diverged").any())


def per_seed(fn: Callable[..., float], df: pd.DataFrame, *args: object, kw: dict | None = None,
             **sel: object) -> SeedValues:
    """seed → ``fn(rows of that seed, *args, **kw, **sel)`` for every seed the selection ``sel`` has runs for.

    A seed whose run diverged gets NaN (no value: its pairs drop out) and is counted in the divergence tally; seeds
    where the value is not measurable are left out (NotMeasurable when nothing is measurable and nothing diverged).
    """
    d = select(df, **sel)
    seeds = _seeds(d)
    if not seeds:
        raise NotMeasurable(f"no {_label(sel)} runs")
    out, err = {}, None
    by_seed = dict(iter(d.groupby(col(d, "seed").astype(float))))  # fn re-selects ``sel``: its rows are enough
    n_div = 0
    for s in seeds:
        ds = by_seed[float(s)]
        if _diverged(ds):
            out[s], n_div = math.nan, n_div + 1
            continue
        try:
            out[s] = float(fn(ds, *args, **(kw or {}), **sel))
        except NotMeasurable as e:
            err = e
    _record(_label(sel), n_div, len(seeds))
    if not out:
        raise err or NotMeasurable(f"nothing measurable for {_label(sel)}")
    return out


def diff(a: float, b: float) -> float:
    return a - b


def paired(f: Callable[..., float], *sides: SeedValues) -> SeedValues:
    """seed → f(side values) over the seeds every side has (the pairing by seed); NaN where a side has no value."""
    common = sorted(set.intersection(*(set(s) for s in sides)))
    if not common:
        raise NotMeasurable("the sides share no seed")
    return {s: (f(*vals) if all(math.isfinite(v) for v in vals) else math.nan)
            for s in common for vals in [tuple(side[s] for side in sides)]}


def mean_of(v: SeedValues) -> float:
    """Mean over the seeds with a value (NaN when none has)."""
    x = [a for a in v.values() if math.isfinite(a)]
    return float(np.mean(x)) if x else math.nan


def _means(**sides: SeedValues) -> str:
    return _opts(**{k: mean_of(v) for k, v in sides.items()})


# ---------------------------------------------------------------------------------------------------------------
# The claims (thresholds are part of each definition)

FB_FRACTION = 0.1  # fig1: "fast" = epochs until the train loss is ≤ 10% of its initial value
LATE = 1 / 3  # fig2.train_saturates: the late part of the run (as fig6.plateau's second half)


def c_fb_lowest(df: pd.DataFrame) -> Measured:
    v = {o: per_seed(final, df, "train_loss", optimizer__name=o) for o in ("gn", "adam", "sgd")}
    return Measured(_means(**v), paired(lambda g, a, s: min(a, s) - g, v["gn"], v["adam"], v["sgd"]))


def c_fb_fastest(df: pd.DataFrame) -> Measured:
    v = {o: per_seed(epochs_to_fraction, df, "train_loss", FB_FRACTION, optimizer__name=o) for o in ("gn", "adam", "sgd")}
    return Measured(_means(**v) + " epochs", paired(lambda g, a, s: min(a, s) - g, v["gn"], v["adam"], v["sgd"]))


def _adam_vs_gn(metric: str, adam_better: int):
    """adam_better = +1: the paper says Adam's metric is higher (margin Adam − GN); −1: lower (GN − Adam)."""
    def check(df: pd.DataFrame) -> Measured:
        gn = per_seed(final, df, metric, optimizer__name="gn")
        adam = per_seed(final, df, metric, optimizer__name="adam")
        f = diff if adam_better > 0 else (lambda a, g: g - a)
        return Measured(_means(adam=adam, gn=gn), paired(f, adam, gn))

    return check


def _step_ratio_text(df: pd.DataFrame) -> str:
    """Each method's mean step_size_ratio = ‖J_Z Δθ‖/‖ε_Z‖ over its epoch-1 updates: how far its first steps move
    the logits, relative to the residual; the rates alone can decide a fast start."""
    vals = {}
    for o in ("gn", "adam"):
        try:
            vals[o] = mean_of(per_seed(step_mean, df, "step_size_ratio", 0.0, 1.0, optimizer__name=o))
        except NotMeasurable:
            return ""
    return f"; step size ‖JΔθ‖/‖ε‖ over epoch-1 updates: {_opts(**vals)}"


def c_gn_fast_start(df: pd.DataFrame) -> Measured:
    gn = per_seed(at_epoch, df, "train_loss", 1, optimizer__name="gn")
    adam = per_seed(at_epoch, df, "train_loss", 1, optimizer__name="adam")
    return Measured(_means(gn=gn, adam=adam) + " (train loss, epoch 1)" + _step_ratio_text(df), paired(diff, adam, gn))


def c_train_saturates(df: pd.DataFrame) -> Measured:
    E = last_epoch(df)
    start = float(round(E * (1 - LATE)))
    gn = per_seed(rel_decrease, df, "train_loss", start, optimizer__name="gn")
    adam = per_seed(rel_decrease, df, "train_loss", start, optimizer__name="adam")
    return Measured(_means(gn=gn, adam=adam) + f" (fraction of the train loss removed in epochs {start:g}–{E:g})",
                    paired(diff, adam, gn))


def c_batch_drop(early: bool):
    def check(df: pd.DataFrame) -> Measured:
        E = last_epoch(df)
        lo, hi = (0.0, 1.0) if early else (E - 1.0, E)
        gn = per_seed(step_mean, df, "loss_change_pct", lo, hi, optimizer__name="gn")
        adam = per_seed(step_mean, df, "loss_change_pct", lo, hi, optimizer__name="adam")
        return Measured(_means(gn=gn, adam=adam) + f" % (epochs {lo:g}–{hi:g})", paired(diff, adam, gn))

    return check


def _gn_above_adam(metric: str, spread: str | None = None):
    def check(df: pd.DataFrame) -> Measured:
        gn = per_seed(final, df, metric, optimizer__name="gn")
        adam = per_seed(final, df, metric, optimizer__name="adam")
        extra = ""
        if spread and spread in df.columns:
            try:  # NaN with a single probe: then there is no spread to show
                s = {o: mean_of(per_seed(final, df, spread, optimizer__name=o)) for o in ("gn", "adam")}
                extra = f"; probe spread (sd of per-probe cosines): {_opts(**s)}"
            except NotMeasurable:
                pass
        return Measured(_means(gn=gn, adam=adam) + extra, paired(diff, gn, adam))

    return check


def _last_cka(df: pd.DataFrame) -> str:
    ks = cka_blocks(epoch_rows(df))
    if not ks:
        raise NotMeasurable("cka_block* not logged")
    return f"cka_block{max(ks)}"


def c_cka_last(df: pd.DataFrame) -> Measured:
    metric = _last_cka(df)
    m = _gn_above_adam(metric)(df)
    return Measured(m.value + f" ({metric})", m.margins)


def res_branches(df: pd.DataFrame) -> list[str]:
    """The logged residual-branch CKA columns cka_resF1, cka_resG1, cka_resF2, … in network order."""
    names = [c for c in df.columns if c.startswith(("cka_resF", "cka_resG")) and c[8:].isdigit() and df[c].notna().any()]
    return sorted(names, key=lambda c: (int(c[8:]), c[7]))


def c_cka_res_last(df: pd.DataFrame) -> Measured:
    br = res_branches(epoch_rows(df))
    if not br:
        raise NotMeasurable("cka_resF*/cka_resG* not logged")
    last = [b for b in br if b[8:] == br[-1][8:]]

    def mean_res(d: pd.DataFrame, **sel: object) -> float:
        return float(np.mean([final(d, b, **sel) for b in last]))

    v = {o: per_seed(mean_res, df, optimizer__name=o) for o in ("gn", "adam")}
    return Measured(_means(**v) + f" (mean of {', '.join(last)})", paired(diff, v["gn"], v["adam"]))


def _min_over(df: pd.DataFrame, metrics: list[str], what: str) -> Measured:
    """Per seed the worst (smallest) GN − Adam margin over ``metrics``."""
    per = [_gn_above_adam(m)(df).margins for m in metrics]
    margins = paired(lambda *d: min(d), *per)
    wins = sum(mean_of(m) > 0 for m in per)
    return Measured(f"GN > Adam (mean over seeds) in {wins}/{len(metrics)} {what}; worst GN − Adam "
                    f"{fmt(mean_of(margins))}", margins)


def c_cka_every_block(df: pd.DataFrame) -> Measured:
    ks = cka_blocks(epoch_rows(df))
    if not ks:
        raise NotMeasurable("cka_block* not logged")
    return _min_over(df, [f"cka_block{k}" for k in ks], "blocks")


def c_cka_res_every_branch(df: pd.DataFrame) -> Measured:
    br = res_branches(epoch_rows(df))
    if not br:
        raise NotMeasurable("cka_resF*/cka_resG* not logged")
    return _min_over(df, br, "residual branches")


def _matched(metric_of: Callable[[pd.DataFrame], str]):
    """GN − Adam of a laziness metric where both runs of a seed reach the same train loss: the level is the lowest
    train loss both reach, ℓ* = max(min ℓ_GN, min ℓ_Adam) over their logged epochs; each run's metric is read where
    its train loss first reaches ℓ*, linear in the loss between the two logged epochs around the crossing."""
    def check(df: pd.DataFrame) -> Measured:
        metric = metric_of(df)
        sides = {o: select(df, optimizer__name=o) for o in ("gn", "adam")}
        seeds = {o: _seeds(d) for o, d in sides.items()}
        for o, d in sides.items():
            if not seeds[o]:
                raise NotMeasurable(f"no {OPT_LABELS[o]} runs")
            _record(OPT_LABELS[o], sum(_diverged(d[col(d, "seed") == s]) for s in seeds[o]), len(seeds[o]))
        common = sorted(set(seeds["gn"]) & set(seeds["adam"]))
        margins, levels, vals = {}, [], {"gn": [], "adam": []}
        seed_col = col(df, "seed")
        for s in common:
            ds = df[seed_col == s]
            if any(_diverged(d[col(d, "seed") == s]) for d in sides.values()):
                margins[s] = math.nan
                continue
            try:
                cv = {o: curve(ds, metric, optimizer__name=o) for o in sides}
            except NotMeasurable:
                continue
            level = max(float(cv["gn"][0].min()), float(cv["adam"][0].min()))
            at = {o: at_level(*cv[o], level) for o in cv}
            margins[s] = at["gn"] - at["adam"]
            levels.append(level)
            for o in at:
                vals[o].append(at[o])
        if not margins:
            raise NotMeasurable(f"{metric} not logged with the train loss")
        text = _opts(**{o: float(np.mean(v)) if v else math.nan for o, v in vals.items()})
        return Measured(f"{text} ({metric} at matched train loss, mean level {fmt(float(np.mean(levels)) if levels else math.nan)})",
                        margins)

    return check


def c_wcos(df: pd.DataFrame) -> Measured:
    hls = half_layers(epoch_rows(df))
    if not hls:
        raise NotMeasurable("wcos_* not logged")

    def mean_wcos(d: pd.DataFrame, **sel: object) -> float:
        return float(np.mean([final(d, f"wcos_{h}", **sel) for h in hls]))

    v = {o: per_seed(mean_wcos, df, optimizer__name=o) for o in ("gn", "adam")}
    return Measured(_means(**v) + f" (mean over {len(hls)} half-layers)", paired(diff, v["gn"], v["adam"]))


def c_long_plateau(df: pd.DataFrame) -> Measured:
    E = last_epoch(df)
    half = float(int(E // 2))
    gn = per_seed(rel_decrease, df, "train_loss", half, optimizer__name="gn")
    adam = per_seed(rel_decrease, df, "train_loss", half, optimizer__name="adam")
    return Measured(_means(gn=gn, adam=adam) + f" (fraction of the train loss removed in epochs {half:g}–{E:g})",
                    paired(diff, adam, gn))


def c_switch(df: pd.DataFrame) -> Measured:
    sw = col(df, "train.switch_epoch").dropna()
    if sw.empty:
        raise NotMeasurable("no switch runs")
    s = float(sw.iloc[0])
    to_adam = per_seed(rel_decrease, df, "train_loss", s, optimizer__name="gn", train__switch_to="adam")
    to_gn = per_seed(rel_decrease, df, "train_loss", s, optimizer__name="adam", train__switch_to="gn")
    return Measured(f"GN→Adam {fmt(mean_of(to_adam))}, Adam→GN {fmt(mean_of(to_gn))} (fraction of the train loss "
                    f"removed after epoch {s:g})", paired(diff, to_adam, to_gn))


def c_nb_fullbatch(df: pd.DataFrame) -> Measured:
    return c_fb_lowest(select(df, regime__name="full_batch"))


def c_nb_minibatch(df: pd.DataFrame) -> Measured:
    return _adam_vs_gn("test_loss", -1)(select(df, regime__name="mini_batch"))


def _variants_above_adam(regs: tuple[str, ...]):
    def check(df: pd.DataFrame) -> Measured:
        adam = per_seed(final, df, "test_loss", optimizer__name="adam")
        v = {r: per_seed(final, df, "test_loss", optimizer__name="gn", regularizer__name=r) for r in regs}
        text = ", ".join(f"GN ({r}) {fmt(mean_of(x))}" for r, x in v.items()) + f", Adam {fmt(mean_of(adam))}"
        return Measured(text, paired(lambda a, *g: min(g) - a, adam, *v.values()))

    return check


def _gn_sweep_above_adam(key: str, label: str):
    """fig8 / fig12: GN's final test loss at every value of ``key`` it was run with stays above Adam's (Adam at its
    own rate and init): per seed, min over the values of GN(value) − Adam."""
    def check(df: pd.DataFrame) -> Measured:
        gn_runs = select(df, optimizer__name="gn")
        values = sorted({float(v) for v in col(gn_runs, key).dropna()}, reverse=True)
        if not values:
            raise NotMeasurable(f"no GN runs with {key}")
        adam = per_seed(final, df, "test_loss", optimizer__name="adam")
        sel = lambda v: {"optimizer__name": "gn", key.replace(".", "__"): next(  # noqa: E731
            x for x in col(gn_runs, key).dropna().unique() if float(x) == v)}
        v = {x: per_seed(final, df, "test_loss", **sel(x)) for x in values}
        text = ", ".join(f"GN ({label} {x:g}) {fmt(mean_of(s))}" for x, s in v.items()) + f", Adam {fmt(mean_of(adam))}"
        return Measured(text, paired(lambda a, *g: min(g) - a, adam, *v.values()))

    return check


def c_acc_gap(df: pd.DataFrame) -> Measured:
    def gap(d: pd.DataFrame, **sel: object) -> float:
        return final(d, "train_acc", **sel) - final(d, "test_acc", **sel)

    v = {o: per_seed(gap, df, optimizer__name=o) for o in ("gn", "adam")}
    return Measured(_means(**v) + " (train − test accuracy at the end)", paired(diff, v["gn"], v["adam"]))


# SESOIs, one per unit: why that size is the smallest difference worth a claim.
NATS = (0.01, "0.01 nats of loss: below it the curves overlap at plotting resolution")
ACC = (0.005, "half a point of accuracy (5 of the 1,000 quick test images)")
SIM = (0.01, "0.01 of a similarity in [0, 1]: a 1 % change of alignment to init")
FRAC = (0.02, "2 % of the loss: a plateau and a slow descent differ by more")
EPOCH = (1.0, "one epoch, the resolution of the epoch log")
POINTS = (1.0, "one percentage point of the batch loss")
MB_REF = {"quick": ("minibatch_quick",), "paper": ("minibatch_paper_cifar",)}

CLAIMS: list[Claim] = [
    Claim("fig1.lowest_train_loss", "fig1",
          "Full batch: GN reaches a lower final train loss than Adam and SGD",
          "margin min(Adam, SGD) − GN of the final train loss > 0", c_fb_lowest, *NATS),
    Claim("fig1.fastest", "fig1",
          f"Full batch: GN needs fewer epochs than Adam and SGD to bring the train loss to {FB_FRACTION:.0%} of its "
          "initial value", f"margin min(Adam, SGD) − GN of the epochs to ≤ {FB_FRACTION:g}×initial > 0 "
          "(never = the run's length + 1)", c_fb_fastest, *EPOCH),
    Claim("fig2.test_loss", "fig2", "Mini-batch: Adam's final test loss is below GN's",
          "margin GN − Adam of the final test loss > 0", _adam_vs_gn("test_loss", -1), *NATS),
    Claim("fig2.test_acc", "fig2", "Mini-batch: Adam's final test accuracy is above GN's",
          "margin Adam − GN of the final test accuracy > 0", _adam_vs_gn("test_acc", +1), *ACC),
    Claim("fig2.train_saturates", "fig2",
          "Mini-batch: GN's progress saturates even on the training loss — late in the run it removes a smaller "
          "fraction of its train loss than Adam", "margin Adam − GN of the relative train-loss decrease over the last "
          "third of the run > 0", c_train_saturates, *FRAC),
    Claim("fig2.fast_start", "fig2", "Mini-batch: GN leads early — its train loss after epoch 1 is below Adam's "
          "(each method's first-step size ‖JΔθ‖/‖ε‖ beside it)",
          "margin Adam − GN of the train loss at epoch 1 > 0", c_gn_fast_start, *NATS),
    Claim("fig3.batch_drop_early", "fig3",
          "GN's loss drop on the batch just used exceeds Adam's early in training (updates of epoch 1)",
          "margin Adam − GN of the mean loss change (%) over epoch-1 updates > 0", c_batch_drop(early=True), *POINTS),
    Claim("fig3.batch_drop_late", "fig3",
          "GN still overfits each batch at the end: its loss drop on the batch just used exceeds Adam's in the last "
          "epoch", "margin Adam − GN of the mean loss change (%) over last-epoch updates > 0", c_batch_drop(early=False),
          *POINTS),
    Claim("fig4.ntk_lazy", "fig4", "NTK similarity to init after training (the paper's feature-space sketch, "
          "Hutchinson alignment over independent probes): GN > Adam (GN trains lazily)",
          "margin GN − Adam of the final ntk_feat_sim_init > 0", _gn_above_adam("ntk_feat_sim_init", "ntk_feat_sim_spread"),
          *SIM),
    Claim("fig4.ntk_lazy_matched", "fig4", "The same at matched train loss: where GN and Adam first reach the same "
          "train loss, GN's NTK similarity to init is higher",
          "margin GN − Adam of ntk_feat_sim_init at the lowest train loss both reach > 0",
          _matched(lambda df: "ntk_feat_sim_init"), *SIM),
    Claim("fig4.ntk_lazy_logit", "fig4", "Same, with revgn's own measure (full logit NTK on 100 samples, not the "
          "paper's quantity): GN > Adam", "margin GN − Adam of the final ntk_sim_init > 0", _gn_above_adam("ntk_sim_init"),
          *SIM),
    Claim("fig4.cka_last", "fig4", "CKA to init of the last block after training: GN > Adam",
          "margin GN − Adam of the final cka_block{L} > 0", c_cka_last, *SIM),
    Claim("fig4.cka_last_matched", "fig4", "The same at matched train loss: GN's last-block CKA to init is higher "
          "where both reach the same train loss", "margin GN − Adam of cka_block{L} at the lowest train loss both "
          "reach > 0", _matched(_last_cka), *SIM),
    Claim("fig4.cka_res_last", "fig4", "Residual-branch CKA to init of the last block (F_L(x₂), G_L(y₁): the part "
          "that moves, without the identity path): GN > Adam",
          "margin GN − Adam of the final mean of cka_resF{L}, cka_resG{L} > 0", c_cka_res_last, *SIM),
    Claim("fig5.full_batch", "fig5", "No bottleneck, full batch: GN reaches a lower final train loss than Adam and SGD",
          "margin min(Adam, SGD) − GN of the final train loss > 0", c_nb_fullbatch, *NATS),
    Claim("fig5.mini_batch", "fig5", "No bottleneck, mini-batch: Adam's final test loss is below GN's",
          "margin GN − Adam of the final test loss > 0", c_nb_minibatch, *NATS),
    Claim("fig6.plateau", "fig6",
          "Long training: GN plateaus while Adam keeps improving — GN removes a smaller fraction of its train loss "
          "over the second half of training", "margin Adam − GN of the relative train-loss decrease over the second half > 0",
          c_long_plateau, *FRAC),
    Claim("fig7.switch", "fig7",
          "After the switch, GN→Adam lowers the train loss by a larger fraction than Adam→GN",
          "margin (GN→Adam) − (Adam→GN) of the relative train-loss decrease after the switch > 0", c_switch, *FRAC),
    Claim("fig8.no_init_fixes", "fig8", "No init scale fixes GN: at every init std GN's final test loss stays above "
          "Adam's", "margin min over init std of GN − Adam of the final test loss > 0",
          _gn_sweep_above_adam("model.init_std", "init std"), *NATS, reference=MB_REF),
    Claim("fig9.weights_stay", "fig9",
          "GN's weights stay closer to their init: mean cosine(W_init, W_end) over half-layers, GN > Adam",
          "margin GN − Adam of the mean wcos at the end > 0", c_wcos, *SIM),
    Claim("fig10.cka_every_block", "fig10", "CKA to init after training is higher for GN than for Adam in every block",
          "margin min over blocks k of GN − Adam of the final cka_block{k} > 0", c_cka_every_block, *SIM),
    Claim("fig10.cka_res_every_branch", "fig10", "Residual-branch CKA to init is higher for GN than for Adam in every "
          "branch F_k, G_k", "margin min over branches of GN − Adam of the final cka_res* > 0", c_cka_res_every_branch,
          *SIM),
    Claim("fig11.cka_every_block", "fig11",
          "Second setting: CKA to init after training is higher for GN than for Adam in every block",
          "margin min over blocks k of GN − Adam of the final cka_block{k} > 0", c_cka_every_block, *SIM),
    Claim("fig12.no_lr_fixes", "fig12", "No learning rate fixes GN: at every lr GN's final test loss stays above "
          "Adam's", "margin min over lr of GN − Adam of the final test loss > 0",
          _gn_sweep_above_adam("optimizer.lr", "lr"), *NATS, reference=MB_REF),
    Claim("fig13.weight_decay", "fig13", "Weight decay does not fix GN: GN + weight decay's final test loss is above "
          "Adam's", "margin (GN+wd) − Adam of the final test loss > 0", _variants_above_adam(("weight_decay",)), *NATS),
    Claim("fig14.regularisers", "fig14",
          "No pseudoinverse regulariser fixes GN: with truncation, damping and noise GN's final test loss stays above "
          "Adam's", "margin min over GN variants − Adam of the final test loss > 0",
          _variants_above_adam(("truncation", "damping", "noise")), *NATS),
    Claim("fig15.generalisation_gap", "fig15", "Mini-batch, every dataset: GN's generalisation gap (train − test "
          "accuracy) is larger than Adam's", "margin GN − Adam of the final train − test accuracy > 0", c_acc_gap, *ACC),
]


def claims_for(figures: Iterable[str]) -> list[Claim]:
    figs = list(figures)
    return [c for c in CLAIMS if c.figure in figs]


def claim_presets(claim: Claim, scale: str) -> tuple[str, ...]:
    """The presets a claim reads: its figure's, then its reference presets (each once)."""
    from revgn_cli.figures.registry import FIGURES

    out = list(FIGURES[claim.figure].presets_for(scale))
    for p in claim.reference.get(scale, ()):
        if p not in out:
            out.append(p)
    return tuple(out)


def _rates(df: pd.DataFrame) -> str:
    """"GN 0.1, Adam 0.0001": the learning rate(s) of each optimiser in the runs a claim read."""
    d = plain(df)
    names = [str(o) for o in col(d, "optimizer.name").dropna().unique()]
    parts = []
    for o in sorted(names, key=lambda n: (OPT_ORDER.index(n) if n in OPT_ORDER else 99, n)):
        lrs = sorted({float(v) for v in col(d[col(d, "optimizer.name") == o], "optimizer.lr").dropna()}, reverse=True)
        if lrs:
            parts.append(f"{OPT_LABELS.get(o, o)} {'/'.join(f'{v:g}' for v in lrs)}")
    return ", ".join(parts)


def _judge_one(c: Claim, df: pd.DataFrame) -> tuple[Measured, Verdict, str]:
    m, tally = tallied(lambda: c.check(df))
    return m, judge(m.margins, c.sesoi), diverged_text(tally)


def evaluate(claims: list[Claim], results_dir: str | Path, scale: str, overrides: Iterable[str] = (), *,
             allow_partial: bool = False, protocols: Iterable[str] = PROTOCOLS) -> list[Outcome]:
    """Every claim on every dataset its runs cover, under each protocol; MISSING where the runs (or, for the tuned
    protocol, the tune record) are absent. Then Holm per (protocol, family). A present but unreadable run stops it
    (``CorruptRunError``) unless ``allow_partial``; a value measured without some runs says which are missing."""
    from revgn_cli.figures.data import load_figure_runs, reproduce_command
    from revgn_cli.figures.protocols import variants_for

    ov = tuple(overrides)
    cache: dict[tuple, tuple[pd.DataFrame, str] | str] = {}
    out: list[Outcome] = []
    for proto in protocols:
        for c in claims:
            presets = claim_presets(c, scale)
            key = (proto, presets)
            if key not in cache:
                try:
                    variants = variants_for(presets, proto, results_dir, ov)
                    df, av = load_figure_runs(c.figure, scale, presets, results_dir, ov, allow_partial=allow_partial,
                                              variants=variants)
                    cache[key] = (df, "" if av.complete else f" [partial: {av.missing_note()}]")
                except NoTunedRates as e:
                    cache[key] = str(e) if "no tuned rates" in str(e) else f"no tuned rates: {e}"
                except MissingRunsError:
                    cache[key] = (f"no runs: `{reproduce_command(c.figure, scale, results_dir, ov)}`"
                                  + (" protocol=tuned" if proto == "tuned" else ""))
            got = cache[key]
            if isinstance(got, str):
                out.append(Outcome(c, "—", got, "MISSING", proto))
                continue
            df, note = got
            df = df.copy()  # one consolidated block per dtype: the many per-seed row selections get ~10x cheaper
            for ds in datasets(df):
                d = for_dataset(df, ds)
                try:
                    m, v, div = _judge_one(c, d)
                except NotMeasurable as e:
                    out.append(Outcome(c, dataset_label(ds), f"not measurable: {e}", "MISSING", proto, rates=_rates(d)))
                    continue
                out.append(Outcome(c, dataset_label(ds), m.value + note, v.verdict, proto, v, div, _rates(d)))
    return holm_families(out)


def holm_families(outcomes: list[Outcome]) -> list[Outcome]:
    """Re-judge each (protocol, primary/appendix) family on Holm-adjusted p-values (MISSING rows stay out)."""
    fams: dict[tuple[str, bool], list[int]] = {}
    for i, o in enumerate(outcomes):
        if o.verdict is not None:
            fams.setdefault((o.protocol, o.claim.primary), []).append(i)
    out = list(outcomes)
    for idx in fams.values():
        for i, v in zip(idx, judge_family([outcomes[i].verdict for i in idx])):
            out[i] = replace(outcomes[i], verdict=v, status=v.verdict)
    return out


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    return {v: sum(o.status == v for o in outcomes) for v in STATUSES}


def summary_line(outcomes: list[Outcome]) -> str:
    parts = []
    for proto in dict.fromkeys(o.protocol for o in outcomes):
        c = counts([o for o in outcomes if o.protocol == proto])
        parts.append(f"{proto} protocol: " + ", ".join(f"{n} {v}" for v, n in c.items() if n))
    return "; ".join(parts)


def margin_text(o: Outcome) -> str:
    return o.verdict.describe(fmt) if o.verdict is not None else "—"


def pairs_text(o: Outcome) -> str:
    if o.verdict is None:
        return "—"
    n = f"{o.verdict.n}"
    return n + (f" ({o.diverged})" if o.diverged else "")


def p_text(p: float) -> str:
    if p is None or math.isnan(p):
        return "—"
    return "< 0.001" if p < 1e-3 else f"{p:.3f}"


def protocol_text(o: Outcome) -> str:
    return f"{o.protocol}" + (f" ({o.rates})" if o.rates else "")


def row_cells(o: Outcome) -> list[str]:
    """claim, dataset, protocol (rates), means per method, margin ± CI, n finite pairs, SESOI, p, p (Holm), verdict."""
    v = o.verdict
    return [o.claim.id, o.dataset, protocol_text(o), o.value, margin_text(o), pairs_text(o), f"{o.claim.sesoi:g}",
            p_text(v.p) if v else "—", p_text(v.p_adj) if v else "—", o.status]


COLUMNS = ("claim", "dataset", "protocol (rates)", "means per method", "margin ± 95 % CI", "n finite pairs",
           "SESOI", "p", "p (Holm)", "verdict")


def seeds_note(overrides: Iterable[str]) -> str:
    """"indicative (3 seeds)" when the seeds were overridden (``seed=42,43,44``): not the reference set."""
    for o in overrides:
        if o.startswith("seed="):
            n = len([s for s in o.split("=", 1)[1].split(",") if s.strip()])
            return f"indicative ({n} seed{'s' if n != 1 else ''}): the reference set is {REFERENCE_DOC}"
    return ""


def to_markdown(outcomes: list[Outcome], *, scale: str, results_dir: str | Path, note: str = "") -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [
        "# Paper claims checked on the results",
        "",
        f"Scale `{scale}`, results `{results_dir}`, {when}. {summary_line(outcomes)}.",
        "",
    ]
    if note:
        lines += [f"**Verdicts {note}.**", ""]
    lines += [
        "Each claim's margin is computed per seed (paired by seed, signed so that > 0 is the paper's side); a seed "
        "where a side diverged gives no margin and is counted apart (\"k of n diverged\"). Verdicts "
        f"(α = {ALPHA:g}, at least {MIN_PAIRS} finite pairs): HOLDS — the 95 % t-interval lies above 0; REVERSED — "
        "below 0; NEGLIGIBLE — the 90 % interval lies inside ± the claim's SESOI (equivalence, TOST); INCONCLUSIVE — "
        "none of these; INSUFFICIENT — fewer than 3 finite pairs; MISSING — no runs (or no tune record). The "
        "main-text claims (fig1–fig4) are one family and the appendix claims another, each Holm-adjusted per "
        "protocol; the verdict uses the adjusted p (p (Holm)). Paper protocol: the preset's learning rates; tuned "
        "protocol: the rates `revgn tune` chose on a validation split. How claims are judged: docs/figures.md; "
        "definitions: revgn_cli/figures/claims.py.",
        "",
        f"This is the `{scale}` scale, not the paper's. How each mini-batch claim's margin moves toward the paper's "
        f"setting: the scale ladder, {LADDER_DOC} (`revgn study run scaling scale=quick`).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for o in outcomes:
        cells = row_cells(o)
        cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(esc(c) for c in cells) + " |")
    lines += ["", "## Definitions", "", "| claim | figure | claim text | margin | SESOI (why) |", "|---|---|---|---|---|"]
    for c in dict.fromkeys(o.claim for o in outcomes):
        lines.append(f"| {c.id} | {c.figure} | {esc(c.text)} | {esc(c.threshold)} | {c.sesoi:g} ({esc(c.sesoi_why)}) |")
    return "\n".join(lines) + "\n"
