"""What a figure is: ``FigureSpec`` (name, caption, the presets it reads per scale, its plot function).

The paper's figures (``revgn_cli.figures.registry``) and the studies' figures (``revgn_cli.studies.figures``) are
both lists of these; ``revgn_cli.figures.catalog`` looks a name up in either. This module imports neither side, so
the two can share the type without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # type names only: importing this module must not import pandas or matplotlib
    import pandas as pd
    from matplotlib.figure import Figure

    from revgn_cli.figures.plots import PlotContext

SCALES = ("quick", "paper")
QUICK_NOTE = ("quick scale: mnist5k (4,000 real MNIST training images, 1,000 test) stands in for MNIST and CIFAR-10; "
              "RevMLP with 2 blocks, h = 1024; mini-batch 256; seeds 42, 43 and 44; "
              "20 full-batch / 12 mini-batch epochs — the trends, not the paper's numbers")


@dataclass(frozen=True)
class FigureSpec:
    name: str
    title: str  # one line, the panel headline
    caption: str  # what it shows and the paper's finding
    presets: dict[str, tuple[str, ...]]  # scale → experiment presets it reads
    plot: Callable[[pd.DataFrame, PlotContext], Figure]
    main: bool = False  # a main-text figure (`revgn reproduce main`, `make demo`)
    paper: bool = True  # one of the paper's figures (titled "Fig. N"); study figures keep their name

    def presets_for(self, scale: str) -> tuple[str, ...]:
        if scale not in self.presets:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
        return self.presets[scale]

    def full_caption(self, scale: str) -> str:
        return self.caption + (f" ({QUICK_NOTE}.)" if scale == "quick" else "")


def title_of(spec: FigureSpec, scale: str) -> str:
    head = f"Fig. {spec.name[3:]}" if spec.paper else spec.name
    return f"{head} — {spec.title} ({scale} scale)"
