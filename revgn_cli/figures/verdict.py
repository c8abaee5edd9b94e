"""Three-way verdicts from per-seed margins: a 95 % Student-t interval over seeds (DESIGN: claims, issue 12).

A claim's *margin* for one seed is signed so that > 0 is the paper's side (e.g. test loss of GN − Adam for "Adam's
test loss is below GN's"). Over the n seeds: mean m, sample standard deviation s, and the t-interval
m ± t_{0.975, n−1} · s / √n. With 3 seeds t = 4.30: the interval is wide, and that is the honest answer.

* PASS — the interval lies above 0; FAIL — below 0; INCONCLUSIVE — it contains 0 (or n = 1: no spread to judge).
* Infinite margins (a side diverged: its loss counts as ∞) have no interval: PASS/FAIL when every seed agrees in
  sign, else INCONCLUSIVE. NaN margins (a metric undefined for that seed) are dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import stats

LEVEL = 0.95
VERDICTS = ("PASS", "FAIL", "INCONCLUSIVE", "MISSING")


@dataclass(frozen=True)
class Interval:
    """mean ± half over n seeds (half = ∞ for n = 1, NaN when a margin is infinite)."""

    mean: float
    half: float
    n: int

    @property
    def verdict(self) -> str:
        return verdict(self)

    def describe(self, fmt=lambda v: f"{v:.3g}") -> str:
        if self.n == 0:
            return "—"
        if math.isnan(self.half):
            return f"{fmt(self.mean)} (a side diverged)"
        return f"{fmt(self.mean)} ± {'∞' if math.isinf(self.half) else fmt(self.half)}"


def seed_interval(margins: Iterable[float], level: float = LEVEL) -> Interval:
    """Mean and t-interval half-width of the finite-or-infinite, non-NaN margins."""
    m = np.array([float(v) for v in margins if not math.isnan(float(v))], dtype=float)
    n = int(m.size)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    if not np.all(np.isfinite(m)):
        return Interval(float(np.mean(m)) if (np.all(m > 0) or np.all(m < 0)) else math.nan, math.nan, n)
    if n == 1:
        return Interval(float(m[0]), math.inf, 1)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * m.std(ddof=1) / math.sqrt(n))
    return Interval(float(m.mean()), half, n)


def verdict(iv: Interval) -> str:
    """PASS / FAIL / INCONCLUSIVE for an interval (MISSING when it holds no seed)."""
    if iv.n == 0:
        return "MISSING"
    if math.isnan(iv.half):  # infinite margins: every seed must agree in sign
        if math.isnan(iv.mean):
            return "INCONCLUSIVE"
        return "PASS" if iv.mean > 0 else "FAIL"
    if iv.mean - iv.half > 0:
        return "PASS"
    if iv.mean + iv.half < 0:
        return "FAIL"
    return "INCONCLUSIVE"
