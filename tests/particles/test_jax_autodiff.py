"""φ written once: the autodiff derivatives of every built-in kernel's ``phi_xp`` equal
the hand-written ones, and ``phi`` is ``phi_xp`` on numpy."""
import numpy as np
import pytest

from particles.kernels import CircleKernel, GaussianRBF, SigmoidUnit, SphereRBF, states_phi

pytest.importorskip("jax")
from particles.kernels import autodiff  # noqa: E402

#: Both sides evaluate the same few exp/tanh/products per entry, each rounded to within a
#: few ulp (eps = 2.2e-16) of the value; their difference is ~1e-15 of the largest entry
#: (the circle at κ = 3 has |∂²φ| <= κ² + κ = 12). 1e-12 of max(1, largest) leaves a
#: margin of 100 or more, and a wrong derivative (a sign, a factor σ², a missing term)
#: is off by O(1).
TOL = 1e-12


def _kernels():
    return [CircleKernel(3.0), GaussianRBF(2, 0.7), GaussianRBF(3, 1.3, normalised=True),
            SphereRBF(4, 0.8), SigmoidUnit(3, "sigmoid"), SigmoidUnit(2, "tanh"),
            SigmoidUnit(2, "relu")]


def _points(k, rng, Q=7, n=5, lead=(2,)):
    x = rng.normal(size=lead + (Q, k.d))
    y = rng.normal(size=lead + (n, k.N))
    if k.y_domain == "circle":
        x, y = np.mod(3 * x, 2 * np.pi), np.mod(3 * y, 2 * np.pi)
    if k.y_domain == "sphere":
        x = x * np.sqrt(k.d) / np.linalg.norm(x, axis=-1, keepdims=True)
        y = k.retract(y)
    return x, y


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= TOL * max(1.0, np.max(np.abs(b)))


@pytest.mark.parametrize("k", _kernels(), ids=lambda k: f"{k.name}-{k.d}")
def test_autodiff_equals_hand_written(k, rng):
    assert states_phi(k)
    x, y = _points(k, rng)
    assert np.array_equal(k.phi(x, y), k.phi_xp(np, x, y))
    p, dp = k.phi_grad(x, y)
    pa, dpa = autodiff.phi_grad(k, x, y)
    _close(pa, p)
    _close(dpa, dp)
    _close(autodiff.grad_x(k, x, y), k.grad_x(x, y))
    if "hessian_y" in k.capabilities:
        hw = k.phi_hessian(x[0], y[0])
        ad = autodiff.phi_hessian(k, x[0], y[0])
        for u, v in zip(ad, hw):
            _close(u, v)


def test_relu_not_offered_a_hessian():
    # relu's autodiff Hessian is 0 across the kink: the kernel does not declare one
    assert "hessian_y" not in SigmoidUnit(2, "relu").capabilities


def test_sphere_constraint_once(rng):
    import jax.numpy as jnp

    k = SphereRBF(3, 1.0)
    y, v = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    _close(k.retract_xp(jnp, jnp.asarray(y)), k.retract(y))
    _close(k.tangent_xp(jnp, jnp.asarray(y), jnp.asarray(v)), k.tangent(y, v))
