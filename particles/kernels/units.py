r"""Single-layer units (4.9): :math:`\varphi(x, y) = h(a\cdot x + b)`, ``y = (a, b)``."""
from __future__ import annotations

import numpy as np
from scipy import special

from .base import Kernel

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
