r"""A problem: kernel :math:`\varphi`, data measure :math:`\mu`, target :math:`f`, initial law.

The problem knows the mathematics of one training task and nothing of time stepping:
the network on the nodes, the loss (1.2), and the gradient-descent velocity field of
(2.1) in residual form (THEORY §2) or, when asked, in the kernel form with ``F`` and
``K`` (the O(n²) form, used for the interpolation energy (4.5) on the sphere).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from particles.engine.config import ConfigError

__all__ = ["Problem", "KernelForm"]


@dataclass(frozen=True)
class KernelForm:
    r"""The (F, K) form of (2.1): callables of ``y`` (B, n, N).

    ``F(y) -> (B, n)``, ``grad_F(y) -> (B, n, N)``, ``K(y, y2) -> (B, n, m)``,
    ``grad_K(y, y2) -> (B, n, m, N)`` (gradient in the first argument). ``fused``, when
    given, is ``fused(y, ac) -> (vc, gy)``: the same sums as :meth:`velocity_reference`
    without the (B, n, n, N) array (:mod:`particles.kernelforms`).
    """

    F: Any
    grad_F: Any
    K: Any
    grad_K: Any
    description: str = ""
    fused: Any = None

    def velocity(self, y, ac):
        r""":math:`v^c = F(y) - K(y, y)\,ac` and :math:`g^y = \nabla F(y) -
        \sum_m\nabla_1K(y, y_m)\,ac_m`: y (B, n, N), ac (B, n) -> (B, n), (B, n, N).
        Through ``fused`` when the form has it, else :meth:`velocity_reference`."""
        if self.fused is not None:
            return self.fused(y, ac)
        return self.velocity_reference(y, ac)

    def velocity_reference(self, y, ac):
        """The slow, obviously-correct :meth:`velocity` through ``K`` and ``grad_K``."""
        vc = self.F(y) - np.einsum("bnm,bm->bn", self.K(y, y), ac)
        gy = self.grad_F(y) - np.einsum("bnmk,bm->bnk", self.grad_K(y, y), ac)
        return vc, gy


def _check_parts(kernel, measure, target):
    """Refuse missing parts and parts that disagree on the dimension d of x (a target or a
    kernel of d = 2 on a measure of d = 1), naming both parts."""
    missing = [k for k, v in (("kernel", kernel), ("measure", measure), ("target", target))
               if v is None]
    if missing:
        raise ConfigError(f"Problem needs a kernel, a measure and a target "
                          f"(Problem(kernel=..., measure=..., target=...)); missing: "
                          f"{', '.join(missing)}")
    nodes = np.asarray(getattr(measure, "nodes", None))
    if nodes.ndim != 2:
        raise ConfigError(f"the measure {getattr(measure, 'name', type(measure).__name__)} "
                          f"has nodes of shape {nodes.shape}; expected (Q, d)")
    d = nodes.shape[1]
    for what, part in (("kernel", kernel), ("target", target)):
        pd = getattr(part, "d", None)
        if isinstance(pd, (int, np.integer)) and not isinstance(pd, bool) and pd != d:
            raise ConfigError(
                f"the {what} {getattr(part, 'name', type(part).__name__)} has d = {pd}, the "
                f"measure {getattr(measure, 'name', type(measure).__name__)} d = {d}: the "
                f"parts must agree on the dimension of x; give the {what} d = {d}")


class Problem:
    r"""One training problem, composed from parts.

    Parameters
    ----------
    kernel : particles.kernels.Kernel
    measure : object
        Data measure with ``nodes`` (Q, d), ``weights`` (Q,), ``sample(rng, P)``, ``name``
        and ``capabilities`` (:mod:`particles.measures`).
    target : callable
        ``f(x)`` on nodes (..., Q, d) -> (..., Q) (:mod:`particles.targets`).
    y_law, c_law : objects with ``sample(rng, n)``
        The initial law :math:`\rho_{in} = \rho_y \otimes \rho_c` (:mod:`particles.laws`).
    kernel_form : KernelForm or None
        The closed or prescribed (F, K) of (2.1), if the problem has one
        (:func:`particles.closed_forms.kernel_form`).
    name : str
        The problem's name, as ``[problem] kind`` of a config (``"circle"``, ``"rbf"``,
        ...; ``"parts"`` for a problem composed from part tables); written in attrs.
    info : dict
        Extra entries for the attrs.
    kernel_form_reason : str
        Why there is no kernel form (said when ``form = "kernel"`` is asked for).
    """

    def __init__(self, kernel=None, measure=None, target=None, y_law=None, c_law=None,
                 kernel_form=None, name="parts", info=None, *, kernel_form_reason=None):
        self.name = str(name)
        self.kernel, self.measure, self.target = kernel, measure, target
        self.y_law, self.c_law = y_law, c_law
        self.kernel_form = kernel_form
        self.info = dict(info or {})
        self.kernel_form_reason = kernel_form_reason or (
            "" if kernel_form is not None
            else f"problem {self.name!r} has no closed (F, K) form")
        _check_parts(kernel, measure, target)
        self._f_x = np.asarray(self.target(self.measure.nodes), float)
        if self._f_x.shape != (len(self.measure.nodes),):
            raise ConfigError(
                f"the target {getattr(target, 'name', type(target).__name__)} gives values of "
                f"shape {self._f_x.shape} on the {len(self.measure.nodes)} nodes of the "
                f"measure {getattr(measure, 'name', type(measure).__name__)} (one value per "
                "node expected); give a target of the measure's dimension "
                f"d = {np.shape(measure.nodes)[-1]}")

    def replace(self, **changes) -> "Problem":
        """A new problem with some parts changed. A changed kernel, measure or target
        drops the closed (F, K) form unless ``kernel_form`` is given with it."""
        fields = dict(kernel=self.kernel, measure=self.measure, target=self.target,
                      y_law=self.y_law, c_law=self.c_law, kernel_form=self.kernel_form,
                      name=self.name, info=self.info,
                      kernel_form_reason=self.kernel_form_reason or None)
        if {"kernel", "measure", "target"} & set(changes) and "kernel_form" not in changes:
            fields["kernel_form"] = None
            fields["kernel_form_reason"] = "the parts changed: give kernel_form with them"
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"Problem.replace: unknown part(s) {sorted(unknown)}")
        fields.update(changes)
        return Problem(**fields)

    def capabilities(self) -> frozenset:
        """What this problem offers the solvers (declared by its parts).

        The kernel's capabilities, plus ``"kernel_form"`` when a closed (F, K) form
        exists, ``"sample"`` when the measure samples and the target evaluates off the
        nodes (SGD), ``"fft"`` when the FFT potential serves (the kernel declares
        ``"fourier"``, y on the circle, the measure uniform on the circle).
        """
        caps = set(getattr(self.kernel, "capabilities", ()))
        if self.kernel_form is not None:
            caps.add("kernel_form")
        tcaps = getattr(self.target, "capabilities", {"evaluate"})
        if "sample" in getattr(self.measure, "capabilities", ()) and "evaluate" in tcaps:
            caps.add("sample")
        if ("fourier" in caps and getattr(self.kernel, "y_domain", None) == "circle"
                and getattr(self.measure, "name", None) == "circle"):
            caps.add("fft")
        return frozenset(caps)

    def missing(self, capability: str) -> str:
        """Why the problem lacks ``capability`` ("" when it has it)."""
        if capability in self.capabilities():
            return ""
        if capability == "kernel_form":
            return self.kernel_form_reason
        mname = getattr(self.measure, "name", type(self.measure).__name__)
        tname = getattr(self.target, "name", type(self.target).__name__)
        kname = getattr(self.kernel, "name", type(self.kernel).__name__)
        if capability == "sample":
            return (f"SGD needs a measure that samples and a target that evaluates off the "
                    f"nodes: measure {mname!r} declares {sorted(getattr(self.measure, 'capabilities', ()))}, "
                    f"target {tname!r} declares {sorted(getattr(self.target, 'capabilities', ()))}")
        if capability == "fft":
            return (f"the FFT potential needs a kernel declaring 'fourier' with y on the circle "
                    f"and the uniform circle measure; kernel {kname!r}, measure {mname!r}")
        return f"kernel {kname!r} does not declare {capability!r}"

    def require(self, capability: str, purpose: str):
        """Raise :class:`particles.engine.config.CapabilityError` naming ``capability`` when the
        problem lacks it."""
        if capability not in self.capabilities():
            from particles.engine.config import CapabilityError

            raise CapabilityError(f"{purpose} needs the capability {capability!r}: "
                                  f"{self.missing(capability)}")

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

    def params(self) -> dict:
        return {
            "kind": self.name,
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
    def velocity(self, y, c, a, *, x=None, w=None, form="data", record=None):
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
        record : dict, optional
            When given and still empty, receives ``record["f"]``, the network on the
            problem's own nodes (B, Q) that the data form computes anyway (the loss at no
            extra cost; the divergence check of :mod:`particles.steppers`).

        Returns
        -------
        vy : ndarray, shape (B, n, N)
        vc : ndarray, shape (B, n)
        """
        a = np.broadcast_to(a, c.shape)
        if form == "kernel":
            kf = self.kernel_form
            if kf is None:
                self.require("kernel_form", "dynamics.form = 'kernel'")
            vc, gy = kf.velocity(y, a * c)
            vy = c[..., None] * gy
        else:
            own_nodes = x is None
            if own_nodes:
                x, w, f_x = self.x, self.w, self.f_x
            else:
                f_x = self.target(x)
            f, g_c, g_y = self.kernel.pullback(y, a * c, x, w, f_x)
            if record is not None and own_nodes and not record:
                record["f"] = f
            vc = -g_c
            vy = -c[..., None] * g_y
        return self.kernel.tangent(y, vy), vc
