r"""The kernel protocol :math:`\varphi(x, y)` and the slow reference of the fused pass.

A kernel is the feature map of one unit of the network (1.1),

.. math::  f_n(x) = \frac1n \sum_{i=1}^n c_i \varphi(x, y_i),

with inputs ``x`` of shape ``(..., Q, d)`` and unit positions ``y`` of shape
``(..., n, N)``. Every kernel class declares

* ``name``: its config kind (``[problem.kernel] kind``);
* ``N`` (dimension of y), ``d`` (dimension of x);
* ``y_domain``: ``"circle"`` (y periodic on :math:`[0, 2\pi)`), ``"euclidean"`` or
  ``"sphere"``;
* ``capabilities``: what it can do beyond ``phi`` and ``phi_grad``, a frozenset of
  ``"grad_x"`` (:meth:`Kernel.grad_x`), ``"hessian_y"`` (:meth:`Kernel.phi_hessian`),
  ``"fourier"`` (:meth:`Kernel.fourier_coefficients`) and ``"constraint"``
  (:meth:`Kernel.tangent`, :meth:`Kernel.retract` keep y on a manifold). A solver asks
  with :func:`particles.engine.config.require`; capabilities are declared, never discovered.

and implements

* ``phi(x, y)`` of shape ``(..., n, Q)``,
* ``phi_grad(x, y)``: ``phi`` and :math:`\nabla_y \varphi` of shape ``(..., n, Q, N)``,
* ``grad_x(x, y)``: :math:`\nabla_x \varphi` of shape ``(..., n, Q, d)`` (teacher targets),
* ``phi_hessian(x (Q, d), y (J, N))``: ``(p (J, Q), dp (J, Q, N), hp (J, Q, N, N))``,
* ``pullback(y, a, x, w, f_x)``: the fused forward/backward pass of the residual form
  of (2.1) (``THEORY.md`` §2), O(n·Q) work and memory.

The generic :meth:`Kernel.pullback` evaluates ``phi_grad`` once; kernels with a cheaper
structure (the circle) override it, and tests hold every override against
:func:`pullback_reference`. ``docs/kernels.md`` says how to add a kernel.

φ written once: ``phi_xp(xp, x, y)`` states φ against an array namespace ``xp``
(``numpy`` or ``jax.numpy``), and ``tangent_xp``/``retract_xp`` the constraint. Every
built-in kernel's ``phi`` is ``phi_xp(numpy, ...)``; the JAX backend
(:mod:`particles.jax`) takes every derivative of it by autodiff
(:mod:`particles.kernels.autodiff`), while the hand-written ``phi_grad``, ``grad_x``,
``phi_hessian`` and fused ``pullback`` stay the numpy fast path.
:class:`AutodiffKernel` is a kernel defined by ``phi_xp`` alone: its derivatives come
from autodiff (jax installed) on the numpy solvers too.
"""
from __future__ import annotations

import numpy as np

from particles.engine.config import require

__all__ = ["Kernel", "AutodiffKernel", "pullback_reference", "states_phi", "check_kernel"]

#: Points of the fine grid on which :meth:`Kernel.fourier_coefficients` samples g.
FOURIER_POINTS = 4096


def pullback_arrays(y, a, x, w, f_x):
    """The arguments of :meth:`Kernel.pullback` as float arrays, in that order: y
    (B, n, N), a (B, n), nodes (Q, d) or (B, Q, d), weights and targets (Q,) or (B, Q)."""
    return tuple(np.asarray(v, dtype=float) for v in (y, a, x, w, f_x))


class Kernel:
    """Abstract unit kernel (module docstring): subclasses set the declarations below."""

    #: Config kind of the kernel.
    name: str = "kernel"
    N: int
    d: int
    #: ``"circle"``, ``"euclidean"`` or ``"sphere"``.
    y_domain: str = "euclidean"
    #: True when :math:`\varphi(x, y) = g(x - y)` on the circle (opens the default
    #: :meth:`fourier_coefficients`; declare ``"fourier"`` with it).
    translation_invariant: bool = False
    #: Declared capabilities (module docstring).
    capabilities: frozenset = frozenset()

    @property
    def constrained(self) -> bool:
        """True when y is kept on a manifold (declares ``"constraint"``)."""
        return "constraint" in self.capabilities

    def phi(self, x, y):  # pragma: no cover - abstract
        """φ(x, y): x (..., Q, d), y (..., n, N) -> (..., n, Q)."""
        raise NotImplementedError

    def phi_xp(self, xp, x, y):  # pragma: no cover - abstract
        """φ(x, y) written once against the array namespace ``xp`` (``numpy`` or
        ``jax.numpy``): shapes as :meth:`phi`. A kernel that states it runs on the JAX
        backend (:func:`states_phi`)."""
        raise NotImplementedError(
            f"kernel {self.name!r} does not state phi_xp(xp, x, y), φ against an array "
            "namespace (docs/kernels.md)")

    def tangent_xp(self, xp, y, v):
        """:meth:`tangent` against the array namespace ``xp``."""
        return v

    def retract_xp(self, xp, y):
        """:meth:`retract` against the array namespace ``xp``."""
        return y

    def phi_grad(self, x, y):  # pragma: no cover - abstract
        r"""φ and :math:`\nabla_y\varphi`: shapes (..., n, Q), (..., n, Q, N)."""
        raise NotImplementedError

    def grad_x(self, x, y):
        r""":math:`\nabla_x\varphi(x, y)`, shape (..., n, Q, d). Declared by ``"grad_x"``."""
        require(self, "grad_x", "the gradient in x (a teacher target's grad)")

    def phi_hessian(self, x, y):
        r"""φ, :math:`\nabla_y\varphi`, :math:`\nabla^2_y\varphi` for x (Q, d), y (J, N):
        shapes (J, Q), (J, Q, N), (J, Q, N, N). Declared by ``"hessian_y"``."""
        require(self, "hessian_y", "the Hessian in y (the influence method)")

    def fourier_coefficients(self, kmax: int) -> np.ndarray:
        r"""Fourier coefficients :math:`\hat g_k`, k = 0..kmax, shape (kmax + 1,).

        For a translation-invariant circle kernel :math:`\varphi(x, y) = g(x - y)`, g real
        and even, :math:`g(s) = \sum_{k\in Z}\hat g_{|k|}e^{iks}`. This default samples g
        on ``FOURIER_POINTS`` points of :math:`[0, 2\pi)` and takes the FFT (the trapezoid
        rule, spectrally accurate for smooth g); kernels with exact values override it.
        Declared by ``"fourier"``.
        """
        require(self, "fourier", "the Fourier coefficients of a circle kernel")
        if self.y_domain != "circle" or not self.translation_invariant:
            raise NotImplementedError(
                f"kernel {self.name!r} declares 'fourier' but is not a translation-invariant "
                "circle kernel: override fourier_coefficients"
            )
        M = max(FOURIER_POINTS, 4 * (int(kmax) + 1))
        s = (2 * np.pi * np.arange(M) / M)[:, None]
        g = self.phi(s, np.zeros((1, 1)))[0]
        ghat = np.fft.rfft(g).real / M
        return ghat[: int(kmax) + 1]

    # -- manifold constraint (identity for unconstrained kernels) -----------------
    def tangent(self, y, v):
        """Project a velocity ``v`` (..., n, N) on the tangent space at ``y``."""
        return v

    def retract(self, y):
        """Map ``y`` back onto the constraint manifold after a step."""
        return y

    def wrap(self, y):
        """Canonical representative of ``y`` (periodic kernels wrap to [0, 2π))."""
        return y

    def params(self) -> dict:
        """Parameters for the output attrs."""
        return {}

    # -- fused residual pass --------------------------------------------------------
    def pullback(self, y, a, x, w, f_x):
        r"""Network on the nodes and the gradient pull-back of the weighted residual.

        .. math::
            f(x_q) &= \sum_i a_i \varphi(x_q, y_i), \qquad r_q = f(x_q) - f^*(x_q),\\
            g^c_i &= \sum_q w_q \varphi(x_q, y_i) r_q, \qquad
            g^y_i = \sum_q w_q \nabla_y\varphi(x_q, y_i) r_q .

        With ``a = c / n`` the GD velocities of (2.1) in residual form are
        ``dc/dt = -g_c`` and ``dy/dt = -c g_y`` (THEORY §2).

        Parameters
        ----------
        y : ndarray, shape (B, n, N)
        a : ndarray, shape (B, n)
            Charges times weights (``c/n`` for particles, ``c w_j`` for quadrature nodes).
        x : ndarray, shape (Q, d) or (B, Q, d)
        w : ndarray, shape (Q,) or (B, Q)
        f_x : ndarray, shape (Q,) or (B, Q)
            Target on the nodes.

        Returns
        -------
        f : ndarray, shape (B, Q)
        g_c : ndarray, shape (B, n)
        g_y : ndarray, shape (B, n, N)
        """
        y, a, x, w, f_x = pullback_arrays(y, a, x, w, f_x)
        p, dp = self.phi_grad(x, y)
        f = np.einsum("bn,bnq->bq", a, p)
        wr = w * (f - f_x)
        g_c = np.einsum("bnq,bq->bn", p, wr)
        g_y = np.einsum("bnqk,bq->bnk", dp, wr)
        return f, g_c, g_y


def states_phi(kernel) -> bool:
    """True when ``kernel`` states φ once, ``phi_xp(xp, x, y)`` (the JAX backend and
    autodiff need it)."""
    return getattr(type(kernel), "phi_xp", Kernel.phi_xp) is not Kernel.phi_xp


class AutodiffKernel(Kernel):
    r"""A kernel defined by φ alone: ``phi_xp(xp, x, y)`` (and, if y lives on a
    manifold, ``tangent_xp``/``retract_xp``).

    ``phi`` is ``phi_xp(numpy, ...)``; :math:`\nabla_y\varphi`, :math:`\nabla_x\varphi`
    and the Hessian in y come from JAX autodiff of ``phi_xp``
    (:mod:`particles.kernels.autodiff`; jax installed), so the particles (both
    backends), the grid, the characteristics and the influence method run it. Declare
    ``smooth = True`` for the Hessian (``"hessian_y"``): autodiff returns 0 across a
    kink (relu), so a kernel that is not smooth is not offered it. ``capabilities``
    adds ``"grad_x"`` (and ``"hessian_y"`` when smooth) to ``declared``.
    """

    #: φ is twice differentiable in y (opens ``"hessian_y"``).
    smooth: bool = False
    #: Capabilities declared beyond the autodiff ones (``"fourier"``, ``"constraint"``).
    declared: frozenset = frozenset()

    @property
    def capabilities(self):
        return frozenset(self.declared) | {"grad_x"} | ({"hessian_y"} if self.smooth
                                                         else set())

    def phi(self, x, y):
        return self.phi_xp(np, np.asarray(x), np.asarray(y))

    def phi_grad(self, x, y):
        from particles.kernels import autodiff

        return autodiff.phi_grad(self, x, y)

    def grad_x(self, x, y):
        from particles.kernels import autodiff

        return autodiff.grad_x(self, x, y)

    def phi_hessian(self, x, y):
        require(self, "hessian_y", "the Hessian in y (declare smooth = True)")
        from particles.kernels import autodiff

        return autodiff.phi_hessian(self, x, y)

    def tangent(self, y, v):
        return self.tangent_xp(np, y, v)

    def retract(self, y):
        return self.retract_xp(np, y)


def pullback_reference(kernel, y, a, x, w, f_x):
    """Slow, obviously correct :meth:`Kernel.pullback`: loops over members and particles."""
    y = np.asarray(y, float)
    B, n, _ = y.shape
    x = np.asarray(x, float)
    w = np.asarray(w, float)
    xs = np.broadcast_to(x, (B,) + x.shape[-2:])
    ws = np.broadcast_to(w, (B, x.shape[-2]))
    fs = np.broadcast_to(f_x, (B, x.shape[-2]))
    f = np.zeros((B, xs.shape[1]))
    g_c = np.zeros((B, n))
    g_y = np.zeros_like(y)
    for b in range(B):
        for i in range(n):
            p = kernel.phi(xs[b], y[b, i][None, :])[0]
            f[b] += a[b, i] * p
        r = f[b] - fs[b]
        for i in range(n):
            p, dp = kernel.phi_grad(xs[b], y[b, i][None, :])
            g_c[b, i] = np.sum(ws[b] * p[0] * r)
            g_y[b, i] = np.sum((ws[b] * r)[:, None] * dp[0], axis=0)
    return f, g_c, g_y


def check_kernel(kernel, x=None, y=None, *, rng=None, n=3, Q=5, rtol=1e-6):
    r"""Check a kernel's derivatives against central finite differences of its own φ.

    For units ``y`` (n, N) and inputs ``x`` (Q, d) (default: drawn from ``rng`` on the
    kernel's domains), checks that ``phi`` has shape (n, Q) and finite values, that
    ``phi_grad`` returns ``phi`` and :math:`\nabla_y\varphi` (n, Q, N) equal to the central
    differences of ``phi``; and, where declared, ``grad_x`` against the differences in x and
    ``phi_hessian`` against the differences of ``phi_grad``.

    A central difference with step :math:`h` errs by :math:`h^2|\varphi'''|/6` plus the
    round-off :math:`\epsilon|\varphi|/h`; at :math:`h = \epsilon^{1/3} \approx 6\cdot10^{-6}`
    (times the scale of the point) both are near :math:`\epsilon^{2/3} \approx 4\cdot
    10^{-11}` of the kernel's scale for a kernel varying on scale 1 (the built-in kernels
    measure 1e-11 to 1e-9 at points up to 2π), so ``rtol = 1e-6`` of
    the largest value of each derivative fails a wrong derivative, not a right one.

    Parameters
    ----------
    kernel : Kernel
    x : ndarray (Q, d), optional
    y : ndarray (n, N), optional
    rng : numpy.random.Generator, optional
        Draws the default points (default: a generator of seed 0).
    rtol : float

    Returns
    -------
    dict
        The largest relative error of each derivative checked.

    Raises
    ------
    AssertionError
        Naming the method, the largest error and where.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    N, d = int(kernel.N), int(kernel.d)
    if y is None:
        y = (rng.uniform(0, 2 * np.pi, (n, N)) if kernel.y_domain == "circle"
             else rng.standard_normal((n, N)))
        y = kernel.retract(y)
    if x is None:
        x = (rng.uniform(0, 2 * np.pi, (Q, d)) if kernel.y_domain == "circle"
             else rng.standard_normal((Q, d)))
    x, y = np.asarray(x, float), np.asarray(y, float)
    n, Q = len(y), len(x)
    name = type(kernel).__name__
    eps = np.finfo(float).eps ** (1 / 3)

    def array(v, shape, what):
        assert isinstance(v, np.ndarray), f"{name}.{what} returned a {type(v).__name__}"
        assert v.shape == shape, f"{name}.{what} has shape {v.shape}, expected {shape}"
        assert np.all(np.isfinite(v)), f"{name}.{what} has non-finite values"
        return v

    def close(got, ref, what):
        scale = max(np.max(np.abs(ref)), np.finfo(float).tiny)
        err = float(np.max(np.abs(got - ref)) / scale)
        assert err <= rtol, (f"{name}.{what} differs from the finite differences of phi by "
                             f"{err:.2e} of its largest value (tolerance {rtol:g}); "
                             "the derivative is wrong")
        return err

    def diff(f, z, k, axis):
        """Central difference of f in coordinate k of z (rows of z: the axis ``axis`` of
        f's value, n for y, Q for x)."""
        h = np.zeros_like(z)
        h[:, k] = eps * np.maximum(1.0, np.abs(z[:, k]))
        step = 2 * h[:, k].reshape((-1,) + (1,) * (1 - axis))
        return (f(z + h) - f(z - h)) / step.reshape(step.shape + (1,) * (f(z).ndim - 2))

    errs = {}
    p = array(kernel.phi(x, y), (n, Q), "phi(x, y)")
    p2, dp = kernel.phi_grad(x, y)
    array(p2, (n, Q), "phi_grad(x, y)[0]")
    array(dp, (n, Q, N), "phi_grad(x, y)[1]")
    errs["phi_grad[0]"] = close(p2, p, "phi_grad(x, y)[0] (phi)")
    ref = np.stack([diff(lambda z: kernel.phi(x, z), y, k, 0) for k in range(N)], -1)
    errs["phi_grad[1]"] = close(dp, ref, "phi_grad(x, y)[1] (grad_y phi)")
    caps = getattr(kernel, "capabilities", frozenset())
    if "grad_x" in caps:
        gx = array(kernel.grad_x(x, y), (n, Q, d), "grad_x(x, y)")
        ref = np.stack([diff(lambda z: kernel.phi(z, y), x, k, 1) for k in range(d)], -1)
        errs["grad_x"] = close(gx, ref, "grad_x(x, y)")
    if "hessian_y" in caps:
        hp, hdp, hh = kernel.phi_hessian(x, y)
        array(hh, (n, Q, N, N), "phi_hessian(x, y)[2]")
        errs["phi_hessian[0]"] = close(np.asarray(hp), p, "phi_hessian(x, y)[0] (phi)")
        errs["phi_hessian[1]"] = close(np.asarray(hdp), dp, "phi_hessian(x, y)[1] (grad_y phi)")
        ref = np.stack([diff(lambda z: kernel.phi_grad(x, z)[1], y, k, 0) for k in range(N)],
                       -1)
        errs["phi_hessian[2]"] = close(hh, ref, "phi_hessian(x, y)[2] (Hessian in y)")
    return errs
