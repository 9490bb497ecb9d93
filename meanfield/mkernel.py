r"""The kernel :math:`M[\rho]` of the closed dynamics of the network, (2.37)–(2.39).

.. math::
    M[\rho](x, x') = \int \big(c^2\,\nabla_y\varphi(x, y)\cdot\nabla_y\varphi(x', y)
        + \varphi(x, y)\,\varphi(x', y)\big)\,\rho(y, c)\,dy\,dc \qquad (2.38)

and :math:`\partial_t f = -\int M[\rho](\cdot, x')(f - f^*)(x')\,d\mu(x')` (2.37). Every
measure used here is a weighted sum of Dirac masses :math:`\rho = \sum_j a_j
\delta_{(y_j, c_j)}`, so one function, :func:`m_kernel`, serves the three sources:

* a particle ensemble member :math:`\rho_n`, weights :math:`a_j = 1/n` (2.3);
* the grid density ``rho_0(t, y, c)``: cell masses (density × cell volume) at the cell
  centres (:func:`grid_units`);
* the characteristic nodes of :mod:`meanfield.characteristics`, weights :math:`w_j`.

With :math:`A_{q,(j,0)} = \sqrt{a_j}\varphi(x_q, y_j)` and
:math:`A_{q,(j,k)} = \sqrt{a_j}\,c_j\,\partial_{y_k}\varphi(x_q, y_j)`, :math:`M = AA^\top`,
symmetric and positive semi-definite by construction; the identity (2.39) is checked by
:func:`identity_239`, which never forms ``M`` on its right-hand side. For particles,
:math:`M[\rho_n] = n\,\nabla_z f_n\cdot\nabla_z f_n` (THEORY §3): :func:`tangent_kernel`
computes the right-hand side from a complex-step Jacobian of :math:`f_n` that uses only
``kernel.phi``, an independent path.

Gradients in ``y`` of constrained kernels (the sphere) are projected on the tangent space,
as the particle velocities are (:meth:`particles.kernels.Kernel.tangent`).

:func:`analysis.checks.mkernel.mkernel_checks` applies all of this to the outputs of
``mfpc run``; tolerances are derived in ``docs/propositions.md``.
"""
from __future__ import annotations

import numpy as np
import xarray as xr


__all__ = [
    "features",
    "m_kernel",
    "operator_spectrum",
    "MOperator",
    "gram_spectrum",
    "identity_239",
    "tangent_kernel",
    "grid_units",
    "min_eigenvalue_ratio",
    "psd_tolerance",
]


def _tangential_grad(kernel, x, y):
    """φ (J, Q) and the tangential ∇_yφ (J, Q, N) at units ``y`` (J, N)."""
    p, dp = kernel.phi_grad(x, y)
    if getattr(kernel, "constrained", False):
        # tangent(y, v) acts on (..., J, N): put Q in front so y broadcasts
        dp = np.moveaxis(kernel.tangent(y[None], np.moveaxis(dp, 1, 0)), 0, 1)
    return p, dp


def features(kernel, x, y, c, weights, *, train=("y", "c")):
    r"""The factor ``A`` of :math:`M = AA^\top`, shape (Q, J (N + 1)); with
    ``train = ("c",)`` (y frozen) only the columns of c, shape (Q, J): M keeps its
    :math:`\varphi\varphi` part.

    Parameters
    ----------
    kernel : particles.kernels.Kernel
    x : ndarray, shape (Q, d)
    y : ndarray, shape (J, N)
    c, weights : ndarray, shape (J,)
        Weights :math:`a_j \ge 0` of the Dirac masses (``1/n``, cell masses, ``w_j``).
    train : tuple of str
        The trained coordinates, ``("y", "c")`` or ``("c",)``.
    """
    y = np.asarray(y, float).reshape(len(c), -1)
    c = np.asarray(c, float)
    a = np.asarray(weights, float)
    if np.any(a < 0):
        raise ValueError("m_kernel needs non-negative weights (a measure)")
    s = np.sqrt(a)
    if "y" not in train:
        return (s[:, None] * kernel.phi(np.asarray(x, float), y[None])[0]).T
    p, dp = _tangential_grad(kernel, np.asarray(x, float), y)
    J, Q, N = dp.shape
    A0 = (s[:, None] * p).T  # (Q, J)
    A1 = ((s * c)[:, None, None] * dp).transpose(1, 0, 2).reshape(Q, J * N)
    return np.concatenate([A0, A1], axis=1)


def m_kernel(kernel, x, y, c, weights, *, chunk: int = 4096, train=("y", "c")):
    r"""The kernel (2.38) of :math:`\rho = \sum_j a_j\delta_{(y_j, c_j)}` on the nodes.

    .. math::
        M(x_q, x_p) = \sum_j a_j\big(c_j^2\nabla_y\varphi(x_q, y_j)\cdot
        \nabla_y\varphi(x_p, y_j) + \varphi(x_q, y_j)\varphi(x_p, y_j)\big)

    over the trained coordinates: with ``train = ("c",)`` (y frozen) only the
    :math:`\varphi\varphi` term, :math:`M_c`.

    Parameters
    ----------
    kernel : particles.kernels.Kernel
    x : ndarray, shape (Q, d)
    y : ndarray, shape (J, N) (or (J,) when N = 1)
    c, weights : ndarray, shape (J,)
    chunk : int
        Units per block (bounded memory for large J).
    train : tuple of str
        The trained coordinates (:func:`features`).

    Returns
    -------
    M : ndarray, shape (Q, Q)
        Symmetric positive semi-definite (a Gram matrix).

    References
    ----------
    (2.38); THEORY §3.
    """
    c = np.asarray(c, float).ravel()
    y = np.asarray(y, float).reshape(len(c), -1)
    a = np.asarray(weights, float).ravel()
    Q = np.asarray(x).shape[0]
    M = np.zeros((Q, Q))
    for s in range(0, len(c), chunk):
        A = features(kernel, x, y[s:s + chunk], c[s:s + chunk], a[s:s + chunk],
                     train=train)
        M += A @ A.T
    return 0.5 * (M + M.T)


class MOperator:
    r"""The operator :math:`r \mapsto \int M(\cdot, x')r(x')\,d\mu(x')` on :math:`L^2(\mu)`
    (the matrix :math:`MW`, :math:`W = \mathrm{diag}(w)`) through the eigen-decomposition
    of the similar symmetric :math:`S = W^{1/2}MW^{1/2} = V\Lambda V^\top`: its
    exponentials :math:`e^{-tMW}` for the lazy prediction (:mod:`meanfield.lazy`) and the
    f-level closure (:mod:`meanfield.closure`).

    Parameters
    ----------
    M : ndarray, shape (Q, Q)
        Symmetric positive semi-definite.
    w : ndarray, shape (Q,)
        Quadrature weights of μ, all positive and finite.
    """

    def __init__(self, M, w):
        w = np.asarray(w, float)
        if not np.all(np.isfinite(w) & (w > 0)):
            raise ValueError("the operator M W needs positive, finite node weights of mu")
        #: sqrt(w)
        self.s = np.sqrt(w)
        S = self.to_l2(M)
        lam, self.V = np.linalg.eigh(0.5 * (S + S.T))
        #: eigenvalues of M W, ascending; round-off negatives of a PSD M set to 0, so
        #: every exponential is a contraction
        self.lam = np.clip(lam, 0.0, None)

    def to_l2(self, K):
        """:math:`W^{1/2}KW^{1/2}`: a kernel on :math:`L^2(\mu)` in the orthonormal basis."""
        return self.s[:, None] * np.asarray(K, float) * self.s[None, :]

    def propagator(self, h):
        r""":math:`W^{1/2}e^{-hMW}W^{-1/2} = Ve^{-h\Lambda}V^\top` (symmetric)."""
        return (self.V * np.exp(-float(h) * self.lam)[None, :]) @ self.V.T

    def apply(self, t, r):
        r""":math:`e^{-tMW}r` for times ``t`` (T,) and r (Q,): shape (T, Q)."""
        t = np.atleast_1d(np.asarray(t, float))
        coef = self.V.T @ (self.s * r)  # (Q,)
        return (np.exp(-np.outer(t, self.lam)) * coef) @ self.V.T / self.s


def operator_spectrum(M, w):
    r"""Eigenvalues of the operator :math:`r \mapsto \int M(\cdot, x') r(x')\,d\mu(x')` on
    :math:`L^2(\mu)`, descending.

    With :math:`W = \mathrm{diag}(w)` the operator is ``M W``; it is similar to the symmetric
    :math:`W^{1/2} M W^{1/2}`, whose ``eigvalsh`` is returned.

    Parameters
    ----------
    M : ndarray, shape (Q, Q)
    w : ndarray, shape (Q,)
        Quadrature weights of μ.

    Returns
    -------
    ndarray, shape (Q,)
    """
    s = np.sqrt(np.asarray(w, float))
    return np.linalg.eigvalsh(s[:, None] * M * s[None, :])[::-1]


def gram_spectrum(kernel, x, w, y, c, weights, *, block_elems: int = 2**22):
    r"""The nonzero spectrum of the operator :math:`M` on :math:`L^2(\mu)`, any number
    of nodes, descending.

    With :math:`M = AA^\top` (:func:`features`, ``A`` of shape (Q, m), m = J (N + 1)) and
    :math:`W = \mathrm{diag}(w)`, the operator ``M W`` is similar to
    :math:`W^{1/2}AA^\top W^{1/2}`, whose nonzero eigenvalues are those of the Gram
    matrix :math:`G = A^\top W A` (m × m): exact, with no cap on Q. ``G`` is accumulated
    over blocks of nodes (at most ``block_elems`` elements of ``A`` at a time), so memory
    is O(m² + block) whatever Q. When Q < m the Q × Q form
    (:func:`operator_spectrum`) is the smaller one and is used instead; either way the
    result has min(Q, m) eigenvalues.

    Parameters
    ----------
    kernel : particles.kernels.Kernel
    x : ndarray, shape (Q, d)
    w : ndarray, shape (Q,)
        Quadrature weights of μ (non-negative).
    y : ndarray, shape (J, N)
    c, weights : ndarray, shape (J,)

    Returns
    -------
    ndarray, shape (min(Q, m),)
    """
    x = np.asarray(x, float)
    x = x.reshape(len(x), -1)
    w = np.asarray(w, float).ravel()
    c = np.asarray(c, float).ravel()
    y = np.asarray(y, float).reshape(len(c), -1)
    Q, m = len(x), len(c) * (y.shape[1] + 1)
    if Q <= m:
        return operator_spectrum(m_kernel(kernel, x, y, c, weights), w)
    G = np.zeros((m, m))
    step = max(1, block_elems // max(1, m))
    for s in range(0, Q, step):
        A = features(kernel, x[s:s + step], y, c, weights)
        G += A.T @ (w[s:s + step, None] * A)
    return np.linalg.eigvalsh(0.5 * (G + G.T))[::-1]


def psd_tolerance(Q: int) -> float:
    r"""Round-off bound for :math:`\lambda_{min}/\lambda_{max}` of a computed PSD matrix.

    The computed :math:`\hat M = fl(AA^\top)` differs from the exact Gram matrix by
    :math:`\|E\|_2 \lesssim Q\,\epsilon\,\|M\|_2`, and ``eigvalsh`` is backward stable
    (its eigenvalues are exact for :math:`\hat M + E'` with
    :math:`\|E'\|_2 \lesssim Q\,\epsilon\,\|M\|_2`). By Weyl's inequality each eigenvalue
    moves by at most :math:`\|E + E'\|_2`, so a true eigenvalue :math:`\ge 0` is computed
    :math:`\ge -c\,Q\,\epsilon\,\lambda_{max}`; ``c = 10`` covers the constants.
    For Q = 64: 1.4e-13.
    """
    return 10.0 * Q * np.finfo(float).eps


def min_eigenvalue_ratio(eigenvalues) -> float:
    r""":math:`\lambda_{min}/\lambda_{max}` of a spectrum (descending or not)."""
    ev = np.asarray(eigenvalues, float)
    top = float(np.max(ev))
    return float(np.min(ev) / top) if top > 0 else float("nan")


def identity_239(kernel, x, w, y, c, weights, r):
    r"""Both sides of (2.39) for test functions ``r``.

    .. math::
        \langle r, M r\rangle_\mu = \sum_{q,p} w_q r_q M_{qp} w_p r_p
        \quad\text{and}\quad
        \int (c^2|\nabla R|^2 + R^2)\,\rho = \sum_j a_j\big(c_j^2|\nabla R(y_j)|^2
        + R(y_j)^2\big),

    :math:`R(y) = \langle r, \varphi(\cdot, y)\rangle_\mu` (2.40). The right side is
    computed from R and ∇R at the units, without M.

    Parameters
    ----------
    r : ndarray, shape (K, Q) or (Q,)

    Returns
    -------
    lhs, rhs : ndarray, shape (K,)
    """
    r = np.atleast_2d(np.asarray(r, float))
    w = np.asarray(w, float)
    M = m_kernel(kernel, x, y, c, weights)
    wr = r * w
    lhs = np.einsum("kq,qp,kp->k", wr, M, wr)
    c = np.asarray(c, float).ravel()
    y = np.asarray(y, float).reshape(len(c), -1)
    p, dp = _tangential_grad(kernel, np.asarray(x, float), y)
    R = wr @ p.T  # (K, J)
    gR = np.einsum("kq,jqn->kjn", wr, dp)  # (K, J, N)
    rhs = (np.asarray(weights, float) * (c**2 * np.sum(gR**2, axis=-1) + R**2)).sum(axis=1)
    return lhs, rhs


def _jacobian_y(kernel, x, y, h_complex=1e-30):
    r"""∂φ(x_q, y_i)/∂y_{ik}, shape (n, Q, N), from ``kernel.phi`` alone.

    Complex step :math:`\mathrm{Im}\,\varphi(x, y + i h e_k)/h` (exact to round-off, no
    cancellation) when ``phi`` is analytic code; otherwise central differences with
    :math:`h = \epsilon^{1/3}` (error about 1e-10). Returns (jacobian, method).
    """
    n, N = y.shape
    out = np.empty((n, x.shape[0], N))
    method = "complex step"
    for k in range(N):
        e = np.zeros(N)
        e[k] = 1.0
        try:
            pc = kernel.phi(x, y + 1j * h_complex * e)
            ok = np.iscomplexobj(pc)
        except (TypeError, ValueError):
            ok = False
        if ok:
            out[:, :, k] = pc.imag / h_complex
        else:
            method = "central differences"
            h = np.cbrt(np.finfo(float).eps) * max(1.0, float(np.max(np.abs(y))))
            out[:, :, k] = (kernel.phi(x, y + h * e) - kernel.phi(x, y - h * e)) / (2 * h)
    return out, method


def tangent_kernel(kernel, x, y, c):
    r""":math:`n\,\nabla_z f_n(x)\cdot\nabla_z f_n(x')` for one particle set, with its method.

    :math:`f_n(x) = \frac1n\sum_i c_i\varphi(x, y_i)`: the Jacobian column of
    :math:`c_i` is :math:`\varphi(x, y_i)/n`, that of :math:`y_{ik}` is
    :math:`c_i\,\partial_{y_k}\varphi(x, y_i)/n`, computed by complex step from
    ``kernel.phi`` (:func:`_jacobian_y`), projected on the tangent space for constrained
    kernels. THEORY §3: this equals :math:`M[\rho_n]`.

    Parameters
    ----------
    x : ndarray, shape (Q, d)
    y : ndarray, shape (n, N)
    c : ndarray, shape (n,)

    Returns
    -------
    K : ndarray, shape (Q, Q)
    method : str
    """
    c = np.asarray(c, float).ravel()
    n = len(c)
    y = np.asarray(y, float).reshape(n, -1)
    x = np.asarray(x, float)
    dphi, method = _jacobian_y(kernel, x, y)
    if getattr(kernel, "constrained", False):
        dphi = np.moveaxis(kernel.tangent(y[None], np.moveaxis(dphi, 1, 0)), 0, 1)
    Jc = kernel.phi(x, y).T / n  # (Q, n)
    Jy = (c[:, None, None] * dphi / n).transpose(1, 0, 2).reshape(x.shape[0], -1)
    J = np.concatenate([Jc, Jy], axis=1)
    return n * (J @ J.T), method


def grid_units(rho, *, drop_zero: bool = True):
    r"""Units of a grid density: cell centres and cell masses.

    Parameters
    ----------
    rho : xarray.DataArray, dims (y, c) or (y_0, ..., y_{N-1}, c)
        Density (mass per cell volume) on uniform cells, coordinates at cell centres, as
        ``rho_0`` of :func:`meanfield.grid.solve.solve_grid` at one time.
    drop_zero : bool
        Drop empty cells (they contribute nothing).

    Returns
    -------
    y : ndarray, shape (J, N)
    c : ndarray, shape (J,)
    mass : ndarray, shape (J,)
        density × cell volume (sums to the grid mass).
    """
    dims = list(rho.dims)
    if dims[-1] != "c":
        raise ValueError(f"grid density must have c as its last dim, got dims {dims}")
    ydims = dims[:-1]
    spacing = []
    for d in dims:
        v = np.asarray(rho[d].values, float)
        dv = np.diff(v)
        if len(v) < 2 or not np.allclose(dv, dv[0], rtol=1e-9, atol=0):
            raise ValueError(f"grid coordinate {d!r} is not uniform; cell volumes unknown")
        spacing.append(float(dv[0]))
    vol = float(np.prod(spacing))
    mesh = np.meshgrid(*[np.asarray(rho[d].values, float) for d in dims], indexing="ij")
    y = np.stack([g.ravel() for g in mesh[:-1]], axis=-1).reshape(-1, len(ydims))
    c = mesh[-1].ravel()
    mass = np.asarray(rho.values, float).ravel() * vol
    if drop_zero:
        keep = mass > 0
        y, c, mass = y[keep], c[keep], mass[keep]
    return y, c, mass
