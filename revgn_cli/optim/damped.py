"""Damped, inexact Gauss-Newton: GGN-CG ("Hessian-free", Martens 2010) and K-FAC (Martens & Grosse 2015).

Both take θ ← θ − α Δθ with Δθ ≈ (G + λI)⁻¹ g, where g = ∇_θ ℓ is the mean-batch-loss gradient (backprop) and G the
batch's curvature of the same scaling (revgn_cli/optim/curvature.py: H = I for ``loss_hessian=identity``, the softmax
Hessian for ``exact``):

* ``GGNCG`` solves the system by conjugate gradient on GGN mat-vecs (curvature.ggn_batch_matvec: the batch's forward
  and VJP graph built once, then one JVP + one cached VJP per product; no matrix is formed), from Δ = 0, for at most
  ``cg_iters`` iterations or until ‖r‖ ≤ cg_tol·‖g‖. ``solve="kernel"`` solves the same system exactly instead,
  through the batch's nC × nC logit NTK (optim/kernel_solve.py: the push-through identity), the point CG converges
  to, at about the cost of ten CG products.
  ``damping_schedule="lm"`` adapts λ after every step, Levenberg–Marquardt style (Martens 2010 §4.1): with the
  reduction ratio ρ = (ℓ(θ − αΔ) − ℓ(θ)) / (q(−αΔ) − q(0)), q the undamped quadratic model
  q(δ) = ℓ + gᵀδ + ½ δᵀGδ on the same batch, λ ← λ·ω if ρ < ¼ and λ ← λ/ω if ρ > ¾ (ω = ``lm_factor``, 3/2 in the
  paper). A step whose ρ is not finite or not above ``LM_ACCEPT`` (0: the batch loss did not fall; ρ := −1 when the
  model predicts no decrease) is *rejected*: the parameters are restored bit-identically and λ ← λ·ω. ρ compares the loss
  with q, so the schedule is meaningful when q is the loss's own second-order model, i.e. with
  ``loss_hessian="exact"``; with the identity Hessian, q overestimates the curvature of cross-entropy (ρ ≈ 2 at every
  step) and λ only shrinks.
* ``KFAC`` replaces G by curvlinops' K-FAC approximation (per half-layer A ⊗ B on the joint [W, b] block,
  type-2 = exact-GGN factors), refreshed on the current batch every ``curvature_every`` steps, and applies
  (K + λI)⁻¹ exactly through the factors' eigendecompositions (curvlinops' KFACInverseLinearOperator with
  ``use_exact_damping``), so λ means the same as for GGN-CG. ``step_rule`` (Martens & Grosse 2015):
  ``plain`` takes θ ← θ − αΔθ; ``rescale`` (§6.4, the default) scales the proposal Δ = −Δθ by the minimiser of the
  damped quadratic model along it, α* = −gᵀΔ / (Δᵀ(G + λI)Δ), with G the exact GGN (one mat-vec), so a
  block-diagonal inverse that overshoots is pulled back; ``momentum`` (§7) minimises the same model over
  span{Δ, δ₀}, δ₀ the previous update: δ = αΔ + μδ₀ with (α, μ) from a 2×2 system (two mat-vecs). The update is
  θ ← θ + lr·δ (lr = 1 is M&G's step).

With H = I, λ → 0 and CG run to convergence, G = (1/n) J_Zᵀ J_Z and g = (1/n) J_Zᵀ ε_Z, so Δθ = J_Z⁺ ε_Z — the
minimum-norm solution of the logit-space GN equations J_Z Δ = ε_Z (tests/test_damped.py checks this against a dense
float64 Jacobian).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import torch
from torch import Tensor

from revgn_cli.models.revmlp import RevMLP
from revgn_cli.optim.cg import CGResult, conjugate_gradient
from revgn_cli.optim.curvature import KFACView, flat, ggn_batch_matvec, kfac_operator, unflat
from revgn_cli.optim.kernel_solve import ggn_kernel_solve
from revgn_cli.optim.losses import LOSS_HESSIANS, batch_loss

__all__ = ["GGNCG", "KFAC", "DAMPING_SCHEDULES", "GGN_SOLVES", "KFAC_STEPS", "LM_ACCEPT", "loss_and_grad",
           "quadratic_step"]

DAMPING_SCHEDULES = ("fixed", "lm")
GGN_SOLVES = ("cg", "kernel")  # GGN-CG: conjugate gradient on mat-vecs | exactly, in function space
KFAC_STEPS = ("plain", "rescale", "momentum")
# Levenberg-Marquardt accepts a step only when its reduction ratio ρ is finite and above this: the batch loss fell.
LM_ACCEPT = 0.0


def loss_and_grad(model: RevMLP, x: Tensor, t_onehot: Tensor, loss: str) -> tuple[Tensor, list[Tensor]]:
    """(mean batch loss, its gradient w.r.t. model.trainable()) by one forward and one backward."""
    params = model.trainable()
    with torch.enable_grad():
        ell = batch_loss(model(x), t_onehot, loss)
        grads = torch.autograd.grad(ell, params)
    return ell.detach(), list(grads)


def quadratic_step(mv, g: Tensor, proposal: Tensor, damping: float,
                   previous: Tensor | None = None) -> tuple[Tensor, float, float]:
    """(δ, α, μ): the minimiser of the damped quadratic model M(δ) = gᵀδ + ½ δᵀ(G + λI)δ over span{Δ, δ₀}.

    mv(v) = G v; g, Δ = ``proposal``, δ₀ = ``previous`` ∈ ℝ^p (flat). Without δ₀ (or when Δ and δ₀ are parallel, so
    the 2×2 system is singular) δ = α*Δ with α* = −gᵀΔ / (Δᵀ(G + λI)Δ) (Martens & Grosse 2015 §6.4) and μ = 0; with
    δ₀, (α, μ) solves [ΔᵀCΔ, ΔᵀCδ₀; δ₀ᵀCΔ, δ₀ᵀCδ₀](α, μ) = −(gᵀΔ, gᵀδ₀), C = G + λI (§7). The 2×2 algebra is in
    float64 whatever the parameters' dtype.
    """
    c_d = mv(proposal) + damping * proposal
    dcd, gd = float(torch.dot(proposal, c_d)), float(torch.dot(g, proposal))
    alpha = -gd / dcd if dcd > 0 else 0.0
    if previous is not None:
        c_p = mv(previous) + damping * previous
        a = torch.tensor([[dcd, float(torch.dot(proposal, c_p))], [float(torch.dot(previous, c_d)),
                          float(torch.dot(previous, c_p))]], dtype=torch.float64)
        b = -torch.tensor([gd, float(torch.dot(g, previous))], dtype=torch.float64)
        # Singular (δ₀ ∥ Δ) or not positive definite through round-off: keep the one-dimensional rescaling.
        if torch.linalg.det(a) > 1e-12 * float(a[0, 0] * a[1, 1]) and a[1, 1] > 0:
            am = torch.linalg.solve(a, b)
            alpha, mu = float(am[0]), float(am[1])
            return alpha * proposal + mu * previous, alpha, mu
    return alpha * proposal, alpha, 0.0


class _Damped:
    """What GGN-CG and K-FAC share: arguments, the λ state, the update, the counters and the checkpoint state."""

    name = ""

    def __init__(self, model: RevMLP, lr: float, damping: float, loss: str = "ce", loss_hessian: str = "identity",
                 weight_decay: float = 0.0):
        if not damping >= 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        if loss_hessian not in LOSS_HESSIANS:
            raise ValueError(f"unknown loss_hessian {loss_hessian!r}; valid: {', '.join(LOSS_HESSIANS)}")
        self.model, self.lr, self.damping = model, float(lr), float(damping)
        self.loss, self.loss_hessian, self.weight_decay = loss, loss_hessian, float(weight_decay)
        self.steps = 0
        self.stats: dict[str, float] = {"damping": self.damping}

    def _batch(self, x: Tensor, t_onehot: Tensor) -> tuple[Tensor, Tensor]:
        ref = self.model.readout
        return x.to(device=ref.device, dtype=ref.dtype), t_onehot.to(device=ref.device, dtype=ref.dtype)

    def _apply(self, delta: list[Tensor]) -> None:
        """θ ← θ − α(Δθ + weight_decay·θ)."""
        with torch.no_grad():
            for p, d in zip(self.model.trainable(), delta):
                if self.weight_decay:
                    d = d + self.weight_decay * p
                p.sub_(self.lr * d)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "damping": self.damping, "steps": self.steps,
                "stats": dict(self.stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name", self.name) != self.name:
            raise ValueError(f"state was saved by optimizer {state.get('name')!r}, not {self.name!r}")
        self.lr, self.damping = float(state["lr"]), float(state["damping"])
        self.steps = int(state["steps"])
        self.stats = {k: float(v) for k, v in state.get("stats", {}).items()}


class GGNCG(_Damped):
    """Damped GN by CG on GGN mat-vecs (see the module docstring). ``.step(x, t) -> pre-update loss``.

    stats: ``damping`` (λ now), ``cg_iters_total`` (GGN mat-vecs in CG so far), ``cg_iters_last`` and
    ``cg_rel_residual_last`` (the last solve), ``lm_rho_last`` (the last reduction ratio, NaN when it was not
    finite) and ``lm_rejected`` (steps rejected so far), both ``lm`` only.
    """

    name = "ggn_cg"

    def __init__(self, model: RevMLP, lr: float = 1.0, damping: float = 1e-3, cg_iters: int = 50,
                 cg_tol: float = 1e-4, damping_schedule: str = "fixed", lm_factor: float = 1.5, loss: str = "ce",
                 loss_hessian: str = "identity", weight_decay: float = 0.0, solve: str = "cg"):
        super().__init__(model, lr, damping, loss, loss_hessian, weight_decay)
        if solve not in GGN_SOLVES:
            raise ValueError(f"unknown ggn_solve {solve!r}; valid: {', '.join(GGN_SOLVES)}")
        self.solve = solve
        if int(cg_iters) < 1:
            raise ValueError(f"cg_iters must be >= 1, got {cg_iters}")
        if damping_schedule not in DAMPING_SCHEDULES:
            raise ValueError(f"unknown damping_schedule {damping_schedule!r}; valid: {', '.join(DAMPING_SCHEDULES)}")
        if not lm_factor > 1:
            raise ValueError(f"lm_factor must be > 1, got {lm_factor}")
        self.cg_iters, self.cg_tol = int(cg_iters), float(cg_tol)
        self.damping_schedule, self.lm_factor = damping_schedule, float(lm_factor)
        self.stats.update(cg_iters_total=0.0, cg_iters_last=0.0, cg_rel_residual_last=0.0)
        if damping_schedule == "lm":
            self.stats["lm_rejected"] = 0.0

    def direction(self, x: Tensor, t_onehot: Tensor) -> tuple[list[Tensor], Tensor, dict[str, Any]]:
        """(Δθ ≈ (G + λI)⁻¹g in model.trainable()'s shapes, pre-update loss, {g, Gv, solve result}).

        ``solve="kernel"``: Δθ exactly, in function space (optim/kernel_solve.py); the result reports 0 CG iterations
        and the solve's measured residual; Gv comes from the solve's own forward.
        """
        x, t_onehot = self._batch(x, t_onehot)
        params = self.model.trainable()
        if self.solve == "kernel":
            ks = ggn_kernel_solve(self.model, x, t_onehot, self.damping, loss=self.loss,
                                  loss_hessian=self.loss_hessian, residual=True)
            ell, g, mv, res = ks.loss, ks.grad, ks.matvec, CGResult(ks.delta, 0, ks.rel_residual)
        else:
            ell, grads = loss_and_grad(self.model, x, t_onehot, self.loss)
            mv = ggn_batch_matvec(self.model, x, t_onehot, loss=self.loss, loss_hessian=self.loss_hessian)
            g = flat(grads)
            res = conjugate_gradient(mv, g, damping=self.damping, max_iters=self.cg_iters, rtol=self.cg_tol)
        return unflat(res.x, params), ell, {"g": g, "mv": mv, "cg": res, "x": x, "t": t_onehot}

    def step(self, x: Tensor, t_onehot: Tensor) -> float:
        delta, ell, aux = self.direction(x, t_onehot)
        res = aux["cg"]
        lm = self.damping_schedule == "lm"
        if lm:
            d = -self.lr * res.x  # the step actually taken (without weight decay)
            predicted = float(torch.dot(aux["g"], d) + 0.5 * torch.dot(d, aux["mv"](d)))
            saved = [p.detach().clone() for p in self.model.trainable()]  # a rejected step restores these bits
        self._apply(delta)
        self.steps += 1
        self.stats["cg_iters_total"] += res.iters
        self.stats["cg_iters_last"] = float(res.iters)
        self.stats["cg_rel_residual_last"] = res.rel_residual
        if lm:
            with torch.no_grad():
                after = float(batch_loss(self.model(aux["x"]), aux["t"], self.loss))
            # A model that predicts no decrease gives ρ = −1, a NaN/inf loss after the step a NaN ρ: both rejected.
            rho = (after - float(ell)) / predicted if predicted < 0 else -1.0
            rho = rho if math.isfinite(after) else math.nan
            if not (math.isfinite(rho) and rho > LM_ACCEPT):
                with torch.no_grad():
                    for p, s in zip(self.model.trainable(), saved):
                        p.copy_(s)
                self.stats["lm_rejected"] = self.stats.get("lm_rejected", 0.0) + 1
                self.damping *= self.lm_factor
            elif rho < 0.25:
                self.damping *= self.lm_factor
            elif rho > 0.75:
                self.damping /= self.lm_factor
            self.stats["lm_rho_last"] = rho
        self.stats["damping"] = self.damping
        return float(ell)


class KFAC(_Damped):
    """K-FAC preconditioned steps (see the module docstring). ``.step(x, t) -> pre-update loss``.

    The factors are recomputed on the current batch at steps 0, k, 2k, … (k = ``curvature_every``) and kept in the
    checkpoint, so a resumed run preconditions with the same factors (and, for ``momentum``, the previous update).
    stats: ``damping``, ``curvature_updates``; ``kfac_alpha_last`` and ``kfac_mu_last`` (the last step's α and μ;
    1 and 0 for ``plain``).
    """

    name = "kfac"

    def __init__(self, model: RevMLP, lr: float = 1.0, damping: float = 1e-3, curvature_every: int = 1,
                 loss: str = "ce", loss_hessian: str = "identity", weight_decay: float = 0.0,
                 step_rule: str = "rescale"):
        super().__init__(model, lr, damping, loss, loss_hessian, weight_decay)
        if int(curvature_every) < 1:
            raise ValueError(f"curvature_every must be >= 1, got {curvature_every}")
        if step_rule not in KFAC_STEPS:
            raise ValueError(f"unknown K-FAC step rule {step_rule!r}; valid: {', '.join(KFAC_STEPS)}")
        self.curvature_every, self.step_rule = int(curvature_every), step_rule
        self._previous: Tensor | None = None  # δ₀, the last update (flat; ``momentum`` only)
        self.view = KFACView(model)
        self._op = None  # the K-FAC operator of the last refresh
        self._scale = 1.0  # G ≈ scale·K (curvature.kfac_operator)
        self._inverse = None
        # Factors loaded from a checkpoint, on the model's device, turned into an operator at the first step that
        # needs them: curvlinops maps parameters by data_ptr, which a model without storage (meta) does not have.
        self._pending: dict[str, Any] | None = None
        self.stats.update(curvature_updates=0.0, kfac_alpha_last=1.0, kfac_mu_last=0.0)

    def _set_inverse(self) -> None:
        from curvlinops import KFACInverseLinearOperator

        # (sK + λI)⁻¹ = (1/s)(K + (λ/s)I)⁻¹: the scale folds into the damping.
        self._inverse = KFACInverseLinearOperator(self._op, damping=self.damping / self._scale,
                                                  use_exact_damping=True)

    def held_bytes(self) -> int:
        """Memory kept between steps: the Kronecker factors (A ∈ ℝ^{(h+1)×(h+1)}, B ∈ ℝ^{(d/2)×(d/2)} per half-layer)
        and, cached by the damped inverse, their eigenvectors (the same size again)."""
        if self._op is None and self._pending is None:
            return 0
        st = self._pending if self._op is None else self._op.state_dict()
        factors = [*st["input_covariances"].values(), *st["gradient_covariances"].values()]
        return 2 * sum(f.numel() * f.element_size() for f in factors)

    def refresh(self, x: Tensor, t_onehot: Tensor) -> None:
        """Recompute the Kronecker factors on the batch (x, t) and their damped inverse."""
        x, t_onehot = self._batch(x, t_onehot)
        self._op, self._scale = kfac_operator(self.view, self.model.trainable(), x, t_onehot, loss=self.loss,
                                              loss_hessian=self.loss_hessian)
        self._op.compute_kronecker_factors()
        self._pending = None
        self._set_inverse()
        self.stats["curvature_updates"] += 1

    def direction(self, x: Tensor, t_onehot: Tensor) -> tuple[list[Tensor], Tensor, list[Tensor]]:
        """(Δθ = (sK + λI)⁻¹ g, pre-update loss, g); refreshes the factors first when due."""
        if (self._op is None and self._pending is None) or self.steps % self.curvature_every == 0:
            self.refresh(x, t_onehot)
        elif self._pending is not None:
            self._materialise()
        x, t_onehot = self._batch(x, t_onehot)
        ell, grads = loss_and_grad(self.model, x, t_onehot, self.loss)
        with torch.no_grad():
            delta = [d / self._scale for d in self._inverse @ grads]
        return delta, ell, grads

    def step(self, x: Tensor, t_onehot: Tensor) -> float:
        delta, ell, grads = self.direction(x, t_onehot)
        if self.step_rule != "plain":
            xb, tb = self._batch(x, t_onehot)
            params = self.model.trainable()
            mv = ggn_batch_matvec(self.model, xb, tb, loss=self.loss, loss_hessian=self.loss_hessian)
            prev = self._previous if self.step_rule == "momentum" else None
            with torch.no_grad():
                upd, alpha, mu = quadratic_step(mv, flat(grads), -flat(delta), self.damping, prev)
            # _apply subtracts lr·(d + weight_decay·θ): d = −δ moves θ by +lr·δ.
            delta = unflat(-upd, params)
            self.stats["kfac_alpha_last"], self.stats["kfac_mu_last"] = alpha, mu
            if self.step_rule == "momentum":
                self._previous = self.lr * upd
        self._apply(delta)
        self.steps += 1
        return float(ell)

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        if self._previous is not None:
            out["previous"] = self._previous
        if self._pending is not None:
            out["kfac"] = dict(self._pending)
        elif self._op is not None:
            st = self._op.state_dict()
            out["kfac"] = {"input_covariances": st["input_covariances"],
                           "gradient_covariances": st["gradient_covariances"], "scale": self._scale}
        return out

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._op, self._inverse = None, None
        prev = state.get("previous")
        self._previous = None if prev is None else prev.to(self.model.readout.device)
        k = state.get("kfac")
        if k is None:
            self._pending = None
            return
        dev = self.model.readout.device
        self._pending = {"input_covariances": {n: v.to(dev) for n, v in k["input_covariances"].items()},
                         "gradient_covariances": {n: v.to(dev) for n, v in k["gradient_covariances"].items()},
                         "scale": float(k["scale"])}

    def _materialise(self) -> None:
        """The loaded factors as an operator over no data (curvlinops' own state format) and their damped inverse."""
        k, self._pending = self._pending, None
        x = torch.zeros(1, self.model.d_in, dtype=self.model.readout.dtype, device=self.model.readout.device)
        t = torch.zeros(1, self.model.n_classes, dtype=x.dtype, device=x.device)
        op, _ = kfac_operator(self.view, self.model.trainable(), x, t, loss=self.loss, loss_hessian=self.loss_hessian)
        st = op.state_dict()
        st.update(input_covariances=k["input_covariances"], gradient_covariances=k["gradient_covariances"])
        with warnings.catch_warnings():  # "overwrites the model's parameters": with their own current values
            warnings.simplefilter("ignore")
            op.load_state_dict(st)
        self._op, self._scale = op, float(k["scale"])
        self._set_inverse()
