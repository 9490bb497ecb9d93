"""M[rho] of (2.38): the tangent kernel, PSD, the identity (2.39), closed forms, the grid."""
import numpy as np
import pytest
import xarray as xr
from scipy import special

from meanfield import mkernel as mk
from particles import Dynamics, State, step
from particles.presets import rbf_problem, sigmoid_problem, sphere_problem
from particles.closed_forms import circle_K
from particles.presets import circle_problem


def _problems():
    return {
        "circle": circle_problem(2.0, 32, cos=[0.0, 0.3], sin=[0.0, 1.0]),
        "rbf": rbf_problem(2, 0.8, 25, 3, seed=1),
        "sphere": sphere_problem(3, 1.5, 40, "data", seed=2),
        "sigmoid": sigmoid_problem(2, 30, "teacher", 3, activation="tanh", seed=3),
    }


@pytest.fixture(scope="module")
def problems():
    return _problems()


def _units(problem, rng, n):
    y, c = problem.sample_init(rng, n)
    return y, c


@pytest.mark.parametrize("kind", ["circle", "rbf", "sphere", "sigmoid"])
def test_m_of_particles_is_the_tangent_kernel(problems, kind, rng):
    # M[rho_n] from (2.38) with weights 1/n against n J J^T, J the Jacobian of f_n in z
    # computed by complex step from kernel.phi only: both are sums of the same O(n)
    # non-negative products, so they agree to a few n * eps relative (n = 24: 5e-15).
    p = problems[kind]
    y, c = _units(p, rng, 24)
    M = mk.m_kernel(p.kernel, p.x, y, c, np.full(24, 1 / 24))
    K, method = mk.tangent_kernel(p.kernel, p.x, y, c)
    assert method == "complex step"
    np.testing.assert_allclose(M, K, rtol=0, atol=1e-12 * np.abs(M).max())


@pytest.mark.parametrize("kind", ["circle", "rbf", "sphere"])
def test_closed_dynamics_of_f_n(problems, kind, rng):
    # (2.37) at finite n (THEORY §3): d f_n/dt = -M[rho_n] W (f_n - f), with d f_n/dt from
    # a central difference of the network along the particle dynamics (RK4, h = 1e-4:
    # truncation ~ h^2 |f'''| ~ 1e-8, round-off ~ eps/h ~ 1e-12). For the sphere this
    # also checks the tangential projection of grad_y phi.
    p = problems[kind]
    n = 16
    y, c = _units(p, rng, n)
    dyn = Dynamics("gd", "rk4", 1.0)
    h = 1e-4
    st = State(0.0, y[None], c[None])
    fp = p.network(*(lambda s: (s.y, s.c / n))(step(p, dyn, st, h, 1 / n)))[0]
    fm = p.network(*(lambda s: (s.y, s.c / n))(step(p, dyn, st, -h, 1 / n)))[0]
    dfdt = (fp - fm) / (2 * h)
    f_n = p.network(y[None], c[None] / n)[0]
    M = mk.m_kernel(p.kernel, p.x, y, c, np.full(n, 1 / n))
    pred = -M @ (p.w * (f_n - p.f_x))
    np.testing.assert_allclose(dfdt, pred, rtol=0, atol=1e-6 * np.abs(pred).max())


def test_central_difference_fallback_for_non_analytic_phi(problems, rng):
    # the logistic sigmoid goes through scipy.special.expit, which has no complex loop:
    # central differences, error ~ eps^(2/3) ~ 4e-11 relative
    p = sigmoid_problem(2, 30, "teacher", 3, activation="sigmoid", seed=3)
    y, c = _units(p, rng, 10)
    M = mk.m_kernel(p.kernel, p.x, y, c, np.full(10, 0.1))
    K, method = mk.tangent_kernel(p.kernel, p.x, y, c)
    assert method == "central differences"
    np.testing.assert_allclose(M, K, rtol=0, atol=1e-8 * np.abs(M).max())


@pytest.mark.parametrize("kind", ["circle", "rbf", "sphere", "sigmoid"])
def test_psd_and_identity_239(problems, kind, rng):
    p = problems[kind]
    y, c = _units(p, rng, 40)
    a = rng.uniform(0.1, 1.0, 40)
    M = mk.m_kernel(p.kernel, p.x, y, c, a)
    np.testing.assert_array_equal(M, M.T)
    ev = mk.operator_spectrum(M, p.w)
    assert mk.min_eigenvalue_ratio(ev) >= -mk.psd_tolerance(len(p.w))
    lhs, rhs = mk.identity_239(p.kernel, p.x, p.w, y, c, a, rng.standard_normal((5, len(p.w))))
    # both sides: sums of O(J + Q) terms of one sign -> relative round-off ~ (J+Q) eps
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_operator_spectrum_is_that_of_M_W(rng):
    A = rng.standard_normal((12, 30))
    M = A @ A.T
    w = rng.uniform(0.5, 2.0, 12)
    w /= w.sum()
    ev = mk.operator_spectrum(M, w)
    ref = np.sort(np.linalg.eigvals(M * w[None, :]).real)[::-1]  # r -> sum_p M_qp w_p r_p
    np.testing.assert_allclose(ev, ref, rtol=1e-10, atol=1e-14 * ref[0])
    assert np.all(np.diff(ev) <= 0)


def _circle_K_and_second_derivative(kappa, s):
    """K(s) = e^{-2κ} I_0(2κ|cos(s/2)|) and K''(s) by central differences (h = 1e-3)."""
    K = lambda u: special.ive(0, 2 * kappa * np.abs(np.cos(u / 2))) * np.exp(  # noqa: E731
        2 * kappa * np.abs(np.cos(u / 2)) - 2 * kappa)
    h = 1e-3
    return K(s), (K(s + h) - 2 * K(s) + K(s - h)) / h**2


def test_m_closed_form_on_the_circle():
    # y uniform on the circle (trapezoid rule, 256 nodes: spectral): with c = 0,
    # M(x, x') = ∫φφ' dy/2π = K(x - x') (THEORY §7); with c = 1 the extra term is
    # ∫∇_yφ∇_yφ' dy/2π = ∂_x∂_x' K(x - x') = -K''(x - x'). The FD second derivative
    # has error h^2 K''''/12 ~ 1e-7 relative.
    kappa = 1.5
    p = circle_problem(kappa, 24)
    y = 2 * np.pi * np.arange(256)[:, None] / 256
    a = np.full(256, 1 / 256)
    s = p.x[:, 0, None] - p.x[None, :, 0]
    Ks, K2 = _circle_K_and_second_derivative(kappa, s)
    K0 = circle_K(p.kernel)[0](p.x[None], p.x[None])[0]
    np.testing.assert_allclose(Ks, K0, rtol=1e-13)
    M0 = mk.m_kernel(p.kernel, p.x, y, np.zeros(256), a)
    np.testing.assert_allclose(M0, K0, rtol=0, atol=1e-13)
    M1 = mk.m_kernel(p.kernel, p.x, y, np.ones(256), a)
    np.testing.assert_allclose(M1 - M0, -K2, rtol=0, atol=1e-6 * np.abs(K2).max())


def test_grid_units_cell_masses():
    # a density on a uniform (y, c) grid: cell masses = density x cell volume, so a
    # uniform probability density gives masses 1/(ny nc) summing to 1, and M from the
    # grid is K + (sum_k c_k^2 m_k)(-K'') exactly (the midpoint second moment)
    kappa = 1.0
    p = circle_problem(kappa, 16)
    ny, nc, cmin, cmax = 64, 10, -1.0, 1.0
    yc = (np.arange(ny) + 0.5) * 2 * np.pi / ny
    cc = cmin + (np.arange(nc) + 0.5) * (cmax - cmin) / nc
    rho = xr.DataArray(np.full((ny, nc), 1 / (2 * np.pi * (cmax - cmin))), dims=("y", "c"),
                       coords={"y": yc, "c": cc})
    y, c, m = mk.grid_units(rho)
    assert y.shape == (ny * nc, 1) and c.shape == m.shape == (ny * nc,)
    np.testing.assert_allclose(m, 1 / (ny * nc), rtol=1e-13)
    M = mk.m_kernel(p.kernel, p.x, y, c, m)
    s = p.x[:, 0, None] - p.x[None, :, 0]
    K, K2 = _circle_K_and_second_derivative(kappa, s)
    c2 = np.mean(cc**2)
    np.testing.assert_allclose(M, K - c2 * K2, rtol=0, atol=1e-6 * np.abs(K).max())
    rho[:, :3] = 0.0  # empty cells are dropped
    assert len(mk.grid_units(rho)[2]) == ny * (nc - 3)


def test_grid_units_rejects_non_uniform_cells():
    rho = xr.DataArray(np.ones((3, 4)), dims=("y", "c"),
                       coords={"y": [0.0, 1.0, 3.0], "c": [0.0, 1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="not uniform"):
        mk.grid_units(rho)


def test_negative_weights_are_refused():
    p = circle_problem(1.0, 8)
    with pytest.raises(ValueError, match="non-negative"):
        mk.m_kernel(p.kernel, p.x, np.zeros((2, 1)), np.ones(2), np.array([1.0, -1.0]))


def test_psd_tolerance_catches_an_indefinite_matrix():
    # the PSD check can fail: a matrix with a genuinely negative eigenvalue
    ev = mk.operator_spectrum(np.diag([1.0, 0.5, -1e-6]), np.ones(3) / 3)
    assert mk.min_eigenvalue_ratio(ev) < -mk.psd_tolerance(3)

