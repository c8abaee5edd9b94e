"""Batch losses and the GN output residual ε_Z (docs/gn.md, Math steps 1-2).

Shapes: logits Z ∈ ℝ^{n×C}, one-hot (or any row-stochastic) targets T ∈ ℝ^{n×C}.
Both losses are means over the batch of a per-sample loss whose gradient w.r.t. z is the identity-Hessian residual:
CE → softmax(z) − t, MSE (½‖z − t‖²) → z − t. The GN step is invariant to the 1/n of the mean.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_loss", "output_residual", "LOSSES", "LOSS_HESSIANS"]

LOSSES = ("ce", "mse")
LOSS_HESSIANS = ("identity", "exact")


def _check(kind: str, loss_hessian: str = "identity") -> None:
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
    if loss_hessian not in LOSS_HESSIANS:
        raise ValueError(f"unknown loss_hessian {loss_hessian!r}; valid: {', '.join(LOSS_HESSIANS)}")


def batch_loss(logits: Tensor, t_onehot: Tensor, kind: str = "ce") -> Tensor:
    """Scalar mean over the batch: CE = −Σ_c t_c log softmax(z)_c;  MSE = ½‖z − t‖²."""
    _check(kind)
    t = t_onehot.to(logits.dtype)
    if kind == "ce":
        return -(t * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return 0.5 * (logits - t).pow(2).sum(dim=1).mean()


def output_residual(logits: Tensor, t_onehot: Tensor, kind: str = "ce", loss_hessian: str = "identity") -> Tensor:
    """ε_Z ∈ ℝ^{n×C}, the output-space GN target (the update moves Z by −ε_Z to first order).

    - CE, identity Hessian (default): p − t with p = softmax(z).
    - CE, exact Hessian: the minimum-norm H⁺(p − t) per sample, H = diag(p) − ppᵀ. For p > 0, H has null space
      span(1) and y = D⁻¹(p − t) = 1 − t/p solves Hy = p − t (since 1ᵀt = 1); removing its mean gives the
      minimum-norm solution x = mean(t/p)·1 − t/p. 1/p is evaluated as exp(−log_softmax) so large logits do not
      overflow the softmax; it is large when p_target is tiny (the true Newton step for CE is).
    - MSE: z − t (its Hessian is the identity; `exact` is the same).
    """
    _check(kind, loss_hessian)
    t = t_onehot.to(logits.dtype)
    if kind == "mse":
        return logits - t
    logp = torch.log_softmax(logits, dim=1)
    if loss_hessian == "identity":
        return logp.exp() - t
    r = torch.where(t > 0, t * torch.exp(-logp), torch.zeros_like(t))  # t/p, only on the classes t puts mass on
    return r.mean(dim=1, keepdim=True) - r
