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
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser

from revgn_cli.config import Config, ConfigError, compose_config, compose_node, conf_dir, VERSION_BASE


@dataclass
class Job:
    overrides: list[str]
    cfg: Config


def _compose_hydra_params(plain: list[str]) -> dict[str, str]:
    """The grid a preset declares under ``hydra.sweeper.params`` (e.g. conf/experiment/fig1.yaml)."""
    from omegaconf import OmegaConf

    node = compose_node(plain, hydra=True)
    params = OmegaConf.select(node, "hydra.sweeper.params") or {}
    return {str(k): str(v) for k, v in params.items()}


def _launcher_names() -> list[str]:
    """The ``hydra/launcher`` options Hydra can compose: conf/'s and the installed plugins'."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=VERSION_BASE):
        return list(GlobalHydra.instance().config_loader().get_group_options("hydra/launcher"))


def check_launcher(plain: list[str], hydra_overrides: list[str]) -> None:
    """Compose the Hydra overrides (``hydra/launcher=…``, ``hydra.launcher.…``) as the multirun will, so a launcher
    mistake is one line before anything starts (and in ``--dry-run``), not a traceback after launch."""
    from hydra.errors import MissingConfigException

    try:
        node = compose_node(plain + hydra_overrides, hydra=True)
    except MissingConfigException as e:
        bad = [o for o in hydra_overrides if o.startswith("hydra/launcher=")]
        raise ConfigError(f"{bad[0] if bad else str(e).splitlines()[0]}: no such launcher (installed: "
                          f"{', '.join(_launcher_names())})") from None
    delay, limit = node.hydra.launcher.get("signal_delay_s"), node.hydra.launcher.get("timeout_min")
    if isinstance(delay, int) and isinstance(limit, int) and delay >= limit * 60:
        # SLURM would send the time-limit signal (SIGUSR2) at or before the start: every job a "timeout"
        raise ConfigError(f"hydra.launcher.signal_delay_s={delay} must be below the time limit "
                          f"hydra.launcher.timeout_min={limit} (= {limit * 60} s)")
    n_jobs = node.hydra.launcher.get("n_jobs")
    if n_jobs is not None and (not isinstance(n_jobs, int) or n_jobs == 0):
        raise ConfigError(f"hydra.launcher.n_jobs={n_jobs!r}: give the number of parallel jobs (>= 1; -1 = one per "
                          "core)")


def expand(overrides: list[str], on_job: Callable[[int, int], None] | None = None) -> list[Job]:
    """Every job of the sweep, composed and validated, in Hydra's order (cartesian product).

    ``on_job(done, total)`` is called after each job is composed (a progress bar for large grids).
    """
    parser = OverridesParser.create()
    every = parser.parse_overrides(list(overrides))
    parsed = [o for o in every if not o.key_or_group.startswith("hydra")]
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    hydra_ovs = [o.input_line for o in every if o.key_or_group.startswith("hydra")]
    if hydra_ovs:
        check_launcher(plain, hydra_ovs)
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


# How long the front end waits, after the multirun's main process exited, for the rest of its process group
# (launcher workers still writing a checkpoint) before it kills them.
GROUP_GRACE_S = 60.0


class JobGroup:
    """The multirun's process group, and the signals the front end forwards to it.

    The multirun starts in a session of its own (so a terminal's Ctrl-C reaches only the front end, which decides
    what to do): while ``forwarding()``, SIGINT/SIGTERM to the front end go to the whole group — every launcher
    worker and job — and each job checkpoints at its next update boundary (train.loop). ``reap()`` waits for the
    group to be gone and kills whatever is left after ``GROUP_GRACE_S``: nothing outlives the sweep.
    """

    def __init__(self) -> None:
        self.pgid: int | None = None
        self.signals: list[int] = []

    def started(self, proc: subprocess.Popen) -> None:
        self.pgid = proc.pid  # start_new_session: pgid == pid
        if self.signals:  # a signal came while it was starting
            self._send(self.signals[-1])

    def _send(self, signum: int) -> None:
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            pass

    def _handler(self, signum: int, frame: object) -> None:
        self.signals.append(signum)
        if self.pgid is not None:
            self._send(signum)

    @contextmanager
    def forwarding(self):
        old = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: signals stay with whoever handles them there
                pass
        try:
            yield self
        except BaseException:
            if self.pgid is not None:  # the front end itself failed: stop the jobs as a signal would
                self._send(signal.SIGTERM)
            raise
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if self.pgid is not None:
                self.reap(GROUP_GRACE_S)

    def alive(self) -> bool:
        """True while a live (non-zombie) process is in the group."""
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if not Path("/proc").is_dir():
            return True
        for st in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = st.read_text().rsplit(")", 1)[1].split()  # state ppid pgrp …
            except (OSError, IndexError):
                continue
            if int(fields[2]) == self.pgid and fields[0] != "Z":
                return True
        return False

    def reap(self, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.alive():
            self._send(signal.SIGKILL)


def _run_with_progress(cmd: list[str], env: dict[str, str], n_jobs: int, quiet: bool,
                       group: JobGroup | None = None) -> str | None:
    """Run the multirun; unless ``quiet``, echo its output above a progress bar of finished jobs (on stderr).

    Returns None on success, else the last line the process printed (for the error message).
    """
    from rich.progress import Progress

    from revgn_cli.console import err
    from revgn_cli.progress import JobLines, job_columns

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    if group is not None:
        group.started(proc)
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
        cmd = [sys.executable, "-m", "revgn_cli.sweep_app", "--multirun", *overrides, *_waiting_slurm(overrides)]
        with JobGroup().forwarding() as group:
            tail = _run_with_progress(cmd, env, len(jobs), quiet, group)
        records = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
        if group.signals:
            from revgn_cli.train.loop import Interrupted

            stopped = [r for r in records if r.get("status") == "interrupted"]
            raise Interrupted(f"sweep stopped by signal {group.signals[0]}: {len(stopped)} job(s) checkpointed at their "
                              f"last update and marked interrupted, {len(records) - len(stopped)} finished before")
        if tail is not None and not records:
            raise RuntimeError("the Hydra multirun failed before any job ran" + (f": {tail}" if tail else ""))
        return records
    finally:
        report.unlink(missing_ok=True)


def _waiting_slurm(overrides: list[str]) -> list[str]:
    """hydra-submitit-launcher's SLURM launcher returns as soon as a job writes *a* result and gives up on the rest
    when one ends without; run it through revgn's subclass, which waits for each job's final state
    (revgn_cli.cluster.launcher). Composes the launcher only when the sweep names one."""
    if not any(o.startswith(("hydra/launcher=", "hydra.launcher")) for o in overrides):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from revgn_cli.cluster.launcher import PLUGIN_TARGET, TARGET

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    node = compose_node([o.input_line for o in parsed if not o.is_sweep_override()], hydra=True)
    return [f"hydra.launcher._target_={TARGET}"] if node.hydra.launcher.get("_target_") == PLUGIN_TARGET else []


FAILED = ("failed", "invalid")


def report_failures(records: list[dict]) -> list[dict]:
    """Print one stderr line per job that failed or could not compose; return those records."""
    from revgn_cli.console import err

    bad = [r for r in records if r.get("status") in FAILED]
    for r in bad:
        err.print(f"  [red]{r['status']}[/]: {' '.join(r.get('overrides', []))}: {r.get('error')}",
                  highlight=False, soft_wrap=True)
    return bad
