"""Kernels and targets: every declared derivative against finite differences (one
parametrised set of tests over ALL kernels, including a user's kernel defined here),
pullbacks against the reference, the circle's closed forms (THEORY §7) against
quadrature, and capabilities that are not declared are refused by name.

Tolerance of the central differences used below: with step h the truncation error is
h²/6·|∂³g| and the rounding error about eps·|g|/h. For h = 1e-5 and derivatives of
order one (all inputs here are O(1) and the kernels smooth) this is ~1e-10 + ~1e-11, so
rtol = 1e-7 with atol = 1e-9 (for entries that vanish) leaves a wide margin while a wrong
factor, sign or index fails by orders of magnitude.
"""
import numpy as np
import pytest
from scipy import integrate

from particles.engine.config import CapabilityError, require
from particles.kernels import (CircleKernel, GaussianRBF, Kernel, SigmoidUnit, SphereRBF,
                               pullback_reference)
from particles.closed_forms import circle_fourier_F, circle_K
from particles.presets import circle_problem
from particles.targets import FourierTarget, TeacherNetwork, ThreeSpin

H = 1e-5
FD = dict(rtol=1e-7, atol=1e-9)


def _fd(g, z):
    """Central differences of g(z) -> (...,) in every coordinate of z: shape z.shape."""
    out = np.empty(np.shape(g(z)) + (z.shape[-1],))
    for k in range(z.shape[-1]):
        e = np.zeros(z.shape[-1])
        e[k] = H
        out[..., k] = (g(z + e) - g(z - e)) / (2 * H)
    return out


def _sphere_points(rng, shape, d):
    g = rng.standard_normal(shape + (d,))
    return g * np.sqrt(d) / np.linalg.norm(g, axis=-1, keepdims=True)


class RationalCircle(Kernel):
    r"""A user's kernel, one class: :math:`\varphi = 1/(1 + \kappa(1 - \cos(x - y)))`.

    Declares ``"fourier"`` and inherits the FFT default of ``fourier_coefficients``."""

    name = "rational_circle"
    N = d = 1
    y_domain = "circle"
    translation_invariant = True
    capabilities = frozenset({"grad_x", "hessian_y", "fourier"})

    def __init__(self, kappa=1.5):
        self.kappa = kappa

    def wrap(self, y):
        return np.mod(y, 2 * np.pi)

    def _g(self, s):
        k = self.kappa
        u = 1.0 / (1.0 + k * (1.0 - np.cos(s)))
        du = k * np.sin(s) * u * u  # d/dy of u(x − y)
        d2u = 2 * (k * np.sin(s)) ** 2 * u**3 - k * np.cos(s) * u * u
        return u, du, d2u

    def phi(self, x, y):
        return self._g(x[..., None, :, 0] - y[..., :, None, 0])[0]

    def phi_grad(self, x, y):
        u, du, _ = self._g(x[..., None, :, 0] - y[..., :, None, 0])
        return u, du[..., None]

    def grad_x(self, x, y):
        return -self.phi_grad(x, y)[1]

    def phi_hessian(self, x, y):
        u, du, d2u = self._g(x[None, :, 0] - y[:, None, 0])
        return u, du[..., None], d2u[..., None, None]


class Bare(Kernel):
    """A kernel declaring nothing beyond phi and phi_grad."""

    name = "bare"
    N = d = 1

    def phi(self, x, y):
        return np.exp(-(x[..., None, :, 0] - y[..., :, None, 0]) ** 2)

    def phi_grad(self, x, y):
        s = x[..., None, :, 0] - y[..., :, None, 0]
        p = np.exp(-s * s)
        return p, (2 * s * p)[..., None]


KERNELS = {
    "rational_circle": (RationalCircle, lambda rng, s: rng.uniform(0, 2 * np.pi, s + (1,)),
                        lambda rng, s: rng.uniform(0, 2 * np.pi, s + (1,))),
    "gaussian_normalised": (lambda: GaussianRBF(2, 0.9, normalised=True),
                            lambda rng, s: rng.standard_normal(s + (2,)),
                            lambda rng, s: rng.standard_normal(s + (2,))),
    "relu": (lambda: SigmoidUnit(3, "relu"), lambda rng, s: rng.standard_normal(s + (3,)),
             lambda rng, s: rng.standard_normal(s + (4,))),
    "bare": (Bare, lambda rng, s: rng.standard_normal(s + (1,)),
             lambda rng, s: rng.standard_normal(s + (1,))),
    "circle": (lambda: CircleKernel(2.0), lambda rng, s: rng.uniform(0, 2 * np.pi, s + (1,)),
               lambda rng, s: rng.uniform(0, 2 * np.pi, s + (1,))),
    "gaussian_rbf": (lambda: GaussianRBF(3, 0.8), lambda rng, s: rng.standard_normal(s + (3,)),
                     lambda rng, s: rng.standard_normal(s + (3,))),
    "sphere_rbf": (lambda: SphereRBF(4, 0.7), lambda rng, s: _sphere_points(rng, s, 4),
                   lambda rng, s: _sphere_points(rng, s, 4)),
    "sigmoid": (lambda: SigmoidUnit(3, "sigmoid"), lambda rng, s: rng.standard_normal(s + (3,)),
                lambda rng, s: rng.standard_normal(s + (4,))),
    "tanh": (lambda: SigmoidUnit(3, "tanh"), lambda rng, s: rng.standard_normal(s + (3,)),
             lambda rng, s: rng.standard_normal(s + (4,))),
}


@pytest.fixture(params=sorted(KERNELS))
def kernel_case(request):
    make, draw_x, draw_y = KERNELS[request.param]
    return make(), draw_x, draw_y


def test_phi_grad_y_matches_finite_differences(kernel_case):
    kernel, draw_x, draw_y = kernel_case
    rng = np.random.default_rng(0)
    x, y = draw_x(rng, (7,)), draw_y(rng, (5,))
    p, dp = kernel.phi_grad(x, y)
    np.testing.assert_allclose(p, kernel.phi(x, y), rtol=1e-14, atol=0)
    assert dp.shape == (5, 7, kernel.N)
    # differentiate each unit separately: phi(x, y)[i] depends on y[i] only
    for i in range(5):
        fd = _fd(lambda yi: kernel.phi(x, yi[None])[0], y[i])
        np.testing.assert_allclose(dp[i], fd, **FD)


def test_grad_x_matches_finite_differences(kernel_case):
    kernel, draw_x, draw_y = kernel_case
    if "grad_x" not in kernel.capabilities:
        pytest.skip("grad_x not declared (refusal: test_undeclared_capabilities_are_refused)")
    rng = np.random.default_rng(1)
    x, y = draw_x(rng, (6,)), draw_y(rng, (4,))
    gx = kernel.grad_x(x, y)
    assert gx.shape == (4, 6, kernel.d)
    for q in range(6):
        fd = _fd(lambda xq: kernel.phi(xq[None], y)[:, 0], x[q])
        np.testing.assert_allclose(gx[:, q], fd, **FD)


def test_batched_shapes_match_member_loop(kernel_case):
    """x (B, Q, d) with y (B, n, N) is the member-by-member evaluation."""
    kernel, draw_x, draw_y = kernel_case
    rng = np.random.default_rng(2)
    x, y = draw_x(rng, (3, 6)), draw_y(rng, (3, 4))
    p, dp = kernel.phi_grad(x, y)
    gx = kernel.grad_x(x, y) if "grad_x" in kernel.capabilities else None
    for b in range(3):
        pb, dpb = kernel.phi_grad(x[b], y[b])
        np.testing.assert_allclose(p[b], pb, rtol=1e-14, atol=0)
        np.testing.assert_allclose(dp[b], dpb, rtol=1e-14, atol=0)
        if gx is not None:
            np.testing.assert_allclose(gx[b], kernel.grad_x(x[b], y[b]), rtol=1e-14, atol=0)


def test_phi_hessian_matches_finite_differences(kernel_case):
    """The declared Hessian in y: value and gradient as phi_grad, the Hessian as central
    differences of phi_grad (same FD tolerance as above)."""
    kernel, draw_x, draw_y = kernel_case
    if "hessian_y" not in kernel.capabilities:
        pytest.skip("hessian_y not declared (refusal: test_undeclared_capabilities_are_refused)")
    rng = np.random.default_rng(7)
    x, y = draw_x(rng, (6,)), draw_y(rng, (4,))
    p, dp, hp = kernel.phi_hessian(x, y)
    assert hp.shape == (4, 6, kernel.N, kernel.N)
    p1, dp1 = kernel.phi_grad(x, y)
    np.testing.assert_allclose(p, p1, rtol=1e-14, atol=0)
    np.testing.assert_allclose(dp, dp1, rtol=1e-14, atol=0)
    for i in range(4):
        fd = _fd(lambda yi: kernel.phi_grad(x, yi[None])[1][0], y[i])  # (Q, N, N)
        np.testing.assert_allclose(hp[i], fd, **FD)


def test_fourier_coefficients_against_quadrature(kernel_case):
    r"""Declared Fourier coefficients against :math:`\frac1{2\pi}\int_0^{2\pi} g(s)\cos ks\,ds`
    by adaptive quadrature (its error estimate is below 1e-12 for these smooth g)."""
    kernel, _, _ = kernel_case
    if "fourier" not in kernel.capabilities:
        pytest.skip("fourier not declared (refusal: test_undeclared_capabilities_are_refused)")
    kmax = 6
    got = kernel.fourier_coefficients(kmax)
    assert got.shape == (kmax + 1,)
    g = lambda s: kernel.phi(np.array([[s]]), np.zeros((1, 1)))[0, 0]  # noqa: E731
    ref = [integrate.quad(lambda s: g(s) * np.cos(k * s), 0, 2 * np.pi, epsabs=1e-13,
                          epsrel=1e-12, limit=200)[0] / (2 * np.pi) for k in range(kmax + 1)]
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)


def test_tangent_and_retract(kernel_case):
    """Constraint kernels: retract lands on the manifold and is idempotent, tangent is a
    projection orthogonal to y, and t -> retract(y + t v) has velocity tangent(y, v) at 0
    (central differences, FD tolerance); unconstrained kernels: both are the identity."""
    kernel, _, draw_y = kernel_case
    rng = np.random.default_rng(8)
    y = kernel.retract(draw_y(rng, (2, 5)))
    v = rng.standard_normal(y.shape)
    t = kernel.tangent(y, v)
    np.testing.assert_allclose(kernel.tangent(y, t), t, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(kernel.retract(y), y, rtol=1e-14, atol=0)
    fd = (kernel.retract(y + H * t) - kernel.retract(y - H * t)) / (2 * H)
    np.testing.assert_allclose(fd, t, **FD)
    if "constraint" in kernel.capabilities:
        np.testing.assert_allclose(np.sum(t * y, -1), 0.0, atol=1e-12)
        assert not np.allclose(t, v)
    else:
        assert np.array_equal(t, v)
        assert np.array_equal(kernel.retract(y + 0.3), y + 0.3)


def test_undeclared_capabilities_are_refused(kernel_case):
    """What a kernel does not declare is refused by require and by the method itself,
    with a message naming the capability."""
    kernel, draw_x, draw_y = kernel_case
    rng = np.random.default_rng(9)
    x, y = draw_x(rng, (3,)), draw_y(rng, (2,))
    calls = {"grad_x": lambda: kernel.grad_x(x, y),
             "hessian_y": lambda: kernel.phi_hessian(x, y),
             "fourier": lambda: kernel.fourier_coefficients(3)}
    for cap, call in calls.items():
        if cap in kernel.capabilities:
            continue
        with pytest.raises(CapabilityError, match=repr(cap)):
            require(kernel, cap, "this test")
        with pytest.raises(CapabilityError, match=repr(cap)):
            call()


def test_bare_kernel_declares_nothing_extra():
    assert Bare().capabilities == frozenset()
    with pytest.raises(CapabilityError, match="'hessian_y'.*bare"):
        require(Bare(), "hessian_y", "the influence method")


@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,d)", "x(B,P,d)"])
def test_pullback_matches_reference(kernel_case, batched):
    """Generic pullback (and the circle's override) against the loop reference.

    Both compute the same sums in a different order: agreement to ~1e-13 relative.
    """
    kernel, draw_x, draw_y = kernel_case
    rng = np.random.default_rng(3 + batched)
    B, n, Q = 3, 5, 9
    y = draw_y(rng, (B, n))
    a = rng.standard_normal((B, n)) / n
    if batched:
        x = draw_x(rng, (B, Q))
        w = np.full((B, Q), 1.0 / Q)
        f_x = rng.standard_normal((B, Q))
    else:
        x = draw_x(rng, (Q,))
        w = rng.uniform(0.5, 1.5, Q) / Q
        f_x = rng.standard_normal(Q)
    got = kernel.pullback(y, a, x, w, f_x)
    ref = pullback_reference(kernel, y, a, x, w, f_x)
    for g, r, shape in zip(got, ref, [(B, Q), (B, n), (B, n, kernel.N)]):
        assert g.shape == shape
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14)


def test_sphere_tangent_and_retract():
    kernel = SphereRBF(5, 1.0)
    rng = np.random.default_rng(4)
    y = _sphere_points(rng, (2, 6), 5)
    v = rng.standard_normal(y.shape)
    t = kernel.tangent(y, v)
    np.testing.assert_allclose(np.sum(t * y, -1), 0.0, atol=1e-13)
    np.testing.assert_allclose(kernel.tangent(y, t), t, rtol=1e-14, atol=1e-15)
    r = kernel.retract(3.0 * y + 0.1 * v)
    np.testing.assert_allclose(np.linalg.norm(r, axis=-1), np.sqrt(5), rtol=1e-15)


# -- targets -------------------------------------------------------------------------
def test_fourier_target_gradient():
    f = FourierTarget(cos=[0.3, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3])
    x = np.random.default_rng(5).uniform(0, 2 * np.pi, (11, 1))
    np.testing.assert_allclose(f.grad(x), _fd(f, x), **FD)


@pytest.mark.parametrize("d", [3, 6])
def test_three_spin_value_and_gradient(d):
    """f is (4.1) written out; its gradient is (4.6)."""
    rng = np.random.default_rng(d)
    f = ThreeSpin.random(d, rng)
    x = _sphere_points(rng, (2, 7), d)
    explicit = np.einsum("pqr,...p,...q,...r->...", f.a, x, x, x) / d
    np.testing.assert_allclose(f(x), explicit, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f.grad(x), _fd(f, x), **FD)
    # (4.6) term by term
    g = np.einsum("pqr,...q,...r->...p",
                  f.a + np.einsum("rpq->pqr", f.a) + np.einsum("qrp->pqr", f.a), x, x) / d
    np.testing.assert_allclose(f.grad(x), g, rtol=1e-12, atol=1e-12)


def test_teacher_gradient_is_analytic(kernel_case):
    kernel, draw_x, draw_y = kernel_case
    rng = np.random.default_rng(6)
    t = TeacherNetwork(kernel, draw_y(rng, (4,)), rng.standard_normal(4))
    assert ("grad" in t.capabilities) == ("grad_x" in kernel.capabilities)
    if "grad" not in t.capabilities:
        with pytest.raises(CapabilityError, match="'grad_x'"):
            t.grad(draw_x(rng, (5,)))
        return
    x = draw_x(rng, (2, 5))
    assert t.grad(x).shape == x.shape
    np.testing.assert_allclose(t.grad(x), _fd(t, x), **FD)


# -- circle closed forms (THEORY §7) --------------------------------------------------
# The trapezoid rule with Q nodes integrates trigonometric polynomials of degree < Q
# exactly; phi(x, y) phi(x, y') f(x) has Fourier coefficients ~ I_k(2 kappa)/k!-like, so
# with kappa = 2 and Q = 256 the quadrature error is far below round-off: 1e-13.
KAPPA = 2.0
COS, SIN = [0.2, -0.4, 0.5], [0.0, 1.0, 0.0, -0.3]


def _trap(Q=256):
    return (2 * np.pi * np.arange(Q) / Q)[:, None], np.full(Q, 1.0 / Q)


def test_circle_F_and_K_closed_forms_against_quadrature():
    kernel = CircleKernel(KAPPA)
    target = FourierTarget(COS, SIN)
    x, w = _trap()
    rng = np.random.default_rng(7)
    y = rng.uniform(0, 2 * np.pi, (2, 6, 1))
    y[0, 0, 0] = np.pi + 1e-9  # near the kink of |cos((y - y')/2)| with y' = 0
    y[0, 1, 0] = 0.0
    p = kernel.phi(x, y)  # (2, 6, Q)
    F_quad = np.einsum("bnq,q->bn", p, w * target(x))
    K_quad = np.einsum("bnq,bmq,q->bnm", p, p, w)
    F, _ = circle_fourier_F(kernel, target)
    K, _ = circle_K(kernel)
    np.testing.assert_allclose(F(y), F_quad, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(K(y, y), K_quad, rtol=1e-12, atol=1e-13)


def test_circle_grad_F_and_grad_K_against_finite_differences():
    kernel = CircleKernel(KAPPA)
    F, grad_F = circle_fourier_F(kernel, FourierTarget(COS, SIN))
    K, grad_K = circle_K(kernel)
    rng = np.random.default_rng(8)
    y = rng.uniform(0, 2 * np.pi, (5, 1))
    y2 = np.concatenate([rng.uniform(0, 2 * np.pi, (3, 1)), y[:1] + np.pi], axis=0)
    np.testing.assert_allclose(grad_F(y), _fd(F, y), **FD)
    for i in range(5):
        fd = _fd(lambda yi: K(yi[None], y2)[0], y[i])
        np.testing.assert_allclose(grad_K(y, y2)[i], fd, **FD)


def test_circle_velocity_kernel_form_equals_data_form():
    """With an exact quadrature (Q = 256, see above) the residual form through the data
    and the (F, K) form of (2.1) are the same field: agreement to round-off, 1e-12."""
    problem = circle_problem(KAPPA, 256, COS, SIN)
    rng = np.random.default_rng(9)
    y = rng.uniform(0, 2 * np.pi, (3, 17, 1))
    c = rng.standard_normal((3, 17))
    vy_d, vc_d = problem.velocity(y, c, 1.0 / 17, form="data")
    vy_k, vc_k = problem.velocity(y, c, 1.0 / 17, form="kernel")
    np.testing.assert_allclose(vc_k, vc_d, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(vy_k, vy_d, rtol=1e-12, atol=1e-12)
