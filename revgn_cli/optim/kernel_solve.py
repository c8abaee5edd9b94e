"""The damped GGN system (G + λI) Δ = g solved exactly in function space (``optimizer.ggn_solve=kernel``).

Shapes: x ∈ ℝ^{n×d}, one-hot t ∈ ℝ^{n×C}, logits Z ∈ ℝ^{n×C}, θ = model.trainable() ∈ ℝ^p (p ≫ nC), J = ∂vec(Z)/∂θ
∈ ℝ^{nC×p} (rows sample-major), Θ = J Jᵀ ∈ ℝ^{nC×nC} the batch's logit NTK. With G = Jᵀ H J / n and g = Jᵀ r / n
(r = n·∂ℓ/∂Z: p − t for cross-entropy, H = I or the softmax Hessian blocks; curvature.py), the push-through identity

    (Jᵀ H J / n + λI) Jᵀ y = Jᵀ (H Θ / n + λI) y        ⇒        Δ = Jᵀ y,   (H Θ / n + λI) y = r / n,

turns the p-dimensional system CG iterates on into an nC × nC one (2,560 unknowns at batch 256 against 1.6 M
parameters at the quick size): Θ from the RevMLP's structured NTK (metrics/ntk.py: one forward, C backward passes and
one batched Gram product), the small system by a float64 LU solve, and Δ by one VJP. Δ is the point CG converges to
(CG from zero stays in range(Jᵀ) + span(g) = range(Jᵀ)), with no tolerance: the solve's own residual in parameter
space, ‖(G + λI)Δ − g‖/‖g‖, costs one more GGN product and is returned to log.

Cost: Θ is O(L·(nC)²·d/2) (the (nC)² Gram of the per-sample output gradients, per half-layer) plus C backward
passes; the solve (nC)³. At the quick size that is about as much as ten CG products, against the 100–200 products CG
takes to reach ‖r‖ ≤ 10⁻³‖g‖ at λ = 10⁻³. Memory: O(L·(nC)²) for Θ and its per-half-layer terms.
λ = 0 takes the pseudoinverse of the small matrix: with H = I and Θ invertible, Δ = Jᵀ Θ⁻¹ r = J⁺ r, the minimum-norm
solution of J Δ = r (the limit tests/test_damped.py checks GGN-CG against).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from revgn_cli.metrics.ntk import empirical_ntk
from revgn_cli.models.revmlp import RevMLP
from revgn_cli.optim.curvature import apply_loss_hessian, flat, ggn_product, logits_function, loss_hessian_probs
from revgn_cli.optim.losses import batch_loss

__all__ = ["KernelSolve", "ggn_kernel_solve"]


@dataclass
class KernelSolve:
    delta: Tensor  # Δ ∈ ℝ^p (flat, model.trainable() order, the parameters' dtype)
    loss: Tensor  # the mean batch loss at θ (scalar, detached)
    grad: Tensor  # g ∈ ℝ^p, the mean batch loss's gradient
    rel_residual: float  # ‖(G + λI)Δ − g‖ / ‖g‖ in parameter space (NaN unless asked for)
    matvec: Callable[[Tensor], Tensor]  # v ↦ G v on the batch, from the same forward (curvature.ggn_product)


def ggn_kernel_solve(model: RevMLP, x: Tensor, t_onehot: Tensor, damping: float, *, loss: str = "ce",
                     loss_hessian: str = "identity", residual: bool = False) -> KernelSolve:
    """Δ = (G + λI)⁻¹ g for the batch (x ∈ ℝ^{n×d}, t ∈ ℝ^{n×C}), exactly, by the function-space system above.

    G, g and H as in curvature.ggn_batch_matvec (the curvature and gradient of the *mean* batch loss); λ ≥ 0.
    ``residual=True`` also measures ‖(G + λI)Δ − g‖/‖g‖ with one GGN product (one JVP and the cached VJP).
    """
    from torch.func import vjp

    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    params, primals, f = logits_function(model, x)
    with torch.enable_grad():
        z, pullback = vjp(f, *primals)
        zr = z.detach().requires_grad_()
        ell = batch_loss(zr, t_onehot, loss)
        (dz,) = torch.autograd.grad(ell, zr)  # r / n ∈ ℝ^{n×C}
    n, c = z.shape
    g = flat(pullback(dz)).detach()
    prob32 = loss_hessian_probs(z, loss, loss_hessian)
    mv = ggn_product(f, params, primals, pullback, prob32)
    prob = None if prob32 is None else prob32.double()

    theta = empirical_ntk(model, x, method="structured").double().view(n, c, n * c)
    a = apply_loss_hessian(theta, prob).reshape(n * c, n * c) / n  # H Θ / n
    b = dz.double().reshape(-1)
    if damping > 0:
        a.diagonal().add_(float(damping))
        y = torch.linalg.solve(a, b)
    else:
        # G is singular: the minimum-norm Δ (CG's limit from zero) lies in G's row space, range(Jᵀ H), so y = H w
        # with (H Θ H / n) w = r / n (r/n ∈ range(H)), w by the pseudoinverse of that symmetric PSD matrix.
        hth = apply_loss_hessian(a.T.reshape(n, c, n * c), prob).reshape(n * c, n * c)  # H (HΘ/n)ᵀ = H Θ H / n
        w = torch.linalg.pinv(0.5 * (hth + hth.T), hermitian=True) @ b
        y = apply_loss_hessian(w.view(n, c), prob).reshape(-1)
    y = y.to(z.dtype).view(n, c)
    with torch.enable_grad():
        delta = flat(pullback(y)).detach()
    rel = float("nan")
    if residual:
        rel = float((mv(delta) + damping * delta - g).norm() / g.norm()) if g.norm() > 0 else 0.0
    return KernelSolve(delta, ell.detach(), g, rel, mv)
