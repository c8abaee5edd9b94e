"""Function-space comparison of two trained models (docs/studies.md; Fort et al. 2020, NeurIPS, "Deep learning versus
kernel learning", parent/child spawning experiments)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["disagreement", "expected_disagreement", "normalised_function_distance", "interpolate_params",
           "error_barrier"]


def _check_preds(*ts: Tensor) -> None:
    m = ts[0].shape
    for t in ts:
        if t.dim() != 1 or t.shape != m:
            raise ValueError(f"predictions/labels must be 1-D of equal length, got {[tuple(u.shape) for u in ts]}")
    if m[0] == 0:
        raise ValueError("need at least one test input")


def disagreement(pred_a: Tensor, pred_b: Tensor) -> float:
    """Fraction of the M inputs on which the predicted classes differ; pred_a, pred_b: int [M]."""
    _check_preds(pred_a, pred_b)
    return float((pred_a != pred_b).double().mean())


def expected_disagreement(err_a: float, err_b: float, n_classes: int) -> float:
    """Disagreement of two *independent* classifiers with error rates err_a, err_b over C classes.

    Model (maximum entropy given only the error rates): on each input A is right w.p. 1 − e_a and otherwise picks
    one of the C − 1 wrong classes uniformly; B likewise, independently of A. They agree iff both are right, or
    both are wrong with the same wrong class:
        P(agree) = (1 − e_a)(1 − e_b) + e_a e_b / (C − 1)
        D_ind    = 1 − P(agree) = e_a + e_b − e_a e_b · C / (C − 1).
    Checks: D_ind = 0 for two perfect classifiers; (C−1)/C for two chance-level ones (e = (C−1)/C).
    """
    if n_classes < 2:
        raise ValueError(f"need at least 2 classes, got {n_classes}")
    return err_a + err_b - err_a * err_b * n_classes / (n_classes - 1)


def normalised_function_distance(pred_a: Tensor, pred_b: Tensor, labels: Tensor, n_classes: int | None = None) -> float:
    """Disagreement / D_ind (see ``expected_disagreement``), the error rates measured on these labels.

    ≈ 0: the two models make the same predictions; ≈ 1: they differ as much as two independent models with the
    same accuracies (Fort et al. 2020's normalisation of prediction disagreement by what the error rates alone
    would explain). ``n_classes`` defaults to 1 + the largest label/prediction seen — pass it when some class may
    be absent. NaN when D_ind = 0 (both models perfect: nothing to normalise by).
    """
    _check_preds(pred_a, pred_b, labels)
    if n_classes is None:
        n_classes = int(torch.stack([pred_a.max(), pred_b.max(), labels.max()]).max()) + 1
    e_a = float((pred_a != labels).double().mean())
    e_b = float((pred_b != labels).double().mean())
    d_ind = expected_disagreement(e_a, e_b, n_classes)
    if d_ind <= 0:
        return math.nan
    return disagreement(pred_a, pred_b) / d_ind


def interpolate_params(params_a: Sequence[Tensor], params_b: Sequence[Tensor], alpha: float) -> list[Tensor]:
    """(1 − α)·θ_a + α·θ_b tensor by tensor (α = 0 → θ_a, α = 1 → θ_b); new detached tensors, same order/shapes.

    Load the result into a copy of the model (e.g. ``p.copy_(q)`` over ``model.trainable()``) to evaluate err(α).
    """
    if len(params_a) != len(params_b):
        raise ValueError(f"parameter lists differ in length: {len(params_a)} vs {len(params_b)}")
    out = []
    for a, b in zip(params_a, params_b):
        if a.shape != b.shape:
            raise ValueError(f"parameter shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        out.append(torch.lerp(a.detach(), b.detach(), float(alpha)))
    return out


def error_barrier(errors_along_path: Sequence[float]) -> float:
    """max_α err(α) − (err(0) + err(1))/2 (docs/studies.md) on an α grid whose first/last entries are α = 0 and α = 1.

    Errors in any unit (fraction or %) — the barrier has the same unit. ≥ 0 by construction (the max includes the
    endpoints); NaN if any entry is NaN.
    """
    errs = [float(e) for e in errors_along_path]
    if len(errs) < 2:
        raise ValueError("need the errors at α = 0 and α = 1 at least")
    if any(math.isnan(e) for e in errs):
        return math.nan
    return max(errs) - 0.5 * (errs[0] + errs[-1])
