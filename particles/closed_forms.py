r"""Closed forms of F and K of (2.1), where the parts admit them.

.. math::
    F(y) = \int \varphi(x, y) f(x)\,\mu(dx), \qquad
    K(y, y') = \int \varphi(x, y)\varphi(x, y')\,\mu(dx)

(THEORY §1–2, §7). :func:`kernel_form` looks the parts' exact types up in the static table
:data:`CLOSED_FORMS` (kernel, measure, target; never their ``name``) and returns a
:class:`~particles.problem.KernelForm`, or None with the reason; a kernel with its own
``kernel_form(measure, target, energy)`` gives its own:

* circle × circle × fourier: :func:`circle_K`, :func:`circle_fourier_F` (THEORY §7);
* gaussian × lebesgue × gaussian_mixture, any d: :func:`gaussian_line_forms`;
* gaussian × gaussian × teacher: :func:`rbf_gaussian_K`, :func:`teacher_F`;
* sphere × sphere × (3spin | teacher) with ``energy = "interpolation"``: the interpolation
  energy (4.5), :func:`interpolation_form` (not a closed form of the data loss: F := f,
  K := φ, THEORY §6).

Each is tested against quadrature in ``tests/particles/test_closed_forms.py``. These
callables are the slow reference; each form also carries the fused velocity of
:mod:`particles.kernelforms` (``KernelForm.fused``, O(n²) work without (n, n, N) arrays),
held against them in ``tests/particles/test_fused_kform.py``.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from scipy import special

from particles import kernelforms
from particles.engine import config as C
from particles.problem import KernelForm
from particles.kernels import CircleKernel, GaussianRBF, SphereRBF
from particles.measures import CircleUniform, GaussianMeasure, Lebesgue, SphereUniform
from particles.targets import FourierTarget, GaussianMixture, TeacherNetwork, ThreeSpin

__all__ = ["CLOSED_FORMS", "kernel_form", "circle_quadrature_error", "check_circle_quadrature",
           "QUADRATURE_TOL", "circle_fourier_F", "circle_K", "rbf_gaussian_K",
           "teacher_F", "interpolation_form", "gaussian_line_forms"]


# -- circle × circle × fourier ------------------------------------------------------------
def circle_fourier_F(kernel, target):
    r"""Closed-form F(y) and ∇F(y) of THEORY §7 for a Fourier target:
    :math:`F(y) = \sum_k e^{-\kappa}I_k(\kappa)(a_k\cos ky + b_k\sin ky)`; y (..., n, 1)."""
    k = target.k
    ik = special.ive(k, kernel.kappa)  # e^{-κ} I_k(κ)

    def F(y):
        ky = y[..., 0, None] * k
        return (np.cos(ky) * ik) @ target.a + (np.sin(ky) * ik) @ target.b

    def grad_F(y):
        ky = y[..., 0, None] * k
        return ((-np.sin(ky) * ik * k) @ target.a + (np.cos(ky) * ik * k) @ target.b)[..., None]

    return F, grad_F


def circle_K(kernel):
    r"""Closed-form :math:`K(y, y') = e^{-2\kappa}I_0(2\kappa|\cos\frac{y-y'}2|)` and ∇₁K;
    y (..., n, 1), y2 (..., m, 1) -> (..., n, m) and (..., n, m, 1)."""
    kap = kernel.kappa

    def K(y, y2):
        dy = y[..., :, None, 0] - y2[..., None, :, 0]
        z = 2 * kap * np.abs(np.cos(dy / 2))
        return special.ive(0, z) * np.exp(z - 2 * kap)

    def grad_K(y, y2):
        dy = y[..., :, None, 0] - y2[..., None, :, 0]
        cz = np.cos(dy / 2)
        z = 2 * kap * np.abs(cz)
        dz = -kap * np.sign(cz) * np.sin(dy / 2)
        return (special.ive(1, z) * np.exp(z - 2 * kap) * dz)[..., None]

    return K, grad_K


def _circle(kernel, measure, target):
    F, grad_F = circle_fourier_F(kernel, target)
    K, grad_K = circle_K(kernel)
    return KernelForm(F, grad_F, K, grad_K, "closed forms, uniform mu (THEORY §7)",
                      kernelforms.circle_velocity(kernel.kappa, F, grad_F))


#: Relative error of F or K that a quadrature may make: the finest difference a check of
#: the report resolves is the sampling error of an ensemble mean of f_n, sigma/sqrt(n S) of
#: f's scale sigma; with at most n S = 1e10 (10^4 seeds of 10^6 particles) that is 1e-5 of
#: f's scale. An error of the problem's F or K ten times below it changes no verdict.
QUADRATURE_TOL = 1e-6
#: errors below this are round-off: no warning
_QUIET = 1e-13

log = logging.getLogger("particles")


def circle_quadrature_error(kappa, Q, cos=(), sin=()):
    r"""Relative errors of F and K of the circle kernel by the Q-node trapezoid rule.

    The rule integrates :math:`e^{ikx}` exactly unless Q divides k. The product
    :math:`\varphi(x, y)\varphi(x, y')` has the Fourier coefficients
    :math:`e^{-2\kappa}I_k(2\kappa|\cos\frac{y-y'}2|)` in x (Jacobi–Anger), so the
    error of K is at most :math:`2\sum_{m\ge1}e^{-2\kappa}I_{mQ}(2\kappa)`, relative to
    :math:`K(y, y) = e^{-2\kappa}I_0(2\kappa)`. For F with a Fourier target of
    coefficients :math:`a_j, b_j`, the aliased modes give at most
    :math:`\sum_j w_j\sum_{m\ge1}(e^{-\kappa}I_{mQ-j}(\kappa) + e^{-\kappa}I_{mQ+j}
    (\kappa))`, :math:`w_j = |a_j| + |b_j|`, relative to :math:`\sum_j w_j`.

    Returns
    -------
    (eF, eK) : floats
    """
    kappa = float(kappa)
    M = int(min(1e5, math.ceil((math.sqrt(4 * kappa * 750) + 10) / Q) + 2))
    mQ = Q * np.arange(1, M + 1)
    with np.errstate(all="ignore"):
        eK = 2 * np.sum(special.ive(mQ, 2 * kappa)) / special.ive(0, 2 * kappa)
        n = max(len(cos), len(sin))
        w = np.zeros(n)
        w[:len(cos)] += np.abs(cos)
        w[:len(sin)] += np.abs(sin)
        eF = 0.0
        if n and w.sum() > 0:
            j = np.arange(n)[:, None]
            al = special.ive(np.abs(mQ - j), kappa) + special.ive(mQ + j, kappa)
            eF = float(w @ al.sum(1) / w.sum())
    # beyond the range of ive (kappa ~ 1e300) the rule resolves nothing
    return tuple(float(e) if math.isfinite(e) else math.inf for e in (eF, eK))


def check_circle_quadrature(kappa, Q, key, cos=(), sin=(), kappa_key="kappa"):
    """Refuse ``Q`` trapezoid nodes for the circle kernel when the error of F or K
    (:func:`circle_quadrature_error`) exceeds :data:`QUADRATURE_TOL`, saying how large it
    is and the nodes (or the kappa) that pass; below it, one warning line with its size.

    Returns
    -------
    (eF, eK)
    """
    eF, eK = circle_quadrature_error(kappa, Q, cos, sin)
    err = max(eF, eK)
    what = f"F {eF:.1e}, K {eK:.1e}"
    if not err > QUADRATURE_TOL:
        if err > _QUIET:
            log.warning("%s=%d trapezoid nodes integrate the circle kernel (kappa=%g) with a "
                        "relative error of %s (below %.0e, which no check resolves)",
                        key, Q, kappa, what, QUADRATURE_TOL)
        return eF, eK
    q = Q  # the fewest nodes that pass: doubling, then bisection (the error falls with Q)
    while max(circle_quadrature_error(kappa, q, cos, sin)) > QUADRATURE_TOL and q < 10**7:
        q *= 2
    lo = max(Q, q // 2)
    while lo < q:
        mid = (lo + q) // 2
        if max(circle_quadrature_error(kappa, mid, cos, sin)) > QUADRATURE_TOL:
            lo = mid + 1
        else:
            q = mid
    k_lo, k_hi = 1e-8, float(kappa)  # the largest kappa that passes with Q nodes
    for _ in range(60):
        mid = math.sqrt(k_lo * k_hi)
        ok = max(circle_quadrature_error(mid, Q, cos, sin)) <= QUADRATURE_TOL
        k_lo, k_hi = (mid, k_hi) if ok else (k_lo, mid)
    use_q = f"{key} >= {q} or " if q <= 10**7 else ""
    raise C.ConfigError(
        f"{key}={Q} trapezoid nodes integrate the circle kernel (kappa={kappa:g}) with a "
        f"relative error of {what}, above {QUADRATURE_TOL:.0e} (what the checks resolve); "
        f"use {use_q}{kappa_key} <= {math.floor(k_lo * 1000) / 1000:g}")


# -- gaussian × lebesgue × gaussian_mixture ------------------------------------------------
def gaussian_line_forms(kernel, target):
    r"""F, ∇F, K, ∇₁K for the Gaussian kernel, :math:`\mu = dx` on :math:`R^d` and a
    Gaussian-mixture target (normalised densities), any d. With A the kernel's prefactor,

    .. math::
        K(y, y') = A^2(\pi\sigma^2)^{d/2} e^{-|y-y'|^2/(4\sigma^2)},\qquad
        F(y) = A(2\pi\sigma^2)^{d/2}\sum_k w_k N(y; m_k, (\sigma^2 + s_k^2) I).

    y (..., n, d), y2 (..., m, d) -> K (..., n, m), ∇₁K (..., n, m, d); F (..., n),
    ∇F (..., n, d).
    """
    s2, d, A = kernel.sigma**2, kernel.d, kernel.A
    kpref = A * A * (np.pi * s2) ** (0.5 * d)
    fpref = A * (2 * np.pi * s2) ** (0.5 * d)
    v = s2 + target.s**2  # (K,)

    def K(y, y2):
        dm = y[..., :, None, :] - y2[..., None, :, :]
        return kpref * np.exp(-np.sum(dm**2, -1) / (4 * s2))

    def grad_K(y, y2):
        dm = y[..., :, None, :] - y2[..., None, :, :]
        k = kpref * np.exp(-np.sum(dm**2, -1) / (4 * s2))
        return k[..., None] * (-dm / (2 * s2))

    # F is the target's mixture again, each width widened by the kernel: sqrt(v_k)
    widened = GaussianMixture(target.w, target.m, np.sqrt(v))

    def F(y):
        return fpref * widened(y)

    def grad_F(y):
        return fpref * widened.grad(y)

    return F, grad_F, K, grad_K


def _gaussian_line(kernel, measure, target):
    F, grad_F, K, grad_K = gaussian_line_forms(kernel, target)
    return KernelForm(F, grad_F, K, grad_K,
                      "closed forms over mu = dx on R^d (the nodes only evaluate the loss)",
                      kernelforms.gaussian_line_velocity(kernel.sigma, kernel.A, F, grad_F))


# -- gaussian × gaussian × teacher -----------------------------------------------------------
def rbf_gaussian_K(kernel, scale):
    r"""Closed-form :math:`K(y, y')` and :math:`\nabla_1 K` for the Gaussian RBF and
    :math:`\mu = N(0, s^2 I_d)` (THEORY §7):

    .. math::
        K(y, y') = A^2(1 + 2s^2/\sigma^2)^{-d/2}
        \exp\Big(-\frac{|y-y'|^2}{4\sigma^2} - \frac{|y+y'|^2}{4(\sigma^2+2s^2)}\Big).

    Returns callables ``K(y, y2) -> (..., n, m)`` and ``grad_K(y, y2) -> (..., n, m, d)``
    for ``y`` (..., n, d), ``y2`` (..., m, d).
    """
    s2, sig2, d = float(scale) ** 2, kernel.sigma**2, kernel.d
    pref = (1.0 + 2.0 * s2 / sig2) ** (-0.5 * d)
    if getattr(kernel, "normalised", False):
        pref = pref * kernel.A**2
    b = sig2 + 2.0 * s2

    def _parts(y, y2):
        dm = y[..., :, None, :] - y2[..., None, :, :]
        sm = y[..., :, None, :] + y2[..., None, :, :]
        K = pref * np.exp(-np.sum(dm**2, -1) / (4 * sig2) - np.sum(sm**2, -1) / (4 * b))
        return K, dm, sm

    def K(y, y2):
        return _parts(y, y2)[0]

    def grad_K(y, y2):
        k, dm, sm = _parts(y, y2)
        return k[..., None] * (-dm / (2 * sig2) - sm / (2 * b))

    return K, grad_K


def teacher_F(teacher, K, grad_K):
    r""":math:`F(y) = \frac1m\sum_j c^*_j K(y, y^*_j)` and its gradient for a teacher target."""
    ys, cs, m = teacher.y, teacher.c, len(teacher.c)

    def F(y):
        return K(y, ys) @ cs / m

    def grad_F(y):
        return np.einsum("...nmk,m->...nk", grad_K(y, ys), cs) / m

    return F, grad_F


def _gaussian_teacher(kernel, measure, target):
    K, grad_K = rbf_gaussian_K(kernel, measure.scale)
    F, grad_F = teacher_F(target, K, grad_K)
    s2, sig2 = float(measure.scale) ** 2, kernel.sigma**2
    pref = (1.0 + 2.0 * s2 / sig2) ** (-0.5 * kernel.d)  # as in rbf_gaussian_K
    if getattr(kernel, "normalised", False):
        pref = pref * kernel.A**2
    fused = kernelforms.gaussian_teacher_velocity(kernel.sigma, measure.scale, pref,
                                                  target.y, target.c)
    return KernelForm(F, grad_F, K, grad_K,
                      "closed forms for mu = N(0, scale^2 I): exact, where the data form uses "
                      "the nodes", fused)


# -- sphere: the interpolation energy (4.5) ---------------------------------------------------
def interpolation_form(kernel, target):
    r"""The interpolation energy of (4.5): :math:`F := f`, :math:`K := \varphi` (THEORY §6).

    ``K(y, y') = φ(y', y)`` and ``∇₁K(y, y') = ∇_y φ(y', y)`` (for the sphere RBF,
    :math:`\alpha y' e^{\alpha(y\cdot y' - d)}`); ``F = f`` and ``∇F = ∇f`` ((4.6) for the
    3-spin model). Velocities are projected on the tangent space of the sphere by
    :meth:`Problem.velocity`.
    """

    def K(y, y2):
        return kernel.phi(y2, y)

    def grad_K(y, y2):
        return kernel.phi_grad(y2, y)[1]

    return KernelForm(
        F=target,
        grad_F=target.grad,
        K=K,
        grad_K=grad_K,
        description="interpolation energy (4.5): F := f, K := phi (THEORY §6)",
    )


def _interpolation(kernel, measure, target):
    form = interpolation_form(kernel, target)
    tk = getattr(target, "kernel", None)
    if (type(target) is TeacherNetwork and type(tk) is SphereRBF
            and tk.alpha == kernel.alpha and tk.d == kernel.d):
        # F = f is a sum over the teacher's units of the same K: one contraction
        fused = kernelforms.sphere_velocity(kernel.alpha, teacher_y=target.y,
                                            teacher_c=target.c)
    else:
        fused = kernelforms.sphere_velocity(kernel.alpha, form.F, form.grad_F)
    return dataclasses.replace(form, fused=fused)


#: (kernel type, measure type, target type, energy) -> builder(kernel, measure, target),
#: matched on the exact types: a subclass, or a user's part of the same ``name``, is not
#: the built-in part and gets the generic path. A static table: nothing is added to it at
#: import time or later.
CLOSED_FORMS = {
    (CircleKernel, CircleUniform, FourierTarget, "data"): _circle,
    (GaussianRBF, Lebesgue, GaussianMixture, "data"): _gaussian_line,
    (GaussianRBF, GaussianMeasure, TeacherNetwork, "data"): _gaussian_teacher,
    (SphereRBF, SphereUniform, ThreeSpin, "interpolation"): _interpolation,
    (SphereRBF, SphereUniform, TeacherNetwork, "interpolation"): _interpolation,
}


def _label(part):
    t = type(part)
    return f"{getattr(part, 'name', '?')!r} ({t.__name__})"


def kernel_form(kernel, measure, target, energy="data"):
    """The (F, K) form of the parts, or None and the reason.

    The form is matched on the parts' exact types (never on their ``name``, which a user's
    part may share) in :data:`CLOSED_FORMS`; the builders read the parts' declared
    parameters (``kappa``, ``sigma``, ``scale``, ...). A kernel that provides its own
    form, a method ``kernel_form(measure, target, energy)`` returning a
    :class:`~particles.problem.KernelForm` (or None), is asked first.

    Parameters
    ----------
    kernel, measure, target : problem parts
    energy : {"data", "interpolation"}
        ``"interpolation"`` asks for the interpolation energy (4.5) of the sphere.

    Returns
    -------
    form : KernelForm or None
    reason : str
        What the form is, or why there is none (names the parts and the combinations
        that have one).
    """
    own = getattr(kernel, "kernel_form", None)
    if callable(own):
        form = own(measure, target, energy)
        if form is not None:
            if not isinstance(form, KernelForm):
                raise TypeError(f"{type(kernel).__name__}.kernel_form returned a "
                                f"{type(form).__name__}, not a particles.problem.KernelForm")
            return form, form.description or f"the kernel's own (F, K) ({type(kernel).__name__})"
    key = (type(kernel), type(measure), type(target), energy)
    build = CLOSED_FORMS.get(key)
    if build is None:
        have = "; ".join(" x ".join(c.name for c in k[:3])
                         + ("" if k[3] == "data" else f" ({k[3]} energy)")
                         for k in CLOSED_FORMS)
        return None, (f"no closed (F, K) form for kernel {_label(kernel)} x measure "
                      f"{_label(measure)} x target {_label(target)} (energy {energy!r}); "
                      f"closed forms exist for the built-in parts {have}")
    form = build(kernel, measure, target)
    return form, form.description
