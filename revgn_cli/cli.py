"""``revgn``: the command-line entry (Typer). Every command is a thin layer over the library modules."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.table import Table

from revgn_cli.errors import EXIT_EXPECTED, EXIT_INTERRUPTED, EXIT_UNEXPECTED, expected_errors, one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Exact Gauss-Newton on reversible MLPs: train, sweep, inspect runs, plot the paper's figures.")
data_app = typer.Typer(no_args_is_help=True, help="Datasets: list them, fetch MNIST / CIFAR-10.")
app.add_typer(data_app, name="data")

from revgn_cli.console import err, out  # noqa: E402
STATE: dict[str, Any] = {"debug": False, "quiet": False}
OVERRIDES_HELP = "Hydra overrides, e.g. optimizer=gn dataset=mnist5k regime=mini_batch optimizer.lr=0.1"
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def guarded(fn: Callable) -> Callable:
    """Expected failures → one line on stderr and exit 2; anything else → one line and exit 1 (--debug: raise)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/] (checkpoint saved; rerun the same command to resume)")
            raise typer.Exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001 — the CLI's one place that turns errors into lines
            if STATE["debug"]:
                raise
            from revgn_cli.train.loop import Interrupted

            if isinstance(e, Interrupted):
                err.print(f"[yellow]interrupted[/]: {e} (checkpoint saved; rerun the same command to resume)")
                raise typer.Exit(EXIT_INTERRUPTED)
            code = EXIT_EXPECTED if isinstance(e, expected_errors()) else EXIT_UNEXPECTED
            msg = one_line(e) if code == EXIT_EXPECTED else f"{type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)"
            err.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(code)

    return wrapper


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars.")) -> None:
    STATE["debug"], STATE["quiet"] = debug, quiet


def _reporter():
    if STATE["quiet"]:
        return None
    from revgn_cli.progress import RichReporter

    return RichReporter()


@app.command(context_settings=EXTRA)
@guarded
def train(overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
          force: bool = typer.Option(False, "--force", help="Retrain even if this exact config finished.")) -> None:
    """Train one run (Hydra compose API) into results/<experiment>/<run_id>/.

    Example: [bold]revgn train optimizer=gn dataset=mnist5k regime=full_batch optimizer.lr=0.5 train.epochs=20[/]
    An identical config that finished is skipped (--force to redo); one that was interrupted resumes.
    """
    from revgn_cli.config import compose_config
    from revgn_cli.train.runner import execute

    cfg = compose_config(overrides or [])
    res = execute(cfg, force=force, reporter=_reporter())
    verb = (f"already {res.prior}, skipped (use --force to retrain)" if res.status == "skipped" else res.status)
    out.print(f"run {res.run_id}: {verb}{' (resumed)' if res.resumed else ''} → {res.path}")
    if res.final:
        out.print("  " + "  ".join(f"{k}={v:.4g}" for k, v in res.final.items()))
    if "diverged" in (res.status, res.prior):
        from revgn_cli.errors import EXIT_DIVERGED

        err.print(f"[yellow]diverged[/]: {res.error or 'no reason recorded'}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_DIVERGED)


@app.command(context_settings=EXTRA)
@guarded
def sweep(overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP + "; comma lists sweep"),
          force: bool = typer.Option(False, "--force", help="Retrain finished runs too."),
          dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs and which exist; train nothing.")) -> None:
    """Hydra multirun over comma lists / ranges, through a Hydra launcher.

    Example: [bold]revgn sweep optimizer=gn optimizer.lr=1e-1,1e-3,1e-4 model.init_std=1e-2,1e-3,1e-6[/]
    Parallel: add [bold]hydra/launcher=joblib hydra.launcher.n_jobs=2[/]; SLURM: [bold]hydra/launcher=submitit_slurm[/].
    """
    from revgn_cli import sweep as sw

    jobs = sw.expand(overrides or [])
    _print_jobs(jobs) if dry_run or not STATE["quiet"] else None
    if dry_run:
        return
    records = sw.launch(overrides or [], force=force, quiet=False, jobs=jobs)
    _summarise_sweep(records, len(jobs))


def _print_jobs(jobs: list) -> None:
    from revgn_cli.train.runner import run_dir_for

    t = Table(title=f"{len(jobs)} job(s)")
    for col in ("#", "run id", "experiment", "overrides", "exists"):
        t.add_column(col)
    for i, j in enumerate(jobs):
        rd = run_dir_for(j.cfg)
        status = (rd.status() or "—") if rd.exists() else "—"
        t.add_row(str(i), rd.run_id, j.cfg.exp_name, " ".join(j.overrides), status)
    out.print(t)


def _summarise_sweep(records: list[dict], expected: int) -> None:
    from revgn_cli.sweep import report_failures

    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    out.print("sweep: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" (of {expected} jobs)")
    if report_failures(records) or len(records) < expected:
        raise typer.Exit(1)


@app.command(context_settings=EXTRA)
@guarded
def runs(filters: Optional[list[str]] = typer.Argument(None, help="key=value filters, e.g. optimizer.name=gn"),
         results: Path = typer.Option(Path("results"), "--results", help="Results directory."),
         check: bool = typer.Option(False, "--check", help="Validate every run dir; report corrupt/orphaned ones."),
         clean: bool = typer.Option(False, "--clean", help="Delete what --check flags (asks first)."),
         yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before --clean deletes.")) -> None:
    """Table of the runs in results/ (filterable by override-style keys)."""
    from revgn_cli.results.loader import run_summaries

    if check or clean:
        from revgn_cli.results.integrity import check_runs, clean_runs

        problems = check_runs(results)
        _print_problems(problems)
        if clean and problems:
            n_del = sum(not p.keep for p in problems)
            if not yes and not typer.confirm(f"delete {n_del} flagged path(s)?", default=False):
                raise typer.Exit(1)
            out.print(f"removed {clean_runs(problems)} path(s)")
        if check and problems and not clean:
            raise typer.Exit(1)
        return
    flt = _parse_filters(filters or [])
    rows = run_summaries(results, flt, include_broken=True)
    t = Table(title=f"{len(rows)} run(s) in {results}")
    for col in ("run id", "experiment", "dataset", "optimizer", "regime", "status", "epochs", "train loss",
                "train acc", "test loss", "test acc", "wall s"):
        t.add_column(col, justify="right" if col not in ("run id", "experiment", "status") else "left", no_wrap=True)
    for r in rows:
        if r["status"] == "corrupt":  # unreadable: a row all the same, never hidden (its reason is printed below)
            t.add_row(r["run_id"], r["experiment"], "—", "—", "—", "[red]corrupt[/]", *["—"] * 6)
            continue
        fin = r.get("meta.final") or {}
        fmt = lambda k: f"{fin[k]:.4g}" if k in fin else "—"  # noqa: E731
        epochs = f"{r.get('meta.epochs_done', '—')}/{r.get('train.epochs')}"
        wall = r.get("meta.wall_s")
        style = {"diverged": "yellow", "failed": "red", "running": "cyan", "interrupted": "magenta"}.get(r["status"])
        status = f"[{style}]{r['status']}[/]" if style else r["status"]
        t.add_row(r["run_id"], r["experiment"], str(r.get("dataset.name")), _opt_label(r), str(r.get("regime.name")),
                  status, epochs, fmt("train_loss"), fmt("train_acc"), fmt("test_loss"), fmt("test_acc"),
                  f"{wall:.1f}" if isinstance(wall, (int, float)) else "—")
    out.print(t)
    _print_corrupt(rows, results)


def _print_corrupt(rows: list[dict], results: Path) -> None:
    for r in rows:
        if r["status"] == "corrupt":
            err.print(f"[red]corrupt[/] {r['experiment']}/{r['run_id']}: {r['error']} — "
                      f"`revgn runs --check --results {results}`", highlight=False, soft_wrap=True)


def _opt_label(r: dict) -> str:
    label = f"{r.get('optimizer.name')} lr={r.get('optimizer.lr'):g}"
    if r.get("train.switch_to"):
        label += f" →{r['train.switch_to']}@{r.get('train.switch_epoch')}"
    return label


def _print_problems(problems: list) -> None:
    if not problems:
        out.print("all runs OK")
        return
    t = Table(title=f"{len(problems)} problem(s)")
    for col in ("path", "problem"):
        t.add_column(col)
    for p in problems:
        t.add_row(str(p.path), p.reason)
    out.print(t)


def _parse_filters(items: list[str]) -> dict[str, str]:
    flt = {}
    for it in items:
        if "=" not in it:
            from revgn_cli.config import ConfigError

            raise ConfigError(f"filter {it!r} is not key=value (e.g. optimizer.name=gn)")
        k, v = it.split("=", 1)
        flt[k] = v.split(",") if "," in v else v
    return flt


@data_app.command("list")
@guarded
def data_list() -> None:
    """The datasets revgn knows."""
    from revgn_cli.data import DATASETS

    for name, desc in DATASETS.items():
        out.print(f"[bold]{name}[/]: {desc}")


@data_app.command("fetch")
@guarded
def data_fetch(name: str = typer.Argument(..., help="mnist | cifar10"),
               root: Optional[Path] = typer.Option(None, "--root", help="Data root (default $REVGN_DATA or ~/.cache/revgn).")) -> None:
    """Download MNIST or CIFAR-10, verify checksums, unpack. Example: [bold]revgn data fetch mnist --root ~/data[/]"""
    from revgn_cli.data import fetch

    path = fetch(name, str(root) if root else None, progress=not STATE["quiet"])
    out.print(f"{name}: ready in {path}")


def _register_plugins() -> None:
    """Commands that live with their feature: figures (plot, reproduce, verify) and the beyond-the-paper studies."""
    import importlib

    for mod in ("revgn_cli.figures.commands", "revgn_cli.studies.commands"):
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not (e.name and mod.startswith(e.name)):
                raise
            continue
        module.register(app, guarded=guarded, state=STATE)


_register_plugins()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
