r"""Data measures :math:`\mu`: deterministic nodes and weights, and a sampler for batches.

Each measure has ``nodes`` (Q, d) and ``weights`` (Q,) with
:math:`\langle g, h\rangle_\mu \approx \sum_q w_q g(x_q) h(x_q)`, and ``sample(rng, P)``
drawing ``P`` i.i.d. points of :math:`\mu` for SGD (3.1). Where the dimension allows the
nodes are a quadrature rule; otherwise they are a fixed i.i.d. sample with equal
weights (a Monte Carlo rule), stated in ``kind``.

Every measure declares ``name`` (its config kind, ``[problem.measure] kind``),
``domain`` (``"circle"``, ``"euclidean"``, ``"sphere"``) and ``capabilities``:
``"sample"`` when ``sample(rng, P)`` draws from it (SGD needs it; the Lebesgue measure
and a file measure cannot be sampled) and ``"stream"`` when its draws are a stream of
points: ``sample(rng, P + P')`` gives the points of ``sample(rng, P)`` followed by those
of ``sample(rng, P')``, bitwise (each point uses the generator's next numbers in order),
so SGD may draw the batches of several steps in one call
(:class:`particles.dynamics.Batches`; ``tests/particles/test_sgd_draw.py``).
"""
from __future__ import annotations

import numpy as np

from particles.engine.config import ConfigError, require

__all__ = ["CircleUniform", "GaussianMeasure", "SphereUniform", "UniformBox", "Lebesgue",
           "FileMeasure", "DATA_MAX", "check_values"]

#: Largest |value| accepted for data a user gives (nodes, weights, target values, box
#: bounds), the bound :data:`analysis.run.inputs.INIT_MAX` puts on initial units: the
#: problems are O(1); the loss sums w f² and the velocities c² φ ∇φ over the nodes, so a
#: value of 1e8 already makes them 1e16 times those of O(1) data while staying far from
#: overflow (1.8e308); larger values are data in the wrong units or broken.
DATA_MAX = 1e8


def check_values(v, key, name, *, nonnegative=False, hint="check the file's units"):
    """Refuse NaN, infinite, beyond :data:`DATA_MAX` (or, ``nonnegative``, negative)
    entries of the array ``v`` read from ``key``, naming the first bad entry."""
    v = np.asarray(v, float)
    for bad, what in ((~np.isfinite(v), "NaN or infinite"),
                      (np.isfinite(v) & (np.abs(v) > DATA_MAX), f"beyond |{name}| <= {DATA_MAX:g}"),
                      ((v < 0) if nonnegative else None, "negative")):
        if bad is not None and bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ConfigError(
                f"{key}: {name} has {int(bad.sum())} value(s) {what} (first at index "
                f"{where if len(where) != 1 else where[0]}: {v[where]:.6g}); every entry must be "
                f"a finite number{' >= 0' if nonnegative else ''} of at most {DATA_MAX:g} in "
                f"size: {hint}")


def _product_rule(t, wt, d):
    """Tensor product of a 1-D rule (nodes t, weights wt) in d dimensions: (Q, d), (Q,)."""
    wt = wt / wt.sum()
    nodes = np.stack([g.ravel() for g in np.meshgrid(*([t] * d), indexing="ij")], axis=-1)
    weights = np.prod(np.stack([g.ravel() for g in np.meshgrid(*([wt] * d), indexing="ij")]),
                      axis=0)
    return nodes, weights


class CircleUniform:
    """Uniform probability on [0, 2π) with the Q-point trapezoid rule (spectral)."""

    name = "circle"
    domain = "circle"
    capabilities = frozenset({"sample", "stream"})
    kind = "quadrature"

    def __init__(self, Q: int):
        self.Q = int(Q)
        self.nodes = (2 * np.pi * np.arange(self.Q) / self.Q)[:, None]
        self.weights = np.full(self.Q, 1.0 / self.Q)

    def params(self):
        return {"quadrature": self.Q}

    def sample(self, rng, P):
        return rng.uniform(0.0, 2 * np.pi, size=(P, 1))


class GaussianMeasure:
    """N(0, scale² I) on R^d; Gauss–Hermite product rule for d ≤ 2, else samples."""

    name = "gaussian"
    domain = "euclidean"
    capabilities = frozenset({"sample", "stream"})

    def __init__(self, d: int, Q: int, rng=None, scale: float = 1.0):
        self.d, self.Q, self.scale = int(d), int(Q), float(scale)
        if self.d <= 2:
            self.kind = "quadrature"
            m = int(round(self.Q ** (1.0 / self.d)))
            nodes, self.weights = _product_rule(*np.polynomial.hermite_e.hermegauss(m), self.d)
            self.nodes = self.scale * nodes
            self.Q = len(self.weights)
        else:
            self.kind = "samples"
            if rng is None:
                raise ValueError("GaussianMeasure with d > 2 needs an rng for its node sample")
            self.nodes = self.sample(rng, self.Q)
            self.weights = np.full(self.Q, 1.0 / self.Q)

    def params(self):
        return {"d": self.d, "nodes": self.Q, "kind": self.kind, "scale": self.scale}

    def sample(self, rng, P):
        return self.scale * rng.standard_normal((P, self.d))


class UniformBox:
    """Uniform probability on [low, high]^d; Gauss–Legendre product rule for d ≤ 2."""

    name = "uniform_box"
    domain = "euclidean"
    capabilities = frozenset({"sample", "stream"})

    def __init__(self, d: int, Q: int, low: float, high: float, rng=None):
        self.d, self.Q, self.low, self.high = int(d), int(Q), float(low), float(high)
        if self.d <= 2:
            self.kind = "quadrature"
            m = int(round(self.Q ** (1.0 / self.d)))
            t, wt = np.polynomial.legendre.leggauss(m)
            t = self.low + (t + 1) * (self.high - self.low) / 2
            self.nodes, self.weights = _product_rule(t, wt, self.d)
            self.Q = len(self.weights)
        else:
            self.kind = "samples"
            if rng is None:
                raise ValueError("UniformBox with d > 2 needs an rng for its node sample")
            self.nodes = self.sample(rng, self.Q)
            self.weights = np.full(self.Q, 1.0 / self.Q)

    def params(self):
        return {"d": self.d, "nodes": self.Q, "kind": self.kind, "low": self.low, "high": self.high}

    def sample(self, rng, P):
        return rng.uniform(self.low, self.high, size=(P, self.d))


class SphereUniform:
    """Uniform probability on the sphere |x| = √d; nodes are a fixed i.i.d. sample."""

    name = "sphere"
    domain = "sphere"
    capabilities = frozenset({"sample", "stream"})
    kind = "samples"

    def __init__(self, d: int, Q: int, rng):
        self.d, self.Q = int(d), int(Q)
        if self.d < 2:
            raise ConfigError(
                f"problem.d = {self.d}: the sphere |x| = sqrt(d) in d = {self.d} is "
                f"{'the two points -1 and 1' if self.d == 1 else 'no set of points'}, not a "
                "sphere; use d >= 2 (or measure kind = 'circle' for the circle)")
        self.nodes = self.sample(rng, self.Q)
        self.weights = np.full(self.Q, 1.0 / self.Q)

    def params(self):
        return {"d": self.d, "nodes": self.Q, "kind": self.kind}

    def sample(self, rng, P):
        g = rng.standard_normal((P, self.d))
        return g * (np.sqrt(self.d) / np.linalg.norm(g, axis=-1, keepdims=True))


class Lebesgue:
    r"""Lebesgue measure :math:`\mu = dx` on all of :math:`R^d` (not a probability).

    The nodes are the tensor trapezoid points of the box [low, high] (``nodes`` points per
    coordinate, ``nodes^d`` in all) with trapezoid weights (not normalised: they sum to
    the box volume); they evaluate f_n, the loss and the data form. Integrands must be
    negligible outside the box. It cannot be sampled: SGD is refused (``"sample"``).

    Parameters
    ----------
    low, high : sequence of float, length d
    nodes : int
        Points per coordinate (>= 2).
    """

    name = "lebesgue"
    domain = "euclidean"
    capabilities = frozenset()
    kind = "trapezoid"

    def __init__(self, low, high, nodes: int):
        self.low = np.atleast_1d(np.asarray(low, float))
        self.high = np.atleast_1d(np.asarray(high, float))
        self.d, self.m = len(self.low), int(nodes)
        for name, v in (("low", self.low), ("high", self.high)):
            check_values(v, f"problem.measure.{name}", name,
                         hint="the box holds the data, which are O(1)")
        if self.high.shape != self.low.shape or np.any(self.high <= self.low) or self.m < 2:
            raise ValueError(
                f"problem.measure: low={self.low.tolist()}, high={self.high.tolist()} need the "
                f"same length with low < high, and nodes >= 2 (got {self.m})"
            )
        axes, wts = [], []
        for lo, hi in zip(self.low, self.high):
            t = np.linspace(lo, hi, self.m)
            w = np.full(self.m, (hi - lo) / (self.m - 1))
            w[[0, -1]] *= 0.5
            axes.append(t)
            wts.append(w)
        mesh = np.meshgrid(*axes, indexing="ij")
        self.nodes = np.stack([g.ravel() for g in mesh], axis=-1)
        self.weights = np.prod(np.stack([g.ravel() for g in np.meshgrid(*wts, indexing="ij")]),
                               axis=0)
        self.Q = len(self.weights)

    def params(self):
        return {"d": self.d, "nodes": self.m, "kind": self.kind, "low": self.low.tolist(),
                "high": self.high.tolist()}

    def sample(self, rng, P):
        require(self, "sample", "drawing data points (SGD)")


class FileMeasure:
    """Nodes and weights read from a netCDF file: ``x(x, x_dim)`` and ``weight(x)``.

    It cannot be sampled (SGD is refused by ``"sample"``).
    """

    name = "file"
    domain = "euclidean"
    capabilities = frozenset()
    kind = "file"

    def __init__(self, path):
        import xarray as xr

        self.path = str(path)
        try:
            with xr.open_dataset(self.path, engine="h5netcdf") as ds:
                x = np.asarray(ds["x"].values, float)
                w = np.asarray(ds["weight"].values, float)
        except Exception as e:  # noqa: BLE001 - whatever the damage: the file is refused
            raise ConfigError(
                f"problem.measure.path={self.path!r}: cannot read x(x, x_dim) and weight(x) "
                f"({type(e).__name__}: {e}); write a netCDF file with those two variables"
            ) from None
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2 or w.shape != (len(x),):
            raise ConfigError(f"problem.measure.path={self.path!r}: x must be (x, x_dim) and "
                              f"weight (x,), got {x.shape} and {w.shape}")
        key = f"problem.measure.path={self.path!r}"
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ConfigError(f"{key}: x has {x.shape[0]} node(s) of {x.shape[1]} "
                              "coordinate(s); a measure needs at least one node in d >= 1")
        check_values(x, key, "x")
        check_values(w, key, "weight", nonnegative=True)
        if not w.sum() > 0:
            raise ConfigError(f"{key}: every weight is 0, so the measure is 0 and the loss "
                              "is 0 whatever the network; give some node a positive weight")
        self.nodes, self.weights = x, w
        self.d, self.Q = x.shape[1], len(w)

    def params(self):
        return {"d": self.d, "nodes": self.Q, "kind": self.kind, "path": self.path}

    def sample(self, rng, P):
        require(self, "sample", "drawing data points (SGD)")
