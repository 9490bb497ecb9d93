r"""The Gaussian kernel :math:`\varphi(x, y) = A e^{-|x-y|^2/(2\sigma^2)}` on :math:`R^d`."""
from __future__ import annotations

import numpy as np

from .base import Kernel

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

    def _parts(self, x, y):
        """x − y (..., n, Q, d) and φ (..., n, Q): the one place φ is written."""
        diff = x[..., None, :, :] - y[..., :, None, :]
        p = np.exp(-0.5 * np.sum(diff**2, axis=-1) / self.sigma**2)
        if self.normalised:
            p = self.A * p
        return diff, p

    def phi(self, x, y):
        return self._parts(x, y)[1]

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
