r"""Weighted quadrature nodes of the initial law :math:`\rho_{in} = \rho_y\otimes\rho_c`.

Shared by the characteristics solver and the influence method (THEORY §3, §4): a tensor
rule in y given by the y law (``quadrature``: trapezoid on the circle, Gauss–Legendre on
a box, Gauss–Hermite for a normal law) times a Gauss rule in c
matched to the c law.
"""
from __future__ import annotations

import numpy as np

__all__ = ["characteristic_nodes", "c_rule"]


def c_rule(c_law, nc: int):
    """Gauss rule matched to the c law: nodes and probability weights, shape (m,)."""
    law = c_law.law
    p = c_law.params()
    if law == "normal":
        t, w = np.polynomial.hermite_e.hermegauss(nc)
        return p["mean"] + p["std"] * t, w / w.sum()
    if law == "uniform":
        t, w = np.polynomial.legendre.leggauss(nc)
        return p["low"] + (t + 1) * (p["high"] - p["low"]) / 2, w / w.sum()
    return np.array([p["value"]]), np.array([1.0])


def _y_rule(y_law, ny: int):
    """The y law's own tensor rule (``y_law.quadrature``): nodes (J, N), weights (J,)."""
    return y_law.quadrature(ny)


def characteristic_nodes(problem, ny: int, nc: int):
    """Tensor quadrature of :math:`\\rho_{in} = \\rho_y\\otimes\\rho_c`.

    Returns
    -------
    y : ndarray, shape (J, N)
    c : ndarray, shape (J,)
    w : ndarray, shape (J,)
        Probability weights (sum to 1).
    """
    if ny < 1 or nc < 1:
        raise ValueError(f"characteristics needs y >= 1 and c >= 1 nodes, got y={ny}, c={nc}")
    yn, yw = _y_rule(problem.y_law, ny)
    cn, cw = c_rule(problem.c_law, nc)
    J = len(yw) * len(cw)
    y = np.repeat(yn, len(cw), axis=0).reshape(J, -1)
    c = np.tile(cn, len(yw))
    w = np.outer(yw, cw).ravel()
    return y, c, w
