"""``revgn``: the command-line entry (Typer). Every command is a thin layer over the library modules."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.table import Table

from revgn_cli.confinfo import groups_help
from revgn_cli.errors import EXIT_EXPECTED, EXIT_INTERRUPTED, EXIT_UNEXPECTED, is_expected, one_line

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
            # Not the training loop's Interrupted (below): stopped during set-up, or at once by a second Ctrl-C, so
            # no checkpoint was written now; one saved earlier is still what the rerun resumes from.
            err.print("[yellow]interrupted[/] (no checkpoint written now; rerunning the same command resumes from "
                      "the last one saved, if any)")
            raise typer.Exit(EXIT_INTERRUPTED)
        except Exception as e:  # noqa: BLE001 — the CLI's one place that turns errors into lines
            if STATE["debug"]:
                raise
            import sys

            # Looked up, not imported: an error before any training must not pay for importing torch (≈1 s).
            loop = sys.modules.get("revgn_cli.train.loop")
            if loop is not None and isinstance(e, loop.Interrupted):
                err.print(f"[yellow]interrupted[/]: {e} (checkpoint saved; rerun the same command to resume)")
                raise typer.Exit(EXIT_INTERRUPTED)
            code = EXIT_EXPECTED if is_expected(e) else EXIT_UNEXPECTED
            msg = one_line(e) if code == EXIT_EXPECTED else f"{type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)"
            err.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(code)

    return wrapper


def _plain_flags() -> None:
    """Typer prints a `<bool>` type after every flag (--force, --help); a flag takes no value, so show none."""
    from typer.core import TyperOption

    typed = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> Optional[str]:
        return None if self.is_flag and not self.count else typed(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags()


def _version(value: bool) -> None:
    if value:
        from revgn_cli import __version__

        out.print(f"revgn {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    STATE["debug"], STATE["quiet"] = debug, quiet


def _reporter():
    if STATE["quiet"]:
        return None
    from revgn_cli.progress import RichReporter

    return RichReporter()


RESULTS_HELP = "Results directory (default: results; same as results_dir=DIR)."


def _overrides_with_results(overrides: Optional[list[str]], results: Optional[Path], command: str,
                            allow_sweep: bool = False) -> list[str]:
    """Check the overrides (one clear line for what Hydra would reject) and fold --results into results_dir=."""
    from revgn_cli.overrides import check_overrides, pop_results

    rest, res = pop_results(overrides, results, default=None)
    check_overrides(rest, command, allow_sweep=allow_sweep)
    return rest + ([f"results_dir={res}"] if res is not None else [])


@app.command(context_settings=EXTRA, epilog=groups_help())
@guarded
def train(overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP),
          force: bool = typer.Option(False, "--force", help="Retrain from scratch even if this exact config finished; the earlier run moves whole to <results>/.quarantine/ (never deleted)."),
          results: Optional[Path] = typer.Option(None, "--results", help=RESULTS_HELP),
          show_config: bool = typer.Option(False, "--show-config", help="Print the resolved config and exit (trains nothing).")) -> None:
    """Train one run (Hydra compose API) into results/<experiment>/<run_id>/.

    Example: [bold]revgn train optimizer=gn dataset=mnist5k regime=full_batch optimizer.lr=0.5 train.epochs=20[/]
    An identical config that finished is skipped (--force to redo); one that was interrupted resumes.
    Several values of a key are a sweep: [bold]revgn sweep optimizer.lr=0.1,0.01[/].
    """
    from revgn_cli.config import compose_config

    cfg = compose_config(_overrides_with_results(overrides, results, "train"))
    if show_config:
        _print_config(cfg)
        return
    from revgn_cli.train.runner import execute

    res = execute(cfg, force=force, reporter=_reporter())
    if res.quarantined:
        err.print(f"[yellow]{res.moved_note()}[/]", highlight=False, soft_wrap=True)
    verb = (f"already {res.prior}, skipped (use --force to retrain)" if res.status == "skipped" else res.status)
    out.print(f"run {res.run_id}: {verb}{' (resumed)' if res.resumed else ''} → {res.path}")
    if res.final:
        out.print("  " + "  ".join(f"{k}={v:.4g}" for k, v in res.final.items()))
    if "diverged" in (res.status, res.prior):
        from revgn_cli.errors import EXIT_DIVERGED

        err.print(f"[yellow]diverged[/]: {res.error or 'no reason recorded'}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_DIVERGED)


@app.command(context_settings=EXTRA, epilog=groups_help())
@guarded
def sweep(overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP + "; comma lists sweep"),
          force: bool = typer.Option(False, "--force", help="Retrain finished runs too (earlier runs move to <results>/.quarantine/)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="List the jobs and which exist; train nothing."),
          results: Optional[Path] = typer.Option(None, "--results", help=RESULTS_HELP)) -> None:
    """Hydra multirun over comma lists / ranges, through a Hydra launcher.

    Example: [bold]revgn sweep optimizer=gn optimizer.lr=1e-1,1e-3,1e-4 model.init_std=1e-2,1e-3,1e-6[/]
    Parallel: add [bold]hydra/launcher=joblib hydra.launcher.n_jobs=2[/]; SLURM: [bold]hydra/launcher=submitit_slurm[/].
    """
    from revgn_cli import sweep as sw

    overrides = _overrides_with_results(overrides, results, "sweep", allow_sweep=True)
    jobs = _expand_with_progress(sw.expand, overrides)
    _print_jobs(jobs) if dry_run or not STATE["quiet"] else None
    if dry_run:
        return
    records = sw.launch(overrides, force=force, quiet=False, jobs=jobs)
    _summarise_sweep(records, len(jobs))


@app.command(context_settings=EXTRA)
@guarded
def tune(experiment: str = typer.Argument(..., help="A preset with a tune grid, e.g. fig1_quick, minibatch_quick, "
                                                   "fig5_quick (tuned per regime)."),
         overrides: Optional[list[str]] = typer.Argument(None, help="Hydra overrides that define the setting "
                                                         "(optimizer=NAME tunes that optimiser only)"),
         results: Optional[Path] = typer.Option(None, "--results", help=RESULTS_HELP),
         jobs: int = typer.Option(2, "--jobs", help="Parallel runs (the joblib launcher; 1 = one after another)."),
         force: bool = typer.Option(False, "--force", help="Retrain finished tune runs too.")) -> None:
    """Choose each optimiser's learning rate on a validation split held out of the training set.

    Every rate of the preset's tune.grid × tune.seeds trains on the training images minus tune.val_size; the
    chosen rate has the lowest mean final val_loss (a diverged seed counts as +inf). Finished runs are skipped.
    While the choice is the largest (smallest) rate tried, the next rate out of tune.extend.<optimizer> above
    (below) it is trained too, e.g. [bold]++tune.extend.gn=[3.0,10.0][/]. Record: <results>/tune/<experiment>.json.
    Example: [bold]revgn tune minibatch_quick optimizer=adam[/]
    """
    from revgn_cli.overrides import check_overrides, pop_results
    from revgn_cli.tune import run_tune_cells

    if jobs < 1:
        from revgn_cli.config import ConfigError

        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    rest, res = pop_results(overrides, results, default=None)
    check_overrides(rest, "tune")
    recs = run_tune_cells(experiment, rest, res, n_jobs=jobs, force=force, quiet=STATE["quiet"],
                          log=lambda s: out.print(s, highlight=False))
    for rec in recs:
        t = Table(title=f"{rec.experiment}{' · ' + rec.setting if rec.setting else ''}: mean final val_loss over seeds")
        for col in ("optimizer", "rate", "mean val_loss", "diverged seeds", "chosen"):
            t.add_column(col)
        for opt, ot in rec.optimizers.items():
            means, div = ot.mean_val_loss, ot.diverged
            for r in sorted(ot.grid):  # declared grid and the rates out of it (tune.extend) tried, in rate order
                mark = ("◀ on the edge of the rates tried" if ot.at_edge else "◀") if r == ot.chosen else ""
                t.add_row(opt, f"{r:g}", f"{means[r]:.4f}", f"{div[r]}/{len(ot.seeds)}", mark)
        out.print(t)
        out.print("chosen" + (f" ({rec.setting})" if rec.setting else "") + ": "
                  + "  ".join(f"{o}={x.chosen:g}{' (edge)' if x.at_edge else ''}" for o, x in rec.optimizers.items()))


def _expand_with_progress(expand: Callable, overrides: list[str]) -> list:
    """``sweep.expand`` composes every job (≈0.1 s each): show a bar on stderr while it does, unless --quiet."""
    if STATE["quiet"]:
        return expand(overrides)
    from revgn_cli.progress import counter

    with counter("composing jobs") as tick:
        return expand(overrides, on_job=tick)


def _print_config(cfg: Any) -> None:
    import yaml

    from revgn_cli.config import config_dict, run_id

    out.print(f"# run id {run_id(cfg)} → {cfg.results_dir}/{cfg.exp_name}/{run_id(cfg)}", highlight=False)
    out.print(yaml.safe_dump(config_dict(cfg), sort_keys=False).rstrip(), highlight=False, markup=False)


def _print_jobs(jobs: list) -> None:
    from revgn_cli.train.runner import run_dir_for

    t = Table(title=f"{len(jobs)} job(s)")
    for col in ("#", "run id", "experiment", "overrides", "exists"):
        t.add_column(col)
    for i, j in enumerate(jobs):
        rd = run_dir_for(j.cfg)
        status = rd.status() or "—"  # store.run_state; None: no run dir
        t.add_row(str(i), rd.run_id, j.cfg.exp_name, " ".join(j.overrides), status)
    out.print(t)


def _summarise_sweep(records: list[dict], expected: int) -> None:
    from revgn_cli.sweep import report_failures

    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    requeued = sum(1 for r in records if r.get("slurm_restarts"))  # jobs SLURM requeued, which resumed
    out.print("sweep: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" (of {expected} jobs"
              + (f"; {requeued} resumed after SLURM requeued them" if requeued else "") + ")")
    if report_failures(records) or len(records) < expected:
        raise typer.Exit(1)


@app.command(context_settings=EXTRA)
@guarded
def runs(filters: Optional[list[str]] = typer.Argument(None, help="key=value filters (e.g. optimizer.name=gn "
                                                      "optimizer.lr=0.1,0.01), or: show RUN_ID"),
         results: Optional[Path] = typer.Option(None, "--results", help=RESULTS_HELP),
         columns: Optional[str] = typer.Option(None, "--columns", help="Comma list of columns (config keys, metrics, "
                                               "status, epochs, wall_s) instead of the automatic ones."),
         sort: Optional[str] = typer.Option(None, "--sort", help="KEY or KEY:desc, e.g. test_acc:desc."),
         fmt: str = typer.Option("table", "--format", help="table | csv | json (csv/json: full run ids, all "
                                 "varying keys, raw values)."),
         group_by: Optional[str] = typer.Option(None, "--group-by", help="KEY[,KEY]: one row per group, each metric's "
                                                "mean ± 95 % t-interval over its seeds; --sort by a group mean."),
         fold_seeds: bool = typer.Option(False, "--fold-seeds", help="Group runs that differ only in the seed."),
         check: bool = typer.Option(False, "--check", help="Validate every run dir; report corrupt/orphaned ones."),
         clean: bool = typer.Option(False, "--clean", help="Delete temporary files and empty run dirs; move damaged "
                                    "runs whole to <results>/.quarantine/ (asks first; never deletes data)."),
         yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before --clean.")) -> None:
    """Table of the runs in results/: the keys that differ among them, status, progress, last metrics.

    Examples: [bold]revgn runs exp_name=lr_sweep --sort test_acc:desc[/] · [bold]revgn runs --format csv > runs.csv[/] ·
    [bold]revgn runs show 3f2a9c1b[/] (one run in full) · [bold]revgn compare ID ID[/] (what differs) ·
    [bold]revgn runs exp_name=lr_sweep --group-by optimizer.lr --sort test_loss[/] (mean ± interval over seeds)
    """
    from revgn_cli.overrides import parse_filters, pop_results
    from revgn_cli.results.query import check_results_dir

    args, res = pop_results(filters, results)
    if check or clean:
        check_results_dir(res)
        from revgn_cli.results.integrity import check_runs

        problems = check_runs(res)
        _print_problems(problems, res)
        if clean and problems:
            _clean(problems, res, yes)
        if check and problems and not clean:
            raise typer.Exit(1)
        return
    if args and args[0] == "show":
        if len(args) != 2:
            from revgn_cli.config import ConfigError

            raise ConfigError("usage: revgn runs show RUN_ID (the id or its first characters, from `revgn runs`)")
        _show_run(res, args[1])
        return
    if group_by or fold_seeds:
        from revgn_cli.results.group_views import group_listing

        group_listing(_summaries(res, parse_filters(args)), res, group_by, columns, sort, fmt, out)
        return
    _runs_listing(res, parse_filters(args), columns, sort, fmt)


def _print_corrupt(rows: list[dict], results: str | Path) -> None:
    for r in rows:
        if r["status"] == "corrupt":
            err.print(f"[red]corrupt[/] {r['experiment']}/{r['run_id']}: {r['error']} — "
                      f"`revgn runs --check --results {results}`", highlight=False, soft_wrap=True)


def _summaries(results: str, flt: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Matching runs (a bad path or filter, or filters matching no run, is one error line) with their metrics (last
    logged if unfinished)."""
    from revgn_cli.results.loader import last_logged, query_runs
    from revgn_cli.results.table import add_metrics

    # Unreadable runs are `corrupt` rows, never hidden.
    rows = query_runs(results, flt, include_broken=True, require_match=True)
    add_metrics(rows, last_logged)
    return rows


def _runs_listing(results: str, flt: dict[str, Any], columns: Optional[str], sort: Optional[str], fmt: str) -> None:
    from revgn_cli.results import table as tb

    if fmt not in tb.FORMATS:
        from revgn_cli.config import ConfigError

        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(tb.FORMATS)}")
    rows = _summaries(results, flt)
    if sort:
        rows = tb.sort_rows(rows, sort)
    hidden: list[str] = []
    if columns:
        cols = tb.parse_columns(columns, rows)
        cols = cols if "run_id" in cols else ["run_id", *cols]  # csv/json too: a row must say which run it is
    elif fmt == "table":
        cols, hidden = tb.default_columns(rows, filtered=flt)
        cols, dropped = tb.fit(rows, cols, tb.by_telling(tb.varying_keys(rows)), out.width)  # 80 columns
        hidden = dropped + hidden
    else:
        cols, _ = tb.default_columns(rows, cap=None, filtered=flt)
        cols = list(dict.fromkeys(["run_id", "experiment", *cols, *tb.METRICS, "wall_s", "path"]))
    if fmt == "csv":
        out.file.write(tb.to_csv(rows, cols))
        return
    if fmt == "json":
        out.file.write(tb.to_json(rows, cols) + "\n")
        return
    from revgn_cli.results.views import runs_table

    caption = f"also differing: {', '.join(hidden)} (--columns to show)" if hidden else None
    out.print(runs_table(rows, cols, f"{len(rows)} run(s) in {results}", caption, width=out.width))
    _print_corrupt(rows, results)


def _show_run(results: str, ident: str) -> None:
    from revgn_cli.results.query import resolve_run
    from revgn_cli.results.views import show_run

    summary = resolve_run(_summaries(results), ident)
    cfg = Path(summary["path"], "config.yaml")
    out.print(show_run(summary, cfg.read_text() if cfg.exists() else "(no config.yaml)"), highlight=False)


@app.command(context_settings=EXTRA)
@guarded
def compare(run_ids: Optional[list[str]] = typer.Argument(None, help="Two or more run ids (or their first "
                                                          "characters); with --by: key=value filters."),
            results: Optional[Path] = typer.Option(None, "--results", help=RESULTS_HELP),
            by: Optional[str] = typer.Option(None, "--by", help="KEY: compare the groups of runs that differ only in "
                                             "KEY and the seed, paired by seed, with a verdict."),
            metric: str = typer.Option("test_loss", "--metric", help="--by: metrics, comma list."),
            sesoi: Optional[list[str]] = typer.Option(None, "--sesoi", help="--by: METRIC=VALUE, the smallest "
                                                      "difference that matters (default: losses 0.01, accuracies "
                                                      "0.005)."),
            baseline: Optional[str] = typer.Option(None, "--baseline", help="--by: the KEY value the others are "
                                                   "compared with (default: the first)."),
            fmt: str = typer.Option("table", "--format", help="--by: table | md | csv | json.")) -> None:
    """Runs side by side — or, with --by, groups of runs compared over seeds with a verdict.

    Examples: [bold]revgn compare 3f2a9c1b 7d01e4aa[/] (ids from `revgn runs`) ·
    [bold]revgn compare --by optimizer.lr exp_name=lr_sweep --metric test_loss,test_acc[/]
    """
    from revgn_cli.overrides import pop_results
    from revgn_cli.results.query import differing_keys, resolve_run
    from revgn_cli.results.views import NOT_COMPARED, compare_table

    ids, res = pop_results(run_ids, results)
    if by is not None:
        from revgn_cli.overrides import parse_filters
        from revgn_cli.results.group_views import compare_listing

        compare_listing(_summaries(res, parse_filters(ids)), by, metric, sesoi or [], baseline, fmt, out)
        return
    from revgn_cli.config import ConfigError

    if fmt != "table" or sesoi or baseline or metric != "test_loss":
        raise ConfigError("--metric, --sesoi, --baseline and --format go with --by KEY (e.g. revgn compare --by "
                          "optimizer.lr exp_name=NAME)")
    if len(ids) < 2:
        raise ConfigError("compare needs two or more run ids (see `revgn runs`), or --by KEY")
    every = _summaries(res)
    chosen = [resolve_run(every, i) for i in ids]
    keys = differing_keys(chosen, ignore=NOT_COMPARED)
    out.print(compare_table(chosen, keys), highlight=False)


def _print_problems(problems: list, results: str) -> None:
    """One line per flagged path, relative to the results dir and never cut: what is wrong, what --clean does."""
    if not problems:
        out.print("all runs OK")
        return
    from revgn_cli.results.integrity import DELETE, QUARANTINE

    does = {DELETE: "--clean deletes it", QUARANTINE: "--clean quarantines it", "keep": "--clean leaves it"}
    out.print(f"{len(problems)} problem(s) in {results}:", highlight=False)
    for p in problems:
        rel = p.path.relative_to(results) if p.path.is_relative_to(results) else p.path
        out.print(f"  {rel}: {p.reason} [{does[p.action]}]", highlight=False, markup=False, soft_wrap=True)


def _clean(problems: list, results: str, yes: bool) -> None:
    from revgn_cli.results.integrity import DELETE, QUARANTINE, clean_runs

    n_del = sum(p.action == DELETE for p in problems)
    n_q = sum(p.action == QUARANTINE for p in problems)
    if not n_del and not n_q:
        out.print("nothing to clean (the paths above are left alone)")
        return
    if not yes and not typer.confirm(f"delete {n_del} temporary file(s)/empty dir(s) and move {n_q} damaged run(s) "
                                     f"to {results}/.quarantine/?", default=False):
        raise typer.Exit(1)
    deleted, moved = clean_runs(problems, results)
    out.print(f"deleted {deleted} temporary file(s)/empty dir(s)", highlight=False)
    if moved:
        where = moved[0].parent.parent
        out.print(f"quarantined {len(moved)} damaged run(s) in {where} (see REASONS.txt there); to restore one, move "
                  f"it back: mv {moved[0]} {Path(results) / moved[0].parent.name}/", highlight=False, soft_wrap=True)


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
