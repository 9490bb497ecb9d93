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
tangent-linear of the finite-volume scheme of :mod:`meanfield.grid`:

* **sampling** (:func:`sample_perturbations`): the cell integrals of the field have
  covariance :math:`\mathrm{diag}(m) - mm^\top` (``m`` the initial cell masses);
* **tangent-linear** (:class:`Linearisation`, :func:`tangent_step`): the derivative of
  one SSP-RK3 step of the CCH right-hand side with respect to the cell masses, with the
  limiter branch of every half-slope and the upwind side of every face frozen at the
  stage states of the forward run, plus the linear response of the potential
  :math:`\delta U = \Phi^\top W\Phi\,\delta g` (:math:`\delta g = \delta m\,c`). The
  forward run :math:`\rho_0` and the batch of perturbations advance together, with the
  step sizes of :func:`meanfield.grid.advance` (those of :func:`~meanfield.grid.solve_grid`);
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
from tqdm.auto import tqdm

from particles.simulate import NumericalFailure, check_save_times, versions

from . import fv
from .grid import OUTFLOW_WARN, GridSolver, advance, prepare

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


# -- the frozen linearisation of one right-hand side --------------------------------------
def _pad(a, ax, bc):
    """``a`` with two ghost layers per side along ``ax`` (as :meth:`meanfield.fv.AxisSweep.fill`:
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
    ``a = D_{p-1}``, ``b = D_p`` (:func:`meanfield.fv.limited_half_slopes`), i.e. one of
    ``(a + b)/4``, ``a``, ``b`` or 0. Its branch is frozen as coefficients
    :math:`\delta h = c_a\,\delta a + c_b\,\delta b` ((¼, ¼), (1, 0), (0, 1), (0, 0); a
    tie goes to the first of 0, ``(a+b)/4``, ``a``, ``b``). The face flux
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
    solver : meanfield.grid.GridSolver
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
                Y = solver._y_face_velocity(self.U, k)  # padded along k
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
        zero = h == 0.0
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
        """Batched :meth:`GridSolver._y_face_velocity` at faces q = 0..n (no padding)."""
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
    dm_new, dout = _tangent_rk3(lins, dt, dm)
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
    l0 = Linearisation(solver, m)
    m1 = l0.L * dt
    m1 += m
    l1 = Linearisation(solver, m1)
    k1 = l1.L * dt
    m1 = m1 + k1
    m2 = np.multiply(m, 0.75)
    m1 *= 0.25
    m2 += m1
    l2 = Linearisation(solver, m2)
    k2 = l2.L * dt
    m2 += k2
    new = np.multiply(m, 1.0 / 3.0)
    m2 *= 2.0 / 3.0
    new += m2
    return [l0, l1, l2], new


def _tangent_rk3(lins, dt, dm):
    l0, l1, l2 = lins
    k, r0 = l0.apply(dm)
    d1 = k
    d1 *= dt
    d1 += dm
    k, r1 = l1.apply(d1)
    d1 += dt * k
    d2 = 0.75 * dm
    d1 *= 0.25
    d2 += d1
    k, r2 = l2.apply(d2)
    d2 += dt * k
    new = dm / 3.0
    d2 *= 2.0 / 3.0
    new += d2
    return new, dt * (r0 / 6 + r1 / 6 + 2 * r2 / 3)


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


def clt_covariance_ensemble(
    problem,
    save_times,
    *,
    members: int = 256,
    ny=256,
    nc: int = 256,
    c_min: float = -5.0,
    c_max: float = 5.0,
    cfl: float = 0.9,
    allow_truncation: bool = False,
    root_seed: int = 0,
    potential: str = "auto",
    phi_tol: float = 1e-3,
    chunk: int | None = None,
    progress: bool | None = None,
) -> xr.Dataset:
    r"""Predicted covariance of :math:`\sqrt n(f_n - f_0)(t)` by an ensemble of (2.24) runs.

    Each member is a sample of the initial fluctuation field on the cells
    (:func:`sample_perturbations`), carried by the tangent-linear of the grid scheme around
    :math:`\rho_0(t)` (:func:`tangent_step`, steps of :func:`meanfield.grid.advance`).
    At each save time :math:`f_{1/2}(t, x)` (:func:`f_half`) is recorded for every member,
    and the covariance is the sample covariance over members (mean subtracted, ddof = 1).

    Parameters
    ----------
    problem : particles.problem.Problem
    save_times : sequence of float
        Increasing times ≥ 0.
    members : int
        Ensemble size M ≥ 2; standard errors scale as :math:`M^{-1/2}`.
    ny, nc, c_min, c_max, cfl, allow_truncation, potential, phi_tol
        The grid and step of :func:`meanfield.grid.solve_grid` (no fixed ``dt``: the
        steps follow the positivity bound of :math:`\rho_0`).
    root_seed : int
        The generator is :func:`fluctuation_rng` ``(root_seed)``.
    chunk : int, optional
        Members advanced together per batch (memory and cache only; results are the same
        for every chunk). Default: about ``CHUNK_DOUBLES`` doubles per batch array.
    progress : bool or None
        Progress bar; ``None`` shows it only on a terminal.

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
    if not 0 < cfl <= 1:
        raise ValueError(f"cfl={cfl} must be in (0, 1]: steps above the bound lose positivity")
    grid, m0, truncated, eps = prepare(problem, ny=ny, nc=nc, c_min=c_min, c_max=c_max,
                                      allow_truncation=allow_truncation, phi_tol=phi_tol)
    solver = GridSolver(problem, grid, potential=potential)
    cells = int(np.prod(grid.shape))
    chunk = _default_chunk(cells) if chunk is None else max(1, int(chunk))
    rng = fluctuation_rng(root_seed)
    Q = problem.x.shape[0]
    T = len(ts)
    fh = np.empty((T, members, Q))
    f0 = np.empty((T, Q))
    batches = [(s, min(members, s + chunk)) for s in range(0, members, chunk)]
    dms = [sample_perturbations(m0, b - a, rng) for a, b in batches]  # member order
    dout = np.zeros(members)
    hs = []
    box = {"m": m0, "outflow": 0.0, "warned": False}
    bar = tqdm(total=float(ts[-1]), disable=(None if progress is None else not progress),
               desc="ensemble", unit="time", leave=False)

    def after_step(t, m_new, res, h):
        lins, _ = stage_linearisations(solver, box["m"], h)
        for i, (a, b) in enumerate(batches):
            dms[i], r = _tangent_rk3(lins, h, dms[i])
            dout[a:b] += r
        if not np.isfinite(dms[0].flat[0]):
            raise NumericalFailure(f"ensemble: non-finite perturbation at t={t:.6g}")
        box["m"] = m_new
        box["outflow"] += res.outflow
        if not box["warned"] and box["outflow"] > OUTFLOW_WARN:
            box["warned"] = True
            warnings.warn(f"mass {box['outflow']:.3g} of rho_0 has left through the c "
                          f"boundaries [{c_min}, {c_max}] by t={t:.4g}: the prediction "
                          "misses it; widen c_min/c_max", stacklevel=3)
        hs.append(h)
        bar.update(h)

    t = 0.0
    m = m0
    try:
        for j, t_save in enumerate(ts):
            m, _ = advance(solver, m, t, t_save, cfl=cfl, after_step=after_step)
            t = float(t_save)
            f0[j] = solver.f0(m)
            for i, (a, b) in enumerate(batches):
                fh[j, a:b] = f_half(solver, dms[i])
    finally:
        bar.close()
    if not np.all(np.isfinite(fh)):
        raise NumericalFailure("ensemble: non-finite f_1/2; lower cfl")
    dev = fh - fh.mean(axis=1, keepdims=True)
    cov = np.einsum("tmq,tmp->tqp", dev, dev) / (members - 1)
    cov = 0.5 * (cov + cov.transpose(0, 2, 1))
    x = problem.x
    xc = x[:, 0] if x.shape[1] == 1 else np.arange(x.shape[0])
    ds = xr.Dataset(
        {
            "clt_cov": (("t", "x", "x_"), cov),
            "clt_var": (("t", "x"), np.diagonal(cov, axis1=1, axis2=2).copy()),
            "clt_cov_stderr": (("t", "x", "x_"), covariance_stderr(cov, members)),
            "f_0_grid": (("t", "x"), f0),
        },
        coords={"t": ts, "x": xc, "x_": xc},
    )
    ds["clt_cov"].attrs["long_name"] = "predicted covariance of sqrt(n) (f_n - f_0)(t)"
    ds["clt_cov_stderr"].attrs["long_name"] = (
        "standard error of clt_cov from the ensemble size: sqrt((S_ab^2 + S_aa S_bb)/(M-1))")
    d = np.asarray(hs) if hs else np.zeros(1)
    resolution = {"ny": list(grid.ny), "nc": grid.nc, "c_min": grid.c_min,
                  "c_max": grid.c_max, "cfl": float(cfl), "n_steps": len(hs),
                  "dt_min": float(d.min()), "dt_max": float(d.max()),
                  "potential": solver.U_of_g.name, "phi_resolution": eps}
    ds.attrs.update({
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
        "outflow": float(box["outflow"]),
        "versions": json.dumps(versions()),
    })
    return ds
