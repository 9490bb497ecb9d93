r"""The lazy (kernel, NTK) regime beside the mean field: f follows M frozen at ρ_in.

.. math::
    f_{lazy}(t) = f + e^{-t M[\rho_{in}]}\big(f(0) - f\big), \qquad
    (M r)(x) = \int M[\rho_{in}](x, x')\,r(x')\,\mu(dx'),

with :math:`M[\rho_{in}]` of (2.38) over the trained coordinates
(:func:`meanfield.mkernel.m_kernel`; ``train = ("c",)``: only its :math:`\varphi\varphi`
part), :math:`M = n\cdot\mathrm{NTK}` at initialisation (THEORY §3). On the nodes the
operator is ``M W`` (W = diag(w)), similar to the symmetric
:math:`S = W^{1/2}MW^{1/2} = V\Lambda V^\top`, so the exponential is exact:

.. math:: e^{-tMW} = W^{-1/2}\,V e^{-t\Lambda}V^\top\,W^{1/2}.

:math:`M[\rho_{in}]` and :math:`f(0) = \int c\,\varphi(\cdot, y)\,\rho_{in}` come from the
tensor quadrature of :math:`\rho_{in}` (:func:`meanfield.nodes.characteristic_nodes`).

How far the mean field leaves the lazy regime (feature learning, measured):

.. math:: \mathrm{lazy\_gap}(t) = \|f_0(t) - f_{lazy}(t)\|_\mu / \|f(0) - f\|_\mu .

With y frozen (random features) the y-marginal never moves and :math:`M_c` is constant
along the flow, so the mean field is :math:`f_{lazy}` exactly and lazy_gap measures only
the solver's discretisation error (:func:`rk4_gap_bound` for the characteristics).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from particles.engine.loop import substeps

from meanfield.defaults import options
from meanfield.mkernel import MOperator, m_kernel
from meanfield.nodes import characteristic_nodes

__all__ = ["lazy_operator", "f_lazy", "lazy_gap", "lazy_loss",
           "lazy_prediction", "rk4_gap_bound", "LAZY_NODES"]

#: Default quadrature of ρ_in for M[ρ_in]: y nodes per dimension, c nodes (the keys of
#: ``[meanfield] characteristics``).
LAZY_NODES = {"y": 128, "c": 24}


def lazy_operator(problem, *, train=("y", "c"), grid=None):
    r""":class:`~meanfield.mkernel.MOperator` of :math:`M[\rho_{in}]` over the trained coordinates and
    :math:`f(0)` on the nodes, from the tensor quadrature of :math:`\rho_{in}` with
    ``grid = {"y": ..., "c": ...}`` nodes (default :data:`LAZY_NODES`)."""
    g = options(grid, LAZY_NODES, "grid")
    y, c, w = characteristic_nodes(problem, g["y"], g["c"])
    M = m_kernel(problem.kernel, problem.x, y, c, w, train=train)
    f_start = problem.network(y[None], (w * c)[None])[0]
    return MOperator(M, problem.w), f_start


def f_lazy(op: MOperator, times, f_start, f_target):
    r""":math:`f + e^{-tM}(f(0) - f)`, shape (T, Q)."""
    return f_target + op.apply(times, np.asarray(f_start, float) - f_target)


def _norm(v, w):
    return np.sqrt(np.sum(w * np.asarray(v) ** 2, axis=-1))


def lazy_gap(f_0, f_lazy_, f_start, f_target, w):
    r""":math:`\|f_0(t) - f_{lazy}(t)\|_\mu / \|f(0) - f\|_\mu`, shape (T,)."""
    return _norm(np.asarray(f_0) - f_lazy_, w) / _norm(np.asarray(f_start) - f_target, w)


def lazy_loss(f_lazy_, f_target, w):
    r""":math:`\tfrac12\|f_{lazy}(t) - f\|^2_\mu`, shape (T,)."""
    return 0.5 * _norm(np.asarray(f_lazy_) - f_target, w) ** 2


def rk4_gap_bound(op: MOperator, times, h):
    r"""Bound of lazy_gap(t) for RK4 with steps ≤ h on :math:`\dot u = -MWu` (y frozen).

    Per eigenvalue λ of MW, RK4 multiplies by :math:`R(-h\lambda) = \sum_{k\le4}
    (-h\lambda)^k/k!` instead of :math:`e^{-h\lambda}`; :math:`|R(-z) - e^{-z}| \le
    z^5/120` and :math:`|R(-z)|, e^{-z} \le 1` for :math:`0 \le z \le 2`, so after m = t/h
    steps :math:`|R^m - e^{-mz}| \le m z^5/120`: relative to :math:`\|f(0) - f\|_\mu`,

    .. math:: \mathrm{lazy\_gap}(t) \le \frac{t}{h}\frac{(h\lambda_{max})^5}{120}
        + \epsilon_{ro}(t),

    with the round-off of t/h steps of Q-term sums, :math:`\epsilon_{ro} = 10\,(t/h + Q)
    \epsilon`. Requires :math:`h\lambda_{max} \le 2`. Shape (T,)."""
    z = h * float(op.lam[-1])
    if z > 2:
        raise ValueError(f"h * lambda_max = {z:.3g} > 2: RK4 is not contracting; lower dt")
    # the steps the characteristics took to each save time: the engine's one rule per
    # save interval (particles.engine.loop.substeps), from t = 0
    ts = np.asarray(times, float)
    starts = np.concatenate([[0.0], ts[:-1]])
    steps = np.cumsum([substeps(a, b, h)[0] for a, b in zip(starts, ts)])
    return steps * z**5 / 120 + 10 * (steps + len(op.lam)) * np.finfo(float).eps


def lazy_prediction(problem, times, *, train=("y", "c"), f_0=None,
                    grid=None) -> xr.Dataset:
    r"""The lazy prediction beside a mean field.

    Parameters
    ----------
    problem : particles.problem.Problem
    times : sequence of float, shape (T,)
    train : tuple of str
        The trained coordinates of M.
    f_0 : ndarray, shape (T, Q), optional
        The mean field at ``times``; then ``lazy_gap`` is recorded.
    grid : dict, optional
        The quadrature of ρ_in: ``{"y": ..., "c": ...}`` nodes (default :data:`LAZY_NODES`).

    Returns
    -------
    xarray.Dataset
        ``f_lazy(t, x)``, ``lazy_loss(t)`` and, with ``f_0``, ``lazy_gap(t)``; attrs
        ``lazy_train``, ``lazy_nodes``.
    """
    ts = np.asarray(times, float)
    g = options(grid, LAZY_NODES, "grid")
    op, f_start = lazy_operator(problem, train=train, grid=g)
    fl = f_lazy(op, ts, f_start, problem.f_x)
    data = {"f_lazy": (("t", "x"), fl),
            "lazy_loss": (("t",), lazy_loss(fl, problem.f_x, problem.w))}
    if f_0 is not None:
        data["lazy_gap"] = (("t",), lazy_gap(f_0, fl, f_start, problem.f_x, problem.w))
    attrs = {"lazy_train": ",".join(train), "lazy_nodes": f"y={g['y']}, c={g['c']}",
             "lazy_definition": "f + exp(-t M[rho_in])(f(0) - f), M over the trained "
                                "coordinates, exact exponential (eigen-decomposition)"}
    return xr.Dataset(data, coords={"t": ts}, attrs=attrs)
