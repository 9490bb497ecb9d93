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
  contraction :math:`\sum_m e^{u_i\cdot v_m}[w_m, w_m y'_m]` (:func:`exp_contract`): one
  product, one ``exp`` per (unit, unit) pair, one product back, tile by tile;
* a teacher's F is the same sum over the teacher units (THEORY §7:
  :math:`F(y) = \frac1{m}\sum_j c^*_j K(y, y^*_j)`), so the teacher's units join the
  sum with charges :math:`-c^*_j/m` and the step is one contraction;
* the circle's :math:`K = e^{-2\kappa}I_0(2\kappa|\cos\frac{y-y'}2|)` takes
  :math:`\cos\frac{y-y'}2` and :math:`\sin\frac{y-y'}2` from one product of the
  half-angle factors :math:`[\cos\frac y2, \sin\frac y2]` (:func:`circle_contract`);
  the Bessel functions are evaluated once per pair (``i0e``, ``i1e``).

The tiles cover (members, units, other units) blocks of at most ``block`` elements, sized
for the cache and kept below OpenBLAS's threading threshold (as in
:mod:`particles.kernels.expblocks`); no Python loop runs over single particles or
members. Held against the reference in ``tests/particles/test_fused_kform.py``.
"""
from __future__ import annotations

import os
import threading

import numpy as np
from scipy import special

__all__ = ["exp_contract", "circle_contract", "circle_velocity", "gaussian_line_velocity",
           "gaussian_teacher_velocity", "sphere_velocity"]

#: Elements of one tile of pair values (256 KiB: in L2 with its factors).
BLOCK = 2**15
#: OpenBLAS runs a gemm on one thread while m·n·k < 2**18; a tile's products stay below.
SINGLE = 2**18
#: Threads over row blocks (numpy releases the GIL in ``exp`` and the products): used
#: when a member block has at least ``PARALLEL`` pairs, so small steps pay no start-up.
THREADS = min(2, os.cpu_count() or 1)
PARALLEL = 2**18

_scratch = threading.local()


def _work(size):
    """A flat view of this thread's reused tile buffer, grown when too small."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = _scratch.buf = np.empty(size)
    return buf[:size]


def _in_threads(work, rblocks, threads):
    """``work(rblocks_part)`` on ``threads`` contiguous parts of the row blocks, each part
    in its own thread (the first in the caller's); the parts write disjoint rows."""
    cuts = [k * len(rblocks) // threads for k in range(threads + 1)]
    parts = [rblocks[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]
    if len(parts) < 2:
        work(rblocks)
        return
    errors = []

    def guarded(part):
        try:
            work(part)
        except BaseException as e:  # pragma: no cover - re-raised below
            errors.append(e)

    others = [threading.Thread(target=guarded, args=(p,)) for p in parts[1:]]
    for t in others:
        t.start()
    guarded(parts[0])
    for t in others:
        t.join()
    if errors:
        raise errors[0]


def _threads(threads, pairs):
    """The threads asked for, or by default ``THREADS`` for ``PARALLEL`` pairs or more."""
    if threads is not None:
        return max(1, int(threads))
    return THREADS if pairs >= PARALLEL else 1


def _tiles(B, n, m, elements):
    """Blocks (b0, b1), (i0, i1), (j0, j1) covering B × n × m with at most ``elements``
    pairs each (at least one pair): columns first, then rows, then members."""
    cols = max(1, min(m, elements))
    rows = max(1, min(n, elements // cols))
    mem = max(1, min(B, elements // (rows * cols)))
    return ([(b, min(b + mem, B)) for b in range(0, B, mem)],
            [(i, min(i + rows, n)) for i in range(0, n, rows)],
            [(j, min(j + cols, m)) for j in range(0, m, cols)])


def exp_contract(U, V, R, *, block=None, threads=None):
    r"""Blocked :math:`S_{bi} = \sum_m \exp(U_{bi}\cdot V_{b\,\cdot m})\,R_{bm}`.

    Parameters
    ----------
    U : ndarray, shape (B, n, k)
    V : ndarray, shape (B, k, m)
    R : ndarray, shape (B, m, r)
    block : int, optional
        Pair values per tile (default ``BLOCK``, capped so the products stay on one BLAS
        thread); tests force ragged tiles with tiny values.
    threads : int, optional
        Threads over the row blocks (default: ``THREADS`` when a member has at least
        ``PARALLEL`` pairs, else 1).

    Returns
    -------
    S : ndarray, shape (B, n, r)
    """
    B, n, k = U.shape
    m, r = R.shape[-2:]
    S = np.zeros((B, n, r))
    if n == 0 or m == 0 or B == 0:
        return S
    elements = min(BLOCK if block is None else int(block), SINGLE // max(k, r, 1))
    mblocks, rblocks, cblocks = _tiles(B, n, m, elements)
    matmul, exp = np.matmul, np.exp

    def work(rows):
        buf = _work(max(1, elements))
        St = np.empty((B, min(n, max(1, elements)), r))
        for b0, b1 in mblocks:
            for j0, j1 in cblocks:
                Vj, Rj = V[b0:b1, :, j0:j1], R[b0:b1, j0:j1]
                for i0, i1 in rows:
                    T = buf[: (b1 - b0) * (i1 - i0) * (j1 - j0)].reshape(
                        b1 - b0, i1 - i0, j1 - j0)
                    matmul(U[b0:b1, i0:i1], Vj, out=T)
                    exp(T, out=T)
                    out = St[: b1 - b0, : i1 - i0]
                    matmul(T, Rj, out=out)
                    S[b0:b1, i0:i1] += out

    _in_threads(work, rblocks, _threads(threads, n * m))
    return S


def circle_contract(y, y2, w, kappa, *, block=None, threads=None):
    r"""Blocked sums of the circle's closed form (:func:`particles.closed_forms.circle_K`):

    .. math::
        k_i = \sum_m K(y_i, y'_m) w_m, \qquad g_i = \sum_m \partial_1 K(y_i, y'_m) w_m,

    with :math:`K = e^{-2\kappa}I_0(z)`, :math:`z = 2\kappa|\cos\frac{y-y'}2|`,
    :math:`\partial_1K = -\kappa\,\mathrm{sign}(\cos\frac{y-y'}2)\sin\frac{y-y'}2
    \,e^{-2\kappa}I_1(z)`. The half angles come from one product:
    :math:`[\cos\frac y2, \sin\frac y2]\cdot[[\cos\frac{y'}2, -\sin\frac{y'}2],
    [\sin\frac{y'}2, \cos\frac{y'}2]] = [\cos\frac{y-y'}2, \sin\frac{y-y'}2]`
    (|cos| and sign·sin are unchanged by y → y + 2π, so y need not be reduced).

    Parameters
    ----------
    y : ndarray, shape (B, n)
    y2 : ndarray, shape (B, m)
    w : ndarray, shape (B, m)
    kappa : float
    block, threads : int, optional
        As in :func:`exp_contract`.

    Returns
    -------
    k, g : ndarray, shape (B, n)
    """
    B, n = y.shape
    m = y2.shape[-1]
    k = np.zeros((B, n))
    g = np.zeros((B, n))
    if n == 0 or m == 0 or B == 0:
        return k, g
    U = np.stack([np.cos(y / 2), np.sin(y / 2)], axis=-1)  # (B, n, 2)
    c2, s2 = np.cos(y2 / 2), np.sin(y2 / 2)
    # five work arrays per tile: a quarter of BLOCK pairs keeps them in cache together
    elements = max(1, min(BLOCK // 4 if block is None else int(block), SINGLE // 2))
    mblocks, rblocks, cblocks = _tiles(B, n, m, elements)
    wk = w[..., None]
    _in_threads(lambda rows: _circle_tiles(U, c2, s2, wk, kappa, k, g, mblocks, rows,
                                           cblocks, elements),
                rblocks, _threads(threads, n * m))
    return k, g


def _circle_tiles(U, c2, s2, wk, kappa, k, g, mblocks, rblocks, cblocks, elements):
    """The tiles of :func:`circle_contract` over the given row blocks (one thread)."""
    buf = _work(5 * elements)
    for b0, b1 in mblocks:
        for j0, j1 in cblocks:
            mj = j1 - j0
            V = np.empty((b1 - b0, 2, 2 * mj))
            V[:, 0, :mj], V[:, 1, :mj] = c2[b0:b1, j0:j1], s2[b0:b1, j0:j1]
            V[:, 0, mj:], V[:, 1, mj:] = -s2[b0:b1, j0:j1], c2[b0:b1, j0:j1]
            wj = wk[b0:b1, j0:j1]
            for i0, i1 in rblocks:
                size = (b1 - b0) * (i1 - i0) * mj
                CS = buf[: 2 * size].reshape(b1 - b0, i1 - i0, 2 * mj)
                np.matmul(U[b0:b1, i0:i1], V, out=CS)
                cz, sz = CS[..., :mj], CS[..., mj:]
                z = buf[2 * size : 3 * size].reshape(cz.shape)
                e = buf[3 * size : 4 * size].reshape(cz.shape)
                t = buf[4 * size : 5 * size].reshape(cz.shape)
                np.sign(cz, out=t)
                sz *= t  # sign(cos) sin
                np.abs(cz, out=z)
                z *= 2 * kappa
                np.subtract(z, 2 * kappa, out=e)
                np.exp(e, out=e)
                special.i0e(z, out=t)
                t *= e
                k[b0:b1, i0:i1] += np.matmul(t, wj)[..., 0]
                special.i1e(z, out=t)
                t *= e
                t *= sz
                g[b0:b1, i0:i1] -= kappa * np.matmul(t, wj)[..., 0]


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
        S = exp_contract(U, V, _R(yc, ac), block=block, threads=threads)
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
        S = exp_contract(U, V, _R(y2, w), block=block, threads=threads)  # sums of K ac − F
        return -S[..., 0], 2 * p * y * S[..., :1] - q * S[..., 1:]

    return velocity


def sphere_velocity(alpha, F=None, grad_F=None, teacher_y=None, teacher_c=None):
    r"""The fused velocity of the interpolation energy (4.5) on the sphere
    (:func:`particles.closed_forms.interpolation_form`): :math:`K(y, y') =
    e^{\alpha(y\cdot y' - d)}` and :math:`\nabla_1K = \alpha y' K`, so

    .. math::
        \sum_m K(y, y_m)[ac_m, \alpha\,ac_m y_m] = \alpha\text{-scaled columns of }
        e^{[y, 1]\cdot[\alpha y', -\alpha d]}\,[ac, ac\,y'],

    one product, one ``exp`` per pair, one product back. A teacher target of the same
    sphere kernel (F = f, THEORY §6) joins the sum through its units (``teacher_y``,
    ``teacher_c``); otherwise ``F``, ``grad_F`` (the 3-spin model (4.1), (4.6)) are added.
    The caller projects :math:`c\,g^y` on the tangent space, as before.
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
        S = exp_contract(U, V, _R(y2, w), block=block, threads=threads)
        vc, gy = -S[..., 0], -alpha * S[..., 1:]
        if F is not None:
            vc += F(y)
            gy += grad_F(y)
        return vc, gy

    return velocity
