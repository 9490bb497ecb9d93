r"""The one row type of ``report.md`` and the one value formatter.

Every check module computes its statistics (an :class:`xarray.Dataset` merged into
``analysis.nc``) and its own rows: a function ``rows(a, ctx)`` returning a list of
:class:`Row` (a prediction with a verdict) and :class:`NotApplicable` (a check that cannot
apply to this run, with the reason in words). :mod:`analysis.report` only renders them:
the rows in the table, the checks that did not apply in one line each below it.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Row", "NotApplicable", "RowContext", "fmt", "verdict", "with_note"]


class Row(NamedTuple):
    """One prediction checked: the table's columns, in order."""

    prediction: str
    reference: str
    measured: str
    expected: str
    verdict: str  # PASS, FAIL, INCONCLUSIVE (analysis.checks.power.VERDICTS)


class NotApplicable(NamedTuple):
    """A check that cannot apply to this run, and why (listed below the table)."""

    prediction: str
    reason: str


class RowContext(NamedTuple):
    """What every row builder needs to know of the run beside ``analysis.nc``.

    ``level``, ``p_min`` and ``z_max`` are the per-time interval level, p-value bound and
    |z| bound of one row of T save times at a family-wise 5 %
    (:func:`analysis.checks.power.per_time_level`); ``k_t`` and ``k_95`` the fewest seeds a
    bootstrap interval needs at that level and at 95 %.
    """

    config: dict
    scheme: str
    seeds: int
    level: float
    p_min: float
    z_max: float
    k_t: int
    k_95: int
    alpha: float | None  # alpha of an SGD batch P = ceil(P0 n^{2 alpha}), else None

    @property
    def pct(self) -> str:
        return f"{100 * self.level:.3g} %"


def fmt(v, d: int = 3) -> str:
    """A number with ``d`` significant digits; ``"nan"`` for what is not finite."""
    v = float(v)
    return "nan" if not np.isfinite(v) else f"{v:.{d}g}"


def verdict(ok) -> str:
    """PASS / FAIL from a bool (rows without an interval; see :func:`power.judge`)."""
    return "PASS" if ok else "FAIL"


def with_note(expected: str, note: str) -> str:
    """The expected column with the reason of an INCONCLUSIVE verdict."""
    return f"{expected}; {note}" if note else expected
