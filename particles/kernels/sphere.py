r"""The RBF on the sphere :math:`|x| = |y| = \sqrt d`, (4.2)–(4.3) with the sign corrected."""
from __future__ import annotations

import numpy as np

from .base import Kernel

__all__ = ["SphereRBF"]


class SphereRBF(Kernel):
    r"""RBF on the sphere :math:`|x| = |y| = \sqrt d`, (4.2)–(4.3) with the sign corrected.

    :math:`|x-y|^2 = 2d - 2x\cdot y`, so (4.2) is
    :math:`\varphi(x, y) = e^{-\alpha(d - x\cdot y)}` (THEORY §6: the minus sign of
    (4.3) is a typo). ``y`` is kept on the sphere by the tangential projection
    :meth:`tangent` and the renormalisation :meth:`retract` (the Lagrange multiplier
    :math:`-\lambda_i Y_i` of (4.5)). Config kind ``"sphere"`` (key ``alpha``).
    """

    name = "sphere"
    y_domain = "sphere"
    capabilities = frozenset({"grad_x", "constraint"})

    def __init__(self, d: int, alpha: float):
        self.d = self.N = int(d)
        self.alpha = float(alpha)

    def params(self):
        return {"d": self.d, "alpha": self.alpha}

    def phi(self, x, y):
        xy = np.matmul(y, np.swapaxes(x, -1, -2))
        return np.exp(self.alpha * (xy - self.d))

    def phi_grad(self, x, y):
        p = self.phi(x, y)
        xb = np.broadcast_to(x[..., None, :, :], p.shape + (self.d,))
        return p, self.alpha * p[..., None] * xb

    def grad_x(self, x, y):
        # φ is symmetric in (x, y): ∇_x φ = α y φ
        p = self.phi(x, y)
        yb = np.broadcast_to(y[..., :, None, :], p.shape + (self.d,))
        return self.alpha * p[..., None] * yb

    def tangent(self, y, v):
        yy = np.sum(y * y, axis=-1, keepdims=True)
        return v - (np.sum(v * y, axis=-1, keepdims=True) / yy) * y

    def retract(self, y):
        return y * (np.sqrt(self.d) / np.linalg.norm(y, axis=-1, keepdims=True))
