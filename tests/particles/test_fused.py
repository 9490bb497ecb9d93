"""Fused pull-backs against :func:`particles.kernels.pullback_reference`.

Dot-product units (``test_units_*``): :meth:`SigmoidUnit.pullback` for sigmoid, tanh and
relu, with shared nodes (Q, d) and per-member SGD batches (B, P, d), n = 0 and 1, and the
blocked path (tiny ``parallel.TILE`` / ``parallel.KEEP``: ragged blocks, blocks built
again in the backward pass) against the unblocked one.

Tolerance: both sides compute the same sums in another order (pre-activation with the
bias inside the product, blocked BLAS sums over units and nodes), so they agree to a few
ulps of the largest term times the number of terms; with O(1) terms and at most a few
hundred of them, 1e-12 relative (1e-14 absolute for entries that cancel to ~0) holds with
a wide margin and still catches any arithmetic that differs by more than round-off.
"""
import tracemalloc

import numpy as np
import pytest

from particles.engine import parallel
from particles.dynamics import Dynamics, State, step
from particles.kernels import Kernel, SigmoidUnit, pullback_reference
from particles.engine.parallel import ThreadBuffer
from particles.presets import sigmoid_problem

ACTIVATIONS = ["sigmoid", "tanh", "relu"]


def _units_case(rng, B, n, Q, d, batched):
    y = rng.standard_normal((B, n, d + 1))
    a = rng.standard_normal((B, n)) / max(n, 1)
    shape = (B, Q) if batched else (Q,)  # an SGD batch: nodes, weights, target per member
    x = rng.standard_normal(shape + (d,)) / np.sqrt(d)
    w = rng.uniform(0.5, 1.5, shape) / Q
    f_x = np.tanh(x[..., 0]) + 0.3 * x[..., -1] ** 2
    return y, a, x, w, f_x


def _assert_close(got, ref):
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,d)", "x(B,P,d)"])
@pytest.mark.parametrize("B,n,Q,d", [(1, 0, 9, 2), (2, 1, 9, 3), (3, 1, 1, 1), (2, 23, 17, 4)])
def test_units_match_reference(activation, batched, B, n, Q, d):
    rng = np.random.default_rng([B, n, Q, d, batched])
    kernel = SigmoidUnit(d, activation)
    args = _units_case(rng, B, n, Q, d, batched)
    _assert_close(kernel.pullback(*args), pullback_reference(kernel, *args))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,d)", "x(B,P,d)"])
@pytest.mark.parametrize("block,keep", [(1, 1), (13, 0), (13, 40), (40, 13), (64, 10**6)])
def test_units_blocked_matches_unblocked(monkeypatch, activation, batched, block, keep):
    """Tiny blocks (in elements; rows = block // Q, at least 1) force ragged blocks,
    built again in the backward pass unless kept; the unblocked result is the same."""
    rng = np.random.default_rng([block, keep, batched])
    kernel = SigmoidUnit(3, activation)
    args = _units_case(rng, 2, 37, 6, 3, batched)
    whole = kernel.pullback(*args)  # defaults: one block, everything kept
    monkeypatch.setattr(parallel, "TILE", block)
    monkeypatch.setattr(parallel, "KEEP", keep)
    blocked = kernel.pullback(*args)
    _assert_close(blocked, whole)
    _assert_close(blocked, pullback_reference(kernel, *args))


def test_units_memory_is_bounded_by_the_budget(monkeypatch):
    """With a small budget the step never holds an (n, Q) array: the work buffer stays
    within KEEP + 2 TILE elements, and the peak of new allocations within the outputs
    (80 kB) plus 200 kB (the buffer, 10 kB; the block lists, O(n / rows) Python tuples,
    about 60 kB here), below one (n, Q) array (n Q = 10^5 doubles, 800 kB; the generic
    pull-back peaks at 7.2 MB here)."""
    monkeypatch.setattr(parallel, "TILE", 256)
    monkeypatch.setattr(parallel, "KEEP", 1024)
    monkeypatch.setattr(SigmoidUnit, "_work", ThreadBuffer())
    rng = np.random.default_rng(8)
    kernel = SigmoidUnit(3, "sigmoid")
    n, Q = 2000, 50
    args = _units_case(rng, 1, n, Q, 3, False)
    tracemalloc.start()
    try:
        got = kernel.pullback(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert SigmoidUnit._work.size <= 1024 + 2 * 256
    outputs = sum(v.nbytes for v in got)  # f, g_c, g_y: (Q + n + n N) doubles
    assert peak < outputs + 200_000, (peak, outputs)
    _assert_close(got, pullback_reference(kernel, *args))


def test_units_results_are_not_views_of_the_buffer():
    """The per-thread buffer is reused: results of one call survive the next."""
    rng = np.random.default_rng(5)
    kernel = SigmoidUnit(2, "tanh")
    first_args = _units_case(rng, 2, 30, 20, 2, False)
    first = kernel.pullback(*first_args)
    kept = [v.copy() for v in first]
    kernel.pullback(*_units_case(rng, 3, 9, 7, 2, True))
    for v, k in zip(first, kept):
        np.testing.assert_array_equal(v, k)


def test_units_sgd_step_matches_generic_step():
    """One SGD step (per-member batches drawn from each member's generator) with the
    fused pull-back equals the same step through the generic ``Kernel.pullback``."""
    problem = sigmoid_problem(4, 64, target="3spin", seed=3)
    dyn = Dynamics(scheme="sgd", integrator="euler", dt=0.1, batch=50)
    B, n = 2, 12
    ys, cs = zip(*(problem.sample_init(np.random.default_rng([7, b]), n) for b in range(B)))
    state = State(0.0, np.stack(ys), np.stack(cs))

    def run(kernel_pullback):
        problem.kernel.pullback = kernel_pullback
        try:
            rngs = [np.random.default_rng([11, b]) for b in range(B)]
            return step(problem, dyn, state, dyn.dt, 1.0 / n, rngs)
        finally:
            del problem.kernel.pullback

    fused = run(problem.kernel.pullback)
    generic = run(lambda *args: Kernel.pullback(problem.kernel, *args))
    np.testing.assert_allclose(fused.y, generic.y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fused.c, generic.c, rtol=1e-12, atol=1e-14)
