r"""The CCH finite-volume right-hand side of the mean-field equation (2.9) and its SSP-RK3 step.

:class:`GridSolver` holds the semi-discrete operator :math:`L(m)` of (2.9) on the cell
masses of a :class:`meanfield.grid.cells.Grid` (face velocities from the potential U of
(2.34), flux sweeps of :mod:`meanfield.grid.fv`), its positivity bound and one SSP-RK3 step
(:func:`meanfield.grid.rk.ssp_rk3`). The time loop is the grid stepper
(:mod:`meanfield.grid.stepper`) under :func:`particles.engine.loop.run`; the method, its order and
step bound are in ``docs/methods_grid.md``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from meanfield.grid import fv
from meanfield.grid.cells import Grid
from meanfield.grid.potentials import DataPotential, _choose_potential
from meanfield.grid.rk import ssp_rk3

__all__ = ["GridSolver", "StepResult"]


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
    temperature : float
        Diffusion τ(Δ_y + ∂_c²)ρ at the Langevin temperature τ ≥ 0 (``dynamics.temperature``).
    potential : {"auto", "data", "fft"}
    block : int
        Elements per cache block of the sweeps (a tuning knob; results do not depend on it).
    train : tuple of str
        ``("y", "c")`` (default) or ``("c",)``: random features, y frozen; the y flux
        (transport and diffusion) is off and the grid transports in c only.
    """

    def __init__(self, problem, grid: Grid, *, temperature: float = 0.0,
                 potential: str = "auto", block: int = 2**15, train=("y", "c")):
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0")
        self.problem, self.grid, self.tau = problem, grid, float(temperature)
        #: the y axes that move (none for train = ("c",))
        self.y_axes = range(grid.N) if "y" in train else range(0)
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

    def y_face_velocity(self, U, k):
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
        moving = [k in self.y_axes for k in range(self.grid.N)] + [True]
        rate = sum(2 * a / d + 2 * self.tau / d**2
                   for a, d, on in zip(speeds, dims, moving) if on)
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
        a = [c_sup * float(np.max(np.abs(self.y_face_velocity(U, k))))
             if k in self.y_axes else 0.0 for k in range(self.grid.N)]
        return a + [float(np.max(np.abs(U)))]

    def speeds(self, m):
        """Largest face speeds ``(a_1, ..., a_N, a_c)`` next to cells holding mass."""
        m = np.asarray(m, float)
        return tuple(self._speeds(self.potential(m), self.support_c_max(m)))

    def cfl_bound(self, m):
        """Largest forward-Euler (and SSP-RK3 stage) step keeping every cell mass ≥ 0."""
        return self._bound(self.speeds(m))

    # -- right-hand side ----------------------------------------------------------------
    def evaluate(self, m, out):
        """Write dm/dt of masses ``m`` (``grid.shape``) into ``out``; return (outflow rate
        through the c faces, positivity bound of a forward-Euler stage from ``m``)."""
        g = self.grid
        U = self.potential(m)
        for k in self.y_axes:
            v = self.y_face_velocity(U, k)
            self._sweeps[k](m, v, self.c / g.dy[k], self.tau / g.dy[k] ** 2, out, first=(k == 0))
        rate = self._sweeps[-1](m, -U / g.dc, None, self.tau / g.dc**2, out,
                                first=not self.y_axes)
        return rate, self._bound(self._speeds(U, self.support_c_max(m)))

    def step_bound(self, m):
        """Bound for choosing an SSP-RK3 step from ``m``: the support widened by 2 cells."""
        return self._bound(self._speeds(self.potential(m), self.support_c_max(m, widen=2)))

    def rhs(self, m, out=None):
        r"""Semi-discrete (2.9): dm/dt for cell masses ``m`` of shape ``grid.shape``.

        O(N_y·N_c + Q·N_y) work; ``out`` may be a preallocated array of that shape.
        """
        out = np.empty(self.grid.shape) if out is None else out
        self.evaluate(np.asarray(m, float), out)
        return out

    def outflow_rate(self, m):
        """Mass per unit time leaving through the faces ``c_min`` and ``c_max``."""
        return self.evaluate(np.asarray(m, float), np.empty(self.grid.shape))[0]

    # -- time step ---------------------------------------------------------------------
    def start(self, m):
        """``(k0, rate0, bound0)``: :math:`L(m)` (in a buffer of the solver, valid until the
        next step), its outflow rate and bound, for :meth:`rk3`."""
        k0 = self._k[0]
        rate0, b0 = self.evaluate(m, k0)
        return k0, rate0, b0

    def rk3(self, m, dt, k0, rate0, bound0):
        """The SSP-RK3 step of :meth:`step` from ``m`` given ``k0 = L(m)`` with its outflow
        rate and bound (:meth:`evaluate`): redoing a step shorter reuses them."""
        rates, bounds = [rate0], [bound0]

        def stage(s, ms):
            k = self._k[s]
            rate, b = self.evaluate(ms, k)
            rates.append(rate)
            bounds.append(b)
            return k

        new = ssp_rk3(m, dt, k0, stage, work=self._stage)
        outflow = dt * (rates[0] / 6 + rates[1] / 6 + 2 * rates[2] / 3)
        return StepResult(new, outflow, min(bounds))

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
        return self.rk3(m, dt, *self.start(m))
