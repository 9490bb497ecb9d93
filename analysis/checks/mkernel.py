r"""The M-kernel checks on the outputs of ``mfpc run``: M[ρ] ⪰ 0, the identity (2.39), the
tangent kernel and the convergence of the leading eigenvalues, for every source (particle
members, the grid density ``rho_0``, the characteristic nodes) at every save time.

The computation of M[ρ] lives in :mod:`meanfield.mkernel`; tolerances are derived in
``docs/propositions.md``.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.checks.estimators import align_to, bootstrap_slope, bootstrap_stat, finite_rows
from meanfield.mkernel import (grid_units, identity_239, m_kernel, min_eigenvalue_ratio,
                               operator_spectrum, psd_tolerance, tangent_kernel)

__all__ = ["mkernel_checks"]


def _particle_units(particles, i_n, seed, j):
    n = int(particles["n"].values[i_n])
    y = particles["y"].isel(n=i_n, seed=seed, t=j).values[:n]
    c = particles["c"].isel(n=i_n, seed=seed, t=j).values[:n]
    return y, c, np.full(n, 1.0 / n)


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
        ``m_identity_residual(source, t)`` (largest relative gap of (2.39) over ``n_r``
        random r), ``m_tangent_residual(n, t)`` (:math:`\max|M[\rho_n] - n\nabla f_n
        \nabla f_n| / \max|M|`, seed 0), ``m_leading(n, t, m_k)`` (mean over ``n_seeds``
        seeds of the top-k eigenvalues of :math:`M[\rho_n]`), ``m_leading_ref(t, m_k)``
        (of :math:`M[\rho_0]`, characteristics preferred), ``m_leading_rel_err(n, t)``
        (rms over seeds and k of the relative error), ``m_leading_slope(t)`` with
        ``_low``/``_high`` (bootstrap over seeds; expected −1/2: Monte Carlo error of a
        smooth functional of :math:`\rho_n`).
    """
    x, w = problem.x, problem.w
    Q, T = x.shape[0], particles.sizes["t"]
    ts = particles["t"].values
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
    sources = list(units)
    spec = np.full((len(sources), T, Q), np.nan)
    resid = np.full((len(sources), T), np.nan)
    for a, src in enumerate(sources):
        for j in range(T):
            y, c, wt = units[src][j]
            if not (np.all(np.isfinite(c)) and np.all(np.isfinite(y))):
                continue
            spec[a, j] = operator_spectrum(m_kernel(problem.kernel, x, y, c, wt), w)
            r = rng.standard_normal((n_r, Q))
            lhs, rhs = identity_239(problem.kernel, x, w, y, c, wt, r)
            resid[a, j] = float(np.max(np.abs(lhs - rhs) / np.abs(rhs)))
    minrat = np.array([[min_eigenvalue_ratio(spec[a, j]) if np.all(np.isfinite(spec[a, j]))
                        else np.nan for j in range(T)] for a in range(len(sources))])
    ds = xr.Dataset(coords={"source": sources, "t": ts, "m_mode": np.arange(Q),
                            "n": particles["n"].values, "m_k": np.arange(k)})
    ds["m_spectrum"] = (("source", "t", "m_mode"), spec)
    ds["m_min_eigenvalue_source"] = (("source", "t"), minrat.reshape(len(sources), T))
    ds["m_min_eigenvalue"] = ("t", np.nanmin(minrat, axis=0) if sources else np.full(T, np.nan))
    ds["m_psd_tolerance"] = psd_tolerance(Q)
    ds["m_identity_residual"] = (("source", "t"), resid)
    if "y" not in particles:
        return ds
    Nn = particles.sizes["n"]
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
    ds["m_tangent_residual"] = (("n", "t"), tang)
    ds["m_leading"] = (("n", "t", "m_k"), np.nanmean(lead, axis=1))
    ref_src = next((s for s in ("characteristics", "grid") if s in sources), None)
    if ref_src is None:
        return ds
    ref = spec[sources.index(ref_src), :, :k]
    sq = np.mean(((lead - ref[None, None]) / ref[None, None]) ** 2, axis=3)  # (n, S, t)
    ns = particles["n"].values
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
    return ds
