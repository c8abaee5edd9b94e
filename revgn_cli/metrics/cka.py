"""Linear centred kernel alignment (CKA) between two representations of the same n inputs (docs/results.md).

Kornblith, Norouzi, Lee & Hinton 2019, "Similarity of Neural Network Representations Revisited" (ICML):
    CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)),  K = X Xᵀ, L = Y Yᵀ (linear kernels).
* linear (biased HSIC, centred Grams H K H): CKA = ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) with X, Y column-centred.
* debiased: the unbiased HSIC estimator of Song et al. 2012 ("Feature selection via dependence maximization",
  JMLR), with K̃, L̃ the Grams with zeroed diagonals:
    HSIC_u = [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n−1)(n−2)) − 2/(n−2)·1ᵀK̃L̃1] / (n(n−3)),  needs n ≥ 4.
  For column-centred features (K1 = 0) this reduces to (Kornblith et al.'s feature-space helper)
    n(n−3)·HSIC_u = ⟨K, L⟩_F − n/(n−2)·⟨diag K, diag L⟩ + tr K·tr L/((n−1)(n−2)).
Everything is accumulated in float64; ⟨K, L⟩_F = ‖YᵀX‖²_F is computed in feature space (n·p·q) or through the
n×n Grams (n²·(p+q)), whichever is cheaper.

Degenerate inputs (our choice, documented): a representation with zero total variance after centring (every row
identical, e.g. a constant feature map) has a zero centred Gram matrix and CKA is 0/0 — undefined. We return NaN
(never raise, never warn) so that a plot shows a gap instead of an invented "0 = unrelated" or "1 = identical"; the
same holds for the debiased estimator when an unbiased self-HSIC is ≤ 0 (estimator noise at tiny n). Individual
constant columns (dead ReLUs, MNIST's blank border pixels) are *not* degenerate: centring zeroes them and they
contribute nothing — there is no per-feature standardisation that could divide by zero. Too few samples for the
estimator (n < 2 linear, n < 4 debiased) is a caller error: ValueError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["linear_cka", "CKAReference", "prepare_cka", "cka_prepared"]


@dataclass(frozen=True)
class CKAReference:
    """A representation prepared once for repeated CKA (e.g. the block outputs at init).

    Fields: xc — column-centred float64 features [n, p]; degenerate — zero total variance;
    diag — row squared norms = diag(K) [n]; trace — tr K; self_lin — ⟨K, K⟩_F = ‖XᵀX‖²_F;
    gram — the centred Gram K = xc xcᵀ [n, n] when kept (see ``prepare_cka``), else None.
    """

    xc: Tensor
    degenerate: bool
    diag: Tensor
    trace: float
    self_lin: float
    gram: Tensor | None = None

    @property
    def n(self) -> int:
        return self.xc.shape[0]


def _frob_inner(a: Tensor, b: Tensor) -> float:
    """⟨A Aᵀ, B Bᵀ⟩_F = ‖Bᵀ A‖²_F for A [n, p], B [n, q], by the cheaper route."""
    n, p = a.shape
    q = b.shape[1]
    if n * p * q <= n * n * (p + q):
        return float(torch.linalg.matrix_norm(b.T @ a) ** 2)
    return float(torch.sum((a @ a.T) * (b @ b.T)))


# Largest n whose n×n float64 Gram ``prepare_cka`` keeps (8 MiB at n = 1024, 32 MiB at 2048).
GRAM_MAX_N = 2048


def prepare_cka(x: Tensor) -> CKAReference:
    """Centre x [n, p] in float64 and precompute the self terms used by ``cka_prepared``.

    When n < 2p (and n ≤ GRAM_MAX_N) the centred Gram K is kept: two such references then give ⟨K, L⟩_F by an
    elementwise product, so a representation compared with a fixed reference (the init, every epoch) costs one
    n²p Gram instead of the n·p² self term plus the n·p·q cross product of the feature route.
    """
    if x.dim() != 2:
        raise ValueError(f"CKA expects a [n, features] matrix, got shape {tuple(x.shape)}")
    x64 = x.detach().to(torch.float64)
    xc = x64 - x64.mean(dim=0, keepdim=True)
    # Centring a constant matrix leaves rounding residue ~ eps·|x|; treat anything at that level as zero variance.
    tol = torch.finfo(torch.float64).eps * max(x.shape[0], 1) * torch.linalg.vector_norm(x64)
    degenerate = bool(torch.linalg.vector_norm(xc) <= tol)
    diag = (xc * xc).sum(dim=1)
    n, p = xc.shape
    if degenerate:
        return CKAReference(xc, True, diag, float(diag.sum()), 0.0)
    if n < 2 * p and n <= GRAM_MAX_N:
        gram = xc @ xc.T
        return CKAReference(xc, False, diag, float(diag.sum()), float(torch.sum(gram * gram)), gram)
    return CKAReference(xc, False, diag, float(diag.sum()), _frob_inner(xc, xc))


def _debiased_hsic(lin: float, da: Tensor, db: Tensor, ta: float, tb: float, n: int) -> float:
    # n(n−3)·HSIC_u for centred features; the common factor cancels in CKA.
    return lin - n / (n - 2) * float(torch.dot(da, db)) + ta * tb / ((n - 1) * (n - 2))


def cka_prepared(a: CKAReference, b: CKAReference, debiased: bool = False) -> float:
    """CKA between two prepared representations of the same n inputs (see module docstring)."""
    n = a.n
    if b.n != n:
        raise ValueError(f"CKA needs the same inputs in both representations: n={n} vs n={b.n}")
    if n < (4 if debiased else 2):
        raise ValueError(f"{'debiased' if debiased else 'linear'} CKA needs n >= {4 if debiased else 2}, got {n}")
    if a.degenerate or b.degenerate:
        return math.nan
    cross = float(torch.sum(a.gram * b.gram)) if a.gram is not None and b.gram is not None else _frob_inner(a.xc, b.xc)
    if not debiased:
        return cross / math.sqrt(a.self_lin * b.self_lin)
    num = _debiased_hsic(cross, a.diag, b.diag, a.trace, b.trace, n)
    sa = _debiased_hsic(a.self_lin, a.diag, a.diag, a.trace, a.trace, n)
    sb = _debiased_hsic(b.self_lin, b.diag, b.diag, b.trace, b.trace, n)
    if sa <= 0 or sb <= 0:
        return math.nan
    return num / math.sqrt(sa * sb)


def linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> float:
    """Linear CKA between representations x [n, p] and y [n, q] of the same n inputs (rows paired).

    Args:
        debiased: use Song et al.'s unbiased HSIC (n ≥ 4) instead of the biased centred-Gram estimator.
    Returns:
        A float in [0, 1] for linear (the debiased value may fall slightly outside at small n); NaN when either
        representation has zero variance or, debiased, a non-positive self-HSIC. Invariant to isotropic scaling,
        orthogonal transforms and translation of either argument.
    """
    return cka_prepared(prepare_cka(x), prepare_cka(y), debiased=debiased)
