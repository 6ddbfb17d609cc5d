"""Paired statistics for comparing two conditions on the same tasks.

Every MemCollab comparison is paired (the same tasks under both conditions), so the tests are the
paired ones: McNemar's exact test on the discordant tasks, and a paired bootstrap interval of the
accuracy difference. A difference "is real" only where the interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class PairedComparison:
    """B vs A on the same n tasks: the accuracy difference B - A, its 95% interval and McNemar's exact p."""

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci_low: float
    ci_high: float
    only_a: int  # tasks A solved and B did not
    only_b: int  # tasks B solved and A did not
    p_value: float

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: a binomial test of the discordant pairs against 1/2 (1.0 with none)."""
    discordant = only_a + only_b
    if discordant == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), discordant, 0.5).pvalue)


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], samples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of mean(b) - mean(a), resampling tasks (pairs stay together)."""
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if diff.size == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(samples, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def compare(a: Sequence[bool], b: Sequence[bool], samples: int = 10_000, seed: int = 0) -> PairedComparison:
    """Compare paired outcomes (a[i] and b[i] are the same task under conditions A and B)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    n = len(a)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    acc_a = sum(map(bool, a)) / n if n else 0.0
    acc_b = sum(map(bool, b)) / n if n else 0.0
    low, high = paired_bootstrap(a, b, samples, seed)
    return PairedComparison(n, acc_a, acc_b, acc_b - acc_a, low, high, only_a, only_b, mcnemar_exact(only_a, only_b))
