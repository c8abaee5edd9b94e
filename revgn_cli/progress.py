"""Rich progress bar for long commands (stderr, so stdout stays clean for tables and pipes)."""
from __future__ import annotations

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
