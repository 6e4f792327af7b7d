"""Small statistics shared by the chapters: means with standard errors, paired tests, Holm's correction.

    mean, se = mean_se(per_sample_differences)        # paired s.e.: s.d. of the differences / sqrt(n)
    p = paired_p_value(mean, se, n)                    # two-sided t test of "mean difference = 0"
    adjusted = holm([p1, p2, ...])                     # Holm-Bonferroni over a family of tests

Why Holm: a chapter compares many rows with the paper at once; at alpha 0.05 one row in twenty is
"resolved" by chance. Holm's step-down procedure keeps the family-wise error rate at alpha without
assuming the tests are independent (the rows share samples), and is never less powerful than
Bonferroni.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

CORRECTION = "holm"
ALPHA = 0.05


def mean_se(x) -> tuple[float, float]:
    """Mean and standard error of the mean (sample s.d. with ddof=1, / sqrt(n)); s.e. is NaN for one value.

    For per-sample differences (patched - clean) this is the paired standard error."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def proportion_se(x) -> tuple[float, float]:
    """A proportion p of 0/1 values and its binomial standard error sqrt(p (1 - p) / n)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    p = float(x.mean())
    return p, math.sqrt(p * (1.0 - p) / x.size)


def paired_p_value(mean: float, se: float, n: int) -> float:
    """Two-sided p-value of a paired t test (n - 1 degrees of freedom) that the mean difference is 0.

    With s.e. 0 every difference is the same: p is 1 if they are all 0, else 0. With one sample
    (s.e. NaN) nothing can be resolved: p is 1."""
    if n < 2 or se is None or math.isnan(se) or math.isnan(mean):
        return 1.0
    if se == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    from scipy.stats import t  # scipy comes with scikit-learn

    return float(2.0 * t.sf(abs(mean) / se, df=n - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the order given: compare each with alpha.

    Sorted ascending, the i-th (from 0) of m is multiplied by m - i, then made non-decreasing and
    capped at 1."""
    p = [1.0 if (v is None or math.isnan(v)) else float(v) for v in p_values]
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
