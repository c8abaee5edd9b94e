"""The scale study (``revgn study run scaling``): GN vs Adam at the quick and the paper's corner, one axis at a time
set back from the paper's corner, and a data-size axis — every cell with its own tuned rates.

The design lives in ``conf/study/scaling.yaml`` (not in code): the base preset, the methods, the seeds, the cells
(override lists; a cell may start ``from`` another), the axes (value → cell) and the training order, plus the cost
model of the plan's wall-time estimate. This module

* expands the design into cells and their run overrides (``load_design``, ``Design.run_overrides``);
* plans the work: which runs are missing, their estimated wall time, and — when that overruns ``--budget`` — fewer
  seeds (never below ``min_seeds``) before fewer cells (``plan_study``);
* runs it cell by cell: tune the rates (``revgn_cli.tune`` through ``Tuner``), train the missing runs (the sweep
  machinery; finished runs are skipped), measure every claim's per-seed margin (``revgn_cli.figures.claims``) and
  rewrite the margins CSV after each cell (``run_study``), so an interrupted study keeps what finished.

``revgn_cli.studies.scaling_report`` turns the CSV alone into the table, the trends and the figure.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import pandas as pd

from revgn_cli.config import Config, ConfigError, conf_dir
from revgn_cli.overrides import default_launcher
from revgn_cli.studies.scaling_report import MARGIN_COLUMNS, read_margins

DESIGN_FILE = "scaling.yaml"
DEFAULT_MARGINS = Path("docs/data/scaling_margins.csv")

Log = Callable[[str], None]


class TuneUnavailable(ConfigError):
    """The design asks for tuned rates but this build has no rate tuner."""


# ---------------------------------------------------------------------------------------------------------------
# the design


def merge_overrides(*lists: Sequence[str]) -> tuple[str, ...]:
    """Concatenate override lists; a later ``key=value`` replaces an earlier one of the same key (in its place)."""
    out: dict[str, str] = {}
    for ov in lists:
        for o in ov:
            out[o.split("=", 1)[0]] = o
    return tuple(out.values())


@dataclass(frozen=True)
class Cell:
    name: str
    overrides: tuple[str, ...]  # relative to the design's base, `from` chain resolved
    seeds: int  # how many of the design's seeds the cell runs


@dataclass(frozen=True)
class Axis:
    name: str
    label: str
    quick: float
    paper: float
    cells: dict[float, str]  # value → cell name


@dataclass(frozen=True)
class Design:
    base: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    min_seeds: int
    rates: str  # tuned | paper
    tune: dict[str, Any]
    claims: tuple[str, ...]
    cells: dict[str, Cell]
    axes: dict[str, Axis]
    order: tuple[str, ...]
    cost: dict[str, Any] = field(default_factory=dict)

    @property
    def experiment(self) -> str:
        """The base preset's name (``experiment=<name>`` in ``base``): the tuner's experiment."""
        from revgn_cli.overrides import preset_of

        name = preset_of(self.base)
        if name is None:
            raise ConfigError("conf/study/scaling.yaml: base names no experiment=<preset>")
        return name

    @property
    def protocol(self) -> str:
        """The rate protocol a cell's margins are recorded under (the CSV's ``rates``): paper | tuned (the grid
        only) | tuned+extend (a choice on the grid's edge checked against the rates out, ``tune.extend``). A cell
        recorded under another protocol than the design's is not finished: it is planned again."""
        return "tuned+extend" if self.rates == "tuned" and any((self.tune.get("extend") or {}).values()) else self.rates

    def ordered(self) -> list[Cell]:
        return [self.cells[n] for n in self.order]

    def axes_of(self, cell: str) -> list[tuple[str, float]]:
        """Every (axis, value) the cell stands at."""
        return [(a.name, v) for a in self.axes.values() for v, c in a.cells.items() if c == cell]

    def run_overrides(self, cell: Cell, method: str, seeds: Sequence[int], lr: float | None) -> list[str]:
        """The multirun overrides of one method's seeds in a cell (``lr`` None: the preset's rate)."""
        ov = [*self.base, *cell.overrides, f"optimizer={method}", f"seed={','.join(str(s) for s in seeds)}"]
        return ov + ([f"optimizer.lr={lr!r}"] if lr is not None else [])

    def tune_overrides(self, cell: Cell) -> list[str]:
        """The overrides that define a cell's tuning setting: its own and the design's grid, rates out of the grid
        (``extend``), seeds and hold-out."""
        t = self.tune
        # ++: the preset may declare no grid for a method (tune.grid is a struct dict): add or override it.
        rates = [f"++tune.{k}.{m}=[{','.join(repr(float(v)) for v in t[k][m])}]"
                 for k in ("grid", "extend") for m in self.methods if m in (t.get(k) or {})]
        return [*cell.overrides, *rates, f"tune.seeds=[{','.join(str(s) for s in t['seeds'])}]",
                f"tune.val_size={int(t['val_size'])}"]

    def extend(self, method: str) -> list[float]:
        """The rates out of ``method``'s grid that tuning tries while its choice is on an edge."""
        return [float(r) for r in (self.tune.get("extend") or {}).get(method, [])]


def load_design(path: Path | None = None) -> Design:
    """The design declared in conf/study/scaling.yaml (or ``path``), checked for dangling names."""
    from omegaconf import OmegaConf

    path = path or conf_dir() / "study" / DESIGN_FILE
    if not path.exists():
        raise ConfigError(f"no scale-study design at {path}")
    d = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    raw = dict(d["cells"])

    def resolve(name: str, seen: tuple[str, ...] = ()) -> tuple[str, ...]:
        if name not in raw:
            raise ConfigError(f"{path.name}: unknown cell {name!r}" + (f" (from {seen[-1]!r})" if seen else ""))
        if name in seen:
            raise ConfigError(f"{path.name}: cell {name!r} starts from itself ({' → '.join(seen + (name,))})")
        c = raw[name]
        parent = resolve(c["from"], seen + (name,)) if c.get("from") else ()
        return merge_overrides(parent, [str(o) for o in c.get("overrides") or ()])

    seeds = tuple(int(s) for s in d["seeds"])
    min_seeds = int(d.get("min_seeds", 5))
    cells = {n: Cell(n, resolve(n), int(c.get("seeds", min_seeds))) for n, c in raw.items()}
    for c in cells.values():
        if not min_seeds <= c.seeds <= len(seeds):
            raise ConfigError(f"{path.name}: cell {c.name} runs {c.seeds} seeds, not in [{min_seeds}, {len(seeds)}]")
    axes = {}
    for a, ax in d["axes"].items():
        vals = {float(v): str(c) for v, c in ax["cells"].items()}
        for c in vals.values():
            resolve(c)
        axes[a] = Axis(a, str(ax.get("label", a)), float(ax["quick"]), float(ax["paper"]), vals)
    order = tuple(str(n) for n in d.get("order") or raw)
    for n in order:
        resolve(n)
    order += tuple(n for n in raw if n not in order)
    rates = str(d.get("rates", "tuned"))
    if rates not in ("tuned", "paper"):
        raise ConfigError(f"{path.name}: rates must be tuned or paper, got {rates!r}")
    return Design(tuple(d["base"]), tuple(d["methods"]), seeds, min_seeds, rates, dict(d.get("tune") or {}),
                  tuple(d["claims"]), cells, axes, order, dict(d.get("cost") or {}))


# ---------------------------------------------------------------------------------------------------------------
# cost model and plan


@functools.lru_cache(maxsize=8)
def _dataset_sizes(name: str, root: str | None) -> tuple[int, int]:
    from revgn_cli.data import load_dataset

    data = load_dataset(name, root)
    return int(data.x_train.shape[0]), int(data.x_test.shape[0])


def train_images(cfg: Config) -> int:
    """How many images a run trains on (after the hold-out and ``regime.train_size``)."""
    n_train, _ = _dataset_sizes(cfg.dataset.name, cfg.dataset.root)
    n = n_train - cfg.regime.val_size
    n = min(n, cfg.regime.train_size) if cfg.regime.train_size is not None else n
    return min(n, cfg.regime.n_samples) if cfg.regime.name == "full_batch" else n


def updates_of(cfg: Config) -> int:
    n = train_images(cfg)
    per_epoch = 1 if cfg.regime.name == "full_batch" else math.ceil(n / cfg.regime.batch_size)
    return cfg.train.epochs * per_epoch


def estimate_run_s(cfg: Config, cost: dict[str, Any], factor: float = 1.0) -> float:
    """Seconds one run takes under the design's cost model (see conf/study/scaling.yaml's ``cost``), while
    ``runs_at_once`` runs share the machine."""
    name = cfg.optimizer.name
    if name not in cost["update_fixed_s"]:
        raise ConfigError(f"the scale study's cost model has no update cost for optimizer {name!r}")
    h = (cfg.model.hidden or 8000) / 8000
    b = (cfg.regime.n_samples if cfg.regime.name == "full_batch" else cfg.regime.batch_size) / 1024
    # GN factors a batch × batch Gram per half-layer (float64, revgn_cli/optim/pinv.py): a b³ term of its own,
    # independent of the width, which dominates at h 1024 and batch 1024.
    batch3 = (cost.get("update_batch3_s") or {}).get(name, 0.0) * b ** 3
    # The per-update metrics are extra passes over the batch: the loss change (one forward after each k-th update)
    # and the step-size ratio (one JVP: every update of the first dense epochs, then each epoch's first), each priced
    # as a third of an update (forward, backward: ~3 passes). Tuning runs switch both off (tune.QUIET_METRICS).
    m, u, e, every = cfg.metrics, updates_of(cfg), cfg.train.epochs, cfg.metrics.every
    passes = (u // m.loss_change_every if m.loss_change else 0) + (
        u // max(e, 1) * min(m.step_size_dense_epochs, e) + max(e - m.step_size_dense_epochs, 0)
        if m.step_size_ratio else 0)
    _, n_test = _dataset_sizes(cfg.dataset.name, cfg.dataset.root)
    images = (train_images(cfg) + n_test + cfg.regime.val_size) / 5000
    evals = e // cfg.train.eval_every + 1 + (e % cfg.train.eval_every != 0)
    diags = 0 if every == 0 else e // every + 1 + (e % every != 0)
    s = (cost["run_overhead_s"]
         + u * (cost["update_fixed_s"][name] + cost["update_scaled_s"][name] * b * h + batch3)
         + passes * cost["update_scaled_s"][name] * b * h / 3
         + evals * (cost["eval_s"] * h * images + cost["eval_floor_s"])
         + diags * (cost["diag_s"] * h + cost["diag_floor_s"]))
    return factor * s


def runs_at_once(extra: Sequence[str]) -> int:
    """How many runs the study's launcher trains side by side: ``hydra.launcher.n_jobs`` of the launcher in effect
    (``extra``'s, else the one ``default_launcher`` adds: 2); 1 for a launcher named without it (its parallelism is
    unknown)."""
    for o in reversed([*extra, *default_launcher(extra)]):
        if o.startswith("hydra.launcher.n_jobs="):
            return max(1, int(o.split("=", 1)[1]))
    return 1


def wall_s(run_s: Sequence[float], at_once: int) -> float:
    """Wall time of one launch: its runs go ``at_once`` at a time, in order, and each batch lasts its longest run
    (the joblib launcher hands out jobs in batches of n_jobs; with 5 runs and 2 at a time, the fifth runs alone)."""
    return sum(max(run_s[i:i + at_once]) for i in range(0, len(run_s), at_once))


class Tuner(Protocol):
    """The rate tuner as the study uses it (``RevgnTuner``: revgn_cli.tune)."""

    def rates(self, cell: Cell) -> dict[str, float] | None:
        """The chosen rate per method, or None when the cell was not tuned yet."""

    def run(self, cell: Cell) -> dict[str, float]:
        """Tune the cell (finished tuning runs are skipped) and return its rates."""

    def pending(self, cell: Cell) -> dict[str, list[Any]] | None:
        """The tuning runs still to train per method (job configs; ``revgn_cli.tune.pending_runs``), or None when
        they cannot be known (the plan then counts the whole grid)."""


class RevgnTuner:
    """``run_tune`` / ``tuned_rates`` of revgn_cli.tune for the design's experiment, per cell."""

    def __init__(self, design: Design, results_dir: str) -> None:
        self.design, self.results_dir = design, results_dir

    def _api(self):
        try:
            from revgn_cli import tune
        except ImportError as e:
            raise TuneUnavailable("the scale study's design asks for tuned rates, but this build has no rate tuner "
                                  "(revgn_cli/tune.py): set `rates: paper` in conf/study/scaling.yaml") from e
        return tune

    def available(self) -> bool:
        try:
            self._api()
        except TuneUnavailable:
            return False
        return True

    def rates(self, cell: Cell) -> dict[str, float] | None:
        if not self.available():  # the plan still prints; tuning then says what is missing
            return None
        tune = self._api()
        try:
            rec = tune.load_record(self.results_dir, self.design.experiment, self.design.tune_overrides(cell))
        except tune.TuneMissing:
            return None
        ms = self.design.methods
        # A record made before the design's `extend` (or with a shorter one) whose choice sits on an edge is not done.
        if any(m not in rec.optimizers or tune.next_rate_out(rec.optimizers[m].val_loss, self.design.extend(m))
               is not None for m in ms):
            return None
        return {m: float(rec.optimizers[m].chosen) for m in ms}

    def pending(self, cell: Cell) -> dict[str, list[Any]] | None:
        if not self.available():
            return None
        return self._api().pending_runs(self.design.experiment, self.design.tune_overrides(cell), self.results_dir)

    def run(self, cell: Cell) -> dict[str, float]:
        self._api().run_tune(self.design.experiment, self.design.tune_overrides(cell), self.results_dir)
        rates = self.rates(cell)
        if rates is None:
            raise ConfigError(f"tuning cell {cell.name} left no tune record")
        return rates


@dataclass
class RunPlan:
    method: str
    seed: int
    cfg: Config
    done: bool
    est_s: float


@dataclass
class CellPlan:
    cell: Cell
    seeds: int  # planned (the budget may have cut it)
    rates: dict[str, float] | None  # None: the preset's (rates: paper) or not tuned yet
    tuned: bool  # whether tuning still has to run
    tune_s: float  # wall
    runs: list[RunPlan]  # every declared seed's run (the plan trains the first `seeds` that are missing)
    at_once: int = 1  # runs side by side (``runs_at_once``)

    def todo(self) -> list[RunPlan]:
        keep = set(self.cell_seeds()[: self.seeds])
        return [r for r in self.runs if not r.done and r.seed in keep]

    def cell_seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    @property
    def est_s(self) -> float:
        """Wall time: the tuning, then one launch per method (``train_cell``)."""
        todo = self.todo()
        return self.tune_s + sum(wall_s([r.est_s for r in todo if r.method == m], self.at_once)
                                 for m in dict.fromkeys(r.method for r in todo))

    @property
    def run_s(self) -> float:
        """The summed time of the runs still to train (each while ``at_once`` share the machine)."""
        return sum(r.est_s for r in self.todo())


@dataclass
class Plan:
    cells: list[CellPlan]
    cut: list[str]  # what the budget cut, in words
    budget_s: float
    recorded: dict[str, str] = field(default_factory=dict)  # cell → what the margins CSV holds of it (not re-run)
    waiting: list[str] = field(default_factory=list)  # cells left for a later sitting by --only

    @property
    def est_s(self) -> float:
        return sum(c.est_s for c in self.cells)


def _status(cfg: Config) -> str | None:
    from revgn_cli.train.runner import run_dir_for

    return run_dir_for(cfg).read_meta().get("status")


def plan_cell(design: Design, cell: Cell, extra: Sequence[str], results_dir: str, tuner: Tuner | None,
              factor: float) -> CellPlan:
    """A cell's runs (finished or not) with their estimated cost, and its tuning cost if it was not tuned yet."""
    from revgn_cli.sweep import expand

    tail = [*extra, f"results_dir={results_dir}"]
    at_once = runs_at_once(extra)
    rates = tuner.rates(cell) if design.rates == "tuned" and tuner is not None else None
    must_tune = design.rates == "tuned" and rates is None
    tune_s = 0.0
    pending = tuner.pending(cell) if must_tune and tuner is not None else None
    if pending is not None:  # the tuner's own unfinished runs (an edge check counted once the grid has finished)
        tune_s = sum(wall_s([estimate_run_s(c, design.cost, factor) for c in cfgs], at_once)
                     for cfgs in pending.values())
    elif must_tune:  # one launch per method: its whole grid × the tuning seeds
        try:  # tuning runs log no diagnostics (revgn_cli.tune.QUIET_METRICS)
            from revgn_cli.tune import QUIET_METRICS
        except ImportError:
            QUIET_METRICS = ()
        t = design.tune
        for m in design.methods:
            probe = expand([*design.run_overrides(cell, m, [t["seeds"][0]], None), *tail,
                            f"regime.val_size={int(t['val_size'])}", *QUIET_METRICS])[0].cfg
            tune_s += wall_s([estimate_run_s(probe, design.cost, factor)] * (len(t["grid"][m]) * len(t["seeds"])),
                             at_once)
    runs = []
    seeds = design.seeds[: cell.seeds]
    for m in design.methods:
        lr = rates.get(m) if rates else None
        for job in expand([*design.run_overrides(cell, m, seeds, lr), *tail]):
            # Before tuning the rate is unknown: the runs are all missing; their cost does not depend on it.
            done = not must_tune and _status(job.cfg) in ("done", "diverged")
            runs.append(RunPlan(m, job.cfg.seed, job.cfg, done, estimate_run_s(job.cfg, design.cost, factor)))
    return CellPlan(cell, cell.seeds, rates, must_tune, tune_s, runs, at_once)


def fit_budget(cells: list[CellPlan], budget_s: float, min_seeds: int) -> list[str]:
    """Cut the plan to the budget, the design's order being its priority: whole cells go from the end of the order
    only while even every cell at ``min_seeds`` overruns; then the kept cells get their seeds back, the first cells
    first, one seed at a time while the total fits. A cell never drops below ``min_seeds`` (or its own smaller
    count). Mutates ``cells``; returns what was cut, in words (seeds first, then cells)."""
    declared = {id(c): c.seeds for c in cells}

    def total() -> float:
        return sum(c.est_s for c in cells)

    if total() <= budget_s:
        return []
    for c in cells:
        c.seeds = min(c.seeds, min_seeds)
    dropped: list[CellPlan] = []
    while total() > budget_s:  # the last cell that still costs anything (a finished one is only measured)
        dropped.append(cells.pop(max(i for i, c in enumerate(cells) if c.est_s > 0)))
    for c in cells:
        while c.seeds < declared[id(c)]:
            c.seeds += 1
            if total() > budget_s:
                c.seeds -= 1
                break
    cut = [f"{c.cell.name}: {declared[id(c)]} → {c.seeds} seeds" for c in cells if c.seeds < declared[id(c)]]
    for c in reversed(dropped):
        c.seeds = declared[id(c)]
        if c.est_s > 0:
            cut.append(f"{c.cell.name}: not run this time (~{c.est_s / 60:.0f} min)")
    return cut


def recorded_cells(design: Design, margins: Path | None) -> dict[str, str]:
    """Cells the margins CSV records as finished: every expected run done, measured under the design's rate protocol
    and with at least ``min_seeds`` seeds. Cell → a short description (seeds, rates, wall time).

    The CSV is what a study commits; the runs behind it may live on another machine (or be gone), so a cell it
    records whole is not planned again: a study can finish over several sessions. ``--redo CELL`` runs one anew.
    """
    if margins is None or not Path(margins).exists():
        return {}
    from revgn_cli.studies.scaling_report import read_margins

    df = read_margins(Path(margins))
    out: dict[str, str] = {}
    for name, g in df.groupby("cell", sort=False):
        seeds = sorted({int(s) for s in g["seed"] if s >= 0})
        if (name in design.cells and len(seeds) >= design.min_seeds and (g["runs_expected"] > 0).all()
                and (g["runs_done"] == g["runs_expected"]).all() and set(g["rates"]) == {design.protocol}):
            out[str(name)] = (f"{len(seeds)} seeds, lr {g['lr'].iloc[0]}, "
                              f"{float(g['cell_wall_s'].iloc[0]) / 60:.0f} min of runs")
    return out


def plan_study(design: Design, extra: Sequence[str], results_dir: str, *, budget_s: float = 4 * 3600,
               factor: float = 1.0, tuner: Tuner | None = None, margins: Path | None = None,
               redo: Sequence[str] = (), only: Sequence[str] = ()) -> Plan:
    """The cells still to run, in the design's order, cut to ``budget_s``. Cells the ``margins`` CSV records as
    finished are left out (``Plan.recorded``) unless named in ``redo``; with ``only``, every other cell waits too
    (``Plan.waiting``)."""
    for flag, names in (("--redo", redo), ("--only", only)):
        unknown = sorted(set(names) - set(design.cells))
        if unknown:
            raise ConfigError(f"{flag} {','.join(unknown)}: no such cell (cells: {', '.join(design.order)})")
    recorded = {k: v for k, v in recorded_cells(design, margins).items() if k not in redo}
    todo = [c for c in design.ordered() if c.name not in recorded]
    waiting = [c.name for c in todo if only and c.name not in only]
    cells = [plan_cell(design, c, extra, results_dir, tuner, factor) for c in todo if c.name not in waiting]
    return Plan(cells, fit_budget(cells, budget_s, design.min_seeds), budget_s, recorded, waiting)


def describe_plan(plan: Plan) -> list[str]:
    """The lines `revgn study run scaling` prints before it starts."""
    lines = [f"  {name:<20} recorded in the margins CSV ({what}): not run again (--redo {name} to)"
             for name, what in plan.recorded.items()]
    for c in plan.cells:
        todo = c.todo()
        tune = f", tuning ~{c.tune_s / 60:.0f} min" if c.tuned else ""
        rates = "" if c.rates is None else ", rates " + " ".join(f"{m} {v:g}" for m, v in c.rates.items())
        lines.append(f"  {c.cell.name:<20} {c.seeds:>2} seeds, {len(todo):>3} runs to train"
                     f" (~{c.run_s / 60:.0f} min of runs, {c.at_once} at a time){tune}{rates}: "
                     f"~{c.est_s / 60:.0f} min wall  ({' '.join(c.cell.overrides) or 'the quick corner'})")
    lines.append(f"  total ~{plan.est_s / 3600:.1f} h wall estimated (budget {plan.budget_s / 3600:.1f} h)")
    lines += [f"  budget cut: {c}" for c in plan.cut]
    lines += [f"  {n:<20} not in --only: left for a later sitting" for n in plan.waiting]
    return lines


# ---------------------------------------------------------------------------------------------------------------
# running and measuring


def measure_cell(design: Design, cp: CellPlan, results_dir: str) -> pd.DataFrame:
    """MARGIN_COLUMNS rows of one cell: every claim's per-seed margin over the cell's finished runs."""
    from revgn_cli.config import run_id
    from revgn_cli.figures.claims import CLAIMS, NotMeasurable
    from revgn_cli.results import load_runs
    from revgn_cli.train.runner import run_dir_for

    ids = sorted({run_id(r.cfg) for r in cp.runs})
    # No results dir yet (nothing trained, e.g. every job failed): the cell is measured as not run.
    df = (load_runs(results_dir, {"run_id": ids}, statuses=("done", "diverged"))
          if Path(results_dir).expanduser().is_dir() else pd.DataFrame())
    if not df.empty and "status" in df.columns:
        df = df[df["status"].isin(["done", "diverged"])]
    done = int(df["run_id"].nunique()) if not df.empty else 0
    wall = sum(float(run_dir_for(r.cfg).read_meta().get("wall_s") or 0.0) for r in cp.runs)
    cfg = cp.runs[0].cfg
    lr = {r.method: float(r.cfg.optimizer.lr) for r in cp.runs}
    base = {"cell": cp.cell.name, "axes": " ".join(f"{a}={v:g}" for a, v in design.axes_of(cp.cell.name)),
            "rates": design.protocol if cp.rates is not None or design.rates == "paper" else "untuned",
            "lr": " ".join(f"{m}={v:g}" for m, v in lr.items()), "runs_done": done, "runs_expected": len(ids),
            "cell_wall_s": wall, "hidden": cfg.model.hidden, "batch": cfg.regime.batch_size,
            "epochs": cfg.train.epochs, "updates": updates_of(cfg), "train_images": train_images(cfg)}
    by_id = {c.id: c for c in CLAIMS}
    rows: list[dict[str, Any]] = []
    for cid in design.claims:
        c = by_id.get(cid)
        try:
            margins = c.check(df).margins if (c is not None and done) else {}
        except NotMeasurable:
            margins = {}
        sesoi = float(getattr(c, "sesoi", math.nan)) if c is not None else math.nan
        row = {**base, "claim": cid, "sesoi": sesoi}
        if not margins:
            rows.append({**row, "seed": -1, "margin": math.nan})
        for s, m in sorted(margins.items()):
            rows.append({**row, "seed": int(s), "margin": float(m)})
    return pd.DataFrame(rows, columns=list(MARGIN_COLUMNS))


def write_margins(path: Path, cell_rows: pd.DataFrame) -> pd.DataFrame:
    """Replace the rows of ``cell_rows``'s cells in the CSV at ``path`` (other cells kept); atomic."""
    from revgn_cli.results.store import replace_csv_groups

    old = read_margins(path) if path.exists() else pd.DataFrame(columns=list(MARGIN_COLUMNS))
    return replace_csv_groups(path, cell_rows, "cell", old, float_format="%.6g")


def train_cell(design: Design, cp: CellPlan, extra: Sequence[str], results_dir: str, *, quiet: bool = False,
               log: Log, after: Callable[[], None] = lambda: None) -> int:
    """Launch the cell's missing runs (one multirun per method: its rate); returns the number of failed jobs.
    ``after`` runs after each launch, interrupted or not: a method's finished runs are archived before the next
    method starts (a GN launch at the corner is about an hour)."""
    from revgn_cli import sweep as sw

    launcher = default_launcher(extra)
    failed = 0
    for m in design.methods:
        seeds = sorted(r.seed for r in cp.todo() if r.method == m)
        if not seeds:
            continue
        lr = cp.rates.get(m) if cp.rates else None
        log(f"  {m}: seeds {','.join(map(str, seeds))}" + (f" at lr {lr:g}" if lr is not None else ""))
        ov = [*design.run_overrides(cp.cell, m, seeds, lr), *extra, *launcher, f"results_dir={results_dir}"]
        try:
            failed += len(sw.report_failures(sw.launch(ov, quiet=quiet)))
        finally:
            after()
    return failed


def run_study(design: Design, plan: Plan, extra: Sequence[str], results_dir: str, margins: Path, *,
              tuner: Tuner | None = None, quiet: bool = False, log: Log | None = None,
              keep: Callable[[], None] = lambda: None) -> int:
    """Tune, train and measure the plan's cells in order, rewriting ``margins`` after each; returns failed jobs.
    ``keep`` runs after a cell's tuning and after each of its launches, interrupted or not
    (``revgn_cli.results.archive.keeper``)."""
    log = log or (lambda s: None)
    failed = 0
    for cp in plan.cells:
        t0 = time.time()
        log(f"cell {cp.cell.name} ({' '.join(cp.cell.overrides) or 'the quick corner'})")
        if cp.tuned:
            assert tuner is not None, "a tuned design needs a tuner"
            log("  tuning …")
            try:
                cp.rates = tuner.run(cp.cell)
            finally:
                keep()
            cp = replace_rates(design, cp, extra, results_dir, tuner)
        if cp.todo():
            failed += train_cell(design, cp, extra, results_dir, quiet=quiet, log=log, after=keep)
        write_margins(margins, measure_cell(design, cp, results_dir))
        log(f"  → {margins} ({time.time() - t0:.0f} s)")
    return failed


def replace_rates(design: Design, cp: CellPlan, extra: Sequence[str], results_dir: str, tuner: Tuner) -> CellPlan:
    """The cell re-planned once its rates are known (the run ids depend on them), keeping the planned seeds."""
    fresh = plan_cell(design, cp.cell, extra, results_dir, tuner, 1.0)
    fresh.seeds = cp.seeds
    return fresh
