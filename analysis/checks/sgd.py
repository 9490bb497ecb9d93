r"""The report's SGD rows: particle ensembles against the SGD fluctuation prediction.

For an SGD run whose ``fluctuations.nc`` has ``sgd_cov`` (:mod:`meanfield.sgdnoise`,
THEORY §4b), :func:`sgd_checks` measures

* the **variance ratio** per n and t,
  :math:`\sum_q w_q\,n\widehat{\mathrm{Var}}_s(f_n - f_0)(t, x_q) /
  \mathrm{tr}_\mu(\Sigma_t + n\theta_{ref}\Sigma^{SGD}_t)`, expected 1, with the standard
  error :func:`analysis.checks.limits.clt_relative_stderr` of the predicted total covariance
  (Gaussian fluctuations); alternatives: the GD prediction (no SGD term) and an SGD term
  twice too large;
* the **fluctuation exponent**: the measured slope of :math:`\log\sum_q w_q
  \mathrm{Var}_s f_n` against :math:`\log n` (``fluct_slope`` of
  :func:`analysis.checks.losses.fluctuation_scaling`) against the slope of the prediction
  :math:`\mathrm{tr}_\mu(\Sigma_t + n\theta_n\Sigma^{SGD}_t)/n` over the run's n, which
  tends to :math:`-2\alpha` for :math:`P\propto n^{2\alpha}` once the SGD term dominates
  (Prop. 3.2, (3.23), (3.34));
* the **self-quench** (Prop. 3.3): the growth rate of :math:`\mathrm{tr}_\mu
  \Sigma^{SGD}_t` over the last save interval against the first, expected to fall with the
  mean-field loss :math:`\ell_0` (the noise covariance :math:`C_s` is quadratic in
  :math:`r_0`, so the injection rate is at most :math:`\|M[\rho_0]\|^2\,2\ell_0(s)`):
  PASS when it is below :data:`QUENCH_FACTOR` times :math:`\ell_0(t_{K-1})/\ell_0(0)`
  times the first rate, n.a. while :math:`\ell_0` has not fallen below
  :data:`QUENCH_LOSS` of its start (not yet a long time).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from meanfield.sgdnoise import theta_ref
from particles import Dynamics

from analysis.checks.limits import clt_relative_stderr
from analysis.checks.estimators import align_to
from analysis.checks.power import judge, per_time_level, slope_alternatives
from analysis.checks.rows import Row, fmt, verdict, with_note

__all__ = ["QUENCH_FACTOR", "QUENCH_LOSS", "run_dynamics", "sgd_checks", "sgd_rows"]

#: allowed growth of the sensitivity |M[rho_0]|^2 between the first and the last interval
QUENCH_FACTOR = 10.0
#: the self-quench row needs l_0(t_{K-1}) / l_0(0) below this (else n.a.: run longer)
QUENCH_LOSS = 0.1


def run_dynamics(cfg) -> Dynamics:
    """The run's :class:`~particles.Dynamics` from its resolved config."""
    d = cfg["dynamics"]
    return Dynamics(scheme=d["scheme"], integrator=d.get("integrator", "euler"), dt=d["dt"],
                    form=d.get("form", "data"), batch=d.get("batch"),
                    temperature=d.get("temperature"))


def _trace_w(cov, sw):
    """Eigenvalues of W^{1/2} cov W^{1/2} (the operator on L2(mu))."""
    A = sw[:, None] * cov * sw[None, :]
    return np.linalg.eigvalsh(0.5 * (A + A.T))


def sgd_checks(particles, fluctuations, cfg, *, f0):
    """The statistics of the SGD rows (module doc) as a Dataset.

    Returns
    -------
    xarray.Dataset
        ``sgd_theta(n)``, ``sgd_var_ratio(n, t)``, ``sgd_var_ratio_stderr(n, t)``,
        ``sgd_var_ratio_z(n, t)``, ``sgd_term_ratio(n, t)``, ``sgd_ratio_gd(n, t)``,
        ``sgd_expected_slope(t)``, ``sgd_trace(t)``, ``sgd_growth(t)``, ``sgd_loss_0(t)``.
    """
    dyn = run_dynamics(cfg)
    ns = particles["n"].values
    theta = np.array([theta_ref(dyn, int(n)) for n in ns])
    f0 = align_to(f0, particles).transpose("t", "x").values
    clt = align_to(fluctuations["clt_cov"], particles).transpose("t", "x", "x_").values
    sgd = align_to(fluctuations["sgd_cov"], particles).transpose("t", "x", "x_").values
    w = particles["x_weight"].values
    sw = np.sqrt(w)
    D = (np.sqrt(particles["n"]) * (particles["f_n"] - f0)).transpose("n", "seed", "t",
                                                                       "x").values
    Nn, S, T, Q = D.shape
    ratio, se, term, r_gd = (np.full((Nn, T), np.nan) for _ in range(4))
    pred_var = np.full((Nn, T), np.nan)
    tr_sgd = np.einsum("tqq,q->t", sgd, w)
    tr_clt = np.einsum("tqq,q->t", clt, w)
    for i in range(Nn):
        for j in range(T):
            total = clt[j] + ns[i] * theta[i] * sgd[j]
            lam = _trace_w(total, sw)
            tr = float(lam.sum())
            d = D[i, :, j]
            d = d[np.all(np.isfinite(d), axis=1)]
            pred_var[i, j] = tr / ns[i]
            term[i, j] = ns[i] * theta[i] * tr_sgd[j] / tr_clt[j] if tr_clt[j] > 0 else np.nan
            r_gd[i, j] = tr_clt[j] / tr if tr > 0 else np.nan
            if len(d) < 2 or tr <= 0:
                continue
            ratio[i, j] = float(np.sum(w * np.var(d, axis=0, ddof=1))) / tr
            se[i, j] = clt_relative_stderr(lam, len(d))
    slope = np.full(T, np.nan)
    if Nn >= 2:
        for j in range(T):
            if np.all(pred_var[:, j] > 0):
                slope[j] = np.polyfit(np.log(ns), np.log(pred_var[:, j]), 1)[0]
    loss0 = 0.5 * np.einsum("tq,q->t", (f0 - particles["f_target"].values[None]) ** 2, w)
    ts = particles["t"].values
    growth = np.full(T, np.nan)
    growth[1:] = np.diff(tr_sgd) / np.diff(ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (ratio - 1.0) / se
    nt = ("n", "t")
    return xr.Dataset({
        "sgd_theta": ("n", theta),
        "sgd_var_ratio": (nt, ratio), "sgd_var_ratio_stderr": (nt, se),
        "sgd_var_ratio_z": (nt, z), "sgd_term_ratio": (nt, term),
        "sgd_ratio_gd": (nt, r_gd),
        "sgd_expected_slope": ("t", slope), "sgd_trace": ("t", tr_sgd),
        "sgd_growth": ("t", growth), "sgd_loss_0": ("t", loss0),
    }, coords={"n": ns, "t": ts})


def _variance_rows(a, ctx):
    """One row per n and t > 0: the variance ratio against 1, its alternatives the GD
    prediction alone and an SGD term twice too large (|z| bound family-wise over the
    rows)."""
    out = []
    ts, ns = a["t"].values, a["n"].values
    z = per_time_level(len(ts) * len(ns))[2]
    for j, t in enumerate(ts):
        if not a["sgd_trace"].values[j] > 0:
            continue  # t = 0: no SGD noise yet
        for i, n in enumerate(ns):
            r = float(a["sgd_var_ratio"].values[i, j])
            se = float(a["sgd_var_ratio_stderr"].values[i, j])
            gd = float(a["sgd_ratio_gd"].values[i, j])
            ok = None if not np.isfinite(se) else bool(abs(r - 1.0) <= z * se)
            v, note = judge(r - z * se, r + z * se, ok, (gd, 2.0 - gd), center=1.0,
                            seeds=ctx.seeds)
            out.append(Row(
                f"SGD: n·Var(f_n − f_0) / tr(Σ_t + nθΣ^SGD_t), n = {int(n)}, t = {t:g}",
                "THEORY §4b; (3.29), (3.31)",
                f"{fmt(r)} ± {fmt(se, 2)} (nθ = {fmt(n * float(a['sgd_theta'].values[i]))}, "
                f"SGD/GD terms {fmt(a['sgd_term_ratio'].values[i, j])})",
                with_note(f"1 (GD alone: {fmt(gd)}); |z| ≤ {z:.3g}", note), v))
    return out


def _exponent_rows(a, ctx):
    """The measured variance exponent against the predicted one (none without it)."""
    ts = a["t"].values
    e = float(a["sgd_expected_slope"].values[-1])
    if not (np.isfinite(e) and "fluct_slope" in a):
        return []
    s = float(a["fluct_slope"].values[-1])
    lo, hi = float(a["fluct_slope_low"].values[-1]), float(a["fluct_slope_high"].values[-1])
    ok = None if not np.isfinite(lo) else bool(lo <= e <= hi)
    v, note = judge(lo, hi, ok, slope_alternatives(e), center=e, seeds=ctx.seeds,
                    min_seeds=ctx.k_95)
    asym = "" if ctx.alpha is None else f"; −2α = {fmt(-2 * ctx.alpha)} once SGD dominates"
    return [Row(f"SGD: exponent of Var f_n vs n, t = {ts[-1]:g}",
                "Prop. 3.2 (3.23), (3.34); THEORY §4b",
                f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}] (95 % bootstrap)",
                with_note(f"{fmt(e)} from tr(Σ_t + nθ_nΣ^SGD_t)/n{asym}", note), v)]


def _quench_rows(a):
    """The self-quench (Prop. 3.3): n.a. until ℓ_0 has fallen below QUENCH_LOSS."""
    ts = a["t"].values
    if not (len(ts) >= 3 and a["sgd_growth"].values[1] > 0):
        return []
    first, last = float(a["sgd_growth"].values[1]), float(a["sgd_growth"].values[-1])
    l0 = a["sgd_loss_0"].values
    drop = float(l0[-2] / l0[0]) if l0[0] > 0 else np.nan
    bound = QUENCH_FACTOR * drop * first
    if not drop <= QUENCH_LOSS:
        v, exp = "n.a.", (f"n.a.: ℓ_0 fell only to {fmt(drop, 2)} of ℓ_0(0) by "
                          f"t = {ts[-2]:g} (needs < {QUENCH_LOSS:g}); run longer")
    else:
        v = verdict(last <= bound)
        exp = (f"≤ {QUENCH_FACTOR:g} · ℓ_0({ts[-2]:g})/ℓ_0(0) · first rate = "
               f"{fmt(bound)}")
    return [Row("SGD self-quench: growth rate of tr_μ Σ^SGD_t, last interval",
                "Prop. 3.3; THEORY §4b",
                f"{fmt(last)} (first interval {fmt(first)}; ℓ_0 ratio {fmt(drop, 2)})",
                exp, v)]


def sgd_rows(a, ctx):
    """The SGD rows of ``report.md`` from the analysis Dataset ``a`` (:func:`sgd_checks`):
    none unless ``a`` has the SGD prediction (``sgd_var_ratio``)."""
    if "sgd_var_ratio" not in a:
        return []
    return _variance_rows(a, ctx) + _exponent_rows(a, ctx) + _quench_rows(a)
