r"""Eulerian finite-volume solver of the mean-field equation (2.9) on a tensor (y, c) grid.

The law :math:`\rho_0(t, y, c)` of one unit obeys (2.9), written in THEORY §3 as

.. math::
    \partial_t\rho = \nabla_y\cdot(\rho\,c\nabla_y U) + \partial_c(\rho U)
        + \tau(\Delta_y + \partial_c^2)\rho, \qquad
    U(t, y) = \langle\varphi(\cdot, y), f_0 - f\rangle_\mu, \qquad
    f_0(x) = \int c\,\varphi(x, y)\rho\,dy\,dc \quad (2.34),

(``τ > 0`` only for Langevin training, Sec. 4.1). The state is the array of cell masses
``m`` of shape ``(n_1, ..., n_N, n_c)`` (y coordinates first, c last). Pieces:

* :mod:`meanfield.cells`: :class:`Grid`, :func:`make_grid` (y periodic on the circle,
  otherwise a box with zero-flux walls; c in ``[c_min, c_max]`` with outflow boundaries,
  what leaves is recorded), :func:`initial_masses`, :func:`phi_resolution`.
* :mod:`meanfield.potentials`: :class:`DataPotential` (any φ, O(Q·N_y)) and
  :class:`FFTPotential` (circle only).
* :class:`GridSolver`: ``rhs``, ``step`` (SSP-RK3), ``cfl_bound``, ``potential``, ``f0``.
* :func:`solve_grid`: the time loop with adaptive steps landing on save times, returning
  an :class:`xarray.Dataset`; :func:`project_particles`: particle histograms on the grid.

The method, its order and step bound are in ``docs/methods_grid.md``.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from typing import NamedTuple

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from particles.simulate import NumericalFailure, check_save_times, versions

from . import fv
from .cells import Grid, initial_masses, make_grid, phi_resolution
from .potentials import DataPotential, FFTPotential, _choose_potential  # noqa: F401

__all__ = [
    "Grid",
    "make_grid",
    "initial_masses",
    "phi_resolution",
    "DataPotential",
    "FFTPotential",
    "GridSolver",
    "StepResult",
    "prepare",
    "advance",
    "solve_grid",
    "project_particles",
]

log = logging.getLogger(__name__)

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


# -- the solver -----------------------------------------------------------------------------
class StepResult(NamedTuple):
    """One SSP-RK3 step: new masses, mass that left through the c boundaries, and the
    smallest positivity bound over the three stages."""

    m: np.ndarray
    outflow: float
    bound: float


class GridSolver:
    r"""Right-hand side and SSP-RK3 step of the CCH scheme for (2.9) on a :class:`Grid`.

    Face velocities: across c faces :math:`u = -U(y_j)` (exact); across y faces
    :math:`u = -c_k (U_{j+1} - U_j)/\Delta y`, the centred difference of U at the cell
    centres (CCH's :math:`-\Delta\xi/\Delta` with :math:`\xi = cU`, which keeps the
    semi-discrete energy inequality). Positivity of a forward-Euler stage, hence of
    SSP-RK3, holds for

    .. math:: \Delta t \le \Big(\sum_k \frac{2a_k}{\Delta_k} + \frac{2\tau}{\Delta_k^2}\Big)^{-1}

    with :math:`a_k` the largest face speed along axis k next to a cell holding mass (see
    ``docs/methods_grid.md``; this contains CCH's :math:`\min(\Delta y/4a, \Delta c/4b)`).
    In y, :math:`a_k = \max|c|\,\max|\partial_y U|` with |c| over the c rows that hold
    mass: the bound follows the support, not the c range of the grid.

    Parameters
    ----------
    problem : particles.problem.Problem
    grid : Grid
    tau : float
        Diffusion (Langevin temperature), ≥ 0.
    potential : {"auto", "data", "fft"}
    block : int
        Elements per cache block of the sweeps (a tuning knob; results do not depend on it).
    """

    def __init__(self, problem, grid: Grid, *, tau: float = 0.0, potential: str = "auto",
                 block: int = 2**15):
        if tau < 0:
            raise ValueError(f"tau={tau} must be >= 0")
        self.problem, self.grid, self.tau = problem, grid, float(tau)
        self.data = DataPotential(problem, grid)
        self.U_of_g = _choose_potential(problem, grid, potential)
        self.c = grid.c_centres
        shape = grid.shape
        self.bcs = tuple(fv.PERIODIC if p else fv.WALL for p in grid.y_periodic) + (fv.OUTFLOW,)
        self._sweeps = [fv.AxisSweep(shape, ax, bc, block) for ax, bc in enumerate(self.bcs)]
        self._k = [np.empty(shape) for _ in range(3)]
        self._stage = [np.empty(shape) for _ in range(2)]

    # -- potential ------------------------------------------------------------------------
    def charges(self, m):
        """``g_j = Σ_k c_k m_jk``, shape (N_y,): :math:`G(y_j)\\Delta y` of (2.34)."""
        return m.reshape(-1, self.grid.nc) @ self.c

    def potential(self, m):
        """:math:`U(y_j)` at the y cell centres, shape ``grid.ny``."""
        return self.U_of_g(self.charges(m)).reshape(self.grid.ny)

    def f0(self, m):
        """The mean-field network (2.34) on the x nodes, shape (Q,)."""
        return self.data.f0(self.charges(m))

    def loss(self, m):
        """:math:`\\tfrac12\\|f_0 - f\\|^2_\\mu` (1.2)."""
        return float(self.problem.loss(self.f0(m)))

    def _y_face_velocity(self, U, k):
        """:math:`v_f = -(U_f - U_{f-1})/\\Delta_k` at the faces of y axis k, in the padded
        layout: position ``p`` holds the face between padded cells ``p`` and ``p + 1``
        (faces ``f = 0..n`` at ``p = f + 1``; walls and unused positions are 0)."""
        n = U.shape[k]
        shape = list(U.shape)
        shape[k] += 4
        v = np.zeros(shape)
        vm = np.moveaxis(v, k, 0)
        Um = np.moveaxis(U, k, 0)
        np.subtract(Um[:-1], Um[1:], out=vm[2 : n + 1])
        if self.grid.y_periodic[k]:
            vm[1] = Um[n - 1] - Um[0]
            vm[n + 1] = vm[1]
        v /= self.grid.dy[k]
        return v

    def _bound(self, speeds):
        dims = self.grid.dy + (self.grid.dc,)
        rate = sum(2 * a / d + 2 * self.tau / d**2 for a, d in zip(speeds, dims))
        # a rate below ~1e-300 (velocities vanishing to round-off) sets no bound
        return 1.0 / rate if rate > 1e-300 else math.inf

    def support_c_max(self, m, widen=0):
        r"""Largest |c| over the c cells holding mass (m > 0 in some y cell), the support
        first widened by ``widen`` cells on each side.

        Only cells with mass can turn negative in a forward-Euler stage, so the y face
        speeds :math:`|c_k|\,|\partial_y U|` enter the bound only for these rows. A stage
        moves the support by at most one cell, so ``widen=2`` covers the three stages of
        an SSP-RK3 step.
        """
        nz = np.flatnonzero(m.reshape(-1, self.grid.nc).max(axis=0))
        if nz.size == 0:
            return 0.0
        lo, hi = max(nz[0] - widen, 0), min(nz[-1] + widen, self.grid.nc - 1)
        return max(abs(self.c[lo]), abs(self.c[hi]))

    def _speeds(self, U, c_sup):
        a = [c_sup * float(np.max(np.abs(self._y_face_velocity(U, k))))
             for k in range(self.grid.N)]
        return a + [float(np.max(np.abs(U)))]

    def speeds(self, m):
        """Largest face speeds ``(a_1, ..., a_N, a_c)`` next to cells holding mass."""
        m = np.asarray(m, float)
        return tuple(self._speeds(self.potential(m), self.support_c_max(m)))

    def cfl_bound(self, m):
        """Largest forward-Euler (and SSP-RK3 stage) step keeping every cell mass ≥ 0."""
        return self._bound(self.speeds(m))

    # -- right-hand side ----------------------------------------------------------------
    def _rhs(self, m, out):
        """Write dm/dt into ``out``; return (outflow rate through the c faces, bound)."""
        g = self.grid
        U = self.potential(m)
        for k in range(g.N):
            v = self._y_face_velocity(U, k)
            self._sweeps[k](m, v, self.c / g.dy[k], self.tau / g.dy[k] ** 2, out, first=(k == 0))
        rate = self._sweeps[-1](m, -U / g.dc, None, self.tau / g.dc**2, out, first=False)
        return rate, self._bound(self._speeds(U, self.support_c_max(m)))

    def _step_bound(self, m):
        """Bound for choosing an SSP-RK3 step from ``m``: the support widened by 2 cells."""
        return self._bound(self._speeds(self.potential(m), self.support_c_max(m, widen=2)))

    def rhs(self, m, out=None):
        r"""Semi-discrete (2.9): dm/dt for cell masses ``m`` of shape ``grid.shape``.

        O(N_y·N_c + Q·N_y) work; ``out`` may be a preallocated array of that shape.
        """
        out = np.empty(self.grid.shape) if out is None else out
        self._rhs(np.asarray(m, float), out)
        return out

    def outflow_rate(self, m):
        """Mass per unit time leaving through the faces ``c_min`` and ``c_max``."""
        return self._rhs(np.asarray(m, float), np.empty(self.grid.shape))[0]

    # -- time step ---------------------------------------------------------------------
    def _rk3(self, m, dt, k0, rate0, bound0):
        k1, k2 = self._k[1], self._k[2]
        m1, m2 = self._stage
        np.multiply(k0, dt, out=m1)
        m1 += m
        rate1, b1 = self._rhs(m1, k1)
        k1 *= dt
        m1 += k1  # m1 + dt L(m1)
        np.multiply(m, 0.75, out=m2)
        m1 *= 0.25
        m2 += m1
        rate2, b2 = self._rhs(m2, k2)
        k2 *= dt
        m2 += k2  # m2 + dt L(m2)
        new = np.multiply(m, 1.0 / 3.0)
        m2 *= 2.0 / 3.0
        new += m2
        outflow = dt * (rate0 / 6 + rate1 / 6 + 2 * rate2 / 3)
        return StepResult(new, outflow, min(bound0, b1, b2))

    def step(self, m, dt):
        r"""One SSP-RK3 (Shu–Osher) step of size ``dt`` from masses ``m`` (not modified).

        .. math::
            m^{(1)} = m + \Delta t L(m),\quad
            m^{(2)} = \tfrac34 m + \tfrac14(m^{(1)} + \Delta t L(m^{(1)})),\quad
            m^{+} = \tfrac13 m + \tfrac23(m^{(2)} + \Delta t L(m^{(2)})).

        Third order in time, a convex combination of forward-Euler stages: positive
        when ``dt`` is below the returned ``bound`` (the smallest stage bound).
        """
        m = np.asarray(m, float)
        k0 = self._k[0]
        rate0, b0 = self._rhs(m, k0)
        return self._rk3(m, dt, k0, rate0, b0)


# -- time loop ------------------------------------------------------------------------------
def prepare(problem, *, ny=256, nc=256, c_min=-5.0, c_max=5.0, y_range=None,
            allow_truncation=False, phi_tol=1e-3):
    """Grid, initial cell masses, truncated mass and φ resolution, with every input check.

    Raises ValueError (saying what to change) for a Dirac c law, more than 1e-8 of
    :math:`\\rho_{in}` outside the grid (unless ``allow_truncation``), a c law narrower
    than one cell, or a y grid that does not resolve φ (:func:`phi_resolution` above
    ``phi_tol``).
    """
    grid = make_grid(problem, ny, nc, c_min, c_max, y_range)
    m, truncated = initial_masses(problem, grid)
    if truncated > TRUNCATION_TOL and not allow_truncation:
        raise ValueError(
            f"the initial law has mass {truncated:.3g} outside the grid (c in [{c_min}, "
            f"{c_max}], y in {list(zip(grid.y_low, grid.y_high))}) > {TRUNCATION_TOL:g}; "
            "widen c_min/c_max (or y_range), or pass allow_truncation=True"
        )
    law = problem.c_law
    c_std = math.sqrt(max(law.second_moment() - law.mean() ** 2, 0.0))
    if c_std < grid.dc:
        raise ValueError(
            f"nc={grid.nc} is too coarse for the c law (std {c_std:.3g} < cell width "
            f"{grid.dc:.3g}); use nc >= {math.ceil((c_max - c_min) / c_std)} or a narrower "
            "c range"
        )
    eps = phi_resolution(problem, grid)
    if eps > phi_tol:
        need = [math.ceil(n * math.sqrt(eps / phi_tol) * 1.05) for n in grid.ny]
        raise ValueError(
            f"ny={list(grid.ny)} does not resolve phi: its cell-centre values differ from "
            f"its cell averages by {eps:.2g} (relative) > phi_tol={phi_tol:g}; use ny >= "
            f"{need if grid.N > 1 else need[0]} (error ~ dy^2), or raise phi_tol"
        )
    return grid, m, truncated, eps


def advance(solver, m, t, t_end, *, cfl=0.9, dt=None, after_step=None):
    """SSP-RK3 steps from ``t`` to exactly ``t_end``; returns ``(m, outflow)``.

    Adaptive (``dt=None``): each step is ``h = (t_end - t)/k`` with the smallest ``k``
    giving ``h <= cfl * bound(m)``; a step whose later stages have a smaller bound is
    redone shorter. Fixed: equal substeps ``<= dt``, and a ValueError when one exceeds
    the bound. ``after_step(t, m, res, h)`` is called after every accepted step.
    """
    outflow = 0.0
    n_fixed = math.ceil((t_end - t) / dt - 1e-9) if dt is not None else 0
    while t < t_end:
        k0 = solver._k[0]
        rate0, b0 = solver._rhs(m, k0)
        left = t_end - t
        if dt is not None:
            h = left / max(n_fixed, 1)
        else:
            b = solver._step_bound(m)
            h = left / math.ceil(left / (cfl * b) - 1e-9) if b < math.inf else left
        for attempt in range(31):
            res = solver._rk3(m, h, k0, rate0, b0)
            if h <= res.bound * (1 + 1e-12):
                break
            if dt is not None:
                raise ValueError(
                    f"dt={h:.4g} exceeds the CFL (positivity) bound {res.bound:.4g} at "
                    f"t={t:.4g} on this grid; use dt <= {cfl * res.bound:.3g}, or dt=None "
                    "for the adaptive step cfl*bound"
                )
            if attempt == 30:  # pragma: no cover - the bound moves by O(h) per stage
                raise RuntimeError(f"no step below the positivity bound at t={t:.6g}")
            h = left / math.ceil(left / (cfl * res.bound) - 1e-9)
        m = res.m
        n_fixed -= 1
        t = t_end if h >= left else t + h
        outflow += res.outflow
        if after_step is not None:
            after_step(t, m, res, h)
        if not (np.isfinite(res.outflow) and np.isfinite(m[(0,) * m.ndim])):
            raise NumericalFailure(f"non-finite state at t={t:.6g}; lower cfl or dt")
    return m, outflow


def solve_grid(
    problem,
    save_times,
    *,
    ny=256,
    nc=256,
    c_min: float = -5.0,
    c_max: float = 5.0,
    y_range=None,
    cfl: float = 0.9,
    dt: float | None = None,
    tau: float = 0.0,
    potential: str = "auto",
    allow_truncation: bool = False,
    phi_tol: float = 1e-3,
    save_rho: bool = True,
    on_step=None,
    progress: bool | None = None,
) -> xr.Dataset:
    r"""Solve the mean-field equation (2.9) from :math:`\rho_{in}` on a (y, c) grid.

    Parameters
    ----------
    problem : particles.problem.Problem
    save_times : sequence of float
        Increasing times ≥ 0; the run stops at the last.
    ny, nc : int (ny may be a sequence, one per y coordinate)
        Cells per y coordinate and in c.
    c_min, c_max : float
        The c range; mass crossing it leaves (outflow, recorded; a warning past 1e-6).
    y_range : sequence of (low, high), optional
        y box of non-periodic problems (default mean ± 6 std of a normal y law).
    cfl : float in (0, 1]
        Each step is ``dt = cfl * bound`` (shortened to land on save times), with
        ``bound`` the positivity bound of :class:`GridSolver`.
    dt : float, optional
        Fixed largest step instead (equal substeps between save times); a ValueError if
        it exceeds the bound at any stage.
    tau : float
        Diffusion :math:`\tau(\Delta_y + \partial_c^2)\rho` (Langevin, Sec. 4.1).
    potential : {"auto", "data", "fft"}
        How U is computed (:class:`DataPotential`, :class:`FFTPotential`).
    allow_truncation : bool
        Accept an initial law with more than 1e-8 of its mass outside the grid.
    phi_tol : float
        Largest accepted :func:`phi_resolution` of the y grid.
    save_rho : bool
        Save the density ``rho_0`` at the save times.
    on_step : callable ``(t, m)``, optional
        Called after every accepted step with the cell masses (do not modify them).
    progress : bool or None
        Progress bar; ``None`` shows it only on a terminal.

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
    if not 0 < cfl <= 1:
        raise ValueError(f"cfl={cfl} must be in (0, 1]: steps above the bound lose positivity")
    if dt is not None and not dt > 0:
        raise ValueError(f"dt={dt} must be > 0 (or None for the adaptive step)")
    grid, m, truncated, eps = prepare(problem, ny=ny, nc=nc, c_min=c_min, c_max=c_max,
                                      y_range=y_range, allow_truncation=allow_truncation,
                                      phi_tol=phi_tol)
    solver = GridSolver(problem, grid, tau=tau, potential=potential)
    T = len(ts)
    out = {"f_0": np.full((T, problem.x.shape[0]), np.nan), "loss_0": np.full(T, np.nan),
           "mass": np.full(T, np.nan), "outflow": np.full(T, np.nan)}
    if save_rho:
        out["rho_0"] = np.full((T,) + grid.shape, np.nan)
    stats_ = {"dt": [], "cfl": [], "outflow": 0.0, "warned": False}
    bar = tqdm(total=float(ts[-1]), disable=(None if progress is None else not progress),
               desc="grid", unit="time", leave=False)

    def after_step(t, m_new, res, h):
        stats_["dt"].append(h)
        stats_["cfl"].append(h / res.bound if res.bound < math.inf else 0.0)
        stats_["outflow"] += res.outflow
        bar.update(h)
        if not stats_["warned"] and stats_["outflow"] > OUTFLOW_WARN:
            stats_["warned"] = True
            warnings.warn(f"mass {stats_['outflow']:.3g} has left through the c boundaries "
                          f"[{c_min}, {c_max}] by t={t:.4g}; widen c_min/c_max", stacklevel=3)
        if on_step is not None:
            on_step(t, m_new)

    t, failure = 0.0, None
    try:
        for j, t_save in enumerate(ts):
            m, _ = advance(solver, m, t, t_save, cfl=cfl, dt=dt, after_step=after_step)
            t = float(t_save)
            f0 = solver.f0(m)
            out["f_0"][j], out["loss_0"][j] = f0, problem.loss(f0)
            out["mass"][j], out["outflow"][j] = m.sum(), stats_["outflow"]
            if save_rho:
                out["rho_0"][j] = m / grid.cell_volume
    except NumericalFailure as e:
        failure = str(e)
    finally:
        bar.close()
    ds = _dataset(problem, grid, ts, out)
    d = np.asarray(stats_["dt"]) if stats_["dt"] else np.zeros(1)
    ds.attrs.update({
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
        "tau": float(tau),
        "cfl": float(cfl),
        "dt_fixed": float(dt) if dt is not None else "adaptive",
        "dt_min": float(d.min()),
        "dt_max": float(d.max()),
        "dt_mean": float(d.mean()),
        "n_steps": len(stats_["dt"]),
        "cfl_max": float(max(stats_["cfl"])) if stats_["cfl"] else 0.0,
        "problem": json.dumps(problem.params()),
        "c_law": json.dumps(problem.c_law.params()),
        "y_law": json.dumps(problem.y_law.params()),
        "versions": json.dumps(versions()),
        "complete": int(failure is None),
    })
    if failure:
        ds.attrs["failure"] = failure
        log.error(failure)
        raise NumericalFailure(failure, ds)
    return ds


def _dataset(problem, grid, ts, out):
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
    if x.shape[1] == 1:
        coords["x"] = x[:, 0]
    else:
        coords["x"] = np.arange(x.shape[0])
        data["x_nodes"] = (("x", "x_dim"), x)
    coords.update(grid.coords())
    if "rho_0" in out:
        data["rho_0"] = (("t",) + grid.dims, out["rho_0"])
    ds = xr.Dataset(data, coords=coords)
    ds["f_0"].attrs["long_name"] = "mean-field network f_0 on the x nodes (2.34)"
    ds["loss_0"].attrs["long_name"] = "loss 1/2 ||f_0 - f||^2_mu (1.2)"
    ds["outflow"].attrs["long_name"] = "cumulative mass out through c_min and c_max"
    if "rho_0" in ds:
        ds["rho_0"].attrs["long_name"] = "density of rho_0 (cell mass / cell volume)"
    return ds


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
