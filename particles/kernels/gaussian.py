r"""The Gaussian kernel :math:`\varphi(x, y) = A e^{-|x-y|^2/(2\sigma^2)}` on :math:`R^d`."""
from __future__ import annotations

import numpy as np

from particles.kernels.base import Kernel, pullback_arrays
from particles.kernels.expblocks import exp_pullback

__all__ = ["GaussianRBF"]


class GaussianRBF(Kernel):
    r"""Gaussian RBF :math:`\varphi(x, y) = A e^{-|x-y|^2/(2\sigma^2)}`, ``N = d``.

    Config kind ``"gaussian"`` (keys ``sigma``, ``normalised``). ``A = 1``, or
    :math:`A = (2\pi\sigma^2)^{-d/2}` when ``normalised`` (then φ(·, y) is the density
    of :math:`N(y, \sigma^2 I)`). Closed forms: :mod:`particles.closed_forms`.

    Parameters
    ----------
    d : int
    sigma : float
    normalised : bool
    """

    name = "gaussian"
    capabilities = frozenset({"grad_x", "hessian_y"})

    def __init__(self, d: int, sigma: float, normalised: bool = False):
        self.d = self.N = int(d)
        self.sigma = float(sigma)
        self.normalised = bool(normalised)
        self.A = (2 * np.pi * self.sigma**2) ** (-0.5 * self.d) if normalised else 1.0

    def params(self):
        p = {"d": self.d, "sigma": self.sigma}
        if self.normalised:
            p["normalised"] = 1
        return p

    def phi_xp(self, xp, x, y):
        """φ = A exp(−|x − y|²/(2σ²)) against the array namespace ``xp``.

        |x − y|² = |x|² + |y|² − 2 y·x after shifting x and y by the mean node m (φ
        depends on x − y only): one matrix product and no (n, Q, d) array, with the
        cancellation at round-off of the distances from m, not of the norms (as the
        fused pass)."""
        if x.shape[-2]:
            m = xp.mean(x, axis=-2, keepdims=True)
            x, y = x - m, y - m
        d2 = (xp.sum(x * x, axis=-1)[..., None, :] + xp.sum(y * y, axis=-1)[..., :, None]
              - 2.0 * xp.matmul(y, xp.swapaxes(x, -1, -2)))
        p = xp.exp(-0.5 * d2 / self.sigma**2)
        return self.A * p if self.normalised else p

    def _parts(self, x, y):
        """x − y (..., n, Q, d) and φ (..., n, Q) (φ from :meth:`phi_xp`)."""
        return x[..., None, :, :] - y[..., :, None, :], self.phi_xp(np, x, y)

    def phi(self, x, y):
        return self.phi_xp(np, x, y)

    def phi_grad(self, x, y):
        diff, p = self._parts(x, y)
        return p, p[..., None] * diff / self.sigma**2  # ∇_y φ = φ (x − y)/σ²

    def grad_x(self, x, y):
        p, dp = self.phi_grad(x, y)
        return -dp  # φ depends on x − y only

    def phi_hessian(self, x, y):
        diff, p = self._parts(x, y)
        dp = p[..., None] * diff / self.sigma**2
        s2 = self.sigma**2
        eye = np.eye(self.N)
        hp = p[..., None, None] * (diff[..., :, None] * diff[..., None, :] / s2**2 - eye / s2)
        return p, dp, hp

    def pullback(self, y, a, x, w, f_x):
        r"""Fused pass: one matrix product and one ``exp`` per (particle, node) pair.

        With :math:`s = 1/(2\sigma^2)` and both x and y shifted by the same centre m
        (the mean node of each member: φ depends on x − y only, and a small origin keeps
        the cancellation in :math:`|x|^2 + |y|^2 - 2x\cdot y` at round-off of the
        distance, not of the norms)

        .. math::
            \log A - s|x - y|^2 = [y, \log A - s|y|^2, 1]\cdot[2sx, 1, -s|x|^2],

        so :math:`E = A e^{-s|x-y|^2}` is one (n, d + 2) × (d + 2, Q) product and one
        ``exp`` (the ``normalised`` factor A rides in the exponent), and

        .. math::
            g^y_i = \frac{1}{\sigma^2}\sum_q w_q r_q \varphi_{iq}(x_q - y_i)
                  = \frac{1}{\sigma^2}\big(E(w r x) - y\, E(w r)\big)_i .

        Blocked and bounded in memory by :func:`.expblocks.exp_pullback`; held against
        :func:`.base.pullback_reference` in ``tests/particles/test_fused_rbf.py``.
        Shapes as :meth:`Kernel.pullback`.
        """
        y, a, x, w, f_x = pullback_arrays(y, a, x, w, f_x)
        B, n, d = y.shape
        s = 0.5 / self.sigma**2
        m = np.mean(x, axis=-2, keepdims=True) if x.shape[-2] else np.zeros(x.shape[:-2] + (1, d))
        xc = x - m  # (Q, d) or (B, Q, d)
        yc = y - (m if m.ndim == 3 else m[None])  # (B, n, d)
        U = np.empty((B, n, d + 2))
        U[..., :d] = yc
        U[..., d] = np.log(self.A) - s * np.sum(yc * yc, axis=-1)
        U[..., d + 1] = 1.0
        V = np.empty(x.shape[:-2] + (d + 2, x.shape[-2]))
        np.multiply(np.swapaxes(xc, -1, -2), 2 * s, out=V[..., :d, :])
        V[..., d, :] = 1.0
        V[..., d + 1, :] = -s * np.sum(xc * xc, axis=-1)
        f, G = exp_pullback(U, V, xc, a, w, f_x)
        g_y = G[..., 1:] - yc * G[..., :1]
        g_y /= self.sigma**2
        return f, G[..., 0], g_y
