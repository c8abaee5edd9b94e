"""Iterative linearisation (docs/studies.md; Goldwaser & Ge, arXiv 2211.12345): train the first-order Taylor model

    f_lin(x; θ) = f(x; θ_s) + J(x; θ_s)(θ − θ_s)

with an inner optimiser (SGD or Adam), and every K steps move the linearisation point θ_s ← θ (a "feature update").
K = 1 is ordinary training, K = None (∞) trains the tangent model at the starting point for ever (the NTK model at
init, or about θ_t for a spawned continuation — Fort et al. 2020's data-dependent NTK).

How one step is computed (no explicit Jacobian):
* ``torch.func.jvp`` of ``functional_call(model, θ_s)`` along the tangent Δ = θ − θ_s gives, in one forward pass,
  the primal logits f(x; θ_s) and J(x; θ_s)Δ, so z = f(x; θ_s) + JΔ = f_lin(x; θ).
* The gradient of the linearised loss is ∇_θ ℓ(f_lin(θ)) = J(θ_s)ᵀ ∇_z ℓ(z) — the same whether one differentiates
  through the jvp's tangent or, as here (cheaper: no backward through the tangent computation), pulls ∇_z ℓ back
  through the jvp's *primal* output f(x; θ_s), whose autograd graph hangs off a copy of θ_s that requires grad.
* At θ = θ_s (the first step after every re-linearisation, i.e. every step when K = 1) the tangent model and the
  network coincide in value and gradient exactly (Δ = 0), so the step is plain backprop through the network; with
  the inner optimiser built exactly as ``make_optimizer`` builds plain SGD/Adam, K = 1 reproduces ordinary training
  bit-for-bit (tests/test_linearised.py).

The model's nn.Parameters always hold θ (the inner optimiser updates them in place). ``model(x)`` is therefore the
true network at θ, *not* the model being trained: metrics of a linearised run evaluate ``eval_model()``, the
callable tangent model f_lin(·; θ) (the training loop does so through ``revgn_cli.train.evaluate.eval_network``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp

from revgn_cli.optim.losses import batch_loss

__all__ = ["LinearisedStepper", "LinearisedModel", "INNER", "make_inner_optimizer"]

INNER = ("sgd", "adam")


def make_inner_optimizer(params: list[Tensor], inner: str, lr: float, *, momentum: float = 0.0,
                         beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                         weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The torch optimiser of the inner loop, constructed exactly like ``make_optimizer``'s plain SGD/Adam."""
    if inner == "adam":
        return torch.optim.Adam(params, lr=float(lr), betas=(float(beta1), float(beta2)), eps=float(eps),
                                weight_decay=weight_decay)
    if inner == "sgd":
        return torch.optim.SGD(params, lr=float(lr), momentum=float(momentum), weight_decay=weight_decay)
    raise ValueError(f"unknown inner optimizer {inner!r}; valid: {', '.join(INNER)}")


class LinearisedModel(nn.Module):
    """The tangent model f_lin(·; θ) about θ_s as a callable module (evaluation only, no autograd graph).

    Holds references, not copies: it always evaluates at the network's *current* parameters θ and the stepper's
    *current* anchor θ_s, so one instance stays valid across steps and re-linearisations.
    """

    def __init__(self, stepper: "LinearisedStepper"):
        super().__init__()
        self._stepper = [stepper]  # a list: not registered as a submodule (no parameters of its own)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        s = self._stepper[0]
        z0, dz = s._tangent(x, s._delta(), anchor_grad=False)
        return z0 + dz


class LinearisedStepper:
    """Train f_lin with an inner SGD/Adam; re-linearise every ``relinearise_every`` (K) steps (None = never).

    Args:
        model: the network (a RevMLP or any module whose nn.Parameters are the trained tensors and whose
            samples are independent); its parameters hold θ and are updated in place.
        inner: "sgd" | "adam"; lr and ``inner_kwargs`` (momentum; beta1, beta2, eps; weight_decay) as for the
            plain optimisers.
        relinearise_every: K ≥ 1, or None for ∞.
        loss: "ce" | "mse".

    ``.step(x, t)`` returns the pre-update mean batch loss of the *linearised* model; ``.stats`` has
    ``feature_updates`` (re-linearisations so far: ⌊steps / K⌋, 0 for K = ∞). ``state_dict`` carries the inner
    optimiser's state, θ_s and the counters, so a resumed run continues bit-for-bit.
    """

    def __init__(self, model: nn.Module, inner: str = "sgd", lr: float = 0.1, relinearise_every: int | None = None,
                 loss: str = "ce", **inner_kwargs: Any):
        if relinearise_every is not None and int(relinearise_every) < 1:
            raise ValueError(f"relinearise_every must be >= 1 or None (= infinity), got {relinearise_every}")
        self.model, self.loss, self.inner = model, loss, str(inner)
        self.K = None if relinearise_every is None else int(relinearise_every)
        self._names = [n for n, _ in model.named_parameters()]
        self._params = [p for _, p in model.named_parameters()]
        # Same parameter order as make_optimizer's plain optimisers (model.trainable() when the model has it).
        opt_params = list(model.trainable()) if hasattr(model, "trainable") else self._params
        self.optimizer = make_inner_optimizer(opt_params, self.inner, lr, **inner_kwargs)
        self.anchor: list[Tensor] = [p.detach().clone() for p in self._params]
        self.steps = 0  # updates taken
        self.since = 0  # updates since the last re-linearisation (0 ⇔ θ = θ_s)
        self.feature_updates = 0
        self._eval_model = LinearisedModel(self)

    # --- the tangent model ----------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, float]:
        return {"feature_updates": float(self.feature_updates)}

    def _delta(self) -> dict[str, Tensor]:
        return {n: (p.detach() - a) for n, p, a in zip(self._names, self._params, self.anchor)}

    def _tangent(self, x: Tensor, delta: Mapping[str, Tensor], anchor_grad: bool) -> tuple:
        """(f(x; θ_s), J(x; θ_s)·delta) by one torch.func.jvp; with ``anchor_grad`` also the anchor leaves whose
        autograd graph the primal output hangs from (for the pull-back Jᵀg)."""
        buffers = dict(self.model.named_buffers())
        leaves = {n: (a.detach().requires_grad_(True) if anchor_grad else a) for n, a in zip(self._names, self.anchor)}

        def f(p: dict[str, Tensor]) -> Tensor:
            return functional_call(self.model, (p, buffers), (x,))

        z0, dz = jvp(f, (leaves,), (dict(delta),))
        return (z0, dz, leaves) if anchor_grad else (z0, dz)

    def linearisation_point(self) -> dict[str, Tensor]:
        """{name: θ_s} — a copy of the current anchor, where f_lin's Jacobian is taken."""
        return {n: a.detach().clone() for n, a in zip(self._names, self.anchor)}

    def eval_model(self) -> nn.Module:
        """f_lin(·; θ) as a module (no_grad): what a linearised run's loss/accuracy metrics evaluate."""
        return self._eval_model

    def linearised_logits(self, x: Tensor) -> Tensor:
        """f_lin(x; θ) at the current θ and θ_s (no autograd graph)."""
        return self._eval_model(x)

    # --- one update -------------------------------------------------------------------------------------------
    def step(self, x: Tensor, t_onehot: Tensor) -> float:
        ref = self._params[0]
        x = x.to(device=ref.device, dtype=ref.dtype)
        t_onehot = t_onehot.to(device=ref.device, dtype=ref.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        if self.since == 0:
            # θ = θ_s: f_lin and f agree in value and gradient exactly — plain backprop (K = 1 ≡ ordinary training).
            ell = batch_loss(self.model(x), t_onehot, self.loss)
            ell.backward()
        else:
            z0, dz, leaves = self._tangent(x, self._delta(), anchor_grad=True)
            z = (z0.detach() + dz.detach()).requires_grad_(True)
            ell = batch_loss(z, t_onehot, self.loss)
            (gz,) = torch.autograd.grad(ell, z)
            grads = torch.autograd.grad(z0, [leaves[n] for n in self._names], gz, allow_unused=True)
            for p, g in zip(self._params, grads):
                p.grad = torch.zeros_like(p) if g is None else g.detach()
        self.optimizer.step()
        self.steps += 1
        self.since += 1
        if self.K is not None and self.since >= self.K:
            self.relinearise()
        return float(ell.detach())

    def relinearise(self) -> None:
        """θ_s ← θ (a feature update)."""
        with torch.no_grad():
            for a, p in zip(self.anchor, self._params):
                a.copy_(p.detach())
        self.since = 0
        self.feature_updates += 1

    # --- checkpoints --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"inner_name": self.inner, "K": self.K, "inner": self.optimizer.state_dict(),
                "anchor": [a.detach().clone() for a in self.anchor], "steps": self.steps, "since": self.since,
                "feature_updates": self.feature_updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("inner_name", self.inner) != self.inner:
            raise ValueError(f"state was saved with inner={state.get('inner_name')!r}, this stepper uses {self.inner!r}")
        anchor = state["anchor"]
        if len(anchor) != len(self.anchor) or any(a.shape != b.shape for a, b in zip(anchor, self.anchor)):
            raise ValueError("saved linearisation point does not match the model's parameters")
        self.optimizer.load_state_dict(state["inner"])
        with torch.no_grad():
            for a, b in zip(self.anchor, anchor):
                a.copy_(b.to(device=a.device, dtype=a.dtype))
        self.steps, self.since = int(state["steps"]), int(state["since"])
        self.feature_updates = int(state["feature_updates"])
