r"""The M-kernel checks on the outputs of ``mfpc run``: M[ρ] ⪰ 0, the identity (2.39), the
tangent kernel and the convergence of the leading eigenvalues, for every source (particle
members, the grid density ``rho_0``, the characteristic nodes) at every save time, and
their rows of ``report.md`` (:func:`mkernel_rows`).

The computation of M[ρ] lives in :mod:`meanfield.mkernel`; tolerances are derived in
``docs/propositions.md``.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.checks.estimators import align_to, bootstrap_slope, bootstrap_stat, finite_rows
from analysis.checks.power import judge, slope_alternatives
from analysis.checks.rows import (SGD_REPLACES_GD, NotApplicable, Row, fmt, sgd_replaces_gd,
                                  verdict, with_note)
from meanfield.mkernel import (features, grid_units, identity_239, m_kernel,
                               min_eigenvalue_ratio, operator_spectrum, psd_tolerance,
                               tangent_kernel)

__all__ = ["mkernel_checks", "mkernel_rows", "identity_scale", "identity_tolerance",
           "M_MAX_Q"]

#: largest Q for which M[rho] (Q x Q) is formed and diagonalised
M_MAX_Q = 4000
#: units per block of :func:`identity_scale` (memory Q x BLOCK (N + 1) floats)
BLOCK = 4096


def identity_scale(kernel, x, w, y, c, weights, r):
    r"""The round-off scale of both sides of (2.39): :math:`B_k = \||A|^\top|w r_k|\|^2`.

    With the factor :math:`M = AA^\top` (:func:`meanfield.mkernel.features`) and
    :math:`u = w r`, both sides are :math:`\|A^\top u\|^2` in exact arithmetic; ``B`` is the
    same sum with every entry of A and u replaced by its absolute value, so
    :math:`|u|^\top|A||A|^\top|u| = B \ge |u^\top M u|`. See :func:`identity_tolerance`.

    Returns
    -------
    ndarray, shape (K,)
    """
    u = np.abs(np.atleast_2d(np.asarray(r, float)) * np.asarray(w, float))
    c = np.asarray(c, float).ravel()
    y = np.asarray(y, float).reshape(len(c), -1)
    a = np.asarray(weights, float).ravel()
    B = np.zeros(u.shape[0])
    for s in range(0, len(c), BLOCK):
        A = np.abs(features(kernel, x, y[s:s + BLOCK], c[s:s + BLOCK], a[s:s + BLOCK]))
        B += np.sum((u @ A) ** 2, axis=1)
    return B


def identity_tolerance(Q, J, N) -> float:
    r"""Bound on :math:`|\langle r, Mr\rangle_\mu - \int(c^2|\nabla R|^2 + R^2)\rho| / B`
    (:func:`identity_scale`) for Q nodes and J units in N dimensions.

    With :math:`\gamma_m = m\epsilon` (first order) and :math:`u = wr`, :math:`A` the
    factor of M (entries computed to a relative :math:`\kappa\epsilon` from ``phi_grad``,
    the weights and c; :math:`\kappa \le 10`):

    * left side :math:`u^\top \hat M u`: each :math:`\hat M_{qp}` is a sum of
      :math:`J(N+1)` products, :math:`|\delta M| \le (J(N+1) + 2\kappa)\epsilon\,|A||A|^\top`;
      the double sum over :math:`Q^2` terms adds :math:`\gamma_{Q^2}|u|^\top|\hat M||u|`,
      and :math:`u = wr` a relative :math:`\epsilon` per entry:
      :math:`|\delta\mathrm{lhs}| \le (Q^2 + J(N+1) + 2\kappa + 2)\epsilon B`, since
      :math:`|u|^\top|A||A|^\top|u| = B`;
    * right side :math:`\sum_j a_j(c_j^2|\nabla R_j|^2 + R_j^2)`: each
      :math:`R_j, \partial R_j` is a sum of Q terms, off by
      :math:`(Q + \kappa + 1)\epsilon\,(|A|^\top|u|)_j`; squaring doubles the relative error
      and the sum of :math:`J(N+1)` non-negative terms adds :math:`\gamma_{J(N+1)}`:
      :math:`|\delta\mathrm{rhs}| \le (2Q + J(N+1) + 2\kappa + 4)\epsilon B`.

    The sum, :math:`(Q^2 + 2Q + 2J(N+1) + 50)\epsilon`, bounds the gap. No relative bound
    on the gap over the sides themselves exists: for a random-sign r the sum
    :math:`A^\top u` can cancel to far below :math:`|A|^\top|u|`.
    """
    return float((Q * Q + 2 * Q + 2 * J * (N + 1) + 50) * np.finfo(float).eps)


def _particle_units(particles, i_n, seed, j):
    n = int(particles["n"].values[i_n])
    y = particles["y"].isel(n=i_n, seed=seed, t=j).values[:n]
    c = particles["c"].isel(n=i_n, seed=seed, t=j).values[:n]
    return y, c, np.full(n, 1.0 / n)


def _units_by_source(particles, meanfield, nodes):
    """``{source: [(y, c, weights) per save time]}`` of every source available."""
    T = particles.sizes["t"]
    units = {}
    if "y" in particles and "c" in particles:
        i_max = int(np.argmax(particles["n"].values))
        units["particles"] = [_particle_units(particles, i_max, 0, j) for j in range(T)]
    if meanfield is not None and "rho_0" in meanfield:
        rho = align_to(meanfield["rho_0"], particles)
        units["grid"] = [grid_units(rho.isel(t=j)) for j in range(T)]
    if nodes is not None:
        nd = align_to(nodes[["y_nodes", "c_nodes"]], particles)
        wn = nodes["weight"].values
        units["characteristics"] = [(nd["y_nodes"].values[j], nd["c_nodes"].values[j], wn)
                                    for j in range(T)]
    return units


def _source_checks(problem, units, T, n_r, rng):
    """Spectrum (source, t, mode) and the identity (2.39) gap over its round-off scale
    (source, t) with its tolerance (the largest over sources and times)."""
    x, w = problem.x, problem.w
    Q = x.shape[0]
    spec = np.full((len(units), T, Q), np.nan)
    resid = np.full((len(units), T), np.nan)
    tol = identity_tolerance(Q, 1, 1)
    for a, src in enumerate(units):
        for j in range(T):
            y, c, wt = units[src][j]
            if not (np.all(np.isfinite(c)) and np.all(np.isfinite(y))):
                continue
            spec[a, j] = operator_spectrum(m_kernel(problem.kernel, x, y, c, wt), w)
            r = rng.standard_normal((n_r, Q))
            lhs, rhs = identity_239(problem.kernel, x, w, y, c, wt, r)
            B = identity_scale(problem.kernel, x, w, y, c, wt, r)
            gap = np.abs(lhs - rhs)
            resid[a, j] = float(np.max(np.where(gap > 0, gap / np.where(B > 0, B, 1.0), 0.0)))
            J, N = len(c), np.asarray(y).reshape(len(c), -1).shape[1]
            tol = max(tol, identity_tolerance(Q, J, N))
    return spec, resid, tol


def _member_checks(problem, particles, n_seeds, k):
    """Tangent-kernel gap (n, t; seed 0) and the top-k eigenvalues (n, seed, t, k) of
    M[rho_n] of every member."""
    x, w = problem.x, problem.w
    Nn, T = particles.sizes["n"], particles.sizes["t"]
    S = particles.sizes["seed"] if n_seeds is None else min(n_seeds, particles.sizes["seed"])
    tang = np.full((Nn, T), np.nan)
    lead = np.full((Nn, S, T, k), np.nan)
    for i in range(Nn):
        for j in range(T):
            for s in range(S):
                y, c, wt = _particle_units(particles, i, s, j)
                if not np.all(np.isfinite(c)):
                    continue
                M = m_kernel(problem.kernel, x, y, c, wt)
                lead[i, s, j] = operator_spectrum(M, w)[:k]
                if s == 0:
                    K, _ = tangent_kernel(problem.kernel, x, y, c)
                    tang[i, j] = float(np.max(np.abs(M - K)) / np.max(np.abs(M)))
    return tang, lead


def _leading_convergence(ds, lead, ref, ref_src, ns, n_boot, level, rng):
    """``m_leading_ref``, ``m_leading_rel_err`` and the slope of the relative error."""
    Nn, T = lead.shape[0], lead.shape[2]
    sq = np.mean(((lead - ref[None, None]) / ref[None, None]) ** 2, axis=3)  # (n, S, t)
    rel = np.full((Nn, T), np.nan)
    fits = []
    for j in range(T):
        groups = [finite_rows(sq[i, :, j]) for i in range(Nn)]
        rel[:, j] = [np.sqrt(g.mean()) if len(g) else np.nan for g in groups]
        boot = bootstrap_stat(groups, lambda r: np.sqrt(r.mean(axis=1)), n_boot, rng)
        fits.append(bootstrap_slope(ns, rel[:, j], boot, level))
    ds["m_leading_ref"] = (("t", "m_k"), ref)
    ds["m_leading_rel_err"] = (("n", "t"), rel)
    ds["m_leading_slope"] = ("t", [f[0] for f in fits])
    ds["m_leading_slope_low"] = ("t", [f[2] for f in fits])
    ds["m_leading_slope_high"] = ("t", [f[3] for f in fits])
    ds["m_leading_ref"].attrs["source"] = ref_src
    ds["m_leading_slope"].attrs.update(expected=-0.5, level=level,
                                       interval="percentile bootstrap over seeds, per n")


def mkernel_checks(problem, particles, meanfield=None, nodes=None, *, k=4, n_seeds=None,
                   n_r=8, n_boot=1000, level=0.95, rng):
    r"""Spectrum and identities of :math:`M[\rho]` (2.38) from every available source.

    Sources: ``particles`` (the member seed 0 at the largest n), ``grid`` (``rho_0`` of
    ``meanfield``), ``characteristics`` (``nodes``: ``y_nodes(t, node, y_dim)``,
    ``c_nodes(t, node)``, ``weight(node)`` of :func:`meanfield.characteristics.
    solve_characteristics` with ``save_nodes=True``).

    Returns
    -------
    xarray.Dataset
        ``m_spectrum(source, t, m_mode)`` (eigenvalues on :math:`L^2(\mu)`, descending),
        ``m_min_eigenvalue_source(source, t)`` (:math:`\lambda_{min}/\lambda_{max}`),
        ``m_min_eigenvalue(t)`` (minimum over sources), ``m_psd_tolerance``,
        ``m_identity_residual(source, t)`` (largest gap of (2.39) over ``n_r`` random r,
        relative to its round-off scale :func:`identity_scale`; its bound
        :func:`identity_tolerance` in ``attrs["tolerance"]``), ``m_tangent_residual(n, t)``
        (:math:`\max|M[\rho_n] - n\nabla f_n \nabla f_n| / \max|M|`, seed 0),
        ``m_leading(n, t, m_k)`` (mean over ``n_seeds`` seeds of the top-k eigenvalues of
        :math:`M[\rho_n]`), ``m_leading_ref(t, m_k)`` (of :math:`M[\rho_0]`,
        characteristics preferred), ``m_leading_rel_err(n, t)`` (rms over seeds and k of
        the relative error), ``m_leading_slope(t)`` with ``_low``/``_high`` (bootstrap
        over seeds; expected −1/2: Monte Carlo error of a smooth functional of
        :math:`\rho_n`).
    """
    Q, T = problem.x.shape[0], particles.sizes["t"]
    units = _units_by_source(particles, meanfield, nodes)
    sources = list(units)
    spec, resid, tol = _source_checks(problem, units, T, n_r, rng)
    minrat = np.array([[min_eigenvalue_ratio(spec[a, j]) if np.all(np.isfinite(spec[a, j]))
                        else np.nan for j in range(T)] for a in range(len(sources))])
    ds = xr.Dataset(coords={"source": sources, "t": particles["t"].values,
                            "m_mode": np.arange(Q), "n": particles["n"].values,
                            "m_k": np.arange(k)})
    ds["m_spectrum"] = (("source", "t", "m_mode"), spec)
    ds["m_min_eigenvalue_source"] = (("source", "t"), minrat.reshape(len(sources), T))
    ds["m_min_eigenvalue"] = ("t", np.nanmin(minrat, axis=0) if sources else np.full(T, np.nan))
    ds["m_psd_tolerance"] = psd_tolerance(Q)
    ds["m_identity_residual"] = (("source", "t"), resid)
    ds["m_identity_residual"].attrs.update(
        tolerance=tol, scale="‖|A|ᵀ|w r|‖² with M = AAᵀ (analysis.checks.mkernel."
                            "identity_scale)")
    if "y" not in particles:
        return ds
    tang, lead = _member_checks(problem, particles, n_seeds, k)
    ds["m_tangent_residual"] = (("n", "t"), tang)
    ds["m_leading"] = (("n", "t", "m_k"), np.nanmean(lead, axis=1))
    ref_src = next((s for s in ("characteristics", "grid") if s in sources), None)
    if ref_src is not None:
        _leading_convergence(ds, lead, spec[sources.index(ref_src), :, :k], ref_src,
                             particles["n"].values, n_boot, level, rng)
    return ds


# -- report rows ----------------------------------------------------------------------------
M_PSD = "M[ρ] ⪰ 0 and identity (2.39)"
LEADING = "leading eigenvalues of M[ρ_n] → M[ρ_0]"


def _no_sources(a, ctx):
    """Why no source of M[ρ] was checked."""
    if "m_psd_tolerance" not in a:  # mkernel_checks did not run: too many nodes
        gram = "; the row of the Gram matrix of the features measures its spectrum" \
            if "m_gram_min_ratio" in a else ""
        return NotApplicable(M_PSD, f"Q = {ctx.nodes} x nodes, more than {M_MAX_Q}: the Q x Q "
                             f"kernel is not formed{gram}")
    return NotApplicable(M_PSD, "needs units in particles.nc (dynamics.save_state = true) or "
                         "rho_0 or characteristic nodes in meanfield.nc")


def _source_rows(a):
    out = []
    tol = float(a["m_psd_tolerance"])
    for src in a["source"].values:
        v = a["m_min_eigenvalue_source"].sel(source=src).values
        m = float(np.nanmin(v)) if np.isfinite(v).any() else np.nan
        out.append(Row(f"M[ρ] ⪰ 0: min over t of λ_min/λ_max ({src})", "(2.38), (2.39)",
                       fmt(m), f"≥ −{fmt(tol, 2)} (round-off)",
                       verdict(None if not np.isfinite(m) else bool(m >= -tol))))
    res = a["m_identity_residual"]
    r = float(np.nanmax(res.values)) if np.isfinite(res.values).any() else np.nan
    itol = float(res.attrs["tolerance"])
    out.append(Row("identity (2.39) ⟨r, M r⟩_μ = ∫(c²|∇R|² + R²)ρ, random r, all sources",
                   "(2.39), (2.40)", f"max gap {fmt(r, 2)} ‖|A|ᵀ|w r|‖²",
                   f"≤ {fmt(itol, 2)} (round-off)",
                   verdict(None if not np.isfinite(r) else bool(r <= itol))))
    return out


def _tangent_row(a):
    r = float(np.nanmax(a["m_tangent_residual"].values))
    tol = max(1e-12, 10 * float(a["n"].max()) * np.finfo(float).eps)
    return Row("M[ρ_n] = n ∇_z f_n · ∇_z f_n (tangent kernel, complex step)",
               "(2.38), THEORY §3", f"max relative gap {fmt(r, 2)}", f"≤ {fmt(tol, 2)}",
               verdict(None if not np.isfinite(r) else bool(r <= tol)))


def _leading_rows(a, ctx):
    if sgd_replaces_gd(a):
        return [NotApplicable(LEADING, SGD_REPLACES_GD)]
    out = []
    i = int(np.argmax(a["n"].values))
    for j, t in enumerate(a["t"].values):
        s, lo, hi = (float(a[v].values[j]) for v in ("m_leading_slope", "m_leading_slope_low",
                                                     "m_leading_slope_high"))
        rel = float(a["m_leading_rel_err"].values[i, j])
        v, note = judge(lo, hi, None if not np.isfinite(lo) else bool(lo <= -0.5 <= hi),
                        slope_alternatives(-0.5), center=-0.5, seeds=ctx.seeds,
                        min_seeds=ctx.k_t)
        out.append(Row(f"{LEADING}, t = {t:g}", "(2.31), (2.38)",
                       f"rms rel. error {fmt(rel, 2)} at n = {int(a['n'].values[i])}; "
                       f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}] ({ctx.pct})",
                       with_note("slope −1/2", note), v))
    return out


def mkernel_rows(a, ctx):
    """The M-kernel rows of ``report.md``: M[ρ] ⪰ 0 per source, the identity (2.39), the
    tangent kernel and the leading eigenvalues of M[ρ_n] against M[ρ_0]."""
    out = _source_rows(a) if a.sizes.get("source", 0) else [_no_sources(a, ctx)]
    if "m_tangent_residual" in a:
        out.append(_tangent_row(a))
    if "m_leading_slope" in a:
        out += _leading_rows(a, ctx)
    return out
