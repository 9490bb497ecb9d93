r"""The RBF on the sphere :math:`|x| = |y| = \sqrt d`, (4.2)–(4.3) with the sign corrected."""
from __future__ import annotations

import math

import numpy as np

from particles.kernels.base import Kernel, pullback_arrays
from particles.kernels.expblocks import exp_pullback

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

    def phi_xp(self, xp, x, y):
        """φ = exp(α(x·y − d)) against the array namespace ``xp``."""
        return xp.exp(self.alpha * (xp.matmul(y, xp.swapaxes(x, -1, -2)) - self.d))

    def phi(self, x, y):
        return self.phi_xp(np, x, y)

    def phi_grad(self, x, y):
        p = self.phi(x, y)
        xb = np.broadcast_to(x[..., None, :, :], p.shape + (self.d,))
        return p, self.alpha * p[..., None] * xb

    def grad_x(self, x, y):
        # φ is symmetric in (x, y): ∇_x φ = α y φ
        p = self.phi(x, y)
        yb = np.broadcast_to(y[..., :, None, :], p.shape + (self.d,))
        return self.alpha * p[..., None] * yb

    def tangent_xp(self, xp, y, v):
        """v − (v·y/|y|²) y against the array namespace ``xp``."""
        yy = xp.sum(y * y, axis=-1, keepdims=True)
        return v - (xp.sum(v * y, axis=-1, keepdims=True) / yy) * y

    def retract_xp(self, xp, y):
        """y √d/|y| against the array namespace ``xp``."""
        return y * (math.sqrt(self.d) / xp.sqrt(xp.sum(y * y, axis=-1, keepdims=True)))

    def tangent(self, y, v):
        return self.tangent_xp(np, y, v)

    def retract(self, y):
        return self.retract_xp(np, y)

    def pullback(self, y, a, x, w, f_x):
        r"""Fused pass: one matrix product and one ``exp`` per (particle, node) pair.

        :math:`\alpha(x\cdot y - d) = [y, 1]\cdot[\alpha x, -\alpha d]`, so
        :math:`E = e^{\alpha(x\cdot y - d)}` is one (n, d + 1) × (d + 1, Q) product and
        one ``exp``, and :math:`g^y = \alpha E(w r x)` (:math:`\nabla_y\varphi =
        \alpha x\varphi`), not projected: the caller applies :meth:`tangent` as for every
        kernel. Blocked and bounded in memory by :func:`.expblocks.exp_pullback`; held
        against :func:`.base.pullback_reference` in ``tests/particles/test_fused_rbf.py``.
        Shapes as :meth:`Kernel.pullback`.
        """
        y, a, x, w, f_x = pullback_arrays(y, a, x, w, f_x)
        B, n, d = y.shape
        U = np.empty((B, n, d + 1))
        U[..., :d] = y
        U[..., d] = 1.0
        V = np.empty(x.shape[:-2] + (d + 1, x.shape[-2]))
        np.multiply(np.swapaxes(x, -1, -2), self.alpha, out=V[..., :d, :])
        V[..., d, :] = -self.alpha * self.d
        f, G = exp_pullback(U, V, x, a, w, f_x)
        g_y = G[..., 1:]
        g_y *= self.alpha
        return f, G[..., 0], g_y
