r"""Single-layer units (4.9): :math:`\varphi(x, y) = h(a\cdot x + b)`, ``y = (a, b)``."""
from __future__ import annotations

import threading

import numpy as np
from scipy import special

from .base import Kernel, pullback_arrays

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


def _sigmoid_fused(S):
    """In place: S <- h(S) = expit(S)."""
    special.expit(S, out=S)


def _sigmoid_slope(H, D):
    """D <- h' = h (1 - h) from h (as :func:`_sigmoid`)."""
    np.subtract(1.0, H, out=D)
    D *= H


def _tanh_fused(S):
    np.tanh(S, out=S)


def _tanh_slope(H, D):
    """D <- h' = 1 - h h from h (as :func:`_tanh`)."""
    np.multiply(H, H, out=D)
    np.subtract(1.0, D, out=D)


def _relu_fused(S):
    np.maximum(S, 0.0, out=S)


def _relu_slope(H, D):
    """D <- h' = [s > 0] = [h > 0] from h = max(s, 0) (as :func:`_relu`)."""
    np.greater(H, 0.0, out=D)


#: activation -> (in-place h of the pre-activation, h' from h): the fused step's one
#: activation pass (the only transcendental) and its derivative without a second one,
#: the same arithmetic as ``ACTIVATIONS``.
FUSED = {"sigmoid": (_sigmoid_fused, _sigmoid_slope), "tanh": (_tanh_fused, _tanh_slope),
         "relu": (_relu_fused, _relu_slope)}


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
        self._fused, self._slope = FUSED[activation]

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
    #: cache (2**15 float64 = 256 KiB: a block of h and its h' fit a per-core L2).
    _BLOCK = 2**15
    #: Elements of h kept from the forward pass to the backward pass (2**22 float64 =
    #: 32 MiB): all of h while n·Q is at most this, else the last units' (the others'
    #: pre-activations and activation are computed again in the backward pass).
    _KEEP = 2**22
    #: Per-thread work buffers of :meth:`pullback` (one per thread, so concurrent calls
    #: never share them; a class attribute, so they are not pickled with the kernel).
    _scratch = threading.local()

    @classmethod
    def _work(cls, rows, block):
        """This thread's reused buffers: h (rows elements) and a block for h', grown when
        too small (flat; the caller reshapes)."""
        buf = getattr(cls._scratch, "buf", None)
        if buf is None or buf.size < rows + block:
            buf = cls._scratch.buf = np.empty(rows + block)
        return buf[:rows], buf[rows : rows + block]

    def pullback(self, y, a, x, w, f_x):
        r"""Fused pass: one pre-activation product and one activation pass per block.

        With :math:`y_i = (a_i, b_i)` and :math:`\tilde x_q = (x_q, 1)`,
        :math:`s_{iq} = y_i\cdot\tilde x_q` is one matrix product per block of units,
        then one activation pass gives :math:`H = h(s)` (the only transcendental;
        :math:`h'` follows from :math:`h`: :math:`h(1-h)`, :math:`1-h^2`,
        :math:`[h > 0]`), and

        .. math::
            f = a^\top H, \qquad g^c = H (w r), \qquad
            g^y = \big(H' \odot (w r)^\top\big)\,\tilde X

        (:math:`\tilde X` the (Q, N) matrix of the :math:`\tilde x_q`) are matrix
        products: :math:`g^y_i = (\sum_q h'_{iq} w_q r_q x_q, \sum_q h'_{iq} w_q r_q)`.

        Units are taken in cache-sized blocks (``_BLOCK`` elements of the (n, Q) array).
        The forward pass builds each block's ``h`` and adds its share of ``f``; the
        backward pass (``r`` needs the whole ``f``) takes ``h'`` of each block while it
        is in cache and contracts. ``h`` is kept between the passes in a reused
        per-thread buffer for the last ``_KEEP`` elements' worth of units (all of them
        when n·Q ≤ ``_KEEP``: one activation pass in all); the other blocks are built
        again. Memory is O((n + Q)·N) per member plus the buffer, whatever n and Q;
        members (shared nodes (Q, d) or per-member batches (B, Q, d)) are looped, units
        never. Nothing returned is a view of the buffer. Held against
        :func:`particles.kernels.pullback_reference` in ``tests/particles/test_fused.py``.
        """
        y, a, x, w, f_x = pullback_arrays(y, a, x, w, f_x)
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
        kept = min(n, max(rows, self._KEEP // max(Q, 1)))  # units head..n stay in H
        head = n - kept
        rebuilt = [(s, min(s + rows, head)) for s in range(0, head, rows)]
        stored = [(s, min(s + rows, n)) for s in range(head, n, rows)]
        blocks = rebuilt + stored
        H, D = self._work(kept * Q, rows * Q)  # H rows 0.. also serve rebuilt blocks
        H, D = H.reshape(kept, Q), D.reshape(rows, Q)
        f = np.zeros((B, Q))  # stays 0 for n = 0
        share = np.empty(Q)  # one block's share of f
        g_c = np.empty((B, n))
        g_y = np.empty((B, n, N))
        matmul, act, slope = np.matmul, self._fused, self._slope
        for b in range(B):
            XT, Xb = (X1T, X1) if shared else (X1T[b], X1[b])
            yb, ab = y[b], a[b]
            fb = f[b]
            for s, e in blocks:
                o = max(s - head, 0)
                Hb = H[o : o + e - s]
                matmul(yb[s:e], XT, out=Hb)
                act(Hb)
                matmul(ab[s:e], Hb, out=share)
                fb += share
            wr = f[b] - f_x[b]
            wr *= w[b]
            for s, e in stored + rebuilt:
                if s >= head:
                    Hb = H[s - head : e - head]
                else:
                    Hb = H[: e - s]
                    matmul(yb[s:e], XT, out=Hb)
                    act(Hb)
                Db = D[: e - s]
                slope(Hb, Db)
                Db *= wr
                matmul(Hb, wr, out=g_c[b, s:e])
                matmul(Db, Xb, out=g_y[b, s:e])
        return f, g_c, g_y
