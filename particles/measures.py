r"""Data measures :math:`\mu`: deterministic nodes and weights, and a sampler for batches.

Each measure has ``nodes`` (Q, d) and ``weights`` (Q,) with
:math:`\langle g, h\rangle_\mu \approx \sum_q w_q g(x_q) h(x_q)`, and ``sample(rng, P)``
drawing ``P`` i.i.d. points of :math:`\mu` for SGD (3.1). Where the dimension allows the
nodes are a quadrature rule; otherwise they are a fixed i.i.d. sample with equal
weights (a Monte Carlo rule), stated in ``kind``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["CircleUniform", "GaussianMeasure", "SphereUniform", "UniformBox"]


def _product_rule(t, wt, d):
    """Tensor product of a 1-D rule (nodes t, weights wt) in d dimensions: (Q, d), (Q,)."""
    wt = wt / wt.sum()
    nodes = np.stack([g.ravel() for g in np.meshgrid(*([t] * d), indexing="ij")], axis=-1)
    weights = np.prod(np.stack([g.ravel() for g in np.meshgrid(*([wt] * d), indexing="ij")]),
                      axis=0)
    return nodes, weights


class CircleUniform:
    """Uniform probability on [0, 2π) with the Q-point trapezoid rule (spectral)."""

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
    """Standard normal on R^d; Gauss–Hermite product rule for d ≤ 2, else samples."""

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

    kind = "samples"

    def __init__(self, d: int, Q: int, rng):
        self.d, self.Q = int(d), int(Q)
        self.nodes = self.sample(rng, self.Q)
        self.weights = np.full(self.Q, 1.0 / self.Q)

    def params(self):
        return {"d": self.d, "nodes": self.Q, "kind": self.kind}

    def sample(self, rng, P):
        g = rng.standard_normal((P, self.d))
        return g * (np.sqrt(self.d) / np.linalg.norm(g, axis=-1, keepdims=True))
