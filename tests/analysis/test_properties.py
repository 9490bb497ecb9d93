"""Property-based checks (hypothesis) on random small problems.

* M[rho] of (2.38) is symmetric, positive semi-definite and satisfies (2.39);
* the weak form of Dean's equation (2.5) along the particle dynamics;
* energy dissipation dE/dt = -|grad E|^2 for E = n l (2.2);
* one grid step conserves mass (with the outflow) and keeps rho >= 0 under the CFL bound;
* fit_power_law recovers a known exponent within its interval at the stated rate.

Shapes are small and strategies bounded; tolerances are derived where they are set.
"""
import numpy as np
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from meanfield import mkernel as mk
from analysis.checks.fit import fit_power_law
from analysis.checks.mkernel import identity_scale, identity_tolerance
from meanfield.grid.solve import GridSolver, make_grid
from particles import Dynamics, State, step
from particles.laws import CLaw
from particles.presets import circle_problem

TWO_PI = 2 * np.pi
kappas = st.floats(0.5, 4.0)
coef = st.floats(-1.0, 1.0)


@st.composite
def circle_case(draw, n_max=12):
    """A random circle problem (κ, Q, two-mode target) and a particle set (y, c)."""
    kappa = draw(kappas)
    Q = draw(st.integers(8, 40))
    cos = draw(st.lists(coef, min_size=0, max_size=3))
    sin = draw(st.lists(coef, min_size=0, max_size=3))
    n = draw(st.integers(1, n_max))
    y = draw(hnp.arrays(float, (n, 1), elements=st.floats(0.0, TWO_PI, exclude_max=True)))
    c = draw(hnp.arrays(float, n, elements=st.floats(-2.0, 2.0)))
    return circle_problem(kappa, Q, cos, sin, c_law=CLaw("uniform", low=-2, high=2)), y, c


@given(circle_case(n_max=30),
       st.integers(0, 2**32 - 1))
# y = [0], c = [0], seed 0: r·φ cancels to a relative gap of 1.9e-11 between the sides
@example((circle_problem(1.6, 36, [], [], c_law=CLaw("uniform", low=-2, high=2)),
          np.zeros((1, 1)), np.zeros(1)), 0)
def test_m_is_symmetric_psd_and_satisfies_239(case, seed):
    p, y, c = case
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.0, 1.0, len(c))
    M = mk.m_kernel(p.kernel, p.x, y, c, a)
    np.testing.assert_array_equal(M, M.T)
    ev = mk.operator_spectrum(M, p.w)
    top = max(float(ev[0]), 1e-300)
    assert float(ev[-1]) >= -mk.psd_tolerance(len(p.w)) * top
    r = rng.standard_normal((3, len(p.w)))
    lhs, rhs = mk.identity_239(p.kernel, p.x, p.w, y, c, a, r)
    # Both sides are ‖Aᵀu‖² (M = AAᵀ, u = w r) in exact arithmetic, but A ᵀu sums terms of
    # both signs (r has random signs), so it can cancel far below its terms and no bound
    # relative to the sides exists. Round-off is bounded by the same sums with every term
    # replaced by its absolute value, B = ‖|A|ᵀ|u|‖² ≥ |uᵀMu|: the left side forms M from
    # J(N+1) products per entry (|δM| ≤ (J(N+1) + 2κ) ε |A||A|ᵀ, κ ε the relative error of
    # one entry of A) and then a double sum of Q² terms (γ_{Q²} |u|ᵀ|M||u| ≤ Q² ε B); the
    # right side sums Q terms per R_j, ∂R_j (error (Q + κ + 1) ε (|A|ᵀ|u|)_j), squares them
    # (twice the relative error) and sums J(N+1) non-negative terms. Together
    # |lhs − rhs| ≤ (Q² + 2Q + 2J(N+1) + 50) ε B (analysis.checks.mkernel.identity_tolerance
    # derives it term by term; κ ≤ 10). Exactly 0 ≤ 0 for a zero-weight measure.
    B = identity_scale(p.kernel, p.x, p.w, y, c, a, r)
    assert np.all(B >= np.abs(rhs) * (1 - 1e-12))  # the scale bounds the sides themselves
    tol = identity_tolerance(len(p.w), len(c), 1)
    assert np.all(np.abs(lhs - rhs) <= tol * B), (np.abs(lhs - rhs) / B, tol)


H = 1e-4
# Central differences of a smooth trajectory g(t) (g = (1/n)Σ chi or E): truncation
# (h^2/6)|g'''|. Each time derivative brings a rate of at most κ|c||r|_mu ≲ 4·2·2 = 16
# (|r|_mu <= |f_n| + |f| <= 2 + 2), so |g'''| ≲ 16^3 · scale and the truncation is
# ≲ 7e-6 · scale for h = 1e-4; round-off eps·|g|/h ~ 1e-11; RK4's own error per step,
# O(h^5 16^5) ~ 1e-14, is negligible. Tolerance 1e-4 · scale (scale = 1 + the size of
# the terms of the exact right side); the worst case seen in 200 random draws is 3e-9.
TOL = 1e-4


def _trajectory_pm(p, y, c):
    """States at t = +h and -h from (y, c) by one RK4 step of GD (2.1)."""
    n = len(c)
    dyn = Dynamics("gd", "rk4", 1.0)
    st0 = State(0.0, y[None], c[None])
    return step(p, dyn, st0, H, 1.0 / n), step(p, dyn, st0, -H, 1.0 / n)


@given(circle_case(), st.tuples(coef, coef, coef, coef, coef))
def test_dean_weak_form(case, ab):
    # (2.5) tested against chi: d/dt ∫chi dρ_n = (1/n) Σ_i ∇_z chi(z_i) · ż_i
    p, y, c = case
    a1, a2, a3, a4, a5 = ab

    def chi(yy, cc):
        return (a1 * cc**2 + a2 * cc * np.cos(yy) + a3 * np.sin(yy) + a4 * cc
                + a5 * cc * np.sin(2 * yy))

    def grad_chi(yy, cc):
        dy = -a2 * cc * np.sin(yy) + a3 * np.cos(yy) + 2 * a5 * cc * np.cos(2 * yy)
        dc = 2 * a1 * cc + a2 * np.cos(yy) + a4 + a5 * np.sin(2 * yy)
        return dy, dc

    n = len(c)
    sp, sm = _trajectory_pm(p, y, c)
    lhs = (np.mean(chi(sp.y[0, :, 0], sp.c[0])) - np.mean(chi(sm.y[0, :, 0], sm.c[0]))) / (2 * H)
    vy, vc = p.velocity(y[None], c[None], 1.0 / n)
    gy, gc = grad_chi(y[:, 0], c)
    terms = np.concatenate([gy * vy[0, :, 0], gc * vc[0]]) / n
    rhs = float(np.sum(terms))
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=TOL * (1 + np.sum(np.abs(terms))))


@given(circle_case())
def test_energy_dissipation(case):
    # E = n l (2.2): dE/dt = -Σ_i (|ẏ_i|² + |ċ_i|²) (THEORY §2)
    p, y, c = case
    n = len(c)
    sp, sm = _trajectory_pm(p, y, c)

    def E(s):
        return n * float(p.loss(p.network(s.y, s.c / n))[0])

    lhs = (E(sp) - E(sm)) / (2 * H)
    vy, vc = p.velocity(y[None], c[None], 1.0 / n)
    rhs = -float(np.sum(vy**2) + np.sum(vc**2))
    assert rhs <= 0.0
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=TOL * (1 + abs(rhs)))


@given(st.integers(8, 24), st.integers(8, 16),
       st.lists(st.floats(-2.0, 2.0), min_size=2, max_size=6),
       st.floats(0.1, 1.0), st.integers(0, 2**32 - 1), st.floats(0.0, 0.6))
def test_grid_step_conserves_mass_and_positivity(ny, nc, ucoef, cfl, seed, empty):
    # A random density (a fraction `empty` of cells exactly 0, so positivity is not
    # trivial) and a random smooth potential U(y) injected in place of the mean-field
    # one (instance attribute U_of_g: the step never knows where U comes from).
    # Mass: the scheme is conservative, so sum(m+) + outflow = sum(m) to round-off
    # (each flux is added once and subtracted once: ~ N eps relative).
    # Positivity: SSP-RK3 is a convex combination of forward-Euler stages, each
    # positive for dt below the stage bound; the limiter keeps point values between
    # neighbouring averages, so m+ >= 0 up to round-off (a few eps · max m).
    p = circle_problem(1.0, 16)
    grid = make_grid(p, ny, nc, -2.0, 2.0)
    solver = GridSolver(p, grid, potential="data")
    rng = np.random.default_rng(seed)
    yc = grid.y_centres[0]
    k = np.arange(1, len(ucoef) // 2 + 1)
    half = len(k)
    U = (np.cos(np.outer(yc, k)) @ np.asarray(ucoef[:half])
         + np.sin(np.outer(yc, k)) @ np.asarray(ucoef[half:2 * half]))
    # U ≡ 0 moves nothing and sets no CFL bound: keep U away from zero
    assume(np.max(np.abs(U)) > 1e-3)
    solver.U_of_g = lambda g: U
    m = rng.uniform(0.0, 1.0, grid.shape) * (rng.uniform(size=grid.shape) >= empty)
    assume(m.sum() > 0)
    m /= m.sum()
    dt = cfl * solver.cfl_bound(m)
    assume(np.isfinite(dt))
    res = solver.step(m, dt)
    if dt > res.bound:  # a later stage saw a wider support: shorten, as solve_grid does
        dt = cfl * res.bound
        res = solver.step(m, dt)
    assert dt <= res.bound * (1 + 1e-12)
    np.testing.assert_allclose(res.m.sum() + res.outflow, 1.0, rtol=0, atol=1e-13)
    assert res.m.min() >= -1e-15 * m.max()
    assert res.outflow >= -1e-15


@given(st.floats(-3.0, 3.0), st.floats(0.1, 10.0), st.integers(3, 8),
       st.floats(1.5, 4.0), st.floats(0.01, 0.3), st.integers(0, 2**32 - 1))
def test_fit_power_law_recovers_a_known_exponent(s, A, m, ratio, sigma, seed):
    # y = A x^s exp(sigma eps): Gaussian in log, so the Student-t interval of
    # fit_power_law has exact 95 % coverage. Over 200 fixed-seed replicates the count
    # inside is Binomial(200, 0.95): mean 190, sd 3.1; below 178 (4 sd) has probability
    # < 1e-4. Noiseless data give the exponent to round-off.
    x = 2.0 * ratio ** np.arange(m)
    fit = fit_power_law(x, A * x**s)
    np.testing.assert_allclose(fit.slope, s, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.exp(fit.intercept), A, rtol=1e-10)
    rng = np.random.default_rng(seed)
    inside = sum(fit_power_law(x, A * x**s * np.exp(sigma * rng.standard_normal(m))).contains(s)
                 for _ in range(200))
    assert inside >= 178
