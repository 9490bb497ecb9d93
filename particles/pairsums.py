r"""Blocked pair sums :math:`\sum_m k(y_i, y'_m) R_m` of the fused (F, K) form.

The tiles, threads and contractions behind :mod:`particles.kernelforms`:
:func:`exp_contract` (:math:`\sum_m e^{U_i\cdot V_m} R_m` for any thin factors),
:func:`exp_contract_sym` (the same for a symmetric exponent, each pair of tiles
exponentiated once) and :func:`circle_contract` (the circle's Bessel closed form). No
array larger than a tile of pair values is built. The tile sizes, the thread pool and
the accumulators of a symmetric sum are the one policy of :mod:`particles.engine.parallel`
(:data:`~particles.engine.parallel.TILE` capped by
:func:`~particles.engine.parallel.tile_elements`, threads from
:data:`~particles.engine.parallel.MIN_WORK` pair terms through
:func:`~particles.engine.parallel.map_blocks`, :data:`~particles.engine.parallel.PARTS`
accumulators); the block partition never depends on the number of threads, so the sums
are bitwise the same for any number. No Python loop runs over single particles or members.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special

from particles.engine import parallel
from particles.engine.parallel import ThreadBuffer, map_blocks, tile_elements

__all__ = ["exp_contract", "exp_contract_sym", "circle_contract"]

#: This thread's tile buffer.
_work = ThreadBuffer()


def _run(fn, blocks, work, threads):
    """``fn(*block)`` for every block (each writes its own outputs), on the pool."""
    for _ in map_blocks(fn, blocks, work, threads):
        pass


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
        Pair values per tile (default :data:`~particles.engine.parallel.TILE`, capped so
        the products stay on one BLAS thread); tests force ragged tiles with tiny values.
    threads : int, optional
        At most this many threads over the row blocks (default
        :func:`~particles.engine.parallel.get_threads`; threads only from
        :data:`~particles.engine.parallel.MIN_WORK` pairs).

    Returns
    -------
    S : ndarray, shape (B, n, r)
    """
    B, n, k = U.shape
    m, r = R.shape[-2:]
    S = np.zeros((B, n, r))
    if n == 0 or m == 0 or B == 0:
        return S
    elements = tile_elements(max(k, r), block)
    mblocks, rblocks, cblocks = _tiles(B, n, m, elements)
    matmul, exp = np.matmul, np.exp

    def rows(i0, i1):
        buf = _work(elements)
        for b0, b1 in mblocks:
            out = np.empty((b1 - b0, i1 - i0, r))
            acc = S[b0:b1, i0:i1]
            for j0, j1 in cblocks:
                T = buf[: (b1 - b0) * (i1 - i0) * (j1 - j0)].reshape(b1 - b0, i1 - i0, j1 - j0)
                matmul(U[b0:b1, i0:i1], V[b0:b1, :, j0:j1], out=T)
                exp(T, out=T)
                matmul(T, R[b0:b1, j0:j1], out=out)
                acc += out

    _run(rows, rblocks, B * n * m, threads)
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
    # five work arrays per tile, a sixteenth of a tile each: 320 KiB together, in cache
    # beside the factors (this sum is bound by the Bessel functions, not the tile size)
    elements = (max(1, tile_elements(2) // 16) if block is None
                else tile_elements(2, block))
    mblocks, rblocks, cblocks = _tiles(B, n, m, elements)
    wk = w[..., None]
    _run(lambda i0, i1: _circle_tiles(U, c2, s2, wk, kappa, k, g, mblocks, i0, i1, cblocks,
                                      elements),
         rblocks, B * n * m, threads)
    return k, g


def _circle_tiles(U, c2, s2, wk, kappa, k, g, mblocks, i0, i1, cblocks, elements):
    """The tiles of :func:`circle_contract` on the row block ``i0:i1`` (one thread)."""
    buf = _work(5 * elements)
    for b0, b1 in mblocks:
        for j0, j1 in cblocks:
            mj = j1 - j0
            V = np.empty((b1 - b0, 2, 2 * mj))
            V[:, 0, :mj], V[:, 1, :mj] = c2[b0:b1, j0:j1], s2[b0:b1, j0:j1]
            V[:, 0, mj:], V[:, 1, mj:] = -s2[b0:b1, j0:j1], c2[b0:b1, j0:j1]
            wj = wk[b0:b1, j0:j1]
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
    side) instead of n². Square tiles of at most ``block`` pairs; from
    :data:`~particles.engine.parallel.MIN_WORK` pair terms (B n²) the tile pairs are cut
    into :data:`~particles.engine.parallel.PARTS` contiguous parts (whatever the number of
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
    elements = tile_elements(max(k, r), block)
    t = max(1, min(n, math.isqrt(elements)))
    mem = max(1, min(B, elements // (t * t)))
    mblocks = [(b, min(b + mem, B)) for b in range(0, B, mem)]
    edges = [(i, min(i + t, n)) for i in range(0, n, t)]
    pairs = [(I, J) for a, I in enumerate(edges) for J in edges[a:]]
    matmul, exp = np.matmul, np.exp
    work = B * n * n  # pair terms summed: each tile off the diagonal serves two
    nparts = min(parallel.PARTS, len(pairs)) if work >= parallel.MIN_WORK else 1
    cuts = [p * len(pairs) // nparts for p in range(nparts + 1)]
    parts = [pairs[a:b] for a, b in zip(cuts, cuts[1:])]
    accs = [S] + [np.zeros((B, n, r)) for _ in parts[1:]]

    def part(p):
        Sl = accs[p]
        buf = _work(elements)
        St = np.empty((mem, t, r))
        for b0, b1 in mblocks:
            bb = b1 - b0
            for (i0, i1), (j0, j1) in parts[p]:
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

    _run(part, [(p,) for p in range(nparts)], work, threads)
    for Sl in accs[1:]:
        S += Sl
    return S
