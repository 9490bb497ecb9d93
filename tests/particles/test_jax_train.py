"""Random features (``dynamics.train = ["c"]``) on the JAX backend: y stays at its draw, bit
for bit, in every scheme, and GD agrees with the numpy backend to round-off."""
import numpy as np
import pytest

pytest.importorskip("jax")

from particles import Dynamics, simulate  # noqa: E402
from particles.laws import CLaw  # noqa: E402
from particles.presets import circle_problem  # noqa: E402


@pytest.fixture(scope="module")
def circle():
    return circle_problem(2.0, 32, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


def _run(problem, backend, scheme, **kw):
    d = Dynamics(scheme, dt=0.05, train=("c",), backend=backend, **kw)
    return simulate(problem, [16], 4, d, [0.0, 0.5, 1.0], root_seed=3, progress=False)


@pytest.mark.parametrize("scheme, kw", [("gd", {"integrator": "euler"}),
                                        ("gd", {"integrator": "rk4"}),
                                        ("sgd", {"batch": 8}),
                                        ("langevin", {"temperature": 1e-3})])
def test_y_frozen_bitwise_on_jax(circle, scheme, kw):
    y = _run(circle, "jax", scheme, **kw)["y"].values  # (n, seed, t, unit, y_dim)
    assert np.array_equal(y[:, :, 0], y[:, :, -1])
    assert np.array_equal(y[:, :, 0], y[:, :, 1])


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_gd_random_features_agree_between_backends(circle, integrator):
    # 20 steps of the c velocity alone: both backends sum the same n Q products in another
    # order, so they differ by round-off, ~ (steps) x (terms) x eps x |f| = 20 x 512 x 1.1e-16
    # x O(1) ~ 1e-12 at most; 1e-10 relative leaves a margin for the RK4 stages
    ref = _run(circle, "numpy", "gd", integrator=integrator)["f_n"].values
    got = _run(circle, "jax", "gd", integrator=integrator)["f_n"].values
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10 * np.abs(ref).max())
