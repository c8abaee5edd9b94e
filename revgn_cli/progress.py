"""Rich progress bar for long commands (stderr, so stdout stays clean for tables and pipes)."""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from revgn_cli.console import err


class RichReporter:
    """Implements revgn_cli.train.loop.Reporter: steps done / total, epoch and live loss."""

    def __init__(self, console: Console = err):
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("epoch {task.fields[epoch]:.2f}  loss {task.fields[loss]:.4g}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
        self.task = None

    def start(self, total_steps: int, done_steps: int, description: str) -> None:
        self.progress.start()
        self.task = self.progress.add_task(description, total=total_steps, completed=done_steps, epoch=0.0,
                                           loss=float("nan"))

    def advance(self, step: int, epoch: float, loss: float) -> None:
        self.progress.update(self.task, completed=step, epoch=epoch, loss=loss)

    def finish(self) -> None:
        self.progress.stop()


@contextmanager
def counter(description: str, console: Console = err, min_total: int = 20) -> Iterator[Callable[[int, int], None]]:
    """A bar for a loop of known length, fed by ``tick(done, total)``; shown only once ``total >= min_total``
    (a 4-job grid composes too fast to need one)."""
    progress = Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    task = None

    def tick(done: int, total: int) -> None:
        nonlocal task
        if total < min_total:
            return
        if task is None:
            progress.start()
            task = progress.add_task(description, total=total)
        progress.update(task, completed=done)

    try:
        yield tick
    finally:
        progress.stop()


# A sweep job's live state, one stdout line the parent parses: "[revgn job] RUN_ID STEP TOTAL EPOCH LOSS".
JOB_TAG = "[revgn job]"


class LineReporter:
    """Reporter for a sweep job (a child process): prints its progress as ``JOB_TAG`` lines, at most one per
    ``every_s`` seconds, for the parent's per-job line (``JobLines``). Implements revgn_cli.train.loop.Reporter."""

    def __init__(self, run_id: str, every_s: float = 1.0, stream: Any = None):
        self.run_id, self.every_s, self.stream = run_id, every_s, stream or sys.stdout
        self.total, self.last = 0, 0.0

    def _emit(self, step: int, epoch: float, loss: float) -> None:
        print(f"{JOB_TAG} {self.run_id} {step} {self.total} {epoch:.4f} {loss:.6g}", file=self.stream, flush=True)
        self.last = time.monotonic()

    def start(self, total_steps: int, done_steps: int, description: str) -> None:
        self.total = total_steps
        self._emit(done_steps, 0.0, float("nan"))

    def advance(self, step: int, epoch: float, loss: float) -> None:
        if time.monotonic() - self.last >= self.every_s or step == self.total:
            self._emit(step, epoch, loss)

    def finish(self) -> None: ...


def parse_job_line(line: str) -> tuple[str, int, int, float, float] | None:
    """``JOB_TAG`` line → (run_id, step, total, epoch, loss); None for any other line."""
    if not line.startswith(JOB_TAG):
        return None
    try:
        rid, step, total, epoch, loss = line[len(JOB_TAG):].split()
        return rid, int(step), int(total), float(epoch), float(loss)
    except ValueError:
        return None


class JobLines:
    """One live line per running sweep job (its bar, epoch, loss, ETA) under the sweep's overall bar.

    Feed it every line the sweep prints: ``JOB_TAG`` lines add or update a job's line, the job's
    ``[revgn sweep] STATUS RUN_ID`` line removes it. Returns True for lines it consumed (not to be echoed).
    """

    def __init__(self, progress: Progress):
        self.progress, self.tasks = progress, {}

    def feed(self, line: str) -> bool:
        job = parse_job_line(line)
        if job is not None:
            rid, step, total, epoch, loss = job
            info = f"epoch {epoch:.2f}  loss {loss:.4g}" if loss == loss else f"epoch {epoch:.2f}  loss —"
            if rid not in self.tasks:
                self.tasks[rid] = self.progress.add_task(f"  job {rid[:8]}", total=total or None, completed=step,
                                                         info=info)
            self.progress.update(self.tasks[rid], completed=step, info=info)
            return True
        if line.startswith("[revgn sweep]"):
            parts = line.split()
            rid = parts[3] if len(parts) > 3 else ""
            if rid in self.tasks:
                self.progress.remove_task(self.tasks.pop(rid))
        return False


def job_columns() -> list:
    """Columns of a display holding an overall bar and ``JobLines``' per-job lines; every task needs an ``info``
    field (the job lines put epoch and loss there, the overall bar "")."""
    return [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn()]
