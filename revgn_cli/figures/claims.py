"""The paper's claims as checks on the results (``revgn verify``).

Each claim computes, for every seed, a *margin* signed so that > 0 is the paper's side (``threshold`` says which
difference), pairing the two sides by seed (only seeds both sides ran count). The verdict comes from the mean margin
and its 95 % Student-t interval over seeds (``revgn_cli.figures.verdict``): PASS when the interval lies on the
paper's side of zero, FAIL when it lies on the other side, INCONCLUSIVE when it contains zero (always with one seed),
MISSING when the runs it needs are not in the results dir. Nothing here knows or expects an outcome. A run that
diverged counts as an infinite loss (its margin is ±∞).
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
from revgn_cli.figures.verdict import Interval, seed_interval

LADDER_DOC = "docs/studies.md#5-scale-ladder--scaling"


class NotMeasurable(Exception):
    """The runs exist but lack what the claim needs (a series or a metric); reported as MISSING."""


@dataclass(frozen=True)
class Measured:
    value: str  # the sides' means over seeds, for reading
    margins: dict[int, float]  # seed → margin (> 0: the paper's side)


@dataclass(frozen=True)
class Claim:
    id: str
    figure: str
    text: str
    threshold: str  # the margin, written as "X > Y" (margin = X − Y)
    check: Callable[[pd.DataFrame], Measured]


@dataclass
class Outcome:
    claim: Claim
    dataset: str
    value: str
    status: str  # PASS | FAIL | INCONCLUSIVE | MISSING
    interval: Interval = Interval(math.nan, math.nan, 0)


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
# Per seed

SeedValues = dict[int, float]


def per_seed(fn: Callable[..., float], df: pd.DataFrame, *args: object, kw: dict | None = None,
             **sel: object) -> SeedValues:
    """seed → ``fn(rows of that seed, *args, **kw, **sel)`` for every seed the selection ``sel`` has runs for (seeds
    where the value is not measurable are left out; NotMeasurable when none is)."""
    d = select(df, **sel)
    seeds = sorted({int(v) for v in col(d, "seed").dropna()})
    if not seeds:
        raise NotMeasurable(f"no {_label(sel)} runs")
    out, err = {}, None
    seed_col = col(df, "seed")
    for s in seeds:
        try:
            out[s] = float(fn(df[seed_col == s], *args, **(kw or {}), **sel))
        except NotMeasurable as e:
            err = e
    if not out:
        raise err or NotMeasurable(f"nothing measurable for {_label(sel)}")
    return out


def diff(a: float, b: float) -> float:
    """a − b, with ∞ − ∞ = 0 (both sides never reached a target: a tie, not NaN)."""
    return 0.0 if a == b else a - b


def paired(f: Callable[..., float], *sides: SeedValues) -> SeedValues:
    """seed → f(side values) over the seeds every side has (the pairing by seed)."""
    common = sorted(set.intersection(*(set(s) for s in sides)))
    if not common:
        raise NotMeasurable("the two sides share no seed")
    return {s: f(*(side[s] for side in sides)) for s in common}


def mean_of(v: SeedValues) -> float:
    return float(np.mean(list(v.values())))


def _means(**sides: SeedValues) -> str:
    return _opts(**{k: mean_of(v) for k, v in sides.items()})


# ---------------------------------------------------------------------------------------------------------------
# The claims (thresholds are part of each definition)

FB_FRACTION = 0.1  # fig1: "fast" = epochs until the train loss is ≤ 10% of its initial value


def c_fb_lowest(df: pd.DataFrame) -> Measured:
    v = {o: per_seed(final, df, "train_loss", optimizer__name=o) for o in ("gn", "adam", "sgd")}
    return Measured(_means(**v), paired(lambda g, a, s: diff(min(a, s), g), v["gn"], v["adam"], v["sgd"]))


def c_fb_fastest(df: pd.DataFrame) -> Measured:
    v = {o: per_seed(epochs_to_fraction, df, "train_loss", FB_FRACTION, optimizer__name=o) for o in ("gn", "adam", "sgd")}
    return Measured(_means(**v) + " epochs", paired(lambda g, a, s: diff(min(a, s), g), v["gn"], v["adam"], v["sgd"]))


def _adam_vs_gn(metric: str, adam_better: int, diverged: float = math.inf):
    """adam_better = +1: the paper says Adam's metric is higher (margin Adam − GN); −1: lower (GN − Adam)."""
    def check(df: pd.DataFrame) -> Measured:
        gn = per_seed(final, df, metric, kw={"diverged": diverged}, optimizer__name="gn")
        adam = per_seed(final, df, metric, kw={"diverged": diverged}, optimizer__name="adam")
        f = (lambda a, g: diff(a, g)) if adam_better > 0 else (lambda a, g: diff(g, a))
        return Measured(_means(adam=adam, gn=gn), paired(f, adam, gn))

    return check


def c_gn_fast_start(df: pd.DataFrame) -> Measured:
    gn = per_seed(at_epoch, df, "train_loss", 1, optimizer__name="gn")
    adam = per_seed(at_epoch, df, "train_loss", 1, optimizer__name="adam")
    return Measured(_means(gn=gn, adam=adam) + " (epoch 1)", paired(diff, adam, gn))


def c_batch_drop(early: bool):
    def check(df: pd.DataFrame) -> Measured:
        E = last_epoch(df)
        lo, hi = (0.0, 1.0) if early else (E - 1.0, E)
        gn = per_seed(step_mean, df, "loss_change_pct", lo, hi, optimizer__name="gn")
        adam = per_seed(step_mean, df, "loss_change_pct", lo, hi, optimizer__name="adam")
        return Measured(_means(gn=gn, adam=adam) + f" % (epochs {lo:g}–{hi:g})", paired(diff, adam, gn))

    return check


def _gn_above_adam(metric: str):
    def check(df: pd.DataFrame) -> Measured:
        gn = per_seed(final, df, metric, kw={"diverged": math.nan}, optimizer__name="gn")
        adam = per_seed(final, df, metric, kw={"diverged": math.nan}, optimizer__name="adam")
        return Measured(_means(gn=gn, adam=adam), paired(diff, gn, adam))

    return check


def c_cka_last(df: pd.DataFrame) -> Measured:
    ks = cka_blocks(epoch_rows(df))
    if not ks:
        raise NotMeasurable("cka_block* not logged")
    m = _gn_above_adam(f"cka_block{max(ks)}")(df)
    return Measured(m.value + f" (block {max(ks)})", m.margins)


def c_cka_every_block(df: pd.DataFrame) -> Measured:
    ks = cka_blocks(epoch_rows(df))
    if not ks:
        raise NotMeasurable("cka_block* not logged")
    per_block = [_gn_above_adam(f"cka_block{k}")(df).margins for k in ks]
    margins = paired(lambda *d: min(d), *per_block)  # the worst block, per seed
    wins = sum(mean_of(m) > 0 for m in per_block)
    return Measured(f"GN > Adam (mean over seeds) in {wins}/{len(ks)} blocks; worst block GN − Adam "
                    f"{fmt(mean_of(margins))}", margins)


def c_wcos(df: pd.DataFrame) -> Measured:
    hls = half_layers(epoch_rows(df))
    if not hls:
        raise NotMeasurable("wcos_* not logged")

    def mean_wcos(d: pd.DataFrame, **sel: object) -> float:
        return float(np.mean([final(d, f"wcos_{h}", diverged=math.nan, **sel) for h in hls]))

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
        return Measured(text, paired(lambda a, *g: diff(min(g), a), adam, *v.values()))

    return check


CLAIMS: list[Claim] = [
    Claim("fig1.lowest_train_loss", "fig1",
          "Full batch: GN reaches a lower final train loss than Adam and SGD",
          "margin min(Adam, SGD) − GN of the final train loss > 0", c_fb_lowest),
    Claim("fig1.fastest", "fig1",
          f"Full batch: GN needs fewer epochs than Adam and SGD to bring the train loss to {FB_FRACTION:.0%} of its "
          "initial value", f"margin min(Adam, SGD) − GN of the epochs to ≤ {FB_FRACTION:g}×initial > 0 (never = ∞)", c_fb_fastest),
    Claim("fig2.test_loss", "fig2", "Mini-batch: Adam's final test loss is below GN's",
          "margin GN − Adam of the final test loss > 0", _adam_vs_gn("test_loss", -1)),
    Claim("fig2.test_acc", "fig2", "Mini-batch: Adam's final test accuracy is above GN's",
          "margin Adam − GN of the final test accuracy > 0", _adam_vs_gn("test_acc", +1, diverged=0.0)),
    Claim("fig2.train_saturates", "fig2",
          "Mini-batch: GN's progress saturates even on the training loss — Adam ends with the lower train loss",
          "margin GN − Adam of the final train loss > 0", _adam_vs_gn("train_loss", -1)),
    Claim("fig2.fast_start", "fig2", "Mini-batch: GN leads early — its train loss after epoch 1 is below Adam's",
          "margin Adam − GN of the train loss at epoch 1 > 0", c_gn_fast_start),
    Claim("fig3.batch_drop_early", "fig3",
          "GN's loss drop on the batch just used exceeds Adam's early in training (updates of epoch 1)",
          "margin Adam − GN of the mean loss change (%) over epoch-1 updates > 0", c_batch_drop(early=True)),
    Claim("fig3.batch_drop_late", "fig3",
          "GN still overfits each batch at the end: its loss drop on the batch just used exceeds Adam's in the last "
          "epoch", "margin Adam − GN of the mean loss change (%) over last-epoch updates > 0", c_batch_drop(early=False)),
    Claim("fig4.ntk_lazy", "fig4", "NTK similarity to init after training (the paper's feature-space sketch "
          "cos(K_0 ū, K_t ū)): GN > Adam (GN trains lazily)",
          "margin GN − Adam of the final ntk_feat_sim_init > 0", _gn_above_adam("ntk_feat_sim_init")),
    Claim("fig4.ntk_lazy_logit", "fig4", "Same, with revgn's own measure (full logit NTK on 100 samples, not the "
          "paper's quantity): GN > Adam", "margin GN − Adam of the final ntk_sim_init > 0", _gn_above_adam("ntk_sim_init")),
    Claim("fig4.cka_last", "fig4", "CKA to init of the last block after training: GN > Adam",
          "margin GN − Adam of the final cka_block{L} > 0", c_cka_last),
    Claim("fig5.full_batch", "fig5", "No bottleneck, full batch: GN reaches a lower final train loss than Adam and SGD",
          "margin min(Adam, SGD) − GN of the final train loss > 0", c_nb_fullbatch),
    Claim("fig5.mini_batch", "fig5", "No bottleneck, mini-batch: Adam's final test loss is below GN's",
          "margin GN − Adam of the final test loss > 0", c_nb_minibatch),
    Claim("fig6.plateau", "fig6",
          "Long training: GN plateaus while Adam keeps improving — GN removes a smaller fraction of its train loss "
          "over the second half of training", "margin Adam − GN of the relative train-loss decrease over the second half > 0",
          c_long_plateau),
    Claim("fig7.switch", "fig7",
          "After the switch, GN→Adam lowers the train loss by a larger fraction than Adam→GN",
          "margin (GN→Adam) − (Adam→GN) of the relative train-loss decrease after the switch > 0", c_switch),
    Claim("fig9.weights_stay", "fig9",
          "GN's weights stay closer to their init: mean cosine(W_init, W_end) over half-layers, GN > Adam",
          "margin GN − Adam of the mean wcos at the end > 0", c_wcos),
    Claim("fig10.cka_every_block", "fig10", "CKA to init after training is higher for GN than for Adam in every block",
          "margin min over blocks k of GN − Adam of the final cka_block{k} > 0", c_cka_every_block),
    Claim("fig11.cka_every_block", "fig11",
          "Second setting: CKA to init after training is higher for GN than for Adam in every block",
          "margin min over blocks k of GN − Adam of the final cka_block{k} > 0", c_cka_every_block),
    Claim("fig13.weight_decay", "fig13", "Weight decay does not fix GN: GN + weight decay's final test loss is above "
          "Adam's", "margin (GN+wd) − Adam of the final test loss > 0", _variants_above_adam(("weight_decay",))),
    Claim("fig14.regularisers", "fig14",
          "No pseudoinverse regulariser fixes GN: with truncation, damping and noise GN's final test loss stays above "
          "Adam's", "margin min over GN variants − Adam of the final test loss > 0",
          _variants_above_adam(("truncation", "damping", "noise"))),
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
            except NotMeasurable as e:
                out.append(Outcome(c, dataset_label(ds), f"not measurable: {e}", "MISSING"))
                continue
            iv = seed_interval(m.margins.values())
            out.append(Outcome(c, dataset_label(ds), m.value + notes[c.figure], iv.verdict, iv))
    return out


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    return {v: sum(o.status == v for o in outcomes) for v in ("PASS", "FAIL", "INCONCLUSIVE", "MISSING")}


def summary_line(outcomes: list[Outcome]) -> str:
    return ", ".join(f"{n} {v}" for v, n in counts(outcomes).items())


def margin_text(o: Outcome) -> str:
    return o.interval.describe(fmt) if o.status != "MISSING" else "—"


def to_markdown(outcomes: list[Outcome], *, scale: str, results_dir: str | Path) -> str:
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    seeds = sorted({o.interval.n for o in outcomes if o.interval.n})
    lines = [
        "# Paper claims checked on the results",
        "",
        f"Scale `{scale}`, results `{results_dir}`, {when}. {summary_line(outcomes)}.",
        "",
        "Each claim's margin is computed per seed (paired by seed, signed so that > 0 is the paper's side) and shown "
        "as mean ± the half-width of its 95 % Student-t interval over the seeds "
        f"(n = {'/'.join(map(str, seeds)) or '—'}; with 3 seeds t = 4.30, so the interval is wide). "
        "PASS: the interval lies above 0; FAIL: below 0; INCONCLUSIVE: it contains 0. "
        "Definitions: revgn_cli/figures/claims.py.",
        "",
        f"This is the `{scale}` scale, not the paper's (quick: mnist5k, h = 1024, batch 256, 192 updates against "
        "MNIST/CIFAR-10, h = 8000, batch 1024, ~5,900 updates). How each mini-batch claim's margin moves along each of "
        f"those axes: the scale ladder, {LADDER_DOC} (`revgn study run scaling scale=quick`).",
        "",
        "| figure | claim | dataset | measured (means over seeds) | margin | margin ± 95 % CI | n seeds | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    for o in outcomes:
        lines.append(f"| {o.claim.figure} | {esc(o.claim.text)} | {esc(o.dataset)} | {esc(o.value)} | "
                     f"{esc(o.claim.threshold)} | {esc(margin_text(o))} | {o.interval.n or '—'} | **{o.status}** |")
    return "\n".join(lines) + "\n"
