r"""Scaling with n from the particle ensembles alone: the checks of high-dimensional runs.

In high dimension (the paper's Section 4) there is no mean-field solution to compare with:
the law of large numbers and the scaling of the error are read from the ensembles over n
and seeds alone (THEORY §5, §6).

* :func:`ensemble_lln` — the LLN without a mean field: the spread of :math:`f_n` over
  seeds, :math:`V_n(t) = E\|f_n - E f_n\|^2_\mu`, is :math:`O(n^{-1})` (Prop. 2.1: the
  fluctuations are :math:`n^{-1/2}\,\omega_t`), so the slope of :math:`n V_n` against n
  is at most 0 (exactly 0 at times where the fluctuations have not self-healed, below 0
  after). The distance :math:`D_n(t) = E\|f_n - \bar f\|^2_\mu` to the mean
  :math:`\bar f` of the largest-n ensemble (a proxy of :math:`f_0`, said as such) decays
  as :math:`n^{-1}` or faster while :math:`\|E f_n - \bar f\|^2` is small beside it.
* :func:`final_scaling` — the loss (4.8) and the signed errors (4.11) with
  :math:`\Theta(f)` and :math:`\Theta(-f)` at the last save time against n (Figs. 1 and
  3: slopes near −1 for the sigmoid network, below −1 for the RBF interpolation), per
  realisation of the target and for the mean over realisations.

Intervals are percentile bootstraps over seeds (:func:`analysis.checks.estimators.bootstrap_stat`),
drawn independently per n and per realisation. Each function returns an
:class:`xarray.Dataset` of statistics for ``analysis.nc``.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.checks.estimators import bootstrap_slope, bootstrap_stat, finite_rows

__all__ = ["ensemble_lln", "final_scaling", "fit_labels"]


def _members(particles, name, *dims):
    """``particles[name]`` as an array (R, n, seed, *dims) with a leading realisation
    axis (of length 1 when the run has one target)."""
    da = particles[name]
    order = ["n", "seed", *dims]
    if "realisation" in da.dims:
        return da.transpose("realisation", *order).values
    return da.transpose(*order).values[None]


def fit_labels(R: int) -> list[str]:
    """Labels of the ``fit`` dimension: the mean over realisations first, then each one."""
    return ["mean"] + [f"realisation {r}" for r in range(R)]


def _gram(F, w):
    """The Gram matrix :math:`\\langle F_s, F_{s'}\\rangle_\\mu` of the finite rows of
    ``F`` (S, Q)."""
    g = finite_rows(F)
    return (g * w) @ g.T


def _gram_var(K, G):
    """:math:`\\sum_q w_q \\mathrm{Var}` of the resamples with seed counts ``K`` (B, S)
    (each row sums to S), from the Gram matrix ``G`` (S, S) of the seeds (ddof 1)."""
    S = G.shape[0]
    return (K @ np.diag(G) - np.einsum("bs,st,bt->b", K, G, K) / S) / (S - 1)


def _boot_gram_var(grams, n_boot, rng):
    """(n_boot, len(grams)) bootstrap resamples of :func:`_gram_var` per group (seeds
    drawn with replacement, independently per group; NaN for fewer than 2 seeds)."""
    out = np.full((n_boot, len(grams)), np.nan)
    for i, G in enumerate(grams):
        S = len(G)
        if S >= 2:
            idx = rng.integers(0, S, (n_boot, S))
            K = np.zeros((n_boot, S))
            np.add.at(K, (np.arange(n_boot)[:, None], idx), 1.0)
            out[:, i] = _gram_var(K, G)
    return out




def ensemble_lln(particles, *, n_boot=1000, level=0.95, rng):
    r"""The law of large numbers from the ensembles alone (module doc).

    Parameters
    ----------
    particles : xarray.Dataset
        ``f_n(n, seed, t, x)`` (optionally with a ``realisation`` dimension: the
        statistics are pooled over realisations, each with its own mean) and
        ``x_weight(x)``.
    n_boot, level : int, float
        Bootstrap resamples and interval level.
    rng : numpy.random.Generator

    Returns
    -------
    xarray.Dataset
        ``ens_var(n, t)`` (:math:`V_n`), ``ens_var_slope(t)`` with ``_low``/``_high``
        (the slope of :math:`n V_n` against n: at most 0 by the LLN at the CLT rate),
        ``dist_largest(n, t)`` (:math:`D_n`, NaN at the largest n),
        ``dist_largest_slope(t)`` with ``_low``/``_high`` (:math:`\bar f` held fixed in
        the bootstrap; ``attrs["reference"]`` says what it is).
    """
    F = _members(particles, "f_n", "t", "x")  # (R, n, S, T, Q)
    w = particles["x_weight"].values
    ns = particles["n"].values.astype(float)
    R, m, S, T, Q = F.shape
    big = int(np.argmax(ns))
    with np.errstate(invalid="ignore"):
        fbar = np.nanmean(F[:, big], axis=1)  # (R, T, Q)
    var = np.full((m, T), np.nan)
    dist = np.full((m, T), np.nan)
    fits_v, fits_d = [], []
    for j in range(T):
        # pooled over realisations, each realisation's members around their own mean.
        # Per (realisation, n) only the seeds' Gram matrix G_ss' = <F_s, F_s'>_mu enters:
        # a resample with counts k has sum_q w_q Var = (k.diag G - k'Gk/S)/(S - 1), so the
        # bootstrap costs O(S^2) per resample, not O(S Q) (module doc).
        grams = [[_gram(F[r, i, :, j], w) for r in range(R)] for i in range(m)]
        dists = [[finite_rows(np.sum(w * (F[r, i, :, j] - fbar[r, j]) ** 2, axis=-1)
                              [:, None])[:, 0] for r in range(R)] for i in range(m)]
        for i in range(m):
            vs = [_gram_var(np.ones((1, len(G))), G)[0] for G in grams[i] if len(G) >= 2]
            var[i, j] = np.mean(vs) if vs else np.nan
            if i != big:
                dd = [d.mean() for d in dists[i] if len(d)]
                dist[i, j] = np.mean(dd) if dd else np.nan
        boot_v = np.mean([_boot_gram_var([grams[i][r] for i in range(m)], n_boot, rng)
                          for r in range(R)], axis=0)
        boot_d = np.mean([bootstrap_stat([dists[i][r] if i != big else dists[i][r][:0]
                                          for i in range(m)],
                                         lambda g: g.mean(axis=1), n_boot, rng)
                          for r in range(R)], axis=0)
        fits_v.append(bootstrap_slope(ns, ns * var[:, j], ns[None] * boot_v, level))
        fits_d.append(bootstrap_slope(ns, dist[:, j], boot_d, level))
    ds = xr.Dataset(
        {"ens_var": (("n", "t"), var),
         "ens_var_slope": ("t", [f[0] for f in fits_v]),
         "ens_var_slope_low": ("t", [f[2] for f in fits_v]),
         "ens_var_slope_high": ("t", [f[3] for f in fits_v]),
         "dist_largest": (("n", "t"), dist),
         "dist_largest_slope": ("t", [f[0] for f in fits_d]),
         "dist_largest_slope_low": ("t", [f[2] for f in fits_d]),
         "dist_largest_slope_high": ("t", [f[3] for f in fits_d])},
        coords={"n": particles["n"].values, "t": particles["t"].values})
    ds.attrs["reference"] = (f"f_bar: the mean of the n = {int(ns[big])} ensemble "
                             f"({S} seeds), a proxy of f_0 (no mean field in the run)")
    return ds


def _scaling(ns, V, n_boot, level, rng, point=lambda v: v):
    """Fits of ``point`` (identity, or ``abs`` for a signed quantity) of the seed means of
    ``V`` (R, n, S) against n, per realisation and for the mean over realisations.

    Returns (slope, low, high, values), each over the ``fit`` labels (mean first), and
    ``values`` (fit, n)."""
    R, m, S = V.shape
    rows, vals, boots = [], [], []
    for r in range(R):
        groups = [finite_rows(V[r, i]) for i in range(m)]
        with np.errstate(invalid="ignore"):
            mean = np.array([np.mean(g) if len(g) else np.nan for g in groups])
        boot = bootstrap_stat(groups, lambda g: g.mean(axis=1), n_boot, rng)
        vals.append(mean)
        boots.append(boot)
    vals = np.array(vals)
    boots = np.array(boots)  # (R, n_boot, n)
    allv = np.concatenate([vals.mean(axis=0)[None], vals])
    allb = np.concatenate([boots.mean(axis=0)[None], boots])
    for v, b in zip(allv, allb):
        s, _, lo, hi = bootstrap_slope(ns, point(v), point(b), level)
        rows.append((s, lo, hi))
    rows = np.array(rows)
    return rows[:, 0], rows[:, 1], rows[:, 2], allv


def final_scaling(particles, *, n_boot=1000, level=0.95, rng):
    r"""The loss (4.8) and the signed errors (4.11) at the last save time against n.

    The signed errors are :math:`e_\pm = \langle\Theta(\pm f)(f - f_n)\rangle_\mu` on the
    run's nodes (the paper's :math:`\hat P` fresh points); their slopes are fitted to
    :math:`|E e_\pm|`. A mean that changes sign between n has no power law: its slope is
    NaN (``signed_*_sign_changes`` counts the changes).

    Returns
    -------
    xarray.Dataset
        Over the dimension ``fit`` (``"mean"``, then ``"realisation r"``):
        ``final_loss_mean(fit, n)``, ``loss_slope(fit)``, ``loss_slope_low(fit)``,
        ``loss_slope_high(fit)``; ``signed_pos(fit, n)``, ``signed_pos_slope(fit)`` with
        ``_low``/``_high``, and the same for ``signed_neg``.
    """
    ns = particles["n"].values.astype(float)
    L = _members(particles, "loss", "t")[..., -1]  # (R, n, S)
    F = _members(particles, "f_n", "t", "x")[..., -1, :]  # (R, n, S, Q)
    ft = particles["f_target"]
    w = particles["x_weight"].values
    if "realisation" in ft.dims:
        f = ft.transpose("realisation", "x").values[:, None, None, :]
    else:
        f = ft.values[None, None, None, :]
    R = L.shape[0]
    out = {}
    s, lo, hi, vals = _scaling(ns, L, n_boot, level, rng)
    out.update(final_loss_mean=(("fit", "n"), vals), loss_slope=("fit", s),
               loss_slope_low=("fit", lo), loss_slope_high=("fit", hi))
    for name, sign in (("signed_pos", 1.0), ("signed_neg", -1.0)):
        E = np.sum(w * (sign * f > 0) * (f - F), axis=-1)  # (R, n, S)
        s, lo, hi, vals = _scaling(ns, E, n_boot, level, rng, point=np.abs)
        changes = np.sum(np.diff(np.sign(vals), axis=1) != 0, axis=1)
        bad = changes > 0
        s, lo, hi = (np.where(bad, np.nan, a) for a in (s, lo, hi))
        out.update({name: (("fit", "n"), vals), f"{name}_slope": ("fit", s),
                    f"{name}_slope_low": ("fit", lo), f"{name}_slope_high": ("fit", hi),
                    f"{name}_sign_changes": ("fit", changes)})
    return xr.Dataset(out, coords={"fit": fit_labels(R), "n": particles["n"].values})
