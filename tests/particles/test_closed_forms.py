"""Closed forms of F and K (particles.closed_forms) against quadrature, and the dispatch.

Tolerances: the Gaussian integrands are smooth and decay like exp(-x²/(2σ²)); the
trapezoid rule on a box of half-width ≥ 12 σ_max (tails below e^{-72}) with spacing
h ≤ σ_min/4 is exponentially accurate (the error of the trapezoid rule for an analytic
integrand on R decays like exp(-2π² σ²/h²) < e^{-300}), so 1e-11 relative is met by
rounding alone, while a wrong prefactor or variance fails by orders of magnitude.
Gauss–Hermite with 80 points per axis integrates the Gaussian-times-Gaussian integrands of
the teacher case to rounding (smooth entire functions of moderate width).
"""
import numpy as np
import pytest

from particles.closed_forms import CLOSED_FORMS, kernel_form
from particles.kernels import CircleKernel, GaussianRBF, SigmoidUnit, SphereRBF
from particles.measures import CircleUniform, GaussianMeasure, Lebesgue, SphereUniform
from particles.presets import problem_rngs
from particles.targets import FourierTarget, GaussianMixture, TeacherNetwork, ThreeSpin

RTOL = 1e-11


def _quad_F_K(kernel, x, w, f, y):
    """F(y) = Σ_q w_q φ(x_q, y) f(x_q), K(y, y') = Σ_q w_q φ φ': shapes (n,), (n, n)."""
    p = kernel.phi(x, y)  # (n, Q)
    return p @ (w * f), (p * w) @ p.T


def _check(form, kernel, x, w, f, y):
    F, K = _quad_F_K(kernel, x, w, f, y)
    scaleF, scaleK = np.max(np.abs(F)), np.max(np.abs(K))
    np.testing.assert_allclose(form.F(y[None])[0], F, rtol=0, atol=RTOL * scaleF)
    np.testing.assert_allclose(form.K(y[None], y[None])[0], K, rtol=0, atol=RTOL * scaleK)
    # gradients: the same quadrature with ∇_yφ
    p, dp = kernel.phi_grad(x, y)
    gF = np.einsum("nqk,q->nk", dp, w * f)
    gK = np.einsum("nqk,mq->nmk", dp * w[:, None], p)
    np.testing.assert_allclose(form.grad_F(y[None])[0], gF, rtol=0,
                               atol=RTOL * np.max(np.abs(gF)))
    np.testing.assert_allclose(form.grad_K(y[None], y[None])[0], gK, rtol=0,
                               atol=RTOL * np.max(np.abs(gK)))


@pytest.mark.parametrize("d", [1, 2])
def test_gaussian_lebesgue_mixture_against_fine_trapezoid(d):
    rng = np.random.default_rng(d)
    kernel = GaussianRBF(d, 0.7, normalised=True)
    K = 3
    target = GaussianMixture([0.5, -1.0, 0.8], rng.uniform(-1.5, 1.5, (K, d)),
                             [0.6, 1.0, 0.8])
    coarse = Lebesgue([-6.0] * d, [6.0] * d, 11)
    form, reason = kernel_form(kernel, coarse, target)
    assert form is not None, reason
    # quadrature: half-width 14 >= 12 * 1.0 + centres; h = 28 / (m - 1) <= 0.6 / 4
    m = 401 if d == 1 else 191
    fine = Lebesgue([-14.0] * d, [14.0] * d, m)
    y = rng.uniform(-2, 2, (4, d))
    _check(form, kernel, fine.nodes, fine.weights, target(fine.nodes), y)


def test_gaussian_lebesgue_unnormalised_kernel():
    kernel = GaussianRBF(1, 0.5)
    target = GaussianMixture([1.0], [[0.3]], [0.4])
    form, _ = kernel_form(kernel, Lebesgue([-5.0], [5.0], 11), target)
    fine = Lebesgue([-10.0], [10.0], 801)
    y = np.array([[-0.7], [0.1], [1.2]])
    _check(form, kernel, fine.nodes, fine.weights, target(fine.nodes), y)


def test_gaussian_teacher_against_gauss_hermite():
    d, scale = 2, 1.3
    kernel = GaussianRBF(d, 0.9)
    rng = np.random.default_rng(3)
    target = TeacherNetwork(kernel, rng.standard_normal((3, d)), rng.standard_normal(3))
    mu = GaussianMeasure(d, 80**2, scale=scale)
    form, reason = kernel_form(kernel, mu, target)
    assert form is not None, reason
    _check(form, kernel, mu.nodes, mu.weights, target(mu.nodes), rng.standard_normal((4, d)))


def test_circle_fourier_against_trapezoid():
    kernel = CircleKernel(2.0)
    target = FourierTarget(cos=[0.2, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3])
    form, _ = kernel_form(kernel, CircleUniform(16), target)
    fine = CircleUniform(256)  # trapezoid on the circle: spectral
    y = np.random.default_rng(4).uniform(0, 2 * np.pi, (5, 1))
    _check(form, kernel, fine.nodes, fine.weights, target(fine.nodes), y)


def test_sphere_interpolation_energy_is_f_and_phi():
    """(4.5): F := f and K := φ (THEORY §6), with ∇₁K the y-gradient of φ(y', y)."""
    d = 4
    kernel = SphereRBF(d, 0.8)
    t_rng, x_rng = problem_rngs(1)
    target = ThreeSpin.random(d, t_rng)
    mu = SphereUniform(d, 10, x_rng)
    assert kernel_form(kernel, mu, target)[0] is None  # the data energy has no closed form
    form, _ = kernel_form(kernel, mu, target, "interpolation")
    y = mu.sample(np.random.default_rng(5), 3)
    y2 = mu.sample(np.random.default_rng(6), 4)
    np.testing.assert_array_equal(form.F(y), target(y))
    # K(y, y') = phi(y', y) (4.5): distinct y and y' so that a swap would show in the shape
    np.testing.assert_array_equal(form.K(y, y2), kernel.phi(y2, y))
    H = 1e-6
    e = np.zeros(d)
    e[0] = H
    fd = (form.K(y + e, y) - form.K(y - e, y)) / (2 * H)
    # central difference: truncation H^2/6 |d^3 K| ~ 1e-12 alpha^3 and round-off
    # eps K / H ~ 2e-10 (K <= 1 on the sphere): atol 1e-9 is 5 times the round-off
    np.testing.assert_allclose(form.grad_K(y, y)[..., 0], fd, rtol=1e-7, atol=1e-9)


def test_no_closed_form_names_the_parts():
    kernel = SigmoidUnit(1, "tanh")
    form, reason = kernel_form(kernel, Lebesgue([-1.0], [1.0], 5),
                               GaussianMixture([1.0], [[0.0]], [1.0]))
    assert form is None
    assert "'tanh'" in reason and "'lebesgue'" in reason and "gaussian x lebesgue" in reason


def test_the_table_is_static_and_keyed_by_types():
    assert all(len(k) == 4 and all(isinstance(v, type) for v in k[:3])
               and isinstance(k[3], str) for k in CLOSED_FORMS)
