r"""Ensemble prediction of the CLT covariance: tangent-linear runs of the grid scheme.

The fluctuation :math:`\rho_n = \rho_0 + n^{-1/2}\tilde\rho` tends to :math:`\rho_{1/2}`
solving the linearisation (2.24) of the mean-field equation (2.9) (THEORY §4),

.. math::
    \partial_t\rho_{1/2} = \nabla_y\cdot(\rho_{1/2}\,c\nabla_yU_0 + \rho_0\,c\nabla_yU_{1/2})
        + \partial_c(\rho_{1/2}U_0 + \rho_0U_{1/2}),\qquad
    U_{1/2} = \langle\varphi(\cdot, y), f_{1/2}\rangle_\mu,\quad
    f_{1/2} = \int c\,\varphi\,\rho_{1/2},

from a centred Gaussian field with covariance :math:`\rho_{in}\delta - \rho_{in}\otimes
\rho_{in}` ((2.17); (2.18) and (2.25) drop the second term). Then
:math:`\sqrt n(f_n - f_0)(t)\to f_{1/2}(t)` in law, and the covariance of :math:`f_{1/2}(t)`
is estimated here from an ensemble of sampled initial fields, each carried by the
tangent-linear of the finite-volume scheme of :mod:`meanfield.grid.solve`:

* **sampling** (:func:`sample_perturbations`): the cell integrals of the field have
  covariance :math:`\mathrm{diag}(m) - mm^\top` (``m`` the initial cell masses);
* **tangent-linear** (:class:`Linearisation`, :func:`tangent_step`): the derivative of
  one SSP-RK3 step of the CCH right-hand side with respect to the cell masses, with the
  limiter branch of every half-slope and the upwind side of every face frozen at the
  stage states of the forward run, plus the linear response of the potential
  :math:`\delta U = \Phi^\top W\Phi\,\delta g` (:math:`\delta g = \delta m\,c`). The
  forward run :math:`\rho_0` and the batch of perturbations advance together, with the
  step sizes of :class:`meanfield.grid.stepper.GridStepper` (those of
  :func:`~meanfield.grid.solve.solve_grid`), both in :class:`meanfield.grid.tangent.TangentStepper`;
* **estimate** (:func:`clt_covariance_ensemble`): the sample covariance of
  :math:`f_{1/2}(t, x) = \sum_{jk}c_k\varphi(x, y_j)\delta m_{jk}(t)` over members and its
  standard error (:func:`covariance_stderr`).

The expectation of the estimate is exactly the covariance of the discrete tangent-linear
scheme, :math:`J_t(\mathrm{diag}(m) - mm^\top)J_t^\top`; it differs from the influence
method (:mod:`meanfield.influence`, along characteristics) by the discretisation errors of
the two methods only. Method, derivations and tests: ``docs/methods_fluctuations.md``.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import xarray as xr

from particles.engine.loop import NumericalFailure, check_save_times, run
from particles.engine.results import dataset as cf_dataset
from particles.engine.results import run_status, x_coord

from meanfield.defaults import ENSEMBLE, PHI_TOL
from meanfield.grid.solve import OUTFLOW_WARN, GridSolver, grid_options, prepare
from meanfield.grid.tangent import (  # noqa: F401 - re-exported
    Linearisation,
    TangentStepper,
    stage_linearisations,
    tangent_step,
)

__all__ = [
    "FLUCT_KEY",
    "fluctuation_rng",
    "sample_perturbations",
    "Linearisation",
    "stage_linearisations",
    "tangent_step",
    "f_half",
    "covariance_stderr",
    "clt_covariance_ensemble",
]

#: ``spawn_key`` of the ensemble's generator, ``SeedSequence(root_seed, spawn_key=(FLUCT_KEY,))``.
#: A 1-tuple, so it never equals the 2-tuples ``(i_n, i_seed)`` of particle members, and
#: ``2**32 - 1`` is out of their range anyway.
FLUCT_KEY = 2**32 - 1


def fluctuation_rng(root_seed: int = 0) -> np.random.Generator:
    """The generator of the ensemble method (PCG64, ``spawn_key=(FLUCT_KEY,)``)."""
    ss = np.random.SeedSequence(int(root_seed), spawn_key=(FLUCT_KEY,))
    return np.random.Generator(np.random.PCG64(ss))


def sample_perturbations(m, members, rng):
    r"""Samples of the initial fluctuation field on the cells, covariance ``diag(m) − m mᵀ``.

    .. math::
        \delta m = \sqrt m\odot\xi - \alpha\,m\,(\sqrt m\cdot\xi),\qquad
        \xi\sim N(0, I),\quad \alpha = \frac{1 - \sqrt{1 - S}}{S},\ S = \textstyle\sum_j m_j,

    so :math:`\mathrm{Cov}(\delta m) = \mathrm{diag}(m) - (2\alpha - \alpha^2S)\,mm^\top =
    \mathrm{diag}(m) - mm^\top` exactly: the cell integrals of the Gaussian field with
    covariance :math:`\rho_{in}\delta - \rho_{in}\otimes\rho_{in}` (2.17), which is also
    the covariance of :math:`\sqrt n(\rho_n - \rho_{in})` on the cells. With no mass
    outside the grid (S = 1; taken as such for 1 − S < 1e-12), α = 1 and
    :math:`\sum_j\delta m_j = 0` for every sample; otherwise the mass inside the grid
    fluctuates with variance S(1 − S), as it should.
    Members are drawn in order: member ``k`` takes the ``k``-th block of ``m.size``
    normals of ``rng`` (so drawing in chunks of members gives the same samples).

    Parameters
    ----------
    m : ndarray, any shape
        Cell masses, ``m ≥ 0``, ``0 < sum(m) ≤ 1``.
    members : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape ``(members,) + m.shape``
    """
    m = np.asarray(m, float)
    S = float(m.sum())
    if not 0 < S <= 1 + 1e-12 or np.any(m < 0):
        raise ValueError(f"cell masses must be >= 0 with total in (0, 1], got total {S:.6g}")
    S = min(S, 1.0)
    # 1 - S below 1e-12 is round-off in the cell masses of a law inside the grid: alpha = 1
    # keeps sum(dm) = 0 and changes the covariance by (1 - S) m m^T only. (sqrt(1 - S)
    # would amplify the round-off: alpha = 1 - 1e-8 at 1 - S = 1e-16.)
    alpha = 1.0 if 1.0 - S < 1e-12 else (1.0 - math.sqrt(1.0 - S)) / S
    r = np.sqrt(m).reshape(-1)
    xi = rng.standard_normal((int(members), r.size))
    xi *= r
    proj = xi.sum(axis=1)
    xi -= alpha * proj[:, None] * m.reshape(-1)
    return xi.reshape((int(members),) + m.shape)


def f_half(solver: GridSolver, dm):
    r""":math:`f_{1/2}(x_q) = \sum_{j,k}c_k\varphi(x_q, y_j)\,\delta m_{jk}`, shape (M, Q)."""
    dm = np.asarray(dm, float)
    M = dm.shape[0]
    dg = dm.reshape(M, -1, solver.grid.nc) @ solver.c
    return dg @ solver.data.Phi.T


def covariance_stderr(cov, members):
    r"""Standard error of each entry of a sample covariance (ddof = 1) of Gaussian data.

    :math:`(M-1)\hat S` is Wishart with :math:`M-1` degrees of freedom and scale Σ, and
    :math:`\mathrm{Var}\,W_{ab} = \nu(\Sigma_{ab}^2 + \Sigma_{aa}\Sigma_{bb})`, so

    .. math:: \mathrm{Var}\,\hat S_{ab} = \frac{\Sigma_{ab}^2 + \Sigma_{aa}\Sigma_{bb}}{M - 1},

    estimated by plugging in :math:`\hat S` (relative error of the standard error itself
    :math:`O(M^{-1/2})`). ``cov`` has shape ``(..., Q, Q)``.
    """
    cov = np.asarray(cov, float)
    var = np.diagonal(cov, axis1=-2, axis2=-1)
    return np.sqrt((cov**2 + var[..., :, None] * var[..., None, :]) / (members - 1))


# -- the ensemble ---------------------------------------------------------------------------
#: Doubles per batch array: 2**14 (128 kB) keeps the temporaries of
#: :meth:`Linearisation.apply` in cache (measured 20 ns per cell and member against
#: 40 ns at 2**16 and more; ``benchmarks/bench_fluctuations.py``).
CHUNK_DOUBLES = 2**14


def _default_chunk(cells):
    """Members per batch: about :data:`CHUNK_DOUBLES` doubles per batch array."""
    return max(1, CHUNK_DOUBLES // max(cells, 1))


def ensemble_grid(grid=None) -> dict:
    """The grid options of a tangent-linear ensemble: those of the grid, without ``dt``.

    Raises ValueError for a fixed ``dt`` (the ensemble takes the grid's adaptive steps)
    or a ``cfl`` outside (0, 1].
    """
    g = grid_options(grid)
    if g["dt"] is not None:
        raise ValueError(f"grid.dt={g['dt']}: the ensemble takes the adaptive steps of the "
                         "positivity bound; drop dt")
    if not 0 < g["cfl"] <= 1:
        raise ValueError(f"grid.cfl={g['cfl']} must be in (0, 1]: steps above the bound "
                         "lose positivity")
    return g


def clt_covariance_ensemble(
    problem,
    save_times,
    *,
    members: int = ENSEMBLE["members"],
    grid=None,
    root_seed: int = 0,
    phi_tol: float = PHI_TOL,
    chunk: int | None = None,
    progress: bool | None = None,
    checkpoint=None,
) -> xr.Dataset:
    r"""Predicted covariance of :math:`\sqrt n(f_n - f_0)(t)` by an ensemble of (2.24) runs.

    Each member is a sample of the initial fluctuation field on the cells
    (:func:`sample_perturbations`), carried by the tangent-linear of the grid scheme around
    :math:`\rho_0(t)` (:class:`meanfield.grid.tangent.TangentStepper`: the grid's own steps).
    At each save time :math:`f_{1/2}(t, x)` (:func:`f_half`) is recorded for every member,
    and the covariance is the sample covariance over members (mean subtracted, ddof = 1).

    Parameters
    ----------
    problem : particles.problem.Problem
    save_times : sequence of float
        Increasing times ≥ 0.
    members : int
        Ensemble size M ≥ 2; standard errors scale as :math:`M^{-1/2}`.
    grid : dict, optional
        The grid and step of :func:`meanfield.grid.solve.solve_grid` (the keys of
        ``[meanfield] grid``; no fixed ``dt``: the steps follow the positivity bound of
        :math:`\rho_0`).
    phi_tol : float
        As :func:`meanfield.grid.solve.solve_grid`.
    root_seed : int
        The generator is :func:`fluctuation_rng` ``(root_seed)``.
    chunk : int, optional
        Members advanced together per batch (memory and cache only; results are the same
        for every chunk). Default: about ``CHUNK_DOUBLES`` doubles per batch array.
    progress : bool or None
        Progress bar; ``None`` shows it only on a terminal.
    checkpoint : particles.engine.checkpoint.Checkpoint, optional
        Checkpoints inside the run (:mod:`particles.engine.checkpoint`): a run resumed from it is
        bitwise one that never stopped.

    Returns
    -------
    xarray.Dataset
        Coords ``t``, ``x``, ``x_``; ``clt_cov(t, x, x_)``, ``clt_var(t, x)`` (its
        diagonal), ``clt_cov_stderr(t, x, x_)`` (:func:`covariance_stderr`),
        ``f_0_grid(t, x)`` (the forward run). ``attrs``: ``method = "ensemble"``,
        ``members``, ``root_seed``, ``fluct_key``, ``resolution`` (JSON: grid, steps),
        ``c_domain`` (JSON ``[c_min, c_max]``), ``truncated_mass`` (initial mass of
        :math:`\rho_{in}` outside the grid), ``outflow`` (mass of :math:`\rho_0` that left
        through the c faces), versions.

    References
    ----------
    Linearisation (2.24) with initial covariance (2.17); THEORY §4, §8.
    """
    ts = check_save_times(save_times)
    members = int(members)
    if members < 2:
        raise ValueError(f"members={members}: a sample covariance needs at least 2 members")
    g = ensemble_grid(grid)
    cfl, c_min, c_max = g["cfl"], g["c_min"], g["c_max"]
    grid, m0, truncated, eps = prepare(problem, g, phi_tol=phi_tol)
    solver = GridSolver(problem, grid, potential=g["potential"])
    cells = int(np.prod(grid.shape))
    chunk = _default_chunk(cells) if chunk is None else max(1, int(chunk))
    rng = fluctuation_rng(root_seed)
    Q = problem.x.shape[0]
    T = len(ts)
    fh = np.full((T, members, Q), np.nan)
    f0 = np.full((T, Q), np.nan)
    batches = [(s, min(members, s + chunk)) for s in range(0, members, chunk)]
    dms = [sample_perturbations(m0, b - a, rng) for a, b in batches]  # member order
    hs = []
    box = {"outflow": 0.0, "warned": False}

    def after_step(old, new):
        box["outflow"] = new.outflow
        if not box["warned"] and new.outflow > OUTFLOW_WARN:
            box["warned"] = True
            warnings.warn(f"mass {new.outflow:.3g} of rho_0 has left through the c "
                          f"boundaries [{c_min}, {c_max}] by t={new.t:.4g}: the prediction "
                          "misses it; widen c_min/c_max", stacklevel=4)
        hs.append(new.h)

    def observe(j, st):
        f0[j] = solver.f0(st.m)
        for (a, b), d in zip(batches, st.dm):
            fh[j, a:b] = f_half(solver, d)

    def dataset(failure=None):
        return _dataset(problem, grid, ts, fh, f0, hs, members, root_seed, cfl, eps,
                        truncated, box["outflow"], solver.U_of_g.name, failure)

    if checkpoint is not None:
        checkpoint.track(fh=fh, f0=f0, hs=hs, box=box)
    stepper = TangentStepper(solver, batches, cfl=cfl)
    run(stepper, stepper.init(m0, dms), ts, observe, after_step=after_step,
        progress=progress, desc="ensemble", partial=dataset, checkpoint=checkpoint)
    if not np.all(np.isfinite(fh)):
        message = "ensemble: non-finite f_1/2 at a save time; lower fluctuations.cfl"
        raise NumericalFailure(message, dataset(message))
    return dataset()


def _dataset(problem, grid, ts, fh, f0, hs, members, root_seed, cfl, eps, truncated,
             outflow, potential, failure):
    """The Dataset of :func:`clt_covariance_ensemble` (``failure``: a partial one)."""
    with np.errstate(invalid="ignore"):
        dev = fh - fh.mean(axis=1, keepdims=True)
        cov = np.einsum("tmq,tmp->tqp", dev, dev) / (members - 1)
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))
        stderr = covariance_stderr(cov, members)
    x = problem.x
    xc = x_coord(x)
    d = np.asarray(hs) if hs else np.zeros(1)
    resolution = {"ny": list(grid.ny), "nc": grid.nc, "c_min": grid.c_min,
                  "c_max": grid.c_max, "cfl": float(cfl), "n_steps": len(hs),
                  "dt_min": float(d.min()), "dt_max": float(d.max()),
                  "potential": potential, "phi_resolution": eps}
    attrs = {
        "method": "ensemble",
        "method_description": "sample covariance of f_1/2 over tangent-linear runs of the "
                              "CCH grid scheme (limiter and upwind choices frozen along "
                              "the forward run) from sampled initial fields (2.17), (2.24)",
        "members": members,
        "root_seed": int(root_seed),
        "fluct_key": FLUCT_KEY,
        "resolution": json.dumps(resolution),
        "c_domain": json.dumps([float(grid.c_min), float(grid.c_max)]),
        "truncated_mass": float(truncated),
        "outflow": float(outflow),
        **run_status(failure),
    }
    data = {
        "clt_cov": (("t", "x", "x_"), cov),
        "clt_var": (("t", "x"), np.diagonal(cov, axis1=1, axis2=2).copy()),
        "clt_cov_stderr": (("t", "x", "x_"), stderr),
        "f_0_grid": (("t", "x"), f0),
    }
    return cf_dataset(data, {"t": ts, "x": xc, "x_": xc}, attrs,
                      title="mfpc CLT covariance (linearised grid ensemble)")
