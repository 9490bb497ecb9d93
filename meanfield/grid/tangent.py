r"""The tangent-linear of the grid scheme: frozen linearisations of the CCH right-hand side,
the tangent SSP-RK3 step and the stepper of the linearised ensemble.

The derivative of one SSP-RK3 step of the CCH scheme (:mod:`meanfield.grid.solver`) with
respect to the cell masses, limiter branches and upwind sides frozen at the stage states
of the forward run (THEORY §4, §8; the linearisation (2.24) of (2.9)). The stage
arithmetic is the one routine :func:`meanfield.grid.rk.ssp_rk3`. :class:`TangentStepper` carries
the forward state :math:`\rho_0` and a batch of perturbations together for the one time
loop :func:`particles.engine.loop.run` (:func:`meanfield.linearised.clt_covariance_ensemble`).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from meanfield.grid import fv
from meanfield.defaults import GRID
from meanfield.grid.solver import GridSolver
from meanfield.grid.stepper import GridState, GridStepper
from meanfield.grid.rk import ssp_rk3

__all__ = ["Linearisation", "stage_linearisations", "tangent_step", "tangent_rk3",
           "EnsembleState", "TangentStepper"]


# -- the frozen linearisation of one right-hand side --------------------------------------
#: A half-slope ``|h| <= TIE_RTOL * max|P|`` over its three cells takes the limiter's zero
#: branch. The round-off of a jump, measured as the difference of the jumps of two BLAS
#: kernels (circle preset, 64 x 32 cells), is at most 8.8e-13 of that scale after 85 steps
#: and 3.6e-12 after 307 (about 1.2e-14 a step): 1e-10 covers some 8000 steps. A jump that
#: is not round-off, ~ m (dy/sigma)^2 near a smooth extremum, exceeds 1e-10 of the masses
#: for dy/sigma > 1e-5 (the smallest measured to t = 1 is 3.7e-8).
TIE_RTOL = 1e-10

def _pad(a, ax, bc):
    """``a`` with two ghost layers per side along ``ax`` (as :meth:`meanfield.grid.fv.AxisSweep.fill`:
    periodic images, zero-gradient copies at a wall, zeros at an outflow face). Linear."""
    shape = list(a.shape)
    n = shape[ax]
    shape[ax] += 4
    out = np.empty(shape)

    def along(sl):
        return (slice(None),) * ax + (sl,)

    out[along(slice(2, n + 2))] = a
    if bc == fv.PERIODIC:
        out[along(slice(0, 2))] = a[along(slice(n - 2, n))]
        out[along(slice(n + 2, n + 4))] = a[along(slice(0, 2))]
    elif bc == fv.WALL:
        out[along(slice(0, 2))] = a[along(slice(0, 1))]
        out[along(slice(n + 2, n + 4))] = a[along(slice(n - 1, n))]
    else:
        out[along(slice(0, 2))] = 0.0
        out[along(slice(n + 2, n + 4))] = 0.0
    return out


class _AxisData:
    """Frozen choices of one axis sweep at a state: limiter coefficients, upwind sides."""

    __slots__ = ("ax", "bc", "n", "ca", "cb", "up", "um", "Z", "F", "branch", "upwind")


class Linearisation:
    r"""The CCH right-hand side :math:`L(m)` of (2.9) and its frozen derivative at a state.

    For each axis, with padded masses :math:`P` and jumps :math:`D_{p} = P_{p+1} - P_p`,
    the half-slope of cell ``p`` is :math:`h_p = \mathrm{minmod}(a, b, (a + b)/4)`,
    ``a = D_{p-1}``, ``b = D_p`` (:func:`meanfield.grid.fv.limited_half_slopes`), i.e. one of
    ``(a + b)/4``, ``a``, ``b`` or 0. Its branch is frozen as coefficients
    :math:`\delta h = c_a\,\delta a + c_b\,\delta b` ((¼, ¼), (1, 0), (0, 1), (0, 0); a
    tie goes to the first of 0, ``(a+b)/4``, ``a``, ``b``, and a half-slope within
    :data:`TIE_RTOL` of the cells' masses, a jump that is 0 up to round-off, is the tie at
    0). The face flux
    :math:`F = u^+E + u^-W` (:math:`E = P_p + h_p`, :math:`W = P_{p+1} - h_{p+1}`)
    has the derivative

    .. math::
        \delta F = u^+\delta E + u^-\delta W + \delta u\,Z, \qquad
        Z = E \text{ if } u > 0 \text{ else } W,

    with :math:`\delta u` the face velocity of :math:`\delta U = \Phi^\top W\Phi\,\delta g`
    (y faces: :math:`-c_k(\delta U_{j+1} - \delta U_j)/\Delta y`; c faces: :math:`-\delta U_j`).
    Everything that depends on ``m`` is computed once here; :meth:`apply` then acts on a
    batch of perturbations. No diffusion (the CLT is for GD, THEORY §4).

    Parameters
    ----------
    solver : meanfield.grid.solve.GridSolver
        With ``tau = 0``.
    m : ndarray, shape ``solver.grid.shape``
        The state (cell masses) to linearise at.
    """

    def __init__(self, solver: GridSolver, m):
        if solver.tau != 0:
            raise ValueError("the tangent-linear scheme is for tau = 0 (GD); the CLT "
                             "prediction does not cover Langevin training")
        self.solver, self.grid = solver, solver.grid
        g = self.grid
        m = np.asarray(m, float)
        self.U = solver.potential(m)
        self.axes = []
        L = np.zeros(g.shape)
        self.outflow_rate = 0.0
        for k, bc in enumerate(solver.bcs):
            if k < g.N:
                Y = solver.y_face_velocity(self.U, k)  # padded along k
                n = g.ny[k]
                Yf = Y[(slice(None),) * k + (slice(1, n + 2),)]
                u = Yf[..., None] * (solver.c / g.dy[k])
            else:
                n = g.nc
                u = (-self.U / g.dc)[..., None]  # the same on every c face of a y cell
            d = self._axis(m, k, bc, n, u)
            L += self._divergence(d.F, k, n)
            if bc == fv.OUTFLOW:
                self.outflow_rate += self._outflow(d.F, k, n)
            d.F = None
            self.axes.append(d)
        self.L = L
        # the linear response of the potential to a charge perturbation
        pot = solver.U_of_g
        if pot.name == "fft":
            self._Khat, self._n = pot.Khat, pot.n
        else:
            self._Khat = None
            self._Phi, self._w = pot.Phi, pot.w

    def choices(self):
        """The frozen choices as one int8 array: per axis the limiter branch of every
        (padded) cell (0: zero, 1: (a+b)/4, 2: a, 3: b), then the upwind side of every
        face (1: u > 0, from below). Two states linearise alike iff these are equal."""
        return np.concatenate([np.concatenate([d.branch.ravel(), d.upwind.ravel().astype(np.int8)])
                               for d in self.axes])

    @staticmethod
    def _along(ax, sl, ndim):
        return (slice(None),) * ax + (sl,) + (slice(None),) * (ndim - ax - 1)

    def _axis(self, m, k, bc, n, u):
        nd = m.ndim
        sl = lambda s: self._along(k, s, nd)  # noqa: E731
        P = _pad(m, k, bc)
        D = np.diff(P, axis=k)  # n + 3 jumps; D[p] between padded cells p, p + 1
        a, b = D[sl(slice(0, n + 2))], D[sl(slice(1, n + 3))]  # jumps of cells p = 1..n+2
        h, tmp = np.empty_like(a), np.empty_like(a)
        fv.limited_half_slopes(a, b, h, tmp)
        t = a + b
        t *= 0.25  # as in fv.limited_half_slopes
        # A half-slope within round-off of 0 is the tie at 0: a jump between cells that are
        # equal in exact arithmetic (a symmetric extremum) comes out as 0 or +-1 ulp, and
        # minmod then returns 0 or that ulp-sized jump; only the branch (dh = 0 or da)
        # would differ, by O(1), so the frozen choice must not hinge on its sign.
        scale = np.maximum(np.abs(P[sl(slice(0, n + 2))]), np.abs(P[sl(slice(1, n + 3))]))
        np.maximum(scale, np.abs(P[sl(slice(2, n + 4))]), out=scale)
        zero = np.abs(h) <= TIE_RTOL * scale
        is_t = ~zero & (h == t)
        is_a = ~zero & ~is_t & (h == a)
        is_b = ~zero & ~is_t & ~is_a
        d = _AxisData()
        d.ax, d.bc, d.n = k, bc, n
        d.ca = 0.25 * is_t + is_a
        d.cb = 0.25 * is_t + is_b
        d.branch = (is_t + 2 * is_a + 3 * is_b).astype(np.int8)
        E = P[sl(slice(1, n + 2))] + h[sl(slice(0, n + 1))]  # faces q = 0..n
        W = P[sl(slice(2, n + 3))] - h[sl(slice(1, n + 2))]
        d.up, d.um = np.maximum(u, 0.0), np.minimum(u, 0.0)
        d.upwind = np.broadcast_to(u > 0, E.shape)
        d.Z = np.where(d.upwind, E, W)
        d.F = d.up * E + d.um * W
        return d

    def _divergence(self, F, k, n, lead=0):
        nd = F.ndim
        return (F[self._along(k + lead, slice(0, n), nd)]
                - F[self._along(k + lead, slice(1, n + 1), nd)])

    def _outflow(self, F, k, n, lead=0):
        nd = F.ndim
        hi = F[self._along(k + lead, slice(n, n + 1), nd)]
        lo = F[self._along(k + lead, slice(0, 1), nd)]
        diff = hi - lo
        return diff.reshape(diff.shape[:lead] + (-1,)).sum(axis=-1) if lead else float(diff.sum())

    def dU(self, dm):
        r""":math:`\delta U`, shape ``(M,) + ny``, of perturbations ``dm`` (``(M,) + shape``)."""
        M = dm.shape[0]
        dg = dm.reshape(M, -1, self.grid.nc) @ self.solver.c
        if self._Khat is not None:
            dU = np.fft.irfft(self._Khat * np.fft.rfft(dg, axis=-1), self._n, axis=-1)
        else:
            r = dg @ self._Phi.T
            r *= self._w
            dU = r @ self._Phi
        return dU.reshape((M,) + tuple(self.grid.ny))

    def _dY(self, dU, k):
        """Batched :meth:`GridSolver.y_face_velocity` at faces q = 0..n (no padding)."""
        n = dU.shape[k + 1]
        shape = list(dU.shape)
        shape[k + 1] = n + 1
        v = np.zeros(shape)
        vm, Um = np.moveaxis(v, k + 1, 0), np.moveaxis(dU, k + 1, 0)
        np.subtract(Um[:-1], Um[1:], out=vm[1:n])
        if self.grid.y_periodic[k]:
            vm[0] = Um[n - 1] - Um[0]
            vm[n] = vm[0]
        v /= self.grid.dy[k]
        return v

    def apply(self, dm):
        r"""The frozen derivative :math:`L'(m)\,\delta m` for a batch of perturbations.

        Parameters
        ----------
        dm : ndarray, shape ``(M,) + grid.shape``

        Returns
        -------
        dL : ndarray, shape ``(M,) + grid.shape``
        d_outflow_rate : ndarray, shape (M,)
            Derivative of the mass leaving through the c faces per unit time.
        """
        g = self.grid
        dm = np.asarray(dm, float)
        dU = self.dU(dm)
        dL = np.zeros(dm.shape)
        drate = np.zeros(dm.shape[0])
        for d in self.axes:
            k, n = d.ax, d.n
            nd = dm.ndim
            sl = lambda s: self._along(k + 1, s, nd)  # noqa: E731
            P = _pad(dm, k + 1, d.bc)
            D = np.diff(P, axis=k + 1)
            h = d.ca * D[sl(slice(0, n + 2))]
            h += d.cb * D[sl(slice(1, n + 3))]
            E = P[sl(slice(1, n + 2))] + h[sl(slice(0, n + 1))]
            W = P[sl(slice(2, n + 3))] - h[sl(slice(1, n + 2))]
            F = E
            F *= d.up
            W *= d.um
            F += W
            if k < g.N:
                du = self._dY(dU, k)[..., None] * (self.solver.c / g.dy[k])
            else:
                du = (-dU / g.dc)[..., None]
            du = du * d.Z
            F += du
            dL += self._divergence(F, k, n, lead=1)
            if d.bc == fv.OUTFLOW:
                drate += self._outflow(F, k, n, lead=1)
        return dL, drate


def tangent_step(solver: GridSolver, m, dt, dm):
    r"""One SSP-RK3 step of the scheme and of its tangent-linear, from ``m`` and ``dm``.

    .. math::
        m^{(1)} = m + \Delta t L(m),\quad
        m^{(2)} = \tfrac34 m + \tfrac14(m^{(1)} + \Delta t L(m^{(1)})),\quad
        m^+ = \tfrac13 m + \tfrac23(m^{(2)} + \Delta t L(m^{(2)})),

    and the same with :math:`L(m^{(s)})\delta m^{(s)}` replaced by
    :math:`L'(m^{(s)})\delta m^{(s)}` (:class:`Linearisation` at each stage state):
    the exact derivative of the step for fixed ``dt`` wherever no limiter or upwind choice
    switches.

    Parameters
    ----------
    solver : GridSolver
    m : ndarray, shape ``grid.shape``
    dt : float
    dm : ndarray, shape ``(M,) + grid.shape``

    Returns
    -------
    m_new : ndarray, shape ``grid.shape``
        As :meth:`GridSolver.step` (same stage arithmetic; equal to round-off).
    dm_new : ndarray, shape ``(M,) + grid.shape``
    d_outflow : ndarray, shape (M,)
        Derivative of the mass leaving through the c faces during the step.
    """
    lins, new = stage_linearisations(solver, m, dt)
    dm_new, dout = tangent_rk3(lins, dt, dm)
    return new, dm_new, dout


def stage_linearisations(solver: GridSolver, m, dt):
    """The :class:`Linearisation` at the three SSP-RK3 stage states of a step from ``m``,
    and the new state (the stage arithmetic of :meth:`GridSolver.step`, to round-off).

    Returns
    -------
    lins : list of 3 Linearisation
    m_new : ndarray, shape ``grid.shape``
    """
    m = np.asarray(m, float)
    lins = [Linearisation(solver, m)]

    def stage(s, ms):
        lins.append(Linearisation(solver, ms))
        return lins[-1].L.copy()

    new = ssp_rk3(m, dt, lins[0].L, stage)
    return lins, new


def tangent_rk3(lins, dt, dm):
    r"""The tangent-linear SSP-RK3 step (:func:`meanfield.grid.rk.ssp_rk3`) of a batch ``dm``
    (``(M,) + grid.shape``) through the stage linearisations ``lins`` of one step.

    Returns ``(dm_new, d_outflow)``, shapes ``(M,) + grid.shape`` and (M,).
    """
    k0, r0 = lins[0].apply(dm)
    rates = []

    def stage(s, d):
        k, r = lins[s].apply(d)
        rates.append(r)
        return k

    new = ssp_rk3(np.asarray(dm, float), dt, k0, stage)
    return new, dt * (r0 / 6 + rates[0] / 6 + 2 * rates[1] / 3)



# -- the stepper of the linearised ensemble -------------------------------------------------
class EnsembleState(NamedTuple):
    """Time, forward cell masses ``m``, perturbation batches ``dm`` (tuple of arrays
    ``(M_b,) + grid.shape``), derivative of the outflow per member ``dout`` (M,), forward
    outflow; ``h``, ``bound`` of the step that led here."""

    t: float
    m: np.ndarray
    dm: tuple
    dout: np.ndarray
    outflow: float = 0.0
    h: float = 0.0
    bound: float = math.inf
    watch: object = None  # the forward run's divergence watch (gridstep.GridWatch)


class TangentStepper:
    """The grid step of :math:`\rho_0` (:class:`GridStepper`, adaptive) and the tangent step
    of every batch of perturbations (:func:`tangent_rk3`) with the same step size.

    Parameters
    ----------
    solver : GridSolver
        With ``tau = 0``.
    batches : list of (start, stop)
        Member ranges of the batches of ``dm`` (memory and cache only).
    cfl : float in (0, 1]
    """

    def __init__(self, solver: GridSolver, batches, *, cfl=GRID["cfl"], name="ensemble"):
        self.solver, self.batches, self.name = solver, list(batches), name
        self.forward = GridStepper(solver, cfl=cfl, name=name)
        self.advice = "lower fluctuations.cfl"

    def init(self, m, dms, t=0.0) -> EnsembleState:
        M = self.batches[-1][1]
        return EnsembleState(float(t), np.asarray(m, float), tuple(dms), np.zeros(M))

    def _grid(self, state):
        return GridState(state.t, state.m, state.outflow, state.h, state.bound,
                         watch=state.watch)

    def propose(self, state, t_start, t_end):
        return self.forward.propose(self._grid(state), t_start, t_end)

    def step(self, state, h):
        g = self.forward.step(self._grid(state), h)
        lins, _ = stage_linearisations(self.solver, state.m, g.h)
        dout = state.dout.copy()
        dms = []
        for (a, b), d in zip(self.batches, state.dm):
            d, r = tangent_rk3(lins, g.h, d)
            dms.append(d)
            dout[a:b] += r
        return EnsembleState(g.t, g.m, tuple(dms), dout, g.outflow, g.h, g.bound, g.watch)

    def check(self, state):
        bad = self.forward.check(self._grid(state))
        if bad is not None:  # a divergence stays one
            return type(bad)(f"forward run: {bad}")
        if not all(np.isfinite(d.sum()) for d in state.dm):
            return "perturbations"
        return None

    def capture(self, state) -> dict:
        return {**self.forward.capture(self._grid(state)),
                "dm": np.concatenate(state.dm), "dout": np.array(state.dout)}

    def restore(self, snap) -> EnsembleState:
        g = self.forward.restore(snap)
        dm = np.array(snap["dm"], float)
        dms = tuple(dm[a:b].copy() for a, b in self.batches)
        return EnsembleState(g.t, g.m, dms, np.array(snap["dout"], float), g.outflow,
                             watch=g.watch)
