r"""One fitting function for every scaling question.

``fit_power_law(x, y)`` fits :math:`\log y = \text{intercept} + \text{slope}\,\log x` by
least squares and reports the slope's standard error and a Student-t confidence
interval. It serves the n-scaling laws of the paper (LLN slope −1, self-healing, SGD
:math:`n^{-\alpha}`) and the convergence-order tests of the integrators and solvers.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats

__all__ = ["PowerLawFit", "fit_power_law"]


class PowerLawFit(NamedTuple):
    slope: float
    intercept: float
    stderr: float
    low: float
    high: float
    level: float

    def contains(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


def fit_power_law(x, y, level: float = 0.95) -> PowerLawFit:
    """Least-squares fit of ``log y`` against ``log x`` (natural logs).

    Parameters
    ----------
    x, y : array_like, shape (m,)
        Positive values; m >= 2 (m >= 3 for a finite interval).
    level : float
        Confidence level of the interval on the slope.

    Returns
    -------
    PowerLawFit
        slope, intercept, the slope's standard error and the ``level`` interval
        ``slope ± t_{(1+level)/2, m-2} stderr`` (infinite when m = 2).
    """
    x = np.asarray(x, float).ravel()
    y = np.asarray(y, float).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"fit_power_law needs two arrays of equal length >= 2, got {x.size}, {y.size}")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(x * y)):
        raise ValueError("fit_power_law needs finite positive x and y (it fits in log-log)")
    res = stats.linregress(np.log(x), np.log(y))
    m = x.size
    if m > 2:
        q = stats.t.ppf(0.5 + level / 2, m - 2)
        half = q * res.stderr
    else:
        half = np.inf
    return PowerLawFit(float(res.slope), float(res.intercept), float(res.stderr),
                       float(res.slope - half), float(res.slope + half), float(level))
