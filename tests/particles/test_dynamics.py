"""Finite-n dynamics: energy, the exact f_n identity, SGD mean, orders, reruns."""
import numpy as np
import pytest

from analysis.checks.fit import fit_power_law
from particles import Dynamics, State, member_rng, simulate, step
from particles.laws import CLaw
from particles.presets import circle_problem


@pytest.fixture
def circle():
    return circle_problem(2.0, 32, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


def _units(problem, n, B=1, seed=0):
    draws = [problem.sample_init(member_rng(seed, 0, b), n) for b in range(B)]
    return np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws])


@pytest.mark.parametrize("integrator, dt", [("euler", 0.05), ("rk4", 0.1)])
def test_gd_energy_non_increasing(circle, integrator, dt):
    # E = n * loss is a Lyapunov function of (2.1); a stable explicit step keeps it
    # non-increasing step after step (checked at every one of 200 save times).
    ts = np.linspace(0.0, 20.0, 201)
    ds = simulate(circle, [8, 64], 3, Dynamics("gd", integrator, dt), ts, root_seed=3,
                  save_state=False)
    d = np.diff(ds["loss"].values, axis=-1)
    assert np.all(d <= 1e-14), d.max()
    assert np.all(ds["loss"].values[..., -1] < 0.9 * ds["loss"].values[..., 0])  # it trains


def test_dE_dt_equals_minus_squared_velocity(circle):
    # dE/dt = -sum_i (|dY_i/dt|^2 + |dC_i/dt|^2): central difference of E = n loss along
    # RK4 with h = 1e-3 has error O(h^2) ~ 1e-6 relative.
    n = 20
    y, c = _units(circle, n)
    st = State(0.0, y, c)
    dyn = Dynamics("gd", "rk4", 1e-3)
    h = 1e-3

    def energy(s):
        return n * circle.loss(circle.network(s.y, s.c / n))[0]

    plus = step(circle, dyn, st, h, 1.0 / n)
    minus = step(circle, dyn, st, -h, 1.0 / n)
    dEdt = (energy(plus) - energy(minus)) / (2 * h)
    vy, vc = circle.velocity(y, c, 1.0 / n)
    np.testing.assert_allclose(dEdt, -(np.sum(vy**2) + np.sum(vc**2)), rtol=1e-5)


def test_f_n_identity_with_M_kernel(circle):
    # THEORY §3: d/dt f_n = -M[rho_n](f_n - f) exactly, with
    # M[rho_n](x, x') = (1/n) sum_i (c_i^2 grad phi(x, y_i) grad phi(x', y_i) + phi phi).
    # Central difference in time with RK4 (h = 1e-3): error O(h^2) ~ 1e-6 relative.
    n = 30
    y, c = _units(circle, n, seed=4)
    st = State(0.0, y, c)
    dyn = Dynamics("gd", "rk4", 1e-3)
    h = 1e-3
    plus, minus = step(circle, dyn, st, h, 1 / n), step(circle, dyn, st, -h, 1 / n)
    fp, fm = circle.network(plus.y, plus.c / n), circle.network(minus.y, minus.c / n)
    dfdt = ((fp - fm) / (2 * h))[0]
    x, w = circle.x, circle.w
    p, dp = circle.kernel.phi_grad(x, y[0])  # (n, Q), (n, Q, 1)
    M = (np.einsum("i,iqk,irk->qr", c[0] ** 2, dp, dp) + p.T @ p) / n
    r = circle.network(y, c / n)[0] - circle.f_x
    np.testing.assert_allclose(dfdt, -M @ (w * r), rtol=1e-5, atol=1e-8)


def test_mean_sgd_step_equals_gd_step(circle):
    # The batch velocity is an unbiased estimate of the GD velocity. With M independent
    # batches, each component's mean has standard error s/sqrt(M) (s: sample std over
    # batches). For the ~2n = 40 components, |z| <= 5 fails with probability < 40 * 6e-7.
    n, P, M = 20, 4, 4000
    y, c = _units(circle, n, seed=7)
    rng = np.random.default_rng(0)
    circle_fine = circle_problem(2.0, 512, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3])
    vy_gd, vc_gd = circle_fine.velocity(y, c, 1.0 / n)  # near-exact integral over mu
    xb = circle.measure.sample(rng, M * P).reshape(M, P, 1)
    wb = np.full((M, P), 1.0 / P)
    Y = np.broadcast_to(y, (M,) + y.shape[1:])
    Cc = np.broadcast_to(c, (M,) + c.shape[1:])
    vy, vc = circle.velocity(Y, Cc, 1.0 / n, x=xb, w=wb)
    for v, ref in ((vy[..., 0], vy_gd[0, :, 0]), (vc, vc_gd[0])):
        z = (v.mean(0) - ref) / (v.std(0, ddof=1) / np.sqrt(M))
        assert np.max(np.abs(z)) < 5, np.max(np.abs(z))
    # and the test can detect a biased step: the mean of a 2x-scaled velocity fails
    z = (2 * vc.mean(0) - vc_gd[0]) / (vc.std(0, ddof=1) / np.sqrt(M))
    assert np.max(np.abs(z)) > 5


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_integrator_order(circle, integrator):
    # Error at T = 1 against a fine RK4 reference (dt = 1e-3, error ~ 1e-13); the
    # fitted slope of log error vs log dt must be the declared order within 0.15.
    n = 16
    y, c = _units(circle, n, seed=11)

    def run(dyn, dt):
        st = State(0.0, y, c)
        for _ in range(int(round(1.0 / dt))):
            st = step(circle, dyn, st, dt, 1 / n)
        return np.concatenate([st.y.ravel(), st.c.ravel()])

    ref = run(Dynamics("gd", "rk4", 1e-3), 1e-3)
    dyn = Dynamics("gd", integrator, 0.1)
    dts = [0.1, 0.05, 0.025, 0.0125] if integrator == "rk4" else [0.02, 0.01, 0.005, 0.0025]
    err = [np.max(np.abs(run(dyn, dt) - ref)) for dt in dts]
    fit = fit_power_law(dts, err)
    assert abs(fit.slope - dyn.order) < 0.15, (fit, err)


@pytest.mark.parametrize("scheme, extra", [("gd", {}), ("sgd", {"batch": 8}),
                                           ("langevin", {"temperature": 0.01})])
def test_member_rerun_alone_is_identical(circle, scheme, extra):
    dyn = Dynamics(scheme, "euler", 0.05, **extra)
    ts = [0.0, 0.5, 1.0]
    full = simulate(circle, [8, 16], 4, dyn, ts, root_seed=5)
    alone = simulate(circle, [16], [2], dyn, ts, root_seed=5, n_index=[1])
    a = full.sel(n=16, seed=2)
    b = alone.sel(n=16, seed=2)
    np.testing.assert_array_equal(a["f_n"].values, b["f_n"].values)
    np.testing.assert_array_equal(a["c"].values, b["c"].values)
    np.testing.assert_array_equal(a["y"].values, b["y"].values)
    # different members really differ (the check is not vacuous)
    assert not np.array_equal(full.sel(n=16, seed=1)["c"].values, a["c"].values)


def test_batch_and_temperature_schedules():
    dyn = Dynamics("sgd", "euler", 0.1, batch=[[0.0, 4], [2.0, 64]])
    assert dyn.batch_at(0.0) == 4 and dyn.batch_at(1.99) == 4 and dyn.batch_at(2.0) == 64
    lang = Dynamics("langevin", "euler", 0.1, temperature=[[0.0, 0.1], [5.0, 0.0]])
    assert lang.temperature_at(4.9) == 0.1 and lang.temperature_at(5.0) == 0.0


def test_langevin_zero_temperature_is_gd(circle):
    ts = [0.0, 1.0]
    gd = simulate(circle, [16], 2, Dynamics("gd", "euler", 0.05), ts, root_seed=2)
    lz = simulate(circle, [16], 2, Dynamics("langevin", "euler", 0.05, temperature=0.0), ts,
                  root_seed=2)
    np.testing.assert_allclose(lz["f_n"].values, gd["f_n"].values, rtol=0, atol=1e-13)
    hot = simulate(circle, [16], 2, Dynamics("langevin", "euler", 0.05, temperature=0.1), ts,
                   root_seed=2)
    assert np.max(np.abs(hot["f_n"].values - gd["f_n"].values)) > 1e-3


def test_numerical_failure_keeps_partial(circle):
    from particles import NumericalFailure

    dyn = Dynamics("gd", "euler", 50.0)
    with pytest.raises(NumericalFailure, match=r"t=.*n=64.*lower dynamics.dt") as info:
        simulate(circle, [64], 2, dyn, [0.0, 100.0, 1e5], root_seed=1)
    part = info.value.partial
    assert part.attrs["complete"] == 0
    assert np.all(np.isfinite(part["f_n"].isel(t=0).values))
    assert np.all(np.isnan(part["f_n"].isel(t=-1).values))


def test_batch_scaled_with_n():
    # Sec. 3: P = ceil(P0 n^{2 alpha}), so theta = dt / P ~ n^{-2 alpha} (3.23)
    dyn = Dynamics("sgd", "euler", 0.1, batch={"P0": 0.2, "alpha": 0.5})
    assert [dyn.batch_at(0.0, n) for n in (10, 100, 1000)] == [2, 20, 200]
    dyn = Dynamics("sgd", "euler", 0.1, batch={"P0": 3.0, "alpha": 0.25})
    assert dyn.batch_at(5.0, 16) == 12 and dyn.batch_at(0.0, 1) == 3
