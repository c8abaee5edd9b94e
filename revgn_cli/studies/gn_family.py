"""The GN-family study (``revgn study run gn_family``): exact GN, GGN-CG, K-FAC, Adam and SGD, each at the step size
its validation split prefers, compared at the final epoch and at matched train loss (docs/studies.md §6).

The design is declared in ``conf/study/gn_family_<scale>.yaml`` (not a Hydra group): the base overrides, the seeds,
the tuner's seeds and validation size, per method its overrides, lr grid and damping grid, and the claims (pairs of
methods, a metric, ``final`` or ``matched``, a SESOI). The study

1. tunes: per method and damping λ, ``revgn_cli.tune.run_tune`` on the method's overrides (+ ``optimizer.damping=λ``
   and its lr grid); the (λ, lr) with the lowest mean final val_loss is the method's setting;
2. trains each method at its setting for every seed through the sweep machinery (joblib, 2 workers; finished runs
   are skipped, so a rerun resumes);
3. writes ``<results>/<exp_name>/gn_family_per_seed.csv`` (one row per method and seed) and
   ``gn_family_verdicts.csv`` (one row per claim: mean ± 95 % interval, p, TOST p, Holm-adjusted verdict, from
   ``revgn_cli.stats``), and the figure.

It goes method by method (tune, train, record), and with a *record* (``--record``, a CSV to commit) it keeps each
finished method's setting and curves there: a method the record holds under the same design is neither tuned nor
trained again, even on a machine without its runs, so the study can be finished over several sittings. With an
*archive* (``--archive``, a folder to commit; ``revgn_cli.results.archive``) every finished run, tuning runs
included, is copied there as it is read back, and restored into the results dir before anything trains: a sitting
cut off mid-method loses only its unfinished runs, on any machine.

Matched train loss, per seed and claim: L* = the larger of the two methods' final train losses (the level both
reach); each method's test loss is taken at the first epoch row whose train loss is ≤ L*, linearly interpolated in
train loss between that row and the one before. A diverged run gives a non-finite value (``stats`` counts it apart).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Collection, Mapping, Sequence

import pandas as pd

from revgn_cli.config import ConfigError, conf_dir
from revgn_cli.overrides import default_launcher
from revgn_cli.stats import judge, judge_family

PER_SEED_FILE, VERDICT_FILE = "gn_family_per_seed.csv", "gn_family_verdicts.csv"
AT = ("final", "matched")


@dataclass(frozen=True)
class Method:
    label: str
    overrides: tuple[str, ...]
    lr: tuple[float, ...]
    damping: tuple[float, ...] = ()  # empty: the method has no λ

    @property
    def optimizer(self) -> str:
        return next(o.split("=", 1)[1] for o in self.overrides if o.startswith("optimizer="))


@dataclass(frozen=True)
class Claim:
    id: str
    a: str
    b: str
    metric: str
    at: str
    sesoi: float
    text: str = ""


@dataclass(frozen=True)
class Design:
    base: tuple[str, ...]
    seeds: tuple[int, ...]
    tune_seeds: tuple[int, ...]
    val_size: int
    methods: dict[str, Method]
    claims: tuple[Claim, ...]


@dataclass(frozen=True)
class Setting:
    """A method's chosen setting: its lr, its λ (None without one) and the tuner's mean val_loss there; ``tune_run_s``
    is what tuning it cost (every λ's tune runs, summed over runs)."""

    lr: float
    damping: float | None = None
    val_loss: float = math.nan
    tune_run_s: float = field(default=0.0, compare=False)


@dataclass
class TuneCalls:
    """The tuner's Python API (``revgn_cli.tune``: ``run_tune(experiment, overrides, results_dir) -> TuneRecord``
    and ``tuned_rates``), injectable so tests run the study without training."""

    run_tune: Callable[[str, list[str], Any], Any]
    tuned_rates: Callable[..., dict[str, float]]


def default_calls() -> TuneCalls:
    from revgn_cli import tune as t  # the validation-split rate tuner

    return TuneCalls(t.run_tune, t.tuned_rates)


def load_design(scale: str = "quick", path: Path | None = None) -> Design:
    import yaml

    path = path or conf_dir() / "study" / f"gn_family_{scale}.yaml"
    if not path.exists():
        raise ConfigError(f"no gn_family design for scale {scale!r} ({path})")
    d = yaml.safe_load(path.read_text())
    methods = {lab: Method(lab, tuple(m["overrides"]), tuple(float(v) for v in m["lr"]),
                           tuple(float(v) for v in m.get("damping", ()) or ()))
               for lab, m in d["methods"].items()}
    claims = tuple(Claim(c["id"], c["a"], c["b"], c["metric"], c["at"], float(c["sesoi"]), c.get("text", ""))
                   for c in d.get("claims", []))
    for c in claims:
        if c.a not in methods or c.b not in methods or c.at not in AT:
            raise ConfigError(f"gn_family claim {c.id}: methods must be among {', '.join(methods)} and at one of "
                              f"{', '.join(AT)}")
    t = d.get("tune", {})
    return Design(tuple(d["base"]), tuple(int(s) for s in d["seeds"]), tuple(int(s) for s in t.get("seeds", [42])),
                  int(t.get("val_size", 1000)), methods, claims)


def experiment(design: Design) -> str:
    from revgn_cli.overrides import preset_of

    name = preset_of(design.base)
    if name is None:
        raise ConfigError("the gn_family design's base names no experiment=<preset>")
    return name


def tune_overrides(design: Design, m: Method, damping: float | None) -> list[str]:
    """The overrides that define one tuned setting: the method's, its λ, and the tuner's grid, seeds and split.
    Tuning runs log no diagnostics (``metrics.every=0``): only their val_loss counts, and on a 2-core CPU the
    NTK/CKA diagnostics of an epoch cost as much as a hundred Adam steps."""
    grid = ",".join(f"{v:g}" for v in m.lr)
    seeds = ",".join(str(s) for s in design.tune_seeds)
    out = [*design.base[1:], *m.overrides]
    out += [f"optimizer.damping={damping:g}"] if damping is not None else []
    # ++: the preset declares no grid for most methods (tune.grid is a struct dict), so add or override it.
    return out + ["metrics.every=0", f"++tune.grid.{m.optimizer}=[{grid}]", f"tune.seeds=[{seeds}]",
                  f"tune.val_size={design.val_size}"]


def tuned_val_loss(record: Any, optimizer: str, rate: float) -> float:
    """Mean over seeds of the final val_loss a tune record (``revgn_cli.tune.TuneRecord``) holds for ``optimizer`` at
    ``rate``: ∞ when a seed diverged or the record has no such rate."""
    t = record.optimizers.get(optimizer)
    means = t.mean_val_loss if t is not None else {}
    m = next((v for r, v in means.items() if math.isclose(r, rate, rel_tol=1e-9)), math.inf)
    return m if math.isfinite(m) else math.inf


def tune_method(design: Design, m: Method, results_dir: Any, calls: TuneCalls,
                log: Callable[[str], None] = lambda s: None, after: Callable[[], None] = lambda: None) -> Setting:
    """A method's setting: for every λ of its grid (or none), the tuner's rate; then the λ with the lowest mean
    val_loss at its rate (the first λ when the record gives no val_loss). ``after`` runs after each λ's tuning."""
    exp = experiment(design)
    best: Setting | None = None
    cost = 0.0
    for lam in m.damping or (None,):
        ov = tune_overrides(design, m, lam)
        try:
            rec = calls.run_tune(exp, ov, results_dir)
        finally:
            after()  # the runs this λ finished are kept, even when the tuning was interrupted
        cost += rec.optimizers[m.optimizer].run_s
        lr = float(calls.tuned_rates(results_dir, exp, ov)[m.optimizer])
        s = Setting(lr, lam, tuned_val_loss(rec, m.optimizer, lr))
        log(f"tuned {m.label}" + (f" λ={lam:g}" if lam is not None else "") + f": lr {lr:g} (val_loss {s.val_loss:.4g})")
        if best is None or s.val_loss < best.val_loss:
            best = s
    if len(m.damping) > 1 and not math.isfinite(best.val_loss):
        log(f"warning: {m.label}: no finite val_loss for any λ; keeping λ={best.damping:g}")
    return replace(best, tune_run_s=cost)


def tune(design: Design, results_dir: Any, calls: TuneCalls, log: Callable[[str], None] = lambda s: None
         ) -> dict[str, Setting]:
    """Every method's setting (``tune_method``)."""
    return {lab: tune_method(design, m, results_dir, calls, log) for lab, m in design.methods.items()}


def run_overrides(design: Design, m: Method, s: Setting, extra: list[str] = ()) -> list[str]:
    """The sweep overrides of a method's final runs: full training set (no validation split), every seed."""
    out = [*design.base, *m.overrides, f"optimizer.lr={s.lr:g}"]
    out += [f"optimizer.damping={s.damping:g}"] if s.damping is not None else []
    return out + [f"seed={','.join(str(x) for x in design.seeds)}", *extra]


# ---------------------------------------------------------------------------------------------------------------
# analysis (pure: rows in, tables out)


def _epoch_rows(runs: pd.DataFrame) -> pd.DataFrame:
    ep = runs[runs["split"] == "epoch"] if "split" in runs.columns else runs
    return ep.sort_values("epoch")


def final_value(ep: pd.DataFrame, metric: str, diverged: bool) -> float:
    """The last logged ``metric`` of one run's epoch rows; +∞ (losses) or NaN (accuracies) for a diverged run."""
    if diverged:
        return math.inf if "loss" in metric else math.nan
    v = ep[metric].dropna() if metric in ep.columns else pd.Series(dtype=float)
    return float(v.iloc[-1]) if len(v) else math.nan


def at_train_loss(ep: pd.DataFrame, target: float, metric: str = "test_loss") -> float:
    """``metric`` when the run's train loss first reaches ``target`` (≤), linearly interpolated in train loss
    between that epoch row and the previous one; NaN when it never does."""
    from revgn_cli.figures.claims import at_level  # one interpolation for every matched-loss comparison

    d = ep.dropna(subset=["train_loss", metric])
    if not math.isfinite(target):
        return math.nan
    return at_level(d["train_loss"].to_numpy(float), d[metric].to_numpy(float), target)


def per_seed_table(runs: pd.DataFrame, damped: Collection[str] | None = None) -> pd.DataFrame:
    """One row per (method, seed) from the runs' rows (a ``method`` column, ``status``): lr, damping (NaN for a
    method not in ``damped``, the labels whose optimiser has a λ; None: every method's), final train/test loss and
    test accuracy, epochs, diverged, and the median function-space step of its first epoch's updates
    (``step_size_ratio``, NaN where not logged)."""
    rows = []
    for (meth, rid), r in runs.groupby(["method", "run_id"], sort=False):
        ep = _epoch_rows(r)
        div = str(r["status"].iloc[0]) == "diverged" if "status" in r.columns else False
        st = r[(r["split"] == "step") & (r["epoch"] <= 1)] if "split" in r.columns else r.iloc[0:0]
        ssr = st["step_size_ratio"].dropna() if "step_size_ratio" in st.columns else pd.Series(dtype=float)
        rows.append({"method": meth, "seed": int(r["seed"].iloc[0]), "run_id": rid,
                     "lr": float(r["optimizer.lr"].iloc[0]),
                     "damping": float(r["optimizer.damping"].iloc[0])
                     if "optimizer.damping" in r.columns and (damped is None or meth in damped) else math.nan,
                     "epochs": float(ep["epoch"].max()), "diverged": div,
                     **{f"final_{k}": final_value(ep, k, div) for k in ("train_loss", "test_loss", "test_acc")},
                     "step_size_ratio_epoch1": float(ssr.median()) if len(ssr) else math.nan})
    return pd.DataFrame(rows)


def claim_diffs(runs: pd.DataFrame, claim: Claim) -> dict[int, float]:
    """Per seed both methods ran: value(a) − value(b) (> 0: the claimed side)."""
    out: dict[int, float] = {}
    a, b = runs[runs["method"] == claim.a], runs[runs["method"] == claim.b]
    for seed in sorted(set(a["seed"]) & set(b["seed"])):
        ra, rb = a[a["seed"] == seed], b[b["seed"] == seed]
        div = [str(r["status"].iloc[0]) == "diverged" if "status" in r.columns else False for r in (ra, rb)]
        ea, eb = _epoch_rows(ra), _epoch_rows(rb)
        if claim.at == "final":
            va, vb = final_value(ea, claim.metric, div[0]), final_value(eb, claim.metric, div[1])
        elif any(div):
            va = vb = math.nan
        else:
            target = max(final_value(ea, "train_loss", False), final_value(eb, "train_loss", False))
            va, vb = at_train_loss(ea, target, claim.metric), at_train_loss(eb, target, claim.metric)
        d = va - vb
        out[int(seed)] = d if math.isfinite(d) else math.nan
    return out


def verdict_table(runs: pd.DataFrame, claims: tuple[Claim, ...]) -> pd.DataFrame:
    """One row per claim: n, diverged pairs, mean ± 95 % half-width, p, TOST p, Holm-adjusted p's and verdict."""
    raw = [judge(claim_diffs(runs, c), c.sesoi) for c in claims]
    fam = judge_family(raw)
    return pd.DataFrame([{"claim": c.id, "text": c.text, "at": c.at, "metric": c.metric, "a": c.a, "b": c.b,
                          "sesoi": c.sesoi, "n": v.n, "n_nonfinite": v.n_nonfinite, "mean": v.mean, "half": v.half,
                          "p": v.p, "p_tost": v.p_tost, "p_adj": v.p_adj, "p_tost_adj": v.p_tost_adj,
                          "verdict": v.verdict} for c, v in zip(claims, fam)])


# ---------------------------------------------------------------------------------------------------------------
# the study: tune, train, write


def method_jobs(design: Design, settings: Mapping[str, Setting], extra: list[str], results_dir: Any,
                methods: Any = None) -> dict[str, list[str]]:
    """method label → the run ids of its final runs (composed, not trained); ``methods``: only these labels."""
    from revgn_cli.config import run_id
    from revgn_cli.sweep import expand

    return {lab: [run_id(j.cfg) for j in expand(run_overrides(design, m, settings[lab],
                                                         [*extra, f"results_dir={results_dir}"]))]
            for lab, m in design.methods.items() if methods is None or lab in methods}


def load_method_runs(results_dir: Any, jobs: Mapping[str, list[str]]) -> pd.DataFrame:
    """The finished (done or diverged) runs' rows with a ``method`` column."""
    from revgn_cli.results import load_runs

    owner = {rid: lab for lab, ids in jobs.items() for rid in ids}
    df = load_runs(results_dir, {"run_id": sorted(owner)}, statuses=("done", "diverged"), strict=False)
    return df.assign(method=df["run_id"].map(owner)) if not df.empty else df.assign(method=[])


# ---------------------------------------------------------------------------------------------------------------
# the record: finished methods' settings and curves, committed so the study can go on elsewhere

RECORD_BASE = ("method", "design", "run_id", "seed", "status", "experiment", "optimizer.lr", "optimizer.damping",
               "tuned_val_loss", "tune_run_s", "run_s", "split", "epoch", "step", "train_loss", "train_acc",
               "test_loss", "test_acc")
RECORD_PREFIXES = ("ntk_", "cka_", "step_size_ratio")  # the diagnostics the figure and the per-seed table read


def method_fingerprint(design: Design, m: Method) -> str:
    """What a method's record depends on (base overrides, its overrides and grids, seeds, the tuner's seeds and
    split): a record made under another design is not this design's result."""
    key = {"base": design.base, "seeds": design.seeds, "tune_seeds": design.tune_seeds, "val_size": design.val_size,
           "overrides": m.overrides, "lr": m.lr, "damping": m.damping}
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:12]


def record_rows(runs: pd.DataFrame, design: Design, m: Method, s: Setting) -> pd.DataFrame:
    """A finished method's rows for the record: its epoch rows and its first epoch's step rows (the step size),
    the columns the tables and the figure read, and what the method cost when ``runs`` carries it (``tune_run_s``:
    its tuning, ``run_s``: its final runs; training seconds summed over runs)."""
    r = runs[runs["method"] == m.label]
    if "split" in r.columns:
        r = r[(r["split"] == "epoch") | ((r["split"] == "step") & (r["epoch"] <= 1))]
    r = r.assign(design=method_fingerprint(design, m), tuned_val_loss=s.val_loss)
    cols = [c for c in RECORD_BASE if c in r.columns] + sorted(c for c in r.columns
                                                               if c.startswith(RECORD_PREFIXES) and r[c].notna().any())
    return r[cols]


def read_record(path: Path | None, design: Design) -> dict[str, pd.DataFrame]:
    """Methods the record holds whole under this design (every seed finished) → their rows."""
    if path is None or not Path(path).exists():
        return {}
    df = pd.read_csv(path)
    out: dict[str, pd.DataFrame] = {}
    for lab, m in design.methods.items():
        r = df[(df["method"] == lab) & (df["design"] == method_fingerprint(design, m))]
        fin = r[r["status"].isin(["done", "diverged"])]
        if not r.empty and set(design.seeds) <= set(int(x) for x in fin["seed"]):
            out[lab] = r[r["seed"].isin(design.seeds)]
    return out


def recorded_setting(rows: pd.DataFrame, m: Method) -> Setting:
    """The setting a method's recorded rows ran at (λ only for a method with a λ grid)."""
    lam = float(rows["optimizer.damping"].iloc[0]) if m.damping and "optimizer.damping" in rows.columns else None
    return Setting(float(rows["optimizer.lr"].iloc[0]), lam, float(rows["tuned_val_loss"].iloc[0]),
                   float(rows["tune_run_s"].iloc[0]) if "tune_run_s" in rows.columns else math.nan)


def runs_s(results_dir: Any, run_ids: Sequence[str]) -> float:
    """Training seconds of these runs, summed (their meta.json wall_s, which a resumed run accumulates)."""
    from revgn_cli.results.loader import query_runs

    return sum(float(x.get("meta.wall_s") or 0.0) for x in query_runs(results_dir, {"run_id": sorted(run_ids)},
                                                                       strict=False))


def method_costs(rows: pd.DataFrame) -> pd.DataFrame:
    """Per method of record rows: tuning and final runs' training seconds (summed over runs) and their total."""
    cols = [c for c in ("tune_run_s", "run_s") if c in rows.columns]
    t = rows.groupby("method", sort=False)[cols].first().reindex(columns=["tune_run_s", "run_s"])
    return t.assign(total_s=t.sum(axis=1, min_count=2))


def write_record(path: Path, rows: pd.DataFrame, label: str) -> None:
    """Replace ``label``'s rows in the record CSV (other methods kept); atomic."""
    from revgn_cli.results.store import replace_csv_groups

    replace_csv_groups(Path(path), rows.assign(method=label), "method")


def write_outputs(runs: pd.DataFrame, design: Design, out_dir: Path) -> tuple[Path, Path]:
    """The per-seed table and the verdict table as CSV under ``out_dir`` (created)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    per, ver = out_dir / PER_SEED_FILE, out_dir / VERDICT_FILE
    per_seed_table(runs, [lab for lab, m in design.methods.items() if m.damping]).to_csv(per, index=False)
    verdict_table(runs, design.claims).to_csv(ver, index=False)
    return per, ver


def plot(runs: pd.DataFrame, design: Design, scale: str):
    """Train loss, test loss, test accuracy, NTK similarity and last-block CKA to init vs epoch, per method."""
    from revgn_cli.figures.plots import PlotContext, Series, metric_grid
    from revgn_cli.figures.style import sequential_colours
    from revgn_cli.studies.figures import _last_cka, _ntk_column

    colours = sequential_colours(len(design.methods))

    def series(df: pd.DataFrame):
        for (lab, c) in zip(design.methods, colours):
            rows = df[df["method"] == lab]
            if not rows.empty:
                yield Series(lab, c, rows)

    # Record rows (methods carried by docs/data/gn_family_<scale>.csv) have no dataset column; the study trains one
    # dataset, its base preset's, so they get that one — else the plot's per-dataset split would drop them.
    from revgn_cli.config import compose_config

    name = compose_config(list(design.base)).dataset.name
    col = runs["dataset.name"] if "dataset.name" in runs else pd.Series(None, index=runs.index, dtype=object)
    runs = runs.assign(**{"dataset.name": col.fillna(name)})
    ep = _epoch_rows(runs)
    ntk, cka = _ntk_column(ep), _last_cka(ep)
    return metric_grid(runs, PlotContext("gn_family", f"GN family, tuned rates ({scale})", scale),
                       ["train_loss", "test_loss", "test_acc", ntk, cka], series=series,
                       titles=["train loss", "test loss", "test accuracy", "NTK similarity to init",
                               f"CKA to init, last block ({cka[9:]})"])


def run_study(scale: str, overrides: list[str], results_dir: Any, out_dir: Path, *, force: bool = False,
              quiet: bool = False, calls: TuneCalls | None = None, launch: Callable[..., list[dict]] | None = None,
              log: Callable[[str], None] = print, design: Design | None = None,
              record: Path | None = None, methods: Sequence[str] | None = None,
              archive: Path | None = None) -> tuple[pd.DataFrame, int]:
    """Method by method: tune, train the missing runs and (with ``record``) keep its setting and curves there; then
    write the tables and the figure. A method ``record`` holds whole under this design is taken from it (``force``
    redoes every method). ``methods``: train only these labels this sitting (the others enter the tables only if the
    record holds them; a claim missing a method is INSUFFICIENT). ``archive``: restore the finished runs it holds
    into ``results_dir`` first, and copy every run finished here into it after each launch (interrupted or not).
    Returns (verdict table, failed jobs)."""
    from revgn_cli import sweep as sw

    design = design or load_design(scale)
    unknown = sorted(set(methods or ()) - set(design.methods))
    if unknown:
        raise ConfigError(f"gn_family --methods: no method {', '.join(map(repr, unknown))} "
                          f"(methods: {', '.join(design.methods)})")
    calls = calls or default_calls()
    launch = launch or sw.launch
    recorded = {} if force else read_record(record, design)
    from revgn_cli.results.archive import keeper

    keep = keeper(archive, results_dir, design.base, log, restore=not force)
    extra = [*overrides, *default_launcher(overrides)]
    plain = [o for o in overrides if not o.startswith(("hydra/", "hydra."))]
    failed, parts = 0, []
    for lab, m in design.methods.items():
        if lab in recorded:
            s = recorded_setting(recorded[lab], m)
            log(f"{lab}: recorded in {record} (lr {s.lr:g}" + (f", λ {s.damping:g}" if s.damping is not None else "")
                + f", {recorded[lab]['seed'].nunique()} seeds): not run again")
            parts.append(recorded[lab])
            continue
        if methods is not None and lab not in methods:
            log(f"{lab}: not run this sitting (--methods)")
            continue
        s = tune_method(design, m, results_dir, calls, log, after=keep)
        log(f"{lab}: {s.lr:g}" + (f", λ {s.damping:g}" if s.damping is not None else ""))
        try:
            records = launch(run_overrides(design, m, s, [*extra, f"results_dir={results_dir}"]), force=force,
                             quiet=quiet)
        finally:
            keep()
        failed += len(sw.report_failures(records))
        jobs = method_jobs(design, {lab: s}, plain, results_dir, methods=[lab])
        rows = load_method_runs(results_dir, jobs)
        if not rows.empty:
            rows = rows.assign(tune_run_s=s.tune_run_s, run_s=runs_s(results_dir, jobs[lab]))
            parts.append(rows)
            done = set(int(x) for x in rows.loc[rows["status"].isin(["done", "diverged"]), "seed"])
            if record is not None and set(design.seeds) <= done:
                write_record(record, record_rows(rows, design, m, s), lab)
                log(f"  → {record}")
    runs = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if runs.empty:
        raise ConfigError("gn_family: no finished run to summarise")
    exp_dir = Path(results_dir) / runs["experiment"].iloc[0]
    per, ver = write_outputs(runs, design, exp_dir)
    fig = plot(runs, design, scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(out_dir / f"gn_family.{ext}")
    cost = method_costs(runs)
    for lab, c in cost.iterrows():
        log(f"{lab}: tuning {c.tune_run_s / 60:.1f} min + runs {c.run_s / 60:.1f} min of training (summed over runs)")
    log(f"all methods: {cost.total_s.sum() / 3600:.2f} h of training summed over runs")
    log(f"per-seed table → {per}; verdicts → {ver}; figure → {out_dir / 'gn_family.png'}")
    return pd.read_csv(ver), failed
