"""The paper's NTK similarity: a random-probe sketch of the feature-space NTK (the official code's definition).

The kernel is that of the network output X_L ∈ ℝ^{n×d} *before* the fixed read-out U (not of the logits): with
J_t = ∂vec(X_L)/∂θ at θ_t on a probe set of n training inputs, K_t = J_t J_tᵀ ∈ ℝ^{nd×nd} is never formed. For a
probe u ∈ ℝ^{n×d}:

    v = J_tᵀ u          (one VJP, ``torch.func.vjp``)        ∈ ℝ^{|θ|}
    K_t u = J_t v       (one JVP, ``torch.func.jvp``)        ∈ ℝ^{n×d}

The official code compares K_0 ū and K_t ū for one probe. With P independent standard Gaussian probes u_i,
``hutchinson_alignment`` estimates the kernel alignment ⟨K_0, K_t⟩_F / (‖K_0‖_F ‖K_t‖_F) by Hutchinson's trace
estimator (E uᵀAu = tr A): Σ⟨K_0u_i, K_tu_i⟩ / √(Σ‖K_0u_i‖² · Σ‖K_tu_i‖²) (``ntk_feat_sim_init``); with P = 1 it is
the official single-probe cosine.

Cost per probe: one forward + one backward + one forward-mode pass over the probe set, like a training step on n
samples, instead of the n²d² entries of the dense kernel. ``dense_feature_ntk`` is the explicit reference for tests.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp

__all__ = ["feature_probe", "feature_probes", "feature_ntk_apply", "hutchinson_alignment", "dense_feature_ntk"]


def feature_probe(shape: tuple[int, int], *, seed: int, draws: int = 1, device: torch.device | str,
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


def feature_probes(shape: tuple[int, int], n_probes: int, *, seed: int, device: torch.device | str,
                   dtype: torch.dtype) -> Tensor:
    """[P, n, d]: P independent standard Gaussian probes, probe i from a host generator seeded with ``seed + i``
    (so the first i probes do not depend on P, and every device gets the same probes)."""
    if n_probes < 1:
        raise ValueError(f"n_probes must be >= 1, got {n_probes}")
    return torch.stack([feature_probe(shape, seed=seed + i, device=device, dtype=dtype) for i in range(n_probes)])


def hutchinson_alignment(ka: Tensor, kb: Tensor) -> tuple[float, float]:
    """(alignment, spread) of two kernels from their products with the same P probes.

    Args:
        ka, kb: [P, ...] — K_a u_i and K_b u_i for probes u_1..u_P (``feature_ntk_apply`` per probe).
    Returns:
        alignment = Σ⟨K_a u_i, K_b u_i⟩ / √(Σ‖K_a u_i‖² Σ‖K_b u_i‖²), the estimate of ⟨K_a, K_b⟩_F/(‖K_a‖‖K_b‖);
        spread = the sample standard deviation (ddof 1) of the P per-probe cosines cos(K_a u_i, K_b u_i) (NaN for
        P = 1). Both in float64; NaN when a kernel product is zero.
    """
    a, b = ka.reshape(ka.shape[0], -1).double(), kb.reshape(kb.shape[0], -1).double()
    if a.shape != b.shape:
        raise ValueError(f"kernel products differ in shape: {tuple(ka.shape)} vs {tuple(kb.shape)}")
    # Σ over probes of ⟨·,·⟩ and ‖·‖² is the inner product / norm of the stacked vectors.
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    align = float((a * b).sum() / (na * nb)) if na > 0 and nb > 0 else math.nan
    per = (a * b).sum(1) / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1))
    spread = float(per.std(correction=1)) if per.shape[0] > 1 else math.nan
    return align, spread


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
