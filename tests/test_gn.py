"""The exact GN engine (docs/gn.md): right-inverse property, minimum norm, pseudoinverse strategies, optimisers.

Every exactness test runs in float64 with regularizer=none and every Σ of full row rank, as docs/gn.md requires.
Tests marked `kernels` (exactness, parity with gn_naive, the pseudoinverse filters, a short training run) are run
again by `make test-kernels` under the AVX2 and the MKL_CBWR=COMPATIBLE kernels: they must not depend on one CPU's
rounding.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from revgn_cli.models import RevMLP
from revgn_cli.optim import (
    GaussNewton, Regularizer, TorchStepper, batch_loss, gn_direction, gn_naive, make_optimizer, output_residual,
    pinv_solve,
)
from revgn_cli.optim import gn as gn_mod
from revgn_cli.optim.naive import feature_jacobian

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------------
# helpers


class _Features(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m.features(x)


def _jvp(model, x, delta, what="features"):
    """J Δθ by forward-mode AD through the model (torch.func), for the features X_L or the logits Z."""
    mod = _Features(model) if what == "features" else model
    names = {id(p): k for k, p in mod.named_parameters()}
    keys = [names[id(p)] for p in model.trainable()]
    params = {k: p.detach() for k, p in zip(keys, model.trainable())}
    tangents = dict(zip(keys, delta))
    return torch.func.jvp(lambda p: torch.func.functional_call(mod, p, (x,)), (params,), (tangents,))[1]


def _sigmas(model, x):
    """Every Σ = [σ(zC), 1] the solves use, from a plain forward pass (to check the full-rank precondition)."""
    out = []
    with torch.no_grad():
        for blk in model.blocks:
            w = blk.half
            a, b = x[:, :w], x[:, w:]
            y1 = a + blk.F(b)
            for hl, z in ((blk.F, b), (blk.G, y1)):
                out.append(torch.cat([hl.sigma(z), torch.ones(len(z), 1, dtype=z.dtype)], 1))
            x = torch.cat([y1, b + blk.G(y1)], 1)
    return out


def _model64(*args, **kw):
    """A RevMLP built under float64 default dtype, so that U is orthonormal to float64 precision.

    (RevMLP(...).double() would carry a float32-rounded U, orthonormal only to ~1e-7: J_Z Δθ = ε_Z then holds
    only to that precision.)
    """
    prev = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        return RevMLP(*args, **kw)
    finally:
        torch.set_default_dtype(prev)


def _problem(n, d, L, h, linear=True, seed=0, C=4, std=0.2):
    torch.manual_seed(seed)
    m = _model64(d, L, h, n_classes=C, init_std=std, first_block_linear=linear, seed=seed)
    x = torch.randn(n, d, dtype=F64)
    t = nn.functional.one_hot(torch.randint(0, C, (n,)), C).to(F64)
    return m, x, t


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


# ---------------------------------------------------------------------------------------------------------------
# right-inverse property and minimum norm


LOSSES = [("ce", "identity"), ("ce", "exact"), ("mse", "identity")]


@pytest.mark.kernels
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("linear", [True, False], ids=["linear-first", "relu"])
@pytest.mark.parametrize("loss,hess", LOSSES, ids=["ce", "ce-exactH", "mse"])
@pytest.mark.parametrize("combine", ["sum", "mean"])
def test_right_inverse_features_and_logits(L, linear, loss, hess, combine):
    """J_X Δθ = c·ε and J_Z Δθ = c·ε_Z to 1e-8 (c = L for sum, 1 for mean) when every Σ has full row rank."""
    n, d, h = 6, 12, 16  # h+1 ≥ n and d/2+1 ≥ n: every solve is exact
    m, x, t = _problem(n, d, L, h, linear=linear, seed=L)
    assert all(torch.linalg.matrix_rank(s) == n for s in _sigmas(m, x))  # the precondition
    delta = gn_direction(m, x, t, combine=combine, regularizer="none", loss=loss, loss_hessian=hess)
    assert [p.shape for p in delta] == [p.shape for p in m.trainable()]
    c = L if combine == "sum" else 1
    with torch.no_grad():
        eps_z = output_residual(m(x), t, loss, hess)
    eps = eps_z @ m.readout.T
    assert _rel(_jvp(m, x, delta, "features"), c * eps) < 1e-8
    assert _rel(_jvp(m, x, delta, "logits"), c * eps_z) < 1e-8


@pytest.mark.kernels
@pytest.mark.parametrize("L", [1, 2, 3])
def test_right_inverse_no_bottleneck(L):
    """hidden=None: Σ = [σ(z), 1] with W ∈ ℝ^{(d/2)×(d/2)} (paper Fig. 5); exact when d/2+1 ≥ n."""
    m, x, t = _problem(5, 16, L, None, linear=False, seed=10 + L)
    assert all(torch.linalg.matrix_rank(s) == 5 for s in _sigmas(m, x))
    delta = gn_direction(m, x, t, combine="mean")
    with torch.no_grad():
        eps_z = output_residual(m(x), t)
    assert _rel(_jvp(m, x, delta, "logits"), eps_z) < 1e-8


@pytest.mark.kernels
@pytest.mark.parametrize("linear", [True, False])
@pytest.mark.parametrize("h", [16, None])
def test_single_block_equals_naive_minimum_norm(linear, h):
    """L = 1: Δθ equals gn_naive's minimum-norm J_X⁺ε (the block solve is then the minimum-norm solution)."""
    m, x, t = _problem(6, 12, 1, h, linear=linear, seed=3)
    for loss, hess in LOSSES:
        ours = _flat(gn_direction(m, x, t, loss=loss, loss_hessian=hess))
        ref = _flat(gn_naive(m, x, t, loss=loss, loss_hessian=hess))
        assert _rel(ours, ref) < 1e-8, (loss, hess)


@pytest.mark.kernels
def test_naive_is_a_right_inverse_and_smaller_for_deep_nets():
    """gn_naive solves J_X Δθ = ε too; for L > 1 it is the minimum-norm solution, so ‖Δθ_naive‖ ≤ ‖Δθ_GN‖."""
    m, x, t = _problem(5, 12, 2, 16, seed=4)
    ref = gn_naive(m, x, t)
    with torch.no_grad():
        eps = output_residual(m(x), t) @ m.readout.T
    assert _rel(_jvp(m, x, ref), eps) < 1e-8
    ours = gn_direction(m, x, t, combine="mean")
    assert _flat(ref).norm() <= _flat(ours).norm() * (1 + 1e-10)
    jac = feature_jacobian(m, x)
    assert jac.shape == (5 * 12, m.n_trainable())


# ---------------------------------------------------------------------------------------------------------------
# rank-deficient Σ


@pytest.mark.kernels
def test_rank_deficient_linear_block_is_least_squares():
    """n > d/2+1 with a linear block: Σ_F = [B C, 1] has rank ≤ d/2+1 < n, so no exact solve exists.

    The step is then the minimum-norm least-squares solve of each half-layer (checked against an explicit float64
    pseudoinverse of the n×(h+1) Σ — also checking the engine's (d/2+1)-side factorisation), J_X Δθ ≠ ε, and the
    F-part of the residual is orthogonal to Σ_F's columns (normal equations).
    """
    n, d, h = 12, 8, 16  # d/2+1 = 5 < n
    m, x, t = _problem(n, d, 1, h, linear=True, seed=5)
    blk = m.blocks[0]
    assert gn_mod._factored(blk.F, n)
    sig_f, sig_g = _sigmas(m, x)
    assert torch.linalg.matrix_rank(sig_f) == d // 2 + 1 < n
    delta = gn_direction(m, x, t, regularizer="none")
    with torch.no_grad():
        eps = output_residual(m(x), t) @ m.readout.T
    t1, t2 = eps[:, :4], eps[:, 4:]
    dwf = torch.cat([delta[0].T, delta[1][None]], 0)
    dwg = torch.cat([delta[2].T, delta[3][None]], 0)
    ls_f = torch.linalg.pinv(sig_f) @ t1
    assert _rel(dwf, ls_f) < 1e-8
    assert (sig_f.T @ (sig_f @ dwf - t1)).abs().max() < 1e-10  # normal equations
    y1 = x[:, :4] + blk.F(x[:, 4:])
    m_corr = torch.func.jvp(blk.G, (y1,), (sig_f @ dwf,))[1]  # G'(y₁)·δy₁ with δy₁ = Σ_F ΔW̃_F
    assert _rel(dwg, torch.linalg.pinv(sig_g) @ (t2 - m_corr)) < 1e-8
    resid = _rel(_jvp(m, x, delta), eps)
    assert 1e-3 < resid < 1  # a least-squares step: it cannot reproduce ε
    trunc = gn_direction(m, x, t, regularizer={"name": "truncation", "rtol": 1e-2, "atol": 1e-5})
    assert all(torch.isfinite(p).all() for p in trunc)


def test_truncation_keeps_near_singular_step_finite():
    """Two nearly identical inputs with different targets: the exact pseudoinverse divides by a ~1e-6·s_max
    singular value and blows up; truncation (rtol=1e-2) drops it and keeps the step bounded.

    (Below the Gram's float64 resolution, s ≲ 6e-8·s_max, `none` itself treats s as zero: see docs/gn.md.)
    """
    m, x, t = _problem(6, 12, 1, 16, linear=False, seed=6)
    x[1] = x[0] + 1e-6 * torch.randn(12, dtype=F64)
    t[1] = t[0].roll(1)
    none = _flat(gn_direction(m, x, t, regularizer="none"))
    trunc = _flat(gn_direction(m, x, t, regularizer={"name": "truncation", "rtol": 1e-2, "atol": 1e-5}))
    assert torch.isfinite(trunc).all()
    assert none.norm() > 1e4 and trunc.norm() < 1e2, (none.norm().item(), trunc.norm().item())


# ---------------------------------------------------------------------------------------------------------------
# pseudoinverse strategies


def _full_rank_case():
    return _problem(6, 12, 2, 16, linear=False, seed=7)


def test_truncation_rtol_to_zero_equals_none():
    m, x, t = _full_rank_case()
    none = _flat(gn_direction(m, x, t, regularizer="none"))
    tr = _flat(gn_direction(m, x, t, regularizer={"name": "truncation", "rtol": 1e-14, "atol": 0.0}))
    assert _rel(tr, none) < 1e-12
    # and a real truncation changes the step
    tr2 = _flat(gn_direction(m, x, t, regularizer={"name": "truncation", "rtol": 0.5, "atol": 0.0}))
    assert _rel(tr2, none) > 1e-3


def test_damping_to_zero_equals_none_and_large_damping_is_gradient():
    m, x, t = _full_rank_case()
    none = _flat(gn_direction(m, x, t, regularizer="none"))
    small = _flat(gn_direction(m, x, t, regularizer={"name": "damping", "damping": 1e-15}))
    assert _rel(small, none) < 1e-8
    # large δ: Σᵀ(ΣΣᵀ + δI)⁻¹t → Σᵀt/δ, the gradient direction of ½‖ΣW̃ − t‖² at 0 — per half-layer
    big = gn_direction(m, x, t, regularizer={"name": "damping", "damping": 1e8}, combine="mean")
    with torch.no_grad():
        eps = output_residual(m(x), t) @ m.readout.T
    blk = m.blocks[-1]  # the last block's target is ε itself
    x_in = m.blocks[0](x)
    sig_f = _sigmas(m, x)[2]
    assert torch.allclose(sig_f[:, :-1], blk.F.sigma(x_in[:, 6:]))
    grad_f = sig_f.T @ eps[:, :6]
    step_f = torch.cat([big[4].T, big[5][None]], 0)
    cos = (step_f * grad_f).sum() / (step_f.norm() * grad_f.norm())
    assert cos > 1 - 1e-6
    # at the pinv level, for both sides of the Gram
    for n in (5, 40):
        phi, tt = torch.randn(n, 20, dtype=F64).relu(), torch.randn(n, 3, dtype=F64)
        dw, _ = pinv_solve(phi, tt, Regularizer("damping", damping=1e9))
        g = torch.cat([phi, torch.ones(n, 1, dtype=F64)], 1).T @ tt
        assert ((dw * g).sum() / (dw.norm() * g.norm())) > 1 - 1e-6


EXACT_NOISE = {"name": "noise", "rtol": 0.0, "atol": 0.0}  # the noise regulariser on the exact pseudoinverse


@pytest.mark.kernels
def test_noise_zero_equals_its_filter_and_noise_perturbs_the_step():
    """noise = 0 is bit for bit the filter it composes with (`none` at rtol = atol = 0, `truncation` at the paper's
    rtol/atol); noise > 0 changes the step, freshly per draw; and it is that filter applied to t + σ·rms(t)·ξ."""
    from revgn_cli.optim.pinv import noisy_target

    m, x, t = _full_rank_case()
    none = _flat(gn_direction(m, x, t, regularizer="none"))
    assert torch.equal(_flat(gn_direction(m, x, t, regularizer={**EXACT_NOISE, "noise": 0.0})), none)
    trunc = _flat(gn_direction(m, x, t, regularizer="truncation"))
    assert torch.equal(_flat(gn_direction(m, x, t, regularizer={"name": "noise", "noise": 0.0})), trunc)
    a = _flat(gn_direction(m, x, t, regularizer={**EXACT_NOISE, "noise": 0.1},
                           generator=torch.Generator().manual_seed(1)))
    b = _flat(gn_direction(m, x, t, regularizer={**EXACT_NOISE, "noise": 0.1},
                           generator=torch.Generator().manual_seed(2)))
    assert 1e-4 < _rel(a, none) < 1 and _rel(a, b) > 1e-4  # fresh noise per call
    # at the pinv level, against an explicit pseudoinverse applied to the noisy target (same generator, same ξ)
    n, h = 7, 12
    phi, tt = torch.randn(n, h, dtype=F64).relu(), torch.randn(n, 3, dtype=F64)
    sig = torch.cat([phi, torch.ones(n, 1, dtype=F64)], 1)
    dw, ach = pinv_solve(phi, tt, Regularizer("noise", noise=0.3, rtol=0.0, atol=0.0),
                         generator=torch.Generator().manual_seed(0))
    xi = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = torch.linalg.pinv(sig) @ (tt + 0.3 * tt.square().mean().sqrt() * xi)
    assert _rel(dw, ref) < 1e-10 and _rel(ach, sig @ ref) < 1e-10
    assert torch.equal(noisy_target(tt, 0.3, torch.Generator().manual_seed(0)),
                       tt + 0.3 * tt.square().mean().sqrt() * xi)


@pytest.mark.kernels
@pytest.mark.parametrize("reg", [EXACT_NOISE, {"name": "noise"}], ids=["exact", "truncated"])
@pytest.mark.parametrize("n", [20, 60])  # row side (n ≤ h+1) and column side (n > h+1)
def test_noise_function_space_size_is_bounded_on_ill_conditioned_sigma(reg, n):
    """κ(Σ) ~ 1e6: the noisy step moves the half-layer's output by ‖Σ(ΔW̃_noisy − ΔW̃)‖ ≤ σ·rms(t)·‖ξ‖ (ΣΣ⁺ is an
    orthogonal projector), whereas the old form (Σ⁺ + σ‖Σ⁺‖_F/√numel·G) t moved it by ≫ that: its size scales with
    ‖Σ⁺‖_F, i.e. with the smallest singular value that survives."""
    from revgn_cli.optim.pinv import noisy_target

    torch.manual_seed(n)
    h, k, sigma = 40, 3, 0.1
    r = min(n, h)
    u = torch.linalg.qr(torch.randn(n, r, dtype=F64))[0]
    v = torch.linalg.qr(torch.randn(h, r, dtype=F64))[0]
    phi = (u * torch.logspace(0, -6, r, dtype=F64)) @ v.T
    sig = torch.cat([phi, torch.ones(n, 1, dtype=F64)], 1)
    s = torch.linalg.svdvals(sig)
    assert s[0] / s[-1] > 1e5  # ill-conditioned, and of full rank (nothing below the machine floor)
    t = torch.randn(n, k, dtype=F64)
    clean, _ = pinv_solve(phi, t, Regularizer.from_mapping({**reg, "noise": 0.0}))
    noisy, _ = pinv_solve(phi, t, Regularizer.from_mapping({**reg, "noise": sigma}),
                            generator=torch.Generator().manual_seed(4))
    xi = (noisy_target(t, 1.0, torch.Generator().manual_seed(4)) - t) / t.square().mean().sqrt()
    moved = (sig @ (noisy - clean)).norm()
    bound = sigma * t.square().mean().sqrt() * xi.norm()
    # (float64 Gram solves at κ² ~ 1e12 reach ΣΣ⁺ξ to ~1e-4: on the row side, full row rank, the bound is tight)
    assert 0 < moved <= bound * (1 + 1e-3)
    # the old form with the same σ, on the exact pseudoinverse
    sp = torch.linalg.pinv(sig, rtol=1e-12)
    g = torch.randn(h + 1, n, generator=torch.Generator().manual_seed(4), dtype=F64)
    old = (sigma * sp.norm() / math.sqrt(sp.numel()) * sig @ (g @ t)).norm()
    assert old > 1e4 * bound  # measured 1.4e5 (n = 20) and 1.8e5 (n = 60)


@pytest.mark.kernels
@pytest.mark.parametrize("name", ["none", "truncation", "damping"])
@pytest.mark.parametrize("n", [6, 40])  # row side (n ≤ h+1) and column side (n > h+1)
def test_pinv_strategies_match_explicit_svd(name, n):
    """pinv_solve (Gram + eigh, either side, with or without the orthonormal-basis factorisation) equals the
    explicit SVD definition of each strategy on Σ = [φB, 1]."""
    torch.manual_seed(n)
    r, h, k = 5, 24, 3
    z = torch.randn(n, r, dtype=F64)
    c = torch.randn(r, h, dtype=F64) / h**0.5
    t = torch.randn(n, k, dtype=F64)
    sig = torch.cat([z @ c, torch.ones(n, 1, dtype=F64)], 1)
    u, s, vh = torch.linalg.svd(sig, full_matrices=False)
    reg = Regularizer(name, rtol=0.3, atol=1e-5, damping=1e-2)
    if name == "none":
        f = torch.where(s > 1e-10 * s[0], 1 / s, torch.zeros_like(s))
    elif name == "truncation":
        f = torch.where((s >= 0.3 * s[0]) & (s >= 1e-5), 1 / s, torch.zeros_like(s))
    else:
        f = torch.where(s > 1e-10 * s[0], s / (s**2 + 1e-2 * s[0] ** 2), torch.zeros_like(s))
    ref = vh.T @ (f[:, None] * (u.T @ t))
    dw, ach = pinv_solve(z @ c, t, reg)
    assert _rel(dw, ref) < 1e-9 and _rel(ach, sig @ ref) < 1e-9
    q, rr = torch.linalg.qr(c.T)  # C = Rᵀ Qᵀ: the factorised form the engine uses for linear half-layers
    dw2, ach2 = pinv_solve(z @ rr.T, t, reg, basis=q.T)
    assert _rel(dw2, ref) < 1e-9 and _rel(ach2, sig @ ref) < 1e-9


def test_solver_fallback_is_counted(monkeypatch):
    """A failing eigh is retried as a float64 SVD of Σ and counted in GaussNewton.stats (solver=eigh: with the
    default solver `none` takes the Cholesky path, which never calls eigh on these full-rank Grams)."""
    m, x, t = _full_rank_case()
    ref = _flat(gn_direction(m, x, t))
    real = torch.linalg.eigh
    calls = {"n": 0}

    def flaky(a, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.linalg.LinAlgError("simulated non-convergence")
        if calls["n"] == 3:
            return torch.full_like(a[0], float("nan")), a
        return real(a, *args, **kw)

    monkeypatch.setattr(torch.linalg, "eigh", flaky)
    opt = GaussNewton(m, lr=0.0, regularizer="none", combine="sum", solver="eigh")
    delta, _ = opt.direction(x, t)
    assert opt.stats["gn_solver_fallbacks"] == 2.0
    assert _rel(_flat(delta), ref) < 1e-9


# ---------------------------------------------------------------------------------------------------------------
# solver paths (pinv.solver_path): each fast path against the float64 eigh path


def _spy_eigh(monkeypatch):
    """Count torch.linalg.eigh calls (the eigh path factors the Gram with it; the Cholesky paths never do)."""
    calls = {"n": 0}
    real = torch.linalg.eigh

    def spy(a, *args, **kw):
        calls["n"] += 1
        return real(a, *args, **kw)

    monkeypatch.setattr(torch.linalg, "eigh", spy)
    return calls


@pytest.mark.kernels
@pytest.mark.parametrize("name", ["none", "damping", "noise"])
@pytest.mark.parametrize("n", [12, 60])  # row side (n ≤ h+1) and column side (n > h+1)
@pytest.mark.parametrize("factored", [False, True])
def test_cholesky_paths_match_eigh_on_full_rank_grams(name, n, factored, monkeypatch):
    """solver=auto (float64 Cholesky; damping with a certified λ_max) equals solver=eigh to 1e-8 on full-rank
    Grams, for ΔW̃ and ΣΔW̃, on both sides of the Gram and through the orthonormal-basis factorisation — and never
    calls eigh (the fast path really ran)."""
    torch.manual_seed(n)
    r, h, k = 24, 40, 3
    z = torch.randn(n, r, dtype=F64)
    c = torch.randn(r, h, dtype=F64) / h**0.5
    feats, basis = (z, torch.linalg.qr(c.T)[0].T) if factored else ((z @ c).relu(), None)
    t = torch.randn(n, k, dtype=F64)
    reg = Regularizer(name, damping=1e-3, noise=0.2, rtol=0.0, atol=0.0)  # noise on the exact filter
    ref = pinv_solve(feats, t, reg, basis=basis, solver="eigh", generator=torch.Generator().manual_seed(3))
    calls = _spy_eigh(monkeypatch)
    got = pinv_solve(feats, t, reg, basis=basis, solver="auto", generator=torch.Generator().manual_seed(3))
    assert calls["n"] == 0
    assert _rel(got[0], ref[0]) < 1e-8 and _rel(got[1], ref[1]) < 1e-8


@pytest.mark.kernels
@pytest.mark.parametrize("linear", [True, False], ids=["linear-first", "relu"])
@pytest.mark.parametrize("reg", ["none", {"name": "damping", "damping": 1e-4}])
def test_gn_direction_solver_auto_equals_eigh(linear, reg):
    """The whole step: solver=auto and solver=eigh agree to 1e-8 (and auto keeps J Δθ = c·ε, tested above)."""
    m, x, t = _problem(8, 12, 3, 16, linear=linear, seed=21)
    auto = _flat(gn_direction(m, x, t, regularizer=reg))
    eigh = _flat(gn_direction(m, x, t, regularizer=reg, solver="eigh"))
    assert _rel(auto, eigh) < 1e-8


@pytest.mark.parametrize("name", ["none", "noise", "damping"])
def test_cholesky_path_falls_back_to_eigh_on_rank_deficient_gram(name, monkeypatch):
    """Σ of rank 4 < n: ΣΣᵀ is singular, so `none`/`noise` (at rtol = atol = 0) must leave the Cholesky path (eigh then drops the zero
    eigenvalues) — the step is the minimum-norm least-squares one of an explicit pseudoinverse. `damping` stays on
    its Cholesky of G + δI and still equals eigh: exact zeros carry Σᵀv = 0."""
    torch.manual_seed(0)
    n, h = 20, 30
    feats = torch.randn(n, 3, dtype=F64) @ torch.randn(3, h, dtype=F64)  # rank 3; with the ones column ≤ 4
    t = torch.randn(n, 2, dtype=F64)
    sig = torch.cat([feats, torch.ones(n, 1, dtype=F64)], 1)
    assert torch.linalg.matrix_rank(sig) == 4
    reg = Regularizer(name, damping=1e-3, noise=0.0, rtol=0.0, atol=0.0)
    ref = pinv_solve(feats, t, reg, solver="eigh")
    calls = _spy_eigh(monkeypatch)
    dw, ach = pinv_solve(feats, t, reg, solver="auto")
    assert calls["n"] == (0 if name == "damping" else 1)
    assert _rel(dw, ref[0]) < 1e-8 and _rel(ach, ref[1]) < 1e-8
    if name != "damping":
        assert _rel(dw, torch.linalg.pinv(sig) @ t) < 1e-8


def test_damping_cholesky_follows_its_definition_below_the_eigh_floor():
    """float32 features, Gram formed in float32 (fast_gram, as GaussNewton does for damping ≥ 1e-4): the eigh path
    drops every eigenvalue below its machine floor (~4·√dim·eps₃₂·λ_max), though damping still weights those
    directions by s/(s² + δ); the Cholesky of G + δI keeps them. Checked against the SVD definition of the filter."""
    torch.manual_seed(2)
    n, h = 64, 128
    u = torch.linalg.qr(torch.randn(n, n, dtype=F64))[0]
    v = torch.linalg.qr(torch.randn(h, n, dtype=F64))[0]
    s = torch.logspace(0, -4, n, dtype=F64)
    feats = ((u * s) @ v.T).float()
    t = torch.randn(n, 2)
    sig = torch.cat([feats, torch.ones(n, 1)], 1).to(F64)
    uu, ss, vh = torch.linalg.svd(sig, full_matrices=False)
    delta = 1e-3 * ss[0] ** 2
    ref = vh.T @ ((ss / (ss**2 + delta))[:, None] * (uu.T @ t.to(F64)))
    reg = Regularizer("damping", damping=1e-3)
    chol = pinv_solve(feats, t, reg, fast_gram=True)[0].to(F64)
    eigh = pinv_solve(feats, t, reg, fast_gram=True, solver="eigh")[0].to(F64)
    assert _rel(chol, ref) < 1e-4 < 1e-3 < _rel(eigh, ref)


@pytest.mark.parametrize("reg", ["none", "noise", "truncation"])
def test_real_images_solver_auto_equals_eigh(reg):
    """mnist5k images (their Grams are numerically rank-deficient: blank pixels): `none`/`noise` (at rtol = atol =
    0) must notice it and hand over to eigh, so auto and eigh give the same step to 1e-8 — and truncation is the eigh
    path itself."""
    from revgn_cli.data import load_dataset

    ds = load_dataset("mnist5k")
    m = _model64(784, 2, 128, seed=0, init_std=0.05)
    x, t = ds.x_train[:96].to(F64), nn.functional.one_hot(ds.y_train[:96], 10).to(F64)
    kw = dict(regularizer={**EXACT_NOISE, "noise": 0.1} if reg == "noise" else reg, combine="mean")
    auto = _flat(gn_direction(m, x, t, solver="auto", generator=torch.Generator().manual_seed(0), **kw))
    eigh = _flat(gn_direction(m, x, t, solver="eigh", generator=torch.Generator().manual_seed(0), **kw))
    assert torch.isfinite(auto).all() and _rel(auto, eigh) < 1e-8


def test_certified_lambda_max_is_sound():
    """λ_max from Lanczos + a Cholesky certificate: 1e-9-accurate on Grams with a separated or a clustered top, and
    None (never a wrong value) when too few Lanczos steps leave θ short of λ_max."""
    from revgn_cli.optim.pinv import _certified_lambda_max

    torch.manual_seed(1)
    a = torch.randn(80, 50, dtype=F64)
    q = torch.linalg.qr(torch.randn(60, 60, dtype=F64))[0]
    clustered = q @ torch.diag(torch.cat([torch.tensor([1.0, 1 - 1e-6, 1 - 2e-6], dtype=F64),
                                          torch.rand(57, dtype=F64) * 0.9])) @ q.T
    for g in (a.relu() @ a.relu().T, a @ a.T, a.T @ a, clustered):
        lam = _certified_lambda_max(g)
        assert lam is not None and abs(lam.item() / torch.linalg.eigvalsh(g)[-1].item() - 1) < 1e-9
    assert _certified_lambda_max(clustered, max_steps=2) is None
    # what damping uses: eigvalsh below 512 rows, the certified Lanczos above, eigvalsh when Lanczos cannot prove it
    from revgn_cli.optim.pinv import _lambda_max

    big = torch.randn(600, 700, dtype=F64).relu()
    big = big @ big.T
    for g, kw in ((clustered, {}), (big, {}), (big, {"max_steps": 1})):
        assert abs(_lambda_max(g, **kw).item() / torch.linalg.eigvalsh(g)[-1].item() - 1) < 1e-9


def test_solver_option_reaches_gauss_newton():
    """optimizer.solver: make_optimizer passes it to GaussNewton (default auto from conf/optimizer/gn.yaml), the
    state round-trips, and an unknown name is refused."""
    m, x, t = _full_rank_case()
    assert make_optimizer(m, {"name": "gn"}, None).solver == "auto"
    opt = make_optimizer(m, {"name": "gn", "solver": "eigh"}, {"name": "none"})
    assert opt.solver == "eigh" and opt.state_dict()["solver"] == "eigh"
    other = GaussNewton(m, lr=1.0)
    other.load_state_dict(opt.state_dict())
    assert other.solver == "eigh"
    with pytest.raises(ValueError, match="unknown solver 'lu'"):
        GaussNewton(m, lr=1.0, solver="lu")


def test_regularizer_from_mapping():
    r = Regularizer.from_mapping({"name": "truncation", "rtol": "0.05", "extra": 1, "weight_decay": None})
    assert r == Regularizer("truncation", rtol=0.05)
    assert Regularizer.from_mapping(None) == Regularizer()
    with pytest.raises(ValueError, match="unknown regularizer 'ridge'.*truncation"):
        Regularizer.from_mapping({"name": "ridge"})
    with pytest.raises(ValueError):
        Regularizer("damping", damping=-1.0)
    with pytest.raises(ValueError, match="combine"):
        gn_direction(*_full_rank_case(), combine="median")


# ---------------------------------------------------------------------------------------------------------------
# losses


def test_losses_and_residuals():
    torch.manual_seed(0)
    z = torch.randn(7, 5, dtype=F64) * 3
    y = torch.randint(0, 5, (7,))
    t = nn.functional.one_hot(y, 5).to(F64)
    assert torch.allclose(batch_loss(z, t, "ce"), nn.functional.cross_entropy(z, y))
    assert torch.allclose(batch_loss(z, t, "mse"), 0.5 * ((z - t) ** 2).sum(1).mean())
    # identity-Hessian residuals are n × the gradient of the mean loss
    for kind in ("ce", "mse"):
        zz = z.clone().requires_grad_()
        (g,) = torch.autograd.grad(batch_loss(zz, t, kind), zz)
        assert torch.allclose(output_residual(z, t, kind), 7 * g)
    # exact CE Hessian: minimum-norm H⁺(p − t), H = diag(p) − ppᵀ, per sample: H x = p − t and x ⊥ null(H) = 1
    for scale in (1 / 3, 3.0):
        zs = z * scale
        ex = output_residual(zs, t, "ce", "exact")
        p = zs.softmax(1)
        for i in range(7):
            hess = torch.diag(p[i]) - torch.outer(p[i], p[i])
            g = p[i] - t[i]
            assert torch.allclose(hess @ ex[i], g, atol=1e-10 * max(1.0, ex[i].abs().max().item()))
            assert abs(ex[i].sum().item()) < 1e-10 * ex[i].abs().max().item()
            if scale < 1:  # well-conditioned H: compare with an explicit pseudoinverse too
                assert torch.allclose(ex[i], torch.linalg.pinv(hess, rtol=1e-10, hermitian=True) @ g, atol=1e-8)
    # stable for large logits (softmax saturates, 1/p_target = exp(90) still finite in float64)
    big = output_residual(torch.tensor([[90.0, 0.0, 0.0]], dtype=F64), torch.tensor([[0.0, 1.0, 0.0]], dtype=F64),
                          "ce", "exact")
    assert torch.isfinite(big).all() and abs(big.sum().item()) < 1e-6 * big.abs().max().item()
    with pytest.raises(ValueError):
        output_residual(z, t, "hinge")


# ---------------------------------------------------------------------------------------------------------------
# optimisation behaviour


def test_gn_step_decrease_vs_linearisation():
    """One full-batch GN step (lr = 1, mean) on a tiny net.

    First order, the loss falls at rate ∇ℓ·Δθ = ⟨ε_Z, J_Z Δθ⟩/n = ‖ε_Z‖²/n (checked by a central difference). CE is
    convex in Z, so a full step cannot beat that tangent-line prediction; we require the Armijo sufficient-decrease
    condition with c = ½: ℓ(θ) − ℓ(θ − Δθ) ≥ ½·∇ℓ·Δθ (a wrong direction or scale fails it).
    """
    m, x, t = _problem(8, 16, 2, 32, seed=8, std=1e-3)
    delta = gn_direction(m, x, t, combine="mean")
    params = [p.detach().clone() for p in m.trainable()]

    def loss_at(alpha):
        with torch.no_grad():
            for p, p0, d in zip(m.trainable(), params, delta):
                p.copy_(p0 - alpha * d)
            return batch_loss(m(x), t).item()

    l0 = loss_at(0.0)
    with torch.no_grad():
        eps_z = output_residual(m(x), t)
    slope = (eps_z**2).sum().item() / len(x)
    h = 1e-5
    assert abs((loss_at(-h) - loss_at(h)) / (2 * h) - slope) < 1e-6 * slope
    decrease = l0 - loss_at(1.0)
    print(f"\nGN step: loss {l0:.4f} -> {l0 - decrease:.4f}; first-order prediction {slope:.4f}")
    assert decrease >= 0.5 * slope


def _digits():
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.tensor(ds.data[:1024] / 16.0, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)  # constant pixels stay 0
    t = nn.functional.one_hot(torch.tensor(ds.target[:1024]), 10).float()
    return x, t


@pytest.mark.kernels
def test_digits_full_batch_gn_beats_adam_and_sgd():
    """20 full-batch steps on 1024 digits at the paper's learning rates: GN (0.5, truncation, sum) ends below Adam
    (1e-4) and SGD (0.1). d = 64: the linear first block has rank ≤ 33 < n, so truncation is needed (as in the paper).

    h = 512 keeps the test to a few seconds (the ReLU solves are then (h+1)-sided least-squares solves as well);
    h = 1024 gives the same ordering (GN 0.100, SGD 1.147, Adam 2.108 measured).
    """
    x, t = _digits()
    final = {}
    for opt, reg in (
        ({"name": "gn", "lr": 0.5, "combine": "sum"}, {"name": "truncation", "rtol": 1e-2, "atol": 1e-5}),
        ({"name": "adam", "lr": 1e-4}, None),
        ({"name": "sgd", "lr": 0.1}, None),
    ):
        m = RevMLP(64, 2, 512, seed=0)
        o = make_optimizer(m, opt, reg)
        losses = [o.step(x, t) for _ in range(20)]
        with torch.no_grad():
            final[opt["name"]] = batch_loss(m(x), t).item()
        assert losses[0] == pytest.approx(math.log(10), abs=0.5)
        assert all(math.isfinite(v) for v in losses)
    print("\ndigits, 20 full-batch steps, final train CE:", {k: round(v, 4) for k, v in final.items()})
    assert final["gn"] < final["sgd"] < final["adam"], final


# ---------------------------------------------------------------------------------------------------------------
# optimiser objects


def test_gauss_newton_step_weight_decay_and_state():
    m, x, t = _full_rank_case()
    reg = {"name": "weight_decay", "weight_decay": 0.1, "rtol": 1e-2, "atol": 1e-5}
    opt = GaussNewton(m, lr=0.3, regularizer=reg, combine="mean")
    assert opt.weight_decay == 0.1
    before = [p.detach().clone() for p in m.trainable()]
    delta = gn_direction(m, x, t, combine="mean", regularizer={"name": "truncation"})
    with torch.no_grad():
        l0 = batch_loss(m(x), t).item()
    assert opt.step(x, t) == pytest.approx(l0, rel=1e-12)  # the PRE-update loss
    for p, p0, d in zip(m.trainable(), before, delta):
        assert torch.allclose(p, p0 - 0.3 * (d + 0.1 * p0), atol=1e-12)
    st = opt.state_dict()
    other = GaussNewton(m, lr=1.0)
    other.load_state_dict(st)
    assert other.state_dict() == st and other.stats == {"gn_solver_fallbacks": 0.0}


@pytest.mark.kernels
def test_gauss_newton_noise_stream_is_seeded_and_resumable():
    """GaussNewton(seed=…) draws the noise from its own host generator: the same seed gives the same steps, another
    seed other steps, and a fresh optimiser loaded from state_dict() continues the stream where it stopped (the
    state holds it as bytes, no tensor: it stays on the host whatever the run's device)."""
    from revgn_cli.devices import held_tensors

    m, x, t = _full_rank_case()
    reg = {"name": "noise", "noise": 0.2}

    def directions(opt, k):
        return [_flat(opt.direction(x, t)[0]) for _ in range(k)]

    a = directions(GaussNewton(copy.deepcopy(m), lr=0.1, regularizer=reg, seed=3), 3)
    again = GaussNewton(copy.deepcopy(m), lr=0.1, regularizer=reg, seed=3)
    b = directions(again, 1)
    state = again.state_dict()
    assert not list(held_tensors(state)) and isinstance(state["noise_rng"], bytes)
    resumed = GaussNewton(copy.deepcopy(m), lr=0.1, regularizer=reg, seed=99)
    resumed.load_state_dict(state)
    b += directions(resumed, 2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert _rel(a[1], a[0]) > 1e-6  # fresh draws per step
    other = directions(GaussNewton(copy.deepcopy(m), lr=0.1, regularizer=reg, seed=4), 1)[0]
    assert _rel(other, a[0]) > 1e-6
    # other regularisers draw nothing and keep no stream
    assert "noise_rng" not in GaussNewton(m, lr=0.1, regularizer="truncation", seed=3).state_dict()


def test_gauss_newton_float32_default_path():
    """float32 model, default GaussNewton (float32-formed Gram for truncation): close to the float64 step."""
    m64, x, t = _problem(32, 16, 2, 64, seed=9)
    m32 = copy.deepcopy(m64).float()
    reg = {"name": "truncation", "rtol": 1e-2, "atol": 1e-5}
    d64 = _flat(gn_direction(m64, x, t, regularizer=reg))
    d32 = _flat(GaussNewton(m32, lr=1.0, regularizer=reg).direction(x.float(), t.float())[0])
    assert d32.dtype == torch.float32
    assert _rel(d32.double(), d64) < 1e-3


def test_make_optimizer_and_torch_stepper():
    m, x, t = _full_rank_case()
    with pytest.raises(ValueError, match="valid names: gn, adam, sgd"):
        make_optimizer(m, {"name": "lbfgs"}, None)
    gn = make_optimizer(m, {"name": "gn", "lr": 0.2, "combine": "mean"}, {"name": "damping", "damping": 1e-2})
    assert isinstance(gn, GaussNewton) and gn.combine == "mean" and gn.regularizer.name == "damping"
    adam = make_optimizer(m, {"name": "adam", "lr": 1e-3, "beta1": 0.8}, {"name": "weight_decay", "weight_decay": 0.01})
    assert isinstance(adam, TorchStepper)
    grp = adam.optimizer.param_groups[0]
    assert grp["betas"] == (0.8, 0.999) and grp["weight_decay"] == 0.01
    assert {id(p) for p in grp["params"]} == {id(p) for p in m.trainable()}
    sgd = make_optimizer(m, {"name": "sgd", "lr": 0.1, "momentum": 0.9}, {"name": "truncation"})  # GN-only: ignored
    assert sgd.optimizer.param_groups[0]["weight_decay"] == 0.0
    fixed = [m.readout.clone()] + [hl.expand.clone() for hl in m.half_layers()]
    with torch.no_grad():
        l0 = batch_loss(m(x), t).item()
    assert sgd.step(x, t) == pytest.approx(l0, rel=1e-12)
    assert sgd.step(x, t) < l0
    for o in (gn, adam):
        o.step(x, t)
    assert all(torch.equal(a, b) for a, b in zip(fixed, [m.readout] + [hl.expand for hl in m.half_layers()]))
    st = sgd.state_dict()
    sgd.load_state_dict(st)
    assert sgd.stats == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m, x, t = _problem(6, 12, 2, 16, seed=11)
    ref = _flat(gn_direction(m, x, t, regularizer="truncation"))
    mc = m.cuda()
    got = gn_direction(mc, x.cuda(), t.cuda(), regularizer="truncation")
    assert all(p.is_cuda for p in got)
    assert _rel(_flat(got).cpu(), ref) < 1e-8
    opt = GaussNewton(mc, lr=0.5, regularizer="truncation")
    assert math.isfinite(opt.step(x.cuda(), t.cuda()))
