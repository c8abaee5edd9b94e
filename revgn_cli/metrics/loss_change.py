"""Relative loss change on the batch just used for an update (DESIGN §4, paper Fig. 3)."""
from __future__ import annotations

import math

__all__ = ["loss_change_pct"]


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
