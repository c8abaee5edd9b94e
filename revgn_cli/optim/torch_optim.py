"""First-order baselines (Adam, SGD) behind the same one-call interface as GaussNewton."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from revgn_cli.models.revmlp import RevMLP
from revgn_cli.optim.losses import batch_loss

__all__ = ["TorchStepper"]


class TorchStepper:
    """Wraps a torch.optim.Optimizer over model.trainable(): `.step(x, t)` = backprop on the batch loss + step."""

    def __init__(self, model: RevMLP, optimizer: torch.optim.Optimizer, loss: str = "ce"):
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.stats: dict[str, float] = {}

    def step(self, x: Tensor, t_onehot: Tensor) -> float:
        """One update on the batch; returns the pre-update mean batch loss."""
        ref = self.model.readout
        x = x.to(device=ref.device, dtype=ref.dtype)
        t_onehot = t_onehot.to(device=ref.device, dtype=ref.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        ell = batch_loss(self.model(x), t_onehot, self.loss)
        ell.backward()
        self.optimizer.step()
        return float(ell.detach())

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state)
