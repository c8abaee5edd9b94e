"""Verdict rules shared by every comparison revgn makes: the paper's claims (``revgn verify``), the scale and GN-family
studies, and a user's own comparisons (``revgn compare --by``). One implementation, so every table means the same.

Input: per-seed *paired differences* d_s (one per seed both sides ran), signed so that d > 0 is the claimed side
("the paper's side", or "B above A" for a user's comparison). Shapes: a sequence or a seed → value mapping of floats.

Rules (docs/figures.md, "How claims are judged"):

* Only finite pairs count. A pair where a side diverged (±∞ or NaN) is *not* evidence either way: it is counted apart
  (``n_nonfinite``) and the caller reports "k of n seeds diverged" per method.
* Fewer than ``MIN_PAIRS`` (3) finite pairs → **INSUFFICIENT**.
* ``p`` is the two-sided one-sample t-test of mean(d) = 0; the interval is the 95 % Student-t interval
  mean ± t₀.₉₇₅,ₙ₋₁ · s/√n.
* ``p_tost`` is the two one-sided tests (TOST) of |mean(d)| ≥ SESOI: the larger of the p-values of
  H₀: μ ≤ −SESOI and H₀: μ ≥ +SESOI. p_tost < α ⇔ the 90 % t-interval lies inside ±SESOI.
* Verdicts, first match wins:
  **NEGLIGIBLE** when p_tost < α (the effect is shown to be smaller than the smallest effect of interest, even if it
  is also shown to be non-zero: a claim never rests on an effect below its own SESOI);
  **HOLDS** when p < α and mean > 0 (the 95 % interval lies on the claimed side);
  **REVERSED** when p < α and mean < 0;
  **INCONCLUSIVE** otherwise.
* Multiplicity: ``holm`` adjusts a family's p-values (Holm 1979, step-down, monotone). ``judge_family`` re-judges a
  family on the adjusted p and p_tost, so a family of k claims keeps a family-wise error rate ≤ α.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats as _st

ALPHA = 0.05
LEVEL = 0.95
MIN_PAIRS = 3
VERDICTS = ("HOLDS", "REVERSED", "NEGLIGIBLE", "INCONCLUSIVE", "INSUFFICIENT")


@dataclass(frozen=True)
class Verdict:
    """The judged comparison of one claim (or one user comparison).

    mean, half: the finite pairs' mean difference and its 95 % t half-width (NaN below 2 pairs).
    n: finite pairs used; n_nonfinite: pairs dropped because a side was not finite (diverged or undefined).
    p, p_tost: raw two-sided t-test and TOST p-values; p_adj, p_tost_adj: after Holm (equal to raw outside a family).
    sesoi: the smallest effect size of interest the claim declared (> 0).
    """

    mean: float
    half: float
    n: int
    n_nonfinite: int
    p: float
    p_tost: float
    sesoi: float
    p_adj: float
    p_tost_adj: float
    verdict: str

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def describe(self, fmt=lambda v: f"{v:.3g}") -> str:
        """"+0.012 ± 0.004" (or "—" with no finite pair)."""
        if self.n == 0:
            return "—"
        if not math.isfinite(self.half):
            return fmt(self.mean)
        return f"{fmt(self.mean)} ± {fmt(self.half)}"


def _values(diffs: Mapping[object, float] | Iterable[float]) -> np.ndarray:
    vals = diffs.values() if isinstance(diffs, Mapping) else diffs
    return np.array([float(v) for v in vals], dtype=float)


def mean_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float, int]:
    """(mean, t half-width, n) of the finite values; half is NaN for n < 2, mean NaN for n = 0."""
    v = _values(values)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, 1
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return float(v.mean()), half, n


def _p_two_sided(v: np.ndarray) -> float:
    n = v.size
    s = v.std(ddof=1)
    if s == 0:  # every pair identical: exactly zero is no evidence, any other constant is certain
        return 1.0 if v.mean() == 0 else 0.0
    tstat = v.mean() / (s / math.sqrt(n))
    return float(2 * _st.t.sf(abs(tstat), n - 1))


def _p_tost(v: np.ndarray, sesoi: float) -> float:
    n = v.size
    s = v.std(ddof=1)
    m = float(v.mean())
    if s == 0:
        return 0.0 if abs(m) < sesoi else 1.0
    se = s / math.sqrt(n)
    p_low = _st.t.sf((m + sesoi) / se, n - 1)  # H0: mu <= -sesoi
    p_high = _st.t.cdf((m - sesoi) / se, n - 1)  # H0: mu >= +sesoi
    return float(max(p_low, p_high))


def _decide(mean: float, n: int, p: float, p_tost: float, alpha: float) -> str:
    if n < MIN_PAIRS:
        return "INSUFFICIENT"
    if p_tost < alpha:
        return "NEGLIGIBLE"
    if p < alpha:
        return "HOLDS" if mean > 0 else "REVERSED"
    return "INCONCLUSIVE"


def judge(diffs: Mapping[object, float] | Iterable[float], sesoi: float, *, alpha: float = ALPHA) -> Verdict:
    """Judge one claim from its per-seed paired differences (> 0: the claimed side) and its SESOI (> 0)."""
    if not (sesoi > 0 and math.isfinite(sesoi)):
        raise ValueError(f"a smallest effect size of interest must be a positive number, got {sesoi!r}")
    allv = _values(diffs)
    v = allv[np.isfinite(allv)]
    n = int(v.size)
    mean, half, _ = mean_interval(v)
    if n < 2:
        p = p_tost = math.nan
    else:
        p, p_tost = _p_two_sided(v), _p_tost(v, sesoi)
    return Verdict(mean, half, n, int(allv.size - n), p, p_tost, float(sesoi), p, p_tost,
                   _decide(mean, n, p, p_tost, alpha))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaN stays NaN and does not count in the family."""
    p = np.array(pvalues, dtype=float)
    idx = [i for i in np.argsort(p, kind="stable") if not math.isnan(p[i])]
    m = len(idx)
    out = np.full(p.shape, math.nan)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(x) for x in out]


def judge_family(verdicts: Sequence[Verdict], *, alpha: float = ALPHA) -> list[Verdict]:
    """The same verdicts re-judged on Holm-adjusted p and p_tost over the family (INSUFFICIENT ones stay out)."""
    adj_p = holm([v.p if v.n >= MIN_PAIRS else math.nan for v in verdicts])
    adj_t = holm([v.p_tost if v.n >= MIN_PAIRS else math.nan for v in verdicts])
    out = []
    for v, pa, ta in zip(verdicts, adj_p, adj_t):
        pa = v.p if math.isnan(pa) else pa
        ta = v.p_tost if math.isnan(ta) else ta
        out.append(replace(v, p_adj=pa, p_tost_adj=ta, verdict=_decide(v.mean, v.n, pa, ta, alpha)))
    return out


def diverged_text(counts: Mapping[str, tuple[int, int]]) -> str:
    """"GN 1 of 10 diverged; Adam 0 of 10" from {label: (k, n)}; "" when nothing diverged."""
    if not any(k for k, _ in counts.values()):
        return ""
    return "; ".join(f"{lab} {k} of {n} diverged" for lab, (k, n) in counts.items())


@dataclass(frozen=True)
class Trend:
    """An OLS slope of y on x with its 95 % t half-width (n − 2 degrees of freedom); NaN where undefined."""

    slope: float
    half: float
    intercept: float
    n: int

    def describe(self, fmt=lambda v: f"{v:+.3g}") -> str:
        if self.n == 0 or not math.isfinite(self.slope):
            return "—"
        return fmt(self.slope) if not math.isfinite(self.half) else f"{fmt(self.slope)} ± {self.half:.2g}"


def trend(x: Iterable[float], y: Iterable[float], level: float = LEVEL) -> Trend:
    """Slope of y on x (``scipy.stats.linregress``) over the pairs where both are finite, with the t-interval
    slope ± t_{(1+level)/2, n−2}·SE. Needs ≥ 2 distinct x for a slope and ≥ 3 pairs for an interval."""
    xv, yv = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    ok = np.isfinite(xv) & np.isfinite(yv)
    xv, yv = xv[ok], yv[ok]
    n = int(xv.size)
    if n < 2 or np.unique(xv).size < 2:
        return Trend(math.nan, math.nan, math.nan, n)
    fit = _st.linregress(xv, yv)
    half = float(_st.t.ppf(0.5 + level / 2, n - 2) * fit.stderr) if n > 2 else math.nan
    return Trend(float(fit.slope), half, float(fit.intercept), n)
