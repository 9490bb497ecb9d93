"""The n-dependent SGD batch schedule of the paper's quench (Sec. 4.2)."""
import math

import pytest

from analysis.run.experiment import ConfigError, DYNAMICS_SCHEMA
from particles.dynamics import Dynamics, scaled_batch

QUENCH = [[0.0, {"P0": 0.2, "alpha": 0.5, "round": "floor"}],
          [3.0, {"P0": 0.04, "alpha": 1.0, "round": "floor"}]]


@pytest.mark.parametrize("n", [5, 16, 64, 100, 256, 1000, 1024])
def test_quench_gives_the_documented_batch_at_every_step(n):
    dyn = Dynamics(scheme="sgd", dt=0.25, batch=QUENCH)
    # floor(n/5) and floor((n/5)^2) = floor(n^2/25), in exact integer arithmetic
    before, after = max(1, n // 5), max(1, (n * n) // 25)
    for k in range(24):  # steps start at t = k dt; the quench at t = 3 is step 12
        t = k * dyn.dt
        assert dyn.batch_at(t, n) == (before if t < 3.0 else after), (n, t)


def test_rounding_of_exact_products():
    # 0.2 * 1000 = 200.00000000000003 in binary; floor must give 200, ceil 200 too
    assert scaled_batch({"P0": 0.2, "alpha": 0.5, "round": "floor"}, 1000) == 200
    assert scaled_batch({"P0": 0.2, "alpha": 0.5}, 1000) == 200
    assert scaled_batch({"P0": 0.2, "alpha": 0.5}, 1001) == math.ceil(200.2)
    assert scaled_batch({"P0": 0.2, "alpha": 0.5, "round": "floor"}, 4) == 1  # at least 1


def test_fixed_schedule_and_scaling_still_work():
    assert Dynamics(scheme="sgd", batch=[[0, 8], [1.0, 64]]).batch_at(0.99) == 8
    assert Dynamics(scheme="sgd", batch=[[0, 8], [1.0, 64]]).batch_at(1.0) == 64
    assert Dynamics(scheme="sgd", batch={"P0": 1.0, "alpha": 0.5}).batch_at(5.0, 37) == 37
    with pytest.raises(ValueError, match="needs n"):
        Dynamics(scheme="sgd", batch=QUENCH).batch_at(0.0)


def test_config_accepts_the_quench_and_names_bad_entries():
    check = DYNAMICS_SCHEMA["batch"]
    assert check(QUENCH, "dynamics.batch") == QUENCH
    with pytest.raises(ConfigError, match=r"dynamics.batch\[1\]\[1\].round"):
        check([[0, 4], [1.0, {"P0": 1, "alpha": 1, "round": "up"}]], "dynamics.batch")
    with pytest.raises(ConfigError, match=r"dynamics.batch\[1\]\[1\]"):
        check([[0, 4], [1.0, {"P0": 1}]], "dynamics.batch")
