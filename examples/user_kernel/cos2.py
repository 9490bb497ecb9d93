r"""A user's kernel in one file: :math:`\varphi(x, y) = (1 + \cos(x - y))^2 / 4` on the circle.

Run it from the config beside it (``docs/kernels.md``)::

    mfpc run cos2.toml --out runs/cos2 --workers 2
    mfpc report runs/cos2
"""
import numpy as np

from particles.kernels import Kernel


class Cos2Kernel(Kernel):
    """phi(x, y) = (1 + cos(x - y))^2 / 4, y on the circle."""

    name = "cos2_circle"
    N = d = 1
    y_domain = "circle"
    translation_invariant = True
    capabilities = frozenset({"grad_x", "hessian_y", "fourier"})

    def __init__(self, scale=1.0):
        self.scale = float(scale)

    def params(self):
        return {"scale": self.scale}

    def wrap(self, y):
        return np.mod(y, 2 * np.pi)

    def _g(self, s):
        """g(s) = scale (1 + cos s)^2 / 4 and its derivatives in y (s = x - y), once."""
        c, sn = np.cos(s), np.sin(s)
        g = self.scale * (1 + c) ** 2 / 4
        dy = self.scale * (1 + c) * sn / 2                 # d/dy = -d/ds
        d2y = self.scale * (sn * sn - c - c * c) / 2
        return g, dy, d2y

    @staticmethod
    def _s(x, y):
        return x[..., None, :, 0] - y[..., :, None, 0]  # (..., n, Q)

    def phi(self, x, y):
        return self._g(self._s(x, y))[0]

    def phi_grad(self, x, y):
        g, dy, _ = self._g(self._s(x, y))
        return g, dy[..., None]

    def grad_x(self, x, y):
        return -self.phi_grad(x, y)[1]

    def phi_hessian(self, x, y):
        g, dy, d2y = self._g(self._s(x, y))
        return g, dy[..., None], d2y[..., None, None]
