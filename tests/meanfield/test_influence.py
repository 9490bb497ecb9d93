"""The influence (first-variation) method: exact adjoint, closed form at t = 0."""
import numpy as np
import pytest
from scipy import special

from meanfield.characteristics import characteristic_nodes
from meanfield.influence import clt_covariance_influence, influence_matrices, velocity_vjp
from particles import Dynamics, ParticleStepper, run
from particles.laws import CLaw
from particles.closed_forms import circle_K
from particles.presets import circle_problem


def _circle(c_law, Q=32):
    return circle_problem(2.0, Q, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3], c_law=c_law)


@pytest.mark.parametrize("c_law", [CLaw("uniform", low=-1.5, high=1.5),
                                   CLaw("normal", mean=0.3, std=0.8)])
def test_sigma_0_closed_form(c_law):
    # Sigma_0(x, x') = E[c^2] K(x, x') - E[c]^2 E phi(x) E phi(x') with
    # K = e^{-2 kappa} I_0(2 kappa |cos((x - x')/2)|), E phi = e^{-kappa} I_0(kappa) (THEORY §7).
    p = _circle(c_law, Q=16)
    ds = clt_covariance_influence(p, [0.0], grid={"y": 32, "c": 6})
    x = p.x
    K = circle_K(p.kernel)[0](x, x)
    ref = c_law.second_moment() * K - (c_law.mean() * special.ive(0, 2.0)) ** 2
    np.testing.assert_allclose(ds["clt_cov"].values[0], ref, rtol=0, atol=1e-8)
    assert ds["clt_cov"].dims == ("t", "x", "x_")
    np.testing.assert_allclose(ds["clt_var"].values[0], np.diag(ref), atol=1e-8)


def test_velocity_vjp_matches_finite_differences(rng):
    # <lambda, J e_k> by central differences (h = 1e-6: error ~ h^2 * |v'''| + eps/h ~ 1e-10).
    p = _circle(CLaw("uniform", low=-1.5, high=1.5))
    y, c, w = characteristic_nodes(p, 8, 3)
    c = c + 0.1
    lY, lC = rng.normal(size=(2,) + y.shape), rng.normal(size=(2,) + c.shape)
    dY, dC, dw = velocity_vjp(p, y, c, w, lY, lC)

    def L(Y, C, W):
        vy, vc = p.velocity(Y[None], C[None], W[None])
        return np.einsum("kjn,jn->k", lY, vy[0]) + lC @ vc[0]

    h = 1e-6
    for j in (0, 7, 20):
        e = np.zeros_like(c)
        e[j] = h
        ey = np.zeros_like(y)
        ey[j, 0] = h
        np.testing.assert_allclose((L(y, c + e, w) - L(y, c - e, w)) / (2 * h), dC[:, j], atol=1e-8)
        np.testing.assert_allclose((L(y, c, w + e) - L(y, c, w - e)) / (2 * h), dw[:, j], atol=1e-8)
        np.testing.assert_allclose((L(y + ey, c, w) - L(y - ey, c, w)) / (2 * h), dY[:, j, 0], atol=1e-8)


def test_influence_is_the_derivative_of_the_discrete_flow():
    # D[t, :, j] = d f_0(t)/d w_j of the RK4 characteristics run, checked by central
    # differences in w_j (h = 1e-6; the discrete adjoint is exact, FD error ~ 1e-10).
    p = _circle(CLaw("uniform", low=-1.5, high=1.5))
    ts = [0.0, 1.0, 2.0]
    y, c, w = characteristic_nodes(p, 8, 3)
    D, w2, f0, _ = influence_matrices(p, ts, grid={"y": 8, "c": 3, "dt": 0.1})
    np.testing.assert_array_equal(w, w2)

    def f_of(wv):
        out = {}
        st = ParticleStepper(p, Dynamics("gd", "rk4", 0.1), wv[None])
        run(st, st.init(y[None], c[None]), ts,
            lambda k, s: out.__setitem__(k, p.network(s.y, wv * s.c)[0]))
        return np.stack([out[k] for k in range(len(ts))])

    np.testing.assert_allclose(f_of(w), f0, rtol=1e-14, atol=1e-14)
    for j in (0, 5, 17):
        e = np.zeros_like(w)
        e[j] = 1e-6
        np.testing.assert_allclose((f_of(w + e) - f_of(w - e)) / 2e-6, D[:, :, j], atol=1e-8)


def test_covariance_symmetric_psd():
    p = _circle(CLaw("uniform", low=-1.5, high=1.5))
    ds = clt_covariance_influence(p, [0.0, 2.0, 5.0], grid={"y": 16, "c": 4, "dt": 0.1})
    cov = ds["clt_cov"].values
    np.testing.assert_array_equal(cov, cov.transpose(0, 2, 1))
    ev = np.linalg.eigvalsh(cov)
    assert np.all(ev >= -1e-12 * ev.max(axis=1, keepdims=True))
