r"""The blocked pass shared by the fused pull-backs (RBFs, dot-product units, the circle).

Every fused kernel has :math:`\varphi(x_q, y_i) = h((U V)_{iq})` for a thin matrix product
(``U`` of shape (n, k), ``V`` of shape (k, Q)) and an elementwise ``h`` (``exp`` for the
RBFs and the circle, the activation for the units), and gradients that are contractions
of the tile :math:`T_{iq} = \varphi(x_q, y_i)` with the block's weighted residual
:math:`w_q r_q`. :func:`blocked_pullback` computes

.. math::
    f_q = \sum_i a_i T_{iq}, \qquad r_q = f_q - f^*_q, \qquad
    G_i = \sum_q \mathrm{contract}(T, w r)_{iq}

without materialising T: the nodes are cut into blocks of ``Qb`` columns. For each block
T is built in cache-sized tiles of particles (one small matrix product, then ``h`` in
place; small enough that no BLAS thread is woken), ``f`` on the block
is summed tile by tile in tile order, and since ``r`` on the block needs only the
block's ``f``, the tiles are contracted with the block's residual at once. ``Qb`` is
chosen so that the block (n, Qb) fits the kept buffer (``keep`` elements): one ``h`` per
pair in all. For n > ``keep / qmin`` the block keeps only its last particles and rebuilds
the other tiles (a second ``h`` on a cache-resident tile): memory stays bounded by
``keep`` elements plus O((n + Q)·k) whatever n and Q. The sizes are the one block-size
policy of :mod:`particles.engine.parallel` (:data:`~particles.engine.parallel.TILE`,
:data:`~particles.engine.parallel.KEEP`, :data:`~particles.engine.parallel.QMIN`).

Threads (:mod:`particles.engine.parallel`): the tiles of a block are shared out over threads in
both passes; the partition into blocks and tiles depends only on n, Q and the block
constants, the forward sums are added in tile order on the calling thread and the
backward pass writes disjoint rows, so the result is bitwise the same for any number of
threads. The kept buffer is the caller's (one per calling thread); a tile built again
uses the scratch of the thread that builds it.
"""
from __future__ import annotations

import numpy as np

from particles.engine import parallel
from particles.engine.parallel import ThreadBuffer, map_blocks, tile_elements

__all__ = ["exp_pullback", "blocked_pullback"]

#: This thread's kept buffer of E (the default ``work`` of :func:`blocked_pullback`).
_work = ThreadBuffer()
#: This thread's two tile scratches: the tiles built again, and the units' derivative tile.
_tiles = (ThreadBuffer(), ThreadBuffer())


def tile_scratch(size, slot=0):
    """A flat view of this thread's tile scratch number ``slot`` (0 or 1), grown when
    too small."""
    return _tiles[slot](size)


def plan(n, Q, k, *, block, keep, qmin):
    """The block partition: node block width ``Qb``, particle rows per tile, kept rows.

    Returns
    -------
    Qb, rows, kept : int
    """
    Qb = min(Q, max(qmin, keep // max(n, 1), 1))
    tile = tile_elements(k, block)
    rows = max(1, min(n, tile // Qb))
    kept = min(n, max(rows, keep // Qb))  # particles head..n stay in the kept buffer
    return Qb, rows, kept


def blocked_pullback(U, V, a, w, f_x, act, prepare, contract, k_out, *, block=None,
                     keep=None, qmin=None, work=None):
    r"""Blocked forward sum and pull-back of :math:`T = h(U V)` (module docstring).

    Parameters
    ----------
    U : ndarray, shape (B, n, k)
        Particle factors.
    V : ndarray, shape (k, Q) or (B, k, Q)
        Node factors (shared or per member).
    a : ndarray, shape (B, n)
    w, f_x : ndarray, shape (Q,) or (B, Q)
    act : callable
        ``act(T)``: h in place on a tile.
    prepare : callable
        ``prepare(b, q0, q1, wr)``: what ``contract`` needs on nodes q0..q1 of member b,
        from the block's weighted residual ``wr`` (q1 - q0,).
    contract : callable
        ``contract(T, ctx)``: the tile's share of G, a fresh (rows, k_out) array.
    k_out : int
    block, keep, qmin : int, optional
        Tile elements, kept elements, fewest node columns (default the policy's
        ``TILE``, ``KEEP``, ``QMIN`` of :mod:`particles.engine.parallel`; tests force
        many blocks with small ones).
    work : callable, optional
        ``work(size)``: the caller's kept buffer (default this module's, per thread).

    Returns
    -------
    f : ndarray, shape (B, Q)
    G : ndarray, shape (B, n, k_out)
    """
    keep = parallel.KEEP if keep is None else keep
    qmin = parallel.QMIN if qmin is None else qmin
    work = _work if work is None else work
    B, n = U.shape[:2]
    Q = V.shape[-1]
    f = np.zeros((B, Q))
    G = np.zeros((B, n, k_out))
    if n == 0 or Q == 0:
        return f, G
    Qb, rows, kept = plan(n, Q, max(U.shape[-1], k_out), block=block, keep=keep, qmin=qmin)
    head = n - kept
    tiles = [(s, min(s + rows, head)) for s in range(0, head, rows)]
    tiles += [(s, min(s + rows, n)) for s in range(head, n, rows)]
    E = work(kept * Qb)
    matmul = np.matmul
    for b in range(B):
        Vb = V if V.ndim == 2 else V[b]
        wb = w if w.ndim == 1 else w[b]
        fxb = f_x if f_x.ndim == 1 else f_x[b]
        Ub, ab, Gb = U[b], a[b], G[b]
        for q0 in range(0, Q, Qb):
            q1 = min(q0 + Qb, Q)
            m = q1 - q0
            Vq = Vb[:, q0:q1]
            Et = E[: kept * m].reshape(kept, m)

            def build(s, e):
                if s >= head:
                    T = Et[s - head : e - head]
                else:
                    T = tile_scratch((e - s) * m).reshape(e - s, m)
                matmul(Ub[s:e], Vq, out=T)
                act(T)
                return T

            def forward(s, e):
                return matmul(ab[s:e], build(s, e))

            fq = f[b, q0:q1]
            for part in map_blocks(forward, tiles, n * m):
                fq += part
            wr = fq - fxb[q0:q1]
            wr *= wb[q0:q1]
            ctx = prepare(b, q0, q1, wr)

            def backward(s, e):
                T = Et[s - head : e - head] if s >= head else build(s, e)
                Gb[s:e] += contract(T, ctx)

            for _ in map_blocks(backward, tiles, n * m):
                pass
    return f, G


def exp_pullback(U, V, xc, a, w, f_x, *, block=None, keep=None, qmin=None):
    r""":func:`blocked_pullback` of :math:`E = \exp(U V)` contracted with [w r, w r x].

    .. math::
        G_i = \sum_q E_{iq}\, [w_q r_q,\ w_q r_q x_q]

    Parameters
    ----------
    U : ndarray, shape (B, n, k)
    V : ndarray, shape (k, Q) or (B, k, Q)
    xc : ndarray, shape (Q, d) or (B, Q, d)
        The node coordinates that enter R (the kernels' own choice of origin).
    a : ndarray, shape (B, n)
    w, f_x : ndarray, shape (Q,) or (B, Q)
    block, keep, qmin : int, optional
        As :func:`blocked_pullback`.

    Returns
    -------
    f : ndarray, shape (B, Q)
    G : ndarray, shape (B, n, d + 1)
        ``G[..., 0]`` is :math:`\sum_q E w r`, ``G[..., 1:]`` is :math:`\sum_q E w r x`.
    """
    d = xc.shape[-1]

    def prepare(b, q0, q1, wr):
        xb = xc if xc.ndim == 2 else xc[b]
        R = np.empty((q1 - q0, d + 1))  # [w r, w r x] on one block of nodes
        R[:, 0] = wr
        np.multiply(wr[:, None], xb[q0:q1], out=R[:, 1:])
        return R

    def contract(T, R):
        return np.matmul(T, R)

    return blocked_pullback(U, V, a, w, f_x, _exp, prepare, contract, d + 1, block=block,
                            keep=keep, qmin=qmin)


def _exp(T):
    np.exp(T, out=T)
