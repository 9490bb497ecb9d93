r"""Fused velocities of the kernel (F, K) form of (2.1), O(n²) work, bounded memory.

For units (y, c) with charges ``ac`` = a c the (F, K) form of (2.1) is

.. math::
    v^c_i = F(y_i) - \sum_m K(y_i, y_m)\,ac_m, \qquad
    g^y_i = \nabla F(y_i) - \sum_m \nabla_1 K(y_i, y_m)\,ac_m,

(:meth:`particles.problem.Problem.velocity` returns :math:`v^y = c\,g^y`, projected on the
tangent space for constrained kernels). The slow reference (``KernelForm.K`` and
``grad_K`` of :mod:`particles.closed_forms`) materialises (B, n, n) and (B, n, n, N)
arrays; the fused builders here never build an (n, n, N) array and keep at most one tile
of ``block`` pair values:

* every Gaussian and sphere closed form has :math:`K(y, y') = \exp(u(y)\cdot v(y'))`
  for thin factors u, v (the squared distances and inner products as one matrix
  product: :math:`|y-y'|^2 = |y|^2 + |y'|^2 - 2y\cdot y'`,
  :math:`|y+y'|^2 = |y|^2 + |y'|^2 + 2y\cdot y'`) and :math:`\nabla_1 K` a linear
  combination of :math:`K` and :math:`K y'`, so both sums are the columns of one
  contraction :math:`\sum_m e^{u_i\cdot v_m}[w_m, w_m y'_m]`: one product, one ``exp``
  per pair, one product back, tile by tile. K is symmetric, so each pair of tiles is
  exponentiated once and serves both (:func:`.pairsums.exp_contract_sym`): n(n + t)/2
  ``exp`` per step (t ~ 180 the tile side), not n²;
* a teacher's F is the same sum over the teacher units (THEORY §7:
  :math:`F(y) = \frac1{m}\sum_j c^*_j K(y, y^*_j)`), so the teacher's units join the
  sum with charges :math:`-c^*_j/m` (:func:`.pairsums.exp_contract`, no symmetry);
* the circle's :math:`K = e^{-2\kappa}I_0(2\kappa|\cos\frac{y-y'}2|)` takes
  :math:`\cos\frac{y-y'}2` and :math:`\sin\frac{y-y'}2` from one product of the
  half-angle factors :math:`[\cos\frac y2, \sin\frac y2]`
  (:func:`.pairsums.circle_contract`); the Bessel functions are evaluated once per
  ordered pair (``i0e``, ``i1e``).

The tiles, their sizes and the threads are those of :mod:`particles.pairsums`. Held
against the reference in ``tests/particles/test_fused_kform.py``.
"""
from __future__ import annotations

import numpy as np

from particles.pairsums import circle_contract, exp_contract, exp_contract_sym

__all__ = ["circle_velocity", "gaussian_line_velocity", "gaussian_teacher_velocity",
           "sphere_velocity"]


def _empty(y):
    return np.zeros(y.shape[:2]), np.zeros(y.shape)


def circle_velocity(kappa, F, grad_F):
    r"""The fused (F, K) velocity of the circle × circle × fourier closed form (THEORY §7).

    ``F``, ``grad_F``: the closed-form callables of y (B, n, 1) (O(n·k)). Returns
    ``velocity(y (B, n, 1), ac (B, n), *, block=None, threads=None) -> (vc (B, n), gy (B, n, 1))``.
    """

    def velocity(y, ac, *, block=None, threads=None):
        y, ac = np.asarray(y, float), np.asarray(ac, float)
        if y.shape[1] == 0:
            return _empty(y)
        k, g = circle_contract(y[..., 0], y[..., 0], ac, kappa, block=block, threads=threads)
        return F(y) - k, grad_F(y) - g[..., None]

    return velocity


def _others(y, ac, ys=None, cs=None):
    """The units the sums run over: the network's (y, ac) and, for a teacher F, the
    teacher's units with charges −c*/m (so one sum gives K ac − F): (B, m, d), (B, m)."""
    if ys is None:
        return y, ac
    B = y.shape[0]
    yt = np.broadcast_to(ys, (B,) + ys.shape)
    wt = np.broadcast_to(-cs / len(cs), (B, len(cs)))
    return np.concatenate([yt, y], axis=1), np.concatenate([wt, ac], axis=1)


def _sums(U, V, R, m_t, block, threads):
    """Pair sums over the teacher's ``m_t`` columns (plain) and the units' own (symmetric
    exponent: each pair of tiles once)."""
    S = exp_contract_sym(U, V[..., m_t:], R[:, m_t:], block=block, threads=threads)
    if m_t:
        S += exp_contract(U, V[..., :m_t], R[:, :m_t], block=block, threads=threads)
    return S


def _R(y2, w):
    """[w, w y'] of shape (B, m, d + 1)."""
    R = np.empty(y2.shape[:2] + (y2.shape[2] + 1,))
    R[..., 0] = w
    np.multiply(w[..., None], y2, out=R[..., 1:])
    return R


def gaussian_line_velocity(sigma, A, F, grad_F):
    r"""The fused (F, K) velocity of gaussian × lebesgue × gaussian_mixture
    (:func:`particles.closed_forms.gaussian_line_forms`):

    .. math::
        K(y, y') = A^2(\pi\sigma^2)^{d/2}e^{-|y-y'|^2/(4\sigma^2)},\qquad
        \sum_m\nabla_1K(y, y_m)\,ac_m = -\frac{y\,(K ac) - K(ac\,y')}{2\sigma^2}.

    y is first shifted by its members' mean (K depends on y − y' only), so the
    cancellation in |y|² + |y'|² − 2y·y' stays at round-off of the distance. The exponent
    is :math:`[y, \log A' - |y|^2/(4\sigma^2), 1]\cdot[y'/(2\sigma^2), 1,
    -|y'|^2/(4\sigma^2)]` (A' the prefactor); F, ∇F are the widened mixture (O(n·K)).
    Returns ``velocity(y (B, n, d), ac (B, n), *, block=None, threads=None) -> (vc, gy)``.
    """
    s2 = float(sigma) ** 2

    def velocity(y, ac, *, block=None, threads=None):
        y, ac = np.asarray(y, float), np.asarray(ac, float)
        B, n, d = y.shape
        if n == 0:
            return _empty(y)
        logpref = np.log(A * A * (np.pi * s2) ** (0.5 * d))
        yc = y - np.mean(y, axis=1, keepdims=True)
        q = np.sum(yc * yc, axis=-1) / (4 * s2)
        U = np.empty((B, n, d + 2))
        U[..., :d] = yc
        U[..., d] = logpref - q
        U[..., d + 1] = 1.0
        V = np.empty((B, d + 2, n))
        np.multiply(np.swapaxes(yc, 1, 2), 1 / (2 * s2), out=V[:, :d])
        V[:, d] = 1.0
        V[:, d + 1] = -q
        S = _sums(U, V, _R(yc, ac), 0, block, threads)
        vc = F(y) - S[..., 0]
        gy = grad_F(y) + (yc * S[..., :1] - S[..., 1:]) / (2 * s2)
        return vc, gy

    return velocity


def gaussian_teacher_velocity(sigma, scale, pref, teacher_y, teacher_c):
    r"""The fused (F, K) velocity of gaussian × gaussian × teacher
    (:func:`particles.closed_forms.rbf_gaussian_K`, :func:`~particles.closed_forms.teacher_F`).

    With :math:`b = \sigma^2 + 2s^2`, :math:`p = (1/\sigma^2 + 1/b)/4`,
    :math:`q = (1/\sigma^2 - 1/b)/2`:

    .. math::
        K(y, y') = A'\exp\big(-p(|y|^2 + |y'|^2) + q\,y\cdot y'\big), \qquad
        \nabla_1K(y, y') = K\,(q y' - 2p y),

    and F is the same sum over the teacher's units (charges :math:`c^*_j/m`): one
    contraction of :math:`e^{u\cdot v}` against [w, w y'] over the teacher's and the
    network's units together gives :math:`K ac - F` and its gradient.
    Returns ``velocity(y (B, n, d), ac (B, n), *, block=None, threads=None) -> (vc, gy)``.
    """
    s2, sig2 = float(scale) ** 2, float(sigma) ** 2
    b = sig2 + 2.0 * s2
    p, q = 0.25 * (1 / sig2 + 1 / b), 0.5 * (1 / sig2 - 1 / b)
    ys, cs = np.asarray(teacher_y, float), np.asarray(teacher_c, float)

    def velocity(y, ac, *, block=None, threads=None):
        y, ac = np.asarray(y, float), np.asarray(ac, float)
        B, n, d = y.shape
        if n == 0:
            return _empty(y)
        y2, w = _others(y, ac, ys, cs)
        U = np.empty((B, n, d + 2))
        U[..., :d] = y
        U[..., d] = np.log(pref) - p * np.sum(y * y, axis=-1)
        U[..., d + 1] = 1.0
        V = np.empty((B, d + 2, y2.shape[1]))
        np.multiply(np.swapaxes(y2, 1, 2), q, out=V[:, :d])
        V[:, d] = 1.0
        V[:, d + 1] = -p * np.sum(y2 * y2, axis=-1)
        S = _sums(U, V, _R(y2, w), len(cs), block, threads)  # sums of K ac − F
        return -S[..., 0], 2 * p * y * S[..., :1] - q * S[..., 1:]

    return velocity


def sphere_velocity(alpha, F=None, grad_F=None, teacher_y=None, teacher_c=None):
    r"""The fused velocity of the interpolation energy (4.5) on the sphere
    (:func:`particles.closed_forms.interpolation_form`): :math:`K(y, y') =
    e^{\alpha(y\cdot y' - d)}` and :math:`\nabla_1K = \alpha y' K`, so

    .. math::
        S_i = \sum_m e^{[y_i, 1]\cdot[\alpha y_m, -\alpha d]}\,[ac_m, ac_m y_m],
        \qquad v^c = F - S_{\cdot 0}, \qquad g^y = \nabla F - \alpha S_{\cdot 1:},

    one product, one ``exp`` per pair, one product back. A teacher target of the same
    sphere kernel (F = f, THEORY §6) joins the sum through its units (``teacher_y``,
    ``teacher_c``); otherwise ``F``, ``grad_F`` (the 3-spin model (4.1), (4.6)) are added.
    The caller projects :math:`c\,g^y` on the tangent space.
    Returns ``velocity(y (B, n, d), ac (B, n), *, block=None, threads=None) -> (vc, gy)``.
    """
    alpha = float(alpha)
    ys = None if teacher_y is None else np.asarray(teacher_y, float)
    cs = None if teacher_c is None else np.asarray(teacher_c, float)

    def velocity(y, ac, *, block=None, threads=None):
        y, ac = np.asarray(y, float), np.asarray(ac, float)
        B, n, d = y.shape
        if n == 0:
            return _empty(y)
        y2, w = _others(y, ac, ys, cs)
        U = np.empty((B, n, d + 1))
        U[..., :d] = y
        U[..., d] = 1.0
        V = np.empty((B, d + 1, y2.shape[1]))
        np.multiply(np.swapaxes(y2, 1, 2), alpha, out=V[:, :d])
        V[:, d] = -alpha * d
        S = _sums(U, V, _R(y2, w), 0 if cs is None else len(cs), block, threads)
        vc, gy = -S[..., 0], -alpha * S[..., 1:]
        if F is not None:
            vc += F(y)
            gy += grad_F(y)
        return vc, gy

    return velocity
