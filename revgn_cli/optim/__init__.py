"""Optimisers: the exact Gauss-Newton engine (DESIGN §2) and the Adam/SGD baselines behind one interface.

Every optimiser has `.step(x, t_onehot) -> float` (the pre-update mean batch loss), `.stats` (cumulative float
counters for the metrics rows) and `state_dict()` / `load_state_dict()`.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from revgn_cli.models.revmlp import RevMLP
from revgn_cli.optim.gn import COMBINES, GaussNewton, gn_direction
from revgn_cli.optim.linearised import LinearisedStepper
from revgn_cli.optim.losses import batch_loss, output_residual
from revgn_cli.optim.naive import gn_naive
from revgn_cli.optim.pinv import REGULARIZERS, Regularizer, pinv_solve
from revgn_cli.optim.torch_optim import TorchStepper

__all__ = [
    "gn_direction", "GaussNewton", "gn_naive", "TorchStepper", "make_optimizer", "Regularizer", "batch_loss",
    "output_residual", "pinv_solve", "OPTIMIZERS", "REGULARIZERS", "COMBINES", "LinearisedStepper",
]

OPTIMIZERS = ("gn", "adam", "sgd", "linearised")

# Defaults for keys missing from the `opt` mapping (paper full-batch learning rates, DESIGN §3).
_DEFAULTS: dict[str, dict[str, Any]] = {
    "gn": {"lr": 0.5, "combine": "sum", "loss_hessian": "identity"},
    "adam": {"lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "sgd": {"lr": 0.1, "momentum": 0.0},
    # Iterative linearisation (DESIGN §6): inner sgd|adam with their own keys; relinearise_every None = ∞.
    "linearised": {"lr": 0.1, "inner": "sgd", "relinearise_every": None, "momentum": 0.0, "beta1": 0.9,
                   "beta2": 0.999, "eps": 1e-8},
}


def make_optimizer(
    model: RevMLP, opt: Mapping, reg: Mapping | None = None, loss: str = "ce"
) -> GaussNewton | TorchStepper | LinearisedStepper:
    """Build the optimiser named by opt["name"] over model.trainable().

    opt keys: name ∈ {gn, adam, sgd, linearised}; lr; combine, loss_hessian (gn); momentum (sgd); beta1, beta2,
    eps (adam); inner ∈ {sgd, adam} and relinearise_every (K, None = ∞) for linearised (+ the inner's keys).
    Missing (or None) keys take the defaults above; unknown keys are ignored.
    reg keys: those of Regularizer. GN uses all of them. For adam/sgd only reg.name == "weight_decay" has an
    effect (torch's coupled `weight_decay=reg.weight_decay`, i.e. L2 added to the gradient); truncation, damping
    and noise shape GN's pseudoinverse and are ignored there.
    """
    name = str(opt.get("name", "gn")).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    o = dict(_DEFAULTS[name])
    o.update({k: opt[k] for k in opt.keys() if opt[k] is not None})
    r = Regularizer.from_mapping(reg)
    if name == "gn":
        return GaussNewton(
            model, lr=float(o["lr"]), combine=str(o["combine"]), regularizer=r, loss=loss,
            loss_hessian=str(o["loss_hessian"]),
        )
    wd = r.weight_decay if r.name == "weight_decay" else 0.0
    if name == "linearised":  # the inner SGD/Adam is built exactly like the plain ones below
        return LinearisedStepper(
            model, inner=str(o["inner"]), lr=float(o["lr"]), relinearise_every=o["relinearise_every"], loss=loss,
            **({"momentum": float(o["momentum"])} if o["inner"] == "sgd" else
               {"beta1": float(o["beta1"]), "beta2": float(o["beta2"]), "eps": float(o["eps"])}),
            weight_decay=wd,
        )
    params = model.trainable()
    if name == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            params, lr=float(o["lr"]), betas=(float(o["beta1"]), float(o["beta2"])), eps=float(o["eps"]),
            weight_decay=wd,
        )
    else:
        optimizer = torch.optim.SGD(params, lr=float(o["lr"]), momentum=float(o["momentum"]), weight_decay=wd)
    return TorchStepper(model, optimizer, loss=loss)
