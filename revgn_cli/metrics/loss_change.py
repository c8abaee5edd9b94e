"""Relative loss change on the batch just used for an update (docs/results.md, paper Fig. 3)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["loss_change_pct", "loss_change_summary"]


def loss_change_pct(before: float, after: float) -> float:
    """100·(after − before)/before: ℓ(θ_{t+1}; B_t) vs ℓ(θ_t; B_t), negative when the step helped.

    ``before == 0``: 0.0 if ``after == 0`` too (nothing changed), else NaN (a relative change from zero is
    undefined; NaN is skipped by per-epoch mean/median aggregates, ±inf would poison them). Non-finite inputs
    propagate as NaN/inf.
    """
    before, after = float(before), float(after)
    if before == 0.0:
        return 0.0 if after == 0.0 else math.nan
    return 100.0 * (after - before) / before


def loss_change_summary(changes: Sequence[float]) -> dict[str, float]:
    """Per-epoch aggregates of the ``loss_change_pct`` values of that epoch's updates: ``loss_change_pct_mean`` and
    ``loss_change_pct_median``, NaN entries (changes from a zero loss) skipped; {} when no update measured one,
    NaN aggregates when every measured change was NaN. ±inf (a diverging step) is kept: it is what happened."""
    if not len(changes):
        return {}
    v = np.asarray(changes, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return {"loss_change_pct_mean": math.nan, "loss_change_pct_median": math.nan}
    return {"loss_change_pct_mean": float(v.mean()), "loss_change_pct_median": float(np.median(v))}
