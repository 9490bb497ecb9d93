r"""The one SSP-RK3 stage routine (Shu–Osher), shared by the grid step, its stage
linearisations and the tangent-linear step.

.. math::
    u^{(1)} = u + \Delta t\,k_0,\quad
    u^{(2)} = \tfrac34 u + \tfrac14\big(u^{(1)} + \Delta t L_1(u^{(1)})\big),\quad
    u^{+} = \tfrac13 u + \tfrac23\big(u^{(2)} + \Delta t L_2(u^{(2)})\big),

with :math:`k_0 = L_0(u)` given. For the grid :math:`L_s` is the CCH right-hand side of
(2.9) at every stage; for the tangent-linear step it is the frozen derivative at the
stage states of the forward step (THEORY §8).
"""
from __future__ import annotations

import numpy as np

__all__ = ["ssp_rk3"]


def ssp_rk3(u, dt, k0, rhs, work=None):
    r"""One SSP-RK3 step from ``u`` given ``k0 = L_0(u)``.

    Parameters
    ----------
    u : ndarray, any shape
        The state (not modified).
    dt : float
    k0 : ndarray, shape of ``u``
        The right-hand side at ``u`` (not modified).
    rhs : callable ``(s, u_s) -> k_s``
        The right-hand side at stage ``s`` (1, 2) of the stage state ``u_s``; the returned
        array is scaled in place (return a buffer or a fresh array).
    work : pair of ndarray, optional
        Buffers for the two stage states (the grid's, to avoid allocation).

    Returns
    -------
    ndarray, shape of ``u``
        :math:`u^+` (a new array).
    """
    u1 = np.multiply(k0, dt, out=None if work is None else work[0])
    u1 += u
    k1 = rhs(1, u1)
    k1 *= dt
    u1 += k1  # u1 + dt L(u1)
    u2 = np.multiply(u, 0.75, out=None if work is None else work[1])
    u1 *= 0.25
    u2 += u1
    k2 = rhs(2, u2)
    k2 *= dt
    u2 += k2  # u2 + dt L(u2)
    new = np.multiply(u, 1.0 / 3.0)
    u2 *= 2.0 / 3.0
    new += u2
    return new
