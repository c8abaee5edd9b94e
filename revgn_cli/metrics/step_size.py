"""The size of an applied update in output space, relative to the output residual (``step_size_ratio``).

For an update θ_before → θ_after on a batch x with targets T, Z = f(x; θ_before) the logits [n, C] and
ε_Z = ∂ℓ/∂Z's identity-Hessian residual (CE: softmax(Z) − T, MSE: Z − T; ``optim.losses.output_residual``):

    step_size_ratio = ‖J_Z (θ_after − θ_before)‖_F / ‖ε_Z‖_F,    J_Z = ∂vec(Z)/∂θ at the linearisation point.

J_Z Δθ is one forward-mode pass (``torch.func.jvp``) of the logits along the applied change; no Jacobian is formed.
The exact GN step with rate α moves Z by −α ε_Z to first order, so its ratio is α (when J has full row rank); a
first-order method's ratio says how far, in the same units, its step moved the outputs.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from revgn_cli.optim.losses import output_residual

__all__ = ["snapshot", "logits_jvp", "step_size_ratio"]


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """{name: detached copy} of every parameter of ``model`` (θ before an update)."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def logits_jvp(model: nn.Module, x: Tensor, point: Mapping[str, Tensor],
               delta: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(Z, J_Z·delta) of ``model(x)`` at the parameters ``point`` along ``delta`` (both {name: tensor} over
    ``named_parameters``; buffers stay the model's), by one ``torch.func.jvp``. Shapes [n, C] each."""
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def f(p: dict[str, Tensor]) -> Tensor:
        return functional_call(model, (p, buffers), (x,))

    with torch.no_grad():  # torch.func transforms ignore it; it only stops the outer autograd from taping
        z, jdz = jvp(f, (dict(point),), (dict(delta),))
    return z, jdz


def step_size_ratio(model: nn.Module, x: Tensor, t_onehot: Tensor, before: Mapping[str, Tensor], *,
                    point: Mapping[str, Tensor] | None = None, z_before: Tensor | None = None,
                    loss: str = "ce") -> Tensor:
    """‖J_Z(θ_after − θ_before)‖_F / ‖ε_Z‖_F as a 0-d tensor on the model's device (no host sync).

    Args:
        model: its current parameters are θ_after.
        x, t_onehot: the batch the update used [n, d], [n, C].
        before: ``snapshot(model)`` taken before the update.
        point: where J_Z is taken; default θ_before. (A linearised run trains f_lin(θ) = f(θ_s) + J(θ_s)(θ − θ_s):
            its J_Z is J at the anchor θ_s, and its Z is f_lin(θ_before), given as ``z_before``.)
        z_before: the logits ε_Z is computed from; default f(x; point) (= Z at θ_before by default).
    """
    after = dict(model.named_parameters())
    delta = {n: after[n].detach() - before[n] for n in before}
    z, jdz = logits_jvp(model, x, before if point is None else point, delta)
    z = z if z_before is None else z_before
    eps = output_residual(z, t_onehot.to(z.dtype), loss)
    return torch.linalg.vector_norm(jdz.double()) / torch.linalg.vector_norm(eps.double())
