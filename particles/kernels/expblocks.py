r"""The blocked one-``exp`` pass shared by the fused pull-backs of the RBF kernels.

Both RBFs have :math:`\varphi(x_q, y_i) = \exp((U V)_{iq})` for a thin matrix product
(``U`` of shape (n, k), ``V`` of shape (k, Q), k = d + 1 or d + 2) and gradients in y that
are contractions of :math:`E_{iq} = \varphi(x_q, y_i)` with the (Q, d + 1) matrix
:math:`R = [w r, w r x]`. :func:`exp_pullback` computes

.. math::
    f_q = \sum_i a_i E_{iq}, \qquad r_q = f_q - f^*_q, \qquad
    G_i = \sum_q E_{iq}\, [w_q r_q,\ w_q r_q x_q]

without materialising E: the nodes are cut into blocks of ``Qb`` columns. For each block
E is built in cache-sized tiles of particles (one small matrix product, then ``exp`` in
place; small enough that no BLAS thread is woken), ``f`` on the block is summed, and
since ``r`` on the block needs only the block's ``f``, the tiles are contracted with the
block's rows of R at once. ``Qb`` is chosen so
that the block (n, Qb) fits the kept buffer (``KEEP`` elements): one ``exp`` per pair in
all. For n > ``KEEP / QMIN`` the block keeps only its last particles and rebuilds the
other tiles (a second ``exp`` on a cache-resident tile): memory stays bounded by
``KEEP`` elements plus O((n + Q)·d) whatever n and Q.
"""
from __future__ import annotations

import threading

import numpy as np

__all__ = ["exp_pullback"]

#: Elements of one tile of E built and exponentiated while in cache (128 KiB).
BLOCK = 2**14
#: OpenBLAS runs a gemm on one thread while m·n·k < 2**18 (65536 × its
#: GEMM_MULTITHREAD_THRESHOLD of 4); a tile's products stay below it. A thin gemm that
#: wakes the BLAS threads cost 20-70x more on this busy 2-core machine (measured:
#: (128, 7) @ (7, 1024) 24 ms threaded against 0.3 ms on one thread).
SINGLE = 2**18
#: Elements of E kept between the forward sum and the contraction (8 MiB).
KEEP = 2**20
#: Fewest node columns per block (narrower blocks make the products too thin).
QMIN = 32

_scratch = threading.local()


def _work(size):
    """A flat view of this thread's reused work buffer, grown when too small."""
    buf = getattr(_scratch, "buf", None)
    if buf is None or buf.size < size:
        buf = _scratch.buf = np.empty(size)
    return buf[:size]


def exp_pullback(U, V, xc, a, w, f_x, *, block=None, keep=None, qmin=None):
    r"""Blocked forward sum and pull-back of :math:`E = \exp(U V)` (module docstring).

    Parameters
    ----------
    U : ndarray, shape (B, n, k)
        Particle factors.
    V : ndarray, shape (k, Q) or (B, k, Q)
        Node factors (shared or per member).
    xc : ndarray, shape (Q, d) or (B, Q, d)
        The node coordinates that enter R (the kernels' own choice of origin).
    a : ndarray, shape (B, n)
    w, f_x : ndarray, shape (Q,) or (B, Q)
    block, keep, qmin : int, optional
        Override ``BLOCK``, ``KEEP``, ``QMIN`` (tests force many blocks).

    Returns
    -------
    f : ndarray, shape (B, Q)
    G : ndarray, shape (B, n, d + 1)
        ``G[..., 0]`` is :math:`\sum_q E w r`, ``G[..., 1:]`` is :math:`\sum_q E w r x`.
    """
    block = BLOCK if block is None else block
    keep = KEEP if keep is None else keep
    qmin = QMIN if qmin is None else qmin
    B, n = U.shape[:2]
    Q = V.shape[-1]
    d = xc.shape[-1]
    f = np.zeros((B, Q))
    G = np.zeros((B, n, d + 1))
    if n == 0 or Q == 0:
        return f, G
    Qb = min(Q, max(qmin, keep // n, 1))
    tile = min(block, SINGLE // max(U.shape[-1], d + 1))
    rows = max(1, min(n, tile // Qb))
    kept = min(n, max(rows, keep // Qb))  # particles head..n stay in E
    head = n - kept
    rebuilt = [(s, min(s + rows, head)) for s in range(0, head, rows)]
    stored = [(s, min(s + rows, n)) for s in range(head, n, rows)]
    E = _work(kept * Qb)
    R = np.empty((Qb, d + 1))  # [w r, w r x] on one block of nodes
    Gt = np.empty((rows, d + 1))
    fpart = np.empty(Qb)
    matmul, exp = np.matmul, np.exp
    for b in range(B):
        Vb = V if V.ndim == 2 else V[b]
        xb = xc if xc.ndim == 2 else xc[b]
        wb = w if w.ndim == 1 else w[b]
        fxb = f_x if f_x.ndim == 1 else f_x[b]
        Ub, ab, Gb = U[b], a[b], G[b]
        for q0 in range(0, Q, Qb):
            q1 = min(q0 + Qb, Q)
            m = q1 - q0
            Vq = Vb[:, q0:q1]
            fq = f[b, q0:q1]
            Et = E[: kept * m].reshape(kept, m)
            for s, e in rebuilt + stored:
                o = max(s - head, 0)
                T = Et[o : o + e - s]
                matmul(Ub[s:e], Vq, out=T)
                exp(T, out=T)
                matmul(ab[s:e], T, out=fpart[:m])
                fq += fpart[:m]
            Rq = R[:m]
            r = Rq[:, 0]
            np.subtract(fq, fxb[q0:q1], out=r)
            r *= wb[q0:q1]
            np.multiply(r[:, None], xb[q0:q1], out=Rq[:, 1:])
            for s, e in stored:
                matmul(Et[s - head : e - head], Rq, out=Gt[: e - s])
                Gb[s:e] += Gt[: e - s]
            for s, e in rebuilt:
                T = Et[: e - s]
                matmul(Ub[s:e], Vq, out=T)
                exp(T, out=T)
                matmul(T, Rq, out=Gt[: e - s])
                Gb[s:e] += Gt[: e - s]
    return f, G
