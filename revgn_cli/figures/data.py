"""Which runs a figure reads, whether they exist, and the one call that loads them (``load_runs``).

A figure names the experiment presets it reads (``conf/experiment/<preset>.yaml``) per scale. The runs of a preset
are exactly the jobs of its grid, composed by ``revgn_cli.sweep.expand`` (so a figure never mixes in stale runs of
an older grid that share the experiment folder); the figure loads those run ids — and only those — through
``revgn_cli.results.load_runs``. Plots never train.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from revgn_cli.config import run_id
from revgn_cli.figures.spec import SCALES
from revgn_cli.results import RunDir, load_runs

PLOT_STATUSES = ("done", "diverged")


class MissingRunsError(FileNotFoundError):
    """A figure's runs are not in the results dir; the message names the command that makes them."""


def reproduce_command(fig: str, scale: str, results_dir: str | Path | None = None, overrides: Iterable[str] = ()) -> str:
    """The command that makes the figure's runs — keeping the user's results dir and overrides, so it is the fix."""
    import shlex

    res = "" if results_dir is None or str(results_dir) == "results" else f" --results {shlex.quote(str(results_dir))}"
    ov = "".join(f" {shlex.quote(o)}" for o in overrides if not o.startswith("results_dir="))
    return f"revgn reproduce {fig} scale={scale}{ov}{res}"


@dataclass(frozen=True)
class PresetJob:
    preset: str
    exp_name: str
    run_id: str
    overrides: tuple[str, ...]


@functools.lru_cache(maxsize=256)
def preset_jobs(preset: str, overrides: tuple[str, ...] = ()) -> tuple[PresetJob, ...]:
    """Every job of ``experiment=<preset>`` (plus ``overrides``), composed and validated; cached per process."""
    from revgn_cli.sweep import expand

    jobs = expand([f"experiment={preset}", *overrides])
    return tuple(PresetJob(preset, j.cfg.exp_name, run_id(j.cfg), tuple(j.overrides)) for j in jobs)


def identity_overrides(overrides: Iterable[str]) -> tuple[str, ...]:
    """Drop the overrides that never change a run's identity (where results go, which device)."""
    skip = ("results_dir=", "device=", "hydra/", "hydra.")
    return tuple(o for o in overrides if not o.lstrip("+~").startswith(skip))


def job_status(results_dir: str | Path, job: PresetJob) -> str | None:
    """The run's status; ``corrupt`` (not finished: reproduce trains it again) when its files cannot be read."""
    run = RunDir(Path(results_dir).expanduser() / job.exp_name / job.run_id)
    return run.status()  # store.run_state (None: no run dir)


def job_label(job: PresetJob) -> str:
    """The overrides that tell a preset's jobs apart (optimizer=gn seed=43), for "missing: …" notes."""
    return " ".join(o for o in job.overrides if not o.startswith("experiment="))


@dataclass
class Availability:
    """How many of a figure's runs exist, by status."""

    total: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # job_label of every job not finished (or unreadable)

    @property
    def finished(self) -> int:
        return sum(self.by_status.get(s, 0) for s in PLOT_STATUSES)

    @property
    def complete(self) -> bool:
        return self.total > 0 and self.finished == self.total

    def describe(self) -> str:
        if not self.total:
            return "no jobs"
        parts = [f"{self.finished}/{self.total} finished"]
        for s in ("diverged", "running", "failed", "interrupted", "corrupt"):
            if self.by_status.get(s):
                parts.append(f"{self.by_status[s]} {s}")
        return ", ".join(parts)

    def missing_note(self, most: int = 4) -> str:
        """"6/8 finished; missing: optimizer=gn seed=42, …" — which runs a partial figure or claim lacks."""
        shown = self.missing[:most] + ([f"{len(self.missing) - most} more"] if len(self.missing) > most else [])
        return f"{self.finished}/{self.total} finished; missing: {', '.join(shown)}"


Variants = Mapping[str, Sequence[tuple[str, ...]]]


def jobs_for(presets: Sequence[str], overrides: Iterable[str] = (), variants: Variants | None = None) -> list[PresetJob]:
    """The union of the presets' jobs, each run id once, in preset order. ``variants`` (preset → override sets, e.g.
    the tuned protocol's ``optimizer=gn optimizer.lr=0.3``): the union of the preset's jobs under each set instead."""
    ov = identity_overrides(overrides)
    seen: set[tuple[str, str]] = set()
    out = []
    for p in presets:
        sets = variants[p] if variants is not None and p in variants else [()]
        for j in (j for v in sets for j in preset_jobs(p, ov + tuple(v))):
            if (j.exp_name, j.run_id) not in seen:
                seen.add((j.exp_name, j.run_id))
                out.append(j)
    return out


def availability(results_dir: str | Path, presets: Sequence[str], overrides: Iterable[str] = (),
                 variants: Variants | None = None) -> Availability:
    av = Availability()
    for j in jobs_for(presets, overrides, variants):
        av.total += 1
        st = job_status(results_dir, j) or "missing"
        av.by_status[st] = av.by_status.get(st, 0) + 1
        if st not in PLOT_STATUSES:
            av.missing.append(job_label(j))
    return av


def load_figure_runs(fig: str, scale: str, presets: Sequence[str], results_dir: str | Path,
                     overrides: Iterable[str] = (), *, allow_partial: bool = False,
                     variants: Variants | None = None) -> tuple[pd.DataFrame, Availability]:
    """The metrics rows of the figure's finished runs (``done`` and ``diverged``), via ``load_runs``.

    Raises ``MissingRunsError`` (one line, naming the command to run) when none of them exist, and
    ``CorruptRunError`` (one line naming the run) when one is present but unreadable, unless ``allow_partial``.
    """
    jobs = jobs_for(presets, overrides, variants)
    av = availability(results_dir, presets, overrides, variants)
    ids = sorted({j.run_id for j in jobs})
    exps = sorted({j.exp_name for j in jobs})
    df = (load_runs(results_dir, {"run_id": ids, "experiment": exps}, statuses=PLOT_STATUSES,
                    allow_partial=allow_partial, strict=False) if ids else None)
    if df is not None:  # runs skipped as unreadable (allow_partial) that meta.json calls finished
        bad = {entry.split(":", 1)[0].rsplit("/", 1)[-1] for entry in df.attrs.get("partial", [])}
        for j in jobs:
            label = job_label(j)
            if j.run_id in bad and label not in av.missing:
                st = job_status(results_dir, j) or "missing"
                av.by_status[st] -= 1
                av.by_status["corrupt"] = av.by_status.get("corrupt", 0) + 1
                av.missing.append(label)
    if df is None or df.empty:
        raise MissingRunsError(
            f"{fig}: none of its {len(jobs)} run(s) (preset {', '.join(presets)}) is finished in {results_dir} — "
            f"run `{reproduce_command(fig, scale, results_dir, overrides)}`")
    return df, av
