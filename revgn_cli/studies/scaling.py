"""The scale ladder (``revgn study run scaling scale=quick``): how each mini-batch main-text claim's margin moves
as the quick setting is moved toward the paper's, one axis at a time (issue 12).

The ladder is declared in ``conf/study/scaling_<scale>.yaml`` (not a Hydra group: the study reads it): the base
overrides (``experiment=minibatch_quick``), the grid every rung runs (GN and Adam × seeds 42, 43, 44), and per axis
(training length, width h, batch size) its rungs as override lists and the paper's value. Rungs train in the
declared ``order`` (cheapest first) through the sweep machinery (Hydra multirun; the joblib launcher with
``hydra.launcher.n_jobs=2`` unless the caller picks another), so finished runs are skipped and a rerun resumes.

``measure`` turns the finished runs of every rung into one row per (axis, value, claim, seed) with the claim's
margin (``revgn_cli.figures.claims``: > 0 is the paper's side), written to ``<results>/scaling/ladder.parquet``;
``ladder_table`` reduces it to mean ± 95 % t-interval and verdict (revgn_cli/stats.py) per (claim, axis, value).
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from revgn_cli.config import ConfigError, conf_dir

LADDER_DIR, LADDER_FILE = "scaling", "ladder.parquet"
# The claims the ladder tracks: the main-text claims measured on mini-batch runs (fig1 is full batch).
CLAIM_IDS = ("fig2.test_loss", "fig2.test_acc", "fig2.train_saturates", "fig2.fast_start", "fig3.batch_drop_early",
             "fig3.batch_drop_late", "fig4.ntk_lazy", "fig4.ntk_lazy_logit", "fig4.cka_last")
LADDER_COLUMNS = ("axis", "value", "claim", "seed", "margin", "runs_done", "runs_expected", "wall_s")
DEFAULT_LAUNCHER = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


@dataclass(frozen=True)
class Rung:
    axis: str
    value: float
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Ladder:
    base: tuple[str, ...]
    grid: dict[str, list[Any]]
    axes: dict[str, dict[str, Any]]  # axis → {label, paper, rungs: {value: [overrides]}}
    order: tuple[tuple[str, float], ...]

    def rung(self, axis: str, value: float) -> Rung:
        rungs = self.axes[axis]["rungs"]
        key = next((k for k in rungs if float(k) == float(value)), None)
        if key is None:
            raise ConfigError(f"scaling ladder: axis {axis!r} has no rung {value:g}")
        return Rung(axis, float(value), tuple(str(o) for o in rungs[key] or ()))

    def rungs(self) -> list[Rung]:
        """Every rung, in training order (the declared ``order``, then any rung it leaves out)."""
        seen, out = set(), []
        listed = [(a, float(v)) for a, v in self.order]
        rest = [(a, float(v)) for a, ax in self.axes.items() for v in ax["rungs"]]
        for a, v in listed + rest:
            if (a, v) not in seen:
                seen.add((a, v))
                out.append(self.rung(a, v))
        return out

    def overrides(self, rung: Rung) -> list[str]:
        grid = [f"{k}={','.join(str(v) for v in vals)}" for k, vals in self.grid.items()]
        return [*self.base, *grid, *rung.overrides]


def load_ladder(scale: str) -> Ladder:
    """The ladder declared in conf/study/scaling_<scale>.yaml."""
    from omegaconf import OmegaConf

    path = conf_dir() / "study" / f"scaling_{scale}.yaml"
    if not path.exists():
        have = sorted(p.stem.split("_", 1)[1] for p in (conf_dir() / "study").glob("scaling_*.yaml"))
        raise ConfigError(f"no scale ladder for scale={scale} (have: {', '.join(have)}); the ladder starts at quick "
                          "scale and moves toward the paper's")
    d = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return Ladder(tuple(d["base"]), dict(d["grid"]), dict(d["axes"]),
                  tuple((str(a), float(v)) for a, v in d.get("order", [])))


Log = Callable[[str], None]


def train_ladder(ladder: Ladder, extra: list[str], results_dir: str, *, force: bool = False, quiet: bool = False,
                 log: Log | None = None) -> int:
    """Train every rung's missing runs in order; returns the number of failed jobs. ``extra`` = the caller's
    overrides (a ``hydra/launcher=...`` there replaces the default joblib launcher)."""
    from revgn_cli import sweep as sw

    log = log or (lambda s: None)
    launcher = [] if any(o.startswith(("hydra/launcher", "hydra.launcher")) for o in extra) else list(DEFAULT_LAUNCHER)
    failed = 0
    for r in ladder.rungs():
        ov = [*ladder.overrides(r), *extra, *launcher, f"results_dir={results_dir}"]
        jobs = sw.expand(ov)
        todo = force or any(_status(results_dir, j.cfg) != "done" for j in jobs)
        log(f"rung {r.axis} = {r.value:g} ({' '.join(r.overrides) or 'the quick setting'}): "
            f"{'training' if todo else 'all runs done'}")
        if todo:
            failed += len(sw.report_failures(sw.launch(ov, force=force, quiet=quiet, jobs=jobs)))
    return failed


def _status(results_dir: str, cfg) -> str | None:
    from revgn_cli.train.runner import run_dir_for

    return run_dir_for(cfg).read_meta().get("status")


def _rung_runs(ladder: Ladder, rung: Rung, extra: list[str], results_dir: str) -> tuple[pd.DataFrame, int, float]:
    """The rung's finished rows (done / diverged), how many runs it expects, and their summed wall time (s)."""
    from revgn_cli.config import run_id
    from revgn_cli.results import load_runs
    from revgn_cli.sweep import expand
    from revgn_cli.train.runner import run_dir_for

    jobs = expand([*ladder.overrides(rung), *extra, f"results_dir={results_dir}"])
    ids = sorted({run_id(j.cfg) for j in jobs})
    wall = sum(float(run_dir_for(j.cfg).read_meta().get("wall_s") or 0.0) for j in jobs)
    df = load_runs(results_dir, {"run_id": ids}, statuses=("done", "diverged"))
    if not df.empty and "status" in df.columns:  # only finished runs count, whatever the loader lets through
        df = df[df["status"].isin(["done", "diverged"])]
    return df, len(ids), wall


def measure(ladder: Ladder, extra: list[str], results_dir: str) -> pd.DataFrame:
    """One row per (axis, value, claim, seed): the claim's margin on that rung's finished runs (LADDER_COLUMNS);
    a rung with no finished run gives one row per claim with seed −1 and NaN margin (so the table shows it)."""
    from revgn_cli.figures.claims import CLAIMS, NotMeasurable

    claims = [c for c in CLAIMS if c.id in CLAIM_IDS]
    rows: list[dict[str, Any]] = []
    cache: dict[tuple[str, ...], tuple[pd.DataFrame, int, float]] = {}
    for r in ladder.rungs():
        key = r.overrides
        if key not in cache:
            cache[key] = _rung_runs(ladder, r, extra, results_dir)
        df, expected, wall = cache[key]
        done = int(df["run_id"].nunique()) if not df.empty else 0
        base = {"axis": r.axis, "value": r.value, "runs_done": done, "runs_expected": expected, "wall_s": wall}
        for c in claims:
            try:
                margins = c.check(df).margins if done else {}
            except NotMeasurable:
                margins = {}
            if not margins:
                rows.append({**base, "claim": c.id, "seed": -1, "margin": math.nan})
            for s, m in sorted(margins.items()):
                rows.append({**base, "claim": c.id, "seed": int(s), "margin": float(m)})
    return pd.DataFrame(rows, columns=list(LADDER_COLUMNS))


def ladder_path(results_dir: str | Path) -> Path:
    return Path(results_dir).expanduser() / LADDER_DIR / LADDER_FILE


def write_ladder(df: pd.DataFrame, results_dir: str | Path, ladder: Ladder) -> Path:
    """Atomically write ladder.parquet; the axes' labels and paper values ride along in the parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from revgn_cli.results.store import atomic_write_bytes

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {k: {"label": v["label"], "paper": v["paper"]} for k, v in ladder.axes.items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"revgn_axes": json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = ladder_path(results_dir)
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_ladder(path: Path) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    meta = json.loads((t.schema.metadata or {}).get(b"revgn_axes", b"{}"))
    return t.to_pandas(), meta


def ladder_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (claim, axis, value): n finite pairs, mean margin, 95 % t half-width, verdict (``revgn_cli.stats.judge``
    with the claim's SESOI; MISSING for a rung with no seed measured), runs done / expected."""
    from revgn_cli.figures.claims import CLAIMS
    from revgn_cli.stats import judge

    sesoi = {c.id: c.sesoi for c in CLAIMS}
    out = []
    for (claim, axis, value), g in df.groupby(["claim", "axis", "value"], sort=False):
        margins = g.loc[g["seed"] >= 0, "margin"]
        v = judge(margins, sesoi[claim])
        out.append({"claim": claim, "axis": axis, "value": value, "n": v.n, "margin": v.mean, "half": v.half,
                    "verdict": v.verdict if len(margins) else "MISSING", "runs": f"{int(g['runs_done'].iloc[0])}/{int(g['runs_expected'].iloc[0])}",
                    "wall_s": float(g["wall_s"].iloc[0])})
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------------------
# figure


def ladder_of_runs(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """ladder.parquet of the results dir the figure's base runs live in (their ``path`` column)."""
    from revgn_cli.figures.data import MissingRunsError
    from revgn_cli.figures.plots import col

    roots = sorted({Path(p).parent.parent for p in col(df, "path").dropna().unique()})
    for root in roots:
        if ladder_path(root).exists():
            return read_ladder(ladder_path(root))
    raise MissingRunsError(f"scaling: no {LADDER_DIR}/{LADDER_FILE} in {', '.join(map(str, roots)) or 'the results'}"
                           " — run `revgn study run scaling scale=quick`")


def plot_scaling(df: pd.DataFrame, ctx) -> Any:
    """Rows: claims; columns: axes. Mean margin ± 95 % t-interval over seeds vs the axis (log₂), zero line, the
    paper's value dotted; a rung with no seed measured yet is marked 'not run' or with its finished runs ('2/6')."""
    import numpy as np

    from revgn_cli.figures.style import finish, new_figure, style

    lad, meta = ladder_of_runs(df)
    tab = ladder_table(lad)
    claims = [c for c in CLAIM_IDS if c in set(tab["claim"])]
    axes_names = list(dict.fromkeys(tab["axis"]))
    colours = {"HOLDS": "tab:green", "REVERSED": "tab:red", "NEGLIGIBLE": "tab:blue", "INCONCLUSIVE": "tab:orange",
               "INSUFFICIENT": "grey", "MISSING": "grey"}
    with style():
        fig, axes = new_figure(len(claims), len(axes_names), panel=(2.9, 1.9))
        for r, cid in enumerate(claims):
            for c, axis in enumerate(axes_names):
                ax = axes[r, c]
                t = tab[(tab["claim"] == cid) & (tab["axis"] == axis)].sort_values("value")
                x = t["value"].to_numpy(float)
                for _, row in t.iterrows():
                    if row["n"] == 0:  # nothing to pair yet: say how far the rung got
                        done = row["runs"].split("/")[0]
                        ax.annotate("not run" if done == "0" else f"{row['runs']} runs", (row["value"], 0), fontsize=6,
                                    color="grey", rotation=90, ha="center", va="bottom")
                        continue
                    half = row["half"] if np.isfinite(row["half"]) else 0.0
                    ax.errorbar([row["value"]], [row["margin"]], yerr=[[half], [half]], fmt="o", ms=3.5, capsize=2.5,
                                color=colours[row["verdict"]])
                done = t[t["n"] > 0]
                ax.plot(done["value"], done["margin"], color="0.5", lw=0.8, zorder=0)
                ax.axhline(0.0, color="black", lw=0.6)
                paper = (meta.get(axis) or {}).get("paper")
                if paper is not None:
                    ax.axvline(float(paper), color="tab:purple", ls=":", lw=1.0)
                ax.set_xscale("log", base=2)
                ax.set_xticks(x, [f"{v:g}" for v in x])
                lo, hi = min(x.min(), paper or x.min()), max(x.max(), paper or x.max())
                ax.set_xlim(lo / 1.4, hi * 1.4)
                if r == 0:
                    ax.set_title(f"{(meta.get(axis) or {}).get('label', axis)}\n(dotted: paper {paper:g})",
                                 fontsize=8)
                if c == 0:
                    ax.set_ylabel(f"{cid}\nmargin", fontsize=7)
        return finish(fig, ctx.title)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """The ladder's numbers (``revgn study run scaling`` prints them; docs/studies.md quotes them)."""
    lad, _ = ladder_of_runs(df)
    t = ladder_table(lad)
    return t.assign(margin_ci=[("—" if n == 0 else f"{m:.3g} ± {h:.2g}") for n, m, h in
                               zip(t["n"], t["margin"], t["half"])])[
        ["claim", "axis", "value", "n", "margin_ci", "verdict", "runs", "wall_s"]]
