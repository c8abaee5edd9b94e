"""Figures of the beyond-the-paper studies (docs/studies.md), as ``revgn_cli.figures.spec.FigureSpec`` entries.

Each names the presets it reads per scale and a plot function ``(rows, PlotContext) -> Figure`` that only draws.
``revgn plot <name>`` finds them through ``revgn_cli.figures.catalog.get`` (they are not part of ``all``/``main``,
which are the paper's figures); ``revgn study run <name>`` trains and plots.

* ``linearisation_phase`` — iterative linearisation: test accuracy over K × updates (heat map), test accuracy vs
  updates per K with GN as reference, and final accuracy vs the number of feature updates.
* ``data_dependent_ntk`` — final test error / train loss of the linearised continuation from θ_t vs t, per
  optimiser, with the full-training baselines as horizontal lines (Fort et al. 2020, Fig. 8).
* ``barrier`` — error barrier and normalised function distance between two children vs spawn time, per optimiser
  (rows from ``barriers.parquet``, written by ``revgn study spawn``).
* ``kernel_dynamics`` — NTK distance to init and NTK velocity vs epoch, and distance vs test accuracy, every
  optimiser in one figure (the metrics columns ``ntk_dist_init``, ``ntk_velocity``).
* ``gn_family`` — exact GN, GGN-CG (identity and exact loss Hessian), K-FAC, Adam and SGD at their presets' rates:
  train/test loss, test accuracy, NTK similarity and last-block CKA to init vs epoch (``revgn study run gn_family``
  draws the tuned-rate version itself: revgn_cli/studies/gn_family.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from revgn_cli.figures.data import MissingRunsError
from revgn_cli.figures.plots import (
    PlotContext, Series, by_optimizer, col, dataset_label, datasets, draw, epoch_rows, for_dataset, metric_grid, plain,
)
from revgn_cli.figures.spec import FigureSpec
from revgn_cli.figures.style import (
    OPT_COLOURS, OPT_LABELS, finish, label_axes, legend, new_figure, order_optimizers, sequential_colours, style,
)

STUDY_NAMES = ("linearisation_phase", "data_dependent_ntk", "barrier", "kernel_dynamics", "gn_family")
INF = math.inf


# ---------------------------------------------------------------------------------------------------------------
# helpers


def k_value(v: object) -> float:
    """optimizer.relinearise_every as a number: None/NaN (never re-linearise) → ∞."""
    if v is None:
        return INF
    try:
        f = float(v)
    except (TypeError, ValueError):
        return INF
    return INF if math.isnan(f) else f


def k_label(k: float) -> str:
    return "K=∞" if math.isinf(k) else f"K={k:g}"


def full_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Ordinary runs: a full optimiser throughout (no switch, no spawned linearised continuation)."""
    d = plain(df)
    d = d[col(d, "optimizer.name").isin(["gn", "adam", "sgd"])]
    sp = col(d, "train.spawn_epoch")
    return d[sp.isna() | sp.astype(str).isin(["None", "nan", ""])]


def final_rows(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run, the last epoch row that logs ``metric``."""
    ep = epoch_rows(df)
    if metric not in ep.columns:
        return ep.iloc[0:0]
    ep = ep.dropna(subset=[metric])
    if ep.empty:
        return ep
    return ep.loc[ep.groupby("run_id")["epoch"].idxmax()]


def _done(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "done"] if "status" in df.columns else df


def phase_table(lin: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Mean ``metric`` over runs per (K, step ≥ 1) of the linearised runs' epoch rows → index K, columns step
    (the evaluation at init, step 0, is the same for every K and left out)."""
    ep = _done(epoch_rows(lin)).dropna(subset=[metric]) if metric in lin.columns else lin.iloc[0:0]
    ep = ep[ep["step"] > 0]
    if ep.empty:
        return pd.DataFrame()
    ep = ep.assign(K=[k_value(v) for v in col(ep, "optimizer.relinearise_every")])
    return ep.groupby(["K", "step"])[metric].mean().unstack("step").sort_index()


def _feature_updates(rows: pd.DataFrame) -> np.ndarray:
    """The logged ``feature_updates`` column, or ⌊step/K⌋ where a row lacks it."""
    ks = np.array([k_value(v) for v in col(rows, "optimizer.relinearise_every")], float)
    derived = np.where(np.isinf(ks), 0.0, np.floor(rows["step"].to_numpy(float) / np.where(np.isinf(ks), 1, ks)))
    logged = col(rows, "feature_updates").to_numpy(float)
    return np.where(np.isnan(logged), derived, logged)


def _gn_reference(ep: pd.DataFrame, metric: str) -> pd.DataFrame:
    gn = _done(full_runs(ep))
    gn = gn[col(gn, "optimizer.name") == "gn"].dropna(subset=[metric]) if metric in gn.columns else gn.iloc[0:0]
    return gn.groupby("step")[metric].mean().reset_index() if not gn.empty else pd.DataFrame(columns=["step", metric])


# ---------------------------------------------------------------------------------------------------------------
# linearisation_phase


def plot_linearisation_phase(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Rows: inner optimiser. (a) test accuracy over K × updates, (b) test accuracy vs updates per K (GN dashed),
    (c) test accuracy vs number of feature updates, one line per training length (GN at that length dotted)."""
    ep = epoch_rows(df)
    lin = ep[col(ep, "optimizer.name") == "linearised"]
    inners = sorted(str(v) for v in col(lin, "optimizer.inner").dropna().unique()) or ["?"]
    with style():
        fig, axes = new_figure(len(inners), 3, panel=(3.8, 2.9))
        for r, inner in enumerate(inners):
            d = lin if inner == "?" else lin[col(lin, "optimizer.inner").astype(str) == inner]
            lrs = sorted({float(v) for v in col(d, "optimizer.lr").dropna().unique()})
            head = f"inner {inner}" + (f", lr {lrs[0]:g}" if len(lrs) == 1 else "")
            table = phase_table(d)
            gn = _gn_reference(ep, "test_acc")
            # (a) heat map
            ax = axes[r, 0]
            if not table.empty:
                vals = table.to_numpy(float) * 100
                im = ax.imshow(vals, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
                ax.set_xticks(range(len(table.columns)), [f"{int(s)}" for s in table.columns])
                ax.set_yticks(range(len(table.index)), [k_label(k)[2:] for k in table.index])
                if vals.size <= 120:
                    lo, hi = np.nanmin(vals), np.nanmax(vals)
                    for (i, j), v in np.ndenumerate(vals):
                        if np.isfinite(v):
                            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=5.5,
                                    color="white" if v < (lo + hi) / 2 else "black")
                fig.colorbar(im, ax=ax, label="test accuracy (%)", shrink=0.85)
                ax.grid(False)
            ax.set_xlabel("training length (updates)")
            ax.set_ylabel("re-linearise every K updates")
            ax.set_title(f"(a) test accuracy · {head}")
            # (b) curves per K, GN as reference
            ax = axes[r, 1]
            ks = list(table.index)
            for k, c in zip(ks, sequential_colours(len(ks))):
                ax.plot(table.columns.to_numpy(float), table.loc[k].to_numpy(float) * 100, color=c, marker=".",
                        label=k_label(k))
            if not gn.empty:
                ax.plot(gn["step"].to_numpy(float), gn["test_acc"].to_numpy(float) * 100, color=OPT_COLOURS["gn"],
                        linestyle="--", label="GN (full network)")
            label_axes(ax, "test_acc", xlabel="updates", title="(b) test accuracy vs updates")
            legend(ax, fontsize=6, ncol=2)
            # (c) accuracy vs number of feature updates, one line per training length
            ax = axes[r, 2]
            dd = _done(d).dropna(subset=["test_acc"]) if "test_acc" in d.columns else d.iloc[0:0]
            dd = dd[dd["step"] > 0]
            if not dd.empty:
                dd = dd.assign(fu=_feature_updates(dd), K=[k_value(v) for v in col(dd, "optimizer.relinearise_every")])
                steps = sorted(dd["step"].unique())
                picks = sorted({steps[max(0, round(q * len(steps)) - 1)] for q in (0.25, 0.5, 1.0)} - {0})
                for s, c in zip(picks, sequential_colours(len(picks))):
                    g = dd[dd["step"] == s].groupby("K").agg(fu=("fu", "mean"), acc=("test_acc", "mean")).sort_values("fu")
                    ax.plot(g["fu"].to_numpy(float), g["acc"].to_numpy(float) * 100, color=c, marker="o",
                            label=f"{int(s)} updates")
                    gs = gn[gn["step"] == s] if not gn.empty else gn
                    if not gs.empty:
                        ax.axhline(float(gs["test_acc"].iloc[0]) * 100, color=c, linestyle=":", linewidth=1.0,
                                   label=f"_GN at {int(s)}")
                if not gn.empty:
                    ax.plot([], [], color="#555555", linestyle=":", label="GN at that length (dotted)")
                ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlabel("feature updates (re-linearisations)")
            ax.set_ylabel("test accuracy (%)")
            ax.set_title("(c) accuracy vs feature updates")
            legend(ax, fontsize=6)
        return finish(fig, ctx.title)


# ---------------------------------------------------------------------------------------------------------------
# data_dependent_ntk


def plot_data_dependent_ntk(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Final test error (%) and final train loss of the linearised continuation from θ_t vs t, per optimiser; the
    full-training baseline of each optimiser as a dashed horizontal line."""
    panels = [("test_acc", "final test error (%)", lambda v: (1.0 - v) * 100, "(a) test error"),
              ("train_loss", "final train loss (nats)", lambda v: v, "(b) train loss")]
    ep = epoch_rows(df)
    dsets = datasets(ep)
    with style():
        fig, axes = new_figure(len(dsets), len(panels), panel=(3.8, 2.8))
        for r, ds in enumerate(dsets):
            d = for_dataset(ep, ds)
            opts = order_optimizers([str(o) for o in col(d, "optimizer.name").dropna().unique()
                                     if str(o) != "linearised"])
            for c, (metric, ylabel, tf, head) in enumerate(panels):
                ax = axes[r, c]
                fin = _done(final_rows(d, metric))
                for opt in opts:
                    colour = OPT_COLOURS.get(opt, "#7f7f7f")
                    f = fin[col(fin, "optimizer.name") == opt]
                    sp = col(f, "train.spawn_epoch")
                    spawned = f[sp.notna() & ~sp.astype(str).isin(["None", "nan", ""])]
                    base = f.drop(spawned.index)
                    if not spawned.empty:
                        g = spawned.assign(t=spawned["train.spawn_epoch"].astype(float)).groupby("t")[metric]
                        m = g.mean()
                        ax.errorbar(m.index.to_numpy(float), tf(m.to_numpy(float)),
                                    yerr=(g.std(ddof=0).fillna(0).to_numpy(float) * (100 if metric == "test_acc" else 1)),
                                    color=colour, marker="o", capsize=2, label=f"{OPT_LABELS.get(opt, opt)} → linearised at t")
                    if not base.empty:
                        ax.axhline(float(tf(base[metric].mean())), color=colour, linestyle="--", linewidth=1.0,
                                   label=f"{OPT_LABELS.get(opt, opt)}, full training")
                ax.set_xlabel("spawn epoch t (linearised about θ_t afterwards)")
                ax.set_ylabel(ylabel)
                ax.set_title(f"{dataset_label(ds)} · {head}")
                if metric == "train_loss":
                    ax.set_yscale("log")
            legend(axes[r, 0], fontsize=6)
        return finish(fig, ctx.title)


# ---------------------------------------------------------------------------------------------------------------
# barrier


def load_barriers(df: pd.DataFrame) -> pd.DataFrame:
    """The barriers.parquet rows of the parents in ``df`` (found beside their run dirs)."""
    from revgn_cli.studies.spawn import BARRIERS_FILE, read_barriers

    paths = sorted({Path(p).parent / BARRIERS_FILE for p in col(df, "path").dropna().unique()})
    frames = [read_barriers(p) for p in paths if p.exists()]
    parents = set(df["run_id"].unique())
    b = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    b = b[b["parent_run_id"].isin(parents)].dropna(subset=["barrier"]) if not b.empty else b
    if b.empty:
        exps = sorted({Path(p).parent.name for p in col(df, "path").dropna().unique()}) or ["spawn_quick"]
        raise MissingRunsError(f"barrier: no evaluated child pairs in {', '.join(str(p) for p in paths) or 'the results'}"
                               f" — run `revgn study spawn experiment={exps[0]}`")
    return b


def plot_barrier(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """(a) error barrier between the two children vs spawn epoch, (b) their normalised function distance, (c) the
    children's mean test error — per optimiser (mean ± std over parent seeds)."""
    b = load_barriers(df)
    panels = [("barrier", "error barrier (test error, %)", 100.0, "(a) error barrier"),
              ("function_distance", "normalised function distance", 1.0, "(b) function distance"),
              ("child_err", "children's test error (%)", 100.0, "(c) children's error")]
    b = b.assign(child_err=(b["err_a"] + b["err_b"]) / 2)
    with style():
        fig, axes = new_figure(1, len(panels), panel=(3.6, 2.8))
        for c, (key, ylabel, scale, title) in enumerate(panels):
            ax = axes[0, c]
            for opt in order_optimizers([str(o) for o in b["optimizer"].unique()]):
                g = b[b["optimizer"] == opt].groupby("spawn_epoch")[key]
                m, s = g.mean(), g.std(ddof=0).fillna(0.0)
                ax.errorbar(m.index.to_numpy(float), m.to_numpy(float) * scale, yerr=s.to_numpy(float) * scale,
                            color=OPT_COLOURS.get(opt, "#7f7f7f"), marker="o", capsize=2,
                            label=OPT_LABELS.get(opt, opt))
            ax.set_xlabel("spawn epoch t of the two children")
            ax.set_ylabel(ylabel)
            ax.set_title(title)
        axes[0, 0].axhline(0.0, color="black", linewidth=0.6, label="_zero")
        legend(axes[0, 0])
        return finish(fig, ctx.title)


# ---------------------------------------------------------------------------------------------------------------
# kernel_dynamics


def plot_kernel_dynamics(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """(a) kernel distance to init 1 − cos(Θ_0, Θ_t), (b) kernel velocity, (c) kernel distance vs test accuracy."""
    ep = epoch_rows(df)
    dsets = datasets(ep)
    with style():
        fig, axes = new_figure(len(dsets), 3, panel=(3.4, 2.7))
        for r, ds in enumerate(dsets):
            d = full_runs(for_dataset(ep, ds))
            d = d[d["epoch"] > 0]  # at init the distance is 0 (rounding noise on a log axis)
            ax = axes[r, 0]
            draw(ax, by_optimizer(d), "ntk_dist_init")
            ax.set_yscale("log")
            label_axes(ax, "ntk_dist_init", title=f"{dataset_label(ds)} · (a) kernel distance to init")
            ax = axes[r, 1]
            draw(ax, by_optimizer(d), "ntk_velocity")
            label_axes(ax, "ntk_velocity", title="(b) kernel velocity")
            ax = axes[r, 2]
            for s in by_optimizer(d):
                rows = _done(s.rows)
                if "ntk_dist_init" not in rows.columns or "test_acc" not in rows.columns:
                    continue
                g = rows.dropna(subset=["ntk_dist_init", "test_acc"]).groupby("epoch")[["test_acc", "ntk_dist_init"]].mean()
                g = g[g["ntk_dist_init"] > 0]
                if not g.empty:
                    ax.plot(g["test_acc"].to_numpy(float) * 100, g["ntk_dist_init"].to_numpy(float), color=s.color,
                            marker=".", label=s.label)
            ax.set_yscale("log")
            ax.set_xlabel("test accuracy (%)")
            ax.set_ylabel("NTK distance to init (1 − cosine)")
            ax.set_title("(c) kernel distance vs accuracy")
        legend(axes[0, 0])
        return finish(fig, ctx.title)


# ---------------------------------------------------------------------------------------------------------------
# gn_family

DAMPED = ("ggn_cg", "kfac")  # optimisers whose damping λ tells their runs apart
# The paper's feature-space NTK sketch where the runs log it, else revgn's logit-kernel similarity (labelled as such).
NTK_SIM_COLUMNS = ("ntk_feat_sim_init", "ntk_sim_init")


def _damped_label(opt: str, lam: float, hessian: object) -> str:
    """"GGN-CG λ=0.1", or "GGN-CG exact H λ=0.1" with the softmax loss Hessian."""
    return f"{OPT_LABELS.get(opt, opt)}{' exact H' if str(hessian) == 'exact' else ''} λ={float(lam):g}"


def method_labels(df: pd.DataFrame) -> pd.Series:
    """Per row, the method it belongs to: the optimiser's label, with λ (and "exact H" for the softmax loss
    Hessian) for the damped ones ("GGN-CG λ=0.001")."""
    names = col(df, "optimizer.name").astype(str)
    lam, hess = col(df, "optimizer.damping"), col(df, "optimizer.loss_hessian")
    return pd.Series([_damped_label(n, v, h) if n in DAMPED else OPT_LABELS.get(n, n)
                      for n, v, h in zip(names, lam, hess)], index=df.index)


def by_method(df: pd.DataFrame):
    """Series per method (gn_family): GN, Adam, SGD, then each damping of GGN-CG and K-FAC (solid, dashed, …)."""
    d = plain(df)
    names = col(d, "optimizer.name").astype(str)
    for opt in order_optimizers(list(names.unique())):
        rows = d[names == opt]
        if opt not in DAMPED:
            yield Series(OPT_LABELS.get(opt, opt), OPT_COLOURS.get(opt, "#7f7f7f"), rows)
            continue
        labels = method_labels(rows)
        for i, lab in enumerate(sorted(labels.unique(), key=lambda s: ("exact H" in s, float(s.rsplit("=", 1)[1])))):
            yield Series(lab, OPT_COLOURS[opt], rows[labels == lab], ("-", "--", ":")[i % 3])


def _ntk_column(ep: pd.DataFrame) -> str:
    return next((c for c in NTK_SIM_COLUMNS if c in ep.columns and ep[c].notna().any()), NTK_SIM_COLUMNS[-1])


def _last_cka(ep: pd.DataFrame) -> str:
    ks = sorted(int(c[len("cka_block"):]) for c in ep.columns if c.startswith("cka_block") and c[9:].isdigit())
    return f"cka_block{ks[-1]}" if ks else "cka_block2"


def plot_gn_family(df: pd.DataFrame, ctx: PlotContext) -> Figure:
    """Train loss, test loss, test accuracy, NTK similarity to init and last-block CKA to init vs epoch, one curve
    per method (mean ± std over seeds)."""
    ep = epoch_rows(df)
    ntk, cka = _ntk_column(ep), _last_cka(ep)
    ntk_title = "NTK similarity (feature-space sketch)" if ntk == "ntk_feat_sim_init" else "NTK similarity (logit kernel)"
    return metric_grid(df, ctx, ["train_loss", "test_loss", "test_acc", ntk, cka], series=by_method,
                       titles=["train loss", "test loss", "test accuracy", ntk_title, f"CKA, last block ({cka[9:]})"])


def _wall_s(paths: pd.Series) -> float:
    """Mean wall time (s) of the runs at ``paths`` (meta.json's wall_s)."""
    import json

    vals = []
    for p in paths.dropna().unique():
        meta = Path(p) / "meta.json"
        if meta.exists():
            w = json.loads(meta.read_text()).get("wall_s")
            if w is not None:
                vals.append(float(w))
    return float(np.mean(vals)) if vals else math.nan


def _pm(v: pd.Series) -> str:
    v = v.dropna().astype(float)
    if v.empty:
        return "—"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.iloc[0]:.4f}"


def gn_family_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: seeds, final train loss / test loss / test accuracy / NTK similarity / last-block CKA as
    mean ± sample std over seeds, where its test loss and accuracy fall between exact GN (0) and Adam (1), and the
    mean wall time of one run."""
    ep = epoch_rows(df)
    ntk, cka = _ntk_column(ep), _last_cka(ep)
    fin = _done(final_rows(ep, "test_acc"))
    if fin.empty:
        return pd.DataFrame()
    fin = fin.assign(method=method_labels(fin))
    means = fin.groupby("method")[["test_loss", "test_acc"]].mean()
    rows = []
    order = [s.label for s in by_method(fin)]
    for m in order:
        f = fin[fin["method"] == m]
        row = {"method": m, "seeds": int(f["run_id"].nunique()), "epochs": int(f["epoch"].max())}
        for k in ("train_loss", "test_loss", "test_acc", ntk, cka):
            row[k] = _pm(col(f, k))
        for k in ("test_loss", "test_acc"):
            if "GN" in means.index and "Adam" in means.index and means.loc["Adam", k] != means.loc["GN", k]:
                gn, adam = means.loc["GN", k], means.loc["Adam", k]
                row[f"{k} GN→Adam"] = float((means.loc[m, k] - gn) / (adam - gn)) + 0.0  # + 0.0: no "-0"
            else:
                row[f"{k} GN→Adam"] = math.nan
        row["wall_s/run"] = _wall_s(col(f, "path"))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# registry entries


def _specs() -> dict[str, FigureSpec]:
    return {f.name: f for f in [
        FigureSpec(
            "linearisation_phase", "Iterative linearisation: accuracy over K × training length",
            "Training the tangent model f(x; θ_s) + J(x; θ_s)(θ − θ_s) and re-linearising every K updates "
            "(Goldwaser & Ge 2022): K = 1 is ordinary training with the inner optimiser, K = ∞ the NTK model at init. "
            "(a) test accuracy of the linearised model over K × updates, (b) accuracy vs updates per K with GN on the "
            "full network as reference, (c) accuracy vs the number of feature updates (re-linearisations).",
            {"quick": ("linearisation_phase_quick", "minibatch_quick"),
             "paper": ("linearisation_phase_paper", "minibatch_paper_mnist")},
            plot_linearisation_phase, paper=False),
        FigureSpec(
            "data_dependent_ntk", "Data-dependent NTK: linearised after t epochs",
            "Full training with GN, Adam or SGD up to epoch t, then linearised training about θ_t (inner SGD, K = ∞) "
            "to the end (Fort et al. 2020, Fig. 8): final test error and train loss vs t; dashed: full training. "
            "How good is the kernel each optimiser leaves behind?",
            {"quick": ("data_dependent_ntk_quick",), "paper": ("data_dependent_ntk_paper",)},
            plot_data_dependent_ntk, paper=False),
        FigureSpec(
            "barrier", "Parent/child spawning: error barrier",
            "Two children trained from the parent's θ_t with different batch orders: error barrier along the straight "
            "line between them, max_α err − mean of the endpoints (a), their normalised function distance (b) and "
            "their test error (c) vs the spawn epoch t, per optimiser (Fort et al. 2020). "
            "Needs `revgn study spawn` (barriers.parquet).",
            {"quick": ("spawn_quick",), "paper": ("spawn_paper",)},
            plot_barrier, paper=False),
        FigureSpec(
            "kernel_dynamics", "Kernel distance and velocity, every optimiser",
            "Fort et al.'s kernel distance 1 − cos(Θ_0, Θ_t) of the empirical NTK on the probe set to init (a), its "
            "velocity between consecutive epochs (b), and the distance against test accuracy (c), GN, Adam, SGD.",
            {"quick": ("minibatch_quick",), "paper": ("minibatch_paper_mnist", "minibatch_paper_cifar")},
            plot_kernel_dynamics, paper=False),
        FigureSpec(
            "gn_family", "Exact GN vs damped, inexact GN (GGN-CG, K-FAC) vs Adam/SGD",
            "Is poor generalisation a property of exact GN or of Gauss-Newton methods? Exact GN (truncated pinv), "
            "GGN-CG (conjugate gradient on GGN mat-vecs, identity and exact loss Hessian), K-FAC, Adam and "
            "SGD on the same mini-batches at the presets' rates: train loss, test loss, test accuracy, NTK similarity to init and the last "
            "block's CKA to init vs epoch (mean ± std over seeds).",
            {"quick": ("gn_family_quick", "gn_family_cg_quick"), "paper": ("gn_family_paper", "gn_family_cg_paper")},
            plot_gn_family, paper=False),
    ]}


_CACHE: dict[str, FigureSpec] = {}


def study_figures() -> dict[str, FigureSpec]:
    """name → FigureSpec of every study figure (built on first use)."""
    if not _CACHE:
        _CACHE.update(_specs())
    return _CACHE


# ---------------------------------------------------------------------------------------------------------------
# the numbers behind each figure (printed by `revgn study run`, quoted in docs/studies.md)


def summary(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """A small table of the headline numbers of a study figure's rows."""
    ep = epoch_rows(df)
    if name == "linearisation_phase":
        lin = _done(final_rows(ep[col(ep, "optimizer.name") == "linearised"], "test_acc"))
        out = pd.DataFrame({
            "inner": col(lin, "optimizer.inner").astype(str), "lr": col(lin, "optimizer.lr"),
            "K": [k_label(k_value(v))[2:] for v in col(lin, "optimizer.relinearise_every")],
            "updates": lin["step"].astype(int), "feature_updates": _feature_updates(lin).astype(int),
            "test_acc": lin["test_acc"], "train_loss": col(lin, "train_loss")})
        ref = _done(final_rows(full_runs(ep), "test_acc"))
        if not ref.empty:
            out = pd.concat([out, pd.DataFrame({
                "inner": "(" + col(ref, "optimizer.name").astype(str) + ", full net)", "lr": col(ref, "optimizer.lr"),
                "K": "—", "updates": ref["step"].astype(int), "feature_updates": ref["step"].astype(int),
                "test_acc": ref["test_acc"], "train_loss": col(ref, "train_loss")})], ignore_index=True)
        return out.sort_values(["inner", "feature_updates"], ascending=[True, False]).reset_index(drop=True)
    if name == "data_dependent_ntk":
        fin = _done(final_rows(ep, "test_acc"))
        sp = [None if (v is None or (isinstance(v, float) and math.isnan(v))) else int(v)
              for v in col(fin, "train.spawn_epoch")]
        opts = [str(o) for o in col(fin, "optimizer.name")]
        out = pd.DataFrame({"optimizer": opts, "spawn_epoch": ["full" if t is None else t for t in sp],
                            "test_err": (1.0 - fin["test_acc"]).to_numpy(), "train_loss": col(fin, "train_loss").to_numpy()})
        rank = [(order_optimizers(opts).index(o), math.inf if t is None else t) for o, t in zip(opts, sp)]
        return out.iloc[sorted(range(len(out)), key=rank.__getitem__)].reset_index(drop=True)
    if name == "barrier":
        b = load_barriers(df)
        return b[["optimizer", "seed", "spawn_epoch", "child_epochs", "err_a", "err_b", "barrier", "loss_barrier",
                  "disagreement", "function_distance", "weight_distance"]].sort_values(
            ["optimizer", "seed", "spawn_epoch"]).reset_index(drop=True)
    if name == "kernel_dynamics":
        rows = []
        for s in by_optimizer(full_runs(ep)):
            d = _done(s.rows).dropna(subset=["ntk_dist_init"]) if "ntk_dist_init" in s.rows.columns else s.rows.iloc[0:0]
            if d.empty:
                continue
            g = d.groupby("epoch")[["ntk_dist_init", "ntk_velocity", "test_acc"]].mean()
            v = g["ntk_velocity"].dropna()
            rows.append({"optimizer": s.label, "epochs": int(g.index.max()),
                         "ntk_dist_init_end": float(g["ntk_dist_init"].iloc[-1]),
                         "ntk_velocity_first": float(v.iloc[0]) if len(v) else math.nan,
                         "ntk_velocity_last": float(v.iloc[-1]) if len(v) else math.nan,
                         "test_acc_end": float(g["test_acc"].dropna().iloc[-1]) if g["test_acc"].notna().any() else math.nan})
        return pd.DataFrame(rows)
    if name == "gn_family":
        return gn_family_table(df)
    raise KeyError(name)
