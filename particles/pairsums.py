r"""Blocked pair sums :math:`\sum_m k(y_i, y'_m) R_m` of the fused (F, K) form.

The tiles, threads and contractions behind :mod:`particles.kernelforms`:
:func:`exp_contract` (:math:`\sum_m e^{U_i\cdot V_m} R_m` for any thin factors),
:func:`exp_contract_sym` (the same for a symmetric exponent, each pair of tiles
exponentiated once) and :func:`circle_contract` (the circle's Bessel closed form). No
array larger than a tile of ``block`` pair values is built; tiles are sized for the cache
and their products kept below OpenBLAS's threading threshold (as in
:mod:`particles.kernels.expblocks`); threads run over blocks (numpy releases the GIL in
``exp`` and the products). No Python loop runs over single particles or members.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from scipy import special

from particles.engine.parallel import ThreadBuffer, get_threads

__all__ = ["exp_contract", "exp_contract_sym", "circle_contract", "BLOCK", "PARTS"]


#: Elements of one tile of pair values (256 KiB: in L2 with its factors).
BLOCK = 2**15
#: OpenBLAS runs a gemm on one thread while m·n·k < 2**18; a tile's products stay below.
SINGLE = 2**18
#: Threads over row blocks (numpy releases the GIL in ``exp`` and the products): used
#: when a member block has at least ``PARALLEL`` pairs, so small steps pay no start-up;
#: how many is :func:`particles.engine.parallel.get_threads` (``MFPC_THREADS``, ``threads(k)``).
PARALLEL = 2**18
#: Accumulators of a large symmetric sum (:func:`exp_contract_sym`): a fixed number, run
#: on as many threads as allowed, summed in order, so that the result is bitwise the same
#: whatever the number of threads.
PARTS = 2

#: This thread's tile buffer.
_work = ThreadBuffer()


def _in_threads(work, rblocks, threads):
    """``work(part)`` on ``threads`` contiguous parts of the list ``rblocks`` (row blocks
    or tile pairs), each part in its own thread, the first in the caller's."""
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
    """The threads asked for, or by default :func:`~particles.engine.parallel.get_threads` for
    ``PARALLEL`` pairs or more (else 1)."""
    if threads is not None:
        return max(1, int(threads))
    return get_threads() if pairs >= PARALLEL else 1


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
        Threads over the row blocks (default: ``get_threads()`` when a member has at least
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


def exp_contract_sym(U, V, R, *, block=None, threads=None):
    r""":func:`exp_contract` for a symmetric exponent, :math:`U_i\cdot V_{\cdot j} =
    U_j\cdot V_{\cdot i}` (the units' own sums, m = n): each tile of pairs (I, J) with
    I < J is exponentiated once and serves both :math:`S_I \mathrel{+}= T R_J` and
    :math:`S_J \mathrel{+}= T^\top R_I`, so a step takes n(n + t)/2 ``exp`` (t the tile
    side) instead of n². Square tiles of at most ``block`` pairs; from ``PARALLEL`` pairs
    the tile pairs are cut into :data:`PARTS` contiguous parts (whatever the number of
    threads), each with its own accumulator, summed in order at the end: the threads only
    choose who runs a part, so the result is bitwise the same for any number of threads.

    Parameters and result as :func:`exp_contract`, with V of shape (B, k, n) and R of
    shape (B, n, r).
    """
    B, n, k = U.shape
    r = R.shape[-1]
    S = np.zeros((B, n, r))
    if n == 0 or B == 0:
        return S
    elements = max(1, min(BLOCK if block is None else int(block), SINGLE // max(k, r, 1)))
    t = max(1, min(n, math.isqrt(elements)))
    mem = max(1, min(B, elements // (t * t)))
    mblocks = [(b, min(b + mem, B)) for b in range(0, B, mem)]
    edges = [(i, min(i + t, n)) for i in range(0, n, t)]
    pairs = [(I, J) for a, I in enumerate(edges) for J in edges[a:]]
    matmul, exp = np.matmul, np.exp
    nparts = min(PARTS, len(pairs)) if n * n // 2 >= PARALLEL else 1
    cuts = [p * len(pairs) // nparts for p in range(nparts + 1)]
    parts = [pairs[a:b] for a, b in zip(cuts, cuts[1:])]
    accs = [S] + [np.zeros((B, n, r)) for _ in parts[1:]]

    def work(p):
        part, Sl = parts[p], accs[p]
        buf = _work(elements)
        St = np.empty((mem, t, r))
        for b0, b1 in mblocks:
            bb = b1 - b0
            for (i0, i1), (j0, j1) in part:
                T = buf[: bb * (i1 - i0) * (j1 - j0)].reshape(bb, i1 - i0, j1 - j0)
                matmul(U[b0:b1, i0:i1], V[b0:b1, :, j0:j1], out=T)
                exp(T, out=T)
                out = St[:bb, : i1 - i0]
                matmul(T, R[b0:b1, j0:j1], out=out)
                Sl[b0:b1, i0:i1] += out
                if j0 != i0:
                    out = St[:bb, : j1 - j0]
                    matmul(np.swapaxes(T, 1, 2), R[b0:b1, i0:i1], out=out)
                    Sl[b0:b1, j0:j1] += out

    _in_threads(lambda ps: [work(p) for p in ps], list(range(nparts)),
                min(nparts, _threads(threads, n * n // 2)))
    for Sl in accs[1:]:
        S += Sl
    return S
