r"""The built-in targets written with ``jax.numpy``, for the JAX backend.

:func:`target_fn` returns ``f(x (..., Q, d)) -> (..., Q)`` for the targets of
:mod:`particles.targets` (the same formulas), so that SGD evaluates the target on its
batches inside the compiled step and the kernel form of the interpolation energy (4.5)
takes ∇F = ∇f by autodiff. A target without one (a user's, a file) is evaluated by a
host callback instead (:mod:`particles.jax.stepper`), with its own ``grad``.
"""
from __future__ import annotations

from particles.kernels.base import states_phi

__all__ = ["target_fn"]


def target_fn(target):
    """``f(x)`` in ``jax.numpy`` for a built-in target, or None."""
    import jax.numpy as jnp

    name = type(target).__name__
    if name == "FourierTarget":
        k, a, b = (jnp.asarray(v) for v in (target.k, target.a, target.b))

        def fourier(x):
            kx = x[..., 0, None] * k
            return jnp.cos(kx) @ a + jnp.sin(kx) @ b

        return fourier
    if name == "ThreeSpin":
        A, d = jnp.asarray(target.a), target.d
        return lambda x: jnp.einsum("pqr,...p,...q,...r->...", A, x, x, x) / d
    if name == "TeacherNetwork" and states_phi(target.kernel):
        kernel, y, c = target.kernel, jnp.asarray(target.y), jnp.asarray(target.c)
        return lambda x: jnp.einsum("m,...mq->...q", c, kernel.phi_xp(jnp, x, y)) / len(c)
    if name == "GaussianMixture":
        w, m, s2, d = (jnp.asarray(target.w), jnp.asarray(target.m),
                       jnp.asarray(target.s ** 2), target.d)

        def mixture(x):
            diff = x[..., :, None, :] - m
            g = jnp.exp(-0.5 * jnp.sum(diff ** 2, axis=-1) / s2) * (2 * jnp.pi * s2) ** (-0.5 * d)
            return jnp.sum(w * g, axis=-1)

        return mixture
    return None
