"""Models: the reversible MLP of DESIGN §1."""
from revgn_cli.models.revmlp import CouplingBlock, HalfLayer, RevMLP

__all__ = ["RevMLP", "CouplingBlock", "HalfLayer"]
