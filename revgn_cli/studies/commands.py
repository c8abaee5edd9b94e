"""``revgn study list | run | spawn`` (registered on the main Typer app by ``revgn_cli.cli``)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.table import Table

# Piped output (files, CI logs, tests) gets a wide console so tables are not squeezed to 80 columns.
from revgn_cli.console import out  # noqa: E402
from revgn_cli.overrides import comma_list  # noqa: E402
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
DEFAULT_OUT = Path("figures")
DEFAULT_BUDGET = "4h"  # scaling: --budget
DEFAULT_MARGINS = Path("docs/data/scaling_margins.csv")  # scaling: --margins


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def print_frame(df, title: str) -> None:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(str(c), justify="right")
    for row in df.itertuples(index=False):
        t.add_row(*[_fmt(v) for v in row])
    out.print(t)


def _has_experiment(overrides: list[str]) -> bool:
    from revgn_cli.overrides import preset_of

    return preset_of(overrides) is not None


def register(app: typer.Typer, *, guarded: Callable, state: dict[str, Any]) -> None:
    study = typer.Typer(no_args_is_help=True, help="Beyond-the-paper studies: iterative linearisation, data-dependent "
                        "NTK, parent/child error barriers, kernel dynamics (docs/studies.md).")
    app.add_typer(study, name="study")

    def reporter_factory() -> Callable[[], Any]:
        if state.get("quiet"):
            return lambda: None
        from revgn_cli.progress import RichReporter

        return RichReporter

    def render_and_summarise(name: str, results: str, out_dir: Path, scale: str, overrides: list[str]) -> None:
        from revgn_cli.figures.data import load_figure_runs
        from revgn_cli.figures.catalog import render
        from revgn_cli.studies.figures import study_figures, summary

        spec = study_figures()[name]
        r = render(name, results, out_dir, scale, overrides)
        out.print(f"{name}: {' '.join(str(p) for p in r.paths)} ({r.availability.describe()})", highlight=False)
        r.figure.clear()
        df, _ = load_figure_runs(name, scale, spec.presets_for(scale), results, overrides)
        print_frame(summary(name, df), f"{name} ({scale} scale)")

    @study.command("list")
    @guarded
    def list_() -> None:
        """The studies, the presets they train and the command that runs each."""
        from revgn_cli.studies.figures import study_figures

        t = Table(title="studies (docs/studies.md)")
        for c in ("study / figure", "what", "quick presets", "paper presets", "command"):
            t.add_column(c, overflow="fold")
        for name, spec in study_figures().items():
            t.add_row(name, spec.title, ", ".join(spec.presets_for("quick")), ", ".join(spec.presets_for("paper")),
                      f"revgn study run {name} scale=quick")
        t.add_row("scaling", "Scale study: GN vs Adam at the quick and the paper's corner, one axis at a time, tuned "
                  "rates per cell (design: conf/study/scaling.yaml)", "scaling_quick", "(cells of the design)",
                  "revgn study run scaling")
        out.print(t)

    @study.command("spawn", context_settings=EXTRA)
    @guarded
    def spawn(overrides: Optional[list[str]] = typer.Argument(None, help="Hydra overrides; default experiment=spawn_quick"),
              force: bool = typer.Option(False, "--force", help="Retrain parents and children even if finished."),
              out_dir: Path = typer.Option(DEFAULT_OUT, "--out", help="Where barrier.png / barrier.pdf go."),
              plot: bool = typer.Option(True, "--plot/--no-plot", help="Render the barrier figure at the end."),
              results: Optional[Path] = typer.Option(None, "--results", help="Results directory (default: results; "
                                                     "same as results_dir=DIR).")) -> None:
        """Parent/child spawning: parents, two children per spawn epoch, error barrier → barriers.parquet.

        Trains each parent of the preset's grid (keeping checkpoints at the spawn epochs extra.spawn.epochs), two
        children from each θ_t with different batch orders (extra.spawn.child_seeds), then writes the error barrier
        and function distance along the line between the children to results/<exp_name>/barriers.parquet.

        Example: [bold]revgn study spawn experiment=spawn_quick results_dir=/tmp/res[/] (finished runs are skipped).
        """
        from revgn_cli.studies.spawn import run_spawn_study

        from revgn_cli.overrides import pop_results

        ov, res = pop_results(overrides, results, default=None)
        ov += [f"results_dir={res}"] if res is not None else []
        if not _has_experiment(ov):
            ov.insert(0, "experiment=spawn_quick")
        t0 = time.time()
        written = run_spawn_study(ov, force=force, log=lambda s: out.print(s, highlight=False, soft_wrap=True),
                                  reporter_factory=reporter_factory())
        out.print(f"spawn study: {sum(len(d) for d in written.values())} child pair(s) in {time.time() - t0:.0f} s",
                  highlight=False)
        if plot and written:
            from revgn_cli.sweep import expand

            cfg = expand(ov)[0].cfg
            scale = cfg.scale
            rest = [o for o in ov if not o.startswith(("results_dir=", "experiment="))]
            render_and_summarise_preset("barrier", cfg.results_dir, out_dir, scale, rest, cfg.exp_name)

    def render_and_summarise_preset(name: str, results: str, out_dir: Path, scale: str, overrides: list[str],
                                    exp: str) -> None:
        from revgn_cli.studies.figures import study_figures

        if exp not in study_figures()[name].presets_for(scale):  # a custom preset: no registry entry to render
            out.print(f"(preset {exp} is not the {name} figure's {scale} preset; render with `revgn plot {name}`)")
            return
        render_and_summarise(name, results, out_dir, scale, overrides)

    @study.command("run", context_settings=EXTRA)
    @guarded
    def run(name: str = typer.Argument(..., help="linearisation_phase | data_dependent_ntk | barrier | kernel_dynamics | "
                                            "gn_family | scaling"),
            args: Optional[list[str]] = typer.Argument(None, help="scale=quick|paper, then Hydra overrides"),
            results: Optional[Path] = typer.Option(None, "--results", help="Results directory (default: results)."),
            out_dir: Path = typer.Option(DEFAULT_OUT, "--out", help="Where <name>.png / .pdf go."),
            force: bool = typer.Option(False, "--force", help="Retrain finished runs too (not for scaling)."),
            budget: str = typer.Option(DEFAULT_BUDGET, "--budget",
                                       help="scaling: wall-time budget (e.g. 4h, 90m, 3600s); over it, cells lose "
                                       "seeds (not below the design's min_seeds) before the last cells in the order "
                                       "are left for later; kept cells get seeds back first."),
            margins: Path = typer.Option(DEFAULT_MARGINS, "--margins",
                                         help="scaling: the per-seed margins CSV it rewrites after each cell."),
            cost_factor: float = typer.Option(1.0, "--cost-factor", help="scaling: multiply the cost model's "
                                              "estimate (it is calibrated on a quiet 2-core CPU)."),
            plan_only: bool = typer.Option(False, "--plan", help="scaling: print the plan and its estimate, train "
                                           "nothing."),
            redo: str = typer.Option("", "--redo", help="scaling: cells (comma list) to run again although the "
                                     "margins CSV records them finished."),
            only: str = typer.Option("", "--only", help="scaling: run only these cells (comma list) this sitting; "
                                     "the others wait, whatever the order says."),
            record: Optional[Path] = typer.Option(None, "--record", help="gn_family: the CSV that keeps each finished "
                                                  "method's setting and curves (default docs/data/gn_family_<scale>"
                                                  ".csv); a method it holds is not run again (--force: all are)."),
            methods: str = typer.Option("", "--methods", help="gn_family: train only these methods this sitting "
                                        "(comma list of the design's labels, e.g. 'GN sum,Adam'); the rest enter the "
                                        "tables only if the record holds them."),
            archive: Optional[Path] = typer.Option(None, "--archive", help="gn_family, scaling: the folder (to "
                                                   "commit) that keeps every finished run's config, meta and rows, "
                                                   "tuning runs included (default docs/data/gn_family_<scale>_runs, "
                                                   "docs/data/scaling_runs); its runs are restored into --results "
                                                   "first and not trained again."),
            ) -> None:
        """Train a study's runs at a scale (finished runs are skipped), render its figure and print its numbers.

        Example: [bold]revgn study run linearisation_phase scale=quick --results /tmp/res[/]

        [bold]revgn study run scaling[/] follows conf/study/scaling.yaml (scale= is not used): it prints the planned
        cells, runs and estimated wall time, then per cell tunes the rates, trains the missing runs and rewrites the
        margins CSV; cells the CSV records as finished are not run again (--redo CELL). The table and figure come from
        `revgn study report scaling --from <csv>`.
        """
        from revgn_cli.config import ConfigError

        # A flag of another study is refused, not ignored: `--plan` on gn_family would otherwise train for hours.
        given = {"--budget": budget != DEFAULT_BUDGET, "--margins": margins != DEFAULT_MARGINS,
                 "--cost-factor": cost_factor != 1.0, "--plan": plan_only, "--redo": bool(redo), "--only": bool(only),
                 "--record": record is not None, "--methods": bool(methods),
                 "--archive": archive is not None}
        scaling, gn_family = ("scaling",), ("gn_family",)
        owners = {"--budget": scaling, "--margins": scaling, "--cost-factor": scaling, "--plan": scaling,
                  "--redo": scaling, "--only": scaling, "--record": gn_family, "--methods": gn_family, "--archive": gn_family + scaling}
        wrong = [f for f, on in given.items() if on and name not in owners[f]]
        if wrong:
            raise ConfigError(f"{', '.join(wrong)}: not an option of study {name!r} (only of "
                              f"{', '.join(sorted({o for f in wrong for o in owners[f]}))}); nothing was run")
        if name == "scaling":
            return run_scaling(args, results, out_dir, budget, margins, cost_factor, plan_only,
                               comma_list(redo),
                               archive or Path("docs/data") / "scaling_runs",
                               comma_list(only))
        from revgn_cli import sweep as sw
        from revgn_cli.figures.commands import split_args
        from revgn_cli.studies.figures import study_figures

        specs = study_figures()
        if name not in specs:
            raise ConfigError(f"unknown study {name!r}: one of {', '.join(specs)}")
        sc, ov, res = split_args(args, None, results)
        t0 = time.time()
        presets = specs[name].presets_for(sc)
        if name == "gn_family":
            import os

            from revgn_cli.studies.gn_family import run_study

            os.nice(10)  # background-friendly: the study runs for hours beside other work
            table, failed = run_study(sc, ov, res, out_dir, force=force, quiet=bool(state.get("quiet")),
                                      log=lambda s: out.print(s, highlight=False, soft_wrap=True),
                                      record=record or Path("docs/data") / f"gn_family_{sc}.csv",
                                      methods=comma_list(methods) or None,
                                      archive=archive or Path("docs/data") / f"gn_family_{sc}_runs")
            print_frame(table[["claim", "n", "n_nonfinite", "mean", "half", "p_adj", "p_tost_adj", "verdict"]],
                        f"gn_family ({sc}): verdicts (Holm over the family)")
            out.print(f"study gn_family ({sc}): {time.time() - t0:.0f} s", highlight=False)
            if failed:
                raise typer.Exit(1)
            return
        elif name == "barrier":
            from revgn_cli.studies.spawn import run_spawn_study

            run_spawn_study([f"experiment={presets[0]}", *ov, f"results_dir={res}"], force=force,
                            log=lambda s: out.print(s, highlight=False, soft_wrap=True),
                            reporter_factory=reporter_factory())
        else:
            failed = 0
            for p in presets:
                out.print(f"[bold]preset {p}[/] …", highlight=False)
                records = sw.launch([f"experiment={p}", *ov, f"results_dir={res}"], force=force,
                                    quiet=bool(state.get("quiet")))
                failed += len(sw.report_failures(records))
            if failed:
                raise typer.Exit(1)
        render_and_summarise(name, res, out_dir, sc, ov)
        out.print(f"study {name} ({sc}): {time.time() - t0:.0f} s", highlight=False)

    def say(s: str) -> None:
        out.print(s, highlight=False, soft_wrap=True)

    def run_scaling(args: Optional[list[str]], results: Optional[Path], out_dir: Path, budget: str, margins: Path,
                    cost_factor: float, plan_only: bool, redo: list[str], archive: Path,
                    only: list[str]) -> None:
        from revgn_cli.figures.commands import split_args
        from revgn_cli.results.archive import keeper
        from revgn_cli.studies import scaling as sc
        from revgn_cli.studies.scaling_report import report

        _, ov, res = split_args(args, None, results)
        design = sc.load_design()
        # Before planning (--plan too): the plan counts the runs the results dir holds as finished.
        keep = keeper(archive, res, design.base, say)
        tuner = sc.RevgnTuner(design, res) if design.rates == "tuned" else None
        plan = sc.plan_study(design, ov, res, budget_s=parse_duration(budget), factor=cost_factor, tuner=tuner,
                             margins=margins, redo=redo, only=only)
        say(f"scale study ({design.rates} rates, results {res}, margins {margins}):")
        for line in sc.describe_plan(plan):
            say(line)
        if plan_only:
            return
        if tuner is not None and any(c.tuned for c in plan.cells):
            tuner._api()  # no tuner in this build: say so before anything trains
        t0 = time.time()
        failed = sc.run_study(design, plan, ov, res, margins, tuner=tuner, quiet=bool(state.get("quiet")), log=say,
                              keep=keep)
        if margins.exists():
            table, paths = report(margins, out_dir)
            out.print(table, highlight=False, soft_wrap=True)
            say(f"figure: {' '.join(map(str, paths))}" if paths else "figure: none yet (no finished cell on an axis)")
        say(f"study scaling: {time.time() - t0:.0f} s")
        if failed:
            raise typer.Exit(1)

    @study.command("report")
    @guarded
    def report_cmd(name: str = typer.Argument(..., help="scaling"),
                   source: Path = typer.Option(Path("docs/data/scaling_margins.csv"), "--from",
                                               help="The margins CSV `revgn study run scaling` wrote."),
                   out_dir: Path = typer.Option(Path("docs/img"), "--out", help="Where scaling.png / .pdf go."),
                   doc: Optional[Path] = typer.Option(None, "--doc", help="Also write the table into this markdown "
                                                      "file's <!-- scaling:begin/end --> block.")) -> None:
        """Redraw a study's table and figure from its saved numbers, without training.

        Example: [bold]revgn study report scaling --from docs/data/scaling_margins.csv --out docs/img --doc docs/studies.md[/]
        """
        from revgn_cli.config import ConfigError
        from revgn_cli.studies.scaling_report import report

        if name != "scaling":
            raise ConfigError(f"`revgn study report` knows the scaling study only, not {name!r}")
        table, paths = report(source, out_dir, doc)
        out.print(table, highlight=False, soft_wrap=True)
        say((f"figure: {' '.join(map(str, paths))}" if paths else "figure: none yet (no finished cell on an axis)")
            + (f"; table → {doc}" if doc else ""))


def parse_duration(text: str) -> float:
    """"4h", "90m", "3600s" or "3600" → seconds."""
    from revgn_cli.config import ConfigError

    t = text.strip().lower()
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0}.get(t[-1:], None)
    try:
        v = float(t[:-1] if unit else t) * (unit or 1.0)
    except ValueError:
        raise ConfigError(f"--budget {text!r}: give a duration like 4h, 90m or 3600s") from None
    if not (v > 0 and math.isfinite(v)):
        raise ConfigError(f"--budget {text!r} must be a positive duration")
    return v
