"""``revgn sweep``: expand and check the grid up front, then hand it to Hydra's multirun and its launcher.

Hydra does the launching (basic, joblib, submitit_slurm); revgn only composes every combination first so that a
typo fails in one clear line before any job starts, and so ``--dry-run`` and ``revgn reproduce`` can list the
runs (and which already exist) without training.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser

from revgn_cli.config import Config, ConfigError, compose_config, conf_dir, VERSION_BASE


@dataclass
class Job:
    overrides: list[str]
    cfg: Config


def _compose_hydra_params(plain: list[str]) -> dict[str, str]:
    """The grid a preset declares under ``hydra.sweeper.params`` (e.g. conf/experiment/fig1.yaml)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=VERSION_BASE):
        node = compose(config_name="config", overrides=plain, return_hydra_config=True)
    params = OmegaConf.select(node, "hydra.sweeper.params") or {}
    return {str(k): str(v) for k, v in params.items()}


def expand(overrides: list[str], on_job: Callable[[int, int], None] | None = None) -> list[Job]:
    """Every job of the sweep, composed and validated, in Hydra's order (cartesian product).

    ``on_job(done, total)`` is called after each job is composed (a progress bar for large grids).
    """
    parser = OverridesParser.create()
    parsed = [o for o in parser.parse_overrides(list(overrides)) if not o.key_or_group.startswith("hydra")]
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    grid: dict[str, str] = _compose_hydra_params(plain)
    # As Hydra's BasicSweeper: a command-line override of a key the preset sweeps replaces that axis.
    for o in parsed:
        if o.is_sweep_override() or o.get_key_element() in grid:
            grid[o.get_key_element()] = o.input_line.split("=", 1)[1]
    plain = [o.input_line for o in parsed if o.get_key_element() not in grid]
    axes: list[list[str]] = []
    for key, value in grid.items():
        ov = parser.parse_overrides([f"{key}={value}"])[0]
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.get_value_element_as_str()]
        if not values:
            raise ConfigError(f"sweep over {key} has no values")
        axes.append([f"{key}={v}" for v in values])
    return _compose_grid(plain, axes, on_job)


def _is_value_key(key: str) -> bool:
    """Hydra applies ``key=value`` to the composed config (not as a config-group choice): a plain dotted or
    top-level key that names no group in conf/ (``optimizer.lr``, ``seed``; not ``optimizer``, ``+x``, ``~x``)."""
    from revgn_cli.confinfo import config_groups

    return not key.startswith(("+", "~")) and "/" not in key and key.split(".")[0] != "hydra" \
        and key not in config_groups()


def _compose_grid(plain: list[str], axes: list[list[str]], on_job: Callable[[int, int], None] | None) -> list[Job]:
    """Every combination of ``axes`` after ``plain`` (Hydra's BasicSweeper order), composed and validated.

    Composing costs ≈0.1–0.5 s a job, so a 1000-seed grid took minutes. Axes of value overrides do not change
    what Hydra composes from the defaults list, only what it then writes into the config; so each combination of
    the *group* axes is composed once and the value overrides are applied to a copy by Hydra's own step
    (``ConfigLoaderImpl._apply_overrides_to_config``, the same call ``compose`` ends with, in the same order).
    """
    import copy

    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from revgn_cli.config import compose_node, to_config

    parser = OverridesParser.create()
    value_axes = {i for i, a in enumerate(axes) if all(_is_value_key(o.split("=", 1)[0]) for o in a)}
    composed: dict[tuple[str, ...], object] = {}
    jobs = []
    total = math.prod(len(a) for a in axes)
    for combo in itertools.product(*axes) if axes else [()]:
        # Grid values come after the plain overrides, as in Hydra's BasicSweeper.
        ovs = plain + list(combo)
        groups = tuple(o for i, o in enumerate(combo) if i not in value_axes)
        if groups not in composed:
            composed[groups] = compose_node(plain + list(groups))
        node = copy.deepcopy(composed[groups])
        values = [o for i, o in enumerate(combo) if i in value_axes]
        try:
            ConfigLoaderImpl._apply_overrides_to_config(parser.parse_overrides(values), node)
        except Exception:  # as the slow path would report it (Hydra's own wording and exception type)
            compose_config(ovs)
            raise
        jobs.append(Job(ovs, to_config(node)))
        if on_job is not None:
            on_job(len(jobs), total)
    return jobs


def _run_with_progress(cmd: list[str], env: dict[str, str], n_jobs: int, quiet: bool) -> str | None:
    """Run the multirun; unless ``quiet``, echo its output above a progress bar of finished jobs (on stderr).

    Returns None on success, else the last line the process printed (for the error message).
    """
    from rich.progress import Progress

    from revgn_cli.console import err
    from revgn_cli.progress import JobLines, job_columns

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    last = ""
    progress = Progress(*job_columns(), console=err, disable=quiet)
    job_lines = JobLines(progress)  # one live line per running job (epoch, loss, ETA) under the overall bar
    with progress:
        task = progress.add_task("sweep", total=n_jobs, info="")
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if job_lines.feed(line):
                continue
            last = line or last
            if line.startswith("[revgn sweep]"):
                progress.advance(task)
            if not quiet:
                progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
    return None if proc.wait() == 0 else last


def launch(overrides: list[str], *, force: bool = False, quiet: bool = False,
           jobs: list[Job] | None = None) -> list[dict]:
    """Run ``python -m revgn_cli.sweep_app --multirun ...`` and return each job's report record.

    Jobs append their record to a report file under the results dir (``<results_dir>/.hydra/reports/``), which a
    cluster's compute nodes share with the submitting node, unlike its /tmp.
    """
    jobs = jobs if jobs is not None else expand(overrides)  # callers that expanded already pass theirs
    report_dir = Path(jobs[0].cfg.results_dir).expanduser() / ".hydra" / "reports"
    report_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=report_dir, prefix="sweep-", suffix=".jsonl")
    os.close(fd)
    report = Path(name)
    try:
        env = dict(os.environ, REVGN_SWEEP_REPORT=str(report.resolve()), REVGN_FORCE="1" if force else "0",
                   HYDRA_FULL_ERROR="0")
        cmd = [sys.executable, "-m", "revgn_cli.sweep_app", "--multirun", *overrides]
        tail = _run_with_progress(cmd, env, len(jobs), quiet)
        records = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
        if tail is not None and not records:
            raise RuntimeError("the Hydra multirun failed before any job ran" + (f": {tail}" if tail else ""))
        return records
    finally:
        report.unlink(missing_ok=True)


FAILED = ("failed", "invalid")


def report_failures(records: list[dict]) -> list[dict]:
    """Print one stderr line per job that failed or could not compose; return those records."""
    from revgn_cli.console import err

    bad = [r for r in records if r.get("status") in FAILED]
    for r in bad:
        err.print(f"  [red]{r['status']}[/]: {' '.join(r.get('overrides', []))}: {r.get('error')}",
                  highlight=False, soft_wrap=True)
    return bad
