"""Regularised pseudoinverses Σ⁺ for the per-half-layer GN solves (DESIGN §2, step 5).

Every half-layer solve is ΔW̃ = Σ⁺ t with Σ = [φ, 1] ∈ ℝ^{n×(h+1)} (φ = σ(zC), the features) and t ∈ ℝ^{n×k}.
All strategies are *spectral filters*: with the SVD Σ = P S Qᵀ they return ΔW̃ = Σᵀ P f(S²) Pᵀ t
= Q f(S²) Qᵀ Σᵀ t, so they only differ in the f applied to the eigenvalues λ = s² of the Gram matrix (ΣΣᵀ on the
row side, ΣᵀΣ on the column side — whichever is smaller):

    none         f(λ) = 1/λ                      (λ above the machine-precision floor, else 0)
    truncation   f(λ) = 1/λ if s ≥ rtol·s_max and s ≥ atol, else 0     (paper code: rtol=1e-2, atol=1e-5)
    damping      f(λ) = 1/(λ + δ), δ = damping·s_max²                   (Σᵀ(ΣΣᵀ + δI)⁻¹, push-through form)
    noise        none, plus noise·‖Σ⁺‖_F/√numel(Σ⁺) · G t with G ∈ ℝ^{(h+1)×n} standard Gaussian, fresh per call:
                 this is *exactly* (Σ⁺ + s‖Σ⁺‖_F/√numel·G) t, i.e. perturbing Σ⁺ itself, without forming Σ⁺.
    weight_decay truncation (the paper's main-run pseudoinverse); the decay itself lives in GaussNewton's update.

The Gram matrix squares Σ's condition number, so by default it is formed and factored (eigh) in float64 and the
filter acts on its eigenvalues. `fast_gram` lets a float32 caller *form* it in float32 (still factored in
float64) when the filter throws away everything below s < 1e-2·s_max anyway (see `gram_dtype`). A failing eigh
(LinAlgError or non-finite output) is retried with a float64 SVD of Σ itself and counted in
`counters["gn_solver_fallbacks"]`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Mapping, MutableMapping

import torch
from torch import Tensor

__all__ = ["Regularizer", "REGULARIZERS", "pinv_solve", "spectral_filter", "gram_dtype"]

REGULARIZERS = ("none", "truncation", "damping", "noise", "weight_decay")
FALLBACK_COUNTER = "gn_solver_fallbacks"


@dataclass(frozen=True)
class Regularizer:
    """Which pseudoinverse the GN solves use, and its knobs (DESIGN §2 'Pseudoinverse').

    name: none | truncation | damping | noise | weight_decay.
    rtol, atol: truncation thresholds on singular values (s < rtol·s_max or s < atol are dropped); also used by
        weight_decay, which solves with the truncation pseudoinverse.
    damping: δ relative to s_max² (δ = damping·s_max²).
    noise: s, the relative scale of the Gaussian perturbation of Σ⁺.
    weight_decay: λ in θ ← θ − α(Δθ + λθ); only read by GaussNewton (and by make_optimizer for adam/sgd).
    """

    name: str = "none"
    rtol: float = 1e-2
    atol: float = 1e-5
    damping: float = 1e-3
    noise: float = 0.1
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in REGULARIZERS:
            raise ValueError(f"unknown regularizer {self.name!r}; valid names: {', '.join(REGULARIZERS)}")
        for f in fields(self)[1:]:
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"regularizer.{f.name} must be a number >= 0, got {v!r}")

    @classmethod
    def from_mapping(cls, m: Mapping | None) -> "Regularizer":
        """Build from any mapping (dict, OmegaConf DictConfig) with some of the field names; extra keys ignored."""
        if m is None:
            return cls()
        if isinstance(m, Regularizer):
            return m
        names = {f.name for f in fields(cls)}
        kw = {k: m[k] for k in m.keys() if k in names and m[k] is not None}
        if "name" in kw:
            kw["name"] = str(kw["name"])
        for k in names - {"name"}:
            if k in kw:
                kw[k] = float(kw[k])
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def relative_cutoff(self) -> float:
        """Smallest s/s_max the filter keeps at full weight (0 for filters that keep everything)."""
        if self.name in ("truncation", "weight_decay"):
            return self.rtol
        if self.name == "damping":
            return self.damping**0.5  # f(λ) is halved at λ = δ, i.e. s = √damping·s_max
        return 0.0


# ---------------------------------------------------------------------------------------------------------------
# Spectral filters: one small function each. `lam` are the Gram eigenvalues (s²), `keep` the machine-precision mask.


def _filter_exact(lam: Tensor, keep: Tensor, lam_max: Tensor, reg: Regularizer) -> Tensor:
    return torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))


def _filter_truncation(lam: Tensor, keep: Tensor, lam_max: Tensor, reg: Regularizer) -> Tensor:
    # s ≥ rtol·s_max  ⇔  λ ≥ rtol²·λ_max ;  s ≥ atol  ⇔  λ ≥ atol²  (paper code: torch.linalg.pinv(rtol, atol)).
    keep = keep & (lam >= reg.rtol**2 * lam_max) & (lam >= reg.atol**2)
    return _filter_exact(lam, keep, lam_max, reg)


def _filter_damping(lam: Tensor, keep: Tensor, lam_max: Tensor, reg: Regularizer) -> Tensor:
    # Σᵀ(ΣΣᵀ + δI)⁻¹ = V diag(1/(λ+δ)) Vᵀ on the row side; numerically-zero directions carry Σᵀv = 0 anyway.
    return torch.where(keep, 1.0 / (lam.clamp_min(0) + reg.damping * lam_max), torch.zeros_like(lam))


_FILTERS: dict[str, Callable[[Tensor, Tensor, Tensor, Regularizer], Tensor]] = {
    "none": _filter_exact,
    "noise": _filter_exact,
    "truncation": _filter_truncation,
    "weight_decay": _filter_truncation,
    "damping": _filter_damping,
}


def spectral_filter(lam: Tensor, reg: Regularizer, floor: float) -> Tensor:
    """f(λ) for Gram eigenvalues λ (any order); eigenvalues ≤ floor·λ_max are treated as exact zeros."""
    lam_max = lam.max().clamp_min(torch.finfo(lam.dtype).tiny)
    keep = lam > floor * lam_max
    return _FILTERS[reg.name](lam, keep, lam_max, reg)


# ---------------------------------------------------------------------------------------------------------------


def gram_dtype(feat_dtype: torch.dtype, reg: Regularizer, fast_gram: bool) -> torch.dtype:
    """The dtype the Gram matrix is *formed* in (it is always factored in float64).

    float64 unless the caller allows float32 (float32 features) and the filter discards s < 1e-2·s_max anyway.
    Forming ΣΣᵀ in float32 perturbs its eigenvalues by ≲ 6e-7·λ_max (measured, n = 1024, h = 2048): far below
    the cut at λ = 1e-4·λ_max of the paper's truncation (or damping ≥ 1e-4). Measured on ReLU features at that size,
    the truncated step moves by ~1e-5 relative (float32 inputs alone already cause ~1e-6), whereas factoring in
    float32 too (ssyevd) would move it by ~1e-2 — so eigh stays in float64 (docs/gn.md).
    """
    if fast_gram and feat_dtype == torch.float32 and reg.relative_cutoff >= 1e-2:
        return torch.float32
    return torch.float64


def _machine_floor(dim: int, in_dtype: torch.dtype, work_dtype: torch.dtype) -> float:
    """Relative eigenvalue floor λ/λ_max below which a Gram eigenvalue is numerically zero.

    The larger of numpy's pinv cutoff for Σ's own precision, s < dim·eps_in·s_max (i.e. λ < (dim·eps_in)²·λ_max),
    and the Gram's resolution 4·√dim·eps_work·λ_max (measured: exactly-zero eigenvalues of rank-deficient Grams
    come out ≤ 1e-15·λ_max in float64 and ≤ 4e-7·λ_max in float32 up to dim = 2049, 30-50× below this floor).
    """
    return max((dim * torch.finfo(in_dtype).eps) ** 2, 4.0 * dim**0.5 * torch.finfo(work_dtype).eps)


def _with_ones(feats: Tensor) -> Tensor:
    """Σ = [φ, 1] explicitly (only the SVD fallback needs it; the Gram path adds the ones analytically)."""
    return torch.cat([feats, feats.new_ones(feats.shape[0], 1)], dim=1)


def _gram(phi: Tensor, row_side: bool) -> Tensor:
    """ΣΣᵀ = φφᵀ + 11ᵀ (row side) or ΣᵀΣ = [[φᵀφ, φᵀ1], [1ᵀφ, n]] (column side), without forming Σ = [φ, 1]."""
    if row_side:
        return torch.addmm(phi.new_ones(()).expand(phi.shape[0], phi.shape[0]), phi, phi.T)
    col = phi.sum(dim=0, keepdim=True)
    corner = phi.new_full((1, 1), float(phi.shape[0]))
    return torch.cat([torch.cat([phi.T @ phi, col.T], dim=1), torch.cat([col, corner], dim=1)], dim=0)


def _eigh_gram(phi: Tensor, row_side: bool, counters: MutableMapping[str, float] | None) -> tuple[Tensor, Tensor]:
    """float64 eigenpairs (λ, V) of ΣΣᵀ (row side, V ∈ ℝ^{n×n}) or ΣᵀΣ (column side), Gram formed in φ's dtype.

    Falls back to a float64 SVD of Σ (λ = s², V = left/right singular vectors) if eigh fails or is non-finite.
    """
    try:
        lam, vec = torch.linalg.eigh(_gram(phi, row_side).to(torch.float64))
        if bool(torch.isfinite(lam).all()) and bool(torch.isfinite(vec[:, -1]).all()):
            return lam, vec
    except (torch.linalg.LinAlgError, RuntimeError):
        pass
    if counters is not None:
        counters[FALLBACK_COUNTER] = counters.get(FALLBACK_COUNTER, 0.0) + 1.0
    u, s, vh = torch.linalg.svd(_with_ones(phi.to(torch.float64)), full_matrices=False)
    return s * s, (u if row_side else vh.T)


def pinv_solve(
    feats: Tensor,
    t: Tensor,
    reg: Regularizer,
    *,
    basis: Tensor | None = None,
    fast_gram: bool = False,
    counters: MutableMapping[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """ΔW̃ = Σ⁺_reg t and the change it achieves, Σ ΔW̃.

    Args:
        feats: φ ∈ ℝ^{n×r}. Σ = [φ B, 1] ∈ ℝ^{n×(h+1)} with B = `basis` (ℝ^{r×h}, orthonormal rows) or B = I (r = h).
            With orthonormal-row B, [φB, 1] = [φ, 1]·diag(B, 1) and diag(B,1) has orthonormal rows, so
            Σ⁺_reg = diag(B,1)ᵀ [φ, 1]⁺_reg *exactly* for every spectral filter — a linear half-layer (φ = zC of rank
            ≤ d/2) is thus solved on its (d/2+1)-dimensional side (see gn._factor_linear).
        t: targets ∈ ℝ^{n×k}.
        reg: the regulariser.
        fast_gram: allow a float32 Gram when feats is float32 and the filter truncates at ≥ 1e-2 (see gram_dtype).
        counters: incremented in place on a solver fallback.
        generator: RNG for `noise`.

    Returns:
        (ΔW̃ ∈ ℝ^{(h+1)×k}, Σ ΔW̃ ∈ ℝ^{n×k}) in feats' dtype; the last row of ΔW̃ is the bias update.
    """
    n, r = feats.shape
    in_dtype = feats.dtype
    form = gram_dtype(in_dtype, reg, fast_gram)
    phi = feats.to(form)
    row_side = n <= r + 1  # the cheaper Gram: n×n or (r+1)×(r+1)
    lam, vec = _eigh_gram(phi, row_side, counters)  # float64
    full_dim = max(n, (basis.shape[1] if basis is not None else r) + 1)
    f = spectral_filter(lam, reg, _machine_floor(full_dim, in_dtype, form))
    kept = f != 0
    if not bool(kept.all()):  # only the kept eigenvectors enter the products (on MNIST ~3/4 are cut: 4× fewer flops)
        lam, f, vec = lam[kept], f[kept], vec[:, kept]
    # The factorisation is float64; applying it is done in the Gram's dtype (float64 unless fast_gram allowed
    # float32: an orthogonal V applied in float32 adds only ~1e-7·‖t‖ per component).
    lam, f, vec, tw = lam.to(form), f.to(form), vec.to(form), t.to(form)
    if row_side:
        proj = vec.T @ tw  # Vᵀt
        coef = vec @ (f[:, None] * proj)  # (ΣΣᵀ)⁺_f t
        dw = torch.cat([phi.T @ coef, coef.sum(dim=0, keepdim=True)], dim=0)  # Σᵀ (ΣΣᵀ)⁺_f t
        achieved = vec @ ((lam * f)[:, None] * proj)  # ΣΣᵀ(ΣΣᵀ)⁺_f t: no n×h product needed
    else:
        st = torch.cat([phi.T @ tw, tw.sum(dim=0, keepdim=True)], dim=0)  # Σᵀt
        dw = vec @ (f[:, None] * (vec.T @ st))  # (ΣᵀΣ)⁺_f Σᵀ t
        achieved = phi @ dw[:-1] + dw[-1:]
    dw, achieved = dw.to(in_dtype), achieved.to(in_dtype)
    if basis is not None:  # back from the [φ, 1] coordinates to the [φB, 1] ones: ΔW̃ = diag(B, 1)ᵀ ΔṼ
        dw = torch.cat([basis.T @ dw[:-1], dw[-1:]], dim=0)
    if reg.name == "noise" and reg.noise > 0:
        dw, achieved = _add_noise(dw, achieved, feats, t, basis, lam, f, reg, generator)
    return dw, achieved


def _add_noise(
    dw: Tensor, achieved: Tensor, feats: Tensor, t: Tensor, basis: Tensor | None, lam: Tensor, f: Tensor,
    reg: Regularizer, generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """(Σ⁺ + c·G) t with c = noise·‖Σ⁺‖_F/√numel(Σ⁺), G ∈ ℝ^{(h+1)×n} ~ N(0, 1) fresh: we add c·(G t).

    ‖Σ⁺‖_F² = Σ_kept 1/λ (the exact pseudoinverse's singular values are 1/s).
    """
    n = t.shape[0]
    rows = dw.shape[0]  # h + 1
    c = reg.noise * torch.sqrt(f.sum().to(torch.float64)) / (rows * n) ** 0.5
    # Drawn where the generator lives (a host generator gives the same draws on every device), then moved.
    g = torch.randn(rows, n, generator=generator, dtype=t.dtype,
                    device=t.device if generator is None else generator.device).to(t.device)
    extra = (g @ t) * c.to(t.dtype)
    inner = extra[:-1] if basis is None else basis @ extra[:-1]  # diag(B,1)·extra in the [φ, 1] coordinates
    return dw + extra, achieved + feats @ inner + extra[-1:]
