r"""Checks of the losses on the outputs of ``mfpc run``: monotonicity, rate, self-healing.

* :func:`loss_monotonicity` — convexity in f: GD decreases E = nℓ (THEORY §2) and the
  mean field decreases ℓ(f_0) ((2.37), (2.43)).
* :func:`time_to_level` — the n-independent rate (remark after Prop. 2.2).
* :func:`final_loss_scaling` — self-healing (Prop. 2.3, 2.4, (2.52)–(2.54)).
* :func:`fluctuation_scaling` — SGD fluctuations (Prop. 3.2, (3.23), (3.34)).

Each returns an :class:`xarray.Dataset` of statistics for ``analysis.nc``;
:func:`losses_rows` turns them into rows of ``report.md``. Tolerances in
``docs/propositions.md``. Also reachable as ``analysis.checks.limits.<name>``.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.checks.estimators import align_to, bootstrap_slope, bootstrap_stat, finite_rows, reference_loss0
from analysis.checks.power import judge, slope_alternatives
from analysis.checks.rows import NotApplicable, Row, fmt, sgd_replaces_gd, verdict, with_note

__all__ = ["loss_monotonicity", "time_to_level", "final_loss_scaling", "fluctuation_scaling",
           "losses_rows", "LOSS_INCREASE_TOL", "FLAT_TOL"]


def loss_monotonicity(particles, meanfield=None):
    r"""Largest increase of the loss between consecutive save times, relative to ℓ(0).

    Gradient descent decreases :math:`E = n\ell` (:math:`dE/dt = -\sum|\dot z_i|^2`,
    THEORY §2) and the mean field decreases :math:`\ell(f_0)` ((2.37) with
    :math:`M \succeq 0`). Negative values mean strictly decreasing.

    Returns
    -------
    xarray.Dataset
        ``loss_max_increase(n)`` (max over seeds and save intervals of
        :math:`(\ell(t_{j+1}) - \ell(t_j))/\ell(0)`) and, for each mean-field loss present,
        ``loss_0_max_increase(solver)``.
    """
    L = particles["loss"].transpose("n", "seed", "t").values
    # NaN (never a warning) where nothing can be compared: one save time (t_end = 0),
    # members that are all NaN, or l(0) = 0 (a relative increase of nothing)
    inc = np.full(L.shape[0], np.nan)
    if L.shape[2] > 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.diff(L, axis=2) / np.where(L[:, :, :1] > 0, L[:, :, :1], np.nan)
        rel = rel.reshape(L.shape[0], -1)
        seen = ~np.isnan(rel).all(axis=1)  # a loss that blew up (+inf) stays +inf
        inc[seen] = np.max(np.where(np.isnan(rel[seen]), -np.inf, rel[seen]), axis=1)
    ds = xr.Dataset({"loss_max_increase": ("n", inc)}, coords={"n": particles["n"].values})
    if meanfield is not None:
        names = [v for v in ("loss_0", "loss_0_characteristics") if v in meanfield]
        vals = []
        for v in names:
            l0 = meanfield[v].values
            vals.append(float(np.max(np.diff(l0) / l0[0])) if l0.size > 1 else np.nan)
        if names:
            ds["loss_0_max_increase"] = ("solver", vals)
            ds = ds.assign_coords(solver=["grid" if v == "loss_0" else "characteristics"
                                          for v in names])
    return ds


def _crossing_time(t, loss, level):
    """First time the loss reaches ``level``, linear in log(loss) between save times."""
    t, loss = np.asarray(t, float), np.asarray(loss, float)
    if not np.isfinite(loss[0]):
        return np.nan
    if loss[0] <= level:
        return 0.0
    for j in range(1, len(t)):
        if not np.isfinite(loss[j]):
            return np.nan
        if loss[j] <= level:
            a, b = np.log(loss[j - 1]), np.log(loss[j])
            return float(t[j - 1] + (t[j] - t[j - 1]) * (a - np.log(level)) / (a - b))
    return np.nan


def time_to_level(particles, meanfield=None, *, fraction=0.5, n_boot=1000, level=0.95, rng):
    r"""Time for the loss to reach a fixed level, against n (expected flat: slope 0).

    The level is ``fraction`` × the initial mean-field loss :math:`\ell_0(0)` (of
    :func:`reference_loss0`; or, without
    ``meanfield``, of the mean initial loss at the largest n). If the reference curve does
    not reach it by the last save time, the level is the geometric mean of its first
    and last values (recorded in ``attrs["level_rule"]``). Crossing times are interpolated
    linearly in :math:`\log\ell` between save times; members that never reach the level are
    left out and counted.

    Returns
    -------
    xarray.Dataset
        ``time_to_level(n)`` (mean over seeds), ``time_to_level_stderr(n)``,
        ``time_to_level_reached(n)``, ``time_to_level_0`` (mean field),
        ``time_to_level_slope`` with ``_low``/``_high`` (bootstrap over seeds),
        ``loss_level``.
    """
    ts = particles["t"].values
    L = particles["loss"].transpose("n", "seed", "t").values
    l0 = None if meanfield is None else reference_loss0(meanfield)
    if l0 is not None:
        refcurve = align_to(l0, particles).values
    else:
        refcurve = np.nanmean(L[int(np.argmax(particles["n"].values))], axis=0)
    lev = fraction * refcurve[0]
    rule = f"{fraction} x initial reference loss"
    if not refcurve[-1] <= lev:
        lev = float(np.sqrt(refcurve[0] * refcurve[-1]))
        rule = "geometric mean of the reference loss at the first and last save times"
    tc = np.array([[_crossing_time(ts, L[i, s], lev) for s in range(L.shape[1])]
                   for i in range(L.shape[0])])
    reached = np.sum(np.isfinite(tc), axis=1)
    with np.errstate(invalid="ignore"):
        mean = np.array([np.nanmean(r) if np.isfinite(r).any() else np.nan for r in tc])
        sd = np.array([np.nanstd(r, ddof=1) if np.isfinite(r).sum() > 1 else np.nan for r in tc])
    groups = [r[np.isfinite(r)] for r in tc]
    boot = bootstrap_stat(groups, lambda r: r.mean(axis=1), n_boot, rng)
    s, b, lo, hi = bootstrap_slope(particles["n"].values, mean, boot, level)
    ds = xr.Dataset(
        {"time_to_level": ("n", mean), "time_to_level_stderr": ("n", sd / np.sqrt(reached)),
         "time_to_level_reached": ("n", reached),
         "time_to_level_0": _crossing_time(ts, refcurve, lev),
         "time_to_level_slope": s, "time_to_level_slope_low": lo,
         "time_to_level_slope_high": hi, "loss_level": lev},
        coords={"n": particles["n"].values})
    ds.attrs["level_rule"] = rule
    return ds


def final_loss_scaling(particles, meanfield=None, *, n_boot=1000, level=0.95, rng):
    r"""Loss at the last save time against n (self-healing: slope below −1).

    :math:`E\ell(f_n(T)) = \ell(f_0(T)) + O(\text{fluctuations})`; the fluctuation part
    decays faster than :math:`n^{-1}` at times :math:`\gg\log n` (Prop. 2.3, 2.4). The
    mean-field floor :math:`\ell_0(T)` (``loss_floor``, :func:`reference_loss0`) must be
    small beside the measured
    loss for the slope to show it (``loss_floor_ratio`` = floor / mean loss at the
    largest n). Interval: bootstrap over seeds.
    """
    L = particles["loss"].isel(t=-1).transpose("n", "seed").values
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(L, axis=1)
    groups = [finite_rows(r) for r in L]
    boot = bootstrap_stat(groups, lambda r: r.mean(axis=1), n_boot, rng)
    s, b, lo, hi = bootstrap_slope(particles["n"].values, mean, boot, level)
    ds = xr.Dataset(
        {"final_loss": ("n", mean),
         "final_loss_stderr": ("n", np.array([
             np.nanstd(r, ddof=1) / np.sqrt(np.isfinite(r).sum())
             if np.isfinite(r).sum() > 1 else np.nan for r in L])),  # a spread needs 2
         "final_loss_slope": s, "final_loss_slope_low": lo, "final_loss_slope_high": hi,
         "final_time": float(particles["t"].values[-1])},
        coords={"n": particles["n"].values})
    l0 = None if meanfield is None else reference_loss0(meanfield)
    if l0 is not None:
        floor = float(align_to(l0, particles).values[-1])
        ds["loss_floor"] = floor
        ds["loss_floor_ratio"] = floor / float(mean[int(np.argmax(particles["n"].values))])
    return ds


def fluctuation_scaling(particles, *, alpha=None, n_boot=1000, level=0.95, rng):
    r"""Fluctuation :math:`\sum_q w_q\mathrm{Var}_{seeds}(f_n - f_0)(t, x_q)` against n.

    For SGD with batch :math:`P \propto n^{2\alpha}` (3.23) the noise-driven fluctuations
    are :math:`O(n^{-\alpha})` (Prop. 3.2, (3.34)), so the variance exponent is
    :math:`-2\alpha` (at times :math:`\gg\log n`, where the intrinsic
    :math:`O(n^{-1/2})` part has self-healed). ``alpha`` None: no prediction (the config
    does not scale P with n). :math:`f_0` is deterministic, so this is the variance of
    :math:`f_n`. Interval: bootstrap over seeds.
    """
    f = particles["f_n"]
    if particles.sizes["seed"] >= 2:
        var = (f.var("seed", ddof=1, skipna=True) * particles["x_weight"]).sum("x",
                                                                               skipna=False)
    else:  # a variance needs 2 seeds
        var = (f.isel(seed=0, x=0, drop=True) * np.nan)
    var = var.transpose("n", "t")
    T = particles.sizes["t"]
    w = particles["x_weight"].values
    F = f.transpose("n", "seed", "t", "x").values

    def wvar(r):
        return np.sum(w * np.var(r, axis=1, ddof=1), axis=-1)

    fits = []
    for j in range(T):
        groups = [finite_rows(F[i, :, j]) for i in range(F.shape[0])]
        groups = [g if len(g) >= 2 else g[:0] for g in groups]  # a variance needs 2 seeds
        boot = bootstrap_stat(groups, wvar, n_boot, rng)
        fits.append(bootstrap_slope(particles["n"].values, var.values[:, j], boot, level))
    ds = xr.Dataset({"fluct_var": var,
                     "fluct_slope": ("t", [f[0] for f in fits]),
                     "fluct_slope_low": ("t", [f[2] for f in fits]),
                     "fluct_slope_high": ("t", [f[3] for f in fits])})
    ds["fluct_expected_slope"] = np.nan if alpha is None else -2.0 * float(alpha)
    return ds


# -- report rows ----------------------------------------------------------------------------
#: loss-increase bound of the monotonicity rows (relative to l(0))
LOSS_INCREASE_TOL = 1e-10
#: |slope| below which the time to reach a loss level counts as flat in n
FLAT_TOL = 0.1

GD_DECREASE = "losses non-increasing (GD), all n and seeds"
MF_DECREASE = "mean-field loss ℓ(f_0) non-increasing"
SGD_EXPONENT = "SGD: variance of f_n − f_0 vs n at the last save time"


#: why an increase cannot be measured (all NaN): one save time, or nothing to lose
NO_INTERVAL = ("no save interval to compare (one save time, t_end = 0) or a loss of 0 at "
               "t = 0 (nothing to decrease)")


def _monotonicity_rows(a, ctx):
    vals = a["loss_max_increase"].values
    inc = np.nan if np.isnan(vals).all() else float(np.nanmax(vals))
    if ctx.scheme != "gd":
        out = [NotApplicable(GD_DECREASE, "holds for gradient descent; this run's scheme is "
                             f"{ctx.scheme}, whose noise can raise the loss")]
    elif np.isnan(inc):
        out = [NotApplicable(GD_DECREASE, NO_INTERVAL)]
    else:
        out = [Row(GD_DECREASE, "(2.2), (2.37), (2.43)", f"largest increase {fmt(inc, 2)} ℓ(0)",
                   f"≤ {LOSS_INCREASE_TOL:g} ℓ(0)", verdict(bool(inc <= LOSS_INCREASE_TOL)))]
    if "loss_0_max_increase" not in a:
        return out
    if ctx.scheme == "langevin":
        return out + [NotApplicable(MF_DECREASE, "holds without temperature; this run's "
                                    "scheme is langevin")]
    vals0 = a["loss_0_max_increase"].values
    if np.isnan(vals0).all():
        return out + [NotApplicable(MF_DECREASE, NO_INTERVAL)]
    inc0 = float(np.nanmax(vals0))
    return out + [Row(MF_DECREASE, "(2.37), (2.39)", f"largest increase {fmt(inc0, 2)} ℓ_0(0)",
                      f"≤ {LOSS_INCREASE_TOL:g} ℓ_0(0)",
                      verdict(bool(inc0 <= LOSS_INCREASE_TOL)))]


#: the loss level must exceed the finite-n excess tr Σ/(2n) by this factor for the time to
#: reach it to be n-independent (below, (2.52) moves the crossing with n)
LEVEL_OVER_EXCESS = 10.0


def _time_to_level_row(a, ctx):
    name = f"time to reach ℓ = {fmt(a['loss_level'])} vs n (n-independent rate)"
    if "lln_trace_sigma" in a and np.isfinite(a["lln_trace_sigma"].values).any():
        # E ℓ(f_n(t)) = ℓ_0(t) + (½ tr_μ Σ_t + ⟨r_0, b_t⟩)/n + o(1/n) (2.52): a level within
        # a few times the excess ½ tr Σ/n of the smallest n is reached later at small n by
        # the fluctuations themselves, which is self-healing's signal, not a rate in n
        excess = float(np.nanmax(a["lln_trace_sigma"].values)) / (2 * float(a["n"].min()))
        if float(a["loss_level"]) < LEVEL_OVER_EXCESS * excess:
            return NotApplicable(name, (
                f"the level {fmt(a['loss_level'])} is within {LEVEL_OVER_EXCESS:g}× the "
                f"finite-n excess ½ tr Σ/n = {fmt(excess, 2)} at n = {int(a['n'].min())} "
                "(2.52), so the time to reach it depends on n; the rate is n-independent "
                "only for levels far above it"))
    s = float(a["time_to_level_slope"])
    lo, hi = float(a["time_to_level_slope_low"]), float(a["time_to_level_slope_high"])
    # flat: consistent with 0 (0 in the interval) or practically flat (|slope| small)
    flat = bool(abs(s) <= FLAT_TOL or lo <= 0.0 <= hi)
    # alternative: a time ∝ n^{±1} (docs/propositions.md, "n-independent rate")
    v, note = judge(lo, hi, None if not np.isfinite(s) else flat, (-1.0, 1.0),
                    center=0.0, seeds=ctx.seeds, min_seeds=ctx.k_95)
    return Row(name, "remark after Prop. 2.2", f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}] (95 %)",
               with_note(f"0 (0 in the interval or |slope| ≤ {FLAT_TOL:g})", note), v)


def _sgd_exponent_row(a, ctx):
    if sgd_replaces_gd(a):
        return NotApplicable(SGD_EXPONENT, "the row “SGD: exponent of Var f_n vs n” compares "
                             "the same slope with that of tr(Σ_t + nθ_nΣ^SGD_t)/n, which "
                             "tends to −2α")
    e = float(a["fluct_expected_slope"])
    if not np.isfinite(e):
        return NotApplicable(SGD_EXPONENT, "needs one batch rule P ∝ n^{2α} for the whole run "
                             "(dynamics.batch = {P0, alpha})")
    s = float(a["fluct_slope"].values[-1])
    lo, hi = float(a["fluct_slope_low"].values[-1]), float(a["fluct_slope_high"].values[-1])
    v, note = judge(lo, hi, bool(lo <= e <= hi), slope_alternatives(e), center=e,
                    seeds=ctx.seeds, min_seeds=ctx.k_95)
    return Row(SGD_EXPONENT, "Prop. 3.2 (3.23), (3.34)", f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}]",
               with_note(f"−2α = {fmt(e)}", note), v)


def losses_rows(a, ctx):
    """The loss rows of ``report.md``: monotonicity (GD and mean field), the time to a
    level and, for SGD, the variance exponent −2α (self-healing: :mod:`analysis.checks.healing`)."""
    out = _monotonicity_rows(a, ctx) + [_time_to_level_row(a, ctx)]
    if ctx.scheme == "sgd":
        out.append(_sgd_exponent_row(a, ctx))
    return out
