"""SGD batches drawn several steps ahead (:class:`particles.dynamics.Batches`).

Every check is bitwise: the stream must give exactly the points of drawing P points per
member every step from that member's generator, so that amortising the draws changes
no number (the regression pin's SGD run with a batch quench included), a member rerun
alone draws the same points, and a run stopped and restored mid-buffer goes on as if it
never stopped.
"""
import numpy as np
import pytest

from particles import Dynamics, ParticleStepper, member_rng
from particles import dynamics as dynamics_mod
from particles.dynamics import Batches, State, step
from particles.measures import CircleUniform, GaussianMeasure, SphereUniform, UniformBox
from particles.presets import circle_problem, sigmoid_problem
from tests.stepping import advance, roundtrip

MEASURES = {
    "circle": lambda: CircleUniform(16),
    "gaussian-d1": lambda: GaussianMeasure(1, 9),
    "gaussian-d3": lambda: GaussianMeasure(3, 20, rng=np.random.default_rng(0), scale=2.0),
    "uniform_box": lambda: UniformBox(3, 20, -1.0, 2.0, rng=np.random.default_rng(1)),
    "sphere": lambda: SphereUniform(4, 20, np.random.default_rng(2)),
}


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_measure_draws_are_a_stream(name):
    """sample(rng, P + P' + ...) gives the points of the separate calls, bitwise, and
    leaves the generator where they leave it: what ``"stream"`` declares."""
    measure = MEASURES[name]()
    assert {"sample", "stream"} <= measure.capabilities
    sizes = [5, 1, 7, 5, 3]
    one, many = np.random.default_rng(9), np.random.default_rng(9)
    whole = measure.sample(one, sum(sizes))
    parts = np.concatenate([measure.sample(many, P) for P in sizes])
    np.testing.assert_array_equal(whole, parts)
    assert one.bit_generator.state == many.bit_generator.state
    # not vacuous: another seed gives other points
    assert not np.array_equal(measure.sample(np.random.default_rng(10), len(whole)), whole)


class _Counted:
    """A measure that counts its calls (and may hide its ``"stream"``)."""

    def __init__(self, measure, stream=True):
        self.m, self.calls, self.d = measure, 0, getattr(measure, "d", 1)
        self.capabilities = measure.capabilities - (set() if stream else {"stream"})

    def sample(self, rng, P):
        self.calls += 1
        return self.m.sample(rng, P)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "step-by-step"])
@pytest.mark.parametrize("budget", [10**6, 60, 1])
def test_batches_equal_per_step_draws(stream, budget):
    """A schedule of batch sizes (changes mid-buffer included) takes exactly the points
    of per-step draws; with ``"stream"`` the members are looped once per buffer."""
    B, d = 3, 4
    measure = _Counted(SphereUniform(d, 8, np.random.default_rng(0)), stream)
    sizes = [3, 3, 3, 5, 2, 2, 7, 7, 7, 7, 1, 4]
    seq = [np.random.default_rng([4, b]) for b in range(B)]
    draws = Batches(measure, [np.random.default_rng([4, b]) for b in range(B)],
                    budget=budget)
    for P in sizes:
        ref = np.stack([measure.m.sample(r, P) for r in seq])
        np.testing.assert_array_equal(draws.take(P), ref)
    if not stream or budget == 1:  # one step per call: B calls per step
        assert measure.calls == B * len(sizes)
    elif budget == 10**6:  # every buffer holds DRAW_AHEAD steps: one loop in all
        assert measure.calls == B
    else:
        assert B * 2 <= measure.calls < B * len(sizes)


def _stepper(problem, dyn, n, S, seed=7):
    rngs = [member_rng(seed, 0, s) for s in range(S)]
    draws = [problem.sample_init(r, n) for r in rngs]
    st = ParticleStepper(problem, dyn, 1.0 / n)
    return st, st.init(np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws]),
                       rngs)


@pytest.mark.parametrize("budget", [None, 40])
def test_stepper_stream_equals_per_step_draws(monkeypatch, budget):
    """The stepper (batches drawn ahead) and :func:`step` with the bare generators (P
    points per member per step) give the same run, through a batch quench."""
    if budget is not None:
        monkeypatch.setattr(dynamics_mod, "DRAW_BUDGET", budget)
    problem = sigmoid_problem(3, 16, target="3spin", seed=1)
    dyn = Dynamics("sgd", "euler", 0.05, batch=[[0.0, 4], [0.33, 6]])
    n, S = 5, 2
    stepper, state = _stepper(problem, dyn, n, S)
    got = advance(stepper, state, 0.0, 1.0)
    ref = State(0.0, state.y, state.c)
    rngs = [member_rng(7, 0, s) for s in range(S)]
    for r in rngs:  # the initial draws, as in _stepper
        problem.sample_init(r, n)
    for _ in range(20):
        ref = step(problem, dyn, ref, 0.05, 1.0 / n, rngs)
    np.testing.assert_array_equal(got.y, ref.y)
    np.testing.assert_array_equal(got.c, ref.c)


@pytest.mark.parametrize("stop", [1, 5, 7, 8, 13])
def test_restore_mid_buffer_is_bitwise(monkeypatch, tmp_path, stop):
    """Buffers of K = 24 // (B P d) = 3 steps while P = 4 (B = 2 members, d = 1), then
    of one step after the quench at t = 0.3 (P = 7, a change mid-buffer that carries the
    points left over): stopped after ``stop`` steps, captured, restored on a fresh
    stepper, the run is the same and the generators end in the same states."""
    monkeypatch.setattr(dynamics_mod, "DRAW_BUDGET", 24)  # K = 24 // (2 P) steps ahead
    problem = circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0])
    dyn = Dynamics("sgd", "euler", 0.05, batch=[[0.0, 4], [0.3, 7]])
    n, S, t1 = 6, 2, 1.0
    stepper, state = _stepper(problem, dyn, n, S)
    whole = advance(stepper, state, 0.0, t1)
    stepper, state = _stepper(problem, dyn, n, S)
    part = advance(stepper, state, 0.0, t1, steps=stop)
    snap = roundtrip(stepper.capture(part), tmp_path)
    for r in part.rngs:  # the restored state must not share the generators
        r.standard_normal(3)
    again, _ = _stepper(problem, dyn, n, S)
    resumed = advance(again, again.restore(snap), 0.0, t1)
    np.testing.assert_array_equal(resumed.y, whole.y)
    np.testing.assert_array_equal(resumed.c, whole.c)
    for a, b in zip(resumed.rngs, whole.rngs):
        assert a.bit_generator.state == b.bit_generator.state
    # not vacuous: another member's generator gives another run
    other = roundtrip(stepper.capture(part), tmp_path, "other")
    other["rng"] = other["rng"][::-1]
    swapped = advance(again, again.restore(other), 0.0, t1)
    assert not np.array_equal(swapped.c, whole.c)
