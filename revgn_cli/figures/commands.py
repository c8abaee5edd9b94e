"""``revgn plot``, ``revgn reproduce`` and ``revgn verify`` (registered on the main Typer app by ``revgn_cli.cli``)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.markup import escape
from rich.table import Table

from revgn_cli.console import err, out  # noqa: E402
from revgn_cli.overrides import comma_list  # noqa: E402
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
DEFAULT_RESULTS = "results"
DEFAULT_OUT = Path("figures")
PARTIAL_HELP = ("Go on without runs that are present but unreadable (corrupt config, lost rows); the figure title and "
                "the claims table name what is missing. Without it such a run stops the command.")
STATUS_STYLE = {"HOLDS": "bold green", "REVERSED": "bold red", "NEGLIGIBLE": "bold blue", "INCONCLUSIVE": "bold yellow",
                "INSUFFICIENT": "yellow", "MISSING": "yellow"}


def split_args(args: list[str] | None, scale: str | None, results: Path | None) -> tuple[str, list[str], str]:
    """Pull ``scale=…`` and ``results_dir=…`` out of the trailing arguments; the rest are Hydra overrides.

    Returns (scale, overrides without results_dir, results dir). ``--scale`` / ``--results`` and their ``key=value``
    forms are interchangeable; giving both with different values is an error.
    """
    from revgn_cli.config import ConfigError
    from revgn_cli.figures.data import SCALES
    from revgn_cli.overrides import pop_results

    args, res = pop_results(args, results, default=DEFAULT_RESULTS)
    rest: list[str] = []
    s_arg = None
    for a in args:
        if a.startswith("scale="):
            s_arg = a.split("=", 1)[1]
        else:
            rest.append(a)
    if s_arg and scale and s_arg != scale:
        raise ConfigError(f"scale given twice: --scale {scale} and scale={s_arg}")
    sc = s_arg or scale or "quick"
    if sc not in SCALES:
        raise ConfigError(f"scale={sc!r} is not one of {', '.join(SCALES)}")
    for a in rest:
        if ("=" not in a and not a.startswith("~")) or a.startswith("-"):
            raise ConfigError(f"unexpected argument {a!r}: extra arguments are Hydra overrides key=value")
    from revgn_cli.overrides import check_group_choices

    check_group_choices(rest)
    return sc, rest, str(res)


def output_folder(out_dir: Path | None, res: str, results: Path | None, args: list[str] | None,
                  need_runs: str | None = None) -> Path:
    """The folder figures and claims.md go to, checked writable before anything is drawn.

    With ``--results DIR`` (or ``results_dir=DIR``) and no ``--out``: ``DIR/figures``, so figures made from one
    results dir never replace those made from another (docs/robustness.md). ``need_runs`` (the target, e.g.
    ``all``): a results dir without a single run is an error (exit 2) instead of a page of MISSING.
    """
    from revgn_cli.figures.outputs import default_out, writable_dir
    from revgn_cli.results.query import QueryError
    from revgn_cli.results.store import iter_run_dirs

    if need_runs and next(iter_run_dirs(res), None) is None:
        raise QueryError(f"no runs in {res}: nothing to plot or verify (`revgn reproduce {need_runs} --results {res}` "
                         "trains them)")
    given = results is not None or any(a.startswith("results_dir=") for a in args or [])
    return writable_dir(out_dir if out_dir is not None else default_out(res, given, DEFAULT_OUT))


def plot_figures(names: list[str], results: str, out_dir: Path, scale: str, overrides: list[str], *,
                 skip_missing: bool, allow_partial: bool = False) -> tuple[list[str], list[str]]:
    """Render each figure; returns (rendered, missing). A missing figure raises unless ``skip_missing``."""
    from revgn_cli.figures.data import MissingRunsError, reproduce_command
    from revgn_cli.figures.catalog import render

    done, missing = [], []
    for name in names:
        try:
            r = render(name, results, out_dir, scale, overrides, allow_partial=allow_partial)
        except MissingRunsError as e:
            if not skip_missing:
                raise
            missing.append(name)
            err.print(f"[yellow]skipped[/] {e}", highlight=False, soft_wrap=True)
            continue
        av = r.availability
        fix = escape(reproduce_command(name, scale, results, overrides))
        note = "" if av.complete else f" [yellow]({av.describe()}: `{fix}` for the rest)[/]"
        out.print(f"{name}: {' '.join(str(p) for p in r.paths)}{note}", highlight=False, soft_wrap=True)
        done.append(name)
        _close(r.figure)
    if done:
        write_captions(out_dir, scale)
    return done, missing


def write_captions(out_dir: Path, scale: str) -> Path:
    """``<out>/captions.md``: the caption of every paper figure whose PNG is in ``out_dir`` (for the README)."""
    from revgn_cli.figures.registry import FIGURES
    from revgn_cli.figures.spec import title_of

    lines = ["# Figure captions", ""]
    for name, spec in FIGURES.items():
        if (out_dir / f"{name}.png").exists():
            lines += [f"## {title_of(spec, scale)}", "", f"![{name}]({name}.png)", "", spec.full_caption(scale),
                      "", f"Command: `revgn reproduce {name} scale={scale}`", ""]
    path = out_dir / "captions.md"
    path.write_text("\n".join(lines))
    return path


def _close(fig: Any) -> None:
    fig.clear()


def list_table(results: str, scale: str, overrides: list[str]) -> Table:
    from revgn_cli.figures.catalog import figure_availability
    from revgn_cli.figures.registry import FIGURES

    t = Table(title=f"figures ({scale} scale, runs in {results})")
    for c in ("figure", "caption", "presets", "runs"):
        t.add_column(c, overflow="fold")
    for spec in FIGURES.values():
        av = figure_availability(spec, results, scale, overrides)
        style = "green" if av.complete else ("yellow" if av.finished else "dim")
        t.add_row(spec.name + (" (main)" if spec.main else ""), escape(spec.title), ", ".join(spec.presets_for(scale)),
                  f"[{style}]{av.describe()}[/]")
    return t


def verify_table(outcomes: list, scale: str, note: str = "") -> Table:
    from revgn_cli.figures.claims import COLUMNS, row_cells

    t = Table(title=f"paper claims at {scale} scale — margin > 0 is the paper's side; mean ± 95 % t-interval over "
                    "finite seed pairs; verdicts on Holm-adjusted p" + (f" — {note}" if note else ""))
    for c in COLUMNS:
        t.add_column(c, overflow="fold")
    for o in outcomes:
        cells = [escape(c) for c in row_cells(o)]
        cells[-1] = f"[{STATUS_STYLE[o.status]}]{o.status}[/]"
        t.add_row(*cells)
    return t


def pop_protocol(args: list[str] | None, default: str) -> tuple[tuple[str, ...], list[str]]:
    """Pull ``protocol=paper|tuned|both`` out of the trailing arguments."""
    from revgn_cli.figures.protocols import parse_protocol

    rest, value = [], None
    for a in args or []:
        if a.startswith("protocol="):
            value = a.split("=", 1)[1]
        else:
            rest.append(a)
    return parse_protocol(value or default), rest


def check_data(presets: list[str], overrides: list[str], results: str) -> None:
    """Load every dataset the presets train on, once, before any job starts: a missing dataset is one line with
    its `revgn data fetch` command, not the same error from every job."""
    from revgn_cli.config import compose_config
    from revgn_cli.data import load_dataset

    from hydra.core.override_parser.overrides_parser import OverridesParser

    # one job's config is enough to know the dataset: a sweep override (seed=42,43,44) keeps its first value
    single = [o.input_line if not o.is_sweep_override() else f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
              for o in OverridesParser.create().parse_overrides(list(overrides))]
    seen = set()
    for p in presets:
        cfg = compose_config([f"experiment={p}", *single, f"results_dir={results}"])
        key = (cfg.dataset.name, cfg.dataset.root)
        if key not in seen:
            seen.add(key)
            load_dataset(*key)  # DataError names the fix (revgn data fetch NAME --root …)


def run_verify(figs: list[str], results: str, out_dir: Path, scale: str, overrides: list[str], *,
               allow_partial: bool = False, protocols: tuple[str, ...] | None = None) -> list:
    from revgn_cli.figures.claims import LADDER_DOC, claims_for, evaluate, seeds_note, summary_line, to_markdown
    from revgn_cli.figures.protocols import PROTOCOLS

    outcomes = evaluate(claims_for(figs), results, scale, overrides, allow_partial=allow_partial,
                        protocols=protocols or PROTOCOLS)
    note = seeds_note(overrides)
    out.print(verify_table(outcomes, scale, note))
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "claims.md"
    md.write_text(to_markdown(outcomes, scale=scale, results_dir=results, note=note))
    out.print(f"claims ({scale} scale{', ' + note if note else ''}): {summary_line(outcomes)} → {md}; how the margins "
              f"move toward the paper's scale: {LADDER_DOC}", highlight=False, soft_wrap=True)
    return outcomes


def figure_presets(specs: list, scale: str) -> list[str]:
    """Every preset the figures and their claims read (a claim's reference presets too: fig8's Adam), each once."""
    from revgn_cli.figures.claims import claim_presets, claims_for
    from revgn_cli.figures.registry import presets_of

    out = presets_of(specs, scale)
    for c in claims_for([s.name for s in specs]):
        out += [p for p in claim_presets(c, scale) if p not in out]
    return out


def tune_step(specs: list, scale: str, overrides: list[str], results: str, *, dry_run: bool,
              quiet: bool) -> dict[str, list[tuple[str, ...]] | str]:
    """The tuned protocol's first step: ``revgn tune`` every preset that declares how it is tuned (finished tuning
    runs are skipped). preset → its tuned job variants (``protocols.tuned_variants_for``), or a line saying why it
    has none (no grid; dry run)."""
    from revgn_cli.figures.protocols import NoTunedRates, has_tune_grid, setting_overrides, tuned_variants_for

    chosen: dict[str, list[tuple[str, ...]] | str] = {}
    setting = setting_overrides(overrides)
    for p in figure_presets(specs, scale):
        if not has_tune_grid(p):
            chosen[p] = "no tune grid"
            continue
        if not dry_run:
            from revgn_cli import tune

            out.print(f"[bold]tuning[/] preset {p} on its validation split …", highlight=False)
            tune.run_tune_cells(p, setting, results, quiet=quiet,
                                log=lambda s: out.print(f"  {s}", highlight=False))
        try:
            chosen[p] = tuned_variants_for(p, results, setting)
        except NoTunedRates:
            chosen[p] = "tune first (`revgn tune " + p + "`)"
    return chosen


def reproduce_plan(specs: list, scale: str, overrides: list[str], results: str, protocols: tuple[str, ...],
                   tuned: dict[str, list[tuple[str, ...]] | str]) -> list[tuple[str, str, tuple[str, ...], int, int]]:
    """(preset, protocol, extra overrides, n runs, n to train) per launch; a run shared by two entries counts once."""
    from revgn_cli.figures.data import identity_overrides, job_status, preset_jobs

    ov = identity_overrides(overrides)
    plan = []
    seen: set[str] = set()
    for proto in protocols:
        for p in figure_presets(specs, scale):
            if proto == "paper":
                variants: list[tuple[str, ...]] = [()]
            else:
                got = tuned.get(p)
                if not isinstance(got, list):
                    plan.append((p, f"tuned: {got or 'no tune grid'}", (), 0, 0))
                    continue
                variants = got
            for extra in variants:
                jobs = [j for j in preset_jobs(p, ov + extra) if j.run_id not in seen]
                seen.update(j.run_id for j in jobs)
                missing = [j for j in jobs if job_status(results, j) not in ("done", "diverged")]
                plan.append((p, proto, extra, len(jobs), len(missing)))
    return plan


def register(app: typer.Typer, *, guarded: Callable, state: dict[str, Any]) -> None:
    """Add ``plot``, ``reproduce`` and ``verify`` to the CLI."""

    @app.command(context_settings=EXTRA)
    @guarded
    def plot(target: Optional[str] = typer.Argument(None, help="figN (fig1 … fig15, comma lists ok), main, all — "
                                                   "or runs (your own runs, chosen by filters)"),
             overrides: Optional[list[str]] = typer.Argument(None, help="figN: scale=quick|paper and Hydra overrides "
                                                             "the runs were trained with; runs: key=value filters"),
             list_: bool = typer.Option(False, "--list", help="Table of every figure: caption, presets, whether its runs exist."),
             results: Optional[Path] = typer.Option(None, "--results", help="Results directory (default: results)."),
             out_dir: Optional[Path] = typer.Option(None, "--out", help="figN: the folder for figN.png / .pdf (default: "
                                                    "figures; with --results DIR: DIR/figures); runs: a FILE.png|.pdf|"
                                                    ".svg (PDF beside it) or a folder (default: <results>/plots)."),
             scale: Optional[str] = typer.Option(None, "--scale", help="quick | paper (default: quick)"),
             x: str = typer.Option("epoch", "--x", help="runs: x axis column (epoch, step)."),
             y: str = typer.Option("train_loss,test_loss", "--y", help="runs: metrics, comma list (one panel row each)."),
             hue: Optional[str] = typer.Option("optimizer.name", "--hue", help="runs: config key → one colour per value."),
             col_key: Optional[str] = typer.Option(None, "--col", help="runs: config key → one panel column per value."),
             style_key: Optional[str] = typer.Option(None, "--style", help="runs: config key → one line style per value."),
             average_over: Optional[str] = typer.Option(None, "--average-over", help="runs: KEY[,KEY] a curve may "
                                                        "average over besides the seed (otherwise an error)."),
             allow_partial: bool = typer.Option(False, "--allow-partial", help=PARTIAL_HELP)) -> None:
        """Draw paper figures from finished runs — or any runs of yours (never trains).

        Example: [bold]revgn plot fig4[/] · [bold]revgn plot all --out figures[/] · [bold]revgn plot --list[/] ·
        [bold]revgn plot runs exp_name=lr_sweep --y train_loss,test_loss --hue optimizer.lr[/]
        """
        if target == "runs":
            from revgn_cli.figures.user import plot_user_runs

            plot_user_runs(overrides or [], results, out_dir, x=x, y=y, hue=hue, col_key=col_key, style_key=style_key,
                           allow_partial=allow_partial,
                           average_over=comma_list(average_over))
            return
        sc, ov, res = split_args(overrides, scale, results)
        if list_:
            out.print(list_table(res, sc, ov))
            return
        if not target:
            from revgn_cli.config import ConfigError

            raise ConfigError("name a figure (fig1 … fig15), main or all — or --list")
        from revgn_cli.figures.catalog import select

        names = [s.name for s in select(target)]
        many = target.strip().lower() in ("all", "main")
        out_dir = output_folder(out_dir, res, results, overrides, need_runs=target if many else None)
        done, missing = plot_figures(names, res, out_dir, sc, ov, skip_missing=many, allow_partial=allow_partial)
        if many:
            out.print(f"plotted {len(done)} figure(s) into {out_dir}" +
                      (f"; no runs yet for {', '.join(missing)}" if missing else ""), highlight=False, soft_wrap=True)

    @app.command(context_settings=EXTRA)
    @guarded
    def reproduce(target: str = typer.Argument(..., help="figN (comma lists ok), main (the main-text figures) or all"),
                  args: Optional[list[str]] = typer.Argument(None, help="scale=quick|paper, protocol=paper|tuned|both "
                                                             "(default paper), then Hydra overrides, e.g. hydra/launcher=joblib"),
                  results: Optional[Path] = typer.Option(None, "--results", help="Results directory (default: results)."),
                  out_dir: Path = typer.Option(DEFAULT_OUT, "--out", help="Where the figures and claims.md go."),
                  dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and which exist; train nothing.")) -> None:
        """Train whatever runs a figure's presets still miss (finished ones are skipped), then plot it.

        protocol=tuned (or both) first runs `revgn tune` for every preset with a tune grid, then trains the presets
        at the chosen rates. Example: [bold]revgn reproduce fig1[/] · [bold]revgn reproduce main scale=quick[/] ·
        [bold]revgn reproduce all scale=quick protocol=both[/] ·
        [bold]revgn reproduce all scale=paper hydra/launcher=submitit_slurm[/]. `main` and `all` end with `revgn verify`.
        """
        from revgn_cli import sweep as sw
        from revgn_cli.figures.catalog import select

        t0 = time.time()
        protocols, args = pop_protocol(args, "paper")
        sc, ov, res = split_args(args, None, results)
        specs = select(target)
        quiet = bool(state.get("quiet"))
        tuned = tune_step(specs, sc, ov, res, dry_run=dry_run, quiet=quiet) if "tuned" in protocols else {}
        plan = reproduce_plan(specs, sc, ov, res, protocols, tuned)
        t = Table(title=f"reproduce {target} ({sc} scale, {' + '.join(protocols)} protocol) → {res}")
        for c in ("preset", "protocol", "runs", "to train"):
            t.add_column(c)
        for p, proto, extra, n, m in plan:
            t.add_row(p, proto + (f" ({' '.join(extra)})" if extra else ""), str(n), str(m))
        out.print(t)
        if dry_run:
            return
        check_data(list(dict.fromkeys(p for p, _, _, _, m in plan if m)), ov, res)
        failures: list[dict] = []
        trained = 0
        for p, proto, extra, n, m in plan:
            if not m:
                continue
            out.print(f"[bold]training[/] {m} run(s) of preset {p} ({proto} protocol{' ' + ' '.join(extra) if extra else ''}) …",
                      highlight=False)
            t1 = time.time()
            records = sw.launch([f"experiment={p}", *ov, *extra, f"results_dir={res}"], quiet=quiet)
            trained += sum(r.get("status") in ("done", "diverged") for r in records)
            bad = [r for r in records if r.get("status") in sw.FAILED]
            failures += bad
            out.print(f"  {p}: {len(records)} job(s) in {time.time() - t1:.0f} s"
                      + (f", [red]{len(bad)} failed[/]" if bad else ""), highlight=False)
            sw.report_failures(records)
        names = [s.name for s in specs]
        done, missing = plot_figures(names, res, out_dir, sc, ov, skip_missing=True)
        if target.strip().lower() in ("main", "all"):
            run_verify(names, res, out_dir, sc, ov)
        out.print(f"reproduce {target}: {trained} run(s) trained, {len(done)} figure(s) in {out_dir}, "
                  f"{time.time() - t0:.0f} s", highlight=False, soft_wrap=True)
        if failures or missing:
            raise typer.Exit(1)

    @app.command(context_settings=EXTRA)
    @guarded
    def verify(target: Optional[str] = typer.Argument("all", help="figN (comma lists ok), main or all"),
               overrides: Optional[list[str]] = typer.Argument(None, help="scale=quick|paper, protocol=both|paper|tuned "
                                                               "(default both) and Hydra overrides the runs were trained with"),
               results: Optional[Path] = typer.Option(None, "--results", help="Results directory (default: results)."),
               out_dir: Optional[Path] = typer.Option(None, "--out", help="Where claims.md goes (default: figures; "
                                                      "with --results DIR: DIR/figures)."),
               scale: Optional[str] = typer.Option(None, "--scale", help="quick | paper (default: quick)"),
               strict: bool = typer.Option(False, "--strict", help="Exit 1 unless every paper-protocol claim HOLDS."),
               allow_partial: bool = typer.Option(False, "--allow-partial", help=PARTIAL_HELP)) -> None:
        """Judge the paper's claims under the paper's and the tuned rates: per-seed margins, mean ± 95 % t-interval,
        SESOI, p and Holm-adjusted p → HOLDS / REVERSED / NEGLIGIBLE / INCONCLUSIVE / INSUFFICIENT / MISSING.

        Writes the table to <out>/claims.md too. Example: [bold]revgn verify main --results results[/] ·
        [bold]revgn verify fig2 protocol=paper[/]
        """
        from revgn_cli.figures.catalog import select

        protocols, overrides = pop_protocol(overrides, "both")
        sc, ov, res = split_args(overrides, scale, results)
        names = [s.name for s in select(target or "all")]
        out_dir = output_folder(out_dir, res, results, overrides, need_runs=target or "all")
        outcomes = run_verify(names, res, out_dir, sc, ov, allow_partial=allow_partial, protocols=protocols)
        if strict and any(o.status != "HOLDS" for o in outcomes if o.protocol == "paper"):
            raise typer.Exit(1)
