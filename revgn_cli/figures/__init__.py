"""The paper's figures: registry (name → caption, presets, plot function), plots, claims, CLI commands.

``revgn plot figN`` draws from finished runs (``revgn_cli.results.load_runs`` is the only reader), ``revgn
reproduce figN`` trains what is missing through the sweep machinery and then plots, ``revgn verify`` checks the
paper's claims on the results.
"""
from __future__ import annotations

import importlib
from typing import Any

# Resolved on first use (PEP 562): importing the CLI commands in this package must not import matplotlib.
_LAZY = {"MissingRunsError": "revgn_cli.figures.data", "FigureSpec": "revgn_cli.figures.spec",
         "FIGURES": "revgn_cli.figures.registry", "MAIN": "revgn_cli.figures.registry",
         **{n: "revgn_cli.figures.catalog" for n in ("get", "render", "select")}}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["FIGURES", "MAIN", "FigureSpec", "MissingRunsError", "get", "render", "select"]
