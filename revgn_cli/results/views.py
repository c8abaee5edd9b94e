"""Rich renderings of runs for the terminal: the runs table, one run in full (``runs show``), runs side by side
(``compare``). Pure: summaries in, rich renderables out; the CLI prints them."""
from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table

from revgn_cli.results.table import METRICS, cell, column_width, header, table_width

STATUS_STYLE = {"done": "green", "diverged": "yellow", "failed": "red", "running": "cyan", "interrupted": "magenta",
                "corrupt": "bold red"}
# Compare lists config keys only, less those that never change the numbers (where output goes, which device,
# where the data lives); status and metrics get their own rows.
NOT_COMPARED = ("run_id", "experiment", "status", "path", "results_dir", "device", "dataset.root", "epochs", "wall_s",
                *METRICS)


def status_text(status: Any) -> str:
    """Any status string, coloured when known (new statuses, e.g. ``corrupt``, render plainly)."""
    s = str(status)
    style = STATUS_STYLE.get(s)
    return f"[{style}]{s}[/]" if style else s


def _table(title: str | None = None, caption: str | None = None, show_header: bool = True) -> Table:
    # No vertical rules: at 80 columns every character goes to the values.
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                 title_justify="left", caption_justify="left", show_header=show_header)


def runs_table(rows: list[dict[str, Any]], columns: list[str], title: str, caption: str | None = None,
               width: int = 80) -> Table:
    """Every value whole; headers wrap between words only when the table would not fit ``width`` otherwise."""
    t = _table(title, caption)
    wrap = table_width(rows, columns, wrap_header=False) > width
    for c in columns:
        left = c in ("run_id", "status", "experiment") or not any(isinstance(r.get(c), (int, float)) for r in rows)
        t.add_column(header(c, columns), justify="left" if left else "right", overflow="fold",
                     width=column_width(c, rows, columns, wrap))
    for r in rows:
        t.add_row(*[status_text(r.get(c)) if c == "status" else cell(c, r.get(c)) for c in columns])
    return t


def show_run(summary: dict[str, Any], config_yaml: str) -> RenderableType:
    """``revgn runs show``: status, error, final metrics, paths, then the resolved config."""
    path = summary.get("path", "")
    facts = _table(show_header=False)
    facts.add_column("", style="bold")
    facts.add_column("", overflow="fold")
    items = [("run id", summary["run_id"]), ("experiment", summary.get("experiment")),
             ("status", status_text(summary.get("status"))), ("epochs", summary.get("epochs")),
             ("wall s", summary.get("wall_s")), ("error", summary.get("meta.error") or summary.get("error")),
             ("started", summary.get("meta.started")), ("finished", summary.get("meta.finished")),
             ("device", summary.get("meta.device")), ("git commit", summary.get("meta.git_commit")),
             ("slurm job", summary.get("meta.slurm_job")), ("slurm requeues", summary.get("meta.slurm_restarts"))]
    items += [(m.replace("_", " "), summary.get(m)) for m in METRICS]
    items += [("run dir", path), ("config", f"{path}/config.yaml"), ("metrics", f"{path}/metrics.parquet"),
              ("meta", f"{path}/meta.json"), ("checkpoint", f"{path}/checkpoints/last.pt")]
    for k, v in items:
        if v is not None:
            facts.add_row(k, v if k == "status" else cell(k, v))
    return Group(facts, "[bold]resolved config[/] (config.yaml)", config_yaml.rstrip())


def compare_table(summaries: list[dict[str, Any]], keys: list[str]) -> Table:
    """Differing config keys, then status, epochs and final metrics, one column per run."""
    t = _table(caption="config keys not listed are equal")
    t.add_column("key", style="bold", overflow="fold")
    for s in summaries:
        t.add_column(cell("run_id", s["run_id"]), justify="right", overflow="fold")
    for k in keys:
        t.add_row(k, *[cell(k, s.get(k)) for s in summaries])
    t.add_section()
    t.add_row("status", *[status_text(s.get("status")) for s in summaries])
    for k in ("epochs", *METRICS, "wall_s"):
        t.add_row(k.replace("_", " "), *[cell(k, s.get(k)) for s in summaries])
    return t
