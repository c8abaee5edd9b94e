"""The scale study's table, trends and figure, from its margins CSV alone (``revgn study report scaling --from``).

Input: ``docs/data/scaling_margins.csv`` (``MARGIN_COLUMNS``: one row per cell, claim and
seed with the claim's margin, > 0 = the paper's side, and its SESOI). Nothing here reads runs or the design.

* ``cell_verdicts`` — per (cell, claim): ``revgn_cli.stats.judge`` on the per-seed margins, Holm over the claims of
  a cell (``judge_family``).
* ``axis_trends`` — per (axis, claim): the per-seed margins of the axis's cells regressed on log2(axis value)
  (``revgn_cli.stats.trend``): slope per doubling ± 95 % t half-width.
* ``markdown`` — both tables; ``plot`` — rows claims, columns axes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from revgn_cli.config import ConfigError

COLOURS = {"HOLDS": "tab:green", "REVERSED": "tab:red", "NEGLIGIBLE": "tab:blue", "INCONCLUSIVE": "tab:orange",
           "INSUFFICIENT": "grey", "NO SESOI": "grey"}
BEGIN, END = "<!-- scaling:begin", "<!-- scaling:end -->"
# The CSV's columns, written by ``revgn_cli.studies.scaling``: one row per (cell, claim, seed); a cell with no
# measured seed for a claim has one row with seed −1, margin NaN.
MARGIN_COLUMNS = ("cell", "axes", "claim", "seed", "margin", "sesoi", "rates", "lr", "runs_done", "runs_expected",
                  "cell_wall_s", "hidden", "batch", "epochs", "updates", "train_images")


def read_margins(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, keep_default_na=True)
    except FileNotFoundError:
        raise ConfigError(f"no margins file {path} (`revgn study run scaling` writes it)") from None
    except Exception as e:  # truncated or foreign file
        raise ConfigError(f"unreadable margins file {path}: {str(e).splitlines()[0]}") from e
    missing = [c for c in MARGIN_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{path} is not a scale-study margins file (missing columns: {', '.join(missing)})")
    df["axes"] = df["axes"].astype(object).fillna("").astype(str)
    return df


def axis_points(df: pd.DataFrame) -> pd.DataFrame:
    """The rows once per axis the cell stands on, with columns axis and value (cells on no axis drop out)."""
    out = []
    for axes, g in df.groupby("axes", sort=False):
        for part in str(axes).split():
            a, v = part.split("=", 1)
            out.append(g.assign(axis=a, value=float(v)))
    return pd.concat(out, ignore_index=True) if out else df.iloc[0:0].assign(axis=[], value=[])


def cell_verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """Per (cell, claim), cells and claims in file order: n, mean, half, p, p_adj, verdict, rates, wall, runs."""
    from revgn_cli.stats import judge, judge_family

    out = []
    for cell, g in df.groupby("cell", sort=False):
        claims = list(dict.fromkeys(g["claim"]))
        judged = []
        for cid in claims:
            c = g[(g["claim"] == cid) & (g["seed"] >= 0)]
            sesoi = float(g.loc[g["claim"] == cid, "sesoi"].iloc[0])
            judged.append(judge(c["margin"].to_numpy(float), sesoi) if math.isfinite(sesoi) and sesoi > 0 else None)
        family = iter(judge_family([v for v in judged if v is not None]))
        first = g.iloc[0]
        for cid, v in zip(claims, judged):
            v = next(family) if v is not None else None
            m = g[(g["claim"] == cid) & (g["seed"] >= 0)]["margin"].to_numpy(float)
            fin = m[np.isfinite(m)]
            out.append({"cell": cell, "claim": cid, "n": int(fin.size), "n_nonfinite": int(m.size - fin.size),
                        "mean": v.mean if v else (float(fin.mean()) if fin.size else math.nan),
                        "half": v.half if v else math.nan, "p": v.p if v else math.nan,
                        "p_adj": v.p_adj if v else math.nan, "verdict": v.verdict if v else "NO SESOI",
                        "lr": first["lr"], "rates": first["rates"], "wall_s": float(first["cell_wall_s"]),
                        "runs": f"{int(first['runs_done'])}/{int(first['runs_expected'])}"})
    return pd.DataFrame(out)


def axis_trends(df: pd.DataFrame) -> pd.DataFrame:
    """Per (axis, claim): slope of the per-seed margin on log2(value), its 95 % half-width, n points, cells.

    An axis whose cells were recorded under different rate protocols (``rates``: e.g. one tuned on the grid only,
    one with its edge choices checked) gets no slope (NaN, ``mixed`` True): the margins would move with the
    protocol as well as with the axis."""
    from revgn_cli.stats import trend

    pts = axis_points(df[df["seed"] >= 0])
    out = []
    for (axis, cid), g in pts.groupby(["axis", "claim"], sort=False):
        mixed = g["rates"].nunique() > 1
        t = trend(np.log2(g["value"].to_numpy(float)), g["margin"].to_numpy(float))
        out.append({"axis": axis, "claim": cid, "slope": math.nan if mixed else t.slope,
                    "half": math.nan if mixed else t.half, "n": t.n, "values": g["value"].nunique(), "mixed": mixed})
    return pd.DataFrame(out, columns=["axis", "claim", "slope", "half", "n", "values", "mixed"])


def direction(slope: float, half: float) -> str:
    """Which way a claim's margin moves as the axis value grows: ``toward`` the paper's side (the slope's 95 %
    interval above 0; margins are > 0 on the paper's side), ``away`` (below 0), ``unclear`` (it covers 0), or ``""``
    when there is no slope (one axis value, or mixed rate protocols)."""
    if not (math.isfinite(slope) and math.isfinite(half)):
        return ""
    return "toward" if slope - half > 0 else "away" if slope + half < 0 else "unclear"


def _pm(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "—"
    return f"{mean:+.3g}" + (f" ± {half:.2g}" if math.isfinite(half) else "")


def _trend_text(r: pd.Series) -> str:
    d = direction(r["slope"], r["half"])
    return f"{_pm(r['slope'], r['half'])} (n={r['n']})" + (f" *{d}*" if d else "")


def markdown(df: pd.DataFrame) -> str:
    """The verdict table (claims × cells, with each cell's rates, runs and wall time) and the trend table."""
    v = cell_verdicts(df)
    cells = list(dict.fromkeys(v["cell"]))
    claims = list(dict.fromkeys(v["claim"]))
    first = v.drop_duplicates("cell").set_index("cell")
    lines = ["Margin > 0 = the paper's side: mean ± 95 % t half-width over the finite seeds (n); verdicts by "
             "revgn_cli/stats.py with each claim's SESOI, Holm over the claims of a cell.", "",
             "| claim | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for cid in claims:
        row = v[v["claim"] == cid].set_index("cell")
        cellv = []
        for c in cells:
            r = row.loc[c]
            cellv.append("not run" if r["n"] == 0 and r["n_nonfinite"] == 0 else
                         f"{_pm(r['mean'], r['half'])} **{r['verdict']}** (n={r['n']}"
                         + (f", {r['n_nonfinite']} diverged" if r["n_nonfinite"] else "") + ")")
        lines.append(f"| {cid} | " + " | ".join(cellv) + " |")
    lines.append("| rates | " + " | ".join(f"{first.loc[c, 'lr']} ({first.loc[c, 'rates']})" for c in cells) + " |")
    lines.append("| runs done | " + " | ".join(first.loc[c, "runs"] for c in cells) + " |")
    lines.append("| summed run wall | " + " | ".join(f"{first.loc[c, 'wall_s'] / 60:.0f} min" for c in cells) + " |")
    t = axis_trends(df)
    if not t.empty:
        axes = list(dict.fromkeys(t["axis"]))
        lines += ["", "Trend: slope of the per-seed margin per doubling of the axis value (OLS on log2), ± 95 % t "
                  "half-width (n points); *toward* / *away*: the margin moves toward / away from the paper's side as the "
                  "axis value grows (the interval excludes 0), *unclear*: it covers 0.", "", "| claim | " + " | ".join(axes) + " |", "|---|" + "---|" * len(axes)]
        for cid in claims:
            row = t[t["claim"] == cid].set_index("axis")
            lines.append(f"| {cid} | " + " | ".join(
                ("— (mixed rate protocols)" if a in row.index and row.loc[a, "mixed"] else
                 _trend_text(row.loc[a]) if a in row.index else "—")
                for a in axes) + " |")
    return "\n".join(lines)


def splice(doc: Path, table: str, source: str) -> None:
    """Replace the block between the scaling markers of ``doc`` with ``table``."""
    text = doc.read_text()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ConfigError(f"{doc} has no '{BEGIN} …' / '{END}' block to fill")
    doc.write_text(text[:i] + f"{BEGIN} (regenerated from {source}) -->\n" + table + "\n" + text[j:])


def plot(df: pd.DataFrame, title: str | None = None):
    """Rows: claims; columns: axes. Per axis value the mean margin ± 95 % t-interval (verdict colour), the seeds as
    dots, the fitted trend line and its slope; the paper corner's value (the cell shared by every axis) marked."""
    from revgn_cli.figures.style import finish, new_figure, style

    v = cell_verdicts(df).set_index(["cell", "claim"])
    pts = axis_points(df)
    t = axis_trends(df).set_index(["axis", "claim"]) if not pts.empty else None
    claims = list(dict.fromkeys(df["claim"]))
    axes = list(dict.fromkeys(pts["axis"])) if not pts.empty else []
    if not axes:
        raise ConfigError("the margins file has no cell on an axis: nothing to draw")
    with style():
        fig, grid = new_figure(len(claims), len(axes), panel=(2.6, 1.8))
        for r, cid in enumerate(claims):
            for c, axis in enumerate(axes):
                ax = grid[r, c]
                g = pts[(pts["axis"] == axis) & (pts["claim"] == cid)]
                xs = sorted(g["value"].unique())
                for x in xs:
                    gc = g[g["value"] == x]
                    cell = gc["cell"].iloc[0]
                    seeds = gc[(gc["seed"] >= 0) & np.isfinite(gc["margin"])]
                    ax.scatter(np.full(len(seeds), x), seeds["margin"], s=4, color="0.6", zorder=1)
                    vv = v.loc[(cell, cid)]
                    if vv["n"] == 0:
                        ax.annotate("not run", (x, 0), fontsize=6, color="grey", rotation=90, ha="center",
                                    va="bottom")
                        continue
                    half = vv["half"] if math.isfinite(vv["half"]) else 0.0
                    ax.errorbar([x], [vv["mean"]], yerr=[[half], [half]], fmt="o", ms=3.5, capsize=2.5,
                                color=COLOURS.get(vv["verdict"], "grey"), zorder=3)
                tr = t.loc[(axis, cid)] if t is not None and (axis, cid) in t.index else None
                if tr is not None and math.isfinite(tr["slope"]):
                    fin = g[(g["seed"] >= 0) & np.isfinite(g["margin"])]
                    lx = np.log2(fin["value"].to_numpy(float))
                    icpt = fin["margin"].mean() - tr["slope"] * lx.mean()
                    line = np.array([min(xs), max(xs)])
                    ax.plot(line, icpt + tr["slope"] * np.log2(line), color="black", lw=0.7, ls="--", zorder=2)
                    ax.text(0.02, 0.95, f"slope {_pm(tr['slope'], tr['half'])}", transform=ax.transAxes,
                            fontsize=6, va="top")
                elif tr is not None and tr["mixed"]:
                    ax.text(0.02, 0.95, "no slope: mixed rate protocols", transform=ax.transAxes, fontsize=6,
                            va="top", color="grey")
                ax.axhline(0.0, color="black", lw=0.5)
                ax.set_xscale("log", base=2)
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
                ax.set_xlim(min(xs) / 1.4, max(xs) * 1.4)
                if r == 0:
                    ax.set_title(axis.replace("_", " "), fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"{cid}\nmargin", fontsize=7)
        return finish(fig, title or "Scale study: each claim's margin along each axis (from the margins CSV)")


def report(path: Path, out_dir: Path, doc: Path | None = None) -> tuple[str, list[Path]]:
    """Table (markdown) and figure (``<out_dir>/scaling.png``/``.pdf``) from the CSV; the table also into ``doc``."""
    df = read_margins(path)
    table = markdown(df)
    from revgn_cli.figures.style import save

    paths: list[Path] = []
    if not axis_points(df[df["seed"] >= 0]).empty:  # the figure needs a cell on an axis (the quick corner is on none)
        fig = plot(df)
        paths = save(fig, out_dir, "scaling")
        fig.clear()
    if doc is not None:
        splice(doc, table, str(path))
    return table, paths
