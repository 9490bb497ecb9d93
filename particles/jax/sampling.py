"""SGD batches on the JAX backend: each data measure's sampler written with ``jax.random``.

Member b's batch at step k is drawn from ``fold_in(key_b, k)`` (:mod:`particles.jax.stepper`),
so the numbers depend on the member's key and the step alone, not on the members run
beside it or on how the steps are cut into calls. The laws are those of the measures'
numpy ``sample`` (:mod:`particles.measures`); the numbers are not.
"""
from __future__ import annotations

import math

__all__ = ["sampler"]


def sampler(measure):
    """``draw(key, P, dtype) -> (P, d)`` for ``measure``, or None when it has no JAX
    sampler."""
    import jax
    import jax.numpy as jnp

    name = type(measure).__name__
    if name == "CircleUniform":
        return lambda key, P, dt: jax.random.uniform(key, (P, 1), dt, 0.0, 2 * math.pi)
    if name == "GaussianMeasure":
        return lambda key, P, dt: measure.scale * jax.random.normal(key, (P, measure.d), dt)
    if name == "UniformBox":
        return lambda key, P, dt: jax.random.uniform(key, (P, measure.d), dt, measure.low,
                                                     measure.high)
    if name == "SphereUniform":
        def draw(key, P, dt):
            g = jax.random.normal(key, (P, measure.d), dt)
            return g * (math.sqrt(measure.d) / jnp.linalg.norm(g, axis=-1, keepdims=True))
        return draw
    return None
