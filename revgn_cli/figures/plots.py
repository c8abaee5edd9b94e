"""One small function per paper figure: metrics rows (from ``load_runs``) → a matplotlib ``Figure``.

Every function takes the figure's rows (config columns flattened with dots, ``status``, ``split``) and a
``PlotContext`` and only draws: rows come from ``revgn_cli.figures.data.load_figure_runs``; saving is the
registry's job. Panels are one row per dataset present (quick scale has one, mnist5k).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from revgn_cli.figures.style import (
    OPT_COLOURS, OPT_LABELS, VARIANT_COLOURS, dataset_label, finish, label_axes, legend, metric_label, new_figure,
    order_optimizers, plot_series, sequential_colours, style,
)

DATASET_ORDER = ("mnist5k", "digits", "mnist", "cifar10")


@dataclass(frozen=True)
class PlotContext:
    name: str  # fig1 …
    title: str  # suptitle
    scale: str = "quick"


@dataclass(frozen=True)
class Series:
    label: str
    color: str
    rows: pd.DataFrame
    linestyle: str = "-"


SeriesFn = Callable[[pd.DataFrame], Iterator[Series]]

# ---------------------------------------------------------------------------------------------------------------
# Row selection helpers


def epoch_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["split"] == "epoch"]


def step_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["split"] == "step"]


def col(df: pd.DataFrame, key: str) -> pd.Series:
    """A config column, or NaN when the rows do not carry it (e.g. synthetic rows)."""
    return df[key] if key in df.columns else pd.Series(np.nan, index=df.index)


def datasets(df: pd.DataFrame) -> list[str]:
    names = [str(n) for n in col(df, "dataset.name").dropna().unique()]
    return sorted(names, key=lambda n: (DATASET_ORDER.index(n) if n in DATASET_ORDER else 99, n)) or ["?"]


def for_dataset(df: pd.DataFrame, ds: str) -> pd.DataFrame:
    return df if ds == "?" else df[col(df, "dataset.name").astype(str) == ds]


def plain(df: pd.DataFrame) -> pd.DataFrame:
    """Runs without an optimiser switch."""
    sw = col(df, "train.switch_to")
    return df[sw.isna() | (sw.astype(str).isin(["None", "nan", ""]))]


# ---------------------------------------------------------------------------------------------------------------
# Series: how a figure splits its runs into curves


def by_optimizer(df: pd.DataFrame) -> Iterator[Series]:
    d = plain(df)
    for opt in order_optimizers([str(o) for o in col(d, "optimizer.name").dropna().unique()]):
        yield Series(OPT_LABELS.get(opt, opt), OPT_COLOURS.get(opt, "#7f7f7f"), d[col(d, "optimizer.name") == opt])


def by_value(key: str, fmt: Callable[[float], str]) -> SeriesFn:
    """GN runs split by a swept numeric config value (lr, init std), one sequential colour each."""

    def fn(df: pd.DataFrame) -> Iterator[Series]:
        d = plain(df)
        values = sorted(col(d, key).dropna().unique(), reverse=True)
        for v, c in zip(values, sequential_colours(len(values))):
            yield Series(fmt(v), c, d[col(d, key) == v])

    return fn


REG_LABELS = {"truncation": "GN (truncation)", "weight_decay": "GN + weight decay", "damping": "GN + damping",
              "noise": "GN + noise", "none": "GN (exact pinv)"}


def gn_variants_and_adam(regs: tuple[str, ...]) -> SeriesFn:
    """GN with each pseudoinverse regulariser in ``regs`` (truncation = the paper's GN), then Adam."""

    def fn(df: pd.DataFrame) -> Iterator[Series]:
        d = plain(df)
        gn = d[col(d, "optimizer.name") == "gn"]
        for reg in regs:
            rows = gn[col(gn, "regularizer.name") == reg]
            if not rows.empty:
                label = REG_LABELS.get(reg, f"GN + {reg}")
                if reg == "weight_decay":
                    lam = col(rows, "regularizer.weight_decay").dropna().unique()
                    label += f" (λ={lam[0]:g})" if len(lam) == 1 else ""
                yield Series(label, OPT_COLOURS["gn"] if reg == "truncation" else VARIANT_COLOURS.get(reg, "#7f7f7f"),
                             rows)
        adam = d[col(d, "optimizer.name") == "adam"]
        if not adam.empty:
            yield Series("Adam", OPT_COLOURS["adam"], adam)

    return fn


def switch_runs(df: pd.DataFrame) -> Iterator[Series]:
    sw = df[~df.index.isin(plain(df).index)]
    keys = sw[["optimizer.name", "train.switch_to"]].drop_duplicates().itertuples(index=False)
    styles = {"adam": "-", "gn": "--", "sgd": "-."}
    for start, to in sorted(keys, key=lambda k: (k[0] != "adam", k)):
        rows = sw[(sw["optimizer.name"] == start) & (sw["train.switch_to"] == to)]
        yield Series(f"{OPT_LABELS.get(start, start)} → {OPT_LABELS.get(str(to), to)}", OPT_COLOURS.get(start, "#7f7f7f"),
                     rows, styles.get(start, "-"))


# ---------------------------------------------------------------------------------------------------------------
# Generic layouts


def draw(ax: Axes, series: Iterable[Series], metric: str, *, x: str = "epoch") -> int:
    n = 0
    for s in series:
        if plot_series(ax, s.rows, metric, label=s.label, color=s.color, x=x, linestyle=s.linestyle) is not None:
            n += 1
    return n


def metric_grid(df: pd.DataFrame, ctx: PlotContext, metrics: list[str], series: SeriesFn = by_optimizer,
                titles: list[str] | None = None) -> Figure:
    """Rows = datasets, columns = ``metrics`` (epoch rows), one curve per series."""
    ep = epoch_rows(df)
    dsets = datasets(ep)
    with style():
        fig, axes = new_figure(len(dsets), len(metrics))
        for r, ds in enumerate(dsets):
            d = for_dataset(ep, ds)
            for c, metric in enumerate(metrics):
                ax = axes[r, c]
                draw(ax, series(d), metric)
                head = titles[c] if titles else None
                label_axes(ax, metric, title=f"{dataset_label(ds)}" + (f" · {head}" if head else ""))
        legend(axes[0, 0])
        return finish(fig, ctx.title)


# ---------------------------------------------------------------------------------------------------------------
# The figures


def plot_fig1(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Full batch: train loss (log) and train accuracy vs epoch, GN / Adam / SGD."""
    return metric_grid(df, ctx, ["train_loss", "train_acc"])


def plot_fig2(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Mini-batch: train loss, test loss, test accuracy vs epoch."""
    return metric_grid(df, ctx, ["train_loss", "test_loss", "test_acc"])


def plot_fig3(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Loss change (%) on the batch just used, per update, vs (fractional) epoch."""
    st = step_rows(df)
    dsets = datasets(st)
    with style():
        fig, axes = new_figure(1, len(dsets), panel=(4.2, 2.8))
        for c, ds in enumerate(dsets):
            ax = axes[0, c]
            draw(ax, by_optimizer(for_dataset(st, ds)), "loss_change_pct")
            ax.axhline(0.0, color="black", linewidth=0.6, label="_zero")
            label_axes(ax, "loss_change_pct", xlabel="epoch (one point per update)", title=dataset_label(ds))
        legend(axes[0, 0])
        return finish(fig, ctx.title)


def cka_blocks(df: pd.DataFrame) -> list[int]:
    ks = sorted(int(c[len("cka_block"):]) for c in df.columns
                if c.startswith("cka_block") and c[len("cka_block"):].isdigit() and df[c].notna().any())
    return ks


def half_couplings(df: pd.DataFrame) -> list[str]:
    """The logged per-half-coupling CKA columns in network order: cka_F1, cka_G1, cka_F2, … (empty if none)."""
    ks = cka_blocks(df)
    cols = [f"cka_{h}{k}" for k in ks for h in "FG"]
    return [c for c in cols if c in df.columns and df[c].notna().any()]


def ntk_panels(df: pd.DataFrame) -> tuple[list[str], list[str]]:
    """fig4's NTK panels: the paper's feature-space sketch (velocity, similarity) and revgn's full logit kernel as
    a separate, labelled panel; runs logged before the sketch existed show the logit kernel only."""
    if "ntk_feat_sim_init" in df.columns and df["ntk_feat_sim_init"].notna().any():
        return (["ntk_feat_velocity", "ntk_feat_sim_init", "ntk_sim_init"],
                ["NTK velocity, paper's sketch", "NTK sim., paper's sketch", "logit NTK, not the paper's"])
    return ["ntk_velocity", "ntk_sim_init"], ["logit-NTK velocity", "logit-NTK similarity to init"]


def plot_fig4(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """(a) NTK velocity and (b) NTK similarity to init — the paper's feature-space sketch cos(K_0 ū, K_t ū) on X_L
    (``ntk_feat_*``) —, (c) revgn's full logit-NTK similarity (``ntk_sim_init``, labelled as not the paper's), then
    CKA to init of the first / middle / last block (the block output = the state after its G half-coupling)."""
    ep = epoch_rows(df)
    dsets = datasets(ep)
    ks = cka_blocks(ep)
    L = max(ks) if ks else 0
    picked = sorted({1, (L + 1) // 2, L}) if L else []
    names = {1: "first", L: "last"}
    ntk, ntk_titles = ntk_panels(ep)
    metrics = ntk + [f"cka_block{k}" for k in picked]
    letters = "abcdefgh"
    titles = [f"({letters[i]}) {t}" for i, t in enumerate(ntk_titles)] + [
        f"({letters[len(ntk) + i]}) CKA, block {k} ({names.get(k, 'middle')})" for i, k in enumerate(picked)]
    with style():
        fig, axes = new_figure(len(dsets), len(metrics))
        for r, ds in enumerate(dsets):
            d = for_dataset(ep, ds)
            for c, (metric, title) in enumerate(zip(metrics, titles)):
                ax = axes[r, c]
                draw(ax, by_optimizer(d), metric)
                label_axes(ax, metric, title=f"{dataset_label(ds)} · {title}")
        legend(axes[0, 0])
        return finish(fig, ctx.title)


def plot_fig5(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """No-bottleneck RevMLP: full-batch train loss (left), mini-batch train and test loss (centre, right)."""
    ep = epoch_rows(df)
    dsets = datasets(ep)
    panels = [("full_batch", "train_loss", "full batch"), ("mini_batch", "train_loss", "mini-batch"),
              ("mini_batch", "test_loss", "mini-batch")]
    with style():
        fig, axes = new_figure(len(dsets), len(panels))
        for r, ds in enumerate(dsets):
            d = for_dataset(ep, ds)
            for c, (regime, metric, head) in enumerate(panels):
                ax = axes[r, c]
                draw(ax, by_optimizer(d[col(d, "regime.name") == regime]), metric)
                label_axes(ax, metric, title=f"{dataset_label(ds)} · {head}")
        legend(axes[0, 0])
        return finish(fig, ctx.title)


def plot_fig6(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Long mini-batch training: train loss, test loss, test accuracy."""
    return metric_grid(df, ctx, ["train_loss", "test_loss", "test_acc"])


def plot_fig7(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Optimiser switch (Adam → GN, GN → Adam): train and test loss, dashed line at the switch epoch."""
    ep = epoch_rows(df)
    dsets = datasets(ep)
    switches = sorted({float(v) for v in col(ep, "train.switch_epoch").dropna().unique()})
    with style():
        fig, axes = new_figure(len(dsets), 2, panel=(3.8, 2.7))
        for r, ds in enumerate(dsets):
            d = for_dataset(ep, ds)
            for c, metric in enumerate(["train_loss", "test_loss"]):
                ax = axes[r, c]
                draw(ax, switch_runs(d), metric)
                for i, s in enumerate(switches):
                    ax.axvline(s, color="black", linestyle="--", linewidth=0.9,
                               label=f"switch (epoch {s:g})" if i == 0 else "_switch")
                label_axes(ax, metric, title=dataset_label(ds))
        legend(axes[0, 0])
        return finish(fig, ctx.title)


def plot_fig8(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """GN from inits of different scale: train loss, test loss."""
    return metric_grid(df, ctx, ["train_loss", "test_loss"], by_value("model.init_std", lambda v: f"GN, init std {v:g}"))


def final_rows(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Per run, the last epoch row where every column of ``cols`` is logged."""
    ep = epoch_rows(df).dropna(subset=cols)
    if ep.empty:
        return ep
    idx = ep.groupby("run_id")["epoch"].idxmax()
    return ep.loc[idx]


def half_layers(df: pd.DataFrame) -> list[str]:
    names = [c[len("wcos_"):] for c in df.columns if c.startswith("wcos_") and df[c].notna().any()]
    return sorted(names, key=lambda n: (int(n[1:]) if n[1:].isdigit() else 99, n[0]))


def plot_fig9(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """cosine(W_init, W_end) per half-layer at the last epoch: grouped bars per optimiser, ± std over seeds."""
    ep = plain(epoch_rows(df))
    dsets = datasets(ep)
    with style():
        fig, axes = new_figure(1, len(dsets), panel=(4.6, 2.8))
        for c, ds in enumerate(dsets):
            ax = axes[0, c]
            d = for_dataset(ep, ds)
            d = d[d["status"] == "done"]
            hls = half_layers(d)
            fin = final_rows(d, [f"wcos_{h}" for h in hls]) if hls else d.iloc[0:0]
            opts = order_optimizers([str(o) for o in col(fin, "optimizer.name").dropna().unique()])
            width = 0.8 / max(len(opts), 1)
            xs = np.arange(len(hls))
            for i, opt in enumerate(opts):
                f = fin[fin["optimizer.name"] == opt]
                heights = [float(f[f"wcos_{h}"].mean()) for h in hls]
                errs = [float(f[f"wcos_{h}"].std(ddof=0)) for h in hls] if len(f) > 1 else None
                ax.bar(xs + (i - (len(opts) - 1) / 2) * width, heights, width, yerr=errs, capsize=2,
                       color=OPT_COLOURS.get(opt, "#7f7f7f"), label=OPT_LABELS.get(opt, opt))
            ax.set_xticks(xs, hls)
            lo, hi = ax.get_ylim()
            ax.set_ylim(min(lo, 0.0), max(hi, 1.0) * 1.2)  # room for the legend above the bars
            ax.set_xlabel("half-layer (F_k, G_k of block k)")
            ax.set_ylabel(metric_label("wcos"))
            ax.set_title(dataset_label(ds))
            ax.grid(axis="x", visible=False)
        legend(axes[0, 0], ncol=3, loc="upper center")
        return finish(fig, ctx.title)


def plot_cka_all(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """CKA to init vs epoch (fig10, fig11): one panel per half-coupling (F1, G1, F2, …; G_k's state is block k's
    output, the per-block value) when the runs log ``cka_F/G{k}``, else one per block."""
    ep = epoch_rows(df)
    dsets = datasets(ep)
    cols = half_couplings(ep) or [f"cka_block{k}" for k in (cka_blocks(ep) or [1])]
    with style():
        fig, axes = new_figure(len(dsets), len(cols), panel=(2.8, 2.4))
        for r, ds in enumerate(dsets):
            d = for_dataset(ep, ds)
            for c, metric in enumerate(cols):
                ax = axes[r, c]
                draw(ax, by_optimizer(d), metric)
                what = (f"block {metric[9:]}" if metric.startswith("cka_block") else
                        f"after {metric[4:]}" + (f" (= block {metric[5:]})" if metric[4] == "G" else ""))
                label_axes(ax, metric, title=f"{dataset_label(ds)} · {what}")
        legend(axes[0, 0])
        return finish(fig, ctx.title)


plot_fig10 = plot_cka_all
plot_fig11 = plot_cka_all


def plot_fig12(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """GN with different learning rates: train loss, test loss, test accuracy."""
    return metric_grid(df, ctx, ["train_loss", "test_loss", "test_acc"], by_value("optimizer.lr", lambda v: f"GN, lr {v:g}"))


def plot_fig13(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """GN vs GN + weight decay vs Adam."""
    return metric_grid(df, ctx, ["train_loss", "test_loss", "test_acc"], gn_variants_and_adam(("truncation", "weight_decay")))


def plot_fig14(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """GN with truncation / damping / noise vs Adam."""
    return metric_grid(df, ctx, ["train_loss", "test_loss", "test_acc"],
                       gn_variants_and_adam(("truncation", "damping", "noise")))


def plot_fig15(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Appendix version of fig2: train loss, train accuracy, test loss, test accuracy, every dataset."""
    return metric_grid(df, ctx, ["train_loss", "train_acc", "test_loss", "test_acc"])
