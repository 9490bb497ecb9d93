r"""Verdicts with power: n.a. when a statistic cannot be estimated, INCONCLUSIVE when its
interval cannot tell the prediction from its alternative (``docs/propositions.md``,
"Power").

Every report row with an interval names its *alternative*: the nearest value a wrong
theory (or a wrong run) would give. A row holding the prediction PASSes only when its
interval excludes every alternative; otherwise it is INCONCLUSIVE, with the number of
seeds that would tell them apart. Interval widths scale as :math:`1/\sqrt{S}` in the
number of seeds S. Where the prediction holds, the estimate lies within the half-width
:math:`h'` of the prediction (at the interval's level), and its interval reaches another
:math:`h'` beyond: it excludes an alternative at distance :math:`d` once
:math:`2h' < d`. From today's half-width :math:`h` that takes

.. math:: S' = \lceil S\,(2h/d)^2 \rceil

seeds (:func:`seeds_needed`).

A percentile-bootstrap interval over S seeds at level :math:`1-a` is a confidence
interval only when the bootstrap distribution resolves its tails: a resample that draws
one seed S times has probability :math:`S\cdot S^{-S} = S^{1-S}`, and while that is at
least :math:`a/2` the interval's ends are such degenerate resamples (with S = 1, a
zero-width interval). :func:`bootstrap_min_seeds` is the smallest S with
:math:`S^{1-S} < a/2`; below it the row is n.a. ("needs at least k seeds").
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["VERDICTS", "INCONCLUSIVE", "FAMILY_ALPHA", "per_time_level",
           "bootstrap_min_seeds", "seeds_needed", "judge", "slope_alternatives"]

#: the verdicts a report row can have, in the order they are counted
INCONCLUSIVE = "INCONCLUSIVE"
VERDICTS = ("PASS", "FAIL", INCONCLUSIVE, "n.a.")
#: family-wise error rate of each prediction checked at the T save times (Bonferroni):
#: intervals at level 1 - FAMILY_ALPHA/T, p-values against FAMILY_ALPHA/T, |z| against
#: the two-sided normal quantile of FAMILY_ALPHA/T
FAMILY_ALPHA = 0.05
#: distance of a slope's alternatives from the prediction: a power of n off by 1/2 (a
#: factor sqrt(n) over the range of n, e.g. the LLN's -1 against the -1/2 of an RMS error)
SLOPE_OFFSET = 0.5


def per_time_level(T):
    """Interval level, p-value bound and |z| bound for one row of T (family-wise 5 %)."""
    a = FAMILY_ALPHA / max(int(T), 1)
    return 1.0 - a, a, float(stats.norm.ppf(1.0 - a / 2))


def bootstrap_min_seeds(level: float) -> int:
    """Smallest number of seeds S with ``S**(1 - S) < (1 - level)/2`` (module doc)."""
    half = (1.0 - float(level)) / 2.0
    S = 2
    while S ** (1 - S) >= half:
        S += 1
    return S


def slope_alternatives(prediction: float) -> tuple[float, float]:
    """The alternatives of a power-law slope: ``prediction ± SLOPE_OFFSET``."""
    return (prediction - SLOPE_OFFSET, prediction + SLOPE_OFFSET)


def seeds_needed(lo, hi, center, alternatives, seeds) -> int:
    """Seeds for an interval of today's half-width ``h = (hi - lo)/2``, shrunk as
    1/sqrt(S), to exclude the alternative nearest ``center`` (at distance d) wherever
    the estimate falls inside its own interval: ``ceil(S (2h/d)^2)``, at least ``S + 1``
    (module doc)."""
    d = min(abs(a - center) for a in alternatives)
    h = 0.5 * (hi - lo)
    need = math.ceil(seeds * (2 * h / d) ** 2) if d > 0 else seeds + 1
    return max(int(need), int(seeds) + 1)


def judge(lo, hi, ok, alternatives, *, center, seeds, min_seeds=1):
    """The verdict of a row with the interval [lo, hi] and the reason of an n.a. or an
    INCONCLUSIVE.

    Parameters
    ----------
    lo, hi : float
        The interval (NaN when it could not be computed).
    ok : bool or None
        Whether the interval agrees with the prediction (None: not measured).
    alternatives : sequence of float
        The alternatives of the row (``docs/propositions.md``).
    center : float
        The prediction (the centre of the interval of a run where it holds).
    seeds : int
        Seeds of the run.
    min_seeds : int
        Fewer seeds than this cannot estimate the statistic: n.a.

    Returns
    -------
    verdict : str
        One of :data:`VERDICTS`.
    note : str
        ``""`` for PASS and FAIL; the reason otherwise.
    """
    if seeds < min_seeds:
        return "n.a.", f"needs at least {min_seeds} seeds (this run has {seeds})"
    if ok is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "n.a.", ""
    if not ok:
        return "FAIL", ""
    held = [a for a in alternatives if lo <= a <= hi]
    if held:
        need = seeds_needed(lo, hi, center, alternatives, seeds)
        alts = ", ".join(f"{a:.3g}" for a in held)
        return INCONCLUSIVE, (f"inconclusive: the interval also holds the alternative {alts}; "
                              f"about {need} seeds would tell them apart")
    return "PASS", ""
