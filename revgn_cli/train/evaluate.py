"""Loss and accuracy of a model on a whole split, in chunks (memory stays bounded at paper scale)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from revgn_cli.optim import batch_loss


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, n_classes: int, loss: str, chunk: int) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on (x [n,d], y [n]) — the same loss the optimisers minimise."""
    total_loss, correct, n = 0.0, 0, x.shape[0]
    for i in range(0, n, chunk):
        xb, yb = x[i : i + chunk], y[i : i + chunk]
        logits = model(xb)
        t = torch.nn.functional.one_hot(yb, n_classes).to(logits.dtype)
        total_loss += float(batch_loss(logits, t, loss)) * xb.shape[0]
        correct += int((logits.argmax(dim=1) == yb).sum())
    return total_loss / n, correct / n


def eval_network(opt: object, model: nn.Module) -> nn.Module:
    """The function a run's loss/accuracy metrics evaluate: the optimiser's ``eval_model()`` when it trains a
    different function than ``model(x)`` (optimizer=linearised: the tangent model f_lin(·; θ) about θ_s, while
    the parameters hold θ), else the network itself."""
    get = getattr(opt, "eval_model", None)
    return get() if callable(get) else model
