r"""Targets :math:`f(x)` with their gradients :math:`\nabla_x f`.

Every target is called on nodes ``x`` of shape ``(..., Q, d)`` and returns ``(..., Q)``;
``grad(x)`` returns ``(..., Q, d)``. Every target declares ``name`` (its config kind,
``[problem.target] kind``) and ``capabilities``: ``"evaluate"`` when it can be evaluated
off the measure's nodes (SGD draws new points), ``"grad"`` when :math:`\nabla_x f`
exists.
"""
from __future__ import annotations

import numpy as np

from particles.engine.config import ConfigError, require
from particles.engine.parallel import SINGLE_GEMM
from particles.measures import check_values

__all__ = ["FourierTarget", "TeacherNetwork", "ThreeSpin", "GaussianMixture", "FileTarget"]


class FourierTarget:
    r"""Fourier series on the circle, :math:`f(x) = \sum_k a_k\cos kx + b_k\sin kx`.

    ``cos[k] = a_k`` and ``sin[k] = b_k`` for k = 0, 1, 2, ... (``sin[0]`` is ignored).
    """

    name = "fourier"
    capabilities = frozenset({"evaluate", "grad"})

    def __init__(self, cos=(), sin=()):
        self.cos = np.asarray(cos, dtype=float)
        self.sin = np.asarray(sin, dtype=float)
        kmax = max(len(self.cos), len(self.sin))
        self.a = np.zeros(kmax)
        self.b = np.zeros(kmax)
        self.a[: len(self.cos)] = self.cos
        self.b[: len(self.sin)] = self.sin
        self.k = np.arange(kmax)

    def params(self):
        return {"cos": self.cos.tolist(), "sin": self.sin.tolist()}

    def __call__(self, x):
        kx = x[..., 0, None] * self.k
        return np.cos(kx) @ self.a + np.sin(kx) @ self.b

    def grad(self, x):
        kx = x[..., 0, None] * self.k
        return ((-np.sin(kx) * self.k) @ self.a + (np.cos(kx) * self.k) @ self.b)[..., None]


class TeacherNetwork:
    r"""A teacher network :math:`f(x) = \frac1m\sum_j c^*_j\varphi(x, y^*_j)` with a kernel."""

    name = "teacher"

    def __init__(self, kernel, y, c):
        self.kernel = kernel
        self.y = np.asarray(y, dtype=float)
        self.c = np.asarray(c, dtype=float)
        if self.y.shape != (len(self.c), kernel.N):
            raise ValueError(
                f"teacher y has shape {self.y.shape}; expected ({len(self.c)}, {kernel.N})"
            )

    @property
    def capabilities(self):
        grad = {"grad"} if "grad_x" in self.kernel.capabilities else set()
        return frozenset({"evaluate"} | grad)

    def params(self):
        return {"units": len(self.c)}

    def __call__(self, x):
        p = self.kernel.phi(x, self.y)  # (..., m, Q)
        return np.einsum("m,...mq->...q", self.c, p) / len(self.c)

    def grad(self, x):
        r""":math:`\nabla_x f = \frac1m\sum_j c^*_j\nabla_x\varphi(x, y^*_j)`, shape (..., Q, d)."""
        return np.einsum("m,...mqk->...qk", self.c, self.kernel.grad_x(x, self.y)) / len(self.c)


class ThreeSpin:
    r"""The 3-spin model (4.1) on the sphere :math:`|x| = \sqrt d`,

    .. math:: f(x) = \frac1d \sum_{p,q,r} a_{pqr} x_p x_q x_r,

    with gradient (4.6)
    :math:`\partial_p f = \frac1d\sum_{q,r}(a_{pqr} + a_{rpq} + a_{qrp}) x_q x_r`.
    """

    name = "3spin"
    capabilities = frozenset({"evaluate", "grad"})

    def __init__(self, a):
        self.a = np.asarray(a, dtype=float)
        d = self.a.shape[0]
        if self.a.shape != (d, d, d):
            raise ValueError(f"3-spin coefficients must have shape (d, d, d), got {self.a.shape}")
        self.d = d
        # (4.6): a_pqr + a_rpq + a_qrp, indexed [p, q, r]
        self._g = self.a + np.transpose(self.a, (1, 2, 0)) + np.transpose(self.a, (2, 0, 1))
        self._G = np.ascontiguousarray(self._g.reshape(d, d * d).T)  # (d², d)

    @classmethod
    def random(cls, d, rng):
        """Coefficients :math:`a_{pqr} \\sim N(0, 1)` drawn from ``rng``."""
        return cls(rng.standard_normal((d, d, d)))

    def params(self):
        return {"d": self.d}

    def _contract(self, x):
        r""":math:`g_p = \sum_{q,r}(a_{pqr} + a_{rpq} + a_{qrp}) x_q x_r`, shape (..., d).

        One matrix product with the (d², d) matrix of (4.6) on the outer products
        :math:`x_q x_r`, in chunks of rows that bound the memory and keep each product
        below OpenBLAS's threading threshold (m·n·k <
        :data:`particles.engine.parallel.SINGLE_GEMM`: a product that
        wakes the BLAS threads costs several times more on a busy machine, measured 8 ms
        against 1 ms for an SGD batch of 1600 points in d = 10).
        """
        x = np.asarray(x, dtype=float)
        d = self.d
        X = x.reshape(-1, d)
        G = self._G
        out = np.empty(X.shape)
        rows = max(1, min(2**20 // (d * d), SINGLE_GEMM // d**3))
        for s in range(0, len(X), rows):
            xs = X[s : s + rows]
            out[s : s + rows] = (xs[:, :, None] * xs[:, None, :]).reshape(len(xs), d * d) @ G
        return out.reshape(x.shape)

    def __call__(self, x):
        # f is homogeneous of degree 3, so x·∇f = 3f (Euler) and f = x·g/(3d)
        return np.sum(np.asarray(x, float) * self._contract(x), axis=-1) / (3 * self.d)

    def grad(self, x):
        return self._contract(x) / self.d


class GaussianMixture:
    r"""A signed mixture of normalised Gaussian densities on :math:`R^d`,

    .. math:: f(x) = \sum_k w_k\,N(x; m_k, s_k^2 I),\qquad
              N(x; m, s^2 I) = (2\pi s^2)^{-d/2}e^{-|x-m|^2/(2s^2)} .

    Parameters
    ----------
    weights : sequence of float, shape (K,)
    centres : array_like, shape (K, d)
    sigmas : sequence of float, shape (K,)
    """

    name = "gaussian_mixture"
    capabilities = frozenset({"evaluate", "grad"})

    def __init__(self, weights, centres, sigmas):
        self.w = np.asarray(weights, float)
        self.m = np.asarray(centres, float)
        self.s = np.asarray(sigmas, float)
        K = len(self.w)
        if self.m.ndim != 2 or len(self.m) != K or self.s.shape != (K,) or np.any(self.s <= 0):
            raise ValueError(
                f"problem.target: weights ({K}), centres {self.m.shape} and sigmas "
                f"{self.s.shape} must give K components: centres as K lists of d numbers, "
                "sigmas > 0"
            )
        self.d = self.m.shape[1]

    def params(self):
        return {"weights": self.w.tolist(), "centres": self.m.tolist(), "sigmas": self.s.tolist()}

    def _dens(self, x):
        """x − m_k (..., Q, K, d) and w_k N(x; m_k, s_k²) (..., Q, K)."""
        diff = np.asarray(x, float)[..., :, None, :] - self.m
        s2 = self.s**2
        g = np.exp(-0.5 * np.sum(diff**2, axis=-1) / s2) * (2 * np.pi * s2) ** (-0.5 * self.d)
        return diff, self.w * g

    def __call__(self, x):
        return np.sum(self._dens(x)[1], axis=-1)

    def grad(self, x):
        diff, g = self._dens(x)
        return -np.sum((g / self.s**2)[..., None] * diff, axis=-2)


class FileTarget:
    """Target values ``f(x)`` read from a netCDF file, on the measure's nodes only.

    It declares no ``"evaluate"``: off the nodes it is refused (SGD needs it).

    Parameters
    ----------
    path : str
        netCDF file with a variable ``f(x)``.
    nodes : ndarray, shape (Q, d)
        The measure's nodes, on which the values are given.
    """

    name = "file"
    capabilities = frozenset()

    def __init__(self, path, nodes):
        import xarray as xr

        self.path = str(path)
        try:
            with xr.open_dataset(self.path, engine="h5netcdf") as ds:
                self.values = np.asarray(ds["f"].values, float)
        except Exception as e:  # noqa: BLE001 - whatever the damage: the file is refused
            raise ConfigError(
                f"problem.target.path={self.path!r}: cannot read f(x) ({type(e).__name__}: "
                f"{e}); write a netCDF file with a variable f on the measure's nodes"
            ) from None
        self.nodes = np.asarray(nodes, float)
        if self.values.shape != (len(self.nodes),):
            raise ConfigError(
                f"problem.target.path={self.path!r}: f has shape {self.values.shape}, the "
                f"measure has {len(self.nodes)} nodes; give one value per node"
            )
        check_values(self.values, f"problem.target.path={self.path!r}", "f")

    def params(self):
        return {"path": self.path}

    def __call__(self, x):
        x = np.asarray(x, float)
        if x.shape == self.nodes.shape and np.array_equal(x, self.nodes):
            return self.values.copy()
        require(self, "evaluate", "evaluating the target off the measure's nodes (SGD)")
