"""The exact Gauss-Newton step on a RevMLP (docs/gn.md; paper §4, Thm 4.3 and Alg. 1).

Per batch (X, T):
 1. Z = f(X) without an autograd graph, loss ℓ = CE(Z, T).
 2. ε_Z = output_residual(Z, T)                         ∈ ℝ^{n×C}
 3. ε = ε_Z Uᵀ                                          ∈ ℝ^{n×d}   (U orthonormal columns: Uᵀ = U⁺)
 4. One forward-mode JVP (torch.func.jvp) of the inverse network X_L ↦ (X_{L−1}, …, X_1) along ε gives every
    block's target t_l = (∂X_l/∂X_L) ε — the change of block l's output that alone reproduces ε at X_L, because
    ∂X_l/∂X_L = (∂X_L/∂X_l)⁻¹ — and, as auxiliary outputs, the activations Σ the solves need (no stored forward
    activations, no Jacobian).
 5. Block l, t_l = [t₁, t₂]:  ΔW̃_F = Σ_F⁺ t₁;  m = G'(y₁)·(Σ_F ΔW̃_F);  ΔW̃_G = Σ_G⁺ (t₂ − m).
 6. combine: sum (J Δθ = L·ε; the paper's code) or mean (J Δθ = ε, a true right inverse). θ ← θ − α Δθ.
Cost O(L n d h + L n² h); memory O(L n h) for the activations of step 4 plus O(|θ|) for Δθ.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping, MutableMapping

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from revgn_cli.models.revmlp import CouplingBlock, HalfLayer, RevMLP
from revgn_cli.models.stamp import Stamp
from revgn_cli.optim.losses import batch_loss, output_residual
from revgn_cli.optim.pinv import FALLBACK_COUNTER, SOLVERS, Regularizer, pinv_solve

__all__ = ["gn_direction", "GaussNewton", "COMBINES"]

COMBINES = ("sum", "mean")


# ---------------------------------------------------------------------------------------------------------------
# Step 4: the inverse pass with the activations it reconstructs.


def _factored(hl: HalfLayer, n: int) -> bool:
    """A linear half-layer with an expansion has Σ = [zC, 1] of rank ≤ d/2+1: solve it on that small side."""
    return hl.linear and hl.expand is not None and hl.width + 1 < min(n, hl.hidden + 1)


class _ConstMatmul(torch.autograd.Function):
    """z ↦ z @ M for a matrix M that carries no tangent (trained weights, the fixed expansion C).

    Its forward-mode derivative is dz @ M. torch's own mm JVP rule also multiplies z by M's zero tangent, which
    made the torch.func.jvp of the inverse pass ~1.6× slower than needed (measured; 8 instead of 4 matmuls per
    ReLU half-layer).
    """

    @staticmethod
    def forward(z: Tensor, m: Tensor) -> Tensor:
        return z @ m

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.m = inputs[1]

    @staticmethod
    def jvp(ctx: Any, dz: Tensor, dm: Tensor | None) -> Tensor:
        return dz @ ctx.m


def _apply_half(hl: HalfLayer, z: Tensor, n: int) -> tuple[Tensor, Tensor | None]:
    """(F(z), φ = σ(zC) or None): φ is kept only for half-layers solved on the n-side (ReLU, or no bottleneck).

    A factored (linear) half-layer is evaluated as z (C Wᵀ) + b: (d/2)² work per row instead of d·h, and its
    solve is re-expressed from z alone (see _factor_linear).
    """
    if _factored(hl, n):
        return _ConstMatmul.apply(z, hl.linear_map()) + hl.bias, None
    feats = hl.act(z if hl.expand is None else _ConstMatmul.apply(z, hl.expand))
    return _ConstMatmul.apply(feats, hl.weight.T) + hl.bias, feats


def _features(model: RevMLP, x: Tensor) -> Tensor:
    """X_L = model.features(x), with the linear half-layers evaluated as z (C Wᵀ) (same function, fewer flops)."""
    n = x.shape[0]
    for blk in model.blocks:
        w = blk.half
        y1 = x[:, :w] + _apply_half(blk.F, x[:, w:], n)[0]
        x = torch.cat([y1, x[:, w:] + _apply_half(blk.G, y1, n)[0]], dim=1)
    return x


def _invert_block(blk: CouplingBlock, y: Tensor, n: int) -> tuple[Tensor, tuple]:
    """X_{l−1} from X_l = y (b = y₂ − G(y₁), a = y₁ − F(b)), plus what the solves reuse: (b, φ_F, y₁, φ_G)."""
    w = blk.half
    y1, y2 = y[:, :w], y[:, w:]
    g_out, feat_g = _apply_half(blk.G, y1, n)
    b = y2 - g_out
    f_out, feat_f = _apply_half(blk.F, b, n)
    return torch.cat([y1 - f_out, b], dim=1), (b, feat_f, y1, feat_g)


def _targets_and_activations(model: RevMLP, xl: Tensor, eps: Tensor) -> list[tuple[Tensor, tuple]]:
    """[(t_l, acts_l)] for l = 1…L (block order), from ONE torch.func.jvp of the inverse of blocks L…2.

    t_L = ε. Block 1's own inverse is only needed for its activations (its input X_0's tangent is unused), so it
    is run on the primal X_1 outside the JVP, saving one block of tangent work.
    """
    n = xl.shape[0]
    blocks = list(model.blocks)

    def inverse_chain(y: Tensor) -> tuple[tuple[Tensor, ...], list[tuple]]:
        outs, acts = [], []
        for blk in reversed(blocks[1:]):
            y, act = _invert_block(blk, y, n)
            outs.append(y)
            acts.append(act)
        return tuple(outs), acts

    if len(blocks) > 1:
        outs, tangents, acts = torch.func.jvp(inverse_chain, (xl,), (eps,), has_aux=True)
    else:
        outs, tangents, acts = (xl,), (), []
    # outs = (X_{L−1}, …, X_1); acts[i] belongs to block L−i; tangents[i] = t_{L−1−i}.
    _, act1 = _invert_block(blocks[0], outs[-1], n)
    targets = [eps, *tangents]  # t_L, t_{L−1}, …, t_1
    acts_by_block = [*acts, act1]  # blocks L, L−1, …, 1
    return list(zip(reversed(targets), reversed(acts_by_block)))


# ---------------------------------------------------------------------------------------------------------------
# Step 5: per-block solves.

# C = Rᵀ Qᵀ (QR of Cᵀ), cached per fixed expansion buffer (it never changes; keyed weakly, checked by its Stamp).
_FACTOR_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()  # Tensor -> (Stamp, Rᵀ, B)


def _factor_linear(hl: HalfLayer) -> tuple[Tensor, Tensor]:
    """(Rᵀ ∈ ℝ^{w×w}, B = Qᵀ ∈ ℝ^{w×h}) with C = Rᵀ B and B orthonormal rows, so z C = (z Rᵀ) B.

    Σ = [zC, 1] = [zRᵀ, 1]·diag(B, 1) and diag(B, 1) has orthonormal rows, so Σ's singular values are those of
    [zRᵀ, 1] and Σ⁺ = diag(B, 1)ᵀ [zRᵀ, 1]⁺ exactly: the Gram is (w+1)×(w+1) instead of n×n (pinv_solve).
    """
    c = hl.expand
    hit = _FACTOR_CACHE.get(c)
    if hit is not None and hit[0].matches((c,)):
        return hit[1], hit[2]
    q, r = torch.linalg.qr(c.T.to(torch.float64))  # Cᵀ = Q R, Q ∈ ℝ^{h×w}
    out = (r.T.to(c.dtype).contiguous(), q.T.to(c.dtype).contiguous())
    _FACTOR_CACHE[c] = (Stamp((c,)), *out)
    return out


def _solve_half(
    hl: HalfLayer, z: Tensor, feats: Tensor | None, t: Tensor, reg: Regularizer, **kw: Any
) -> tuple[Tensor, Tensor]:
    """ΔW̃ = Σ⁺ t for one half-layer at input z (features φ = σ(zC) if already computed); returns (ΔW̃, ΣΔW̃).

    The `noise` regulariser draws its perturbation of t inside this solve (pinv_solve), one fresh ξ per half-layer.
    """
    if feats is None:  # linear half-layer: solve on the [zRᵀ, 1] side (see _factor_linear)
        rt, basis = _factor_linear(hl)
        return pinv_solve(z @ rt, t, reg, basis=basis, **kw)
    return pinv_solve(feats, t, reg, **kw)


def _half_layer_jvp(hl: HalfLayer, feats: Tensor | None, dz: Tensor) -> Tensor:
    """G'(z)·dz = (σ'(zC) ⊙ (dz C)) Wᵀ, with σ'(zC) read off the reconstructed features (ReLU: φ > 0).

    Written out rather than a torch.func.jvp of G so that the activations the inverse pass already reconstructed
    are reused instead of recomputing G's forward; a linear G is the constant matrix C Wᵀ.
    """
    if hl.linear:
        return dz @ hl.linear_map()
    return (hl.pre(dz) * (feats > 0)) @ hl.weight.T


def _solve_block(
    blk: CouplingBlock, t: Tensor, acts: tuple, reg: Regularizer, **kw: Any
) -> tuple[Tensor, Tensor]:
    """(ΔW̃_F, ΔW̃_G) ∈ ℝ^{(h+1)×(d/2)} each, for the block target t = [t₁, t₂] (docs/gn.md, Math step 5)."""
    b, feat_f, y1, feat_g = acts
    w = blk.half
    t1, t2 = t[:, :w], t[:, w:]
    dwf, dy1 = _solve_half(blk.F, b, feat_f, t1, reg, **kw)
    # y₂ = b + G(y₁) moves by G'(y₁)·δy₁ when F's update moves y₁ by δy₁ = Σ_F ΔW̃_F (= t₁ when exact): G only
    # needs to supply the rest.
    m = _half_layer_jvp(blk.G, feat_g, dy1)
    dwg, _ = _solve_half(blk.G, y1, feat_g, t2 - m, reg, **kw)
    return dwf, dwg


def _as_param_updates(dw: Tensor) -> tuple[Tensor, Tensor]:
    """ΔW̃ = [ΔWᵀ; Δbᵀ] ∈ ℝ^{(h+1)×w} → (ΔW ∈ ℝ^{w×h}, Δb ∈ ℝ^{w})."""
    return dw[:-1].T.contiguous(), dw[-1].contiguous()


# ---------------------------------------------------------------------------------------------------------------
# Public API.


def _coerce_reg(regularizer: Regularizer | Mapping | str | None) -> Regularizer:
    if regularizer is None or isinstance(regularizer, Regularizer):
        return regularizer or Regularizer()
    if isinstance(regularizer, str):
        return Regularizer(name=regularizer)
    return Regularizer.from_mapping(regularizer)


def _direction_and_loss(
    model: RevMLP,
    x: Tensor,
    t_onehot: Tensor,
    *,
    combine: str,
    regularizer: Regularizer | Mapping | str | None,
    loss: str,
    loss_hessian: str,
    fast_gram: bool,
    solver: str,
    counters: MutableMapping[str, float] | None,
    generator: torch.Generator | None,
) -> tuple[list[Tensor], Tensor]:
    """(Δθ, pre-update loss); see gn_direction for the arguments."""
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
    reg = _coerce_reg(regularizer)
    ref = model.readout
    x = x.to(device=ref.device, dtype=ref.dtype)
    t_onehot = t_onehot.to(device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        xl = _features(model, x)  # step 1
        logits = model.logits(xl)
        ell = batch_loss(logits, t_onehot, loss)
        eps = output_residual(logits, t_onehot, loss, loss_hessian) @ ref.T  # steps 2-3
        del x, logits
        kw = dict(fast_gram=fast_gram, solver=solver, counters=counters, generator=generator)
        out: list[Tensor] = []
        scale = 1.0 / len(model.blocks) if combine == "mean" else 1.0
        for blk, (t, acts) in zip(model.blocks, _targets_and_activations(model, xl, eps)):  # steps 4-5
            for dw in _solve_block(blk, t, acts, reg, **kw):
                out.extend(u * scale if scale != 1.0 else u for u in _as_param_updates(dw))  # step 6
    return out, ell


def gn_direction(
    model: RevMLP,
    x: Tensor,
    t_onehot: Tensor,
    *,
    combine: str = "sum",
    regularizer: Regularizer | Mapping | str | None = None,
    loss: str = "ce",
    loss_hessian: str = "identity",
    fast_gram: bool = False,
    solver: str = "auto",
    counters: MutableMapping[str, float] | None = None,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """The GN direction Δθ (same order and shapes as model.trainable()); the update is θ ← θ − α·Δθ.

    Args:
        model: a RevMLP; x ∈ ℝ^{n×d}, t_onehot ∈ ℝ^{n×C} (moved to the model's device and dtype).
        combine: "sum" (J_X Δθ = L·ε, paper code) or "mean" (J_X Δθ = ε).
        regularizer: Regularizer, a mapping with its fields, a name, or None (= exact pseudoinverse "none").
        loss: "ce" | "mse";  loss_hessian: "identity" | "exact" (CE only; see output_residual).
        fast_gram: float32 models only: form the n×n Gram in float32 when the regulariser truncates at
            ≥ 1e-2·s_max anyway, and apply the float64 solve to the features in float32 (GaussNewton turns this
            on; tests of exactness leave it off; see pinv.pinv_solve).
        solver: "auto" (per filter the cheapest exact path: a float64 Cholesky for none/damping, eigh for
            truncation/weight_decay/noise unless rtol = atol = 0; see pinv.solver_path — damping then also keeps the directions below eigh's machine floor,
            as its definition asks) or "eigh" (always float64 eigh).
        counters: mapping incremented in place (key "gn_solver_fallbacks") when a solve falls back to float64 SVD.
        generator: RNG for the `noise` regulariser (default: torch's global RNG).
    """
    out, _ = _direction_and_loss(
        model, x, t_onehot, combine=combine, regularizer=regularizer, loss=loss, loss_hessian=loss_hessian,
        fast_gram=fast_gram, solver=solver, counters=counters, generator=generator,
    )
    return out


class GaussNewton:
    """θ ← θ − lr·(Δθ + weight_decay·θ) with Δθ = gn_direction(...). Stateless apart from counters.

    weight_decay: None → regularizer.weight_decay if regularizer.name == "weight_decay", else 0; a number
    overrides that for any regulariser. It decays every trained tensor (weights and biases), as − α λ θ in
    docs/gn.md. solver: "auto" | "eigh", see gn_direction.
    seed: seeds the host generator of the `noise` regulariser's draws (its state is in state_dict, so a resumed
    run draws what the uninterrupted one would); None: torch's global RNG. Other regularisers draw nothing.
    """

    def __init__(
        self,
        model: RevMLP,
        lr: float,
        combine: str = "sum",
        regularizer: Regularizer | Mapping | str | None = None,
        weight_decay: float | None = None,
        loss: str = "ce",
        loss_hessian: str = "identity",
        fast_gram: bool = True,
        solver: str = "auto",
        seed: int | None = None,
    ):
        if combine not in COMBINES:
            raise ValueError(f"unknown combine {combine!r}; valid: {', '.join(COMBINES)}")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(SOLVERS)}")
        self.model = model
        self.lr = float(lr)
        self.combine = combine
        self.regularizer = _coerce_reg(regularizer)
        if weight_decay is None:
            weight_decay = self.regularizer.weight_decay if self.regularizer.name == "weight_decay" else 0.0
        self.weight_decay = float(weight_decay)
        self.loss, self.loss_hessian, self.fast_gram, self.solver = loss, loss_hessian, fast_gram, solver
        self.stats: dict[str, float] = {FALLBACK_COUNTER: 0.0}
        self.generator: torch.Generator | None = None
        if seed is not None and self.regularizer.name == "noise":
            self.generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def direction(self, x: Tensor, t_onehot: Tensor) -> tuple[list[Tensor], Tensor]:
        """(Δθ, pre-update loss tensor) for the batch."""
        return _direction_and_loss(
            self.model, x, t_onehot, combine=self.combine, regularizer=self.regularizer, loss=self.loss,
            loss_hessian=self.loss_hessian, fast_gram=self.fast_gram, solver=self.solver, counters=self.stats,
            generator=self.generator,
        )

    def step(self, x: Tensor, t_onehot: Tensor) -> float:
        """One GN update on the batch; returns the pre-update mean batch loss."""
        delta, ell = self.direction(x, t_onehot)
        with torch.no_grad():
            for p, d in zip(self.model.trainable(), delta):
                if self.weight_decay:
                    d.add_(p, alpha=self.weight_decay)
                p.add_(d, alpha=-self.lr)
        return float(ell)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": "gn", "lr": self.lr, "combine": self.combine, "regularizer": asdict(self.regularizer),
            "weight_decay": self.weight_decay, "loss": self.loss, "loss_hessian": self.loss_hessian,
            "fast_gram": self.fast_gram, "solver": self.solver, "stats": dict(self.stats),
            # bytes, not a tensor: the host stream stays on the host whatever device the run (and its state) is on
            **({"noise_rng": bytes(self.generator.get_state().numpy())} if self.generator is not None else {}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lr = float(state.get("lr", self.lr))
        self.combine = state.get("combine", self.combine)
        if "regularizer" in state:
            self.regularizer = Regularizer.from_mapping(state["regularizer"])
        self.weight_decay = float(state.get("weight_decay", self.weight_decay))
        self.loss = state.get("loss", self.loss)
        self.loss_hessian = state.get("loss_hessian", self.loss_hessian)
        self.fast_gram = bool(state.get("fast_gram", self.fast_gram))
        self.solver = str(state.get("solver", self.solver))
        self.stats = {FALLBACK_COUNTER: 0.0, **{k: float(v) for k, v in state.get("stats", {}).items()}}
        if self.generator is not None and state.get("noise_rng") is not None:
            self.generator.set_state(torch.frombuffer(bytearray(state["noise_rng"]), dtype=torch.uint8))
