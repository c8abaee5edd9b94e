"""Reference GN direction from the full feature Jacobian (docs/gn.md, 'Math'). Small nets only.

Δθ = J_X⁺ ε with J_X = ∂vec(X_L)/∂θ ∈ ℝ^{(n·d)×|θ|} (torch.func.jacrev) and ε = ε_Z Uᵀ, solved in float64 as the
minimum-norm least-squares solution. This is the features' Jacobian, not the logits': J_Z⁺ ε_Z is a different,
smaller vector that may move X_L freely orthogonally to U's columns. Memory: n·d·|θ| numbers.
"""
from __future__ import annotations

import torch
from torch import Tensor

from revgn_cli.models.revmlp import RevMLP
from revgn_cli.optim.losses import output_residual

__all__ = ["gn_naive", "feature_jacobian"]


class _Features(torch.nn.Module):
    """Wraps a RevMLP so that torch.func.functional_call runs `features` instead of `forward`."""

    def __init__(self, model: RevMLP):
        super().__init__()
        self.m = model

    def forward(self, x: Tensor) -> Tensor:
        return self.m.features(x)


def feature_jacobian(model: RevMLP, x: Tensor) -> Tensor:
    """J_X ∈ ℝ^{(n·d)×|θ|}, columns in model.trainable() order (each tensor flattened row-major)."""
    wrapper = _Features(model)
    names = {id(p): k for k, p in wrapper.named_parameters()}
    params = {names[id(p)]: p.detach() for p in model.trainable()}

    def features(p: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(wrapper, p, (x,), strict=False).reshape(-1)

    jac = torch.func.jacrev(features)(params)
    return torch.cat([jac[k].reshape(jac[k].shape[0], -1) for k in params], dim=1)


def gn_naive(
    model: RevMLP, x: Tensor, t_onehot: Tensor, *, loss: str = "ce", loss_hessian: str = "identity"
) -> list[Tensor]:
    """Minimum-norm Δθ = J_X⁺ ε (float64), split into model.trainable()'s shapes; the update is θ ← θ − α·Δθ."""
    ref = model.readout
    x = x.to(device=ref.device, dtype=ref.dtype)
    t_onehot = t_onehot.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        logits = model(x)
        eps = output_residual(logits, t_onehot, loss, loss_hessian) @ ref.T
    jac = feature_jacobian(model, x).to(torch.float64)
    rhs = eps.reshape(-1, 1).to(torch.float64)
    if jac.device.type == "cpu":
        sol = torch.linalg.lstsq(jac, rhs, driver="gelsd").solution  # SVD-based: minimum norm, rank-revealing
    else:
        sol = torch.linalg.pinv(jac) @ rhs
    out, i = [], 0
    for p in model.trainable():
        out.append(sol[i : i + p.numel(), 0].reshape(p.shape).to(p.dtype))
        i += p.numel()
    return out
