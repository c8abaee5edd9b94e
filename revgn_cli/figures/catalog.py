"""Every figure revgn draws, by name: the paper's (``revgn_cli.figures.registry``) and the studies'
(``revgn_cli.studies.figures``), and the one call that loads a figure's runs and draws it.

Both lists are made of ``revgn_cli.figures.spec.FigureSpec`` and neither imports the other or this module: this is
the one place that knows both, so the figure and study packages never import each other in a circle.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from matplotlib.figure import Figure

from revgn_cli.figures.data import Availability, availability, load_figure_runs
from revgn_cli.figures.plots import PlotContext
from revgn_cli.figures.registry import FIGURES, MAIN
from revgn_cli.figures.spec import FigureSpec, title_of
from revgn_cli.figures.style import save
from revgn_cli.overrides import comma_list
from revgn_cli.studies.figures import study_figures


def get(name: str) -> FigureSpec:
    """``figN`` or ``N`` (a paper figure) or a study figure's name."""
    key = name.strip().lower()
    if key.isdigit():
        key = f"fig{key}"
    if key in FIGURES:
        return FIGURES[key]
    if key in study_figures():  # beyond-the-paper figures (not in all / main)
        return study_figures()[key]
    from revgn_cli.config import ConfigError

    raise ConfigError(f"unknown figure {name!r}: one of {', '.join(FIGURES)} (or all / main), "
                      f"or a study figure: {', '.join(study_figures())}")


def select(target: str) -> list[FigureSpec]:
    """``figN`` (comma lists allowed), ``main`` (the main-text figures) or ``all`` (the paper's figures)."""
    t = (target or "").strip().lower()
    if t == "all":
        return list(FIGURES.values())
    if t == "main":
        return [FIGURES[n] for n in MAIN]
    return [get(p) for p in comma_list(t)]


@dataclass
class Rendered:
    spec: FigureSpec
    figure: Figure
    paths: list[Path]
    availability: Availability


def render(name: str, results_dir: str | Path, out_dir: str | Path | None, scale: str = "quick",
           overrides: Iterable[str] = (), *, allow_partial: bool = False) -> Rendered:
    """Load the figure's runs, draw it, and (unless ``out_dir`` is None) save ``<out>/<name>.png`` and ``.pdf``.
    A figure drawn without some of its runs says which in its title."""
    spec = get(name)
    presets = spec.presets_for(scale)
    df, av = load_figure_runs(spec.name, scale, presets, results_dir, overrides, allow_partial=allow_partial)
    title = title_of(spec, scale) + ("" if av.complete else f"\nPARTIAL — {av.missing_note()}")
    fig = spec.plot(df, PlotContext(spec.name, title, scale))
    paths = save(fig, out_dir, spec.name) if out_dir is not None else []
    return Rendered(spec, fig, paths, av)


def figure_availability(spec: FigureSpec, results_dir: str | Path, scale: str,
                        overrides: Iterable[str] = ()) -> Availability:
    return availability(results_dir, spec.presets_for(scale), overrides)
