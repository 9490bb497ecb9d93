r"""Single-layer units (4.9): :math:`\varphi(x, y) = h(a\cdot x + b)`, ``y = (a, b)``."""
from __future__ import annotations

import numpy as np
from scipy import special

from particles.engine.parallel import ThreadBuffer
from particles.kernels import expblocks
from particles.kernels.base import Kernel, pullback_arrays

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


def _expit_xp(xp, s):
    """The logistic function in the namespace ``xp``: scipy's ``expit`` for numpy, else
    :math:`\tfrac12\tanh(s/2) + \tfrac12` (the same function; XLA's float64 ``tanh`` is
    vectorised, its float64 ``logistic`` 4× slower on AVX2; autodiff gives
    :math:`\tfrac14(1 - \tanh^2(s/2)) = h(1 - h)`, finite for every s)."""
    if xp is np:
        return special.expit(s)
    return 0.5 * xp.tanh(0.5 * s) + 0.5


#: activation -> h(xp, s) against an array namespace: φ's one statement of h (the JAX
#: backend differentiates it). relu is s·[s > 0]: NaN stays NaN and h'(0) = 0 by
#: autodiff, as the hand-written derivative.
ACTIVATIONS_XP = {"sigmoid": _expit_xp, "tanh": lambda xp, s: xp.tanh(s),
                  "relu": lambda xp, s: s * (s > 0)}

#: activation -> h(s) returning (h, h', h''): the hand-written derivatives of the numpy
#: path. relu has no h'' (a Dirac), so it declares no "hessian_y".
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

    def phi_xp(self, xp, x, y):
        """φ = h(a·x + b) against the array namespace ``xp``."""
        s = xp.matmul(y[..., :-1], xp.swapaxes(x, -1, -2)) + y[..., :, -1:]
        return ACTIVATIONS_XP[self.activation](xp, s)

    def _h(self, s):
        h, dh, _ = self._act(s)
        return h, dh

    def phi(self, x, y):
        return self.phi_xp(np, x, y)

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

    #: Per-thread kept buffers of :meth:`pullback` (one per calling thread, so concurrent
    #: calls never share them; a class attribute, so they are not pickled with the kernel).
    _work = ThreadBuffer()

    def pullback(self, y, a, x, w, f_x):
        r"""Fused pass: one pre-activation product and one activation pass per tile.

        With :math:`y_i = (a_i, b_i)` and :math:`\tilde x_q = (x_q, 1)`,
        :math:`s_{iq} = y_i\cdot\tilde x_q` is one matrix product per tile of units and
        nodes, then one activation pass gives :math:`H = h(s)` (the only transcendental;
        :math:`h'` follows from :math:`h`: :math:`h(1-h)`, :math:`1-h^2`,
        :math:`[h > 0]`), and

        .. math::
            f = a^\top H, \qquad g^c = H (w r), \qquad
            g^y = \big(H' \odot (w r)^\top\big)\,\tilde X

        (:math:`\tilde X` the (Q, N) matrix of the :math:`\tilde x_q`) are matrix
        products: :math:`g^y_i = (\sum_q h'_{iq} w_q r_q x_q, \sum_q h'_{iq} w_q r_q)`.

        Blocked by :func:`.expblocks.blocked_pullback` (blocks of nodes, cache-sized
        tiles of units, ``h`` kept between the passes in a reused per-thread buffer of
        :data:`~particles.engine.parallel.KEEP` elements, threads over tiles; the sizes
        of :mod:`particles.engine.parallel`): memory is O((n + Q)·N) per member plus
        the buffer, whatever n and Q; members (shared nodes (Q, d) or per-member batches
        (B, Q, d)) are looped, units never. Nothing returned is a view of a buffer. Held
        against :func:`particles.kernels.pullback_reference` in
        ``tests/particles/test_fused.py``.
        """
        y, a, x, w, f_x = pullback_arrays(y, a, x, w, f_x)
        B, n, N = y.shape
        # (x, 1) per node: the pre-activation is y @ X1.T, g_y is (h' w r) @ X1
        X1 = np.empty(x.shape[:-1] + (N,))
        X1[..., :-1] = x
        X1[..., -1] = 1.0
        X1T = np.ascontiguousarray(np.swapaxes(X1, -1, -2))
        act, slope, matmul = self._fused, self._slope, np.matmul

        def prepare(b, q0, q1, wr):
            return wr, (X1 if X1.ndim == 2 else X1[b])[q0:q1]

        def contract(H, ctx):
            wr, Xq = ctx
            rows, m = H.shape
            out = np.empty((rows, N + 1))
            out[:, 0] = matmul(H, wr)
            D = expblocks.tile_scratch(rows * m, 1).reshape(rows, m)
            slope(H, D)
            D *= wr
            out[:, 1:] = matmul(D, Xq)
            return out

        f, G = expblocks.blocked_pullback(y, X1T, a, w, f_x, act, prepare, contract, N + 1,
                                          work=self._work)
        return f, G[..., 0], G[..., 1:]
