"""One look for every figure: colours per optimiser, axis labels with units, log axes, mean ± std bands.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot state), so plotting many figures in one
process leaks nothing and needs no display. Every curve is the mean over seeds of the finished (``done``) runs with
a ±1 std band when there are several seeds; a ``diverged`` run is drawn as a thin dotted line ending in ×, and
the legend entry says how many seeds diverged.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

# Same colour for an optimiser in every figure (colour-blind safe Tableau pair + green).
OPT_COLOURS = {"gn": "#d62728", "adam": "#1f77b4", "sgd": "#2ca02c", "ggn_cg": "#ff7f0e", "kfac": "#9467bd"}
OPT_LABELS = {"gn": "GN", "adam": "Adam", "sgd": "SGD", "ggn_cg": "GGN-CG", "kfac": "K-FAC"}
OPT_ORDER = ("gn", "adam", "sgd", "ggn_cg", "kfac")
# Extra series (regularised GN variants, switch runs) get their own fixed colours.
VARIANT_COLOURS = {"weight_decay": "#9467bd", "damping": "#ff7f0e", "noise": "#8c564b", "none": "#7f7f7f"}
SEQUENTIAL = "viridis"  # swept values (lr, init std): dark = first value

DATASET_LABELS = {"mnist5k": "mnist5k", "mnist": "MNIST", "cifar10": "CIFAR-10", "digits": "digits (8×8)"}

METRIC_LABELS = {
    "train_loss": "train loss (cross-entropy, nats)",
    "train_loss_running": "train loss, running mean (nats)",
    "test_loss": "test loss (cross-entropy, nats)",
    "train_acc": "train accuracy (%)",
    "test_acc": "test accuracy (%)",
    "loss_change_pct": "loss change on the same batch (%)",
    "ntk_velocity": "logit-NTK velocity (kernel distance / epoch)",
    "ntk_sim_init": "logit-NTK similarity to init (full kernel)",
    "ntk_feat_sim_init": "NTK alignment to init, ⟨K₀, K_t⟩ (feature space)",
    "ntk_feat_velocity": "NTK velocity (1 − cos / epoch)",
    "ntk_dist_init": "NTK distance to init (1 − cosine)",
    "wcos": "cosine(W_init, W_end)",
}
PERCENT = {"train_acc", "test_acc"}  # stored as fractions, drawn in %
LOG_Y = {"train_loss", "train_loss_running", "ntk_velocity", "ntk_feat_velocity"}  # log axes where the paper uses them

RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "savefig.dpi": 150,
    "pdf.fonttype": 42,
}


def metric_label(metric: str) -> str:
    if metric.startswith("cka_block"):
        return f"CKA to init, block {metric[len('cka_block'):]}"
    if metric[:5] in ("cka_F", "cka_G") and metric[5:].isdigit():
        return f"CKA to init, after {metric[4:]}"
    return METRIC_LABELS.get(metric, metric)


def dataset_label(name: Any) -> str:
    return DATASET_LABELS.get(str(name), str(name))


def sequential_colours(n: int) -> list[str]:
    cmap = matplotlib.colormaps[SEQUENTIAL]
    return [matplotlib.colors.to_hex(cmap(v)) for v in (np.linspace(0.05, 0.85, n) if n > 1 else [0.3])]


@contextmanager
def style() -> Iterator[None]:
    with matplotlib.rc_context(RC):
        yield


def new_figure(nrows: int, ncols: int, *, panel: tuple[float, float] = (3.2, 2.5)) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure and a 2-D array of axes (always 2-D, even for one row/column)."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.5), layout="constrained")
    axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def aggregate(runs: pd.DataFrame, metric: str, x: str = "epoch") -> pd.DataFrame:
    """Mean, std (ddof 0) and count over runs of ``metric`` at each ``x``; rows with NaN metric are ignored."""
    if metric not in runs.columns or runs.empty:
        return pd.DataFrame(columns=[x, "mean", "std", "n"])
    d = runs[[x, "run_id", metric]].dropna(subset=[metric])
    d = d[np.isfinite(d[metric].astype(float))]
    if d.empty:
        return pd.DataFrame(columns=[x, "mean", "std", "n"])
    g = d.groupby(x)[metric]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0).fillna(0.0), "n": g.count()}).reset_index()


def plot_series(ax: Axes, rows: pd.DataFrame, metric: str, *, label: str, color: str, x: str = "epoch",
                linestyle: str = "-", band: bool = True) -> Line2D | None:
    """Draw one series (every seed of one setting): mean line + std band of the done runs, diverged runs dotted.

    ``rows`` are the metrics rows of the runs of this series, already restricted to the wanted split. Returns the
    labelled mean line (None when no run finished; the first diverged run's line then carries the label).
    """
    scale = 100.0 if metric in PERCENT else 1.0
    done = rows[rows["status"] == "done"]
    div = rows[rows["status"] == "diverged"]
    n_runs = rows["run_id"].nunique()
    n_div = div["run_id"].nunique()
    suffix = f" ({n_div}/{n_runs} diverged)" if n_div else ""
    line = None
    stats = aggregate(done, metric, x)
    if not stats.empty:
        xs = stats[x].to_numpy(float)
        mean = stats["mean"].to_numpy(float) * scale
        (line,) = ax.plot(xs, mean, color=color, linestyle=linestyle, label=label + suffix)
        if band and done["run_id"].nunique() > 1:
            sd = stats["std"].to_numpy(float) * scale
            lo = mean - sd
            if metric in LOG_Y:  # keep the band on a log axis
                lo = np.maximum(lo, mean * 0.1)
            ax.fill_between(xs, lo, mean + sd, color=color, alpha=0.18, linewidth=0)
    labelled = line is not None
    for rid, r in div.groupby("run_id", sort=True):
        d = r[[x, metric]].dropna() if metric in r.columns else r.iloc[0:0]
        d = d[np.isfinite(d[metric].astype(float))] if not d.empty else d
        if d.empty:
            continue
        lab = f"_{label} diverged {rid}" if labelled else label + suffix
        (dl,) = ax.plot(d[x].to_numpy(float), d[metric].to_numpy(float) * scale, color=color, linestyle=":",
                        linewidth=0.9, label=lab)
        ax.plot(d[x].to_numpy(float)[-1:], d[metric].to_numpy(float)[-1:] * scale, marker="x", color=color,
                linestyle="none", label="_diverged_end")
        if not labelled:
            line, labelled = dl, True
    if metric in LOG_Y:
        ax.set_yscale("log")
    return line


def label_axes(ax: Axes, metric: str, *, xlabel: str = "epoch", title: str | None = None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_label(metric))
    if title:
        ax.set_title(title)


def legend(ax: Axes, **kw: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, frameon=False, **kw)


def finish(fig: Figure, title: str) -> Figure:
    fig.suptitle(title, fontsize=10)
    return fig


def save(fig: Figure, out_dir: str | Path, name: str, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Write ``<out>/<name>.<fmt>`` for each format (PNG and PDF by default); return the paths."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.{f}" for f in formats]
    with style():
        for p in paths:
            fig.savefig(p)
    return paths


def visible_lines(ax: Axes) -> list[Line2D]:
    """The legend-labelled lines of an axes (tests and checks use this)."""
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if math.isinf(v):
        return "∞"
    return f"{v:.4g}"


def order_optimizers(names: Sequence[str]) -> list[str]:
    return sorted(set(names), key=lambda n: (OPT_ORDER.index(n) if n in OPT_ORDER else 99, n))
