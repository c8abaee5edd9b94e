"""``revgn tune EXPERIMENT``: pick each optimiser's learning rate on a validation split, not on the test set.

For every optimiser of the preset's ``tune.grid`` (or the one named by an ``optimizer=`` override), every rate of its
grid is trained for each of ``tune.seeds`` on the training images minus a ``tune.val_size`` hold-out
(``regime.val_size``: seeded, stratified, never the test set), through the sweep machinery (Hydra multirun, the
joblib launcher with 2 workers by default; finished runs are skipped, interrupted ones resume). The chosen rate
minimises the mean over seeds of the final ``val_loss``; a seed that diverged counts as +∞, so a rate that diverges
on any seed is chosen only when every rate does (then: fewest diverged seeds, then the lowest mean over the seeds
that finished, then the smaller rate). A choice on the grid's edge is checked against the next rate out: while the
chosen rate is the largest (smallest) rate tried, the nearest untried rate of ``tune.extend.<optimizer>`` above
(below) it is trained too and the choice made again (``next_rate_out``), so the record says whether the optimum was
bracketed (``at_edge``: the chosen rate is still the largest or smallest tried).

Tune runs go to ``<results_dir>/<exp_name>_tune/`` (never mixed with the preset's own runs) with the diagnostics off
(they do not change training). The record is ``<results_dir>/tune/<experiment>.json``:
``{setting-key → {optimizer → {chosen, grid, seeds, val_size, val_loss {rate → {seed → loss | null}},
mean_val_loss {rate → mean | null}, diverged {rate → count}, at_edge, run_s}}}`` (grid: every rate tried, the
declared grid first, then the rates out of it in the order tried; run_s: the tune runs' training seconds, summed),
where the setting key is the overrides that define the setting, sorted and space-joined ("" for the
preset itself), without ``optimizer=``, ``tune.*``, ``results_dir``, ``device`` and Hydra's own.
"""
from __future__ import annotations

import fcntl
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

from revgn_cli.config import ConfigError
from revgn_cli.overrides import default_launcher

__all__ = ["TuneError", "TuneMissing", "OptimizerTune", "TuneRecord", "TunePlan", "setting_key", "choose", "run_tune",
           "run_tune_cells", "tune_plan", "tuned_rates", "record_path", "next_rate_out", "copy_records"]

TUNE_DIR = "tune"
# Tune runs log losses only: the diagnostics cost time and never change the trajectory.
QUIET_METRICS = ("metrics.every=0", "metrics.loss_change=false", "metrics.step_size_ratio=false")
DEFAULT_JOBS = 2


class TuneError(ConfigError):
    """A tune that cannot run or finish (no grid, stray sweep axes, failed runs). One line."""


class TuneMissing(TuneError):
    """No tune record for this experiment and setting: the message names the command that makes it."""


@dataclass
class OptimizerTune:
    """One optimiser's tune: per rate and seed the final val_loss (+inf = diverged) and the chosen rate."""

    chosen: float
    grid: list[float]
    seeds: list[int]
    val_size: int
    val_loss: dict[float, dict[int, float]]
    run_s: float = 0.0  # the tune runs' training time, summed over runs (meta.json wall_s; resumed runs included)

    @property
    def mean_val_loss(self) -> dict[float, float]:
        return {r: _mean(v.values()) for r, v in self.val_loss.items()}

    @property
    def diverged(self) -> dict[float, int]:
        return {r: sum(math.isinf(x) for x in v.values()) for r, v in self.val_loss.items()}

    @property
    def at_edge(self) -> bool:
        """Whether the chosen rate is the largest or smallest of several rates tried (the optimum not bracketed)."""
        return len(self.val_loss) > 1 and self.chosen in (min(self.val_loss), max(self.val_loss))

    def to_json(self) -> dict[str, Any]:
        def num(x: float) -> float | None:  # JSON has no infinity: a diverged seed is null
            return None if not math.isfinite(x) else x

        return {"chosen": self.chosen, "grid": self.grid, "seeds": self.seeds, "val_size": self.val_size,
                "val_loss": {repr(r): {str(s): num(x) for s, x in v.items()} for r, v in self.val_loss.items()},
                "mean_val_loss": {repr(r): num(x) for r, x in self.mean_val_loss.items()},
                "diverged": {repr(r): n for r, n in self.diverged.items()}, "at_edge": self.at_edge,
                "run_s": self.run_s}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "OptimizerTune":
        val = {float(r): {int(s): math.inf if x is None else float(x) for s, x in v.items()}
               for r, v in d["val_loss"].items()}
        return cls(float(d["chosen"]), [float(r) for r in d["grid"]], [int(s) for s in d["seeds"]],
                   int(d["val_size"]), val, float(d.get("run_s", 0.0)))


@dataclass
class TuneRecord:
    experiment: str
    setting: str
    optimizers: dict[str, OptimizerTune] = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        return {o: t.chosen for o, t in self.optimizers.items()}


def _mean(xs: Any) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else math.nan


def setting_key(overrides: list[str]) -> str:
    """The overrides that define a setting, as a stable string (sorted, space-joined; "" = the preset itself)."""
    skip = ("optimizer=", "tune.", "+tune.", "++tune.", "results_dir=", "device=", "hydra", "experiment=")
    return " ".join(sorted(o for o in overrides if not o.startswith(skip)))


def choose(val_loss: dict[float, dict[int, float]]) -> float:
    """The rate with the lowest mean val_loss over seeds (+∞ for a diverged seed); when every rate diverged on some
    seed: the fewest diverged seeds, then the lowest mean of the finished seeds, then the smaller rate."""
    def key(r: float) -> tuple:
        xs = list(val_loss[r].values())
        finite = [x for x in xs if math.isfinite(x)]
        return (_mean(xs), sum(not math.isfinite(x) for x in xs), _mean(finite) if finite else math.inf, r)

    return min(val_loss, key=key)


def next_rate_out(val_loss: dict[float, dict[int, float]], extend: list[float]) -> float | None:
    """The next rate to try beyond the rates tried (the keys of ``val_loss``), or None.

    When the chosen rate (``choose``) is the largest rate tried, the smallest rate of ``extend`` above it; else, when
    it is the smallest, the largest rate of ``extend`` below it; None when the choice is bracketed by rates tried or
    ``extend`` has no rate beyond it. (A single tried rate is both largest and smallest: upward is tried first.)
    """
    if not val_loss:
        return None
    chosen, tried = choose(val_loss), sorted(val_loss)
    untried = sorted(float(r) for r in extend if float(r) not in val_loss)
    if chosen == tried[-1] and (up := [r for r in untried if r > chosen]):
        return up[0]
    if chosen == tried[0] and (down := [r for r in untried if r < chosen]):
        return down[-1]
    return None


def record_path(results_dir: str | Path, experiment: str) -> Path:
    return Path(results_dir).expanduser() / TUNE_DIR / f"{experiment}.json"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Tunes of several settings of one experiment may run at once: read-modify-write under a file lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TuneError(f"unreadable tune record {path}: {e}") from None


def _write(path: Path, data: dict[str, Any]) -> None:
    from revgn_cli.results.store import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def save_record(results_dir: str | Path, rec: TuneRecord) -> Path:
    """Merge ``rec`` into the experiment's record file (other settings and optimisers are kept)."""
    path = record_path(results_dir, rec.experiment)
    with _locked(path):
        data = _read(path)
        entry = data.setdefault(rec.setting, {})
        entry.update({o: t.to_json() for o, t in rec.optimizers.items()})
        _write(path, data)
    return path


def copy_records(src_dir: str | Path, dst_dir: str | Path, experiment: str, *, replace: bool) -> int:
    """Copy ``experiment``'s tune record entries (setting → optimiser) from the results dir ``src_dir`` into
    ``dst_dir``'s record: those it lacks, and with ``replace`` also those that differ. Returns how many were copied.

    A run archive (``revgn_cli.results.archive``) carries its study's record beside its runs this way: the record is
    what tells a plan that a setting is tuned, so a fresh machine that restored the runs without it would plan (and
    count the time of) a tuning that then finds every run finished."""
    src = _read(record_path(src_dir, experiment))
    if not src:
        return 0
    path, n = record_path(dst_dir, experiment), 0
    with _locked(path):
        data = _read(path)
        for key, entry in src.items():
            have = data.setdefault(key, {})
            for o, t in entry.items():
                if o not in have or (replace and have[o] != t):
                    have[o], n = t, n + 1
        if n:
            _write(path, data)
    return n


def load_record(results_dir: str | Path, experiment: str, overrides: list[str] | None = None) -> TuneRecord:
    path, key = record_path(results_dir, experiment), setting_key(list(overrides or []))
    entry = _read(path).get(key)
    if not entry:
        cmd = " ".join(["revgn", "tune", experiment, *sorted(overrides or []), "--results", str(results_dir)])
        where = f"setting {key!r}" if key else "the preset's own setting"
        raise TuneMissing(f"no tuned rates for {experiment} ({where}) in {path}: run `{cmd}`")
    return TuneRecord(experiment, key, {o: OptimizerTune.from_json(d) for o, d in entry.items()})


def tuned_rates(results_dir: str | Path, experiment: str, overrides: list[str] | None = None) -> dict[str, float]:
    """{optimizer → chosen rate} of ``experiment`` in the setting ``overrides``; ``TuneMissing`` if never tuned."""
    return load_record(results_dir, experiment, overrides).rates()


def _no_grid(experiment: str) -> TuneError:
    return TuneError(f"experiment {experiment} declares no tune grid: add `tune.grid.<optimizer>: [rates]` to "
                     f"conf/experiment/{experiment}.yaml (e.g. fig1_quick, minibatch_quick have one)")


def _plan(experiment: str, overrides: list[str]) -> tuple[Any, list[str], list[str]]:
    """(the composed config, the optimisers to tune, the setting overrides)."""
    from revgn_cli.config import compose_config

    setting = [o for o in overrides if not o.startswith("optimizer=")]
    cfg = compose_config([f"experiment={experiment}", *setting])  # the preset's own optimiser: rates may interpolate
    grid = {o: list(r) for o, r in cfg.tune.grid.items()}
    if not grid:
        raise _no_grid(experiment)
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("optimizer=")]
    if named:
        opts = [o for o in grid if o in named]
        if not opts:
            raise TuneError(f"optimizer={named[0]} has no tune grid in {experiment} (grids: {', '.join(grid)})")
    else:  # the optimisers the preset runs (fig13 runs GN only, though it inherits minibatch_quick's Adam grid)
        runs = _preset_optimizers(experiment, setting)
        opts = [o for o in grid if o in runs and o not in cfg.tune.fixed]
        if not opts:
            raise TuneError(f"{experiment} runs {', '.join(runs)}, and none has a tune grid that is not fixed "
                            f"(grids: {', '.join(grid)}; tune.fixed: {', '.join(cfg.tune.fixed) or 'none'})")
    for o in opts:
        if not grid[o]:
            raise TuneError(f"tune.grid.{o} of {experiment} is empty")
    if not cfg.tune.seeds:
        raise TuneError(f"tune.seeds of {experiment} is empty")
    return cfg, opts, setting


def _preset_jobs(experiment: str, setting: list[str]) -> list[Any]:
    from revgn_cli import sweep as sw

    return sw.expand([f"experiment={experiment}", *setting])


def _preset_optimizers(experiment: str, setting: list[str]) -> list[str]:
    """The optimisers the preset's jobs run, in sweep order."""
    return list(dict.fromkeys(j.cfg.optimizer.name for j in _preset_jobs(experiment, setting)))


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


@dataclass
class TunePlan:
    """How a preset gets its tuned rates: tuned per ``cells`` (the values of its ``tune.per`` axes, [[]] without),
    or taken from ``source`` (its ``tune.rates_from``); ``fixed`` optimisers keep the preset's own rates.
    ``switch_to`` maps an optimiser to the one its runs switch to (fig7), whose tuned rate the switch then uses."""

    preset: str
    source: str
    cells: list[list[str]]
    optimizers: list[str]
    fixed: list[str]
    switch_to: dict[str, str]

    @property
    def tuned(self) -> list[str]:
        return [o for o in self.optimizers if o not in self.fixed]


def tune_plan(experiment: str, setting: list[str]) -> TunePlan:
    """The preset's tune plan in the setting ``setting`` (overrides without ``optimizer=``); ``TuneError`` for a
    ``tune.per`` key the preset does not sweep, or ``per`` together with ``rates_from``. Cached per process (it
    composes every job of the preset, and verify asks once per claim)."""
    return _tune_plan(experiment, tuple(o for o in setting if not o.startswith("optimizer=")))


@lru_cache(maxsize=None)
def _tune_plan(experiment: str, setting_: tuple[str, ...]) -> TunePlan:
    from revgn_cli.config import compose_config

    setting = list(setting_)
    cfg = compose_config([f"experiment={experiment}", *setting])
    t = cfg.tune
    jobs = _preset_jobs(experiment, setting)
    opts = list(dict.fromkeys(j.cfg.optimizer.name for j in jobs))
    if t.rates_from and t.per:
        raise TuneError(f"{experiment}: tune.per and tune.rates_from exclude each other (the rates of "
                        f"{t.rates_from} are one setting's)")
    pinned = {_key(o) for o in setting}
    per = [k for k in t.per if k not in pinned]
    cells: list[list[str]] = []
    for j in jobs:
        cell = [o for o in j.overrides if _key(o) in per]
        missing = set(per) - {_key(o) for o in cell}
        if missing:
            raise TuneError(f"{experiment}: tune.per names {', '.join(sorted(missing))}, which the preset does not "
                            f"sweep (hydra.sweeper.params)")
        cell.sort(key=lambda o: per.index(_key(o)))
        if cell not in cells:
            cells.append(cell)
    switch: dict[str, str] = {}
    for o in opts:
        to = compose_config([f"experiment={experiment}", *setting, f"optimizer={o}"]).train.switch_to
        if to:
            switch[o] = to
    return TunePlan(experiment, t.rates_from or experiment, cells or [[]], opts, list(t.fixed), switch)


def run_tune_cells(experiment: str, overrides: list[str], results_dir: str | Path | None = None, *,
                   n_jobs: int = DEFAULT_JOBS, force: bool = False, quiet: bool = False,
                   log: Any = None) -> list[TuneRecord]:
    """Everything ``experiment``'s tuned protocol needs: one ``run_tune`` per value of its ``tune.per`` axes, or the
    tune of its ``tune.rates_from`` preset, or nothing when every optimiser it runs is ``tune.fixed``."""
    from revgn_cli.overrides import pop_results

    from revgn_cli.config import compose_config

    overrides, res = pop_results(list(overrides), results_dir, default=None)
    named = [o for o in overrides if o.startswith("optimizer=")]
    setting = [o for o in overrides if not o.startswith("optimizer=")]
    t = compose_config([f"experiment={experiment}", *setting]).tune
    if not (t.grid or t.rates_from or t.fixed):
        raise _no_grid(experiment)
    plan = tune_plan(experiment, setting)
    say = log or (lambda s: None)
    if plan.source != experiment:
        say(f"{experiment} trains at the rates tuned for {plan.source} (tune.rates_from)")
        return run_tune_cells(plan.source, overrides, res, n_jobs=n_jobs, force=force, quiet=quiet, log=log)
    if not named and not plan.tuned:
        say(f"{experiment}: nothing to tune (every optimiser it runs, {', '.join(plan.optimizers)}, is tune.fixed: "
            f"its rate is the figure's axis)")
        return []
    return [run_tune(experiment, [*overrides, *cell], res, n_jobs=n_jobs, force=force, quiet=quiet)
            for cell in plan.cells]


def _job_overrides(experiment: str, cfg: Any, opt: str, setting: list[str], results_dir: str,
                   n_jobs: int, rates: list[float]) -> list[str]:
    t = cfg.tune
    launcher = default_launcher(setting, n_jobs)
    return [f"experiment={experiment}", *setting, f"optimizer={opt}",
            "optimizer.lr=" + ",".join(repr(float(r)) for r in rates),
            "seed=" + ",".join(str(int(s)) for s in t.seeds), f"regime.val_size={t.val_size}",
            f"exp_name={cfg.exp_name}_tune", *QUIET_METRICS, *launcher, f"results_dir={results_dir}"]


def _final_val_loss(job_cfg: Any) -> float:
    """A finished tune run's last logged val_loss; +∞ if it diverged (or logged no finite one)."""
    import pandas as pd

    from revgn_cli.train.runner import run_dir_for

    run = run_dir_for(job_cfg)
    status = run.read_meta().get("status")
    if status == "diverged":
        return math.inf
    if status != "done":
        raise TuneError(f"tune run {run.run_id} (optimizer.lr={job_cfg.optimizer.lr:g}, seed={job_cfg.seed}) is "
                        f"{status or 'missing'}: see {run.path}/meta.json, then rerun the tune (it resumes)")
    df = pd.read_parquet(run.metrics_path, columns=["split", "epoch", "val_loss"])
    v = df[(df.split == "epoch") & df.val_loss.notna()].sort_values("epoch").val_loss
    return float(v.iloc[-1]) if len(v) and math.isfinite(float(v.iloc[-1])) else math.inf


def tune_optimizer(experiment: str, cfg: Any, opt: str, setting: list[str], results_dir: str, *, n_jobs: int,
                   force: bool, quiet: bool) -> OptimizerTune:
    """Train (or find finished) every rate × seed of ``opt``'s grid, choose, and while the choice is on the edge of
    the rates tried, train the next rate out of ``tune.extend.<opt>`` (``next_rate_out``) and choose again."""
    from revgn_cli import sweep as sw

    seen: list[Any] = []

    def train(ov: list[str], jobs: list[Any]) -> bool:
        if force or any(not _finished(j.cfg) for j in jobs):
            sw.launch(ov, force=force, quiet=quiet, jobs=jobs)
        seen.extend(jobs)
        return True

    t = cfg.tune
    val = _walk_rates(experiment, cfg, opt, setting, results_dir, n_jobs, train)
    run_s = sum(float(_meta(j.cfg).get("wall_s") or 0.0) for j in seen)
    return OptimizerTune(choose(val), list(val), [int(s) for s in t.seeds], int(t.val_size), val, run_s)


def _walk_rates(experiment: str, cfg: Any, opt: str, setting: list[str], results_dir: str, n_jobs: int,
                visit: Callable[[list[str], list[Any]], bool]) -> dict[float, dict[int, float]]:
    """One optimiser's tuning walk: its grid's rates × ``tune.seeds``, then, while the choice sits on the edge of the
    rates tried, the next rate out of ``tune.extend.<opt>`` (``next_rate_out``), one batch at a time.
    ``visit(overrides, jobs)`` sees each batch before its losses are read and says whether the walk goes on (False:
    it stops there). Returns {rate → {seed → final val_loss}} of the batches read, in the order tried."""
    extend = [float(r) for r in (cfg.tune.extend or {}).get(opt, [])]
    val: dict[float, dict[int, float]] = {}
    batch = [float(r) for r in cfg.tune.grid[opt]]
    while batch:
        ov, jobs = _rate_jobs(experiment, cfg, opt, setting, results_dir, batch, n_jobs)
        if not visit(ov, jobs):
            break
        val.update(_val_losses(jobs, batch))
        nxt = next_rate_out(val, extend)
        batch = [nxt] if nxt is not None else []
    return val


def _rate_jobs(experiment: str, cfg: Any, opt: str, setting: list[str], results_dir: str, rates: list[float],
               n_jobs: int) -> tuple[list[str], list[Any]]:
    """The sweep overrides and jobs of ``rates`` × ``tune.seeds`` for ``opt`` (one job per rate and seed)."""
    from revgn_cli import sweep as sw

    ov = _job_overrides(experiment, cfg, opt, setting, results_dir, n_jobs, rates)
    jobs = sw.expand(ov)
    if len(jobs) != len(rates) * len(cfg.tune.seeds):
        raise TuneError(f"{experiment} sweeps more than optimizer and seed ({len(jobs)} jobs for "
                        f"{len(rates)} rates × {len(cfg.tune.seeds)} seeds): pin its other swept keys by overrides")
    return ov, jobs


def _val_losses(jobs: list[Any], rates: list[float]) -> dict[float, dict[int, float]]:
    val: dict[float, dict[int, float]] = {float(r): {} for r in rates}
    for j in jobs:
        val[float(j.cfg.optimizer.lr)][int(j.cfg.seed)] = _final_val_loss(j.cfg)
    return val


def pending_runs(experiment: str, overrides: list[str], results_dir: str | Path | None = None) -> dict[str, list[Any]]:
    """The tuning runs ``run_tune`` would still train, per optimiser (their job configs), as far as they are known
    now: the grid's unfinished runs; once the grid has finished and its choice sits on an edge, the next rate out's
    (and so on while those have finished too). Runs beyond an unfinished batch depend on its losses: not counted.
    An optimiser with nothing left maps to []."""
    from revgn_cli.overrides import pop_results

    overrides, res = pop_results(list(overrides), results_dir, default=None)
    cfg, opts, setting = _plan(experiment, overrides)
    res = str(res if res is not None else cfg.results_dir)
    out: dict[str, list[Any]] = {}
    for opt in opts:
        def unfinished(ov: list[str], jobs: list[Any], opt: str = opt) -> bool:
            out[opt] = [j.cfg for j in jobs if not _finished(j.cfg)]
            return not out[opt]

        _walk_rates(experiment, cfg, opt, setting, res, DEFAULT_JOBS, unfinished)
    return out


def _meta(job_cfg: Any) -> dict[str, Any]:
    from revgn_cli.train.runner import run_dir_for

    return run_dir_for(job_cfg).read_meta()


def _status(job_cfg: Any) -> str | None:
    return _meta(job_cfg).get("status")


def _finished(job_cfg: Any) -> bool:
    """A run that will not train again: done, or diverged (a diverged rate counts as +∞, it is not retried)."""
    return _status(job_cfg) in ("done", "diverged")


def run_tune(experiment: str, overrides: list[str], results_dir: str | Path | None = None, *,
             n_jobs: int = DEFAULT_JOBS, force: bool = False, quiet: bool = False) -> TuneRecord:
    """Tune every optimiser of ``experiment``'s grid (or the ``optimizer=`` one) in the setting ``overrides``;
    write and return the record. ``results_dir`` None: the composed config's."""
    from revgn_cli.overrides import pop_results

    overrides, res = pop_results(list(overrides), results_dir, default=None)
    cfg, opts, setting = _plan(experiment, overrides)
    res = res if res is not None else cfg.results_dir
    if cfg.tune.val_size < 1:
        raise TuneError(f"tune.val_size={cfg.tune.val_size}: tuning needs validation images (>= 1)")
    rec = TuneRecord(experiment, setting_key(overrides))
    for opt in opts:
        rec.optimizers[opt] = tune_optimizer(experiment, cfg, opt, setting, str(res), n_jobs=n_jobs, force=force,
                                             quiet=quiet)
    save_record(res, rec)
    return rec
