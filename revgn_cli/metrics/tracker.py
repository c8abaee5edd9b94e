"""Training-dynamics diagnostics logged into the metrics rows (docs/results.md): NTK similarity/velocity on a fixed probe
set, per-block CKA to initialisation, per-half-layer weight similarity to initialisation."""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from revgn_cli.metrics.cka import cka_prepared, prepare_cka
from revgn_cli.metrics.ntk import empirical_ntk, kernel_distance, kernel_similarity, probe_similarity
from revgn_cli.metrics.ntk_feature import feature_ntk_apply, feature_probes as draw_feature_probes, hutchinson_alignment
from revgn_cli.metrics.weights import half_layer_names, initial_weights, weight_similarity
from revgn_cli.models.stamp import Stamp

__all__ = ["DiagnosticsTracker", "half_coupling_outputs", "residual_branch_outputs"]

CKAMode = Literal["linear", "debiased", "off"]


def residual_branch_outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The residual-branch outputs of every coupling block, F_k(x₂) and G_k(y₁) (y₁ = x₁ + F_k(x₂)): 2L tensors
    [n, d/2] in the order F1, G1, F2, G2, … — what each branch adds, not the state it adds it to."""
    outs = []
    for blk in model.blocks:
        a, b = x[:, : blk.half], x[:, blk.half:]
        f = blk.F(b)
        y1 = a + f
        g = blk.G(y1)
        outs += [f, g]
        x = torch.cat([y1, b + g], dim=1)
    return outs


def half_coupling_outputs(model: nn.Module, x: Tensor) -> list[Tensor]:
    """The state [y₁, b] after F and [y₁, y₂] after G of every coupling block (y₁ = a + F(b), y₂ = b + G(y₁)):
    2L tensors [n, d] in the order F1, G1, F2, G2, …; the G entries are the block outputs X_k, the last is X_L.

    The official code's CKA hooks every half-coupling (ReversibleLinear) and concatenates its two output halves:
    this is that list, from one forward pass.
    """
    outs = []
    for blk in model.blocks:
        a, b = x[:, : blk.half], x[:, blk.half:]
        y1 = a + blk.F(b)
        outs.append(torch.cat([y1, b], dim=1))
        x = torch.cat([y1, b + blk.G(y1)], dim=1)
        outs.append(x)
    return outs


class DiagnosticsTracker:
    """Keeps the reference state at initialisation and turns a model into one row of diagnostics.

    On construction, at the model's *current* (initial) parameters, it records Θ_0 = empirical NTK on ``probe_x``
    (kept in memory, never written per step), K_0 u_i of the feature-space NTK sketch on ``feature_x``, the state after
    every half-coupling (F then G of each block; G's is the block output X_k) on ``cka_x`` and every half-layer's W.

    Args:
        model: a RevMLP (``block_outputs``, ``half_layers``); the probe tensors are moved to its device and dtype.
        probe_x: [P, d] NTK probe inputs (default P = 100 training samples) → Θ ∈ ℝ^{PC×PC}.
        cka_x: [Q, d] CKA inputs (default Q = 1024 fixed training samples).
        ntk / cka / weights: switch the three groups off (their columns are then absent from the row).
        cka: "linear" (biased centred-Gram HSIC) or "debiased" (Song et al. 2012's unbiased HSIC, Q ≥ 4).
        probe_seed: seed of the fixed Gaussian probe vector u ∈ ℝ^{PC} of ``ntk_probe_sim``.
        feature_x: [n, d] probe inputs of the paper's feature-space NTK sketch (``revgn_cli.metrics.ntk_feature``;
            official default n = 1024 training samples), or None for no ``ntk_feat_*`` columns.
        feature_seed / feature_probes: P = ``feature_probes`` standard Gaussian probes u_i of shape n×d, probe i from
            a host generator seeded with ``feature_seed + i`` (``ntk_feature.feature_probes``).

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
        feature_x: Tensor | None = None,
        feature_seed: int = 0,
        feature_probes: int = 8,
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
        self.feat_x = feature_x.detach().to(p.device, p.dtype) if feature_x is not None else None
        self.feat_u = (draw_feature_probes((self.feat_x.shape[0], model.d_in), feature_probes, seed=feature_seed,
                                           device=p.device, dtype=p.dtype) if self.feat_x is not None else None)
        with torch.no_grad():
            self.theta0 = empirical_ntk(model, self.probe_x) if self.ntk else None
            self.reps0 = [r.detach().clone() for r in half_coupling_outputs(model, self.cka_x)] \
                if self.cka_x is not None else []
            self.branch0 = [r.detach().clone() for r in residual_branch_outputs(model, self.cka_x)] \
                if self.cka_x is not None else []
        self.feat0 = self._feature_kernel(model) if self.feat_x is not None else None
        self.feat_prev: Tensor | None = None
        self.feat_epoch_prev: float | None = None
        self.theta_prev: Tensor | None = None
        self.epoch_prev: float | None = None
        # Fixed probe u of the logit-kernel sketch ntk_probe_sim; its own generator so the global RNG stream is
        # untouched. Drawn on the host (the same u on every device) and moved to Θ's device.
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

    def _feature_kernel(self, model: nn.Module) -> Tensor:
        """[P, n, d]: K_t u_i of the feature-space NTK for every probe (one VJP and one JVP each)."""
        return torch.stack([feature_ntk_apply(model, self.feat_x, u) for u in self.feat_u])

    def _prepare(self) -> None:
        # Derived, cached state (centred float64 init reps and their self terms) — rebuilt on load_state_dict.
        self._cka_ref = [prepare_cka(r) for r in self.reps0]
        self._branch_ref = [prepare_cka(r) for r in self.branch0]

    def columns(self) -> list[str]:
        """The keys ``compute`` returns, in order."""
        cols = ["ntk_sim_init", "ntk_dist_init", "ntk_velocity", "ntk_probe_sim"] if self.ntk else []
        if self.feat_x is not None:
            cols += ["ntk_feat_sim_init", "ntk_feat_sim_spread", "ntk_feat_velocity"]
        if self.cka != "off":
            ks = range(1, self.n_blocks + 1)
            cols += [f"cka_block{k}" for k in ks] + [f"cka_{h}{k}" for k in ks for h in "FG"]
            cols += [f"cka_res{h}{k}" for k in ks for h in "FG"]
        if self.weights:
            cols += [f"wcos_{n}" for n in self._hl_names] + [f"wnorm_ratio_{n}" for n in self._hl_names]
        return cols

    def cka_outputs(self, model: nn.Module) -> list[Tensor] | None:
        """The 2L half-coupling states of ``model`` on the CKA inputs (``half_coupling_outputs``; the last is X_L),
        or None when CKA is off: what ``compute(reps=...)`` takes, for a caller that also wants the logits of those
        inputs (``model.logits(reps[-1])``) from the same forward."""
        if self.cka_x is None:
            return None
        with torch.no_grad():
            return half_coupling_outputs(model, self.cka_x)

    def compute(self, model: nn.Module, epoch: float, reps: list[Tensor] | None = None) -> dict[str, float]:
        """One row of diagnostics at the model's current parameters; ``epoch`` may be fractional.

        ntk_sim_init = ⟨Θ_0, Θ_t⟩/(‖Θ_0‖‖Θ_t‖); ntk_dist_init = 1 − that; ntk_velocity = kernel distance between Θ_t
        and the Θ of the previous ``compute`` call divided by the epochs between them (NaN at the first call, or when
        no epochs elapsed); ntk_probe_sim = cos(Θ_0 u, Θ_t u); ntk_feat_sim_init = the Hutchinson alignment of K_0
        and K_t over the feature probes (``hutchinson_alignment``), ntk_feat_sim_spread = the SD of the per-probe
        cosines, ntk_feat_velocity = (1 − alignment(K_prev, K_t)) per epoch between logged points;
        cka_F{k} / cka_G{k} = CKA(state after block k's F / G half-coupling now, at init) on cka_x, and
        cka_block{k} = cka_G{k} (the block output X_k); cka_resF{k} / cka_resG{k} = CKA(F_k(x₂) / G_k(y₁) now, at
        init), the residual branches themselves; wcos_/wnorm_ratio_{F,G}{k} per half-layer W. Updates the
        "previous Θ" state.

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
        if self.feat_x is not None:
            ku = self.feat0 if at_init else self._feature_kernel(model)
            row["ntk_feat_sim_init"], row["ntk_feat_sim_spread"] = hutchinson_alignment(self.feat0, ku)
            dt = None if self.feat_epoch_prev is None else epoch - self.feat_epoch_prev
            row["ntk_feat_velocity"] = ((1.0 - hutchinson_alignment(self.feat_prev, ku)[0]) / dt
                                        if dt and dt > 0 else math.nan)
            self.feat_prev, self.feat_epoch_prev = ku, epoch
        with torch.no_grad():
            if self.cka != "off":
                if at_init:
                    now = self._cka_ref
                else:
                    if reps is None:
                        reps = half_coupling_outputs(model, self.cka_x)  # the only forward pass for CKA
                    now = [prepare_cka(r) for r in reps]
                debiased = self.cka == "debiased"
                vals = [cka_prepared(ref, r, debiased=debiased) for ref, r in zip(self._cka_ref, now)]
                for k in range(1, self.n_blocks + 1):
                    row[f"cka_block{k}"] = vals[2 * k - 1]  # the G state of block k is its output X_k
                for i, v in enumerate(vals):
                    row[f"cka_{'FG'[i % 2]}{i // 2 + 1}"] = v
                # Residual branches: one more forward on the CKA probe (the states above do not contain F(x₂), G(y₁)).
                now_b = self._branch_ref if at_init else [prepare_cka(r) for r in
                                                          residual_branch_outputs(model, self.cka_x)]
                for i, (ref, r) in enumerate(zip(self._branch_ref, now_b)):
                    row[f"cka_res{'FG'[i % 2]}{i // 2 + 1}"] = cka_prepared(ref, r, debiased=debiased)
            if self.weights:
                row.update(weight_similarity(model, self.w0))
        return row

    def _switches(self) -> dict[str, Any]:
        n_feat = None if self.feat_x is None else int(self.feat_x.shape[0])
        n_probes = None if self.feat_u is None else int(self.feat_u.shape[0])
        return {"ntk": self.ntk, "cka": self.cka, "weights": self.weights, "feature_probe": n_feat,
                "feature_probes": n_probes}

    def state_dict(self) -> dict[str, Any]:
        """Θ_0, previous Θ and its epoch, init block outputs and weights, probe u, K_0u_i and the previous K u_i, and
        the switches (cloned). The feature probes u_i are not stored: they are redrawn from their seeds."""

        def c(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().clone()

        return {
            "config": self._switches(),
            "theta0": c(self.theta0),
            "feat0": c(self.feat0),
            "feat_prev": c(self.feat_prev),
            "feat_epoch_prev": self.feat_epoch_prev,
            "theta_prev": c(self.theta_prev),
            "epoch_prev": self.epoch_prev,
            "u": c(self.u),
            "reps0": [c(r) for r in self.reps0],
            "branch0": [c(r) for r in self.branch0],
            "w0": [c(w) for w in self.w0],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``; the switches must match this tracker's, tensors go to the probe device."""
        cfg = self._switches()
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
        self.feat0 = same(self.feat_u, state["feat0"], "feat0")
        self.feat_prev = same(self.feat_u, state["feat_prev"], "feat_prev")
        self.feat_epoch_prev = None if state["feat_epoch_prev"] is None else float(state["feat_epoch_prev"])
        self.reps0 = [same(o, n, f"reps0[{i}]") for i, (o, n) in enumerate(zip(self.reps0, state["reps0"]))]
        if len(state.get("branch0", [])) != len(self.branch0):
            raise ValueError("saved tracker state has no residual-branch reference (saved by an older version)")
        self.branch0 = [same(o, n, f"branch0[{i}]") for i, (o, n) in enumerate(zip(self.branch0, state["branch0"]))]
        self.w0 = [same(o, n, f"w0[{i}]") for i, (o, n) in enumerate(zip(self.w0, state["w0"]))]
        self._at_init = None  # a restored reference is not necessarily the model's current parameters
        self._prepare()
