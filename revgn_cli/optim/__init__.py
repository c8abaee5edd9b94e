"""Optimisers: the exact Gauss-Newton engine (docs/gn.md), damped inexact GN (GGN-CG, K-FAC) and the Adam/SGD
baselines behind one interface.

Every optimiser has `.step(x, t_onehot) -> float` (the pre-update mean batch loss), `.stats` (cumulative float
counters for the metrics rows) and `state_dict()` / `load_state_dict()`.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Mapping

import torch

from revgn_cli.config import preset_optimizer
from revgn_cli.models.revmlp import RevMLP
from revgn_cli.optim.damped import GGNCG, KFAC
from revgn_cli.optim.gn import COMBINES, GaussNewton, gn_direction
from revgn_cli.optim.linearised import LinearisedStepper
from revgn_cli.optim.losses import batch_loss, output_residual
from revgn_cli.optim.naive import gn_naive
from revgn_cli.optim.pinv import REGULARIZERS, Regularizer, pinv_solve
from revgn_cli.optim.torch_optim import TorchStepper

__all__ = [
    "gn_direction", "GaussNewton", "gn_naive", "TorchStepper", "make_optimizer", "Regularizer", "batch_loss",
    "output_residual", "pinv_solve", "OPTIMIZERS", "REGULARIZERS", "COMBINES", "LinearisedStepper", "GGNCG", "KFAC",
]

OPTIMIZERS = ("gn", "adam", "sgd", "linearised", "ggn_cg", "kfac")

def make_optimizer(
    model: RevMLP, opt: Mapping, reg: Mapping | None = None, loss: str = "ce", seed: int | None = None
) -> GaussNewton | TorchStepper | LinearisedStepper | GGNCG | KFAC:
    """Build the optimiser named by opt["name"] over model.trainable().

    opt keys: name ∈ {gn, adam, sgd, linearised, ggn_cg, kfac}; lr; combine, loss_hessian, solver (gn); momentum (sgd);
    beta1, beta2, eps (adam); inner ∈ {sgd, adam} and relinearise_every (K, None = ∞) for linearised (+ the inner's
    keys); loss_hessian, damping (+ damping_schedule, lm_factor, cg_iters, cg_tol, ggn_solve for ggn_cg;
    curvature_every, kfac_step for kfac).
    Missing (or None) keys take conf/optimizer/<name>.yaml's values; unknown keys are ignored.
    reg keys: those of Regularizer. GN uses all of them. For the others only reg.name == "weight_decay" has an
    effect (torch's coupled `weight_decay=reg.weight_decay`, i.e. L2 added to the gradient); truncation, damping
    and noise shape GN's pseudoinverse and are ignored there.
    seed: the seed of GN's `noise` draws (GaussNewton(seed=...)); None: torch's global RNG.
    """
    name = str(opt.get("name", "gn")).lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    # Missing keys take the optimiser group's preset (conf/optimizer/<name>.yaml): configs are the one source.
    o = asdict(preset_optimizer(name))
    o.update({k: opt[k] for k in opt.keys() if opt[k] is not None})
    r = Regularizer.from_mapping(reg)
    if name == "gn":
        return GaussNewton(
            model, lr=float(o["lr"]), combine=str(o["combine"]), regularizer=r, loss=loss,
            loss_hessian=str(o["loss_hessian"]), solver=str(o["solver"]), seed=seed,
        )
    wd = r.weight_decay if r.name == "weight_decay" else 0.0
    if name == "ggn_cg":
        return GGNCG(model, lr=float(o["lr"]), damping=float(o["damping"]), cg_iters=int(o["cg_iters"]),
                     cg_tol=float(o["cg_tol"]), damping_schedule=str(o["damping_schedule"]),
                     lm_factor=float(o["lm_factor"]), loss=loss, loss_hessian=str(o["loss_hessian"]), weight_decay=wd,
                     solve=str(o["ggn_solve"]))
    if name == "kfac":
        return KFAC(model, lr=float(o["lr"]), damping=float(o["damping"]), curvature_every=int(o["curvature_every"]),
                    loss=loss, loss_hessian=str(o["loss_hessian"]), weight_decay=wd, step_rule=str(o["kfac_step"]))
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
