"""Regularised pseudoinverses Σ⁺ for the per-half-layer GN solves (docs/gn.md, Math step 5).

Every half-layer solve is ΔW̃ = Σ⁺ t with Σ = [φ, 1] ∈ ℝ^{n×(h+1)} (φ = σ(zC), the features) and t ∈ ℝ^{n×k}.
All strategies are *spectral filters*: with the SVD Σ = P S Qᵀ they return ΔW̃ = Σᵀ P f(S²) Pᵀ t
= Q f(S²) Qᵀ Σᵀ t, so they only differ in the f applied to the eigenvalues λ = s² of the Gram matrix (ΣΣᵀ on the
row side, ΣᵀΣ on the column side — whichever is smaller):

    none         f(λ) = 1/λ                      (λ above the machine-precision floor, else 0)
    truncation   f(λ) = 1/λ if s ≥ rtol·s_max and s ≥ atol, else 0     (paper code: rtol=1e-2, atol=1e-5)
    damping      f(λ) = 1/(λ + δ), δ = damping·s_max²                   (Σᵀ(ΣΣᵀ + δI)⁻¹, push-through form)
    noise        truncation applied to a noisy target: ΔW̃ = Σ⁺(t + σ·rms(t)·ξ), ξ ∈ ℝ^{n×k} standard Gaussian,
                 fresh per call (σ = `noise`; rtol = atol = 0 makes it the exact filter). Its function-space size
                 is bounded: ‖Σ(ΔW̃_noisy − ΔW̃)‖ = σ·rms(t)·‖ΣΣ⁺ξ‖ ≤ σ·rms(t)·‖ξ‖, as ΣΣ⁺ is a projector
                 (docs/gn.md: perturbing Σ⁺ itself instead grows with Σ's condition number).
    weight_decay truncation (the paper's main-run pseudoinverse); the decay itself lives in GaussNewton's update.

The Gram matrix squares Σ's condition number, so by default it is formed and factored in float64. `fast_gram`
lets a float32 caller *form* it in float32 (still factored in float64) when the filter throws away everything
below s < 1e-2·s_max anyway (see `gram_dtype`).

Solver paths (`solver_path`, one table): a filter that needs no eigenvectors is applied by a float64 Cholesky —
`none` (and a truncation filter at rtol = atol = 0) solves G⁻¹ when G is certified to have no eigenvalue below the
machine floor, `damping` solves (G + δI)⁻¹ with a certified λ_max — and everything else (truncation, or
`solver="eigh"`, or a Gram the Cholesky path cannot certify) takes the float64 `eigh` path: f applied to G's
eigenvalues. A failing eigh (LinAlgError or non-finite output) is retried with a float64 SVD of Σ itself and
counted in `counters["gn_solver_fallbacks"]`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, Mapping, MutableMapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Regularizer", "REGULARIZERS", "SOLVERS", "TRUNCATING", "noisy_target", "pinv_solve", "solver_path",
    "spectral_filter", "gram_dtype",
]

REGULARIZERS = ("none", "truncation", "damping", "noise", "weight_decay")
TRUNCATING = ("truncation", "weight_decay", "noise")  # the regularisers that solve with the truncation filter
SOLVERS = ("auto", "eigh")  # auto: the cheapest exact path per filter (solver_path); eigh: always float64 eigh
FALLBACK_COUNTER = "gn_solver_fallbacks"


@dataclass(frozen=True)
class Regularizer:
    """Which pseudoinverse the GN solves use, and its knobs (docs/gn.md, 'Pseudoinverses').

    name: none | truncation | damping | noise | weight_decay.
    rtol, atol: truncation thresholds on singular values (s < rtol·s_max or s < atol are dropped); also used by
        weight_decay and noise, which solve with the truncation pseudoinverse (rtol = atol = 0: the exact one).
    damping: δ relative to s_max² (δ = damping·s_max²).
    noise: σ, the scale of the Gaussian added to each solve's target, relative to the target's rms.
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
        if self.name in TRUNCATING:
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
    "truncation": _filter_truncation,
    "noise": _filter_truncation,
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


# ---------------------------------------------------------------------------------------------------------------
# Solver paths: each applies f(G) for one family of filters to a right-hand side B (t on the row side, Σᵀt on the
# column side) and returns (f(G) B, G f(G) B) in float64, or None when it cannot guarantee the float64 eigh path's
# answer; the caller then takes that path.

Solved = tuple[Tensor, Tensor]


def _solve_eigh(
    phi: Tensor, row_side: bool, rhs: Tensor, reg: Regularizer, floor: float,
    counters: MutableMapping[str, float] | None,
) -> Solved:
    """Every filter, from the float64 eigenpairs of the Gram (the reference path and the fallback of the others)."""
    lam, vec = _eigh_gram(phi, row_side, counters)  # float64
    f = spectral_filter(lam, reg, floor)
    kept = f != 0
    if not bool(kept.all()):  # only the kept eigenvectors enter the products (on MNIST ~3/4 are cut: 4× fewer flops)
        lam, f, vec = lam[kept], f[kept], vec[:, kept]
    # The factorisation is float64; applying it is done in rhs' dtype (the Gram's: float64 unless fast_gram allowed
    # float32 — an orthogonal V applied in float32 adds only ~1e-7·‖t‖ per component).
    lam, f, vec = lam.to(rhs.dtype), f.to(rhs.dtype), vec.to(rhs.dtype)
    proj = vec.T @ rhs
    sol = vec @ (f[:, None] * proj)
    gsol = vec @ ((lam * f)[:, None] * proj) if row_side else sol  # G f(G) t: no n×h product (row side only)
    return sol, gsol


def _certified_lambda_max(g: Tensor, tol: float = 1e-10, max_steps: int = 80) -> Tensor | None:
    """λ_max of a symmetric PSD float64 matrix g ∈ ℝ^{m×m} to relative accuracy 2·tol, or None.

    Lanczos with full reorthogonalisation from a fixed start gives a Ritz value θ ≤ λ_max (a Rayleigh quotient).
    A Ritz value's error is ≈ r²/gap (r = β·|y_last| its residual, gap to the next Ritz value), far below r, so the
    iteration stops when r²/gap ≤ tol·θ/10 (or r ≤ tol·θ): ~10-30 matrix-vector products on a Gram, whose top
    eigenvalue is separated (the tiny tridiagonal is solved in numpy). Those estimates need not be trusted: a
    Cholesky of θ(1 + 2·tol)·I − g then *proves* λ_max < θ(1 + 2·tol), however the iteration went; if the proof
    fails, None (the caller then uses eigh).
    """
    m = g.shape[0]
    steps = min(m, max_steps)
    q = torch.ones(m, dtype=g.dtype) + 0.1 * torch.randn(m, generator=torch.Generator().manual_seed(0), dtype=g.dtype)
    q = (q / q.norm()).to(g.device)
    basis = g.new_zeros(m, steps)
    alpha: list[float] = []
    beta: list[float] = []
    theta = 0.0
    for j in range(steps):
        basis[:, j] = q
        w = g @ q
        alpha.append(float(q @ w))
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = w - basis[:, : j + 1] @ (basis[:, : j + 1].T @ w)
        b = float(w.norm())
        tri = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        ritz, vecs = np.linalg.eigh(tri)
        theta = float(ritz[-1])
        resid = b * abs(vecs[-1, -1])
        gap = theta - float(ritz[-2]) if j > 0 else 0.0
        if resid <= tol * theta or (gap > 0 and resid * resid <= 0.1 * tol * theta * gap) or b == 0.0:
            break
        beta.append(b)
        q = w / b
    if not theta > 0:
        return None
    bound = theta * (1.0 + 2.0 * tol)
    shifted = torch.diag(g.new_full((m,), bound)) - g
    if int(torch.linalg.cholesky_ex(shifted).info) != 0:
        return None
    return g.new_tensor(theta)


def _lambda_max(g: Tensor, lanczos_from: int = 512, max_steps: int = 24) -> Tensor:
    """λ_max of a symmetric PSD float64 matrix: LAPACK's eigvalsh on small matrices (a 393×393 linear-block Gram
    with a small top gap took Lanczos 40+ Python-level steps, slower than eigvalsh), the certified Lanczos on large
    ones, and eigvalsh again when Lanczos cannot prove its value within max_steps."""
    if g.shape[0] > lanczos_from:
        lam = _certified_lambda_max(g, max_steps=max_steps)
        if lam is not None:
            return lam
    return torch.linalg.eigvalsh(g)[-1]


def _solve_cholesky(gram: Tensor, rhs: Tensor, reg: Regularizer, floor: float) -> Solved | None:
    """f(λ) = 1/λ (none, and a truncation at rtol = atol = 0): G⁻¹B by a float64 Cholesky G = LLᵀ.

    Equals the eigh path when that path keeps every eigenvalue, i.e. λ_min > floor·λ_max. Certified, not
    estimated: λ_min ≥ 1/tr(G⁻¹) = 1/‖L⁻¹‖_F² and λ_max ≤ ‖G‖_F (conservative by ≤ m and ≤ √m; measured on ReLU
    Grams, n = 1024, h = 2048: 1/tr(G⁻¹) ≈ λ_min/160). A Gram that fails either test (numerically singular, or too
    close to it to tell) returns None: the eigh path then drops its numerically-zero eigenvalues as before.
    """
    g = gram.to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(g)
    if int(info) != 0:
        return None
    linv = torch.linalg.solve_triangular(chol, torch.eye(g.shape[0], dtype=g.dtype, device=g.device), upper=False)
    tr_inv = (linv * linv).sum()
    if not (bool(torch.isfinite(tr_inv)) and float(tr_inv) * floor * float(torch.linalg.matrix_norm(g)) < 1.0):
        return None
    b = rhs.to(torch.float64)
    return torch.cholesky_solve(b, chol), b  # G·G⁻¹B = B exactly


def _solve_cholesky_damped(gram: Tensor, rhs: Tensor, reg: Regularizer, floor: float) -> Solved | None:
    """f(λ) = 1/(λ + δ), δ = damping·λ_max (damping): (G + δI)⁻¹B by a float64 Cholesky, λ_max certified or
    from LAPACK (see _lambda_max).

    G(G + δI)⁻¹ = I − δ(G + δI)⁻¹, so G f(G) B comes free. Differs from the eigh path only in the directions whose
    eigenvalue lies below the machine floor (numerically zero): eigh drops them, this path keeps them at weight
    1/(λ + δ). In ΔW̃ = Σᵀ(…)t such a direction enters with the factor s/(s² + δ) ≤ √(floor·λ_max)/δ, at most
    2·√(floor/damping) of the largest factor 1/(2√δ) (and exactly 0 for exact zeros, where Σᵀv = 0).
    """
    g = gram.to(torch.float64)
    lam_max = _lambda_max(g)
    delta = reg.damping * lam_max
    if float(delta) <= floor * float(lam_max):  # no damping above the floor: that is the exact filter
        return _solve_cholesky(gram, rhs, reg, floor)
    chol, info = torch.linalg.cholesky_ex(g + torch.diag(delta.expand(g.shape[0])))
    if int(info) != 0:
        return None
    b = rhs.to(torch.float64)
    sol = torch.cholesky_solve(b, chol)
    return sol, b - delta * sol


SolverPath = Callable[[Tensor, Tensor, Regularizer, float], "Solved | None"]  # (G, B, reg, floor) → Solved | None

_PATHS: dict[str, SolverPath] = {
    "none": _solve_cholesky,
    "damping": _solve_cholesky_damped,
    # truncation, weight_decay, noise: the float64 eigh path. Measured on mnist5k Grams (bench/gn_truncation.py,
    # docs/gn.md), no cheaper method reproduced its step to 1e-6.
}


def solver_path(reg: Regularizer, solver: str = "auto") -> SolverPath | None:
    """The fast path for reg's filter, or None for the float64 eigh path (solver="eigh", or no fast path).

    A truncation filter at rtol = atol = 0 cuts nothing above the machine floor: it is `none`'s filter and path.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
    exact = reg.name in TRUNCATING and reg.rtol == 0 and reg.atol == 0
    return None if solver == "eigh" else _PATHS.get("none" if exact else reg.name)


# ---------------------------------------------------------------------------------------------------------------


def pinv_solve(
    feats: Tensor,
    t: Tensor,
    reg: Regularizer,
    *,
    basis: Tensor | None = None,
    fast_gram: bool = False,
    solver: str = "auto",
    counters: MutableMapping[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """ΔW̃ = Σ⁺_reg t and the change it achieves, Σ ΔW̃ (for `noise`: Σ⁺_reg t̃ with t̃ = noisy_target(t)).

    Args:
        feats: φ ∈ ℝ^{n×r}. Σ = [φ B, 1] ∈ ℝ^{n×(h+1)} with B = `basis` (ℝ^{r×h}, orthonormal rows) or B = I (r = h).
            With orthonormal-row B, [φB, 1] = [φ, 1]·diag(B, 1) and diag(B,1) has orthonormal rows, so
            Σ⁺_reg = diag(B,1)ᵀ [φ, 1]⁺_reg *exactly* for every spectral filter — a linear half-layer (φ = zC of rank
            ≤ d/2) is thus solved on its (d/2+1)-dimensional side (see gn._factor_linear).
        t: targets ∈ ℝ^{n×k}.
        reg: the regulariser.
        fast_gram: allow a float32 Gram when feats is float32 and the filter truncates at ≥ 1e-2 (see gram_dtype),
            and apply the (float64) solve to φ in φ's own dtype on the row side.
        solver: "auto" (the filter's fast path, see solver_path) or "eigh" (always the float64 eigh path).
        counters: incremented in place on a solver fallback.
        generator: RNG for `noise` (default: torch's global RNG).

    Returns:
        (ΔW̃ ∈ ℝ^{(h+1)×k}, Σ ΔW̃ ∈ ℝ^{n×k}) in feats' dtype; the last row of ΔW̃ is the bias update.
    """
    if reg.name == "noise" and reg.noise > 0:
        t = noisy_target(t, reg.noise, generator)
    n, r = feats.shape
    in_dtype = feats.dtype
    form = gram_dtype(in_dtype, reg, fast_gram)
    phi, tw = feats.to(form), t.to(form)
    row_side = n <= r + 1  # the cheaper Gram: n×n or (r+1)×(r+1)
    floor = _machine_floor(max(n, (basis.shape[1] if basis is not None else r) + 1), in_dtype, form)
    rhs = tw if row_side else torch.cat([phi.T @ tw, tw.sum(dim=0, keepdim=True)], dim=0)  # t or Σᵀt
    path = solver_path(reg, solver)
    solved = path(_gram(phi, row_side), rhs, reg, floor) if path is not None else None
    if solved is None:
        solved = _solve_eigh(phi, row_side, rhs, reg, floor, counters)
    sol, gsol = solved
    if row_side:
        # With fast_gram, Σᵀ(…) is applied in the features' own dtype: float32 products add ~7e-7 relative to ΔW̃
        # (measured, exact path, n = 1024, h = 2048), below the ~9e-7 that float32 features themselves cause.
        apply = feats if fast_gram else phi
        sol = sol.to(apply.dtype)
        dw = torch.cat([apply.T @ sol, sol.sum(dim=0, keepdim=True)], dim=0)  # Σᵀ f(ΣΣᵀ) t
        achieved = gsol.to(form)  # ΣΣᵀ f(ΣΣᵀ) t
    else:
        dw = sol.to(form)  # f(ΣᵀΣ) Σᵀt
        achieved = phi @ dw[:-1] + dw[-1:]
    dw, achieved = dw.to(in_dtype), achieved.to(in_dtype)
    if basis is not None:  # back from the [φ, 1] coordinates to the [φB, 1] ones: ΔW̃ = diag(B, 1)ᵀ ΔṼ
        dw = torch.cat([basis.T @ dw[:-1], dw[-1:]], dim=0)
    return dw, achieved


def noisy_target(t: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """t̃ = t + σ·rms(t)·ξ for t ∈ ℝ^{n×k}, ξ ∈ ℝ^{n×k} standard Gaussian, in t's dtype and on t's device.

    rms(t) = ‖t‖_F/√(nk), so the noise is σ·‖t‖_F in expectation whatever the target's scale. ξ is drawn where the
    generator lives (a host generator gives the same draws on every device), then moved.
    """
    xi = torch.randn(t.shape, generator=generator, dtype=t.dtype,
                     device=t.device if generator is None else generator.device).to(t.device)
    return t + (sigma * t.square().mean().sqrt()) * xi
