r"""The LLN and CLT checks on the outputs of ``mfpc run``, and their report rows.

Every function takes the datasets written by :mod:`analysis.run.experiment` (``particles``,
``meanfield``, ``fluctuations``) and returns an :class:`xarray.Dataset` of statistics;
:func:`limits_rows` turns the LLN and CLT statistics into rows of ``report.md``.
How each statistic is derived and which tolerance decides a verdict is in
``docs/propositions.md``. Slopes always come from :func:`analysis.checks.fit.fit_power_law`.

* :func:`lln` — LLN (Prop. 2.2, (2.41)): :math:`E\|f_n - f_0\|^2_\mu \sim \mathrm{tr}_\mu
  \Sigma_t / n`.
* :func:`clt` — CLT (Prop. 2.1, (2.32)): :math:`\sqrt n (f_n - f_0)(t) \to N(0, \Sigma_t)`.
* :func:`analysis.checks.mkernel.mkernel_checks` — :math:`M[\rho] \succeq 0` (2.38)–(2.39), the
  tangent-kernel identity and the convergence of the spectrum of :math:`M[\rho_n]`.
* :mod:`analysis.checks.losses` (re-exported here): :func:`loss_monotonicity`,
  :func:`time_to_level` — convexity in f (2.37), (2.43) and the n-independent rate (remark
  after Prop. 2.2); :func:`final_loss_scaling` — self-healing (Prop. 2.3, 2.4,
  (2.52)–(2.54)); :func:`fluctuation_scaling` — SGD fluctuations (Prop. 3.2, (3.23), (3.34)).
* :mod:`analysis.checks.estimators` (re-exported here): reference f_0, alignment, bootstrap and
  power-law fits shared by every check.
"""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from analysis.checks.losses import final_loss_scaling, fluctuation_scaling, loss_monotonicity, time_to_level
from analysis.checks.estimators import (align_to, bootstrap_slope, bootstrap_stat, finite_rows,
                    power_law_slopes, reference_f0, reference_loss0, slope_fit, trace_sigma)
from analysis.checks.power import judge, slope_alternatives
from analysis.checks.rows import (SGD_REPLACES_GD, NotApplicable, Row, fmt, sgd_replaces_gd,
                                  verdict, with_note)

__all__ = [
    "reference_f0",
    "reference_loss0",
    "trace_sigma",
    "power_law_slopes",
    "align_to",
    "finite_rows",
    "bootstrap_stat",
    "bootstrap_slope",
    "lln",
    "clt",
    "clt_relative_stderr",
    "loss_monotonicity",
    "time_to_level",
    "final_loss_scaling",
    "fluctuation_scaling",
    "lln_rows",
    "clt_rows",
    "limits_rows",
]


# -- LLN --------------------------------------------------------------------------------
def lln(particles, meanfield, fluctuations=None, *, f0=None, n_boot=1000, level=0.95,
        rng):
    r"""Law of large numbers: :math:`E\|f_n(t) - f_0(t)\|^2_\mu` against n.

    .. math::
        \mathrm{err}(n, s, t) = \sum_q w_q\big(f_n(t, x_q) - f_0(t, x_q)\big)^2, \qquad
        E\,\mathrm{err} = \frac{\mathrm{tr}_\mu\Sigma_t}{n} + o(n^{-1})

    (Prop. 2.1, 2.2; exact at t = 0, where the units are i.i.d. and
    :math:`\mathrm{Var} f_n(0, x) = \Sigma_0(x, x)/n`). The slope of
    :math:`\log E\,\mathrm{err}` against :math:`\log n` (expected −1) is fitted per t; its
    interval is a percentile bootstrap over seeds (seeds resampled with replacement,
    independently for each n, then refitted). The prefactor is reported twice:
    ``exp(intercept)`` of the free fit, and the fit with the slope fixed at −1,
    :math:`A = \exp\,\overline{\log(n\,E\,\mathrm{err})}`, with its bootstrap interval,
    to compare with :math:`\mathrm{tr}_\mu\Sigma_t` of ``fluctuations``.

    Parameters
    ----------
    particles : xarray.Dataset
        ``f_n(n, seed, t, x)``, ``x_weight(x)``. Non-finite members (failed runs) are
        left out at the times where they are not finite.
    meanfield : xarray.Dataset
    fluctuations : xarray.Dataset, optional
        ``clt_var(t, x)`` for the predicted prefactor.
    f0 : xarray.DataArray, optional
        :math:`f_0(t, x)`; default :func:`reference_f0`.
    n_boot : int
    level : float
    rng : numpy.random.Generator
        For the bootstrap.

    Returns
    -------
    xarray.Dataset
        ``lln_err(n, t)``, ``lln_err_stderr(n, t)``, ``lln_slope(t)``, ``lln_slope_low(t)``,
        ``lln_slope_high(t)`` (bootstrap), ``lln_slope_fit_low/high(t)`` (Student t),
        ``lln_prefactor(t)``, ``lln_prefactor_fixed(t)`` with ``_low``/``_high``, and
        ``lln_trace_sigma(t)`` when ``fluctuations`` is given.
    """
    if f0 is None:
        f0 = reference_f0(meanfield)[0]
    f0 = align_to(f0, particles)
    w = particles["x_weight"]
    err = ((particles["f_n"] - f0) ** 2 * w).sum("x", skipna=False)  # (n, seed, t)
    err = err.transpose("n", "seed", "t")
    ns = particles["n"].values.astype(float)
    E = err.mean("seed", skipna=True)
    cnt = err.count("seed")
    if particles.sizes["seed"] >= 2:
        se = err.std("seed", ddof=1, skipna=True) / np.sqrt(cnt)
    else:  # a spread needs 2 seeds
        se = E * np.nan
    T = particles.sizes["t"]
    q = [(1 - level) / 2, (1 + level) / 2]
    out = {k: np.full(T, np.nan) for k in (
        "slope", "intercept", "fit_low", "fit_high", "low", "high", "fixed", "fixed_low",
        "fixed_high")}
    ev = err.values
    for j in range(T):
        groups = [finite_rows(ev[i, :, j]) for i in range(len(ns))]
        boot = bootstrap_stat(groups, lambda r: r.mean(axis=1), n_boot, rng)
        s, b, lo, hi = bootstrap_slope(ns, E.values[:, j], boot, level)
        out["slope"][j], out["intercept"][j], out["low"][j], out["high"][j] = s, b, lo, hi
        out["fit_low"][j], out["fit_high"][j] = slope_fit(ns, E.values[:, j], level)[2:4]
        if np.isfinite(s):
            with np.errstate(divide="ignore"):
                logA = np.nanmean(np.log(boot * ns), axis=1)
            out["fixed"][j] = np.exp(np.nanmean(np.log(E.values[:, j] * ns)))
            out["fixed_low"][j], out["fixed_high"][j] = np.exp(np.nanquantile(logA, q))
    ds = xr.Dataset(
        {
            "lln_err": E, "lln_err_stderr": se, "lln_seeds": cnt,
            "lln_slope": ("t", out["slope"]), "lln_slope_low": ("t", out["low"]),
            "lln_slope_high": ("t", out["high"]),
            "lln_slope_fit_low": ("t", out["fit_low"]),
            "lln_slope_fit_high": ("t", out["fit_high"]),
            "lln_prefactor": ("t", np.exp(out["intercept"])),
            "lln_prefactor_fixed": ("t", out["fixed"]),
            "lln_prefactor_fixed_low": ("t", out["fixed_low"]),
            "lln_prefactor_fixed_high": ("t", out["fixed_high"]),
        },
        coords={"n": particles["n"].values, "t": particles["t"].values},
    )
    if fluctuations is not None and "clt_var" in fluctuations:
        ds["lln_trace_sigma"] = ("t", trace_sigma(fluctuations, particles).values)
    ds["lln_err"].attrs["long_name"] = "E_seeds sum_q w_q (f_n - f_0)^2"
    ds["lln_slope"].attrs.update(expected=-1.0, level=level, n_boot=n_boot,
                                 interval="percentile bootstrap over seeds, per n")
    ds.attrs["lln_level"] = level
    return ds


# -- CLT --------------------------------------------------------------------------------
def clt_relative_stderr(eigenvalues, S):
    r"""Relative standard error of :math:`\sum_q w_q\widehat{\mathrm{Var}}(D_q)` over S seeds.

    Derivation. Let :math:`D_1..D_S` be i.i.d. :math:`N(0, \Sigma)` in :math:`R^Q` and
    :math:`A_s = W^{1/2} D_s`, covariance :math:`\Sigma_w = W^{1/2}\Sigma W^{1/2}`. A
    Helmert (orthogonal) transform of the S samples turns
    :math:`\sum_s |A_s - \bar A|^2` into :math:`\sum_{s=1}^{S-1}|B_s|^2` with
    :math:`B_s` i.i.d. :math:`N(0, \Sigma_w)`. In the eigenbasis of :math:`\Sigma_w`,
    :math:`|B|^2 = \sum_k\lambda_k\chi^2_{1,k}`, so :math:`E|B|^2 = \mathrm{tr}\Sigma_w`
    and :math:`\mathrm{Var}|B|^2 = 2\sum_k\lambda_k^2 = 2\,\mathrm{tr}(\Sigma_w^2)`.
    The estimator :math:`V = \frac1{S-1}\sum_s|A_s - \bar A|^2` has mean
    :math:`\mathrm{tr}\Sigma_w` and variance :math:`2\,\mathrm{tr}(\Sigma_w^2)/(S-1)`:

    .. math:: \mathrm{se}(V/\mathrm{tr}\Sigma_w) = \frac{\sqrt{2\,\mathrm{tr}(\Sigma_w^2)
              /(S-1)}}{\mathrm{tr}\,\Sigma_w}.

    ``eigenvalues`` are those of :math:`\Sigma_w` (the operator on :math:`L^2(\mu)`).
    """
    lam = np.clip(np.asarray(eigenvalues, float), 0.0, None)
    if S < 2 or lam.sum() <= 0:
        return float("nan")
    return float(np.sqrt(2.0 * np.sum(lam**2) / (S - 1)) / np.sum(lam))


def clt(particles, meanfield, fluctuations, *, f0=None, k=4, rank_rtol=1e-10):
    r"""CLT: :math:`D = \sqrt n(f_n - f_0)(t)` over seeds against :math:`N(0, \Sigma_t)`.

    * Variance ratio :math:`\sum_q w_q\,\widehat{\mathrm{Var}}_s D_q / \mathrm{tr}_\mu\Sigma_t`
      (for uniform weights: mean over x of :math:`n\mathrm{Var}(f_n - f_0)` over mean of
      :math:`\Sigma_t(x, x)`), expected 1, with the standard error of
      :func:`clt_relative_stderr` computed from the predicted :math:`\Sigma_t`.
    * Gaussianity: with :math:`W^{1/2}\Sigma_t W^{1/2} = V\Lambda V^\top` (eigenpairs of
      :math:`\Sigma_t` on :math:`L^2(\mu)`), the components
      :math:`\xi_k = v_k^\top W^{1/2} D/\sqrt{\lambda_k}` of the top-k modes are i.i.d.
      N(0, 1) under the prediction. Kolmogorov–Smirnov p-value per component against
      N(0, 1) (fully specified, no fitted parameters), combined by Bonferroni
      (:math:`\min(1, k\min_k p_k)`); Mahalanobis :math:`m = \sum_k\xi_k^2` against
      :math:`\chi^2_k` by KS.

    Parameters
    ----------
    particles, meanfield : xarray.Dataset
    fluctuations : xarray.Dataset
        ``clt_cov(t, x, x_)``.
    f0 : xarray.DataArray, optional
        Default :func:`reference_f0`.
    k : int
        Number of leading modes (fewer where Σ has fewer eigenvalues above
        ``rank_rtol`` × the largest).

    Returns
    -------
    xarray.Dataset
        ``clt_var_ratio(n, t)``, ``clt_var_ratio_stderr(n, t)``, ``clt_var_ratio_z(n, t)``,
        ``clt_seeds(n, t)``, ``clt_ks_p(n, t)`` (Bonferroni), ``clt_ks_p_mode(n, t, clt_mode)``,
        ``clt_mahalanobis_p(n, t)``, ``clt_xi(n, seed, t, clt_mode)``,
        ``clt_eigenvalue(t, clt_mode)``, ``clt_k(t)``.

    References
    ----------
    Prop. 2.1, (2.32); THEORY §4.
    """
    if f0 is None:
        f0 = reference_f0(meanfield)[0]
    f0 = align_to(f0, particles)
    cov = align_to(fluctuations["clt_cov"], particles).transpose("t", "x", "x_").values
    D = (np.sqrt(particles["n"]) * (particles["f_n"] - f0)).transpose("n", "seed", "t", "x").values
    sw = np.sqrt(particles["x_weight"].values)
    Nn, S, T, Q = D.shape
    ratio, se, p_bonf, p_mahal = (np.full((Nn, T), np.nan) for _ in range(4))
    seeds = np.zeros((Nn, T), dtype=int)
    p_mode = np.full((Nn, T, k), np.nan)
    xi_all = np.full((Nn, S, T, k), np.nan)
    eig = np.full((T, k), np.nan)
    k_t = np.zeros(T, dtype=int)
    for j in range(T):
        Sw = sw[:, None] * cov[j] * sw[None, :]
        lam, V = np.linalg.eigh(0.5 * (Sw + Sw.T))
        lam, V = lam[::-1], V[:, ::-1]
        tr = float(np.sum(lam))
        kk = int(min(k, np.sum(lam > rank_rtol * max(lam[0], 0.0)))) if lam[0] > 0 else 0
        k_t[j] = kk
        eig[j, :kk] = lam[:kk]
        for i in range(Nn):
            d = D[i, :, j]
            ok = np.all(np.isfinite(d), axis=1)
            d = d[ok]
            seeds[i, j] = len(d)
            if len(d) < 2 or tr <= 0:
                continue
            var = np.var(d, axis=0, ddof=1)
            ratio[i, j] = float(np.sum(sw**2 * var) / tr)
            se[i, j] = clt_relative_stderr(lam, len(d))
            if kk == 0:
                continue
            xi = (d * sw) @ V[:, :kk] / np.sqrt(lam[:kk])
            xi_all[i, np.flatnonzero(ok), j, :kk] = xi
            ps = np.array([stats.kstest(xi[:, m], "norm").pvalue for m in range(kk)])
            p_mode[i, j, :kk] = ps
            p_bonf[i, j] = min(1.0, kk * float(ps.min()))
            p_mahal[i, j] = stats.kstest(np.sum(xi**2, axis=1), stats.chi2(kk).cdf).pvalue
    coords = {"n": particles["n"].values, "seed": particles["seed"].values,
              "t": particles["t"].values, "clt_mode": np.arange(k)}
    ds = xr.Dataset(
        {
            "clt_var_ratio": (("n", "t"), ratio),
            "clt_var_ratio_stderr": (("n", "t"), se),
            "clt_var_ratio_z": (("n", "t"), (ratio - 1.0) / se),
            "clt_seeds": (("n", "t"), seeds),
            "clt_ks_p": (("n", "t"), p_bonf),
            "clt_ks_p_mode": (("n", "t", "clt_mode"), p_mode),
            "clt_mahalanobis_p": (("n", "t"), p_mahal),
            "clt_xi": (("n", "seed", "t", "clt_mode"), xi_all),
            "clt_eigenvalue": (("t", "clt_mode"), eig),
            "clt_k": (("t",), k_t),
        },
        coords=coords,
    )
    ds["clt_var_ratio"].attrs.update(
        long_name="sum_q w_q n Var_seeds(f_n - f_0) / tr_mu Sigma_t", expected=1.0)
    ds["clt_var_ratio_stderr"].attrs["long_name"] = (
        "sqrt(2 tr(Sigma_w^2)/(S-1)) / tr(Sigma_w), Gaussian prediction")
    ds["clt_ks_p"].attrs["long_name"] = "Bonferroni-combined KS p-value of the top-k modes"
    ds["clt_mahalanobis_p"].attrs["long_name"] = "KS p-value of sum_k xi_k^2 against chi2_k"
    return ds


# -- report rows ----------------------------------------------------------------------------
LLN_SLOPE = "LLN slope of E‖f_n − f_0‖²_μ vs n"
LLN_PREFACTOR = "LLN prefactor n·E‖f_n − f_0‖²_μ"
CLT_RATIO = "CLT variance ratio n·Var(f_n − f_0) / Σ_t"
CLT_GAUSS = "CLT Gaussianity of the top modes of Σ_t"


def _missing(ctx, *, fluctuations):
    """``"add [meanfield] and [fluctuations]"``: the sections the run lacks for a check."""
    need = [s for s, have in (("[meanfield]", ctx.meanfield),
                              ("[fluctuations]", ctx.fluctuations or not fluctuations))
            if not have]
    return "add " + " and ".join(need)


def _lln_slope_rows(a, ctx):
    out = []
    for j, t in enumerate(a["t"].values):
        s, lo, hi = (float(a[v].values[j]) for v in ("lln_slope", "lln_slope_low",
                                                     "lln_slope_high"))
        ok = None if not np.isfinite(lo) else bool(lo <= -1.0 <= hi)
        v, note = judge(lo, hi, ok, slope_alternatives(-1.0) + (0.0,), center=-1.0,
                        seeds=ctx.seeds, min_seeds=ctx.k_t)
        out.append(Row(f"{LLN_SLOPE}, t = {t:g}", "Prop. 2.2 (2.41); (2.32)",
                       f"{fmt(s)} [{fmt(lo)}, {fmt(hi)}] ({ctx.pct} bootstrap)",
                       with_note("−1", note), v))
    return out


def _lln_prefactor_rows(a, ctx):
    out = []
    for j, t in enumerate(a["t"].values):
        A, lo, hi, tr = (float(a[v].values[j]) for v in (
            "lln_prefactor_fixed", "lln_prefactor_fixed_low", "lln_prefactor_fixed_high",
            "lln_trace_sigma"))
        ok = None if not np.isfinite(lo) else bool(lo <= tr <= hi)
        v, note = judge(lo, hi, ok, (0.5 * tr, 2.0 * tr), center=tr, seeds=ctx.seeds,
                        min_seeds=ctx.k_t)
        out.append(Row(f"{LLN_PREFACTOR}, t = {t:g}", "Prop. 2.1 (2.32), THEORY §4",
                       f"{fmt(A)} [{fmt(lo)}, {fmt(hi)}] ({ctx.pct}; slope fixed −1; free fit "
                       f"{fmt(a['lln_prefactor'].values[j])})",
                       with_note(f"tr_μ Σ_t = {fmt(tr)}", note), v))
    return out


def lln_rows(a, ctx):
    """The LLN rows (Prop. 2.1, 2.2): the slope −1 and the prefactor tr_μ Σ_t, per t."""
    if sgd_replaces_gd(a):
        return [NotApplicable(LLN_SLOPE, SGD_REPLACES_GD)] + (
            [NotApplicable(LLN_PREFACTOR, SGD_REPLACES_GD)] if "lln_trace_sigma" in a else [])
    if not ctx.meanfield:
        alone = "; the rows “LLN without f_0” check the ensembles alone" \
            if "ens_var_slope" in a else ""
        return [NotApplicable(LLN_SLOPE, f"needs the mean field f_0 (add [meanfield]){alone}"),
                NotApplicable(LLN_PREFACTOR, "needs f_0 and tr_μ Σ_t "
                              f"({_missing(ctx, fluctuations=True)})")]
    out = _lln_slope_rows(a, ctx)
    if "lln_trace_sigma" in a:
        return out + _lln_prefactor_rows(a, ctx)
    return out + [NotApplicable(LLN_PREFACTOR, "needs tr_μ Σ_t from fluctuations.nc "
                                "(add [fluctuations])")]


def _clt_ratio_rows(a, ctx, i):
    out = []
    n = int(a["n"].values[i])
    for j, t in enumerate(a["t"].values):
        r = float(a["clt_var_ratio"].values[i, j])
        se = float(a["clt_var_ratio_stderr"].values[i, j])
        ok = None if not np.isfinite(r * se) else bool(abs(r - 1.0) <= ctx.z_max * se)
        v, note = judge(r - ctx.z_max * se, r + ctx.z_max * se, ok, (0.5, 2.0), center=1.0,
                        seeds=ctx.seeds, min_seeds=2)
        out.append(Row(f"{CLT_RATIO}, n = {n}, t = {t:g}", "Prop. 2.1 (2.32), THEORY §4",
                       f"{fmt(r)} ± {fmt(se, 2)}",
                       with_note(f"1 (|ratio − 1| ≤ {ctx.z_max:.3g} s.e.)", note), v))
    return out


def _clt_gauss_rows(a, ctx, i):
    out = []
    n = int(a["n"].values[i])
    few = f"needs at least 2 seeds (this run has {ctx.seeds})" if ctx.seeds < 2 else ""
    for j, t in enumerate(a["t"].values):
        p = float(a["clt_ks_p"].values[i, j])
        pm = float(a["clt_mahalanobis_p"].values[i, j])
        k = int(a["clt_k"].values[j])
        ok = None if few or not np.isfinite(p + pm) else bool(p >= ctx.p_min
                                                              and pm >= ctx.p_min)
        out.append(Row(f"CLT Gaussianity, top-{k} modes of Σ_t, n = {n}, t = {t:g}",
                       "Prop. 2.1 (2.32)",
                       f"KS p = {fmt(p, 2)} (Bonferroni); "
                       f"Mahalanobis χ²_{k} KS p = {fmt(pm, 2)}",
                       with_note(f"both p ≥ {ctx.p_min:.2g}", few), verdict(ok)))
    return out


def clt_rows(a, ctx):
    """The CLT rows (Prop. 2.1): the variance ratio and Gaussianity at the largest n."""
    if "clt_var_ratio_stderr" not in a:
        return [NotApplicable("CLT: variance ratio and Gaussianity",
                              "needs f_0 and Σ_t from meanfield.nc and fluctuations.nc "
                              f"({_missing(ctx, fluctuations=True)})")]
    if sgd_replaces_gd(a):
        return [NotApplicable(CLT_RATIO, SGD_REPLACES_GD),
                NotApplicable(CLT_GAUSS, SGD_REPLACES_GD)]
    i = int(np.argmax(a["n"].values))
    return _clt_ratio_rows(a, ctx, i) + _clt_gauss_rows(a, ctx, i)


def limits_rows(a, ctx):
    """The LLN and CLT rows of ``report.md`` (:func:`lln_rows`, :func:`clt_rows`)."""
    return lln_rows(a, ctx) + clt_rows(a, ctx)
