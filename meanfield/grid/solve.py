r"""Eulerian finite-volume solver of the mean-field equation (2.9) on a tensor (y, c) grid.

The law :math:`\rho_0(t, y, c)` of one unit obeys (2.9), written in THEORY §3 as

.. math::
    \partial_t\rho = \nabla_y\cdot(\rho\,c\nabla_y U) + \partial_c(\rho U)
        + \tau(\Delta_y + \partial_c^2)\rho, \qquad
    U(t, y) = \langle\varphi(\cdot, y), f_0 - f\rangle_\mu, \qquad
    f_0(x) = \int c\,\varphi(x, y)\rho\,dy\,dc \quad (2.34),

(``τ > 0`` only for Langevin training, Sec. 4.1). The state is the array of cell masses
``m`` of shape ``(n_1, ..., n_N, n_c)`` (y coordinates first, c last). Pieces:

* :mod:`meanfield.grid.cells`: :class:`Grid`, :func:`make_grid` (y periodic on the circle,
  otherwise a box with zero-flux walls; c in ``[c_min, c_max]`` with outflow boundaries,
  what leaves is recorded), :func:`initial_masses`, :func:`phi_resolution`.
* :mod:`meanfield.grid.potentials`: :class:`DataPotential` (any φ, O(Q·N_y)) and
  :class:`FFTPotential` (circle only).
* :mod:`meanfield.grid.solver`: :class:`GridSolver` (``rhs``, ``step`` (SSP-RK3),
  ``cfl_bound``, ``potential``, ``f0``).
* :mod:`meanfield.grid.stepper`: :class:`GridStepper`, the adaptive SSP-RK3 step for the one
  time loop :func:`particles.engine.loop.run`.
* Here: :func:`prepare` (grid and initial masses, checked), :func:`solve_grid` (the
  driver run to the save times, returning an :class:`xarray.Dataset`),
  :func:`project_particles` (particle histograms on the grid).

The method, its order and step bound are in ``docs/methods_grid.md``.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import xarray as xr

from particles.engine.loop import check_save_times, run
from particles.engine.results import dataset as cf_dataset
from particles.engine.results import run_status, x_coord

from meanfield.grid.cells import Grid, initial_masses, make_grid, phi_resolution
from meanfield.defaults import GRID, GRID_OPTIONAL, PHI_TOL, options
from meanfield.grid.solver import GridSolver, StepResult
from meanfield.grid.stepper import GridState, GridStepper
from meanfield.grid.potentials import DataPotential, FFTPotential  # noqa: F401 - re-exported

__all__ = [
    "Grid",
    "make_grid",
    "initial_masses",
    "phi_resolution",
    "DataPotential",
    "FFTPotential",
    "GridSolver",
    "GridState",
    "GridStepper",
    "StepResult",
    "prepare",
    "advance",
    "solve_grid",
    "project_particles",
]

#: Largest initial mass outside the grid accepted without ``allow_truncation``.
TRUNCATION_TOL = 1e-8
#: Cumulative outflow through the c boundaries above which :func:`solve_grid` warns.
OUTFLOW_WARN = 1e-6

SCHEME = (
    "Carrillo-Chertock-Huang finite volumes (arXiv:1402.4252): face velocities -c dU/dy "
    "(centred difference of U at cell centres) and -U (exact), piecewise-linear "
    "generalised-minmod (theta=2) reconstruction, upwind fluxes, central diffusive flux "
    "if tau > 0, SSP-RK3 in time with dt = cfl * positivity bound"
)


# -- time loop ------------------------------------------------------------------------------
def grid_options(grid=None, where="grid") -> dict:
    """The options of a grid (keys of ``[meanfield] grid``) over :data:`~meanfield.defaults.GRID`.

    Raises ValueError naming ``where`` for an unknown key, or ``y_low``/``y_high`` given
    alone or with different lengths.
    """
    g = options(grid, GRID, where, GRID_OPTIONAL)
    if ("y_low" in g) != ("y_high" in g) or len(g.get("y_low", ())) != len(g.get("y_high", ())):
        raise ValueError(f"{where}: give y_low and y_high together, one number per y "
                         "coordinate each")
    return g


def y_box(g):
    """``[(low, high)]`` per y coordinate from a grid's ``y_low``/``y_high``, or None."""
    return list(zip(g["y_low"], g["y_high"])) if "y_low" in g else None


def _ny_that_resolves(problem, grid, eps, phi_tol, limit=2**24):
    """Cell counts per y coordinate whose :func:`phi_resolution` is at most ``phi_tol``
    (tested), or None past ``limit`` cells: each try re-estimates from the last measured
    error with the dy^2 law (times 1.05), which holds once the cells resolve phi's width."""
    from dataclasses import replace

    ny = grid.ny
    for _ in range(12):
        scale = math.sqrt(eps / phi_tol) * 1.05
        ny = tuple(max(n + 1, math.ceil(n * scale)) for n in ny)
        if math.prod(ny) > limit:
            return None
        eps = phi_resolution(problem, replace(grid, ny=ny))
        if eps <= phi_tol:
            return list(ny)
    return None  # pragma: no cover - the dy^2 law is reached in two or three tries


def prepare(problem, grid=None, *, phi_tol=PHI_TOL, where="grid", phi_tol_hint=True):
    r"""Grid, initial cell masses, truncated mass and φ resolution, with every input check.

    ``grid`` has the keys of ``[meanfield] grid`` (:func:`grid_options`). Raises ValueError
    (saying what to change) for a Dirac c law, more than 1e-8 of :math:`\rho_{in}` outside
    the grid (unless ``allow_truncation``), a c law narrower than one cell, or a y grid that
    does not resolve φ (:func:`phi_resolution` above ``phi_tol``). Each hint is a value
    that passes the check it comes from, named as ``where.key`` (``meanfield.grid.y`` for
    a config); ``phi_tol_hint`` adds "or raise phi_tol" (a Python argument only).
    """
    g = grid_options(grid, where)
    c_min, c_max = g["c_min"], g["c_max"]
    k = {key: f"{where}.{key}" for key in ("y", "c", "c_min", "c_max", "y_low", "y_high")}
    k["allow_truncation"] = f"{where}.allow_truncation = true"
    k["phi_tol"] = "phi_tol" if phi_tol_hint else None
    grid = make_grid(problem, g["y"], g["c"], c_min, c_max, y_box(g))
    m, truncated = initial_masses(problem, grid)
    if truncated > TRUNCATION_TOL and not g["allow_truncation"]:
        raise ValueError(_truncation_message(problem, grid, truncated, k))
    law = problem.c_law
    c_std = math.sqrt(max(law.second_moment() - law.mean() ** 2, 0.0))
    if c_std < grid.dc:
        raise ValueError(
            f"{k['c']}={grid.nc} is too coarse for the c law (std {c_std:.3g} < cell width "
            f"{grid.dc:.3g}); use {k['c']} >= {math.ceil((c_max - c_min) / c_std)} or a "
            f"narrower c range ({k['c_min']}, {k['c_max']})"
        )
    eps = phi_resolution(problem, grid)
    if eps > phi_tol:
        need = _ny_that_resolves(problem, grid, eps, phi_tol)
        use = ("a much finer grid is needed (more than 2^24 y cells): use a smoother kernel"
               if need is None else f"use {k['y']} >= {need if grid.N > 1 else need[0]}")
        raise ValueError(
            f"{k['y']}={list(grid.ny) if grid.N > 1 else grid.ny[0]} does not resolve phi: "
            f"its cell-centre values differ from its cell averages by {eps:.2g} (relative) > "
            f"{phi_tol:g}; {use} (tested: it resolves phi)"
            + (f", or raise {k['phi_tol']}" if k["phi_tol"] else "")
        )
    return grid, m, truncated, eps


def _truncation_message(problem, grid, truncated, k):
    """What is outside the grid and a range that holds it (tested by the caller's check)."""
    law, ylaw = problem.c_law, problem.y_law
    c_out = 1.0 - float(np.clip(np.diff(law.cdf(grid.c_edges)), 0, None).sum())
    fixes = []
    if c_out > TRUNCATION_TOL / 2:
        lo, hi = law.support(TRUNCATION_TOL / 100)
        lo, hi = min(grid.c_min, math.floor(lo * 10) / 10), max(grid.c_max, math.ceil(hi * 10) / 10)
        fixes.append(f"widen {k['c_min']}/{k['c_max'].rsplit('.', 1)[-1]} to [{lo:g}, {hi:g}]")
    if not all(grid.y_periodic) and truncated - c_out > TRUNCATION_TOL / 2:
        box = ylaw.default_box()
        low = [min(a, b[0]) for a, b in zip(grid.y_low, box)]
        high = [max(a, b[1]) for a, b in zip(grid.y_high, box)]
        fixes.append(f"widen the y box to {k['y_low']} = {low} and {k['y_high']} = {high}")
    fixes.append(f"or set {k['allow_truncation']}")
    return (f"the initial law has mass {truncated:.3g} outside the grid (c in [{grid.c_min:g}, "
            f"{grid.c_max:g}], y in {[(a, b) for a, b in zip(grid.y_low, grid.y_high)]}) > "
            f"{TRUNCATION_TOL:g}; " + "; ".join(fixes))


def advance(solver, m, t, t_end, *, cfl=GRID["cfl"], dt=None, after_step=None):
    """SSP-RK3 steps from ``t`` to exactly ``t_end``; returns ``(m, outflow)``.

    The steps of :class:`GridStepper` (adaptive ``cfl * bound`` with redo, or fixed equal
    substeps ``<= dt``) driven by :func:`particles.engine.loop.run`; ``after_step(t, m, res, h)``
    is called after every accepted step (``res`` with ``outflow`` and ``bound``).
    """
    stepper = GridStepper(solver, cfl=cfl, dt=dt)
    hook = None
    if after_step is not None:
        def hook(old, new):
            after_step(new.t, new.m, StepResult(new.m, new.step_outflow, new.bound), new.h)
    end = run(stepper, GridState(float(t), np.asarray(m, float)), [t_end],
              lambda j, st: None, after_step=hook, progress=False)
    return end.m, end.outflow


def solve_grid(
    problem,
    save_times,
    *,
    grid=None,
    temperature: float = 0.0,
    phi_tol: float = PHI_TOL,
    save_rho: bool = True,
    on_step=None,
    progress: bool | None = None,
    checkpoint=None,
    train=("y", "c"),
) -> xr.Dataset:
    r"""Solve the mean-field equation (2.9) from :math:`\rho_{in}` on a (y, c) grid.

    Parameters
    ----------
    problem : particles.problem.Problem
    save_times : sequence of float
        Increasing times ≥ 0; the run stops at the last.
    grid : dict, optional
        The keys of ``[meanfield] grid`` (``docs/config.md``) over
        :data:`meanfield.defaults.GRID`: ``y`` (cells per y coordinate: an int or one per
        coordinate) and ``c`` (cells in c); ``c_min``, ``c_max`` (the c range; mass
        crossing it leaves: outflow, recorded, a warning past 1e-6); ``y_low``, ``y_high``
        (the y box of non-periodic problems, one number per coordinate; default mean ± 6
        std of a normal y law); ``cfl`` in (0, 1] (each step is ``cfl * bound``, shortened
        to land on save times, ``bound`` the positivity bound of :class:`GridSolver`);
        ``dt`` (a fixed largest step instead: equal substeps between save times; a
        ValueError if it exceeds the bound at any stage); ``potential`` in {"auto",
        "data", "fft"} (how U is computed: :class:`DataPotential`, :class:`FFTPotential`);
        ``allow_truncation`` (accept an initial law with more than 1e-8 of its mass
        outside the grid).
    temperature : float
        Diffusion :math:`\tau(\Delta_y + \partial_c^2)\rho` with τ the temperature of
        Langevin training (``dynamics.temperature``, Sec. 4.1).
    phi_tol : float
        Largest accepted :func:`phi_resolution` of the y grid.
    save_rho : bool
        Save the density ``rho_0`` at the save times.
    on_step : callable ``(t, m)``, optional
        Called after every accepted step with the cell masses (do not modify them).
    progress : bool or None
        Progress bar; ``None`` shows it only on a terminal.
    checkpoint : particles.engine.checkpoint.Checkpoint, optional
        Checkpoints inside the run (:mod:`particles.engine.checkpoint`; the outputs and the step
        statistics are tracked): a run resumed from it is bitwise one that never stopped.
    train : tuple of str
        ``("c",)``: random features, the y flux off (:class:`GridSolver`).

    Returns
    -------
    xarray.Dataset
        Coords ``t``, ``x`` (node values for d = 1, else an index with ``x_nodes(x,
        x_dim)``), ``y`` (or ``y_0``, ``y_1``, ... for N > 1) and ``c`` (cell centres).
        Variables ``f_0(t, x)`` (2.34), ``loss_0(t)`` (1.2), ``rho_0(t, y..., c)``
        (density: mass / cell volume), ``mass(t)``, ``outflow(t)`` (cumulative mass out
        through ``c_min``, ``c_max``), ``f_target(x)``, ``x_weight(x)``. ``attrs``: the
        scheme, grid, truncated initial mass, potential method, CFL and dt statistics,
        problem parameters and versions.

    Raises
    ------
    ValueError
        Dirac c law, truncated initial mass, a y grid too coarse for φ, ``dt`` above the
        positivity bound, bad options; each message says what to change.
    particles.simulate.NumericalFailure
        A non-finite state (``.partial`` holds the Dataset so far).

    References
    ----------
    Mean-field equation (2.9), network (2.34), loss (1.2); CCH scheme (THEORY §8).
    """
    ts = check_save_times(save_times)
    g = grid_options(grid)
    cfl, dt, c_min, c_max = g["cfl"], g["dt"], g["c_min"], g["c_max"]
    if not 0 < cfl <= 1:
        raise ValueError(f"grid.cfl={cfl} must be in (0, 1]: steps above the bound lose "
                         "positivity")
    if dt is not None and not dt > 0:
        raise ValueError(f"grid.dt={dt} must be > 0 (or None for the adaptive step)")
    grid, m, truncated, eps = prepare(problem, g, phi_tol=phi_tol)
    solver = GridSolver(problem, grid, temperature=temperature, potential=g["potential"],
                        train=train)
    T = len(ts)
    out = {"f_0": np.full((T, problem.x.shape[0]), np.nan), "loss_0": np.full(T, np.nan),
           "mass": np.full(T, np.nan), "outflow": np.full(T, np.nan)}
    if save_rho:
        out["rho_0"] = np.full((T,) + grid.shape, np.nan)
    stats_ = {"dt": [], "cfl": [], "warned": False}

    def after_step(old, new):
        stats_["dt"].append(new.h)
        stats_["cfl"].append(new.h / new.bound if new.bound < math.inf else 0.0)
        if not stats_["warned"] and new.outflow > OUTFLOW_WARN:
            stats_["warned"] = True
            warnings.warn(f"mass {new.outflow:.3g} has left through the c boundaries "
                          f"[{c_min}, {c_max}] by t={new.t:.4g}; widen c_min/c_max",
                          stacklevel=4)
        if on_step is not None:
            on_step(new.t, new.m)

    def observe(j, st):
        f0 = solver.f0(st.m)
        out["f_0"][j], out["loss_0"][j] = f0, problem.loss(f0)
        out["mass"][j], out["outflow"][j] = st.m.sum(), st.outflow
        if save_rho:
            out["rho_0"][j] = st.m / grid.cell_volume

    def dataset(failure=None):
        attrs = _attrs(problem, grid, solver, g, temperature, truncated, eps, stats_, train)
        return _dataset(problem, grid, ts, out, {**attrs, **run_status(failure)})

    if checkpoint is not None:
        checkpoint.track(**{f"out_{k}": v for k, v in out.items()}, stats=stats_)
    stepper = GridStepper(solver, cfl=cfl, dt=dt)
    run(stepper, stepper.init(m), ts, observe, after_step=after_step, progress=progress,
        desc="grid", partial=dataset, checkpoint=checkpoint)
    return dataset()


def _attrs(problem, grid, solver, g, temperature, truncated, eps, stats_, train) -> dict:
    """The attrs of a grid run: scheme, grid, initial truncation, steps taken."""
    d = np.asarray(stats_["dt"]) if stats_["dt"] else np.zeros(1)
    return {
        "scheme": SCHEME,
        "order": "2 in space on smooth solutions (limiter: 1 at extrema), 3 in time",
        "grid": json.dumps(grid.params()),
        "ny": json.dumps(list(grid.ny)),
        "nc": grid.nc,
        "c_min": grid.c_min,
        "c_max": grid.c_max,
        "y_dims": json.dumps(list(grid.y_dims)),
        "truncated_mass": truncated,
        "phi_resolution": eps,
        "potential": solver.U_of_g.name,
        **({} if "y" in train else {"train": "c (random features: y frozen, no y flux)"}),
        "temperature": float(temperature),
        "cfl": float(g["cfl"]),
        "dt_fixed": float(g["dt"]) if g["dt"] is not None else "adaptive",
        "dt_min": float(d.min()),
        "dt_max": float(d.max()),
        "dt_mean": float(d.mean()),
        "n_steps": len(stats_["dt"]),
        "cfl_max": float(max(stats_["cfl"])) if stats_["cfl"] else 0.0,
        "problem": json.dumps(problem.params()),
        "c_law": json.dumps(problem.c_law.params()),
        "y_law": json.dumps(problem.y_law.params()),
    }


def _dataset(problem, grid, ts, out, attrs):
    x = problem.x
    coords = {"t": ts}
    data = {
        "f_0": (("t", "x"), out["f_0"]),
        "loss_0": (("t",), out["loss_0"]),
        "mass": (("t",), out["mass"]),
        "outflow": (("t",), out["outflow"]),
        "f_target": (("x",), problem.f_x),
        "x_weight": (("x",), problem.w),
    }
    coords["x"] = x_coord(x)
    if x.shape[1] > 1:
        data["x_nodes"] = (("x", "x_dim"), x)
    coords.update(grid.coords())
    if "rho_0" in out:
        data["rho_0"] = (("t",) + grid.dims, out["rho_0"])
    return cf_dataset(data, coords, attrs, title="mfpc mean-field limit (grid)")


# -- particles on the grid ----------------------------------------------------------------
def project_particles(y, c, grid) -> xr.DataArray:
    r"""Histogram particle ensembles on a grid: density per cell averaged over members.

    Each member's empirical measure (2.3) :math:`\frac1n\sum_i\delta_{(y_i, c_i)}` is
    binned on the cells (y wrapped on a periodic grid), averaged over members and divided
    by the cell volume, for side-by-side pictures with ``rho_0``.

    Parameters
    ----------
    y : ndarray, shape (S, n, N), (n, N) or (n,) when N = 1
    c : ndarray, shape (S, n) or (n,)
    grid : Grid or xarray.Dataset
        A grid, or a Dataset from :func:`solve_grid` (its ``attrs["grid"]``).

    Returns
    -------
    xarray.DataArray, dims ``grid.dims``
        Density; ``attrs["mass_outside"]`` is the mean mass that fell outside the grid.
    """
    if isinstance(grid, xr.Dataset):
        grid = Grid.from_params(json.loads(grid.attrs["grid"]))
    c = np.asarray(c, float)
    y = np.asarray(y, float)
    if c.ndim == 1:
        c = c[None]
    S, n = c.shape
    y = y.reshape(S, n, grid.N)
    idx = np.zeros((S, n), dtype=np.int64)
    inside = np.ones((S, n), dtype=bool)
    for k in range(grid.N):
        yk = y[..., k]
        if grid.y_periodic[k]:
            span = grid.y_high[k] - grid.y_low[k]
            yk = grid.y_low[k] + np.mod(yk - grid.y_low[k], span)
        i = np.floor((yk - grid.y_low[k]) / grid.dy[k]).astype(np.int64)
        if grid.y_periodic[k]:
            i = np.clip(i, 0, grid.ny[k] - 1)
        inside &= (i >= 0) & (i < grid.ny[k])
        idx = idx * grid.ny[k] + np.clip(i, 0, grid.ny[k] - 1)
    i = np.floor((c - grid.c_min) / grid.dc).astype(np.int64)
    inside &= (i >= 0) & (i < grid.nc)
    idx = idx * grid.nc + np.clip(i, 0, grid.nc - 1)
    total = int(np.prod(grid.shape))
    counts = np.bincount(idx[inside], minlength=total).astype(float)
    mass = counts / (S * n)
    da = xr.DataArray((mass / grid.cell_volume).reshape(grid.shape), dims=grid.dims,
                      coords=grid.coords())
    da.attrs["mass_outside"] = float(1.0 - inside.mean())
    da.attrs["long_name"] = "particle density per cell, averaged over members"
    return da
