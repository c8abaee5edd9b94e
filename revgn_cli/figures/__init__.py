"""The paper's figures: registry (name → caption, presets, plot function), plots, claims, CLI commands.

``revgn plot figN`` draws from finished runs (``revgn_cli.results.load_runs`` is the only reader), ``revgn
reproduce figN`` trains what is missing through the sweep machinery and then plots, ``revgn verify`` checks the
paper's claims on the results.
"""
from revgn_cli.figures.data import MissingRunsError
from revgn_cli.figures.registry import FIGURES, MAIN, FigureSpec, get, render, select

__all__ = ["FIGURES", "MAIN", "FigureSpec", "MissingRunsError", "get", "render", "select"]
