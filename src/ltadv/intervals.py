"""Confidence intervals for accuracies, from scipy (no hand-written statistics), and how many decimals
an accuracy measured on n images deserves.

- One run: an accuracy is k correct out of n test images, a binomial proportion; its interval is the
  Wilson score interval (Wilson, "Probable inference, the law of succession, and statistical
  inference", JASA 1927), which stays inside [0, 1] and keeps its coverage for small n and for
  proportions near 0 or 1, where the normal ("Wald") interval fails (Brown, Cai & DasGupta,
  "Interval Estimation for a Binomial Proportion", Statistical Science 2001).
- Several seeds: the mean over seeds with Student's t interval (seeds - 1 degrees of freedom). All
  seeds are tested on the same images, so it measures the seed-to-seed spread, not the test-set noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats

CONFIDENCE = 0.95


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) of k successes in n trials (``scipy.stats.binomtest``)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """Student's t interval (lo, hi) of the mean of ``values``; None for fewer than 2 values."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return None
    mean = math.fsum(vals) / len(vals)
    sem = stats.sem(vals)
    if sem == 0:
        return mean, mean
    lo, hi = stats.t.interval(confidence, len(vals) - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def successes(accuracy: float, n: int) -> int:
    """The count of correct images behind a stored accuracy fraction (k / n, rounded back to k)."""
    return int(round(accuracy * n))


def percent_decimals(n: int | None) -> int:
    """Decimals for an accuracy in % measured on ``n`` images: those of its step 100 / n, at most 2
    (15 images: 0, "47%"; 500: 1, "47.2%"; 10 000: 2, "47.23%"). Unknown n: 1."""
    if not n:
        return 1
    return max(0, min(2, math.ceil(math.log10(n / 100) - 1e-9)))
