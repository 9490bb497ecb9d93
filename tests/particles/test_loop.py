"""The one time loop (particles.engine.loop) and the particle stepper: landing on save times,
capture/restore bitwise, the failure contract."""

import numpy as np
import pytest
import xarray as xr

from particles import Dynamics, NumericalFailure, ParticleStepper, member_rng, run, simulate
from particles.presets import circle_problem
from particles.engine.results import check_cf
from tests.stepping import advance, roundtrip


@pytest.fixture(scope="module")
def circle():
    return circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0])




DYNAMICS = {
    "gd-euler": Dynamics("gd", "euler", 0.05),
    "gd-rk4": Dynamics("gd", "rk4", 0.05),
    "sgd": Dynamics("sgd", "euler", 0.05, batch=4),
    "langevin": Dynamics("langevin", "euler", 0.05, temperature=0.05),
}


@pytest.mark.parametrize("which", sorted(DYNAMICS))
def test_capture_restore_is_bitwise(circle, which, tmp_path):
    dyn = DYNAMICS[which]
    n, S = 8, 3

    def fresh():
        rngs = [member_rng(7, 0, s) for s in range(S)]
        draws = [circle.sample_init(r, n) for r in rngs]
        st = ParticleStepper(circle, dyn, 1.0 / n)
        return st, st.init(np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws]),
                           rngs)

    t1 = 1.0  # 20 equal steps
    stepper, state = fresh()
    whole = advance(stepper, state, 0.0, t1)
    stepper, state = fresh()
    part = advance(stepper, state, 0.0, t1, steps=7)  # stopped mid-interval
    assert 0 < part.t < t1
    snap = roundtrip(stepper.capture(part), tmp_path)
    # go on with generators advanced further: the restored state must not share them
    for r in part.rngs:
        r.standard_normal(5)
    again, _ = fresh()
    resumed = advance(again, again.restore(snap), 0.0, t1)
    np.testing.assert_array_equal(resumed.y, whole.y)
    np.testing.assert_array_equal(resumed.c, whole.c)
    assert resumed.t == whole.t == t1
    for a, b in zip(resumed.rngs or (), whole.rngs or ()):  # the same streams go on
        assert a.bit_generator.state == b.bit_generator.state


def test_driver_steps_and_observes_like_the_step_count(circle):
    # m = ceil((t1 - t0)/dt - 1e-9) equal steps per interval; the observer sees the
    # save times exactly, and state.t = save time after landing
    dyn = Dynamics("gd", "euler", 0.3)
    st = ParticleStepper(circle, dyn, 0.25)
    rng = np.random.default_rng(0)
    y, c = rng.uniform(0, 6, (1, 4, 1)), rng.standard_normal((1, 4))
    seen, steps = [], []
    run(st, st.init(y, c), [0.0, 0.3, 1.0, 1.05], lambda j, s: seen.append((j, s.t)),
        before_step=lambda s, h: steps.append(h))
    assert seen == [(0, 0.0), (1, 0.3), (2, 1.0), (3, 1.05)]
    # 0 -> 0.3: one step; 0.3 -> 1.0: ceil(0.7/0.3) = 3 steps; 1.0 -> 1.05: one step
    np.testing.assert_allclose(steps, [0.3] + [0.7 / 3] * 3 + [0.05], rtol=1e-14)


def test_simulate_dataset_follows_cf(circle):
    ds = simulate(circle, [4, 8], 2, Dynamics("gd", "euler", 0.1), [0.0, 0.5], progress=False)
    assert check_cf(ds) == []
    assert ds.attrs["title"] == "mfpc particle ensembles"
    assert ds["n"].dtype == np.int32 and ds["seed"].dtype == np.int32
    assert ds["y"].attrs["long_name"] != ds["c"].attrs["long_name"]
    assert "unit" in ds["y"].attrs["long_name"]


def test_failure_carries_partial(circle):
    # n = 64 blows up at dt = 50 before t = 1e5: the loss rises within the first save
    # interval (stopped as diverging before it overflows); the partial keeps t = 0
    dyn = Dynamics("gd", "euler", 50.0)
    with pytest.raises(NumericalFailure, match=r"^particles: diverging at t=\S+ "
                                               r"\(member\(s\) .*n=64.*lower dynamics.dt") as e:
        simulate(circle, [64], 2, dyn, [0.0, 100.0, 1e5], root_seed=1, progress=False)
    part = e.value.partial
    assert isinstance(part, xr.Dataset)
    assert part.attrs["complete"] == 0 and "diverging" in part.attrs["failure"]
    assert np.isfinite(part["f_n"].sel(n=64).isel(t=0).values).all()
    assert np.isnan(part["f_n"].sel(n=64).isel(t=-1).values).all()
    assert check_cf(part) == []


def test_failure_without_dataset_function_has_none():
    class Blow:
        name, advice = "toy", "lower nothing"

        def propose(self, s, t0, t1):
            return t1 - s.t

        def step(self, s, h):
            return s._replace(t=s.t + h, y=s.y * np.inf)

        def check(self, s):
            return None if np.isfinite(s.y).all() else "y"

    from particles.steppers import ParticleState

    with pytest.raises(NumericalFailure, match=r"toy: non-finite state at t=1 \(y\)") as e:
        run(Blow(), ParticleState(0.0, np.ones(2), np.ones(2)), [1.0], lambda j, s: None)
    assert e.value.partial is None
