"""Loss and accuracy of a model on a whole split, in chunks (memory stays bounded at paper scale)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from revgn_cli.optim import batch_loss


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, n_classes: int, loss: str, chunk: int,
             head_logits: Tensor | None = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on (x [n,d], y [n]) — the same loss the optimisers minimise.

    head_logits: ``model``'s logits [k, C] for the first k rows of x when the caller already has them (the
        diagnostics' forward pass on the CKA probe, which is the first training samples); only x[k:] is run.
    """
    n = x.shape[0]
    k = 0 if head_logits is None else head_logits.shape[0]
    if k > n:
        raise ValueError(f"head_logits has {k} rows, more than the {n} inputs")
    pieces = ([(head_logits, slice(0, k))] if k else []) + [(None, slice(i, i + chunk)) for i in range(k, n, chunk)]
    total_loss, correct = 0.0, 0
    for logits, rows in pieces:
        if logits is None:
            logits = model(x[rows])
        yb = y[rows]
        t = torch.nn.functional.one_hot(yb, n_classes).to(logits.dtype)
        total_loss += float(batch_loss(logits, t, loss)) * yb.shape[0]
        correct += int((logits.argmax(dim=1) == yb).sum())
    return total_loss / n, correct / n


def eval_network(opt: object, model: nn.Module) -> nn.Module:
    """The function a run's loss/accuracy metrics evaluate: the optimiser's ``eval_model()`` when it trains a
    different function than ``model(x)`` (optimizer=linearised: the tangent model f_lin(·; θ) about θ_s, while
    the parameters hold θ), else the network itself."""
    get = getattr(opt, "eval_model", None)
    return get() if callable(get) else model
