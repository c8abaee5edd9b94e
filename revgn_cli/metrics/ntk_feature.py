"""The paper's NTK similarity: a random-probe sketch of the feature-space NTK (the official code's definition).

The kernel is that of the network output X_L ∈ ℝ^{n×d} *before* the fixed read-out U (not of the logits): with
J_t = ∂vec(X_L)/∂θ at θ_t on a probe set of n training inputs, K_t = J_t J_tᵀ ∈ ℝ^{nd×nd} is never formed. For a
fixed probe ū ∈ ℝ^{n×d} (the mean of ``draws`` standard Gaussian draws of shape n×d, from its own seeded generator):

    v = J_tᵀ ū          (one VJP, ``torch.func.vjp``)        ∈ ℝ^{|θ|}
    K_t ū = J_t v       (one JVP, ``torch.func.jvp``)        ∈ ℝ^{n×d}
    similarity to init  = cos(K_0 ū, K_t ū)                    (``ntk_feat_sim_init``)

Cost: one forward + one backward + one forward-mode pass over the probe set, like a training step on n samples,
instead of the n²d² entries of the dense kernel. ``dense_feature_ntk`` is the explicit reference for the tests.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp

__all__ = ["feature_probe", "feature_ntk_apply", "dense_feature_ntk"]


def feature_probe(shape: tuple[int, int], *, seed: int, draws: int, device: torch.device | str,
                  dtype: torch.dtype) -> Tensor:
    """ū ∈ ℝ^{n×d}: the mean of ``draws`` independent N(0, 1) draws of ``shape``, from a host generator seeded with
    ``seed`` (the global RNG stream is untouched), then moved to ``device``: the same seed gives the same probe on
    every device, as the tracker's logit-kernel probe does.

    Drawn one n×d matrix at a time (a [draws, n, d] tensor would be ``draws``× the probe's memory), summed in float64.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    acc = torch.zeros(shape, dtype=torch.float64, device="cpu")
    for _ in range(draws):
        acc += torch.randn(shape, generator=gen, device="cpu", dtype=dtype)
    return (acc / draws).to(device=device, dtype=dtype)


class _Features(nn.Module):
    """forward = model.features, so ``functional_call`` (which swaps tensors for ``forward``) reaches X_L."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model

    def forward(self, x: Tensor) -> Tensor:
        return self.m.features(x)


def _features_of_params(model: nn.Module, x: Tensor):
    """(θ ↦ X_L(x; θ), θ_t): the trained parameters as a dict; buffers (expansions C, read-out U) stay fixed."""
    if not hasattr(model, "features"):
        raise TypeError("the feature-space NTK needs a model with .features(x) (X_L before the read-out)")
    wrap = _Features(model)
    params = {n: p.detach() for n, p in wrap.named_parameters()}
    buffers = {n: b.detach() for n, b in wrap.named_buffers()}
    return (lambda p: functional_call(wrap, (p, buffers), (x,))), params


def feature_ntk_apply(model: nn.Module, x: Tensor, u: Tensor) -> Tensor:
    """K_t ū = J_t (J_tᵀ ū) for the feature-space NTK of ``model`` at its current parameters.

    Args:
        model: exposes ``features(x)`` → X_L [n, d] (a RevMLP); its ``nn.Parameter``s are θ.
        x: probe inputs [n, d_in] on the model's device and dtype.
        u: the probe ū [n, d] (``feature_probe``).
    Returns:
        K_t ū, shape [n, d], detached, in the model's dtype. No Jacobian is formed: one VJP, then one JVP.
    """
    f, params = _features_of_params(model, x)
    with torch.no_grad():  # torch.func transforms ignore it; it only stops the outer autograd from taping
        out, pull = vjp(f, params)
        if out.shape != u.shape:
            raise ValueError(f"probe ū has shape {tuple(u.shape)}, X_L has {tuple(out.shape)}")
        (v,) = pull(u.to(out.dtype))
        _, ku = jvp(f, (params,), (v,))
    return ku.detach()


def dense_feature_ntk(model: nn.Module, x: Tensor) -> Tensor:
    """The explicit K_t = J_t J_tᵀ ∈ ℝ^{nd×nd} (row index i·d + j = sample i, feature j) — tiny models only, the
    reference for ``feature_ntk_apply``."""
    f, params = _features_of_params(model, x)
    jac = jacrev(f)(params)  # name -> [n, d, *shape]
    n, d = x.shape[0], next(iter(jac.values())).shape[1]
    J = torch.cat([j.reshape(n * d, -1) for j in jac.values()], dim=1)
    return J @ J.T
