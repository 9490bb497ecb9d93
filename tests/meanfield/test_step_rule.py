"""One step-count and landing rule (:func:`particles.engine.loop.substeps`, :func:`lands`):
every stepper's step agrees with it, and no module writes a second one."""

import pathlib
import re
from types import SimpleNamespace
from typing import NamedTuple

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from meanfield.grid.stepper import GridState, GridStepper
from particles import Dynamics, ParticleStepper
from particles.engine.loop import lands, run, substeps

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: a problem as far as the steppers' constructors look at it (the loss scale)
PROBLEM = SimpleNamespace(w=np.ones(2), f_x=np.ones(2))

starts = st.floats(0.0, 100.0)
spans = st.floats(1e-6, 50.0)
dts = st.floats(1e-4, 10.0)


def test_substeps_is_the_documented_rule():
    """m = ceil(span/dt - 1e-9): a whole number of steps up to round-off takes no more."""
    assert substeps(0.0, 1.0, 0.1) == (10, 0.1)
    assert substeps(0.0, 0.3, 0.1)[0] == 3  # 0.3/0.1 = 2.9999999999999996
    assert substeps(0.0, 1.0 + 1e-6, 0.1)[0] == 11
    assert substeps(1.0, 1.0, 0.1) == (0, 0.0)
    assert substeps(0.0, 1e-12, 0.1) == (0, 0.0)


@given(starts, spans, dts)
def test_particle_stepper_proposes_the_rule(t0, span, dt):
    t1 = t0 + span
    stepper = ParticleStepper(PROBLEM, Dynamics("gd", "euler", dt), 1.0)
    state = SimpleNamespace(t=t0)
    assert stepper.propose(state, t0, t1) == substeps(t0, t1, dt)[1]


@given(starts, spans, dts)
def test_fixed_grid_step_is_the_rule(t0, span, dt):
    """At the interval's start the fixed grid step is bitwise the rule's ``h``; the loop
    then takes exactly the rule's ``m`` steps and lands."""
    t1 = t0 + span
    m, h = substeps(t0, t1, dt)
    stepper = GridStepper(SimpleNamespace(problem=PROBLEM), dt=dt)
    assert stepper.propose(GridState(t0, np.zeros(1)), t0, t1) == h
    if m == 0 or m > 2000:
        return
    t, taken = t0, 0
    while True:
        step = stepper.propose(GridState(t, np.zeros(1)), t0, t1)
        t += step
        taken += 1
        if lands(t, t1, step):
            break
    assert taken == m


@given(starts, spans, st.floats(1e-3, 10.0), st.floats(0.1, 1.0))
def test_adaptive_grid_step_is_the_rule(t, span, bound, cfl):
    """The adaptive grid step: the rule's ``h`` for what is left at ``cfl * bound``."""
    t1 = t + span
    solver = SimpleNamespace(problem=PROBLEM, step_bound=lambda m: bound)
    stepper = GridStepper(solver, cfl=cfl)
    k, h = substeps(t, t1, cfl * bound)
    assert stepper.propose(GridState(t, np.zeros(1)), 0.0, t1) == (h if k else t1 - t)


@given(st.lists(spans, min_size=1, max_size=4), dts)
def test_the_loop_takes_the_rules_steps(gaps, dt):
    """Through :func:`particles.engine.loop.run`, a fixed-step stepper takes ``m`` steps per
    save interval and observes each save time exactly."""
    ts = np.cumsum(gaps)
    want = [substeps(a, b, dt)[0] for a, b in zip(np.r_[0.0, ts[:-1]], ts)]
    if sum(want) > 5000:
        return

    class Counter:
        name, advice = "counter", ""

        def propose(self, state, t_start, t_end):
            return substeps(t_start, t_end, dt)[1]

        def step(self, state, h):
            return state._replace(t=state.t + h, k=state.k + 1)

        def check(self, state):
            return None

    class S(NamedTuple):
        t: float
        k: int

    seen = []
    run(Counter(), S(0.0, 0), ts, lambda j, s: seen.append((s.t, s.k)), progress=False)
    assert [t for t, _ in seen] == ts.tolist()
    assert np.diff([0] + [k for _, k in seen]).tolist() == want


def test_no_second_rule_in_the_source():
    """No module but the loop writes the step count (``ceil(... - 1e-9)``) or the landing
    test (``t_end - t <= 0.5 * h``, a difference of times against half a step): a second
    copy would drift from the one rule."""
    count = re.compile(r"ceil\([^\n]*-\s*1e-9")
    landing = re.compile(r"-\s*[\w.\[\]]+\s*<=\s*0\.5\s*\*")
    home = ROOT / "particles" / "engine" / "loop.py"
    found = []
    for floor in ("particles", "meanfield", "analysis"):
        for path in sorted((ROOT / floor).rglob("*.py")):
            if path == home:
                continue
            text = path.read_text()
            for rx in (count, landing):
                found += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in rx.finditer(text)]
    assert not found, found
    text = home.read_text()
    assert count.search(text) and landing.search(text)  # the scan sees the rule's form
