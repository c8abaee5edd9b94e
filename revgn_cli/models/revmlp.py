"""Reversible MLP (docs/design.md): additive coupling blocks whose trained weights enter linearly.

Shapes: x ∈ ℝ^{n×d}, halves A = x[:, :d/2], B = x[:, d/2:]. Each half-layer is
    F(z) = σ(z C) Wᵀ + b,   C ∈ ℝ^{(d/2)×h} fixed (N(0, 1/h)),  W ∈ ℝ^{(d/2)×h},  b ∈ ℝ^{d/2},
so its output is Σ(z) W̃ with Σ(z) = [σ(z C), 1] ∈ ℝ^{n×(h+1)} and W̃ = [Wᵀ; bᵀ] — linear in the trained
parameters, which is what makes the Gauss-Newton step tractable (paper §4).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad

try:  # private torch API (2.x); without it the C Wᵀ memo is simply never used
    from torch._C._functorch import is_functorch_wrapped_tensor
except ImportError:  # pragma: no cover
    def is_functorch_wrapped_tensor(t: Tensor) -> bool:
        return True

from revgn_cli.models.stamp import Stamp


def _identity(z: Tensor) -> Tensor:
    return z


class HalfLayer(nn.Module):
    """One residual function F or G of a coupling block: z ↦ σ(z C) Wᵀ + b (or σ(z) Wᵀ + b without C)."""

    def __init__(self, width: int, hidden: int | None, linear: bool, init_std: float, gen: torch.Generator):
        super().__init__()
        self.width, self.hidden, self.linear = width, hidden, linear
        if hidden is None:
            self.register_buffer("expand", None)
            fan = width
        else:
            # Fixed, untrained Gaussian expansion with entries N(0, 1/h).
            self.register_buffer("expand", torch.randn(width, hidden, generator=gen, device="cpu") / hidden**0.5)
            fan = hidden
        self.weight = nn.Parameter(torch.randn(width, fan, generator=gen, device="cpu") * init_std)
        self.bias = nn.Parameter(torch.zeros(width, device="cpu"))
        self._map_memo: tuple | None = None  # see linear_map

    @property
    def act(self) -> Callable[[Tensor], Tensor]:
        return _identity if self.linear else torch.relu

    def pre(self, z: Tensor) -> Tensor:
        """Pre-activation z C (or z itself without a bottleneck), shape n×h."""
        return z if self.expand is None else z @ self.expand

    def sigma(self, z: Tensor) -> Tensor:
        """σ(z C) ∈ ℝ^{n×h}: the features that multiply Wᵀ (Σ without its column of ones)."""
        return self.act(self.pre(z))

    def linear_map(self) -> Tensor:
        """C Wᵀ ∈ ℝ^{(d/2)×(d/2)} (Wᵀ without expansion): with σ = identity the half-layer is z ↦ z (C Wᵀ) + b.

        Memoised while W and C are unchanged (``Stamp``: same storage, same version counter) and no autograd graph
        is being recorded, so the no-grad forwards at one set of weights — the loss change's after-update pass, the
        evaluation chunks, the NTK, the next GN step's forward, inverse and correction — form it once.
        """
        w, c = self.weight, self.expand
        if c is None:
            return w.T
        if ((torch.is_grad_enabled() and w.requires_grad) or is_functorch_wrapped_tensor(w)
                or forward_ad.unpack_dual(w).tangent is not None or torch.is_inference_mode_enabled()):
            # A graph, a torch.func transform or a forward-mode tangent (torch.autograd.forward_ad, which
            # torch.func.linearize uses) must see the product; an inference-mode tensor could not be saved for a
            # later backward, so it is never memoised.
            return c @ w.T
        memo = self._map_memo
        if memo is not None and memo[0].matches((w, c)):
            return memo[1]
        cw = c @ w.T
        self._map_memo = (Stamp((w, c)), cw)
        return cw

    def forward(self, z: Tensor) -> Tensor:
        if self.linear and self.expand is not None:
            # σ = identity: z C Wᵀ = z (C Wᵀ). Same function; the product order with fewer flops is taken, which
            # for a large batch (evaluation, paper-size batches) is (d/2)²(h + n) instead of 2·n·(d/2)·h.
            n, w, h = z.shape[0], self.width, self.hidden
            if w * (h + n) < 2 * n * h:
                return z @ self.linear_map() + self.bias
        return self.sigma(z) @ self.weight.T + self.bias


class CouplingBlock(nn.Module):
    """y₁ = A + F(B);  y₂ = B + G(y₁).  Inverse: B = y₂ − G(y₁);  A = y₁ − F(B)."""

    def __init__(self, d: int, hidden: int | None, linear: bool, init_std: float, gen: torch.Generator):
        super().__init__()
        if d % 2:
            raise ValueError(f"RevMLP needs an even feature dimension, got d={d}")
        self.half = d // 2
        self.F = HalfLayer(self.half, hidden, linear, init_std, gen)
        self.G = HalfLayer(self.half, hidden, linear, init_std, gen)

    def forward(self, x: Tensor) -> Tensor:
        a, b = x[:, : self.half], x[:, self.half :]
        y1 = a + self.F(b)
        y2 = b + self.G(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = y[:, : self.half], y[:, self.half :]
        b = y2 - self.G(y1)
        a = y1 - self.F(b)
        return torch.cat([a, b], dim=1)


class RevMLP(nn.Module):
    """Reversible MLP with a fixed orthonormal read-out U (docs/design.md).

    Args:
        d_in: input dimension d (even); no input projection.
        n_blocks: number of coupling blocks L.
        hidden: bottleneck expansion width h, or None for the no-bottleneck variant (W ∈ ℝ^{(d/2)×(d/2)}).
        n_classes: C; logits are X_L U with U ∈ ℝ^{d×C} orthonormal columns.
        init_std: standard deviation (not variance) of the trained weights at init; biases start at 0.
        first_block_linear: σ = identity in block 0 (as in the paper).
        seed: seeds every random tensor of the model (C, W, U) independently of torch's global RNG. They are drawn on
            the host, so a seed gives the same initial model on every device (``.to(device)`` moves it).
    """

    def __init__(
        self,
        d_in: int,
        n_blocks: int,
        hidden: int | None,
        n_classes: int = 10,
        init_std: float = 1e-3,
        first_block_linear: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if d_in < 2 or d_in % 2:
            raise ValueError(f"RevMLP needs an even input dimension >= 2, got d_in={d_in}")
        if n_blocks < 1:
            raise ValueError(f"RevMLP needs n_blocks >= 1, got {n_blocks}")
        if hidden is not None and hidden < 1:
            raise ValueError(f"hidden must be a positive width or None, got {hidden}")
        if n_classes < 1 or n_classes > d_in:
            raise ValueError(f"n_classes must be in [1, d_in={d_in}], got {n_classes}")
        if not init_std >= 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}")
        self.d_in, self.n_blocks, self.hidden, self.n_classes = d_in, n_blocks, hidden, n_classes
        self.init_std, self.first_block_linear = init_std, first_block_linear
        gen = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList(
            CouplingBlock(d_in, hidden, linear=(first_block_linear and i == 0), init_std=init_std, gen=gen)
            for i in range(n_blocks)
        )
        q, _ = torch.linalg.qr(torch.randn(d_in, n_classes, generator=gen, dtype=torch.float64, device="cpu"))
        # Kept in float64 and re-cast on every .to()/.double(): U stays orthonormal to machine precision of the
        # target dtype, not to float32's (U⁺ = Uᵀ is what the GN pull-back relies on).
        self._readout64 = q
        self.register_buffer("readout", q.to(torch.get_default_dtype()))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        super()._apply(fn, recurse)
        # fn moves U and casts it when it casts (.double(), .to(dtype=...)); a device-only move (.cuda(),
        # .to("meta")) would leave it float64 next to float32 weights, so it follows the trained weights' dtype.
        self.readout = fn(self._readout64).to(self.blocks[0].F.weight.dtype)
        return self

    def features(self, x: Tensor) -> Tensor:
        """X_L ∈ ℝ^{n×d}: the output of the last block (the map GN inverts)."""
        for blk in self.blocks:
            x = blk(x)
        return x

    def block_outputs(self, x: Tensor) -> list[Tensor]:
        """[X_1, …, X_L]: each block's output, for CKA per block."""
        outs = []
        for blk in self.blocks:
            x = blk(x)
            outs.append(x)
        return outs

    def logits(self, feats: Tensor) -> Tensor:
        """Z = X_L U ∈ ℝ^{n×C}."""
        return feats @ self.readout

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.features(x))

    def inverse(self, feats: Tensor) -> Tensor:
        """X_0 from X_L, by inverting every block in reverse order."""
        for blk in reversed(self.blocks):
            feats = blk.inverse(feats)
        return feats

    def half_layers(self) -> list[HalfLayer]:
        """[F_1, G_1, F_2, G_2, …]: the trained half-layers in order."""
        return [hl for blk in self.blocks for hl in (blk.F, blk.G)]

    def trainable(self) -> list[Tensor]:
        """Trained tensors in a fixed order: for each block F.weight, F.bias, G.weight, G.bias."""
        return [p for hl in self.half_layers() for p in (hl.weight, hl.bias)]

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable())
