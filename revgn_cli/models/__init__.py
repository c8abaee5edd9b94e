"""Models: the reversible MLP (docs/design.md)."""
from revgn_cli.models.revmlp import CouplingBlock, HalfLayer, RevMLP

__all__ = ["RevMLP", "CouplingBlock", "HalfLayer"]
