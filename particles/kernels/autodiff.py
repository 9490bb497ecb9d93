r"""Derivatives of a kernel's φ by automatic differentiation (JAX).

A kernel states φ once, ``phi_xp(xp, x, y)``, written against an array namespace ``xp``
(``numpy`` or ``jax.numpy``; shapes as :meth:`particles.kernels.Kernel.phi`). From it
this module builds, with ``jax.grad`` and ``jax.hessian`` of the pointwise
:math:`\varphi(x_q, y_i)`, the three derivatives the solvers use:

* :math:`\nabla_y\varphi` (:func:`phi_grad`), shape (..., n, Q, N);
* :math:`\nabla_x\varphi` (:func:`grad_x`), shape (..., n, Q, d);
* :math:`\nabla^2_y\varphi` (:func:`phi_hessian`), x (Q, d), y (J, N) -> (J, Q, N, N).

They serve the JAX backend (every derivative on it comes from here or from the autodiff
of the energy in :mod:`particles.jax.stepper`) and :class:`particles.kernels.AutodiffKernel`,
a user kernel defined by φ alone, on the numpy solvers. The compiled functions are cached
per kernel object. A Hessian across a kink (relu) is 0 almost everywhere by autodiff,
so :class:`~particles.kernels.AutodiffKernel` offers it only to a kernel that declares
``smooth = True``.
"""
from __future__ import annotations

import weakref

import numpy as np

__all__ = ["phi_grad", "grad_x", "phi_hessian", "pair_functions"]

_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def pair_functions(kernel):
    """Compiled ``(p, dp) = f(x (L, Q, d), y (L, n, N))``, ``gx(x, y)`` and
    ``hess(x (Q, d), y (J, N)) -> (p, dp, hp)`` of ``kernel.phi_xp`` (cached)."""
    got = _CACHE.get(kernel)
    if got is not None:
        return got
    from particles.jax import require_jax

    jax = require_jax("the derivatives of a kernel by autodiff")
    jnp = jax.numpy

    def one(xq, yi):  # φ(x_q, y_i) for x_q (d,), y_i (N,)
        return kernel.phi_xp(jnp, xq[None, :], yi[None, :])[0, 0]

    def pairs(fun):  # f(x_q, y_i) -> f over (n, Q), then over a leading axis L
        over_q = jax.vmap(fun, in_axes=(0, None))
        return jax.vmap(jax.vmap(over_q, in_axes=(None, 0)), in_axes=(0, 0))

    def value_grad(xq, yi):
        return jax.value_and_grad(one, argnums=1)(xq, yi)

    def value_grad_hess(xq, yi):
        p, dp = value_grad(xq, yi)
        return p, dp, jax.hessian(one, argnums=1)(xq, yi)

    got = {
        "grad_y": jax.jit(pairs(value_grad)),
        "grad_x": jax.jit(pairs(jax.grad(one, argnums=0))),
        "hessian": jax.jit(lambda x, y: pairs(value_grad_hess)(x[None], y[None])),
    }
    _CACHE[kernel] = got
    return got


def _lead(x, y):
    """x (..., Q, d), y (..., n, N) flattened to a common leading axis L: (L, Q, d),
    (L, n, N) and the leading shape."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    lead = np.broadcast_shapes(x.shape[:-2], y.shape[:-2])
    xs = np.broadcast_to(x, lead + x.shape[-2:]).reshape((-1,) + x.shape[-2:])
    ys = np.broadcast_to(y, lead + y.shape[-2:]).reshape((-1,) + y.shape[-2:])
    return xs, ys, lead


def phi_grad(kernel, x, y):
    r"""φ and :math:`\nabla_y\varphi` by autodiff: (..., n, Q), (..., n, Q, N)."""
    xs, ys, lead = _lead(x, y)
    p, dp = pair_functions(kernel)["grad_y"](xs, ys)
    n, Q, N = ys.shape[1], xs.shape[1], ys.shape[2]
    return (np.asarray(p).reshape(lead + (n, Q)), np.asarray(dp).reshape(lead + (n, Q, N)))


def grad_x(kernel, x, y):
    r""":math:`\nabla_x\varphi` by autodiff: (..., n, Q, d)."""
    xs, ys, lead = _lead(x, y)
    gx = pair_functions(kernel)["grad_x"](xs, ys)
    return np.asarray(gx).reshape(lead + (ys.shape[1], xs.shape[1], xs.shape[2]))


def phi_hessian(kernel, x, y):
    r"""φ, :math:`\nabla_y\varphi`, :math:`\nabla^2_y\varphi` by autodiff for x (Q, d),
    y (J, N): (J, Q), (J, Q, N), (J, Q, N, N)."""
    p, dp, hp = pair_functions(kernel)["hessian"](np.asarray(x, float), np.asarray(y, float))
    return np.asarray(p[0]), np.asarray(dp[0]), np.asarray(hp[0])
