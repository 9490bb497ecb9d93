r"""Shared statistics of the checks: reference f_0, alignment, bootstrap and power-law fits.

Used by :mod:`analysis.checks.limits` (LLN, CLT), :mod:`analysis.checks.losses` and
:mod:`analysis.checks.mkernel`. Slopes come from :func:`analysis.checks.fit.fit_power_law` (and its
vectorised twin :func:`power_law_slopes` for bootstrap refits).
"""
from __future__ import annotations

import numpy as np

from analysis.checks.fit import fit_power_law

__all__ = ["reference_f0", "reference_loss0", "align_to", "trace_sigma", "finite_rows",
           "bootstrap_stat", "power_law_slopes", "bootstrap_slope", "slope_fit"]


def reference_f0(meanfield):
    """The most accurate :math:`f_0(t, x)` in ``meanfield.nc`` and its name.

    Characteristics (spectral in the node counts, no numerical diffusion) when present,
    else ``f_0`` (the grid, or whatever ``mfpc run`` stored there).
    """
    if "f_0_characteristics" in meanfield:
        return meanfield["f_0_characteristics"], "characteristics"
    return meanfield["f_0"], str(meanfield.attrs.get("f_0_source", "grid"))


def reference_loss0(meanfield):
    r""":math:`\ell(f_0(t))` of :func:`reference_f0` (characteristics preferred)."""
    for v in ("loss_0_characteristics", "loss_0"):
        if v in meanfield:
            return meanfield[v]
    return None


def align_to(da, like):
    """``da`` on the save times and x nodes of ``like`` (a particles dataset)."""
    if "t" in da.dims:
        da = da.sel(t=like["t"].values, method="nearest", tolerance=1e-9)
        da = da.assign_coords(t=like["t"].values)
    if "x" in da.dims:
        if da.sizes["x"] != like.sizes["x"] or not np.allclose(da["x"].values, like["x"].values):
            raise ValueError("the mean-field/fluctuation x nodes differ from the particles' x "
                             "nodes; both must come from the same config")
        da = da.assign_coords(x=like["x"].values)
    if "x_" in da.dims:
        da = da.assign_coords(x_=like["x"].values)
    return da


def trace_sigma(fluctuations, particles):
    r""":math:`\mathrm{tr}_\mu\Sigma_t = \sum_q w_q\Sigma_t(x_q, x_q)`, shape (t,)."""
    var = align_to(fluctuations["clt_var"], particles)
    return (var * particles["x_weight"]).sum("x")


def slope_fit(n, y, level):
    """fit_power_law of y against n where y is finite and positive, else NaNs."""
    n, y = np.asarray(n, float), np.asarray(y, float)
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        nan = float("nan")
        return nan, nan, nan, nan, nan
    f = fit_power_law(n[ok], y[ok], level)
    return f.slope, f.intercept, f.low, f.high, f.stderr


def finite_rows(a):
    """Rows of ``a`` (S, ...) that are finite everywhere."""
    a = np.asarray(a, float)
    ok = np.all(np.isfinite(a.reshape(a.shape[0], -1)), axis=1)
    return a[ok]


def bootstrap_stat(groups, stat, n_boot, rng):
    """``stat`` of seed resamples, drawn with replacement independently per group.

    ``groups[i]`` has shape (S_i, ...); ``stat`` maps resamples (B, S_i, ...) to (B,).
    Returns an array (n_boot, len(groups)) (NaN for empty groups).
    """
    out = np.full((n_boot, len(groups)), np.nan)
    for i, g in enumerate(groups):
        if len(g):
            idx = rng.integers(0, len(g), (n_boot, len(g)))
            step = max(1, 2**23 // max(1, g.size))  # bounded memory for resamples
            for b in range(0, n_boot, step):
                out[b:b + step, i] = stat(g[idx[b:b + step]])
    return out


def power_law_slopes(x, Y):
    """Least-squares slopes of ``log Y[b]`` against ``log x`` for every row b, vectorised.

    The same estimator as :func:`analysis.checks.fit.fit_power_law` (its ``slope``; a test holds
    them equal), for the thousands of bootstrap refits. Entries of ``Y`` that are not
    finite and positive are left out of their row; rows with fewer than two points give
    NaN.

    Parameters
    ----------
    x : ndarray, shape (m,)
    Y : ndarray, shape (B, m)
    """
    lx = np.log(np.asarray(x, float))[None, :]
    Y = np.asarray(Y, float)
    ok = np.isfinite(Y) & (Y > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ly = np.where(ok, np.log(np.where(ok, Y, 1.0)), 0.0)
        cnt = ok.sum(axis=1)
        mx = (lx * ok).sum(axis=1) / cnt
        my = ly.sum(axis=1) / cnt
        dx = np.where(ok, lx - mx[:, None], 0.0)
        s = (dx * (ly - my[:, None])).sum(axis=1) / (dx**2).sum(axis=1)
    return np.where(cnt >= 2, s, np.nan)


def bootstrap_slope(ns, point, boot, level):
    """Fit of ``point`` against n and the percentile interval of refits of ``boot`` rows.

    Returns (slope, intercept, low, high); NaNs when fewer than two usable n.
    """
    s, b = slope_fit(ns, point, level)[:2]
    if not np.isfinite(s):
        return s, b, s, s
    slopes = power_law_slopes(ns, boot)
    if np.mean(np.isfinite(slopes)) < 0.5:
        return s, b, float("nan"), float("nan")
    lo, hi = np.nanquantile(slopes, [(1 - level) / 2, (1 + level) / 2])
    return s, b, float(lo), float(hi)
