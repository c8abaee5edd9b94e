"""Curvature operators of a RevMLP batch from curvlinops (GGN mat-vecs, K-FAC), scaled like revgn's GN.

Shapes: x ∈ ℝ^{n×d}, one-hot t ∈ ℝ^{n×C}, logits Z = f(x; θ) ∈ ℝ^{n×C}; θ = model.trainable() (W, b of every
half-layer — the fixed expansion C and the read-out U are buffers, never differentiated). Every operator here is

    G = (1/n) Σ_i J_iᵀ H_i J_i,   J_i = ∂z_i/∂θ ∈ ℝ^{C×|θ|},

the curvature of the *mean* batch loss, so that it pairs with the mean-loss gradient g = (1/n) Σ_i J_iᵀ ∇_z ℓ_i:
H_i = I for ``loss_hessian="identity"`` (the Gauss-Newton of revgn's GN, which inverts the identity-Hessian residual
ε_Z = p − t) and H_i = diag(p_i) − p_i p_iᵀ for ``"exact"`` (the softmax Hessian: the usual GGN). MSE's Hessian is the
identity either way.

K-FAC needs nn.Linear layers to hook: a RevMLP half-layer computes σ(zC) Wᵀ + b with bare parameters, so
``KFACView`` replays the network with one nn.Linear per half-layer that *shares* W and b (the same Parameter
objects). K-FAC then sees each half-layer's input Σ = [σ(zC), 1] (the joint weight-and-bias block, docs/design.md) and
the gradient at its output: per half-layer, G ≈ A ⊗ B with A = ΣᵀΣ/n and B = (1/n) Σ_i J_{o,i}ᵀ H_i J_{o,i}.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from revgn_cli.models.revmlp import HalfLayer, RevMLP

__all__ = ["IdentityHessianLoss", "ggn_operator", "kfac_operator", "KFACView", "flat", "unflat", "ggn_matvec",
           "ggn_batch_matvec", "ggn_product", "loss_hessian_probs", "LINEARIZE_AFTER", "logits_function",
           "apply_loss_hessian"]


class IdentityHessianLoss(nn.Module):
    """c(z, ·) = ½ mean_i ‖z_i‖²: per sample its Hessian in z is the identity (curvlinops reads ``reduction``)."""

    reduction = "mean"

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return 0.5 * z.pow(2).sum(dim=1).mean()


def _labels(t_onehot: Tensor) -> Tensor:
    return t_onehot.argmax(dim=1)


def ggn_operator(model: RevMLP, x: Tensor, t_onehot: Tensor, *, loss: str = "ce", loss_hessian: str = "identity"):
    """curvlinops' GGNLinearOperator for G above on the batch (x, t), over model.trainable()."""
    from curvlinops import GGNLinearOperator

    exact_ce = loss == "ce" and loss_hessian == "exact"
    loss_func = nn.CrossEntropyLoss() if exact_ce else IdentityHessianLoss()
    y = _labels(t_onehot) if exact_ce else t_onehot
    return GGNLinearOperator(model, loss_func, model.trainable(), [(x, y)], check_deterministic=False,
                             num_data=x.shape[0])


def flat(ts: list[Tensor]) -> Tensor:
    """[tensors] → one vector (row-major, in order)."""
    return torch.cat([t.reshape(-1) for t in ts])


def unflat(v: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Inverse of ``flat`` for tensors shaped like ``like``."""
    out, i = [], 0
    for p in like:
        out.append(v[i : i + p.numel()].view_as(p))
        i += p.numel()
    return out


def ggn_matvec(op, params: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """v ↦ G v on flat vectors, for a curvlinops operator over ``params``."""

    def mv(v: Tensor) -> Tensor:
        return flat(op @ unflat(v, params))

    return mv


def logits_function(model: RevMLP, x: Tensor) -> tuple[list[Tensor], tuple[Tensor, ...], Callable[..., Tensor]]:
    """(θ = model.trainable(), θ detached, f) with f(*θ) = the logits Z ∈ ℝ^{n×C} of the batch x ∈ ℝ^{n×d}: the
    function torch.func differentiates for the GGN products here and the kernel solve (optim/kernel_solve.py)."""
    from torch.func import functional_call

    params = model.trainable()
    names = {id(p): k for k, p in model.named_parameters()}
    keys = [names[id(p)] for p in params]

    def f(*ps: Tensor) -> Tensor:
        return functional_call(model, dict(zip(keys, ps)), (x,), strict=False)

    return params, tuple(p.detach() for p in params), f


def apply_loss_hessian(u: Tensor, prob: Tensor | None) -> Tensor:
    """H_i u_i per sample i for u ∈ ℝ^{n×C×…}: u itself when ``prob`` is None (H = I), else
    (diag(p_i) − p_i p_iᵀ) u_i with p = ``prob`` ∈ ℝ^{n×C} (the softmax Hessian of cross-entropy)."""
    if prob is None:
        return u
    p = prob.reshape(prob.shape + (1,) * (u.dim() - 2))
    return p * u - p * (p * u).sum(dim=1, keepdim=True)


def ggn_batch_matvec(model: RevMLP, x: Tensor, t_onehot: Tensor, *, loss: str = "ce", loss_hessian: str = "identity",
                     linearize_after: int | None = None) -> Callable[[Tensor], Tensor]:
    """v ↦ G v on flat vectors ∈ ℝ^|θ| for the batch (x ∈ ℝ^{n×d}, t ∈ ℝ^{n×C}), G as in the module docstring.

    The same products as ``ggn_matvec(ggn_operator(...))`` (tests/test_damped.py checks both against a dense
    float64 JᵀHJ), written with torch.func because CG takes tens to hundreds of products on one batch: the forward
    pass and its VJP graph are built once per batch (``torch.func.vjp``), and each product is one JVP (J v),
    H/n applied to the n×C result, and the cached VJP (Jᵀ u). curvlinops' GGN product evaluates the forward twice per
    product (its JVP and its VJP each run the network); bench/ggn_matvec.py times the two side by side.

    The JVP is linearised (``torch.func.linearize``: traced once with the forward's values folded in as constants,
    so each later J v runs the tangent computations only, not the forward again) once the closure has been asked
    for ``linearize_after`` products (default ``LINEARIZE_AFTER``; 0: from the first; negative: never). Tracing
    costs about four JVPs at the quick size, so a solve that stops within a few products (K-FAC's step rescaling takes one or two) never pays it, and a long CG solve gets
    the faster product for all but its first few (bench/ggn_matvec.py times the three products side by side).
    Memory: the cached graph holds the forward's activations (about one backward's worth) until the closure is freed,
    and the linearised JVP holds about as much again.
    """
    from torch.func import vjp

    params, primals, f = logits_function(model, x)
    with torch.enable_grad():
        z, pullback = vjp(f, *primals)
    return ggn_product(f, params, primals, pullback, loss_hessian_probs(z, loss, loss_hessian),
                       linearize_after=linearize_after)


def loss_hessian_probs(z: Tensor, loss: str, loss_hessian: str) -> Tensor | None:
    """softmax(Z) ∈ ℝ^{n×C} (detached) when H is the softmax Hessian (cross-entropy with ``loss_hessian="exact"``),
    else None (H = I: the identity-Hessian GN, and MSE's Hessian whichever is asked for)."""
    return z.detach().softmax(dim=1) if loss == "ce" and loss_hessian == "exact" else None


def ggn_product(f: Callable[..., Tensor], params: list[Tensor], primals: tuple[Tensor, ...], pullback,
                prob: Tensor | None, *, linearize_after: int | None = None) -> Callable[[Tensor], Tensor]:
    """v ↦ G v = Jᵀ H J v / n on flat vectors, from a batch's ``logits_function`` (f, params, primals), the VJP
    ``pullback`` of f at the primals and ``loss_hessian_probs`` (n = prob's / the logits' rows): the product of
    ``ggn_batch_matvec``, for a caller that already holds the forward's VJP (optim/kernel_solve.py)."""
    from torch.func import jvp

    after = LINEARIZE_AFTER if linearize_after is None else int(linearize_after)
    linear: list[Callable[..., Tensor]] = []  # the linearised JVP, once traced
    asked = [0]

    def mv(v: Tensor) -> Tensor:
        tangents = tuple(unflat(v, params))
        with torch.enable_grad():
            if not linear and 0 <= after <= asked[0]:
                linear.append(_linearized_jvp(f, primals))
            asked[0] += 1
            jv = linear[0](*tangents) if linear else jvp(f, primals, tangents)[1]
            return flat(pullback(apply_loss_hessian(jv, prob) / jv.shape[0])).detach()

    return mv


# GGN products on one batch after which its JVP is linearised. Measured on the quick model (batch 256, h 1024,
# 2-core CPU, float32): tracing costs ~0.21 s, about four plain JVPs, and each linearised J v saves about half a JVP,
# so tracing pays for itself after ~8 products; waiting for 8 bounds the loss on short solves at about that much.
LINEARIZE_AFTER = 8


def _linearized_jvp(f: Callable[..., Tensor], primals: tuple[Tensor, ...]) -> Callable[..., Tensor]:
    """torch.func.linearize(f, *primals)'s JVP function (v₁, …, v_k) ↦ J v, its trace's const-folding notice muted."""
    import warnings

    from torch.func import linearize

    with warnings.catch_warnings():
        # const_fold warns that it inserts get_attr nodes for the folded constants; they are attached right after.
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        return linearize(f, *primals)[1]


class _SharedLinear(nn.Linear):
    """nn.Linear(h, w) whose weight and bias ARE a half-layer's W ∈ ℝ^{w×h} and b (no copy)."""

    def __init__(self, hl: HalfLayer):
        nn.Module.__init__(self)
        self.in_features, self.out_features = hl.weight.shape[1], hl.weight.shape[0]
        self.weight, self.bias = hl.weight, hl.bias


class KFACView(nn.Module):
    """The RevMLP's forward with each half-layer written as ``linear(σ(zC))`` for K-FAC's hooks (same function, same
    parameter objects; the expansion C and the read-out U are read from the model, untrained)."""

    def __init__(self, model: RevMLP):
        super().__init__()
        self._model = [model]  # not a submodule: only the shared linears carry parameters
        self.linears = nn.ModuleList(_SharedLinear(hl) for hl in model.half_layers())

    def forward(self, x: Tensor) -> Tensor:
        m = self._model[0]
        lins = iter(self.linears)
        for blk in m.blocks:
            w = blk.half
            a, b = x[:, :w], x[:, w:]
            y1 = a + next(lins)(blk.F.sigma(b))
            x = torch.cat([y1, b + next(lins)(blk.G.sigma(y1))], dim=1)
        return m.logits(x)


def kfac_operator(view: KFACView, params: list[Tensor], x: Tensor, t_onehot: Tensor, *, loss: str = "ce",
                  loss_hessian: str = "identity"):
    """(curvlinops' KFACLinearOperator K with exact-GGN (type-2) factors on the batch, scale s) with G ≈ s·K.

    The identity Hessian is K-FAC's MSE curvature: with reduction "sum" its per-sample Hessian is 2I and the factor
    B sums over the batch, so K = 2n·G and s = 1/(2n). Cross-entropy with the mean reduction is G itself (s = 1).
    """
    from curvlinops import KFACLinearOperator

    exact_ce = loss == "ce" and loss_hessian == "exact"
    n = x.shape[0]
    if exact_ce:
        loss_func, y, scale = nn.CrossEntropyLoss(), _labels(t_onehot), 1.0
    else:
        loss_func, y, scale = nn.MSELoss(reduction="sum"), t_onehot, 1.0 / (2.0 * n)
    op = KFACLinearOperator(view, loss_func, params, [(x, y)], check_deterministic=False, fisher_type="type-2",
                            separate_weight_and_bias=False, num_data=n)
    return op, scale
