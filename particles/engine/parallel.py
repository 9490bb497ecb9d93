r"""The one thread pool and the one block-size policy of every blocked step.

Block sizes. Every blocked computation (the fused pull-backs of
:mod:`particles.kernels.expblocks`, the circle's series path, the pair sums of
:mod:`particles.pairsums`) cuts its pair values (units × nodes, or units × units) into
tiles of at most :data:`TILE` elements, fewer where a tile's matrix products would wake
the BLAS threads (:func:`tile_elements`, :data:`SINGLE_GEMM`); a pull-back keeps at most
:data:`KEEP` elements between its two passes (node blocks at least :data:`QMIN` wide);
a large symmetric pair sum takes :data:`PARTS` accumulators. These constants are the only
block sizes; the partition depends on them and on the problem's sizes only, never on the
number of threads.

Threads. :func:`map_blocks` runs a function over those blocks, on one thread or on one
kept pool, and hands the results back **in block order** on the calling thread, so that
every sum over blocks is taken in the same order whatever the number of threads: the
results are bitwise identical for 1, 2 or more threads
(``tests/particles/test_threads.py``, ``tests/particles/test_fused_kform.py``).

The number of threads a step may use is ``get_threads()``: from :func:`set_threads` or the
context manager :func:`threads`, else the environment variable ``MFPC_THREADS``, else
``min(2, number of cores this process may run on)``. A step smaller than
:data:`MIN_WORK` elements stays on the calling thread (the pool's hand-over costs tens
of microseconds per task).
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["get_threads", "set_threads", "threads", "map_blocks", "ThreadBuffer",
           "tile_elements", "TILE", "SINGLE_GEMM", "KEEP", "QMIN", "PARTS", "MIN_WORK",
           "TASK_WORK", "ONE_THREAD"]

#: The environment of a worker process that must use one core (sweep executors start their
#: workers with it): numpy/BLAS and the block threads of this module on one thread each,
#: so that N workers use N cores; the numbers do not depend on it.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
              "MFPC_THREADS": "1"}
#: Most elements of one tile of pair values built while it stays in cache (2**17 float64
#: = 1 MiB, a per-core L2 here). The BLAS bound of :func:`tile_elements` binds first for
#: every factor width k >= 3: 87381 elements for k = 3, 37449 for k = 7, 23831 for k = 11
#: (docs/benchmarks.md, "One block size and one thread pool").
TILE = 2**17
#: OpenBLAS runs a gemm on one thread while m·n·k < 2**18 (65536 × its
#: GEMM_MULTITHREAD_THRESHOLD of 4); a tile's products stay below it. A thin gemm that
#: wakes the BLAS threads cost 20-70x more on a busy 2-core machine (measured:
#: (128, 7) @ (7, 1024) 24 ms threaded against 0.3 ms on one thread).
SINGLE_GEMM = 2**18
#: Elements of pair values a pull-back keeps from its forward sum to its contraction
#: (2**20 float64 = 8 MiB per calling thread); beyond, tiles are built again.
KEEP = 2**20
#: Fewest node columns per block of a pull-back (narrower blocks make the products too
#: thin).
QMIN = 32
#: Accumulators of a symmetric pair sum of at least :data:`MIN_WORK` pair terms
#: (:func:`particles.pairsums.exp_contract_sym`): a fixed number, whatever the threads.
PARTS = 2
#: Fewest elements of work (pairs of units and nodes, or pair terms) for which a step
#: uses threads.
MIN_WORK = 2**20
#: Elements of work gathered in one task handed to the pool (about 1 ms): consecutive
#: blocks are grouped so that the hand-over cost stays near 5% of the work.
TASK_WORK = 2**18

#: Name prefix of the pool's threads (a block run from one of them stays on it: a
#: task that waited for the pool it runs on could wait for ever).
_PREFIX = "mfpc-block"
_setting = {"threads": None}
_pool = {"size": 0, "executor": None}
_lock = threading.Lock()


class ThreadBuffer:
    """A reused flat float64 work buffer per calling thread, grown when too small.

    ``buf(size)`` is a view of ``size`` elements of this thread's buffer: concurrent
    steps on several threads never share one, and a kernel holding one as a class
    attribute pickles without it. ``buf.size`` is this thread's current size (0 before
    its first use).
    """

    def __init__(self):
        self._local = threading.local()

    def __call__(self, size) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < size:
            buf = self._local.buf = np.empty(size)
        return buf[:size]

    @property
    def size(self) -> int:
        buf = getattr(self._local, "buf", None)
        return 0 if buf is None else buf.size


def tile_elements(k, block=None) -> int:
    """Elements of one tile whose products with factors ``k`` wide stay on one BLAS
    thread: ``min(block or TILE, SINGLE_GEMM // k)``, at least 1.

    Parameters
    ----------
    k : int
        The widest factor of the tile's products (inner or outer dimension).
    block : int, optional
        A smaller tile instead of :data:`TILE` (tests force ragged tiles with it).
    """
    return max(1, min(TILE if block is None else int(block), SINGLE_GEMM // max(int(k), 1)))


def _default_threads() -> int:
    env = os.environ.get("MFPC_THREADS")
    if env is not None:
        try:
            k = int(env)
        except ValueError:
            k = 0
        if k < 1:
            raise ValueError(f"MFPC_THREADS={env!r} must be an integer >= 1 (the number of "
                             "threads a step may use); unset it for the default")
        return k
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def get_threads() -> int:
    """The number of threads a step may use (module docstring)."""
    k = _setting["threads"]
    return _default_threads() if k is None else k


def set_threads(k):
    """Set the number of threads a step may use; ``None`` returns to the default.

    Parameters
    ----------
    k : int or None
        At least 1.
    """
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"threads={k!r} must be an integer >= 1 (or None for the "
                             "default)")
        k = int(k)
    _setting["threads"] = k


@contextlib.contextmanager
def threads(k):
    """Context manager: steps inside use ``k`` threads; the previous setting returns."""
    old = _setting["threads"]
    set_threads(k)
    try:
        yield
    finally:
        _setting["threads"] = old


def _executor(k):
    """The pool of ``k`` threads, made anew after a change of ``k`` or a fork (a forked
    child has none of its parent's threads)."""
    with _lock:
        if _pool["size"] != k or _pool.get("pid") != os.getpid():
            if _pool["executor"] is not None and _pool.get("pid") == os.getpid():
                _pool["executor"].shutdown(wait=True)
            _pool["executor"] = ThreadPoolExecutor(max_workers=k,
                                                   thread_name_prefix=_PREFIX)
            _pool["size"], _pool["pid"] = k, os.getpid()
        return _pool["executor"]


def _task(fn, chunk, err):
    with np.errstate(**err):  # the caller's floating-point error handling
        return [fn(*blk) for blk in chunk]


def map_blocks(fn, blocks, work, threads=None):
    """``fn(*block)`` for every block, yielded in block order on the calling thread.

    Parameters
    ----------
    fn : callable
        Must write only to its own block's outputs or to its thread's scratch, and
        return fresh arrays (never a view of a thread's scratch).
    blocks : sequence of tuples
        The block partition, fixed independently of the number of threads.
    work : int
        Elements of work in all (threads only when at least :data:`MIN_WORK`).
    threads : int, optional
        At most this many threads instead of :func:`get_threads`.

    Yields
    ------
    object
        ``fn(*block)``, in the order of ``blocks``.
    """
    k = get_threads() if threads is None else max(1, int(threads))
    if (k == 1 or work < MIN_WORK or len(blocks) < 2
            or threading.current_thread().name.startswith(_PREFIX)):
        for blk in blocks:
            yield fn(*blk)
        return
    per = max(1, min(-(-len(blocks) // (2 * k)),
                     int(TASK_WORK * len(blocks) // max(work, 1))))
    chunks = [blocks[i : i + per] for i in range(0, len(blocks), per)]
    pool, err = _executor(k), np.geterr()
    pending = deque()
    window = 2 * k  # tasks in flight: memory stays bounded by a few tasks' results
    try:
        for chunk in chunks:
            pending.append(pool.submit(_task, fn, chunk, err))
            if len(pending) >= window:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        for fut in pending:  # an error or an abandoned generator: finish what runs
            fut.cancel()
        for fut in pending:
            if not fut.cancelled():
                fut.exception()
