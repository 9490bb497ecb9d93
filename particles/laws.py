r"""Initial laws :math:`\rho_{in}(y, c) = \rho_y(y)\,\rho_c(c)` (independent y and c).

Each law samples with an explicit ``numpy.random.Generator`` and, for the mean-field
solvers, exposes its density or distribution function so that grid cells can be given
their exact mass and Gauss rules can be matched to it.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["CLaw", "YUniformCircle", "YNormal", "YUniformSphere"]


class CLaw:
    r"""Law of the initial weights ``c``: ``normal``, ``uniform`` or ``constant``.

    Parameters
    ----------
    law : {"normal", "uniform", "constant"}
    mean, std : float
        For ``normal``.
    low, high : float
        For ``uniform``.
    value : float
        For ``constant``.
    """

    def __init__(self, law="normal", mean=0.0, std=1.0, low=-1.0, high=1.0, value=1.0):
        self.law = law
        if law == "normal":
            if std <= 0:
                raise ValueError(f"init.c.std={std} must be > 0")
            self.p = {"law": law, "mean": float(mean), "std": float(std)}
            self.dist = stats.norm(loc=mean, scale=std)
        elif law == "uniform":
            if not high > low:
                raise ValueError(f"init.c needs low < high, got low={low}, high={high}")
            self.p = {"law": law, "low": float(low), "high": float(high)}
            self.dist = stats.uniform(loc=low, scale=high - low)
        elif law == "constant":
            self.p = {"law": law, "value": float(value)}
            self.dist = None
        else:
            raise ValueError(
                f"init.c.law={law!r} is not known; use 'normal', 'uniform' or 'constant'"
            )

    def params(self):
        return dict(self.p)

    def sample(self, rng, n):
        if self.law == "normal":
            return self.p["mean"] + self.p["std"] * rng.standard_normal(n)
        if self.law == "uniform":
            return rng.uniform(self.p["low"], self.p["high"], size=n)
        return np.full(n, self.p["value"])

    def cdf(self, c):
        """Distribution function (a step for ``constant``)."""
        if self.dist is None:
            return (np.asarray(c) >= self.p["value"]).astype(float)
        return self.dist.cdf(c)

    def mean(self):
        return self.p["value"] if self.dist is None else float(self.dist.mean())

    def second_moment(self):
        if self.dist is None:
            return self.p["value"] ** 2
        return float(self.dist.var() + self.dist.mean() ** 2)


class YUniformCircle:
    """y uniform on [0, 2π), density 1/(2π)."""

    N = 1

    def params(self):
        return {"law": "uniform"}

    def sample(self, rng, n):
        return rng.uniform(0.0, 2 * np.pi, size=(n, 1))

    def pdf(self, y):
        return np.full(np.shape(y)[:-1], 1.0 / (2 * np.pi))


class YNormal:
    """y ~ N(mean, std²) independently in each of N coordinates."""

    def __init__(self, N, mean=0.0, std=1.0):
        self.N = int(N)
        self.mean = np.broadcast_to(np.asarray(mean, float), (self.N,)).copy()
        self.std = np.broadcast_to(np.asarray(std, float), (self.N,)).copy()
        if np.any(self.std <= 0):
            raise ValueError(f"init.y.std={std} must be > 0")

    def params(self):
        return {"law": "normal", "mean": self.mean.tolist(), "std": self.std.tolist()}

    def sample(self, rng, n):
        return self.mean + self.std * rng.standard_normal((n, self.N))

    def pdf(self, y):
        return np.prod(stats.norm.pdf(y, loc=self.mean, scale=self.std), axis=-1)


class YUniformSphere:
    """y uniform on the sphere |y| = √d."""

    def __init__(self, d):
        self.N = int(d)

    def params(self):
        return {"law": "uniform_sphere"}

    def sample(self, rng, n):
        g = rng.standard_normal((n, self.N))
        return g * (np.sqrt(self.N) / np.linalg.norm(g, axis=-1, keepdims=True))
