r"""A problem: kernel :math:`\varphi`, data measure :math:`\mu`, target :math:`f`, initial law.

The problem knows the mathematics of one training task and nothing of time stepping:
the network on the nodes, the loss (1.2), and the gradient-descent velocity field of
(2.1) in residual form (THEORY §2) or, when asked, in the kernel form with ``F`` and
``K`` (the O(n²) form, used for the interpolation energy (4.5) on the sphere).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Problem", "KernelForm"]


@dataclass(frozen=True)
class KernelForm:
    r"""The (F, K) form of (2.1): callables of ``y`` (B, n, N).

    ``F(y) -> (B, n)``, ``grad_F(y) -> (B, n, N)``, ``K(y, y2) -> (B, n, m)``,
    ``grad_K(y, y2) -> (B, n, m, N)`` (gradient in the first argument).
    """

    F: Any
    grad_F: Any
    K: Any
    grad_K: Any
    description: str = ""


@dataclass(frozen=True)
class Problem:
    r"""One training problem.

    Parameters
    ----------
    kind : str
        Name used in configs and attrs (``"circle"``, ``"rbf"``, ...).
    kernel : particles.kernels.Kernel
    measure : object
        Data measure with ``nodes`` (Q, d), ``weights`` (Q,) and ``sample(rng, P)``.
    target : callable
        ``f(x)`` on nodes (..., Q, d) -> (..., Q).
    y_law, c_law : objects with ``sample(rng, n)``
        The initial law :math:`\rho_{in} = \rho_y \otimes \rho_c`.
    kernel_form : KernelForm or None
        The closed or prescribed (F, K) of (2.1), if the problem has one.
    """

    kind: str
    kernel: Any
    measure: Any
    target: Any
    y_law: Any
    c_law: Any
    kernel_form: KernelForm | None = None
    info: dict = field(default_factory=dict)

    @property
    def N(self) -> int:
        return self.kernel.N

    @property
    def x(self) -> np.ndarray:
        """Evaluation nodes, shape (Q, d)."""
        return self.measure.nodes

    @property
    def w(self) -> np.ndarray:
        """Evaluation weights, shape (Q,)."""
        return self.measure.weights

    @property
    def f_x(self) -> np.ndarray:
        """Target on the nodes, shape (Q,)."""
        return self._f_x

    def __post_init__(self):
        object.__setattr__(self, "_f_x", np.asarray(self.target(self.measure.nodes), float))

    def params(self) -> dict:
        return {
            "kind": self.kind,
            "kernel": type(self.kernel).__name__,
            **{f"kernel.{k}": v for k, v in self.kernel.params().items()},
            **{f"measure.{k}": v for k, v in self.measure.params().items()},
            **self.info,
        }

    # -- sampling -------------------------------------------------------------------
    def sample_init(self, rng, n):
        """Draw ``n`` i.i.d. units from :math:`\\rho_{in}`: y (n, N), c (n,)."""
        y = self.kernel.retract(np.asarray(self.y_law.sample(rng, n), float))
        c = np.asarray(self.c_law.sample(rng, n), float)
        return y, c

    # -- network and loss -------------------------------------------------------------
    def network(self, y, a, x=None):
        r"""Network :math:`\sum_i a_i\varphi(x, y_i)` on nodes; ``a = c/n`` for particles.

        y (B, n, N), a (B, n) -> (B, Q). Chunked over particles: O(n·Q) time,
        bounded memory.
        """
        x = self.x if x is None else x
        B, n = a.shape
        out = np.zeros((B, x.shape[-2]))
        chunk = max(1, 2**22 // max(1, B * x.shape[-2]))
        for s in range(0, n, chunk):
            p = self.kernel.phi(x, y[:, s : s + chunk])
            out += np.einsum("bn,bnq->bq", a[:, s : s + chunk], p)
        return out

    def loss(self, f_net):
        r"""Loss (1.2) :math:`\tfrac12\|f_{net} - f\|^2_\mu` on the nodes, f_net (..., Q)."""
        return 0.5 * np.sum(self.w * (f_net - self.f_x) ** 2, axis=-1)

    # -- velocity field ---------------------------------------------------------------
    def velocity(self, y, c, a, *, x=None, w=None, form="data"):
        r"""Gradient-descent velocity of (2.1) for units (y, c) with charges ``a``.

        .. math::
            \dot c_i = -\langle\varphi(\cdot, y_i), r\rangle_\mu, \qquad
            \dot y_i = -c_i\langle\nabla_y\varphi(\cdot, y_i), r\rangle_\mu,
            \qquad r = \textstyle\sum_j a_j c_j\varphi(\cdot, y_j) - f

        with ``a = 1/n`` for particles (so that :math:`\sum_j a_j c_j\varphi = f_n`) and
        quadrature weights for characteristics. ``form="kernel"`` evaluates the same
        field through ``F`` and ``K`` (2.1), O(n²). ``x``, ``w`` replace the measure's
        nodes by a batch (SGD (3.1)). Velocities of constrained kernels are projected on
        the tangent space (the Lagrange multiplier of (4.5)).

        Parameters
        ----------
        y : ndarray, shape (B, n, N)
        c : ndarray, shape (B, n)
        a : ndarray, shape (B, n) or scalar
            Unit weights (``1/n``).

        Returns
        -------
        vy : ndarray, shape (B, n, N)
        vc : ndarray, shape (B, n)
        """
        a = np.broadcast_to(a, c.shape)
        if form == "kernel":
            kf = self.kernel_form
            if kf is None:
                raise ValueError(
                    f"problem {self.kind!r} has no closed (F, K) form; use dynamics.form = 'data'"
                )
            ac = a * c
            vc = kf.F(y) - np.einsum("bnm,bm->bn", kf.K(y, y), ac)
            gy = kf.grad_F(y) - np.einsum("bnmk,bm->bnk", kf.grad_K(y, y), ac)
            vy = c[..., None] * gy
        else:
            if x is None:
                x, w, f_x = self.x, self.w, self.f_x
            else:
                f_x = self.target(x)
            _, g_c, g_y = self.kernel.pullback(y, a * c, x, w, f_x)
            vc = -g_c
            vy = -c[..., None] * g_y
        return self.kernel.tangent(y, vy), vc
