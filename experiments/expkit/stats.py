"""Statistics of the studies: mean +- standard error, paired differences, Holm's correction."""

from __future__ import annotations

import math
import statistics
from typing import Dict, List, Sequence


def mean_sd(xs: Sequence[float]) -> tuple:
    """(mean, sample standard deviation; 0 for one value)."""
    xs = list(xs)
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def mean_se(xs: Sequence[float]) -> tuple:
    """(mean, standard error of the mean; 0 for one value)."""
    m, sd = mean_sd(xs)
    return m, sd / math.sqrt(len(list(xs)))


def paired(a: Sequence[float], b: Sequence[float]) -> dict:
    """The paired difference a - b over matched units (retrain seeds): mean, its standard error,
    t and the two-sided p-value of the one-sample t-test (n - 1 degrees of freedom)."""
    from scipy import stats

    d = [x - y for x, y in zip(a, b)]
    m, se = mean_se(d)
    t = m / se if se > 0 else (0.0 if m == 0 else math.copysign(math.inf, m))
    p = float(2 * stats.t.sf(abs(t), len(d) - 1)) if se > 0 and len(d) > 1 else (1.0 if m == 0 else 0.0)
    return {"mean": m, "se": se, "t": t, "p": p, "n": len(d)}


def holm(pvalues: Dict[str, float], alpha: float = 0.05) -> Dict[str, bool]:
    """Holm's step-down correction (Holm, Scand. J. Statist. 1979): sort the k p-values
    ascending and reject p_(i) while p_(i) <= alpha / (k - i + 1), i = 1..k; {name: rejected}."""
    order = sorted(pvalues, key=lambda k: pvalues[k])
    out, going = {}, True
    for i, name in enumerate(order):
        going = going and pvalues[name] <= alpha / (len(order) - i)
        out[name] = going
    return out


def percentile_rank(value: float, population: Sequence[float]) -> float:
    """The share of `population` strictly below `value`, in percent (ties count half)."""
    pop = list(population)
    below = sum(x < value for x in pop) + 0.5 * sum(x == value for x in pop)
    return 100.0 * below / len(pop)


def fmt(m: float, s: float, scale: float = 100.0, nd: int = 1) -> str:
    """'m +- s' of fractions as percentages."""
    return f"{scale * m:.{nd}f} ± {scale * s:.{nd}f}"


def as_list(x) -> List:
    return list(x)
