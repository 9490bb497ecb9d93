r"""The circle kernel (THEORY §7) and its fused fast pass."""
from __future__ import annotations

import math

import numpy as np
from scipy import special

from particles.engine import parallel
from particles.engine.parallel import map_blocks, tile_elements
from particles.kernels import expblocks
from particles.kernels.base import Kernel, pullback_arrays

__all__ = ["CircleKernel"]



#: Relative size e^{-κ}I_k(κ) / e^{-κ}I_0(κ) below which a Fourier mode of the circle
#: kernel is negligible: products of φ then reach the trapezoid rule's aliasing at 1e-24.
CIRCLE_MODE_TOL = 1e-12


def circle_modes(kappa, tol=CIRCLE_MODE_TOL):
    """The Fourier modes k < K of φ = exp(κ(cos(x - y) - 1)) above ``tol`` of k = 0
    (``math.inf`` for κ > 1e10, where K exceeds 1e6)."""
    if not kappa <= 1e10:
        return math.inf
    # I_k(κ)/I_0(κ) <= exp(-k^2 / (2(k + κ))): K is below 2 sqrt(2κ log(1/tol)) + 2 log(1/tol)
    L = math.log(1 / tol)
    k = np.arange(int(2 * math.sqrt(2 * kappa * L) + 2 * L) + 32)
    with np.errstate(all="ignore"):
        r = special.ive(k, kappa) / special.ive(0, kappa)
    small = np.flatnonzero(~(r >= tol))
    return int(small[0]) if small.size else len(k)

class CircleKernel(Kernel):
    r"""The circle kernel :math:`\varphi(x, y) = e^{\kappa(\cos(x-y)-1)}` on :math:`[0, 2\pi)`.

    THEORY §7. ``x`` and ``y`` have a trailing axis of length 1. Config kind ``"circle"``
    (key ``kappa``). Translation invariant with exact Fourier coefficients
    :math:`e^{-\kappa}I_k(\kappa)` (Jacobi–Anger). The closed forms of ``F`` and ``K``
    for the uniform measure are :func:`particles.closed_forms.circle_K` and
    :func:`particles.closed_forms.circle_fourier_F`.
    """

    name = "circle"
    N = 1
    d = 1
    y_domain = "circle"
    translation_invariant = True
    capabilities = frozenset({"grad_x", "hessian_y", "fourier"})

    def __init__(self, kappa: float):
        self.kappa = float(kappa)

    def params(self):
        return {"kappa": self.kappa}

    def wrap(self, y):
        return np.mod(y, 2 * np.pi)

    def _g(self, s, order):
        r"""g(s) = e^{κ(cos s − 1)} and its derivatives in y (s = x − y): the one place
        φ and its derivatives are written. ``order`` 0, 1 or 2: returns a tuple of
        φ, ∂_yφ = κ sin(s) φ, ∂²_yφ = (κ² sin² s − κ cos s) φ (as many as asked)."""
        k = self.kappa
        p = np.exp(k * (np.cos(s) - 1.0))
        if order == 0:
            return (p,)
        sn = np.sin(s)
        if order == 1:
            return p, k * sn * p
        return p, k * sn * p, (k * k * sn * sn - k * np.cos(s)) * p

    @staticmethod
    def _diff(x, y):
        """x − y of x (..., Q, 1) and y (..., n, 1): shape (..., n, Q)."""
        return x[..., None, :, 0] - y[..., :, None, 0]

    def phi_xp(self, xp, x, y):
        """φ = exp(κ(cos(x − y) − 1)) against the array namespace ``xp``."""
        return xp.exp(self.kappa * (xp.cos(x[..., None, :, 0] - y[..., :, None, 0]) - 1.0))

    def phi(self, x, y):
        return self.phi_xp(np, x, y)

    def phi_grad(self, x, y):
        p, dp = self._g(self._diff(x, y), 1)
        return p, dp[..., None]

    def grad_x(self, x, y):
        p, dp = self.phi_grad(x, y)
        return -dp  # φ depends on x − y only

    def phi_hessian(self, x, y):
        p, dp, hp = self._g(self._diff(x, y), 2)
        return p, dp[..., None], hp[..., None, None]

    def fourier_coefficients(self, kmax: int) -> np.ndarray:
        r"""Exact :math:`\hat g_k = e^{-\kappa}I_k(\kappa)`, k = 0..kmax (Jacobi–Anger)."""
        return special.ive(np.arange(int(kmax) + 1), self.kappa)

    def pullback(self, y, a, x, w, f_x):
        r"""Fused pass with one transcendental per (particle, node) pair and pass.

        By the angle-addition identities
        :math:`\kappa(\cos(x-y)-1) = [\cos y, \sin y, 1]\cdot\kappa[\cos x, \sin x, -1]`
        (one small matrix product, then one ``exp``), and
        :math:`\sin(x-y) = \sin x\cos y - \cos x\sin y`, so
        :math:`g^y = \kappa(\cos y\, E(w r \sin x) - \sin y\, E(w r\cos x))`:
        both contractions are one product of ``E`` with the (Q, 3) matrix
        :math:`[w r, w r\sin x, w r\cos x]`, which is :func:`.expblocks.exp_pullback`
        with the node coordinates :math:`(\sin x, \cos x)`: blocks of nodes, cache-sized
        tiles of particles, ``E`` kept between the passes in a reused per-thread buffer
        of :data:`~particles.engine.parallel.KEEP` elements (tiles built again beyond
        it), threads over tiles.

        When ``E`` does not fit the kept buffer and the kernel has few Fourier modes
        (:math:`2K + 1 < Q`), the forward pass is the Jacobi–Anger series instead
        (:meth:`_pullback_series`: one ``exp`` in all). Memory is O((n + Q)·B) plus the
        buffer whatever n and Q; every BLAS call is small (no BLAS threads are woken).
        Nothing returned is a view of a buffer.
        """
        y, a, x, w, f_x = pullback_arrays(y, a, x, w, f_x)
        kappa = self.kappa
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
        w = np.broadcast_to(w, np.broadcast_shapes(w.shape, xx.shape[-1:]))
        if X.ndim == 3 and X.shape[0] != B:  # x (1, Q, 1) for every member
            X, xx, w = X[0], xx[0], w if w.ndim == 1 else w[0]
        if f_x.ndim == 2 and f_x.shape[0] != B:
            f_x = f_x[0]
        if 2 * self._modes() + 1 < Q and n * Q > parallel.KEEP:
            # E does not fit the kept buffer: the series forward pass saves the second exp
            return self._pullback_series(a, xx, w, f_x, X, Y)
        xc = np.stack([np.sin(xx), np.cos(xx)], axis=-1)  # R = [w r, w r sin x, w r cos x]
        f, G = expblocks.exp_pullback(Y, X, xc, a, w, f_x)
        return f, G[..., 0], self._g_y(Y, G)

    def _g_y(self, Y, G):
        """g_y = κ (cos y G[2nd] − sin y G[3rd]), shape (B, n, 1)."""
        g_y = Y[..., 0] * G[..., 1]
        g_y -= Y[..., 1] * G[..., 2]
        g_y *= self.kappa
        return g_y[..., None]

    def _modes(self) -> int:
        r"""Number K of Fourier modes after which :math:`e^{-\kappa}I_k(\kappa)` is below
        1e-17 of :math:`e^{-\kappa}I_0(\kappa)` (the Jacobi–Anger tail), cached."""
        K = getattr(self, "_K", None)
        if K is None:
            K = self._K = circle_modes(self.kappa, 1e-17)
        return K

    def _pullback_series(self, a, xx, w, f_x, X, Y):
        r"""One-``exp`` variant of :meth:`pullback` for :math:`2K+1 < Q`.

        The forward pass uses the Jacobi–Anger expansion
        :math:`\varphi(x, y) = \sum_k e^{-\kappa}I_{|k|}(\kappa)e^{ik(x-y)}`:

        .. math::
            f(x) = \sum_{k=0}^{K} \epsilon_k e^{-\kappa}I_k(\kappa)
            \big(\cos kx\, A_k + \sin kx\, B_k\big),\quad
            A_k = \sum_j a_j\cos ky_j,\ B_k = \sum_j a_j\sin ky_j,

        (:math:`\epsilon_0 = 1`, else 2), truncated where the tail is below 1e-17
        (:meth:`_modes`); :math:`\cos ky_j, \sin ky_j` come from the Chebyshev
        recurrence :math:`u_k = 2\cos y\,u_{k-1} - u_{k-2}` (O(n·K), no transcendental),
        in blocks of particles (:data:`~particles.engine.parallel.KEEP` elements, the
        kept buffer's budget, which
        this path does not otherwise use: memory bounded, not O(n·K)),
        summed in block order. With ``r`` known first, a single pass over tiles of ``E``
        (build, ``exp``, contract with the (Q, 3) matrix; threads over tiles, each
        writing its own rows) finishes the step.
        """
        B, n = Y.shape[:2]
        Q = xx.shape[-1]
        K = self._modes()
        AB = np.zeros((B, 2 * (K + 1)))
        chunk = max(1, parallel.KEEP // (2 * (K + 1)), parallel.TILE // (2 * (K + 1)))
        CS = np.empty((B, 2, K + 1, min(n, chunk)))  # cos k y, sin k y on one block
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            C = CS[..., : e - s]
            c1 = Y[:, s:e, 0]
            C[:, 0, 0], C[:, 1, 0] = 1.0, 0.0
            C[:, 0, 1], C[:, 1, 1] = c1, Y[:, s:e, 1]
            two_c1 = 2.0 * c1
            for k in range(2, K + 1):
                np.multiply(C[:, :, k - 1], two_c1[:, None], out=C[:, :, k])
                C[:, :, k] -= C[:, :, k - 2]
            # einsum, not a BLAS gemv: a large gemv wakes BLAS threads, which stall for
            # milliseconds on a busy machine (measured: 8 ms against 0.4 ms at n = 16384)
            AB += np.einsum("bkn,bn->bk", C.reshape(B, 2 * (K + 1), e - s), a[:, s:e])
        k = np.arange(K + 1)
        coef = special.ive(k, self.kappa) * np.where(k > 0, 2.0, 1.0)
        kx = xx[..., :, None] * k  # (..., Q, K + 1)
        Fx = np.concatenate([np.cos(kx) * coef, np.sin(kx) * coef], axis=-1)
        f = np.matmul(Fx, AB[..., None])[..., 0]  # (B, Q)
        cx, sx = np.cos(xx), np.sin(xx)
        R = np.empty((B, Q, 3))  # [w r, w r sin x, w r cos x]
        np.multiply(w, f - f_x, out=R[..., 0])
        np.multiply(R[..., 0], sx, out=R[..., 1])
        np.multiply(R[..., 0], cx, out=R[..., 2])
        rows = max(1, min(n, tile_elements(3) // max(Q, 1)))  # (rows, Q) @ (Q, 3)
        tiles = [(s, min(s + rows, n)) for s in range(0, n, rows)]
        G = np.empty((B, n, 3))
        matmul, exp = np.matmul, np.exp
        for b in range(B):
            Xb = X[b] if X.ndim == 3 else X

            def tile(s, e, b=b, Xb=Xb):
                E = expblocks.tile_scratch((e - s) * Q).reshape(e - s, Q)
                matmul(Y[b, s:e], Xb, out=E)
                exp(E, out=E)
                matmul(E, R[b], out=G[b, s:e])

            for _ in map_blocks(tile, tiles, n * Q):
                pass
        return f, G[..., 0], self._g_y(Y, G)
