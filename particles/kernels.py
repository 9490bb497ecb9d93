r"""Unit kernels :math:`\varphi(x, y)` with their gradients in :math:`y`.

A kernel is the feature map of one unit of the network (1.1),

.. math::  f_n(x) = \frac1n \sum_{i=1}^n c_i \varphi(x, y_i),

with inputs ``x`` of shape ``(..., Q, d)`` and unit positions ``y`` of shape
``(..., n, N)``. Every kernel provides

* ``phi(x, y)`` of shape ``(..., n, Q)``,
* ``phi_grad(x, y)``: ``phi`` and :math:`\nabla_y \varphi` of shape ``(..., n, Q, N)``,
* ``grad_x(x, y)``: :math:`\nabla_x \varphi` of shape ``(..., n, Q, d)`` (teacher targets),
* ``pullback(y, a, x, w, f_x)``: the fused forward/backward pass of the residual form
  of (2.1) (``../shared/THEORY.md`` §2), O(n·Q) work and memory.

The generic ``pullback`` evaluates ``phi_grad`` once; kernels with a cheaper
structure (the circle) override it, and tests hold every override against
:func:`pullback_reference`.
"""
from __future__ import annotations

import threading

import numpy as np
from scipy import special

__all__ = [
    "Kernel",
    "CircleKernel",
    "GaussianRBF",
    "SphereRBF",
    "SigmoidUnit",
    "pullback_reference",
]


def _weighted(x, w):
    """Broadcast nodes (Q, d) or (B, Q, d) and weights (Q,) or (B, Q)."""
    return np.asarray(x, dtype=float), np.asarray(w, dtype=float)


class Kernel:
    """Abstract unit kernel. Subclasses set ``N`` (dimension of y), ``d`` (of x)."""

    N: int
    d: int
    #: True when y is constrained to a manifold (see :meth:`tangent`, :meth:`retract`).
    constrained = False
    #: What this kernel can do beyond ``phi`` and ``phi_grad`` (declared, never discovered):
    #: ``"grad_x"`` (:meth:`grad_x`), ``"hessian_y"`` (:meth:`phi_hessian`), ``"fourier"``
    #: (:meth:`fourier_coefficients`), ``"constraint"`` (:meth:`tangent`, :meth:`retract`).
    capabilities: frozenset = frozenset()

    def phi_hessian(self, x, y):  # pragma: no cover - abstract
        r"""φ, :math:`\nabla_y\varphi` and :math:`\nabla^2_y\varphi` for x (Q, d), y (J, N):
        shapes (J, Q), (J, Q, N), (J, Q, N, N). Declared by ``"hessian_y"``."""
        raise NotImplementedError

    def phi(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def phi_grad(self, x, y):  # pragma: no cover - abstract
        raise NotImplementedError

    def grad_x(self, x, y):  # pragma: no cover - abstract
        r""":math:`\nabla_x\varphi(x, y)`, shape (..., n, Q, d)."""
        raise NotImplementedError

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
        x, w = _weighted(x, w)
        p, dp = self.phi_grad(x, y)
        f = np.einsum("bn,bnq->bq", a, p)
        wr = w * (f - f_x)
        g_c = np.einsum("bnq,bq->bn", p, wr)
        g_y = np.einsum("bnqk,bq->bnk", dp, wr)
        return f, g_c, g_y


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


class CircleKernel(Kernel):
    r"""The circle kernel :math:`\varphi(x, y) = e^{\kappa(\cos(x-y)-1)}` on :math:`[0, 2\pi)`.

    THEORY §7. ``x`` and ``y`` have a trailing axis of length 1. The closed forms of
    ``F`` and ``K`` for the uniform measure are :func:`particles.problems.circle_K` and
    :func:`particles.problems.circle_fourier_F`.
    """

    N = 1
    d = 1

    capabilities = frozenset({"grad_x", "hessian_y"})

    def phi_hessian(self, x, y):
        diff = x[None, :, 0] - y[:, None, 0]
        k = self.kappa
        p = np.exp(k * (np.cos(diff) - 1.0))
        s = np.sin(diff)
        return p, (k * s * p)[..., None], ((k * k * s * s - k * np.cos(diff)) * p)[..., None, None]

    def __init__(self, kappa: float):
        self.kappa = float(kappa)

    def params(self):
        return {"kappa": self.kappa}

    def wrap(self, y):
        return np.mod(y, 2 * np.pi)

    def phi(self, x, y):
        diff = y[..., :, None, 0] - np.swapaxes(x, -1, -2)[..., None, 0, :]
        return np.exp(self.kappa * (np.cos(diff) - 1.0))

    def phi_grad(self, x, y):
        diff = x[..., None, :, 0] - y[..., :, None, 0]  # x - y, shape (..., n, Q)
        p = np.exp(self.kappa * (np.cos(diff) - 1.0))
        # d/dy exp(κ(cos(x−y)−1)) = κ sin(x−y) φ
        return p, (self.kappa * np.sin(diff) * p)[..., None]

    def grad_x(self, x, y):
        p, dp = self.phi_grad(x, y)
        return -dp  # φ depends on x − y only

    #: Elements of one block of E processed while it stays in cache
    #: (2**17 float64 = 1 MiB, inside a per-core L2).
    _BLOCK = 2**17
    #: Elements of E kept from pass 1 to pass 2 (2**20 float64 = 8 MiB): all of E
    #: while n·Q is at most this, else the last particles (the rest is rebuilt).
    _KEEP = 2**20
    #: Per-thread work buffer of :meth:`pullback` (one per thread, so concurrent calls
    #: never share it; a class attribute, so it is not pickled with the kernel).
    _scratch = threading.local()

    @classmethod
    def _work(cls, rows, Q):
        """A (rows, Q) view of this thread's reused work buffer, grown when too small."""
        buf = getattr(cls._scratch, "buf", None)
        if buf is None or buf.size < rows * Q:
            buf = cls._scratch.buf = np.empty(rows * Q)
        return buf[: rows * Q].reshape(rows, Q)

    def pullback(self, y, a, x, w, f_x):
        r"""Fused pass with one transcendental per (particle, node) pair and pass.

        By the angle-addition identities
        :math:`\kappa(\cos(x-y)-1) = [\cos y, \sin y, 1]\cdot\kappa[\cos x, \sin x, -1]`
        (one small matrix product, then one ``exp``), and
        :math:`\sin(x-y) = \sin x\cos y - \cos x\sin y`, so
        :math:`g^y = \kappa(\cos y\, E(w r \sin x) - \sin y\, E(w r\cos x))`:
        both contractions are one product of ``E`` with a (Q, 3) matrix.

        ``E`` is built in cache-sized blocks of particles (``_BLOCK`` elements) in a
        reused per-thread buffer. Pass 1 builds each block, takes its ``exp`` and adds
        its share of ``f``; pass 2 (``r`` needs the whole ``f``) contracts the blocks
        kept in the buffer (the last ``_KEEP`` elements' worth of particles, all of
        ``E`` when n·Q ≤ ``_KEEP``: one ``exp`` in all) and rebuilds the others (a
        second ``exp`` on a cache-resident block costs about what writing ``E`` to
        memory and reading it back costs, without the O(n·Q) memory). Memory is
        O((n + Q)·B) plus the buffer; every BLAS call is small (no BLAS threads are
        woken). Nothing returned is a view of the buffer.
        """
        x, w = _weighted(x, w)
        kappa = self.kappa
        y = np.asarray(y, dtype=float)
        a = np.asarray(a, dtype=float)
        f_x = np.asarray(f_x, dtype=float)
        B, n = y.shape[:2]
        Q = x.shape[-2]
        xx = x[..., 0]
        cx, sx = np.cos(xx), np.sin(xx)
        X = np.empty(xx.shape[:-1] + (3, Q))  # kappa [cos x, sin x, -1]
        np.multiply(cx, kappa, out=X[..., 0, :])
        np.multiply(sx, kappa, out=X[..., 1, :])
        X[..., 2, :] = -kappa
        Y = np.empty((B, n, 3))  # [cos y, sin y, 1]
        np.cos(y[..., 0], out=Y[..., 0])
        np.sin(y[..., 0], out=Y[..., 1])
        Y[..., 2] = 1.0
        if 2 * self._modes() + 1 < Q and n * Q > self._KEEP:
            # E does not fit the kept buffer: the series forward pass saves the second exp
            rows = max(1, min(n, self._BLOCK // max(Q, 1)))
            return self._pullback_series(a, xx, w, f_x, X, Y, rows)
        # per member: shared nodes as they are, batched ones broadcast to B
        X, w, f_x, cx, sx = (
            [v] * B if v.ndim < k else np.broadcast_to(v, (B,) + v.shape[1:])
            for v, k in ((X, 3), (w, 2), (f_x, 2), (cx, 2), (sx, 2))
        )

        rows = max(1, min(n, self._BLOCK // max(Q, 1)))
        kept = min(n, max(rows, self._KEEP // max(Q, 1)))  # particles head..n stay in E
        head = n - kept
        rebuilt = [(s, min(s + rows, head)) for s in range(0, head, rows)]
        stored = [(s, min(s + rows, n)) for s in range(head, n, rows)]
        blocks = rebuilt + stored
        E = self._work(kept, Q)  # rows 0.. also serve as scratch for the rebuilt blocks
        f = np.zeros((B, Q))  # stays 0 for n = 0
        parts = np.empty((len(blocks), Q)) if len(blocks) > 1 else f[:, None, :]
        G = np.empty((B, n, 3))
        R = np.empty((Q, 3))  # [w r, w r sin x, w r cos x]
        matmul, exp = np.matmul, np.exp
        for b in range(B):
            Xb, Yb, ab, Gb, fb = X[b], Y[b], a[b], G[b], f[b]
            Pb = parts if len(blocks) > 1 else parts[b]  # per-block shares of f
            for j, (s, e) in enumerate(blocks):
                o = max(s - head, 0)
                Eb = E[o : o + e - s]
                matmul(Yb[s:e], Xb, out=Eb)
                exp(Eb, out=Eb)
                matmul(ab[s:e], Eb, out=Pb[j])
            if len(blocks) > 1:
                np.sum(parts, axis=0, out=fb)
            r = R[:, 0]
            np.subtract(fb, f_x[b], out=r)
            r *= w[b]
            np.multiply(r, sx[b], out=R[:, 1])
            np.multiply(r, cx[b], out=R[:, 2])
            for s, e in stored:
                matmul(E[s - head : e - head], R, out=Gb[s:e])
            for s, e in rebuilt:
                Eb = E[: e - s]
                matmul(Yb[s:e], Xb, out=Eb)
                exp(Eb, out=Eb)
                matmul(Eb, R, out=Gb[s:e])
        g_c = G[..., 0]
        g_y = Y[..., 0] * G[..., 1]
        g_y -= Y[..., 1] * G[..., 2]
        g_y *= kappa
        return f, g_c, g_y[..., None]

    def _modes(self) -> int:
        r"""Number K of Fourier modes after which :math:`e^{-\kappa}I_k(\kappa)` is below
        1e-17 of :math:`e^{-\kappa}I_0(\kappa)` (the Jacobi–Anger tail), cached."""
        K = getattr(self, "_K", None)
        if K is None:
            k = np.arange(0, 4 * int(self.kappa) + 64)
            small = special.ive(k, self.kappa) < 1e-17 * special.ive(0, self.kappa)
            K = self._K = int(np.argmax(small)) if small.any() else len(k)
        return K

    def _pullback_series(self, a, xx, w, f_x, X, Y, rows):
        r"""One-``exp`` variant of :meth:`pullback` for :math:`2K+1 < Q`.

        The forward pass uses the Jacobi–Anger expansion
        :math:`\varphi(x, y) = \sum_k e^{-\kappa}I_{|k|}(\kappa)e^{ik(x-y)}`:

        .. math::
            f(x) = \sum_{k=0}^{K} \epsilon_k e^{-\kappa}I_k(\kappa)
            \big(\cos kx\, A_k + \sin kx\, B_k\big),\quad
            A_k = \sum_j a_j\cos ky_j,\ B_k = \sum_j a_j\sin ky_j,

        (:math:`\epsilon_0 = 1`, else 2), truncated where the tail is below 1e-17
        (:meth:`_modes`); :math:`\cos ky_j, \sin ky_j` come from the Chebyshev
        recurrence :math:`u_k = 2\cos y\,u_{k-1} - u_{k-2}` (O(n·K), no transcendental).
        With ``r`` known first, a single pass over blocks of ``E`` (build, ``exp``,
        contract with the (Q, 3) matrix) finishes the step.
        """
        B, n = Y.shape[:2]
        Q = xx.shape[-1]
        K = self._modes()
        CS = np.empty((B, 2, K + 1, n))  # cos k y, sin k y
        c1 = Y[..., 0]
        CS[:, 0, 0], CS[:, 1, 0] = 1.0, 0.0
        CS[:, 0, 1], CS[:, 1, 1] = c1, Y[..., 1]
        two_c1 = 2.0 * c1
        for k in range(2, K + 1):
            np.multiply(CS[:, :, k - 1], two_c1[:, None], out=CS[:, :, k])
            CS[:, :, k] -= CS[:, :, k - 2]
        # einsum, not a BLAS gemv: a large gemv wakes BLAS threads, which stall for
        # milliseconds on a busy machine (measured: 8 ms against 0.4 ms at n = 16384)
        AB = np.einsum("bkn,bn->bk", CS.reshape(B, 2 * (K + 1), n), a)[..., None]
        k = np.arange(K + 1)
        coef = special.ive(k, self.kappa) * np.where(k > 0, 2.0, 1.0)
        kx = xx[..., :, None] * k  # (..., Q, K + 1)
        Fx = np.concatenate([np.cos(kx) * coef, np.sin(kx) * coef], axis=-1)
        f = np.matmul(Fx, AB)[..., 0]  # (B, Q)
        cx, sx = np.cos(xx), np.sin(xx)
        R = np.empty((B, Q, 3))  # [w r, w r sin x, w r cos x]
        np.multiply(w, f - f_x, out=R[..., 0])
        np.multiply(R[..., 0], sx, out=R[..., 1])
        np.multiply(R[..., 0], cx, out=R[..., 2])
        E = self._work(rows, Q)
        G = np.empty((B, n, 3))
        matmul, exp = np.matmul, np.exp
        for b in range(B):
            Xb = X[b] if X.ndim == 3 else X
            for s in range(0, n, rows):
                e = min(s + rows, n)
                Eb = E[: e - s]
                matmul(Y[b, s:e], Xb, out=Eb)
                exp(Eb, out=Eb)
                matmul(Eb, R[b], out=G[b, s:e])
        g_y = Y[..., 0] * G[..., 1]
        g_y -= Y[..., 1] * G[..., 2]
        g_y *= self.kappa
        return f, G[..., 0], g_y[..., None]


class GaussianRBF(Kernel):
    r"""Gaussian RBF :math:`\varphi(x, y) = e^{-|x-y|^2/(2\sigma^2)}` on :math:`R^d`, ``N = d``."""

    capabilities = frozenset({"grad_x", "hessian_y"})

    def phi_hessian(self, x, y):
        p, dp = self.phi_grad(x, y)
        diff = x[None, :, :] - y[:, None, :]
        s2 = self.sigma**2
        eye = np.eye(self.N)
        hp = p[..., None, None] * (diff[..., :, None] * diff[..., None, :] / s2**2 - eye / s2)
        return p, dp, hp

    def __init__(self, d: int, sigma: float):
        self.d = self.N = int(d)
        self.sigma = float(sigma)

    def params(self):
        return {"d": self.d, "sigma": self.sigma}

    def phi(self, x, y):
        diff = x[..., None, :, :] - y[..., :, None, :]
        return np.exp(-0.5 * np.sum(diff**2, axis=-1) / self.sigma**2)

    def phi_grad(self, x, y):
        diff = x[..., None, :, :] - y[..., :, None, :]  # (..., n, Q, d)
        p = np.exp(-0.5 * np.sum(diff**2, axis=-1) / self.sigma**2)
        return p, p[..., None] * diff / self.sigma**2

    def grad_x(self, x, y):
        p, dp = self.phi_grad(x, y)
        return -dp  # φ depends on x − y only


class SphereRBF(Kernel):
    r"""RBF on the sphere :math:`|x| = |y| = \sqrt d`, (4.2)–(4.3) with the sign corrected.

    :math:`|x-y|^2 = 2d - 2x\cdot y`, so (4.2) is
    :math:`\varphi(x, y) = e^{-\alpha(d - x\cdot y)}` (THEORY §6: the minus sign of
    (4.3) is a typo). ``y`` is kept on the sphere by the tangential projection
    :meth:`tangent` and the renormalisation :meth:`retract` (the Lagrange multiplier
    :math:`-\lambda_i Y_i` of (4.5)).
    """

    constrained = True
    capabilities = frozenset({"grad_x", "constraint"})

    def __init__(self, d: int, alpha: float):
        self.d = self.N = int(d)
        self.alpha = float(alpha)

    def params(self):
        return {"d": self.d, "alpha": self.alpha}

    def phi(self, x, y):
        xy = np.matmul(y, np.swapaxes(x, -1, -2))
        return np.exp(self.alpha * (xy - self.d))

    def phi_grad(self, x, y):
        p = self.phi(x, y)
        xb = np.broadcast_to(x[..., None, :, :], p.shape + (self.d,))
        return p, self.alpha * p[..., None] * xb

    def grad_x(self, x, y):
        # φ is symmetric in (x, y): ∇_x φ = α y φ
        p = self.phi(x, y)
        yb = np.broadcast_to(y[..., :, None, :], p.shape + (self.d,))
        return self.alpha * p[..., None] * yb

    def tangent(self, y, v):
        yy = np.sum(y * y, axis=-1, keepdims=True)
        return v - (np.sum(v * y, axis=-1, keepdims=True) / yy) * y

    def retract(self, y):
        return y * (np.sqrt(self.d) / np.linalg.norm(y, axis=-1, keepdims=True))


class SigmoidUnit(Kernel):
    r"""Single-layer unit (4.9): :math:`\varphi(x, y) = h(a\cdot x + b)`, ``y = (a, b)``.

    ``h`` is the logistic sigmoid or ``tanh``; ``N = d + 1``.
    """

    capabilities = frozenset({"grad_x", "hessian_y"})

    def phi_hessian(self, x, y):
        s = self._pre(x, y)
        h, dh = self._h(s)
        d2h = -2 * h * dh if self.activation == "tanh" else dh * (1 - 2 * h)
        xe = np.concatenate([np.broadcast_to(x[None], s.shape + (self.d,)),
                             np.ones(s.shape + (1,))], axis=-1)
        return h, dh[..., None] * xe, d2h[..., None, None] * xe[..., :, None] * xe[..., None, :]

    def __init__(self, d: int, activation: str = "sigmoid"):
        if activation not in ("sigmoid", "tanh"):
            raise ValueError(
                f"activation={activation!r} is not known; use 'sigmoid' or 'tanh'"
            )
        self.d = int(d)
        self.N = self.d + 1
        self.activation = activation

    def params(self):
        return {"d": self.d, "activation": self.activation}

    def _pre(self, x, y):
        return np.matmul(y[..., :-1], np.swapaxes(x, -1, -2)) + y[..., :, -1:]

    def _h(self, s):
        if self.activation == "tanh":
            h = np.tanh(s)
            return h, 1.0 - h * h
        h = special.expit(s)
        return h, h * (1.0 - h)

    def phi(self, x, y):
        return self._h(self._pre(x, y))[0]

    def phi_grad(self, x, y):
        h, dh = self._h(self._pre(x, y))
        xb = np.broadcast_to(x[..., None, :, :], h.shape + (self.d,))
        grad = np.concatenate([dh[..., None] * xb, dh[..., None]], axis=-1)
        return h, grad

    def grad_x(self, x, y):
        # ∇_x h(a·x + b) = h'(a·x + b) a
        _, dh = self._h(self._pre(x, y))
        return dh[..., None] * y[..., :, None, :-1]
