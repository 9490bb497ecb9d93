r"""Self-healing and the f-level closure on the outputs of ``mfpc run``.

* The excess loss :math:`E\,\ell(f_n(t)) - \ell_0(t)` (Prop. 2.3, 2.4, (2.52)–(2.54)). With
  :math:`f_n = f_0 + \delta f` and :math:`r_0 = f_0 - f`,
  :math:`\ell(f_n) - \ell_0 = \langle r_0, \delta f\rangle_\mu + \tfrac12\|\delta f\|^2_\mu`,
  whose mean at a fixed t is :math:`(\tfrac12\mathrm{tr}_\mu\Sigma_t + \langle r_0,
  b_t\rangle_\mu)/n + o(1/n)`: slope −1 in n. What heals is n times it, which falls
  towards 0 as :math:`f_0 \to f` and :math:`\Sigma_t \to 0`. It is judged only where the
  estimator has power (:func:`excess_power`).
* The decay of :math:`\mathrm{tr}_\mu\Sigma_t` after its peak, read from
  ``lln_trace_sigma`` of :func:`analysis.checks.limits.lln`, and the healing time two
  ways (:mod:`meanfield.closure`).
* The closure (2.50): the influence :math:`\Sigma_t` propagated with M frozen at
  :math:`\rho_0(t)` over a horizon h against the influence :math:`\Sigma_{t+h}`
  (``closure_error(t)``), beside the regime ratio ``closure_regime(t)``.

The rules are derived in ``docs/propositions.md`` ("Self-healing on the excess loss",
"The f-level closure").
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from analysis.checks.estimators import (align_to, bootstrap_slope, bootstrap_stat, finite_rows,
                                        reference_f0, reference_loss0, trace_sigma)
from analysis.checks.power import judge, slope_alternatives
from analysis.checks.rows import NotApplicable, Row, fmt, with_note
from meanfield.closure import (closure_error, closure_regime, closure_tolerance,
                               halving_time_measured, halving_time_predicted, l2_frobenius,
                               rk4_propagation_gap)
from meanfield.mkernel import grid_units, m_kernel

__all__ = ["healing_checks", "healing_rows", "closure_row", "excess_power", "REGIME_SMALL",
           "HALF"]

#: regime ratio ‖r_0‖/√tr Σ below which the closure is judged against its tolerance
REGIME_SMALL = 0.1
#: a trace that fell to at most this fraction of its peak counts as healed
HALF = 0.5
#: relative tolerance for matching t + h to a save time
_T_TOL = 1e-9

def excess_power(r0_norm, trace, n, seeds):
    r"""Predicted signal over standard error of the mean excess loss over ``seeds`` seeds.

    Signal :math:`\tfrac12\mathrm{tr}_\mu\Sigma_t/n`. One seed's excess is
    :math:`\langle r_0, \delta f\rangle_\mu + \tfrac12\|\delta f\|^2_\mu` with
    :math:`\delta f \approx N(0, \Sigma_t/n)`: the variance of the first term is
    :math:`\langle r_0, \Sigma_t r_0\rangle_\mu/n \le \|r_0\|^2_\mu\mathrm{tr}_\mu\Sigma_t/n`,
    of the second :math:`\mathrm{tr}_\mu(\Sigma_t^2)/(2n^2) \le (\mathrm{tr}_\mu
    \Sigma_t)^2/(2n^2)`, so the standard error of the mean over S seeds is at most

    .. math:: \mathrm{se} = \sqrt{\big(\|r_0\|^2\mathrm{tr}\Sigma/n
              + (\mathrm{tr}\Sigma)^2/(2n^2)\big)/S}.

    Returns signal / se (elementwise).
    """
    r0 = np.asarray(r0_norm, float)
    tr = np.asarray(trace, float)
    n = np.asarray(n, float)
    se = np.sqrt((r0**2 * tr / n + tr**2 / (2 * n**2)) / seeds)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 0.5 * tr / n / se


def _m_sources(problem, meanfield, j_mf):
    """M[ρ_0(t)] (Q, Q) from the sources meanfield.nc holds at its save index ``j_mf``:
    characteristic nodes first, then the grid density."""
    out = {}
    x = problem.x
    if meanfield is None:
        return out
    if "y_nodes" in meanfield and "c_nodes" in meanfield:
        y = meanfield["y_nodes"].isel(t=j_mf).values
        c = meanfield["c_nodes"].isel(t=j_mf).values
        out["characteristics"] = m_kernel(problem.kernel, x, y, c, meanfield["weight"].values)
    if "rho_0" in meanfield:
        y, c, mass = grid_units(meanfield["rho_0"].isel(t=j_mf))
        out["grid"] = m_kernel(problem.kernel, x, y, c, mass)
    return out


def _horizon(ts, h):
    """Pairs (k, j) of save indices with t_j = t_k + h (h None: the next save time)."""
    pairs = []
    for k, t in enumerate(ts):
        if h is None:
            if k + 1 < len(ts):
                pairs.append((k, k + 1))
            continue
        j = np.flatnonzero(np.abs(ts - (t + h)) <= _T_TOL * max(1.0, abs(t + h)))
        if len(j):
            pairs.append((k, int(j[0])))
    return pairs


def healing_checks(particles, meanfield, fluctuations, cfg, *, problem=None, a=None,
                   n_boot=1000, level=0.95, z=3.0, rng):
    r"""Statistics of self-healing and of the closure (2.50).

    Parameters
    ----------
    particles : xarray.Dataset
        ``loss(n, seed, t)``, ``f_target(x)``, ``x_weight(x)``.
    meanfield : xarray.Dataset or None
        ``loss_0`` (and ``f_0``) for the excess loss; characteristic nodes or ``rho_0``
        for M[ρ_0].
    fluctuations : xarray.Dataset or None
        ``clt_cov(t, x, x_)``, ``clt_var(t, x)`` (the influence or ensemble Σ_t).
    cfg : dict
        The resolved config (``[fluctuations] closure_horizon``, ``dt``).
    problem : particles.problem.Problem, optional
        For the kernel of M; without it the closure is not computed.
    a : xarray.Dataset, optional
        Statistics already computed; its ``lln_trace_sigma(t)`` is reused.
    n_boot, level : bootstrap resamples and interval level.
    z : float
        Signal-to-standard-error ratio the excess loss needs to be judged.
    rng : numpy.random.Generator

    Returns
    -------
    xarray.Dataset
        ``excess_loss(n, t)``, ``excess_loss_stderr(n, t)``, ``excess_loss_power(n, t)``,
        ``excess_loss_slope(t)`` with ``_low``/``_high``, ``excess_loss_fall(n)`` with
        ``_low``/``_high`` and its times ``excess_loss_fall_from(n)``,
        ``excess_loss_fall_to(n)``, ``excess_loss_fall_expected(n)``;
        ``r0_norm(t)``, ``trace_sigma_decay``, ``trace_sigma_peak_time``,
        ``healing_time_measured``, ``healing_time_predicted``, ``healing_rate_predicted``;
        ``closure_error(t)`` (h in attrs), ``closure_regime(t)``,
        ``closure_tolerance(t)``. Variables whose inputs are missing are absent.
    """
    ts = particles["t"].values.astype(float)
    ns = particles["n"].values
    T, S = len(ts), int(particles.sizes["seed"])
    w = particles["x_weight"].values
    ds = xr.Dataset(coords={"n": ns, "t": ts})
    ds.attrs["healing_power_z"] = z
    l0 = None if meanfield is None else reference_loss0(meanfield)
    if l0 is None:
        return ds
    l0 = align_to(l0, particles).values
    f0 = align_to(reference_f0(meanfield)[0], particles).transpose("t", "x").values
    r0 = np.sqrt(np.sum(w * (f0 - particles["f_target"].values) ** 2, axis=1))
    ds["r0_norm"] = ("t", r0)
    L = particles["loss"].transpose("n", "seed", "t").values - l0[None, None, :]
    with np.errstate(invalid="ignore"):
        E = np.nanmean(L, axis=1)
    cnt = np.isfinite(L).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.nanstd(L, axis=1, ddof=1) / np.sqrt(cnt)
    ds["excess_loss"] = (("n", "t"), E)
    ds["excess_loss_stderr"] = (("n", "t"), np.where(cnt > 1, se, np.nan))
    # slope in n at each t (bootstrap over seeds, independently per n)
    out = np.full((4, T), np.nan)
    for j in range(T):
        groups = [finite_rows(L[i, :, j]) for i in range(len(ns))]
        boot = bootstrap_stat(groups, lambda r: r.mean(axis=1), n_boot, rng)
        out[:, j] = bootstrap_slope(ns, E[:, j], boot, level)
    ds["excess_loss_slope"] = ("t", out[0])
    ds["excess_loss_slope_low"] = ("t", out[2])
    ds["excess_loss_slope_high"] = ("t", out[3])
    ds["excess_loss_slope"].attrs.update(expected=-1.0, level=level, n_boot=n_boot,
                                         interval="percentile bootstrap over seeds, per n")
    if a is not None and "lln_trace_sigma" in a:
        tr = np.asarray(a["lln_trace_sigma"].values, float)
    elif fluctuations is not None and "clt_var" in fluctuations:
        tr = trace_sigma(fluctuations, particles).values
    else:
        return ds
    power = excess_power(r0[None, :], tr[None, :], ns[:, None].astype(float), S)
    ds["excess_loss_power"] = (("n", "t"), power)
    # n·excess falls: from the first powered time at or after the peak of tr Σ to the
    # last powered time, per n (the same resampled seeds at both times)
    peak = int(np.nanargmax(tr)) if np.isfinite(tr).any() else 0
    fall = np.full((len(ns), 6), np.nan)
    for i in range(len(ns)):
        ok = np.flatnonzero((power[i] >= z) & (np.arange(T) >= peak) & np.isfinite(E[i]))
        if len(ok) < 2:
            continue
        ja, jb = int(ok[0]), int(ok[-1])
        g = finite_rows(L[i][:, [ja, jb]])
        if len(g) < 2:
            continue
        boot = bootstrap_stat([g], lambda r: r[..., 1].mean(axis=1) / r[..., 0].mean(axis=1),
                              n_boot, rng)[:, 0]
        lo, hi = np.nanquantile(boot, [(1 - level) / 2, (1 + level) / 2])
        fall[i] = [E[i, jb] / E[i, ja], lo, hi, ts[ja], ts[jb], tr[jb] / tr[ja]]
    for k, name in enumerate(("", "_low", "_high", "_from", "_to", "_expected")):
        ds[f"excess_loss_fall{name}"] = ("n", fall[:, k])
    ds["excess_loss_fall"].attrs.update(
        level=level, expected="< 1; excess_loss_fall_expected is the leading-order value")
    # the decay of tr Σ after its peak and the healing time two ways
    ds["trace_sigma_peak_time"] = float(ts[peak])
    ds["trace_sigma_decay"] = float(tr[-1] / tr[peak]) if tr[peak] > 0 else np.nan
    ds["healing_time_measured"] = halving_time_measured(ts, tr)
    _closure(ds, particles, meanfield, fluctuations, cfg, problem, r0, tr, peak)
    return ds


def _closure(ds, particles, meanfield, fluctuations, cfg, problem, r0, tr, peak):
    """closure_error(t), closure_regime(t), closure_tolerance(t), the predicted healing
    time (into ``ds``)."""
    ts = particles["t"].values.astype(float)
    T = len(ts)
    ds["closure_regime"] = ("t", closure_regime(r0, tr))
    if fluctuations is None or "clt_cov" not in fluctuations or meanfield is None \
            or problem is None:  # no problem: its files are gone (said in the report's notes)
        return
    mf_t = meanfield["t"].values.astype(float)
    cov = align_to(fluctuations["clt_cov"], particles).transpose("t", "x", "x_").values
    w = particles["x_weight"].values
    fl = cfg.get("fluctuations", {})
    h_cfg = fl.get("closure_horizon")
    dt = fl.get("dt")
    try:
        dt = json.loads(fluctuations.attrs.get("resolution", "{}")).get("dt", dt)
    except (TypeError, ValueError):
        pass
    err, tol, hor, mgap = (np.full(T, np.nan) for _ in range(4))
    source = ""
    Ms = {}
    for k, j in _horizon(ts, None if h_cfg is None else float(h_cfg)):
        jm = np.flatnonzero(np.abs(mf_t - ts[k]) <= _T_TOL * max(1.0, abs(ts[k])))
        if not len(jm):
            continue
        Ms = _m_sources(problem, meanfield, int(jm[0]))
        if not Ms:
            break
        source = next(iter(Ms))
        h = ts[j] - ts[k]
        e, _ = closure_error(Ms[source], w, cov[k], cov[j], h)
        others = [closure_error(M, w, cov[k], cov[j], h)[0] for s, M in Ms.items()
                  if s != source]
        mgap[k] = max([abs(o - e) for o in others], default=0.0)
        s = np.sqrt(w)
        lam = np.linalg.eigvalsh(s[:, None] * Ms[source] * s[None, :])
        gap = rk4_propagation_gap(lam, h, float(dt)) if dt else 0.0
        err[k], hor[k] = e, h
        tol[k] = closure_tolerance(ds["closure_regime"].values[k], gap,
                                   l2_frobenius(cov[k], w), l2_frobenius(cov[j], w), mgap[k])
    ds["closure_error"] = ("t", err)
    ds["closure_error"].attrs.update(
        h=float(h_cfg) if h_cfg is not None else "save spacing (closure_horizon per t)",
        m_source=source)
    ds["closure_horizon"] = ("t", hor)
    ds["closure_tolerance"] = ("t", tol)
    ds["closure_m_gap"] = ("t", mgap)
    # predicted healing time: the closure from the peak of tr Σ with M[ρ_0(T)] frozen
    jm = np.flatnonzero(np.abs(mf_t - ts[-1]) <= _T_TOL * max(1.0, abs(ts[-1])))
    if len(jm):
        MT = _m_sources(problem, meanfield, int(jm[0]))
        if MT:
            th, rate = halving_time_predicted(next(iter(MT.values())), w, cov[peak])
            ds["healing_time_predicted"] = th
            ds["healing_rate_predicted"] = rate


def _fl(v):
    return float(np.asarray(v))


def healing_rows(a, ctx) -> list:
    """The report rows of self-healing, the trace decay and the closure (2.50)."""
    out = []
    if "excess_loss" not in a:
        return [NotApplicable("self-healing: excess loss E ℓ(f_n) − ℓ_0",
                              "needs the mean-field loss ℓ_0(t) (meanfield.nc); add "
                              "[meanfield]")]
    if "excess_loss_power" not in a:
        return [NotApplicable("self-healing: excess loss E ℓ(f_n) − ℓ_0",
                              "needs tr_μ Σ_t (fluctuations.nc) to tell where the estimator "
                              "has power; add [fluctuations]")]
    ts, ns = a["t"].values, a["n"].values
    z = float(a.attrs.get("healing_power_z", 3.0))
    power = a["excess_loss_power"].values
    S = ctx.seeds
    # slope of the excess loss in n at each t with power at every n
    weak = []  # (t, n, power, ||r_0||) of the times without power
    for j, t in enumerate(ts):
        pw = power[:, j]
        name = f"excess loss E ℓ(f_n) − ℓ_0 vs n, t = {t:g}"
        if not np.all(pw >= z):
            i = int(np.nanargmin(pw)) if np.isfinite(pw).any() else 0
            weak.append((t, int(ns[i]), pw[i], float(a["r0_norm"].values[j])))
            continue
        s, lo, hi = (float(a[v].values[j]) for v in (
            "excess_loss_slope", "excess_loss_slope_low", "excess_loss_slope_high"))
        ok = None if not np.isfinite(lo) else bool(lo <= -1.0 <= hi)
        v, note = judge(lo, hi, ok, slope_alternatives(-1.0), center=-1.0, seeds=S,
                        min_seeds=ctx.k_95)
        if v == "n.a.":
            out.append(NotApplicable(name, note or "the excess loss is not positive at every "
                                     "n, so no power law can be fitted"))
            continue
        pct = f"{100 * float(a['excess_loss_slope'].attrs.get('level', 0.95)):.3g} %"
        out.append(Row(name, "Prop. 2.3, 2.4 (2.52)–(2.54)",
                       f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}] ({pct})",
                       with_note("−1", note), v))
    if weak:
        at = "; ".join(f"t = {t:g}: {fmt(p, 2)} at n = {n}, ‖r_0‖ = {fmt(r, 2)}"
                       for t, n, p, r in weak)
        out.append(NotApplicable(
            f"excess loss E ℓ(f_n) − ℓ_0 vs n, t = {', '.join(f'{w[0]:g}' for w in weak)}",
            f"the estimator has no power there: the signal tr Σ/(2n) is below {z:.3g} standard "
            f"errors ‖r_0‖√(tr Σ/(nS)) (in standard errors, smallest over n: {at}); run "
            "longer (r_0 shrinks) or more seeds"))
    for i, n in enumerate(ns):
        name = f"self-healing: n·(E ℓ(f_n) − ℓ_0) falls over time, n = {int(n)}"
        f, lo, hi, ta, tb, e = (float(a[f"excess_loss_fall{k}"].values[i]) for k in (
            "", "_low", "_high", "_from", "_to", "_expected"))
        if not np.isfinite(f):
            good = ts[power[i] >= z]
            out.append(NotApplicable(name, (
                "the estimator has power (signal ≥ "
                f"{z:.3g} standard errors) at fewer than two save times at or after the peak of "
                f"tr Σ_t (t = {fmt(a['trace_sigma_peak_time'])}): at "
                f"{', '.join(f'{g:g}' for g in good) or 'none'}; run longer or more seeds")))
            continue
        v, note = judge(lo, hi, not bool(lo > 1.0), (1.0,), center=e, seeds=S,
                        min_seeds=ctx.k_95)
        pct = f"{100 * float(a['excess_loss_fall'].attrs.get('level', 0.95)):.3g} %"
        out.append(Row(name, "Prop. 2.3, 2.4 (2.52)–(2.54)",
                       f"n·excess(t = {tb:g}) / n·excess(t = {ta:g}) = {fmt(f)} "
                       f"[{fmt(lo)}, {fmt(hi)}] ({pct})",
                       with_note(f"< 1 (½ tr Σ alone: {fmt(e, 2)})", note), v))
    # decay of tr Σ after its peak
    d = _fl(a["trace_sigma_decay"])
    tp = _fl(a["trace_sigma_peak_time"])
    tm = _fl(a["healing_time_measured"])
    tpred = _fl(a["healing_time_predicted"]) if "healing_time_predicted" in a else np.nan
    name = "Σ_t heals: tr_μ Σ_T / peak of tr_μ Σ_t"
    meas = (f"{fmt(d, 2)} (peak at t = {tp:g}); halving time {fmt(tm, 3)} measured, "
            f"{fmt(tpred, 3)} by the closure with M[ρ_0(T)]")
    if not np.isfinite(d):
        out.append(NotApplicable(name, "tr_μ Σ_t is not finite at every save time"))
    elif tp >= ts[-1]:
        out.append(Row(name, "Prop. 2.3, 2.4; (2.50)", meas,
                       with_note(f"≤ {HALF:g}", "inconclusive: tr Σ_t peaks at the last save "
                                 "time; run longer"), "INCONCLUSIVE"))
    else:
        v = "PASS" if d <= HALF else ("FAIL" if d >= 1.0 else "INCONCLUSIVE")
        note = "" if v != "INCONCLUSIVE" else "inconclusive: fell, but not yet by half; run longer"
        out.append(Row(name, "Prop. 2.3, 2.4; (2.50)", meas, with_note(f"≤ {HALF:g}", note), v))
    out.append(closure_row(a))
    return out


def closure_row(a):
    """The closure's row: its error where the regime ratio is small, and its trend."""
    name = "closure (2.50): e^{−hM}Σ_t e^{−hM} vs Σ_{t+h}, M = M[ρ_0(t)]"
    if "closure_error" not in a or not np.isfinite(a["closure_error"].values).any():
        return NotApplicable(name, (
            "needs Σ_t at t and t + h (fluctuations.nc; t + h a save time, h = "
            "fluctuations.closure_horizon) and M[ρ_0(t)] from characteristic nodes or "
            "rho_0 (meanfield.nc)"))
    e = a["closure_error"].values
    r = a["closure_regime"].values
    tol = a["closure_tolerance"].values
    ts = a["t"].values
    ok = np.isfinite(e) & np.isfinite(r)
    small = ok & (r <= REGIME_SMALL)
    i_lo, i_hi = (int(np.flatnonzero(ok)[np.argmin(r[ok])]),
                  int(np.flatnonzero(ok)[np.argmax(r[ok])]))
    meas = "; ".join(f"t = {ts[k]:g}: {fmt(e[k], 2)} (ratio {fmt(r[k], 2)})"
                     for k in np.flatnonzero(ok))
    h = a["closure_error"].attrs.get("h")
    exp = (f"≤ 2δ + δ² + discretisation where δ = ‖r_0‖/√tr Σ ≤ {REGIME_SMALL:g}; "
           "shrinking with δ")
    trend_bad = bool(r[i_hi] >= 2 * r[i_lo] and e[i_lo] > e[i_hi])
    bad = small & (e > tol)
    if bad.any() or trend_bad:
        why = (f"error {fmt(e[bad][0], 2)} > tolerance {fmt(tol[bad][0], 2)}" if bad.any()
               else "the error grew as the ratio fell")
        return Row(name, "(2.50), THEORY §4", f"{meas} (h = {h})", with_note(exp, why), "FAIL")
    if not small.any():
        return Row(name, "(2.50), THEORY §4", f"{meas} (h = {h})", with_note(
            exp, f"inconclusive: the run is outside the closure's regime (smallest δ "
                 f"{fmt(r[i_lo], 2)} > {REGIME_SMALL:g}); a target nearer f_0 or a longer "
                 "run"), "INCONCLUSIVE")
    return Row(name, "(2.50), THEORY §4", f"{meas} (h = {h})", exp, "PASS")
