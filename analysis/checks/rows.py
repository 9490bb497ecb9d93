r"""The one row type of ``report.md`` and the one value formatter.

Every check module computes its statistics (an :class:`xarray.Dataset` merged into
``analysis.nc``) and its own rows: a function ``..._rows(a, ctx)`` returning a list of
:class:`Row` (a prediction with a verdict) and :class:`NotApplicable` (a check that cannot
apply to this run, with the reason in words). :func:`analysis.checks.run.check_rows`
gathers them in the report's order; :mod:`analysis.report.make` only renders them: the
rows in the table, the checks that did not apply in one line each below it.

A check *cannot apply* to a run when the run lacks what it compares with (no mean field,
no fluctuations, no units, more x nodes than a Q x Q kernel allows) or is of the wrong
kind (the scheme, a batch that does not scale with n, an SGD prediction that replaces the
GD one). A check that applies but could not be decided on this run stays a row: n.a. with
too few seeds or a statistic that is not finite, or before its long-time premise holds
("run longer"); INCONCLUSIVE when its interval holds an alternative.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Row", "NotApplicable", "RowContext", "fmt", "verdict", "with_note",
           "SGD_REPLACES_GD", "sgd_replaces_gd"]


class Row(NamedTuple):
    """One prediction checked: the table's columns, in order."""

    prediction: str
    reference: str
    measured: str
    expected: str
    verdict: str  # one of analysis.checks.power.VERDICTS


class NotApplicable(NamedTuple):
    """A check that cannot apply to this run, and why (listed below the table)."""

    prediction: str
    reason: str


class RowContext(NamedTuple):
    """What every row builder needs to know of the run beside ``analysis.nc``.

    ``level``, ``p_min`` and ``z_max`` are the per-time interval level, p-value bound and
    |z| bound of one row of T save times at a family-wise 5 %
    (:func:`analysis.checks.power.per_time_level`); ``k_t`` and ``k_95`` the fewest seeds a
    bootstrap interval needs at that level and at 95 %. ``meanfield`` and ``fluctuations``
    say whether the run has ``meanfield.nc`` and ``fluctuations.nc``; ``nodes`` is its
    number Q of x nodes.
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
    meanfield: bool = True
    fluctuations: bool = True
    nodes: int = 0

    @property
    def pct(self) -> str:
        return f"{100 * self.level:.3g} %"


def fmt(v, d: int = 3) -> str:
    """A number with ``d`` significant digits; ``"nan"`` for what is not finite."""
    v = float(v)
    return "nan" if not np.isfinite(v) else f"{v:.{d}g}"


def verdict(ok) -> str:
    """PASS / FAIL from a bool, n.a. from None (a statistic that is not finite), for rows
    without an interval (with one: :func:`analysis.checks.power.judge`)."""
    if ok is None:
        return "n.a."
    return "PASS" if ok else "FAIL"


def with_note(expected: str, note: str) -> str:
    """The expected column with the reason of an INCONCLUSIVE verdict."""
    return f"{expected}; {note}" if note else expected


#: why a GD prediction does not apply to an SGD run whose fluctuations.nc has ``sgd_cov``
SGD_REPLACES_GD = ("the GD prediction; on this SGD run the SGD rows test the same data "
                   "against Σ_t + nθΣ^SGD_t")


def sgd_replaces_gd(a) -> bool:
    """Whether the SGD rows (:mod:`analysis.checks.sgd`) replace the GD ones on ``a``."""
    return "sgd_var_ratio" in a
