r"""First-variation (influence) prediction of the CLT covariance along characteristics.

The prediction of Prop. 2.1 (THEORY §4): :math:`\sqrt n (f_n - f_0)(t)` tends to a centred
Gaussian with covariance

.. math::
    \Sigma_t(x, x') = \mathrm{Cov}_{z\sim\rho_{in}}\big(\psi_t(x; z), \psi_t(x'; z)\big),
    \qquad \psi_t(x; z) = \frac{\delta f_0(t, x)}{\delta\rho_{in}(z)} .

With the weighted quadrature :math:`\rho_{in}\approx\sum_j w_j\delta_{z_j}` of
:mod:`meanfield.characteristics`, a perturbation :math:`\delta w` of the weights changes
:math:`f_0(T)` by :math:`\sum_j D_{\cdot j}\delta w_j`, so :math:`\psi_T(\cdot; z_j) = D_{\cdot j}
= \partial f_0(T)/\partial w_j` (the node positions at t = 0 do not depend on w) and

.. math:: \Sigma_T = D\,\mathrm{diag}(w)\,D^\top - (Dw)(Dw)^\top .

D is computed exactly for the discrete RK4 flow by one reverse (adjoint) sweep: the
vector-Jacobian product of every RK4 step is applied to a batch of cotangents, one per
singular vector of the observable map :math:`[\varphi(x_q, Y_j), \nabla_y\varphi(x_q, Y_j)]`
(THEORY §8: the SVD cuts the number of solves to its numerical rank). A single sweep from
the last save time down to 0 carries the cotangents of every save time.
"""
from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import xarray as xr

from particles import Dynamics
from particles.engine.config import require
from particles.engine.loop import check_save_times, run
from particles.engine.results import dataset as cf_dataset
from particles.engine.results import run_status, x_coord
from particles.steppers import ParticleStepper

from meanfield.defaults import INFLUENCE, RANK_TOL, options
from meanfield.nodes import characteristic_nodes

__all__ = ["phi_derivatives", "velocity_vjp", "velocity_vjp_c", "influence_matrices", "clt_covariance_influence",
           "AdjointState", "AdjointStepper", "ForwardRun", "forward_run", "adjoint_sweep",
           "influence_info", "c_domain"]


def phi_derivatives(kernel, x, y):
    r"""φ, ∇_yφ and the Hessian ∇²_yφ: shapes (J, Q), (J, Q, N), (J, Q, N, N).

    ``x`` (Q, d), ``y`` (J, N): the kernel's declared ``"hessian_y"`` capability
    (:meth:`particles.kernels.Kernel.phi_hessian`).
    """
    require(kernel, "hessian_y", "the influence method (second derivatives of phi)")
    return kernel.phi_hessian(x, y)


def velocity_vjp(problem, Y, C, w, lam_Y, lam_C):
    r"""Vector-Jacobian product of the GD velocity of weighted nodes (residual form).

    The velocity is :math:`v_C = -\Phi^\top W r`, :math:`v_Y = -C\,(\partial\Phi)^\top W r`
    with :math:`r = \Phi^\top(wC) - f` (see :meth:`particles.problem.Problem.velocity`).
    For cotangents :math:`(\lambda_Y, \lambda_C)` it returns
    :math:`(\lambda\cdot\partial v/\partial Y, \lambda\cdot\partial v/\partial C,
    \lambda\cdot\partial v/\partial w)`.

    Parameters
    ----------
    Y : ndarray, shape (J, N)
    C, w : ndarray, shape (J,)
    lam_Y : ndarray, shape (K, J, N)
    lam_C : ndarray, shape (K, J)

    Returns
    -------
    dY : ndarray, shape (K, J, N)
    dC, dw : ndarray, shape (K, J)
    """
    x, W = problem.x, problem.w
    P, dP, hP = phi_derivatives(problem.kernel, x, Y)
    J, Q, N = dP.shape
    K = lam_C.shape[0]
    a = w * C
    rho = W * (a @ P - problem.f_x)  # (Q,)
    dPt = np.ascontiguousarray(dP.transpose(0, 2, 1)).reshape(J * N, Q)  # rows (j, n)
    u = (dPt @ rho).reshape(J, N)
    H = np.tensordot(hP, rho, axes=([1], [0]))  # (J, N, N)
    lamYC = lam_Y * C[:, None]  # (K, J, N)
    eta = -(lam_C @ P) - lamYC.reshape(K, J * N) @ dPt
    zeta = eta * W
    dA = zeta @ P.T  # (K, J)
    dC = -np.einsum("kjn,jn->kj", lam_Y, u) + w * dA
    dw = C * dA
    if N == 1:
        curv = lamYC * H[:, 0, 0][:, None]
    else:
        curv = np.einsum("kjm,jmn->kjn", lamYC, H, optimize=True)
    dY = (-lam_C[..., None] * u + (zeta @ dPt.T).reshape(K, J, N) * a[:, None] - curv)
    return dY, dC, dw


def velocity_vjp_c(problem, P, C, w, lam_C):
    r"""The vector-Jacobian product of the c velocity :math:`v_C = -\Phi^\top W r` alone,
    for frozen y (``train = ["c"]``): ``P`` = φ(x_q, Y_j) (J, Q), fixed. Returns
    :math:`(\lambda\cdot\partial v_C/\partial C, \lambda\cdot\partial v_C/\partial w)`,
    each (K, J); the y-tangent and the Hessian of φ are not computed."""
    dA = -((lam_C @ P) * problem.w) @ P.T  # (K, J)
    return w * dA, C * dA


def _rk4_vjp_c(problem, P, C, w, h, lam_C):
    """Reverse one RK4 step of the c flow with frozen y (``P`` fixed)."""
    def v(cc):
        return -P @ (problem.w * ((w * cc) @ P - problem.f_x))

    k1 = v(C)
    k2 = v(C + 0.5 * h * k1)
    k3 = v(C + 0.5 * h * k2)
    z = (C + 0.5 * h * k1, C + 0.5 * h * k2, C + h * k3)
    gC, gw = lam_C.copy(), np.zeros_like(lam_C)
    dC, dw = velocity_vjp_c(problem, P, z[2], w, lam_C * (h / 6))
    gC += dC; gw += dw  # noqa: E702
    dC, dw = velocity_vjp_c(problem, P, z[1], w, lam_C * (h / 3) + h * dC)
    gC += dC; gw += dw  # noqa: E702
    dC, dw = velocity_vjp_c(problem, P, z[0], w, lam_C * (h / 3) + 0.5 * h * dC)
    gC += dC; gw += dw  # noqa: E702
    dC, dw = velocity_vjp_c(problem, P, C, w, lam_C * (h / 6) + 0.5 * h * dC)
    return gC + dC, gw + dw


def _rk4_vjp(problem, Y, C, w, h, lam_Y, lam_C):
    """Reverse one RK4 step from (Y, C): cotangents at the step start and of w."""
    def v(yy, cc):
        vy, vc = problem.velocity(yy[None], cc[None], w[None])
        return vy[0], vc[0]

    k1 = v(Y, C)
    z2 = (Y + 0.5 * h * k1[0], C + 0.5 * h * k1[1])
    k2 = v(*z2)
    z3 = (Y + 0.5 * h * k2[0], C + 0.5 * h * k2[1])
    k3 = v(*z3)
    z4 = (Y + h * k3[0], C + h * k3[1])
    gY, gC = lam_Y.copy(), lam_C.copy()
    gw = np.zeros_like(lam_C)
    # stage 4: z4 = z + h k3, weight h/6
    dY, dC, dw = velocity_vjp(problem, *z4, w, lam_Y * (h / 6), lam_C * (h / 6))
    gY += dY; gC += dC; gw += dw  # noqa: E702
    l3Y, l3C = lam_Y * (h / 3) + h * dY, lam_C * (h / 3) + h * dC
    dY, dC, dw = velocity_vjp(problem, *z3, w, l3Y, l3C)
    gY += dY; gC += dC; gw += dw  # noqa: E702
    l2Y, l2C = lam_Y * (h / 3) + 0.5 * h * dY, lam_C * (h / 3) + 0.5 * h * dC
    dY, dC, dw = velocity_vjp(problem, *z2, w, l2Y, l2C)
    gY += dY; gC += dC; gw += dw  # noqa: E702
    l1Y, l1C = lam_Y * (h / 6) + 0.5 * h * dY, lam_C * (h / 6) + 0.5 * h * dC
    dY, dC, dw = velocity_vjp(problem, Y, C, w, l1Y, l1C)
    return gY + dY, gC + dC, gw + dw


def _observable_basis(problem, Y, C, w, rank_tol, frozen_y=False):
    """Cotangents of f(T, x_q) for all q, reduced by an SVD to the numerical rank
    (``frozen_y``: the y-tangent dropped, lam_Y zero).

    Returns (U_r (Q, r), lam_Y (r, J, N), lam_C (r, J), direct dw (r, J)).
    """
    if frozen_y:
        P = problem.kernel.phi(problem.x, Y[None])[0]  # (J, Q)
        J, N = Y.shape
        U, S, Vt = np.linalg.svd(P.T, full_matrices=False)
        r = max(1, int(np.sum(S > rank_tol * S[0])))
        RP = S[:r, None] * Vt[:r]
        return U[:, :r], np.zeros((r, J, N)), RP * w, RP * C
    P, dP = problem.kernel.phi_grad(problem.x, Y[None])
    P, dP = P[0], dP[0]  # (J, Q), (J, Q, N)
    J, Q, N = dP.shape
    B = np.concatenate([P.T, dP.transpose(1, 0, 2).reshape(Q, J * N)], axis=1)  # (Q, J(1+N))
    U, S, Vt = np.linalg.svd(B, full_matrices=False)
    r = max(1, int(np.sum(S > rank_tol * S[0])))
    R = (S[:r, None] * Vt[:r])  # rows: reduced observables in the [P, dP] coordinates
    RP, RdP = R[:, :J], R[:, J:].reshape(r, J, N)
    # f_q = sum_j w_j C_j P_jq: cotangent in C is w P, in Y is w C dP, direct in w is C P
    lam_C = RP * w
    lam_Y = RdP * (w * C)[None, :, None]
    dw = RP * C
    return U[:, :r], lam_Y, lam_C, dw


class AdjointState(NamedTuple):
    """The reverse sweep at reverse time ``t = -t_forward``: ``k`` forward steps not yet
    reversed, cotangents ``lam_Y`` (K, J, N), ``lam_C`` (K, J) of the state at step ``k``
    and the accumulated cotangents ``gw`` (K, J) of the weights (K rows, one per injected
    observable)."""

    t: float
    k: int
    lam_Y: np.ndarray
    lam_C: np.ndarray
    gw: np.ndarray


class AdjointStepper:
    r"""The exact discrete adjoint of a recorded RK4 run of weighted nodes, stepped backwards.

    Reverse time is :math:`-t`, so the driver :func:`particles.engine.loop.run` goes forward
    through the save times ``-t_K < ... < -t_0``. Each step reverses one recorded forward
    step (:func:`_rk4_vjp`) with its recorded size; cotangents of the observables are
    injected at the save times by the observer (it returns the state with more rows).

    Parameters
    ----------
    problem : particles.problem.Problem
    w : ndarray, shape (J,)
        Node weights.
    starts : list of (float, ndarray (J, N), ndarray (J,))
        Time, Y and C at the start of every forward step.
    hs : list of float
        The forward step sizes.
    frozen_y : bool
        ``train = ["c"]``: y never moves; only the c cotangents are carried
        (:func:`velocity_vjp_c`, φ at the nodes computed once), lam_Y stays 0.
    """

    name = "influence (adjoint)"
    advice = "lower fluctuations.dt"

    def __init__(self, problem, w, starts, hs, frozen_y=False):
        self.problem, self.w, self.starts, self.hs = problem, w, starts, hs
        self.P = (problem.kernel.phi(problem.x, starts[0][1][None])[0]
                  if frozen_y and starts else None)

    def init(self, t_end) -> AdjointState:
        J, N = len(self.w), self.problem.N
        return AdjointState(-float(t_end), len(self.hs), np.zeros((0, J, N)),
                            np.zeros((0, J)), np.zeros((0, J)))

    def propose(self, state, t_start, t_end):
        return self.hs[state.k - 1] if state.k > 0 and t_end > state.t else 0.0

    def step(self, state, h):
        s = state.k - 1
        t, Ys, Cs = self.starts[s]
        lam_Y, lam_C, gw = state.lam_Y, state.lam_C, state.gw
        if lam_C.shape[0] and self.P is not None:
            lam_C, dw = _rk4_vjp_c(self.problem, self.P, Cs, self.w, self.hs[s], lam_C)
            gw = gw + dw
        elif lam_C.shape[0]:
            lam_Y, lam_C, dw = _rk4_vjp(self.problem, Ys, Cs, self.w, self.hs[s], lam_Y, lam_C)
            gw = gw + dw
        return AdjointState(-float(t), s, lam_Y, lam_C, gw)

    def check(self, state):
        if np.isfinite(state.gw.sum() + state.lam_C.sum() + state.lam_Y.sum()):
            return None
        return "cotangents"

    def capture(self, state) -> dict:
        return {"t": float(state.t), "k": int(state.k), "lam_Y": np.array(state.lam_Y),
                "lam_C": np.array(state.lam_C), "gw": np.array(state.gw)}

    def restore(self, snap) -> AdjointState:
        return AdjointState(float(snap["t"]), int(snap["k"]),
                            np.array(snap["lam_Y"], float), np.array(snap["lam_C"], float),
                            np.array(snap["gw"], float))

    def inject(self, state, lam_Y, lam_C, dw):
        """The state with the rows of new observables' cotangents appended."""
        return state._replace(lam_Y=np.concatenate([state.lam_Y, lam_Y]),
                              lam_C=np.concatenate([state.lam_C, lam_C]),
                              gw=np.concatenate([state.gw, dw]))


class ForwardRun(NamedTuple):
    """The recorded forward RK4 run of the weighted characteristic nodes.

    ``y, c, w``: the nodes at t = 0 (:func:`~meanfield.nodes.characteristic_nodes`);
    ``starts``: (t, Y, C) at the start of every step; ``hs``: the step sizes; ``ends``:
    {save index: (Y, C)}; ``f0`` (T, Q): :math:`f_0` at the save times."""

    y: np.ndarray
    c: np.ndarray
    w: np.ndarray
    starts: list
    hs: list
    ends: dict
    f0: np.ndarray


def forward_run(problem, ts, *, grid=None, partial=None, progress=None,
                train=("y", "c")) -> ForwardRun:
    """The forward run of the influence method, every step recorded (:class:`ForwardRun`).

    ``grid``: the nodes and step (:func:`influence_grid`); ``partial``: as
    :func:`influence_matrices`; ``progress``: the progress bar (``None`` shows it only on
    a terminal); ``train``: the dynamics' trained coordinates."""
    g = influence_grid(grid)
    dt = g["dt"]
    y, c, w = characteristic_nodes(problem, g["y"], g["c"])
    starts, hs = [], []
    f0 = np.full((len(ts), problem.x.shape[0]), np.nan)
    ends = {}

    def record(st, h):
        starts.append((float(st.t), st.y[0], st.c[0]))
        hs.append(h)

    def observe(k, st):
        ends[k] = (st.y[0].copy(), st.c[0].copy())
        f0[k] = problem.network(st.y, w * st.c)[0]

    fail = None if partial is None else (lambda msg: partial(f0, msg))
    fwd = ParticleStepper(problem, Dynamics("gd", "rk4", dt, train=tuple(train)), w[None],
                          name="influence (forward)", labels=["nodes"],
                          advice=f"lower fluctuations.dt={dt}")
    run(fwd, fwd.init(y[None], c[None]), ts, observe, before_step=record, progress=progress,
        partial=fail)
    return ForwardRun(y, c, w, starts, hs, ends, f0)


def adjoint_sweep(problem, fw: ForwardRun, ts, *, rank_tol, after_step=None, partial=None,
                  progress=None, frozen_y=False):
    """The reverse sweep of :class:`AdjointStepper` over a :class:`ForwardRun`, injecting
    the cotangents of :math:`f_0(T_k, x)` (SVD-reduced) at every save time.

    ``after_step(old, new)`` is called after every reverse step (both
    :class:`AdjointState`; ``new.k`` indexes ``fw.starts``); ``progress``: the progress
    bar (``None`` shows it only on a terminal).

    Returns
    -------
    end : AdjointState
        At t = 0.
    bases : dict
        {save index k: U_k (Q, r_k)}: f_0(T_k, x) = U_k (rows of k).
    rows : dict
        {save index k: slice of the state's rows}.
    ranks : list of int
        r_k in save-time order.
    """
    K = len(ts)
    bases, rows, ranks = {}, {}, []
    back = AdjointStepper(problem, fw.w, fw.starts, fw.hs, frozen_y=frozen_y)
    fail = None if partial is None else (lambda msg: partial(fw.f0, msg))

    def inject(j, st):
        if j >= K:
            return None
        k = K - 1 - j
        U, lY, lC, dw0 = _observable_basis(problem, *fw.ends[k], fw.w, rank_tol, frozen_y)
        ranks.append(U.shape[1])
        rows[k] = slice(st.lam_C.shape[0], st.lam_C.shape[0] + U.shape[1])
        bases[k] = U
        return back.inject(st, lY, lC, dw0)

    rev = [-t for t in ts[::-1]] + ([0.0] if ts[0] > 0 else [])
    end = run(back, back.init(ts[-1]), rev, inject, after_step=after_step,
              progress=progress, partial=fail)
    return end, bases, rows, ranks[::-1]


def influence_grid(grid=None) -> dict:
    """The nodes and step of the influence method (``[fluctuations]`` y, c, dt) over
    :data:`meanfield.defaults.INFLUENCE`: ``y`` nodes per y dimension, ``c`` in c, and the
    RK4 step ``dt``."""
    return options(grid, INFLUENCE, "grid")


def influence_matrices(problem, save_times, *, grid=None, rank_tol=RANK_TOL, partial=None,
                       progress=None, train=("y", "c")):
    r"""D_k = ∂f_0(T_k, x)/∂w for each save time (shape (T, Q, J)) and the nodes.

    The forward run is the particle stepper with the node weights (:func:`forward_run`);
    the reverse sweep is :class:`AdjointStepper` (:func:`adjoint_sweep`); both through
    :func:`particles.engine.loop.run`.

    Parameters
    ----------
    partial : callable ``(f0, message) -> xarray.Dataset``, optional
        Builds the partial result of a failure from ``f0`` (T, Q) observed so far.
    progress : bool or None
        Progress bar; ``None`` shows it only on a terminal.
    train : tuple of str
        ``("c",)``: random features; the forward run keeps y and the reverse sweep drops
        the y-tangent.

    Returns
    -------
    D : ndarray, shape (T, Q, J)
    w : ndarray, shape (J,)
    f0 : ndarray, shape (T, Q)
        :math:`f_0(T_k)` along characteristics (same run).
    info : dict
    """
    ts = check_save_times(save_times)
    fw = forward_run(problem, ts, grid=grid, partial=partial, progress=progress,
                     train=train)
    end, bases, rows, ranks = adjoint_sweep(problem, fw, ts, rank_tol=rank_tol,
                                            partial=partial, progress=progress,
                                            frozen_y="y" not in train)
    D = np.stack([bases[k] @ end.gw[rows[k]] for k in range(len(ts))])
    return D, fw.w, fw.f0, influence_info(fw, grid, rank_tol, ranks)


def influence_info(fw, grid, rank_tol, ranks) -> dict:
    """The ``resolution`` record of the influence method."""
    g = influence_grid(grid)
    return {"nodes": {"y": g["y"], "c": g["c"], "total": len(fw.w)}, "dt": g["dt"],
            "ranks": list(ranks),
            "rank_tol": rank_tol, "c_nodes_range": [float(fw.c.min()), float(fw.c.max())]}


def c_domain(problem) -> list:
    """The c domain the nodes' Gauss rule integrates: the whole support of the c law
    (Gauss–Legendre on [low, high], Gauss–Hermite on the line), so no mass of ρ_in is cut
    off."""
    law = problem.c_law
    return {"uniform": lambda p: [p["low"], p["high"]],
            "normal": lambda p: ["-inf", "inf"],
            "constant": lambda p: [p["value"], p["value"]]}[law.law](law.p)


def clt_covariance_influence(problem, save_times, *, grid=None, rank_tol=RANK_TOL,
                             progress: bool | None = None, train=("y", "c")) -> xr.Dataset:
    r"""Predicted covariance of :math:`\sqrt n (f_n - f_0)(t)` by the influence method
    (``train = ("c",)``: of random features, y frozen; :func:`influence_matrices`).

    ``progress``: the progress bar (``None`` shows it only on a terminal).

    Returns
    -------
    xarray.Dataset
        ``clt_cov(t, x, x_)``, ``clt_var(t, x)``, ``f_0_influence(t, x)``; attrs name the
        method, its resolution, the c domain covered by the nodes and the mass of ρ_in
        beyond it.

    Raises
    ------
    particles.engine.loop.NumericalFailure
        A non-finite forward or adjoint state; ``.partial`` is the Dataset with the
        forward ``f_0_influence`` observed so far and ``attrs["complete"] = 0``.
    """
    ts = check_save_times(save_times)
    x = problem.x
    xc = x_coord(x)
    domain = c_domain(problem)

    def dataset(f0, cov, info, failure=None):
        attrs = {
            "method": "influence",
            "method_description": "first variation d f_0(T)/d w_j of weighted characteristic "
                                  "nodes, exact discrete adjoint of RK4 (THEORY §4, §8)",
            "resolution": json.dumps(info),
            "c_domain": json.dumps(domain),
            "c_nodes_range": json.dumps(info.get("c_nodes_range")),
            "truncated_mass": 0.0,
            **run_status(failure),
        }
        data = {
            "clt_cov": (("t", "x", "x_"), cov),
            "clt_var": (("t", "x"), np.diagonal(cov, axis1=1, axis2=2).copy()),
            "f_0_influence": (("t", "x"), f0),
        }
        return cf_dataset(data, {"t": ts, "x": xc, "x_": xc}, attrs,
                          title="mfpc CLT covariance (influence method)")

    def partial(f0, message):
        Q = len(xc)
        g = influence_grid(grid)
        info = {"nodes": {"y": g["y"], "c": g["c"]}, "dt": g["dt"], "rank_tol": rank_tol}
        return dataset(f0, np.full((len(ts), Q, Q), np.nan), info, message)

    D, w, f0, info = influence_matrices(problem, ts, grid=grid, rank_tol=rank_tol,
                                        partial=partial, progress=progress, train=train)
    m = D @ w  # (T, Q)
    cov = np.einsum("tqj,j,tpj->tqp", D, w, D) - m[:, :, None] * m[:, None, :]
    cov = 0.5 * (cov + cov.transpose(0, 2, 1))
    return dataset(f0, cov, info)
