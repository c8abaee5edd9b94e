"""GGN-CG and K-FAC (revgn_cli/optim/damped.py): cross-checks against dense float64 references that fail if the
math breaks, and the CLI contract (train, runs, kill-and-resume, config errors)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from revgn_cli.cli import app
from revgn_cli.models import RevMLP
from revgn_cli.optim import GGNCG, KFAC, gn_direction, make_optimizer
from revgn_cli.optim.cg import conjugate_gradient
from revgn_cli.optim.curvature import (LINEARIZE_AFTER, KFACView, flat, ggn_batch_matvec, ggn_matvec, ggn_operator,
                                       kfac_operator, unflat)
from revgn_cli.optim.losses import batch_loss, output_residual
from revgn_cli.results import run_summaries

D = torch.float64


def _batch(n: int, d: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    t = torch.nn.functional.one_hot(torch.randint(0, c, (n,), generator=g), c).to(D)
    return x, t


def logits_jacobian(model: RevMLP, x: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Dense J_Z = ∂vec(Z)/∂θ ∈ ℝ^{(n·C)×|θ|} (rows sample-major), columns in ``params`` order (torch.func)."""
    params = model.trainable() if params is None else params
    names = {id(p): k for k, p in model.named_parameters()}
    free = {names[id(p)]: p.detach() for p in params}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(model, p, (x,), strict=False).reshape(-1)

    jac = torch.func.jacrev(f)(free)
    return torch.cat([jac[k].reshape(jac[k].shape[0], -1) for k in free], dim=1)


def dense_ggn(model: RevMLP, x: torch.Tensor, loss_hessian: str, params=None) -> torch.Tensor:
    """(1/n) Σ_i J_iᵀ H_i J_i with H_i = I or diag(p_i) − p_i p_iᵀ, from the dense Jacobian."""
    n, c = x.shape[0], model.n_classes
    jac = logits_jacobian(model, x, params).reshape(n, c, -1)
    with torch.no_grad():
        p = model(x).softmax(dim=1)
    h = (torch.eye(c, dtype=D).expand(n, c, c) if loss_hessian == "identity"
         else torch.diag_embed(p) - p[:, :, None] * p[:, None, :])
    return torch.einsum("nap,nab,nbq->pq", jac, h, jac) / n


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


# --- the linear algebra ------------------------------------------------------------------------------------------


def test_cg_solves_a_damped_spd_system_and_stops_on_its_budget():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(30, 12, generator=g, dtype=D)
    m = a.T @ a
    b = torch.randn(12, generator=g, dtype=D)
    res = conjugate_gradient(lambda v: m @ v, b, damping=0.5, max_iters=100, rtol=1e-12)
    assert rel(res.x, torch.linalg.solve(m + 0.5 * torch.eye(12, dtype=D), b)) < 1e-10
    assert res.iters <= 13 and res.rel_residual <= 1e-12
    short = conjugate_gradient(lambda v: m @ v, b, damping=0.5, max_iters=3, rtol=0.0)
    assert short.iters == 3 and short.rel_residual > 1e-6


@pytest.mark.parametrize("loss_hessian", ["identity", "exact"])
def test_ggn_matvec_equals_dense_jt_h_j(loss_hessian):
    model = RevMLP(8, 2, 6, n_classes=4, init_std=0.3, first_block_linear=False, seed=1).double()
    x, t = _batch(5, 8, 4)
    ggn = dense_ggn(model, x, loss_hessian)
    mv = ggn_matvec(ggn_operator(model, x, t, loss_hessian=loss_hessian), model.trainable())
    v = torch.randn(ggn.shape[0], dtype=D, generator=torch.Generator().manual_seed(2))
    assert rel(mv(v), ggn @ v) < 1e-12
    # the torch.func product GGN-CG uses (forward and VJP graph cached over the batch's CG iterations)
    cached = ggn_batch_matvec(model, x, t, loss_hessian=loss_hessian)
    assert rel(cached(v), ggn @ v) < 1e-12
    w = torch.randn(ggn.shape[0], dtype=D, generator=torch.Generator().manual_seed(3))
    assert rel(cached(w), ggn @ w) < 1e-12 and rel(cached(v), ggn @ v) < 1e-12  # reusable, no state carried over


@pytest.mark.parametrize("loss_hessian", ["identity", "exact"])
def test_ggn_batch_matvec_stays_exact_after_its_jvp_is_linearised(loss_hessian):
    """Past LINEARIZE_AFTER products the JVP is torch.func.linearize's trace; every product, before and after, is
    the dense JᵀHJ v. A linear first block whose shapes take the C Wᵀ product (the memoised map) is included: a
    trace that used the memo would drop that block's tangent."""
    model = RevMLP(8, 2, 16, n_classes=4, init_std=0.3, first_block_linear=True, seed=4).double()
    x, t = _batch(5, 8, 4)
    ggn = dense_ggn(model, x, loss_hessian)
    with torch.no_grad():
        model(x)  # fill the C Wᵀ memo, as an evaluation pass between updates does
    mv = ggn_batch_matvec(model, x, t, loss_hessian=loss_hessian)
    g = torch.Generator().manual_seed(5)
    for _ in range(LINEARIZE_AFTER + 3):
        v = torch.randn(ggn.shape[0], dtype=D, generator=g)
        assert rel(mv(v), ggn @ v) < 1e-12


def test_ggn_batch_matvec_with_mse_is_the_identity_hessian_product():
    model = RevMLP(8, 2, 6, n_classes=4, init_std=0.3, first_block_linear=False, seed=1).double()
    x, t = _batch(5, 8, 4)
    v = torch.randn(sum(p.numel() for p in model.trainable()), dtype=D, generator=torch.Generator().manual_seed(2))
    for h in ("identity", "exact"):  # MSE's Hessian is the identity whichever is asked for
        assert rel(ggn_batch_matvec(model, x, t, loss="mse", loss_hessian=h)(v), dense_ggn(model, x, "identity") @ v) \
            < 1e-12


@pytest.mark.kernels
def test_ggn_cg_direction_is_the_minimum_norm_logit_gn_solution():
    """λ → 0, H = I, CG to convergence: J_Z Δ = ε_Z (the mean loss's gradient and curvature share the 1/n) and
    Δ = J_Z⁺ ε_Z (CG from zero stays in the row space of J_Z)."""
    model = RevMLP(8, 2, 16, n_classes=4, init_std=0.3, seed=3).double()
    x, t = _batch(3, 8, 4)
    opt = GGNCG(model, lr=1.0, damping=0.0, cg_iters=200, cg_tol=1e-14)
    delta, _, aux = opt.direction(x, t)
    with torch.no_grad():
        eps_z = output_residual(model(x), t).reshape(-1)
    jac = logits_jacobian(model, x)
    d = flat(delta)
    assert rel(jac @ d, eps_z) < 1e-6
    min_norm = torch.linalg.lstsq(jac, eps_z[:, None], driver="gelsd").solution[:, 0]
    assert rel(d, min_norm) < 1e-6
    assert aux["cg"].iters <= jac.shape[0] + 2  # rank(G) = n·C: CG ends in about that many steps


@pytest.mark.kernels
def test_ggn_cg_equals_exact_gn_when_the_readout_is_square():
    """d_in = n_classes: U is square orthogonal, J_Z⁺ε_Z = J_X⁺(ε_Z Uᵀ) = revgn's exact GN for one block."""
    model = RevMLP(10, 1, 16, n_classes=10, init_std=0.3, seed=4).double()
    x, t = _batch(4, 10, 10)
    gn = gn_direction(model, x, t, regularizer=None)
    delta, _, _ = GGNCG(model, lr=1.0, damping=0.0, cg_iters=500, cg_tol=1e-14).direction(x, t)
    assert rel(flat(delta), flat(gn)) < 1e-6


@pytest.mark.parametrize("first_linear", [True, False])
@pytest.mark.parametrize("loss, loss_hessian", [("ce", "identity"), ("ce", "exact"), ("mse", "identity")])
@pytest.mark.parametrize("damping", [1e-3, 0.1, 0.0])
def test_kernel_solve_is_the_damped_ggn_solution(first_linear, loss, loss_hessian, damping):
    """optimizer.ggn_solve=kernel: Δ = (G + λI)⁻¹ g against a dense float64 G (λ = 0: the minimum-norm G⁺g, the
    point CG from zero converges to); g and the loss are those of loss_and_grad; the logged residual is ~0."""
    from revgn_cli.optim.damped import loss_and_grad
    from revgn_cli.optim.kernel_solve import ggn_kernel_solve

    model = RevMLP(8, 2, 16, n_classes=4, init_std=0.3, first_block_linear=first_linear, seed=4).double()
    x, t = _batch(5, 8, 4)
    ggn = dense_ggn(model, x, loss_hessian if loss == "ce" else "identity")
    ell, grads = loss_and_grad(model, x, t, loss)
    g = flat(grads)
    want = (torch.linalg.solve(ggn + damping * torch.eye(ggn.shape[0], dtype=D), g) if damping
            else torch.linalg.pinv(ggn, hermitian=True) @ g)
    res = ggn_kernel_solve(model, x, t, damping, loss=loss, loss_hessian=loss_hessian, residual=True)
    assert rel(res.delta, want) < 1e-9
    assert rel(res.grad, g) < 1e-13 and float(res.loss) == pytest.approx(float(ell), rel=1e-14)
    assert res.rel_residual < 1e-10


@pytest.mark.parametrize("schedule", ["fixed", "lm"])
def test_ggn_cg_kernel_solve_takes_the_steps_converged_cg_takes(schedule):
    """Three GGN-CG steps with ggn_solve=kernel and with CG to ‖r‖ ≤ 1e-13‖g‖ leave the same parameters and λ
    (float64; Levenberg-Marquardt included: the same ρ, so the same λ after each step)."""
    x, t = _batch(16, 8, 4)
    models = [RevMLP(8, 2, 16, n_classes=4, init_std=0.3, seed=9).double() for _ in range(2)]
    kernel = GGNCG(models[0], lr=1.0, damping=1e-2, damping_schedule=schedule, solve="kernel")
    cg = GGNCG(models[1], lr=1.0, damping=1e-2, damping_schedule=schedule, cg_iters=1000, cg_tol=1e-13)
    for _ in range(3):
        assert kernel.step(x, t) == pytest.approx(cg.step(x, t), rel=1e-10)
        assert kernel.damping == pytest.approx(cg.damping, rel=1e-10)
    assert rel(flat(models[0].trainable()), flat(models[1].trainable())) < 1e-9
    assert kernel.stats["cg_iters_total"] == 0 and kernel.stats["cg_rel_residual_last"] < 1e-10
    with pytest.raises(ValueError, match="ggn_solve"):
        GGNCG(models[0], solve="lu")


@pytest.mark.parametrize("loss_hessian", ["identity", "exact"])
def test_kfac_equals_exact_ggn_on_one_half_layer_and_one_sample(loss_hessian):
    """One sample, the trained half-layer F alone: the Kronecker factorisation of its [W, b] block is exact."""
    model = RevMLP(8, 1, 6, n_classes=4, init_std=0.3, first_block_linear=False, seed=5).double()
    x, t = _batch(1, 8, 4)
    params = [model.blocks[0].F.weight, model.blocks[0].F.bias]
    ggn = dense_ggn(model, x, loss_hessian, params)
    op, scale = kfac_operator(KFACView(model), params, x, t, loss_hessian=loss_hessian)
    eye = torch.eye(ggn.shape[0], dtype=D)
    kfac = torch.stack([flat(op @ unflat(e, params)) for e in eye], dim=1) * scale
    assert rel(kfac, ggn) < 1e-12
    # With more samples (or both half-layers) K-FAC is only an approximation: the check above is not vacuous.
    x2, t2 = _batch(6, 8, 4)
    op2, s2 = kfac_operator(KFACView(model), params, x2, t2, loss_hessian=loss_hessian)
    kfac2 = torch.stack([flat(op2 @ unflat(e, params)) for e in eye], dim=1) * s2
    assert rel(kfac2, dense_ggn(model, x2, loss_hessian, params)) > 1e-3


def test_kfac_view_computes_the_model_and_shares_its_parameters():
    model = RevMLP(8, 2, 6, n_classes=4, init_std=0.3, seed=6).double()
    view = KFACView(model)
    x, _ = _batch(5, 8, 4)
    assert rel(view(x), model(x)) < 1e-14
    assert [id(p) for p in view.parameters()] == [id(p) for p in model.trainable()]
    assert "expand" not in dict(view.named_parameters())  # the fixed expansion C is never trained


@pytest.mark.parametrize("name", ["kfac", "ggn_cg"])
def test_steps_decrease_the_loss_on_a_tiny_problem(name):
    model = RevMLP(8, 2, 16, n_classes=4, init_std=0.1, seed=7).double()
    x, t = _batch(32, 8, 4)
    spec = {"name": name, "lr": 1.0, "damping": 1e-2, "cg_iters": 20}
    opt = make_optimizer(model, spec, None)
    before = [opt.step(x, t) for _ in range(5)]
    with torch.no_grad():
        after = float(batch_loss(model(x), t))
    assert all(b < a for a, b in zip(before, before[1:])) and after < 0.7 * before[0]
    assert {p.data_ptr() for p in model.trainable()}.isdisjoint({b.data_ptr() for b in model.buffers()})


def test_levenberg_marquardt_raises_damping_after_a_bad_step_and_lowers_it_after_a_good_one():
    x, t = _batch(16, 8, 4)
    bad = GGNCG(RevMLP(8, 1, 8, n_classes=4, init_std=0.1, seed=8).double(), lr=50.0, damping=1e-2,
                damping_schedule="lm", lm_factor=2.0)
    bad.step(x, t)
    assert bad.stats["lm_rho_last"] < 0.25 and bad.damping == pytest.approx(2e-2)
    good = GGNCG(RevMLP(8, 1, 8, n_classes=4, init_std=0.1, seed=8).double(), lr=0.05, damping=1e-2,
                 damping_schedule="lm", lm_factor=2.0)
    good.step(x, t)
    assert good.stats["lm_rho_last"] > 0.75 and good.damping == pytest.approx(5e-3)


@pytest.mark.parametrize("lr, dtype", [(1e4, D), (1e38, torch.float32)])
def test_levenberg_marquardt_rejects_a_step_that_raises_the_loss_and_restores_the_parameters_bit_identically(lr, dtype):
    """lr 1e4 along a descent direction must raise the batch loss (ρ < 0); lr 1e38 in float32 overflows the logits
    (the loss after the step is not finite, ρ is NaN). Both are rejected: θ's bits are unchanged and λ grows by ω."""
    x, t = _batch(16, 8, 4)
    model = RevMLP(8, 1, 8, n_classes=4, init_std=0.1, seed=8).to(dtype)
    before = [p.detach().clone() for p in model.trainable()]
    opt = GGNCG(model, lr=lr, damping=1e-2, damping_schedule="lm", lm_factor=2.0)
    loss0 = opt.step(x.to(dtype), t.to(dtype))
    assert all(torch.equal(a, b) for a, b in zip(model.trainable(), before))
    assert opt.stats["lm_rejected"] == 1 and opt.damping == pytest.approx(2e-2)
    assert not opt.stats["lm_rho_last"] > 0  # negative or NaN
    with torch.no_grad():
        assert float(batch_loss(model(x.to(dtype)), t.to(dtype))) == loss0
    ok = GGNCG(RevMLP(8, 1, 8, n_classes=4, init_std=0.1, seed=8).double(), lr=0.05, damping=1e-2,
               damping_schedule="lm")
    ok.step(x, t)
    assert ok.stats["lm_rejected"] == 0


LM_EXACT = ["dataset=digits", "model=tiny", "regime=mini_batch", "regime.batch_size=64", "train.epochs=2",
            "optimizer=ggn_cg", "optimizer.loss_hessian=exact", "optimizer.damping=1e-3",
            "optimizer.damping_schedule=lm", "optimizer.lr=1", "optimizer.cg_iters=10", "seed=42", "metrics.every=0",
            "metrics.loss_change=false", "device=cpu"]


def test_levenberg_marquardt_with_the_exact_hessian_trains_where_accepting_every_step_diverges(tmp_path, monkeypatch):
    """The small twin of `revgn train dataset=mnist5k model=quick regime.batch_size=256 … optimizer.loss_hessian=exact
    optimizer.damping=1e-3 optimizer.damping_schedule=lm optimizer.cg_iters=10` (which diverged at step 4 when every
    step was applied): digits, h = 64, batch 64 (45 updates, seconds). Accepting every finite step diverges; with
    rejections the run finishes with its train loss well below the initial one."""
    import revgn_cli.optim.damped as damped

    monkeypatch.setattr(damped, "LM_ACCEPT", -float("inf"))  # accept every step with a finite ρ (the old rule)
    r = runner.invoke(app, ["--quiet", "train", *LM_EXACT, f"results_dir={tmp_path / 'old'}"])
    assert r.exit_code == 3, r.output  # diverged
    monkeypatch.setattr(damped, "LM_ACCEPT", 0.0)
    r = runner.invoke(app, ["--quiet", "train", *LM_EXACT, f"results_dir={tmp_path / 'new'}"])
    assert r.exit_code == 0, r.output
    (run,) = run_summaries(tmp_path / "new")
    ep = pd.read_parquet(Path(run["path"]) / "metrics.parquet").query("split == 'epoch'")
    assert run["status"] == "done" and ep.train_loss.iloc[-1] < 0.6 * ep.train_loss.iloc[0]
    assert ep.lm_rejected.iloc[-1] >= 1 and ep.damping.iloc[-1] > 1e-3


def _dense_kfac_direction(model, x, t, damping):
    """(g, Δθ = (sK + λI)⁻¹g, G) as dense float64 matrices from curvlinops' K-FAC and the dense GGN."""
    params = model.trainable()
    with torch.enable_grad():
        g = flat(torch.autograd.grad(batch_loss(model(x), t), params))
    op, scale = kfac_operator(KFACView(model), params, x, t)
    eye = torch.eye(g.numel(), dtype=D)
    k = torch.stack([flat(op @ unflat(e, params)) for e in eye], dim=1) * scale
    return g, torch.linalg.solve(k + damping * eye, g), dense_ggn(model, x, "identity")


def test_kfac_rescaled_and_momentum_steps_equal_a_dense_float64_computation():
    """step_rule rescale: θ₁ = θ₀ − lr·α*Δθ with α* = gᵀΔθ / (Δθᵀ(G + λI)Δθ) (M&G 2015 §6.4, Δ = −Δθ);
    momentum: the second update δ = αΔ + μδ₀ minimises the damped quadratic model over span{Δ, δ₀} (§7)."""
    lam, lr = 0.1, 0.7
    eye = None
    m_r = RevMLP(8, 2, 6, n_classes=4, init_std=0.3, seed=11).double()
    m_m = RevMLP(8, 2, 6, n_classes=4, init_std=0.3, seed=11).double()
    x, t = _batch(12, 8, 4)
    g, d, gg = _dense_kfac_direction(m_r, x, t, lam)
    eye = torch.eye(g.numel(), dtype=D)
    alpha = float(g @ d / (d @ (gg + lam * eye) @ d))
    theta0 = flat([p.detach() for p in m_r.trainable()])
    rescale = KFAC(m_r, lr=lr, damping=lam, step_rule="rescale")
    rescale.step(x, t)
    assert rel(flat(m_r.trainable()) - theta0, -lr * alpha * d) < 1e-10
    assert rescale.stats["kfac_alpha_last"] == pytest.approx(alpha, rel=1e-10) and abs(alpha - 1) > 0.05

    mom = KFAC(m_m, lr=lr, damping=lam, step_rule="momentum")
    mom.step(x, t)  # no previous update yet: the rescaled step
    theta1 = flat([p.detach() for p in m_m.trainable()])
    assert rel(theta1 - theta0, -lr * alpha * d) < 1e-10
    x2, t2 = _batch(12, 8, 4, seed=5)
    g2, d2, gg2 = _dense_kfac_direction(m_m, x2, t2, lam)
    c = gg2 + lam * eye
    basis = torch.stack([-d2, theta1 - theta0], dim=1)  # Δ and δ₀ (the last update, lr included)
    am = torch.linalg.solve(basis.T @ c @ basis, -basis.T @ g2)
    mom.step(x2, t2)
    assert rel(flat(m_m.trainable()) - theta1, lr * basis @ am) < 1e-9
    assert mom.stats["kfac_mu_last"] == pytest.approx(float(am[1]), rel=1e-8) and abs(float(am[1])) > 1e-3
    # The model's own value along the step is minimal at (α, μ): the quadratic model is lower there than at ±1 %.
    q = lambda v: float(g2 @ v + 0.5 * v @ c @ v)  # noqa: E731
    best = basis @ am
    assert all(q(best) < q(basis @ (am * f)) for f in (0.99, 1.01))


@pytest.mark.parametrize("name", ["kfac", "ggn_cg"])
def test_state_dict_round_trip_continues_identically(name):
    """Two copies: one steps on, the other is rebuilt from the first's state_dict (incl. K-FAC factors)."""
    x, t = _batch(16, 8, 4)
    spec = {"name": name, "lr": 0.5, "damping": 1e-2, "curvature_every": 3, "damping_schedule": "lm" if name == "ggn_cg" else "fixed",
            "kfac_step": "momentum"}
    m1 = RevMLP(8, 2, 8, n_classes=4, init_std=0.1, seed=9).double()
    o1 = make_optimizer(m1, spec, None)
    for i in range(2):
        o1.step(*_batch(16, 8, 4, seed=i))
    m2 = RevMLP(8, 2, 8, n_classes=4, init_std=0.1, seed=9).double()
    m2.load_state_dict(m1.state_dict())
    o2 = make_optimizer(m2, spec, None)
    o2.load_state_dict(o1.state_dict())
    for i in range(2, 4):  # step 2 uses the factors of step 0 (curvature_every = 3); step 3 refreshes
        o1.step(*_batch(16, 8, 4, seed=i))
        o2.step(*_batch(16, 8, 4, seed=i))
    assert all(torch.equal(a, b) for a, b in zip(m1.trainable(), m2.trainable()))
    assert o1.stats == o2.stats


# --- the CLI -------------------------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.mark.parametrize("opt", ["ggn_cg", "kfac"])
def test_train_runs_and_is_listed(tiny, results, opt):
    r = runner.invoke(app, ["--quiet", "train", f"optimizer={opt}", "optimizer.cg_iters=5", *tiny])
    assert r.exit_code == 0, r.output
    (run,) = run_summaries(results)
    assert run["status"] == "done" and run["optimizer.name"] == opt
    rows = pd.read_parquet(Path(run["path"]) / "metrics.parquet")
    ep = rows[rows.split == "epoch"]
    assert ep.train_loss.iloc[-1] < ep.train_loss.iloc[0]
    assert ep["ntk_sim_init"].notna().all() and ep["cka_block2"].notna().all()
    key = "cg_iters_total" if opt == "ggn_cg" else "curvature_updates"
    assert ep[key].iloc[-1] > 0
    listing = runner.invoke(app, ["runs", "--results", str(results), f"optimizer.name={opt}"])
    assert listing.exit_code == 0 and "1 run(s)" in listing.output and opt in listing.output


def test_train_with_the_kernel_solve_logs_its_residual_and_gets_its_own_id(tiny, results):
    r = runner.invoke(app, ["--quiet", "train", "optimizer=ggn_cg", "optimizer.ggn_solve=kernel", *tiny])
    assert r.exit_code == 0, r.output
    (run,) = run_summaries(results)
    assert run["status"] == "done" and run["optimizer.ggn_solve"] == "kernel"
    rows = pd.read_parquet(Path(run["path"]) / "metrics.parquet")
    ep = rows[rows.split == "epoch"]
    assert ep.train_loss.iloc[-1] < ep.train_loss.iloc[0]
    assert (ep.cg_iters_total == 0).all() and (ep.cg_rel_residual_last < 1e-3).all()  # float32, solved exactly
    from revgn_cli.config import compose_config, run_id

    cg = compose_config(["optimizer=ggn_cg"])
    assert run_id(cg) == run_id(compose_config(["optimizer=ggn_cg", "optimizer.ggn_solve=cg"]))  # old ids stay
    assert run_id(cg) != run_id(compose_config(["optimizer=ggn_cg", "optimizer.ggn_solve=kernel"]))


@pytest.mark.parametrize("bad", [["optimizer=ggn_cg", "optimizer.cg_iters=0"], ["optimizer=ggn_cg", "optimizer.damping=-1"],
                                 ["optimizer=kfac", "optimizer.damping=-0.1"], ["optimizer=kfac", "optimizer.curvature_every=0"],
                                 ["optimizer=kfac", "optimizer.damping_schedule=lm"],
                                 ["optimizer=kfac", "optimizer.kfac_step=sometimes"],
                                 ["optimizer=ggn_cg", "optimizer.damping_schedule=sometimes"],
                                 ["optimizer=ggn_cg", "optimizer.ggn_solve=lu"]])
def test_bad_settings_are_one_error_line(tiny, results, bad):
    r = runner.invoke(app, ["--quiet", "train", *bad, *tiny])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert bad[1].split("=")[0] in lines[0]
    assert not results.exists() or not any(results.rglob("metrics.parquet"))


RESUME = ["dataset=digits", "model=tiny", "regime=mini_batch", "regime.batch_size=512", "train.epochs=3",
          "train.checkpoint_every=1", "metrics.every=2", "metrics.probe_size=6", "metrics.cka_probe_size=64",
          "device=cpu", "optimizer.lr=0.5", "optimizer.damping=0.05"]
# 3 updates per epoch: K-FAC's refreshes every 2 steps straddle the epoch checkpoints (a resume needs the saved
# factors), GGN-CG's Levenberg-Marquardt λ is part of the state.
RESUME_OPTS = {"kfac": ["optimizer=kfac", "optimizer.curvature_every=2"],
               "ggn_cg": ["optimizer=ggn_cg", "optimizer.cg_iters=3", "optimizer.damping_schedule=lm"]}


@pytest.mark.timeout(1500)  # three tiny runs, but the CPU may be shared
@pytest.mark.parametrize("opt", ["kfac", "ggn_cg"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, opt):
    ov = RESUME + RESUME_OPTS[opt]
    ref = tmp_path / "ref"
    r = runner.invoke(app, ["--quiet", "train", *ov, f"results_dir={ref}"])
    assert r.exit_code == 0, r.output
    (ref_run,) = run_summaries(ref)
    reference = pd.read_parquet(Path(ref_run["path"]) / "metrics.parquet")
    ep = reference[reference.split == "epoch"].train_loss
    assert ep.iloc[-1] < 0.75 * ep.iloc[0]  # the reference trains (measured 2.42 → 0.27 K-FAC, → 1.30 GGN-CG)

    res = tmp_path / "res"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "-m", "revgn_cli.cli", "--quiet", "train", *ov, f"results_dir={res}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ck = res / "default" / ref_run["run_id"] / "checkpoints" / "last.pt"
    t0 = time.time()
    while True:  # kill -9 once the epoch-1 checkpoint is on disk (mid-run: 3 epochs)
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill: {proc.stderr.read().decode()[-2000:]}")
        try:
            if ck.exists() and torch.load(ck, weights_only=False)["state"]["epoch"] >= 1:
                break
        except Exception:
            pass
        assert time.time() - t0 < 900, "no checkpoint"  # generous: the CPU may be shared
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    meta = json.loads((ck.parent.parent / "meta.json").read_text())
    assert meta["status"] == "running"
    r = runner.invoke(app, ["--quiet", "train", *ov, f"results_dir={res}"])
    assert r.exit_code == 0, r.output
    assert "resumed" in r.output
    got = pd.read_parquet(ck.parent.parent / "metrics.parquet")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), reference.reset_index(drop=True))
