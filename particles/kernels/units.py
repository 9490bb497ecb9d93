r"""Single-layer units (4.9): :math:`\varphi(x, y) = h(a\cdot x + b)`, ``y = (a, b)``."""
from __future__ import annotations

import threading

import numpy as np
from scipy import special

from .base import Kernel, _weighted

__all__ = ["SigmoidUnit", "ACTIVATIONS"]


def _sigmoid(s):
    h = special.expit(s)
    dh = h * (1.0 - h)
    return h, dh, dh * (1 - 2 * h)


def _tanh(s):
    h = np.tanh(s)
    dh = 1.0 - h * h
    return h, dh, -2 * h * dh


def _relu(s):
    return np.maximum(s, 0.0), (s > 0).astype(float), None  # h'' is a Dirac at 0


#: activation -> h(s) returning (h, h', h''): the one place each h and its derivatives
#: are written. relu has no h'' (a Dirac), so it declares no "hessian_y".
ACTIVATIONS = {"sigmoid": _sigmoid, "tanh": _tanh, "relu": _relu}


def _sigmoid_fused(S, D):
    """In place: S <- h(S) = expit(S), D <- h'(S) = h (1 - h) (same as :func:`_sigmoid`)."""
    special.expit(S, out=S)
    np.subtract(1.0, S, out=D)
    D *= S


def _tanh_fused(S, D):
    """In place: S <- tanh(S), D <- 1 - h h (same as :func:`_tanh`)."""
    np.tanh(S, out=S)
    np.multiply(S, S, out=D)
    np.subtract(1.0, D, out=D)


def _relu_fused(S, D):
    """In place: D <- [S > 0], S <- max(S, 0) (same as :func:`_relu`)."""
    np.greater(S, 0.0, out=D)
    np.maximum(S, 0.0, out=S)


#: activation -> in-place pass (S, D) giving h in S and h' in D from the pre-activation
#: S: the fused step's one activation pass, the same arithmetic as ``ACTIVATIONS``.
FUSED = {"sigmoid": _sigmoid_fused, "tanh": _tanh_fused, "relu": _relu_fused}


class SigmoidUnit(Kernel):
    r"""Single-layer unit (4.9): :math:`\varphi(x, y) = h(a\cdot x + b)`, ``y = (a, b)``.

    ``h`` is the logistic sigmoid, ``tanh`` or ``relu`` (the config kind is the
    activation's name); ``N = d + 1``.
    """

    def __init__(self, d: int, activation: str = "sigmoid"):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation={activation!r} is not known; use one of {sorted(ACTIVATIONS)}"
            )
        self.d = int(d)
        self.N = self.d + 1
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self._fused = FUSED[activation]

    @property
    def name(self):
        return self.activation

    @property
    def capabilities(self):
        if self.activation == "relu":
            return frozenset({"grad_x"})
        return frozenset({"grad_x", "hessian_y"})

    def params(self):
        return {"d": self.d, "activation": self.activation}

    def _pre(self, x, y):
        return np.matmul(y[..., :-1], np.swapaxes(x, -1, -2)) + y[..., :, -1:]

    def _h(self, s):
        h, dh, _ = self._act(s)
        return h, dh

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

    def phi_hessian(self, x, y):
        if "hessian_y" not in self.capabilities:
            return super().phi_hessian(x, y)
        s = self._pre(x, y)
        h, dh, d2h = self._act(s)
        xe = np.concatenate([np.broadcast_to(x[None], s.shape + (self.d,)),
                             np.ones(s.shape + (1,))], axis=-1)
        return h, dh[..., None] * xe, d2h[..., None, None] * xe[..., :, None] * xe[..., None, :]

    #: Elements of one block of the (units, nodes) arrays processed while it stays in
    #: cache (2**15 float64 = 256 KiB: the block's S and D together fit a per-core L2).
    _BLOCK = 2**15
    #: Elements of h and h' kept from the forward pass to the backward pass (2**22
    #: float64 = 32 MiB each): all of them while n·Q is at most this, else the last
    #: units' (the others' pre-activations and activation are computed again).
    _KEEP = 2**22
    #: Per-thread work buffers of :meth:`pullback` (one per thread, so concurrent calls
    #: never share them; a class attribute, so they are not pickled with the kernel).
    _scratch = threading.local()

    @classmethod
    def _work(cls, rows, Q):
        """Two (rows, Q) views (h, h') of this thread's reused buffer, grown when small."""
        buf = getattr(cls._scratch, "buf", None)
        if buf is None or buf.size < 2 * rows * Q:
            buf = cls._scratch.buf = np.empty(2 * rows * Q)
        m = rows * Q
        return buf[:m].reshape(rows, Q), buf[m : 2 * m].reshape(rows, Q)

    def pullback(self, y, a, x, w, f_x):
        r"""Fused pass: one pre-activation product and one activation pass per block.

        With :math:`y_i = (a_i, b_i)` and :math:`\tilde x_q = (x_q, 1)`,
        :math:`s_{iq} = y_i\cdot\tilde x_q` is one matrix product per block of units;
        one activation pass gives :math:`h(s)` and :math:`h'(s)` together, and

        .. math::
            f = a^\top H, \qquad g^c = H (w r), \qquad
            g^y = \big(H' \odot (w r)^\top\big)\,\tilde X

        (:math:`\tilde X` the (Q, N) matrix of the :math:`\tilde x_q`) are matrix
        products: :math:`g^y_i = (\sum_q h'_{iq} w_q r_q x_q, \sum_q h'_{iq} w_q r_q)`.

        Units are taken in cache-sized blocks (``_BLOCK`` elements of the (n, Q)
        arrays). The forward pass builds each block's ``h`` and ``h'`` and adds its share
        of ``f``; the backward pass (``r`` needs the whole ``f``) contracts the blocks
        kept in a reused per-thread buffer (the last ``_KEEP`` elements' worth of units,
        all of them when n·Q ≤ ``_KEEP``: one activation pass in all) and builds the
        others again. Memory is O((n + Q)·N) per member plus the buffer, whatever n and
        Q; members (shared nodes (Q, d) or per-member batches (B, Q, d)) are looped, units
        never. Nothing returned is a view of the buffer. Held against
        :func:`particles.kernels.pullback_reference` in ``tests/particles/test_fused.py``.
        """
        x, w = _weighted(x, w)
        y = np.asarray(y, dtype=float)
        a = np.asarray(a, dtype=float)
        f_x = np.asarray(f_x, dtype=float)
        B, n, N = y.shape
        Q = x.shape[-2]
        # (x, 1) per node: the pre-activation is y @ X1.T, g_y is (h' w r) @ X1
        X1 = np.empty(x.shape[:-1] + (N,))
        X1[..., :-1] = x
        X1[..., -1] = 1.0
        X1T = np.swapaxes(X1, -1, -2)
        shared = X1.ndim == 2
        w = np.broadcast_to(w, (B, Q)) if w.ndim == 2 else [w] * B
        f_x = np.broadcast_to(f_x, (B, Q)) if f_x.ndim == 2 else [f_x] * B

        rows = max(1, min(n, self._BLOCK // max(Q, 1)))
        kept = min(n, max(rows, self._KEEP // max(Q, 1)))  # units head..n stay in H, D
        head = n - kept
        rebuilt = [(s, min(s + rows, head)) for s in range(0, head, rows)]
        stored = [(s, min(s + rows, n)) for s in range(head, n, rows)]
        blocks = rebuilt + stored
        H, D = self._work(kept, Q)  # rows 0.. also serve as scratch for rebuilt blocks
        f = np.zeros((B, Q))  # stays 0 for n = 0
        parts = np.empty((max(len(blocks), 1), Q))
        g_c = np.empty((B, n))
        g_y = np.empty((B, n, N))
        matmul, act = np.matmul, self._fused
        for b in range(B):
            XT, Xb = (X1T, X1) if shared else (X1T[b], X1[b])
            yb, ab = y[b], a[b]
            for j, (s, e) in enumerate(blocks):
                o = max(s - head, 0)
                Hb, Db = H[o : o + e - s], D[o : o + e - s]
                matmul(yb[s:e], XT, out=Hb)
                act(Hb, Db)
                matmul(ab[s:e], Hb, out=parts[j])
            if blocks:
                np.sum(parts[: len(blocks)], axis=0, out=f[b])
            wr = f[b] - f_x[b]
            wr *= w[b]
            for s, e in stored + rebuilt:
                if s >= head:
                    Hb, Db = H[s - head : e - head], D[s - head : e - head]
                else:
                    Hb, Db = H[: e - s], D[: e - s]
                    matmul(yb[s:e], XT, out=Hb)
                    act(Hb, Db)
                matmul(Hb, wr, out=g_c[b, s:e])
                Db *= wr
                matmul(Db, Xb, out=g_y[b, s:e])
        return f, g_c, g_y
