"""``revgn plot runs``: any runs (picked by the same filters as ``revgn runs``) as curves in the house style.

Panels are rows = ``--y`` metrics × columns = values of ``--col``; inside a panel one curve per ``--hue`` value
(× ``--style`` value), each the mean over the runs it holds (seeds) with a ±1 std band (``style.plot_series``).
Log axes, labels and optimiser colours come from ``revgn_cli.figures.style``, so a user's figure looks like
the paper figures.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

import matplotlib
import pandas as pd
from matplotlib.figure import Figure

from revgn_cli.figures.plots import Series, col, draw
from revgn_cli.figures.style import (
    OPT_COLOURS, OPT_LABELS, finish, label_axes, legend, new_figure, order_optimizers, sequential_colours, style,
)
from revgn_cli.overrides import comma_list

LINESTYLES = ("-", "--", ":", "-.")


def _values(df: pd.DataFrame, key: str | None) -> list[Any]:
    """Distinct values of a config column in a stable order (numbers ascending, optimisers in house order)."""
    if key is None:
        return [None]
    vals = list(col(df, key).dropna().unique())
    if key == "optimizer.name":
        return order_optimizers([str(v) for v in vals])
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
    return sorted(vals) if numeric else sorted(vals, key=str)


def _short(key: str) -> str:
    head, _, tail = key.rpartition(".")
    return head.rpartition(".")[2] if tail == "name" and head else tail


def value_label(key: str, value: Any) -> str:
    if key == "optimizer.name":
        return OPT_LABELS.get(str(value), str(value))
    return f"{_short(key)}={value:g}" if isinstance(value, float) else f"{_short(key)}={value}"


def hue_colours(key: str | None, values: Sequence[Any]) -> list[str]:
    """Optimiser colours for ``optimizer.name``, a sequential map for numbers (lr, init std), else tab10."""
    if key == "optimizer.name":
        return [OPT_COLOURS.get(str(v), matplotlib.colormaps["tab10"](i)) for i, v in enumerate(values)]
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return sequential_colours(len(values))
    cmap = matplotlib.colormaps["tab10"]
    return [matplotlib.colors.to_hex(cmap(i % 10)) for i in range(len(values))]


def metric_rows(df: pd.DataFrame, metric: str, x: str) -> pd.DataFrame:
    """The rows that log ``metric``: the per-epoch evaluations when they do, else the per-update rows."""
    if metric not in df.columns:
        return df.iloc[0:0]
    d = df[df[metric].notna()]
    for split in ("epoch", "step"):
        s = d[d["split"] == split] if "split" in d.columns else d
        if not s.empty and x in s.columns:
            return s
    return d


def series(df: pd.DataFrame, hue: str | None, style_key: str | None) -> Iterator[Series]:
    """One ``Series`` per (hue value, style value) present in ``df``."""
    hues = _values(df, hue)
    styles = _values(df, style_key)
    for h, colour in zip(hues, hue_colours(hue, hues)):
        dh = df if hue is None else df[col(df, hue) == h]
        for i, s in enumerate(styles):
            rows = dh if style_key is None else dh[col(dh, style_key) == s]
            if rows.empty:
                continue
            parts = [value_label(hue, h)] if hue else []
            parts += [value_label(style_key, s)] if style_key else []
            yield Series(", ".join(parts) or "runs", colour, rows, LINESTYLES[i % len(LINESTYLES)])


def plot_runs(df: pd.DataFrame, *, x: str = "epoch", ys: Sequence[str] = ("train_loss", "test_loss"),
              hue: str | None = "optimizer.name", col_key: str | None = None, style_key: str | None = None,
              title: str = "runs") -> Figure:
    """Rows from ``load_runs`` → a figure: rows of panels = ``ys``, columns = values of ``col_key``.

    Only ``done`` and ``diverged`` runs are drawn (diverged ones dotted, as in the paper figures).
    """
    cols = _values(df, col_key)
    with style():
        fig, axes = new_figure(len(ys), len(cols))
        for r, metric in enumerate(ys):
            rows = metric_rows(df, metric, x)
            for c, cv in enumerate(cols):
                d = rows if col_key is None else rows[col(rows, col_key) == cv]
                ax = axes[r, c]
                draw(ax, series(d, hue, style_key), metric, x=x)
                label_axes(ax, metric, xlabel=x, title=value_label(col_key, cv) if col_key else None)
        legend(axes[0, 0])
        return finish(fig, title)


def figure_name(filters: Sequence[str], ys: Sequence[str]) -> str:
    """A file name from what was plotted: ``runs_exp_name-cmp_train_loss-test_loss``."""
    raw = "_".join(["runs", *filters, "-".join(ys)])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)[:120]


def _check_key(key: str | None, known: set[str], what: str) -> None:
    if key is not None and key not in known:
        from revgn_cli.results.query import unknown_key_error

        raise unknown_key_error(key, known, what)


def plot_user_runs(args: list[str], results: Any, out: Any, *, x: str, y: str, hue: str | None, col_key: str | None,
                   style_key: str | None, allow_partial: bool = False, average_over: Sequence[str] = ()) -> list[Any]:
    """The ``revgn plot runs`` command: filters → ``load_runs`` → ``plot_runs`` → PNG + PDF; returns the paths.

    Figures go to ``<results>/plots/`` unless ``--out`` says otherwise: a user's figures never land in the
    repository's ``figures/`` by accident. A curve is a mean over seeds: one that would also average runs differing
    in another key is an error naming it, unless ``average_over`` lists that key.
    """
    from pathlib import Path

    from revgn_cli.console import out as stdout
    from revgn_cli.figures.data import PLOT_STATUSES
    from revgn_cli.figures.style import save
    from revgn_cli.overrides import parse_filters, pop_results
    from revgn_cli.results.loader import load_runs, query_runs
    from revgn_cli.results.query import QueryError
    from revgn_cli.results.table import varying_keys

    from revgn_cli.figures.outputs import file_target

    filters, res = pop_results(args, results)
    flt = parse_filters(filters)
    # Checked before any run is read: a read-only results dir or an --out that names a file of another kind is
    # one line naming the fix, not an OSError after the figure was drawn.
    folder, stem, formats = file_target(Path(out) if out is not None else Path(res) / "plots")
    summaries = query_runs(res, flt)  # a bad path or filter: one error line naming the fix
    ys = comma_list(y)
    from revgn_cli.config import Config, config_dict, flatten

    known = {k for s in summaries for k in s} | set(flatten(config_dict(Config())))
    for key, what in ((hue, "--hue key"), (col_key, "--col key"), (style_key, "--style key")):
        _check_key(key, known, what)
    df = load_runs(res, flt, statuses=PLOT_STATUSES, allow_partial=allow_partial)
    if df.empty:
        states = sorted({str(s["status"]) for s in summaries})
        raise QueryError(f"no finished (done/diverged) run matches {' '.join(filters) or 'in ' + res} "
                         f"({len(summaries)} run(s) match{', status ' + ', '.join(states) if states else ''}): "
                         f"`revgn runs --results {res}` lists them, `revgn train` / `revgn sweep` make more")
    metrics = {c for c in df.columns if df[c].dtype.kind == "f" and not c.startswith(("meta.",))}
    for m in ys:
        _check_key(m, metrics, "metric (--y)")
    _check_key(x, set(df.columns), "x column (--x)")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for s in summaries:
        if s["status"] in PLOT_STATUSES:
            groups.setdefault(tuple(str(s.get(k)) for k in (hue, col_key, style_key)), []).append(s)
    # Keys that differ inside one curve (other than the seed): the mean would mix settings, unless --average-over.
    mixed = sorted({k for g in groups.values() for k in varying_keys(g) if k not in ("seed", "experiment")})
    for key in average_over:
        _check_key(key, known, "--average-over key")
    left = [k for k in mixed if k not in average_over]
    if left:
        raise QueryError(f"each curve would average runs that differ in {', '.join(left)}: split them with --hue / "
                         f"--style / --col, filter them, or say --average-over {','.join(left)}")
    fig = plot_runs(df, x=x, ys=ys, hue=hue, col_key=col_key, style_key=style_key,
                    title=" ".join(filters) or f"runs in {res}")
    paths = save(fig, folder, stem or figure_name(filters, ys), *([formats] if formats else []))
    fig.clear()
    stdout.print(f"plot runs ({df['run_id'].nunique()} run(s)): {' '.join(str(p) for p in paths)}", highlight=False,
                 soft_wrap=True)
    return paths
