r"""The SGD fluctuation prediction :math:`\Sigma^{SGD}_t` by the adjoint (influence) method.

One SGD step (3.1) moves unit ``i`` by :math:`\Delta t\,\hat v_i`, the batch mean of the
single-sample velocity

.. math:: v(z, X; r) = -\big(c\,\nabla_y\varphi(X, y),\ \varphi(X, y)\big)\,r(X),
    \qquad r = f_n - f,

whose mean over :math:`X\sim\mu` is the GD velocity. The batch noise has covariance
:math:`C(z, z')/P`, :math:`C = \mathrm{Cov}_X(v(z, X), v(z', X))`, the same batch for every
unit; per unit time the displacement noise has covariance :math:`\theta C`,
:math:`\theta = \Delta t/P` (3.13). To leading order (THEORY §4b)

.. math::
    n\,\mathrm{Var}(f_n(t, x) - f_0(t, x)) \approx \Sigma_t(x, x)
        + n\,\theta\,\Sigma^{SGD}_t(x, x),\qquad
    \Sigma^{SGD}_t(x, x') = \int_0^t \frac{\theta(s)}{\theta_{ref}}\,
        \mathrm{Cov}_{X\sim\mu}\big(g_s(x; X), g_s(x'; X)\big)\,ds,

    g_s(x; X) = \int\lambda_s^{t,x}(z)\cdot v(z, X; r_0(s))\,\rho_0(s, dz),

with :math:`\lambda_s^{t,x}` the sensitivity of :math:`f_0(t, x)` to displacing the mass
of :math:`\rho_0(s)` at ``z``: the linearised mean-field flow with the feedback through
``f`` (the :math:`M[\rho_\alpha](f_0 - f)` term of (3.29); noise (3.31)–(3.32)).

Discretisation: :math:`\rho_0(s)` is the weighted characteristic nodes of
:mod:`meanfield.influence` (:func:`~meanfield.influence.forward_run`), and
:math:`w_j\lambda_s(z_j)` is the cotangent of node ``j``'s state at ``s`` in the exact
discrete adjoint of that run (:func:`~meanfield.influence.adjoint_sweep`), so
:math:`g_s(x_q; X) = -r_0(s, X)\sum_j[\lambda_{C,j}\varphi(X, Y_j) +
C_j\lambda_{Y,j}\cdot\nabla_y\varphi(X, Y_j)]`, for all observables at once (the SVD
basis of the influence method). :math:`\mathrm{Cov}_X` is the covariance under the
quadrature of μ (``problem.x``, ``problem.w``); the s-integral is the trapezoid rule on
the adjoint's step grid, with :math:`\theta(s)/\theta_{ref}` at each step's midpoint (a
batch schedule: the quench). Errors: :math:`O(\Delta t^4)` of the RK4 flow and
:math:`O(\Delta t^2)` of the trapezoid (:math:`O(\Delta t)` where ``P`` jumps inside a
step); the Euler SGD of the particles is itself :math:`O(\Delta t)` from this
continuous-time limit, and the O(θ) drift of (3.22) is neglected against
:math:`\theta^{1/2}` (THEORY §4b). The second, independent route, a tangent-linear grid
ensemble forced by sampled batch noise, is :mod:`meanfield.sgdensemble`.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from particles.engine.loop import check_save_times
from particles.engine.results import dataset as cf_dataset
from particles.engine.results import run_status, x_coord

from meanfield.defaults import RANK_TOL
from meanfield.influence import (adjoint_sweep, c_domain, forward_run, influence_grid,
                                 influence_info)

__all__ = ["theta_ref", "theta_ratio", "theta_attrs", "noise_response", "noise_covariance",
           "sgd_covariance_influence"]


def theta_ref(dynamics, n=None) -> float:
    r""":math:`\theta_{ref} = \Delta t / P(0)`: the SGD noise temperature (3.13) at t = 0.

    ``n`` is needed for a batch scaled with n (``{"P0", "alpha"}``: :math:`P = \lceil P_0
    n^{2\alpha}\rceil`, (3.23)). ``sgd_cov`` is per unit :math:`\theta_{ref}`.
    """
    return float(dynamics.dt) / dynamics.batch_at(0.0, n)


def theta_ratio(dynamics):
    r""":math:`s \mapsto \theta(s)/\theta_{ref} = P(0)/P(s)` of the batch schedule (1 for a
    constant batch, and for a batch scaled with n, which does not change in time)."""
    batch = getattr(dynamics, "batch", None)
    if batch is None or isinstance(batch, dict) or np.isscalar(batch):
        return lambda s: 1.0
    p0 = dynamics.batch_at(0.0)
    return lambda s: p0 / dynamics.batch_at(s)


def noise_response(problem, Y, C, w, lam_Y, lam_C):
    r""":math:`g_s(x_k; X_q)` of the single-sample velocity noise, shape (K, Q).

    .. math:: g_{kq} = -r_0(X_q)\sum_j\big[\lambda_{C,kj}\varphi(X_q, Y_j)
        + C_j\,\lambda_{Y,kj}\cdot\nabla_y\varphi(X_q, Y_j)\big],\quad
        r_0 = \textstyle\sum_j w_jC_j\varphi(\cdot, Y_j) - f.

    Parameters
    ----------
    Y : ndarray, shape (J, N)
    C, w : ndarray, shape (J,)
        Node state at s and the node weights.
    lam_Y : ndarray, shape (K, J, N)
    lam_C : ndarray, shape (K, J)
        Cotangents of the node state at s (:class:`~meanfield.influence.AdjointState`).
    """
    P, dP = problem.kernel.phi_grad(problem.x, Y[None])
    P, dP = P[0], dP[0]  # (J, Q), (J, Q, N)
    J, Q, N = dP.shape
    K = lam_C.shape[0]
    r = (w * C) @ P - problem.f_x
    eta = lam_C @ P + (lam_Y * C[:, None]).reshape(K, J * N) @ \
        np.ascontiguousarray(dP.transpose(0, 2, 1)).reshape(J * N, Q)
    return -eta * r


def noise_covariance(g, W):
    r""":math:`\mathrm{Cov}_{X\sim\mu}(g(x_k; X), g(x_l; X))` under the quadrature weights
    ``W`` (Q,) of μ: :math:`gWg^\top - (gW)(gW)^\top`, shape (K, K), for ``g`` (K, Q)."""
    m = g @ W
    return (g * W) @ g.T - np.outer(m, m)


def sgd_covariance_influence(problem, save_times, dynamics=None, *, grid=None,
                             rank_tol=RANK_TOL,
                             progress: bool | None = None) -> xr.Dataset:
    r"""Predicted CLT covariance :math:`\Sigma_t` and SGD covariance :math:`\Sigma^{SGD}_t`,
    one forward run and one adjoint sweep for both (module doc).

    Parameters
    ----------
    problem : particles.problem.Problem
    save_times : sequence of float
    dynamics : particles.Dynamics, optional
        Its batch schedule sets :math:`\theta(s)/\theta_{ref}` (:func:`theta_ratio`);
        ``None``: a constant θ.
    grid, rank_tol
        As :func:`meanfield.influence.clt_covariance_influence`.
    progress : bool or None
        Progress bar; ``None`` shows it only on a terminal.

    Returns
    -------
    xarray.Dataset
        ``clt_cov(t, x, x_)``, ``clt_var(t, x)`` (as the influence method),
        ``sgd_cov(t, x, x_)``, ``sgd_var(t, x)`` (per unit :math:`\theta_{ref}`),
        ``f_0_influence(t, x)``; attrs as the influence method's plus ``sgd_method``,
        ``sgd_theta`` (JSON: what sgd_cov is per unit of and the schedule ratio).

    Raises
    ------
    particles.engine.loop.NumericalFailure
        A non-finite forward or adjoint state; ``.partial`` is the Dataset observed so
        far with ``attrs["complete"] = 0``.
    """
    ts = check_save_times(save_times)
    T, Q = len(ts), problem.x.shape[0]
    ratio = theta_ratio(dynamics) if dynamics is not None else (lambda s: 1.0)
    W = np.asarray(problem.w, float)

    def partial(f0, message):
        nan = np.full((T, Q, Q), np.nan)
        g = influence_grid(grid)
        info = {"nodes": {"y": g["y"], "c": g["c"]}, "dt": g["dt"], "rank_tol": rank_tol}
        return _dataset(problem, ts, f0, nan, nan, info, dynamics, message)

    fw = forward_run(problem, ts, grid=grid, partial=partial, progress=progress)
    nodes = [(s[1], s[2]) for s in fw.starts] + [fw.ends[T - 1]]
    times = [s[0] for s in fw.starts] + [float(ts[-1])]
    acc = {"A": np.zeros((0, 0)), "cache": None}

    def integrand(k, st):
        """Cov_X of g over the rows of ``st`` at node k (cached for the next step)."""
        R = st.lam_C.shape[0]
        c = acc["cache"]
        if c is not None and c[0] == k and c[1].shape[0] == R:
            return c[1]
        Y, C = nodes[k]
        out = noise_covariance(noise_response(problem, Y, C, fw.w, st.lam_Y, st.lam_C), W)
        acc["cache"] = (k, out)
        return out

    def after_step(old, new):
        R = old.lam_C.shape[0]
        if R == 0:
            return
        if acc["A"].shape[0] < R:  # rows injected since the last step
            A = np.zeros((R, R))
            r0 = acc["A"].shape[0]
            A[:r0, :r0] = acc["A"]
            acc["A"] = A
        h = times[old.k] - times[new.k]
        s_mid = 0.5 * (times[old.k] + times[new.k])
        acc["A"] += (0.5 * h * ratio(s_mid)) * (integrand(old.k, old) + integrand(new.k, new))

    end, bases, rows, ranks = adjoint_sweep(problem, fw, ts, rank_tol=rank_tol,
                                            after_step=after_step, partial=partial,
                                            progress=progress)
    R = end.lam_C.shape[0]
    A = np.zeros((R, R))
    A[:acc["A"].shape[0], :acc["A"].shape[0]] = acc["A"]
    D = np.stack([bases[k] @ end.gw[rows[k]] for k in range(T)])
    m = D @ fw.w
    clt = np.einsum("tqj,j,tpj->tqp", D, fw.w, D) - m[:, :, None] * m[:, None, :]
    sgd = np.stack([bases[k] @ A[rows[k], rows[k]] @ bases[k].T for k in range(T)])
    sym = lambda a: 0.5 * (a + a.transpose(0, 2, 1))  # noqa: E731
    info = influence_info(fw, grid, rank_tol, ranks)
    return _dataset(problem, ts, fw.f0, sym(clt), sym(sgd), info, dynamics)


def theta_attrs(dynamics):
    """What ``sgd_cov`` is per unit of, as JSON (``sgd_theta``)."""
    batch = None if dynamics is None else dynamics.batch
    return json.dumps({
        "per_unit": "theta_ref = dt / P(0) (3.13); for a batch scaled with n, "
                    "P(0) = ceil(P0 n^(2 alpha)) per n",
        "inside_integral": "theta(s) / theta_ref = P(0) / P(s) of the batch schedule",
        "dt": None if dynamics is None else float(dynamics.dt),
        "batch": batch,
    })


def _dataset(problem, ts, f0, clt, sgd, info, dynamics, failure=None):
    xc = x_coord(problem.x)
    attrs = {
        "method": "influence",
        "method_description": "first variation d f_0(T)/d w_j of weighted characteristic "
                              "nodes, exact discrete adjoint of RK4 (THEORY §4, §8)",
        "sgd_method": "influence",
        "sgd_method_description": "single-sample velocity noise of the characteristic "
                                  "nodes carried by the exact discrete adjoint, "
                                  "Cov over the quadrature of mu, trapezoid in s "
                                  "(THEORY §4b; (3.29), (3.31)-(3.32))",
        "sgd_theta": theta_attrs(dynamics),
        "resolution": json.dumps(info),
        "c_domain": json.dumps(c_domain(problem)),
        "c_nodes_range": json.dumps(info.get("c_nodes_range")),
        "truncated_mass": 0.0,
        **run_status(failure),
    }
    diag = lambda a: np.diagonal(a, axis1=1, axis2=2).copy()  # noqa: E731
    data = {
        "clt_cov": (("t", "x", "x_"), clt),
        "clt_var": (("t", "x"), diag(clt)),
        "sgd_cov": (("t", "x", "x_"), sgd),
        "sgd_var": (("t", "x"), diag(sgd)),
        "f_0_influence": (("t", "x"), f0),
    }
    return cf_dataset(data, {"t": ts, "x": xc, "x_": xc}, attrs,
                      title="mfpc CLT and SGD covariances (influence method)")
