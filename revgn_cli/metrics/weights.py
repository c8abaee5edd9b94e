"""Weight-space similarity to initialisation per half-layer (docs/results.md, paper appendix figure 9).

Only the weight matrix W ∈ ℝ^{(d/2)×h} of each half-layer is compared; the bias is excluded because it starts at
exactly 0 (docs/design.md), so its cosine to init is undefined and its norm ratio infinite.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["weight_cosine", "weight_norm_ratio", "half_layer_names", "initial_weights", "weight_similarity"]


def weight_cosine(w0: Tensor, w: Tensor) -> float:
    """cos(vec w0, vec w) in float64 for tensors of equal shape; NaN if either is all zeros."""
    if w0.shape != w.shape:
        raise ValueError(f"weight shapes differ: {tuple(w0.shape)} vs {tuple(w.shape)}")
    a, b = w0.detach().reshape(-1).double(), w.detach().reshape(-1).double()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return math.nan
    return float(torch.dot(a, b) / (na * nb))


def weight_norm_ratio(w0: Tensor, w: Tensor) -> float:
    """‖w‖_F / ‖w0‖_F in float64; NaN if ‖w0‖ = 0 (e.g. init_std = 0)."""
    if w0.shape != w.shape:
        raise ValueError(f"weight shapes differ: {tuple(w0.shape)} vs {tuple(w.shape)}")
    n0 = torch.linalg.vector_norm(w0.detach().double())
    if n0 == 0:
        return math.nan
    return float(torch.linalg.vector_norm(w.detach().double()) / n0)


def half_layer_names(model: nn.Module) -> list[str]:
    """["F1", "G1", "F2", "G2", …]: names of ``model.half_layers()`` with 1-based block index."""
    return [f"{'FG'[i % 2]}{i // 2 + 1}" for i in range(len(model.half_layers()))]


def initial_weights(model: nn.Module) -> list[Tensor]:
    """Detached copies of every half-layer's W (order of ``model.half_layers()``), to keep as the reference."""
    return [hl.weight.detach().clone() for hl in model.half_layers()]


def weight_similarity(model: nn.Module, w0: Sequence[Tensor]) -> dict[str, float]:
    """{"wcos_F1", "wcos_G1", …, "wnorm_ratio_F1", …}: per-half-layer W now vs ``w0`` (from ``initial_weights``)."""
    halves = model.half_layers()
    if len(w0) != len(halves):
        raise ValueError(f"{len(w0)} reference weights for {len(halves)} half-layers")
    names = half_layer_names(model)
    out = {f"wcos_{nm}": weight_cosine(w, hl.weight) for nm, w, hl in zip(names, w0, halves)}
    out.update({f"wnorm_ratio_{nm}": weight_norm_ratio(w, hl.weight) for nm, w, hl in zip(names, w0, halves)})
    return out
