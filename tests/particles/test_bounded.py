"""Memory bounded by blocks whatever n, P and Q.

A fused step holds its kept buffer (``parallel.KEEP`` elements per calling thread), one
or two cache-sized tiles per thread (``parallel.TILE``), the SGD batches drawn ahead
(``dynamics.DRAW_BUDGET``) and arrays of O((n + Q)·d); never an (n, Q) array. With the
budgets shrunk (so that blocking, rebuilt tiles and threads are exercised):

* the blocked path equals the unblocked one (the generic ``Kernel.pullback``, which
  materialises the (n, Q, N) array, or the default budgets) to round-off;
* tracemalloc's peak stays under the budget plus ``C (n + Q)(N + 1)`` doubles.

Round-off bound of the comparisons: a sum of m terms taken in another order differs by
at most ``m eps sum|terms|`` (eps = 2.2e-16). For ``f_q = sum_i a_i phi_iq`` (|phi| <= 1)
that is ``n eps sum_i |a_i|``; the residual inherits it, so ``g_c`` and ``g_y``, sums
over nodes of ``w phi r`` (|grad_y phi| <= L), differ by at most
``L sum_q w_q (Q eps |r_q| + df)``. These are worst cases (errors add up only if every
rounding has the same sign); they are still far below any change of method.
"""
import tracemalloc

import numpy as np
import pytest

from particles import dynamics as dynamics_mod
from particles.engine import parallel
from particles.engine.parallel import ThreadBuffer
from particles.dynamics import Batches, Dynamics, State, step
from particles.kernels import CircleKernel, Kernel, SigmoidUnit, expblocks
from particles.presets import sigmoid_problem

EPS = np.finfo(float).eps
#: Doubles per unit and per node (times N + 1) of the O((n + Q)·d) arrays a step holds:
#: inputs made float (y, a), the factors U (n, k) and V (k, Q), G (n, N + 1), g_c, g_y,
#: the velocities and the new state (n, N) each, the nodes' X1 / xc, f, w r, the target
#: on a batch (Q or P each), and the tile lists (one tuple per tile, ~120 bytes, at most
#: n / rows of them): 12 leaves a margin over the ~8 counted.
C = 12


def _bound(f_ref, a, w, r, L, Q):
    """Round-off bounds (module docstring) for f and for the pull-backs."""
    n = a.shape[-1]
    df = n * EPS * np.sum(np.abs(a), axis=-1, keepdims=True)
    dg = L * np.sum(w * (Q * EPS * np.abs(r) + df), axis=-1)
    return float(np.max(df)), float(np.max(dg))


def _compare(got, ref, kernel, a, w, f_x, L):
    f = ref[0]
    Q = f.shape[-1]
    df, dg = _bound(f, a, w, f - f_x, L, Q)
    np.testing.assert_allclose(got[0], f, rtol=0, atol=df)
    np.testing.assert_allclose(got[1], ref[1], rtol=0, atol=dg)
    np.testing.assert_allclose(got[2], ref[2], rtol=0, atol=dg)


def _peak(fn):
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


@pytest.fixture
def small_budget(monkeypatch):
    """Budgets of a few hundred kB: every step here is blocked, rebuilt tiles included; fresh
    per-thread buffers so that earlier tests' larger ones do not count."""
    monkeypatch.setattr(parallel, "TILE", 2**12)
    monkeypatch.setattr(parallel, "KEEP", 2**15)
    monkeypatch.setattr(dynamics_mod, "DRAW_BUDGET", 2**15)
    monkeypatch.setattr(SigmoidUnit, "_work", ThreadBuffer())
    monkeypatch.setattr(expblocks, "_work", ThreadBuffer())
    monkeypatch.setattr(expblocks, "_tiles", (ThreadBuffer(), ThreadBuffer()))
    # the pool's worker threads keep their tile scratch: a new pool for this test
    monkeypatch.setattr(parallel, "_pool", {"size": 0, "executor": None})
    # kept + two tiles per thread (the caller and each worker), in bytes
    return 8 * (2**15 + 2 * 2**12 * (parallel.get_threads() + 1))


def _circle_case(n, Q, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 2 * np.pi, (1, n, 1))
    a = rng.standard_normal((1, n)) / n
    x = (2 * np.pi * np.arange(Q) / Q)[:, None]
    w = np.full(Q, 1.0 / Q)
    f_x = np.cos(x[:, 0]) + 0.3 * np.sin(2 * x[:, 0])
    return y, a, x, w, f_x


@pytest.mark.parametrize("Q", [16, 96], ids=["two-pass", "series"])
def test_circle_small_budget_equals_unblocked(small_budget, Q):
    """n = 3000 (n Q > KEEP: the series path at Q = 96, the blocked two-pass at Q = 16)
    against the generic pull-back (the (n, Q, 1) array materialised)."""
    kernel = CircleKernel(2.0)
    assert (2 * kernel._modes() + 1 < Q) == (Q == 96)
    args = _circle_case(3000, Q)
    got = kernel.pullback(*args)
    ref = Kernel.pullback(kernel, *args)
    _compare(got, ref, kernel, args[1], args[3], args[4], L=kernel.kappa)


@pytest.mark.parametrize("Q", [16, 32], ids=["two-pass", "series"])
def test_circle_million_units_in_bounded_memory(monkeypatch, small_budget, Q):
    """n = 10^6 circle units (kappa = 0.5: K = 13 modes, so Q = 32 takes the series
    path and Q = 16 the blocked two-pass one): the peak stays within the budget plus
    C (n + Q)·2 doubles and below 0.6 of one (n, Q) array (128 or 256 MB), and the
    result equals the default budgets' to round-off."""
    kernel = CircleKernel(0.5)
    assert (2 * kernel._modes() + 1 < Q) == (Q == 32)
    n = 10**6
    args = _circle_case(n, Q, seed=1)
    got, peak = _peak(lambda: kernel.pullback(*args))
    limit = small_budget + 8 * C * (n + Q) * 2
    assert peak < limit, (peak, limit)
    assert peak < 0.6 * 8 * n * Q, peak
    monkeypatch.undo()  # the default budgets
    ref = kernel.pullback(*args)
    _compare(got, ref, kernel, args[1], args[3], args[4], L=kernel.kappa)


def _sgd_peak(n, P, d=10):
    """One SGD step of n sigmoid units on a batch of P points of the sphere (3-spin
    target): its tracemalloc peak, and the step with the generic pull-back."""
    problem = sigmoid_problem(d, 32, target="3spin", seed=4)
    dyn = Dynamics("sgd", "euler", 0.05, batch=P)
    y, c = problem.sample_init(np.random.default_rng(2), n)
    state = State(0.0, y[None], c[None])
    draws = Batches(problem.measure, [np.random.default_rng(3)])
    new, peak = _peak(lambda: step(problem, dyn, state, dyn.dt, 1.0 / n, draws))
    return problem, dyn, state, new, peak


def _sgd_limit(budget, n, P, d=10):
    return budget + 8 * dynamics_mod.DRAW_BUDGET + 8 * C * (n + P) * (d + 1)


def test_sgd_small_budget_equals_unblocked(small_budget):
    """n = 300 units, P = 200: the blocked SGD step against the generic pull-back on
    the same batch (same generator)."""
    n, P = 300, 200
    problem, dyn, state, new, _ = _sgd_peak(n, P)
    kernel = problem.kernel
    kernel.pullback = lambda *args: Kernel.pullback(kernel, *args)
    try:
        ref = step(problem, dyn, state, dyn.dt, 1.0 / n, [np.random.default_rng(3)])
    finally:
        del kernel.pullback
    # velocities are (sums over P nodes) x c: the bound of the module docstring times
    # max|c| (|h|, |h'| <= 1 for the sigmoid; |x| = sqrt(d) on the sphere), times dt
    x = problem.measure.sample(np.random.default_rng(3), P)
    r = np.abs(problem.network(state.y, state.c / n, x)[0] - problem.target(x))
    df = n * EPS * np.sum(np.abs(state.c)) / n
    dg = np.sqrt(10) * np.mean(P * EPS * r + df) * (1 + np.max(np.abs(state.c)))
    np.testing.assert_allclose(new.c, ref.c, rtol=0, atol=dyn.dt * dg)
    np.testing.assert_allclose(new.y, ref.y, rtol=0, atol=dyn.dt * dg)


@pytest.mark.parametrize("n,P", [(10**4, 10**3),
                                 pytest.param(10**5, 10**4, marks=pytest.mark.slow)])
def test_sgd_step_in_bounded_memory(small_budget, n, P):
    """n sigmoid units, a batch of P points (d = 10): the step's peak stays within the
    budgets plus C (n + P)·11 doubles, far below one (n, P) array."""
    *_, peak = _sgd_peak(n, P)
    limit = _sgd_limit(small_budget, n, P)
    assert peak < limit, (peak, limit)
    assert limit < 8 * n * P / 5
