"""Threads over blocks (:mod:`particles.engine.parallel`): bitwise the same for 1, 2 or 3 threads.

The block partition depends only on the sizes and the block constants of
:mod:`particles.engine.parallel`, and the
forward sums are added in block order on the calling thread, so every fused pull-back
must give the same bits whatever the number of threads. The blocks are shrunk and
``MIN_WORK`` set to 0 so that small cases run many tasks on the pool (with rebuilt tiles
among them); a counter on the pool's task function shows that the pool really ran.
"""
import numpy as np
import pytest

from particles.engine import parallel
from particles.dynamics import Dynamics, State, step
from particles.kernels import CircleKernel, GaussianRBF, SigmoidUnit, SphereRBF
from particles.kernels import pullback_reference
from particles.presets import sigmoid_problem

KERNELS = {
    "circle": lambda: CircleKernel(2.0),
    "circle-series": lambda: CircleKernel(0.5),
    "gaussian": lambda: GaussianRBF(3, 0.8),
    "sphere": lambda: SphereRBF(3, 1.3),
    "sigmoid": lambda: SigmoidUnit(3, "sigmoid"),
    "tanh": lambda: SigmoidUnit(3, "tanh"),
    "relu": lambda: SigmoidUnit(3, "relu"),
}


def _case(kernel, rng, B, n, Q, batched):
    d = kernel.d
    shape = (B, Q) if batched else (Q,)
    if isinstance(kernel, CircleKernel):
        x = rng.uniform(0, 2 * np.pi, shape + (1,))
        y = rng.uniform(0, 2 * np.pi, (B, n, 1))
    else:
        x = rng.standard_normal(shape + (d,))
        y = rng.standard_normal((B, n, kernel.N))
        if isinstance(kernel, SphereRBF):
            x *= np.sqrt(d) / np.linalg.norm(x, axis=-1, keepdims=True)
            y = kernel.retract(y)
    a = rng.standard_normal((B, n)) / n
    w = rng.uniform(0.5, 1.5, shape) / Q
    f_x = np.cos(x[..., 0]) + 0.3 * x[..., -1] ** 2
    return y, a, x, w, f_x


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny tiles and kept buffers, threads for any work, one block per task: many
    tasks, ragged tiles, tiles built again in the backward pass."""
    monkeypatch.setattr(parallel, "MIN_WORK", 0)
    monkeypatch.setattr(parallel, "TASK_WORK", 1)
    monkeypatch.setattr(parallel, "TILE", 48)
    monkeypatch.setattr(parallel, "KEEP", 300)  # n Q > KEEP: the circle's series path
    monkeypatch.setattr(parallel, "QMIN", 8)    # when 2K+1 < Q, rebuilt tiles elsewhere
    tasks = []
    task = parallel._task

    def counted(fn, chunk, err):
        tasks.append(len(chunk))
        return task(fn, chunk, err)

    monkeypatch.setattr(parallel, "_task", counted)
    return tasks


@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,d)", "x(B,P,d)"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_threads_give_the_same_bits(small_blocks, name, batched):
    kernel = KERNELS[name]()
    Q = 40 if name == "circle-series" else 29
    if name == "circle":
        kernel._K = 10**6  # the two-pass path (exp_pullback), never the series
    else:
        assert name != "circle-series" or 2 * kernel._modes() + 1 < Q
    args = _case(kernel, np.random.default_rng([len(name), batched]), 2, 37, Q, batched)
    runs = {}
    for k in (1, 2, 3):
        del small_blocks[:]
        with parallel.threads(k):
            runs[k] = kernel.pullback(*args)
        assert (len(small_blocks) > 0) == (k > 1)  # the pool ran only with threads
    for k in (2, 3):
        for got, one in zip(runs[k], runs[1]):
            np.testing.assert_array_equal(got, one)
    # and the common result is right (the reference tolerance of test_fused*.py)
    for got, ref in zip(runs[1], pullback_reference(kernel, *args)):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-13)


def test_sgd_steps_give_the_same_bits(small_blocks):
    """Three SGD steps of an ensemble (per-member batches on the sphere, 3-spin target)
    with 1, 2 and 3 threads."""
    problem = sigmoid_problem(4, 32, target="3spin", seed=2)
    dyn = Dynamics("sgd", "euler", 0.05, batch=45)
    B, n = 3, 23
    ys, cs = zip(*(problem.sample_init(np.random.default_rng([3, b]), n) for b in range(B)))
    out = {}
    for k in (1, 2, 3):
        state = State(0.0, np.stack(ys), np.stack(cs))
        rngs = [np.random.default_rng([5, b]) for b in range(B)]
        with parallel.threads(k):
            for _ in range(3):
                state = step(problem, dyn, state, dyn.dt, 1.0 / n, rngs)
        out[k] = state
    assert len(small_blocks) > 0
    for k in (2, 3):
        np.testing.assert_array_equal(out[k].y, out[1].y)
        np.testing.assert_array_equal(out[k].c, out[1].c)


def test_errors_in_a_thread_reach_the_caller(small_blocks):
    """The caller's floating-point error handling holds in the pool's threads too."""
    kernel = SphereRBF(3, 1.3)
    args = list(_case(kernel, np.random.default_rng(1), 1, 37, 29, False))
    args[0] = args[0] * 1e3  # off the sphere: exp(1.3 (x.y - 3)) overflows
    with parallel.threads(2), np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            kernel.pullback(*args)
    assert len(small_blocks) > 0
    with parallel.threads(2), np.errstate(all="ignore"):
        f = kernel.pullback(*args)[0]
    assert not np.all(np.isfinite(f))


def test_thread_settings(monkeypatch):
    monkeypatch.delenv("MFPC_THREADS", raising=False)
    parallel.set_threads(None)
    import os

    assert parallel.get_threads() == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setenv("MFPC_THREADS", "3")
    assert parallel.get_threads() == 3
    with parallel.threads(1):
        assert parallel.get_threads() == 1
    assert parallel.get_threads() == 3
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="threads"):
            parallel.set_threads(bad)
    monkeypatch.setenv("MFPC_THREADS", "many")
    with pytest.raises(ValueError, match="MFPC_THREADS='many'"):
        parallel.get_threads()


def _child(args, expected, queue):
    with parallel.threads(2):
        got = KERNELS["gaussian"]().pullback(*args)
    queue.put(all(np.array_equal(g, e) for g, e in zip(got, expected)))


def test_a_forked_child_gets_its_own_pool(small_blocks):
    """A child forked after the pool started (it has none of the pool's threads) makes
    its own pool instead of waiting for ever on the parent's."""
    import multiprocessing

    kernel = KERNELS["gaussian"]()
    args = _case(kernel, np.random.default_rng(4), 1, 37, 29, False)
    with parallel.threads(2):
        expected = kernel.pullback(*args)  # the parent's pool now runs
    assert len(small_blocks) > 0
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(args, expected, queue))
    child.start()
    child.join(60)
    if child.is_alive():  # pragma: no cover - the failure this test guards against
        child.terminate()
        pytest.fail("the forked child hung on its parent's thread pool")
    assert child.exitcode == 0
    assert queue.get(timeout=5)


def test_pair_sums_run_on_the_one_pool(small_blocks):
    """The pair sums of the kernel form hand their row blocks (and the symmetric sum its
    fixed parts) to the one pool of :func:`particles.engine.parallel.map_blocks`, with the
    same bits for 1, 2 and 3 threads."""
    from particles import pairsums

    rng = np.random.default_rng(9)
    B, n, m, k, r = 2, 37, 23, 4, 3
    U = rng.normal(size=(B, n, k)) * 0.3
    V2 = rng.normal(size=(B, k, m)) * 0.3
    R2 = rng.normal(size=(B, m, r))
    Vs = np.swapaxes(U, 1, 2).copy()
    Rs = rng.normal(size=(B, n, r))
    y, y2, w = rng.uniform(0, 7, (B, n)), rng.uniform(0, 7, (B, m)), rng.normal(size=(B, m))
    calls = {
        "exp_contract": lambda th: (pairsums.exp_contract(U, V2, R2, threads=th),),
        "exp_contract_sym": lambda th: (pairsums.exp_contract_sym(U, Vs, Rs, threads=th),),
        "circle_contract": lambda th: pairsums.circle_contract(y, y2, w, 2.0, threads=th),
    }
    for name, call in calls.items():
        runs = {}
        for th in (1, 2, 3):
            del small_blocks[:]
            runs[th] = call(th)
            assert (len(small_blocks) > 0) == (th > 1), name
        for th in (2, 3):
            for got, one in zip(runs[th], runs[1]):
                np.testing.assert_array_equal(got, one, err_msg=name)
