"""Training-dynamics diagnostics logged into the metrics rows (DESIGN §4): NTK similarity/velocity on a fixed probe
set, per-block CKA to initialisation, per-half-layer weight similarity to initialisation."""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from revgn_cli.metrics.cka import cka_prepared, prepare_cka
from revgn_cli.metrics.ntk import empirical_ntk, kernel_distance, kernel_similarity, probe_similarity
from revgn_cli.metrics.weights import half_layer_names, initial_weights, weight_similarity
from revgn_cli.models.stamp import Stamp

__all__ = ["DiagnosticsTracker"]

CKAMode = Literal["linear", "debiased", "off"]


class DiagnosticsTracker:
    """Keeps the reference state at initialisation and turns a model into one row of diagnostics.

    On construction, at the model's *current* (initial) parameters, it records Θ_0 = empirical NTK on ``probe_x``
    (kept in memory, never written per step), the block outputs [X_1..X_L] on ``cka_x`` and every half-layer's W.

    Args:
        model: a RevMLP (``block_outputs``, ``half_layers``); the probe tensors are moved to its device and dtype.
        probe_x: [P, d] NTK probe inputs (DESIGN default P = 100 training samples) → Θ ∈ ℝ^{PC×PC}.
        cka_x: [Q, d] CKA inputs (DESIGN default Q = 1024 fixed training samples).
        ntk / cka / weights: switch the three groups off (their columns are then absent from the row).
        cka: "linear" (biased centred-Gram HSIC) or "debiased" (Song et al. 2012's unbiased HSIC, Q ≥ 4).
        probe_seed: seed of the fixed Gaussian probe vector u ∈ ℝ^{PC} of ``ntk_probe_sim``.

    A resumed run must construct the tracker with the same probe tensors and then ``load_state_dict``; the reference
    state, the previous Θ and its epoch are restored, so ``compute`` continues bit-for-bit.
    """

    def __init__(
        self,
        model: nn.Module,
        probe_x: Tensor,
        cka_x: Tensor,
        *,
        ntk: bool = True,
        cka: CKAMode = "linear",
        weights: bool = True,
        probe_seed: int = 0,
    ):
        if cka not in ("linear", "debiased", "off"):
            raise ValueError(f"cka must be 'linear', 'debiased' or 'off', got {cka!r}")
        p = next(model.parameters())
        self.ntk, self.cka, self.weights = bool(ntk), cka, bool(weights)
        self.probe_x = probe_x.detach().to(p.device, p.dtype) if self.ntk else None
        self.cka_x = cka_x.detach().to(p.device, p.dtype) if cka != "off" else None
        if self.cka == "debiased" and self.cka_x.shape[0] < 4:
            raise ValueError(f"debiased CKA needs at least 4 CKA inputs, got {self.cka_x.shape[0]}")
        self.n_blocks = len(model.blocks)
        self._hl_names = half_layer_names(model)
        with torch.no_grad():
            self.theta0 = empirical_ntk(model, self.probe_x) if self.ntk else None
            self.reps0 = [r.detach().clone() for r in model.block_outputs(self.cka_x)] if self.cka_x is not None else []
        self.theta_prev: Tensor | None = None
        self.epoch_prev: float | None = None
        # Fixed probe u for the paper's sketch; its own generator so the global RNG stream is untouched. Drawn on the
        # host (the same u on every device) and moved to Θ's device, which probe_similarity multiplies it with.
        self.u = (
            torch.randn(self.theta0.shape[0], generator=torch.Generator().manual_seed(probe_seed), dtype=torch.float64,
                        device="cpu").to(self.theta0.device)
            if self.ntk
            else None
        )
        self.w0 = initial_weights(model) if self.weights else []
        # Lets the first compute() see that the parameters are still the ones above (then Θ_0 and the prepared
        # init reps *are* its NTK and CKA inputs).
        self._at_init: Stamp | None = Stamp(model.parameters())
        self._prepare()

    def _prepare(self) -> None:
        # Derived, cached state (centred float64 init reps and their self terms) — rebuilt on load_state_dict.
        self._cka_ref = [prepare_cka(r) for r in self.reps0]

    def columns(self) -> list[str]:
        """The keys ``compute`` returns, in order."""
        cols = ["ntk_sim_init", "ntk_dist_init", "ntk_velocity", "ntk_probe_sim"] if self.ntk else []
        if self.cka != "off":
            cols += [f"cka_block{k}" for k in range(1, self.n_blocks + 1)]
        if self.weights:
            cols += [f"wcos_{n}" for n in self._hl_names] + [f"wnorm_ratio_{n}" for n in self._hl_names]
        return cols

    def cka_outputs(self, model: nn.Module) -> list[Tensor] | None:
        """[X_1..X_L] of ``model`` on the CKA inputs (None when CKA is off): what ``compute(reps=...)`` takes, for a
        caller that also wants the logits of those inputs (``model.logits(reps[-1])``) from the same forward."""
        if self.cka_x is None:
            return None
        with torch.no_grad():
            return model.block_outputs(self.cka_x)

    def compute(self, model: nn.Module, epoch: float, reps: list[Tensor] | None = None) -> dict[str, float]:
        """One row of diagnostics at the model's current parameters; ``epoch`` may be fractional.

        ntk_sim_init = ⟨Θ_0, Θ_t⟩/(‖Θ_0‖‖Θ_t‖); ntk_dist_init = 1 − that; ntk_velocity = kernel distance between Θ_t
        and the Θ of the previous ``compute`` call divided by the epochs between them (NaN at the first call, or when
        no epochs elapsed); ntk_probe_sim = cos(Θ_0 u, Θ_t u); cka_block{k} = CKA(X_k now, X_k at init) on cka_x;
        wcos_/wnorm_ratio_{F,G}{k} per half-layer W. Updates the "previous Θ" state.

        reps: ``cka_outputs(model)`` if the caller already ran it at the current parameters, else None.
        """
        row: dict[str, float] = {}
        epoch = float(epoch)
        # The first row of a fresh run is taken at the construction parameters: reuse, don't recompute, Θ_0 and the
        # prepared init reps (the reference itself; its comparison with itself is exactly 1).
        at_init = self._at_init is not None and self._at_init.matches(model.parameters())
        self._at_init = None
        with torch.no_grad():
            if self.ntk:
                theta = self.theta0 if at_init else empirical_ntk(model, self.probe_x)
                row["ntk_sim_init"] = kernel_similarity(self.theta0, theta)
                row["ntk_dist_init"] = kernel_distance(self.theta0, theta)
                dt = None if self.epoch_prev is None else epoch - self.epoch_prev
                row["ntk_velocity"] = kernel_distance(self.theta_prev, theta) / dt if dt and dt > 0 else math.nan
                row["ntk_probe_sim"] = probe_similarity(self.theta0, theta, self.u)
                self.theta_prev, self.epoch_prev = theta, epoch
            if self.cka != "off":
                if at_init:
                    now = self._cka_ref
                else:
                    if reps is None:
                        reps = model.block_outputs(self.cka_x)  # the only forward pass for CKA
                    now = [prepare_cka(r) for r in reps]
                debiased = self.cka == "debiased"
                for k, (ref, r) in enumerate(zip(self._cka_ref, now), start=1):
                    row[f"cka_block{k}"] = cka_prepared(ref, r, debiased=debiased)
            if self.weights:
                row.update(weight_similarity(model, self.w0))
        return row

    def state_dict(self) -> dict[str, Any]:
        """Θ_0, previous Θ and its epoch, init block outputs and weights, probe u, and the switches (cloned)."""

        def c(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        return {
            "config": {"ntk": self.ntk, "cka": self.cka, "weights": self.weights},
            "theta0": c(self.theta0),
            "theta_prev": c(self.theta_prev),
            "epoch_prev": self.epoch_prev,
            "u": c(self.u),
            "reps0": [c(r) for r in self.reps0],
            "w0": [c(w) for w in self.w0],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; the switches must match this tracker's, tensors go to the probe device."""
        cfg = {"ntk": self.ntk, "cka": self.cka, "weights": self.weights}
        if state.get("config") != cfg:
            raise ValueError(f"tracker state was saved with {state.get('config')}, this tracker uses {cfg}")

        def same(old: Tensor | None, new: Tensor | None, what: str) -> Tensor | None:
            if new is None:
                return None
            if old is not None and old.shape != new.shape:
                raise ValueError(f"{what}: saved shape {tuple(new.shape)} != expected {tuple(old.shape)}")
            # A checkpoint is read onto the CPU: its tensors go to this tracker's device (a CUDA run resumed on the
            # CPU or the reverse); ``copy=True`` so the tracker never aliases the loaded dict.
            return new.detach().to(old.device if old is not None else new.device, copy=True)

        if len(state["reps0"]) != len(self.reps0) or len(state["w0"]) != len(self.w0):
            raise ValueError("saved tracker state is for a different number of blocks")
        self.theta0 = same(self.theta0, state["theta0"], "theta0")
        self.theta_prev = same(self.theta0, state["theta_prev"], "theta_prev")
        self.epoch_prev = None if state["epoch_prev"] is None else float(state["epoch_prev"])
        self.u = same(self.u, state["u"], "u")
        self.reps0 = [same(o, n, f"reps0[{i}]") for i, (o, n) in enumerate(zip(self.reps0, state["reps0"]))]
        self.w0 = [same(o, n, f"w0[{i}]") for i, (o, n) in enumerate(zip(self.w0, state["w0"]))]
        self._at_init = None  # a restored reference is not necessarily the model's current parameters
        self._prepare()
