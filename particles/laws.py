r"""Initial laws :math:`\rho_{in}(y, c) = \rho_y(y)\,\rho_c(c)` (independent y and c).

Each law samples with an explicit ``numpy.random.Generator``. The y laws also give what
the mean-field solvers need, as methods (``meanfield`` never asks for a class):

* ``quadrature(ny) -> (nodes (J, N), weights (J,))``: a tensor rule of the law
  (trapezoid on the circle, Gauss–Legendre on a box, Gauss–Hermite for a normal law),
  probability weights; the characteristics and the influence method (THEORY §3, §4);
* ``cell_masses(edges) -> (n_1, ..., n_N)``: exact masses of the cells of a tensor grid
  with edge arrays ``edges[k]`` per coordinate, from the distribution function (the grid
  solver's initial data);
* ``default_box() -> [(low, high)] * N``: the y box of a non-periodic grid;
* ``domain``: ``"circle"``, ``"euclidean"`` or ``"sphere"``; ``name``: the config law.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from particles.measures import _product_rule

__all__ = ["CLaw", "YUniformCircle", "YUniformBox", "YNormal", "YUniformSphere", "BOX_MARGIN"]

#: A uniform y box is widened by this fraction of its width on each side for the default
#: grid box: units leave the box where they start (the example of
#: ``examples/gaussian_line.toml`` moves from [-2, 2] to the target bumps at ±2).
BOX_MARGIN = 1.0


def _tensor(factors):
    """Outer product of per-coordinate factors: shape (n_1, ..., n_N)."""
    out = factors[0]
    for f in factors[1:]:
        out = np.multiply.outer(out, f)
    return out



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

    def support(self, mass=1e-12):
        """``(low, high)`` holding all but ``mass`` of the law (``mass / 2`` on each side):
        the quantiles of a normal law, the interval of a uniform one, the value of a
        constant one."""
        if self.dist is None:
            return self.p["value"], self.p["value"]
        if self.law == "uniform":
            return self.p["low"], self.p["high"]
        return float(self.dist.ppf(mass / 2)), float(self.dist.isf(mass / 2))

    def mean(self):
        return self.p["value"] if self.dist is None else float(self.dist.mean())

    def second_moment(self):
        if self.dist is None:
            return self.p["value"] ** 2
        return float(self.dist.var() + self.dist.mean() ** 2)


class YUniformCircle:
    """y uniform on [0, 2π), density 1/(2π)."""

    N = 1
    name = "uniform"
    domain = "circle"

    def params(self):
        return {"law": "uniform"}

    def sample(self, rng, n):
        return rng.uniform(0.0, 2 * np.pi, size=(n, 1))

    def pdf(self, y):
        return np.full(np.shape(y)[:-1], 1.0 / (2 * np.pi))

    def quadrature(self, ny):
        """Trapezoid rule (spectral for periodic integrands): (ny, 1), (ny,)."""
        return (2 * np.pi * np.arange(ny) / ny)[:, None], np.full(ny, 1.0 / ny)

    def cell_masses(self, edges):
        """1/n per cell of n uniform cells covering the circle, else arc length / 2π."""
        e = np.asarray(edges[0], float)
        n = len(e) - 1
        if e[0] == 0.0 and e[-1] == 2 * np.pi and np.allclose(np.diff(e), 2 * np.pi / n):
            return np.full((n,), 1.0 / n)
        return np.diff(e) / (2 * np.pi)

    def default_box(self):
        return [(0.0, 2 * np.pi)]


class YUniformBox:
    """y uniform on the box [low, high] (one pair per coordinate), N = len(low)."""

    name = "uniform"
    domain = "euclidean"

    def __init__(self, low, high):
        self.low = np.atleast_1d(np.asarray(low, float))
        self.high = np.atleast_1d(np.asarray(high, float))
        self.N = len(self.low)
        if self.high.shape != self.low.shape or np.any(self.high <= self.low):
            raise ValueError(
                f"init.y: low={self.low.tolist()} and high={self.high.tolist()} must have the "
                "same length with low < high in every coordinate"
            )

    def params(self):
        return {"law": "uniform", "low": self.low.tolist(), "high": self.high.tolist()}

    def sample(self, rng, n):
        return rng.uniform(self.low, self.high, size=(n, self.N))

    def pdf(self, y):
        inside = np.all((y >= self.low) & (y <= self.high), axis=-1)
        return inside / np.prod(self.high - self.low)

    def quadrature(self, ny):
        """Gauss–Legendre product rule on the box: (ny^N, N), (ny^N,)."""
        t, wt = np.polynomial.legendre.leggauss(ny)
        nodes, weights = _product_rule((t + 1) / 2, wt, self.N)
        return self.low + nodes * (self.high - self.low), weights

    def cell_masses(self, edges):
        return _tensor([np.diff(np.clip((np.asarray(e, float) - lo) / (hi - lo), 0.0, 1.0))
                        for e, lo, hi in zip(edges, self.low, self.high)])

    def default_box(self):
        """The box widened by ``BOX_MARGIN`` of its width on each side."""
        m = BOX_MARGIN * (self.high - self.low)
        return list(zip((self.low - m).tolist(), (self.high + m).tolist()))


class YNormal:
    """y ~ N(mean, std²) independently in each of N coordinates."""

    name = "normal"
    domain = "euclidean"

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

    def quadrature(self, ny):
        """Gauss–Hermite product rule: (ny^N, N), (ny^N,)."""
        nodes, weights = _product_rule(*np.polynomial.hermite_e.hermegauss(ny), self.N)
        return self.mean + self.std * nodes, weights

    def cell_masses(self, edges):
        return _tensor([np.diff(stats.norm.cdf(e, self.mean[k], self.std[k]))
                        for k, e in enumerate(edges)])

    def default_box(self):
        """mean ± 6 std per coordinate."""
        return [(m - 6 * s, m + 6 * s) for m, s in zip(self.mean, self.std)]


class YUniformSphere:
    """y uniform on the sphere |y| = √d (no tensor rule, no grid)."""

    name = "uniform_sphere"
    domain = "sphere"

    def __init__(self, d):
        self.N = int(d)

    def params(self):
        return {"law": "uniform_sphere"}

    def sample(self, rng, n):
        g = rng.standard_normal((n, self.N))
        return g * (np.sqrt(self.N) / np.linalg.norm(g, axis=-1, keepdims=True))

    def _none(self, what):
        raise ValueError(
            f"the y law 'uniform_sphere' has no {what}; the mean-field solvers need y "
            "uniform on the circle, uniform on a box or normal"
        )

    def quadrature(self, ny):
        self._none("tensor quadrature")

    def cell_masses(self, edges):
        self._none("grid cells")

    def default_box(self):
        self._none("grid box")
