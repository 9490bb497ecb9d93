"""Ensemble method of the CLT covariance: sampler, tangent-linear scheme, covariance (2.24)."""
import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import special

from meanfield.grid.solve import GridSolver, make_grid, prepare
from meanfield.influence import clt_covariance_influence
from meanfield.linearised import (
    FLUCT_KEY,
    Linearisation,
    clt_covariance_ensemble,
    covariance_stderr,
    f_half,
    fluctuation_rng,
    sample_perturbations,
    stage_linearisations,
    tangent_step,
)
from particles.kernels import SigmoidUnit
from particles.laws import CLaw, YNormal
from particles.measures import UniformBox
from particles.problem import Problem
from particles.closed_forms import circle_K
from particles.presets import circle_problem

UNIFORM = CLaw("uniform", low=-1.5, high=1.5)


def circle(c_law=UNIFORM, Q=32):
    return circle_problem(2.0, Q, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3], c_law=c_law)


def tanh_problem():
    return Problem(name="tanh1d", kernel=SigmoidUnit(d=1, activation="tanh"),
                   measure=UniformBox(d=1, Q=8, low=-1, high=1),
                   target=lambda x: 0.5 * np.sin(2 * x[..., 0]),
                   y_law=YNormal(2, 0.0, 0.5), c_law=CLaw("uniform", low=-1, high=1))


def smooth_masses(grid, y0, amp, c0, width):
    """A smooth positive density with no ties in the limiter: extrema inside cells."""
    ys = np.meshgrid(*grid.y_centres, indexing="ij")
    fy = np.ones(grid.ny)
    for k, y in enumerate(ys):
        fy = fy * (1.0 + amp * np.cos(y - y0 - 0.37 * k))
    fc = np.exp(-0.5 * ((grid.c_centres - c0) / width) ** 2)
    m = np.multiply.outer(fy, fc)
    return m / m.sum()


def sigma_0_closed_form(problem, c_law):
    # Sigma_0(x, x') = E[c^2] K(x, x') - E[c]^2 E_y phi(x) E_y phi(x'), with
    # K = e^{-2 kappa} I_0(2 kappa |cos((x - x')/2)|), E_y phi = e^{-kappa} I_0(kappa) (THEORY §7).
    K = circle_K(problem.kernel)[0](problem.x, problem.x)
    return c_law.second_moment() * K - (c_law.mean() * special.ive(0, 2.0)) ** 2


# -- the sampler --------------------------------------------------------------------------
@settings(max_examples=10)
@given(w=st.lists(st.floats(0.05, 1.0), min_size=2, max_size=6),
       total=st.sampled_from([1.0, 0.6]))
def test_sampler_covariance_is_diag_m_minus_m_mT(w, total):
    # K draws, known mean 0: the sample second moment S_hat has Var S_ab = (S_aa S_bb + S_ab^2)/K
    # exactly (Wishart); 5 sd per entry, at most 36 entries and 10 examples: a false alarm
    # has probability < 1e-4 (fixed seed, so it is deterministic per example).
    m = np.asarray(w) / np.sum(w) * total
    K = 20000
    dm = sample_perturbations(m, K, np.random.default_rng(7))
    S = np.diag(m) - np.outer(m, m)
    S_hat = dm.T @ dm / K
    sd = np.sqrt((np.outer(np.diag(S), np.diag(S)) + S**2) / K)
    np.testing.assert_array_less(np.abs(S_hat - S), 5 * sd + 1e-15)
    if total == 1.0:  # no mass outside the grid: every sample has total mass 0
        np.testing.assert_allclose(dm.sum(axis=1), 0.0, atol=1e-14)


def test_sampler_members_in_order_and_key():
    # member k is the k-th block of normals: drawing in chunks gives the same samples
    m = np.full((3, 4), 1 / 12)
    a = sample_perturbations(m, 5, fluctuation_rng(3))
    rng = fluctuation_rng(3)
    b = np.concatenate([sample_perturbations(m, 2, rng), sample_perturbations(m, 3, rng)])
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 3, 4)
    ref = np.random.Generator(np.random.PCG64(np.random.SeedSequence(3, spawn_key=(2**32 - 1,))))
    np.testing.assert_array_equal(fluctuation_rng(3).standard_normal(4), ref.standard_normal(4))
    assert FLUCT_KEY == 2**32 - 1


# -- the frozen linearisation ----------------------------------------------------------------
@pytest.mark.parametrize("which", ["circle-data", "circle-fft", "tanh-walls"])
def test_linearisation_reproduces_the_solver_rhs(rng, which):
    # Linearisation rebuilds the CCH fluxes from its frozen pieces: L(m) must equal
    # GridSolver.rhs (periodic, wall and outflow faces; both potentials).
    if which == "tanh-walls":
        p = tanh_problem()
        g = make_grid(p, (6, 7), 8, -2.0, 2.0)
        s = GridSolver(p, g)
    else:
        p = circle()
        g = make_grid(p, 16, 12, -2.0, 2.0)
        s = GridSolver(p, g, potential=which.split("-")[1])
    m = rng.uniform(0.0, 1.0, g.shape)
    m[..., 0] = 0.5  # mass on the outflow cells: something leaves
    lin = Linearisation(s, m)
    ref = s.rhs(m)
    np.testing.assert_allclose(lin.L, ref, rtol=0, atol=1e-13 * np.abs(ref).max())
    np.testing.assert_allclose(lin.outflow_rate, s.outflow_rate(m), rtol=1e-12)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), alpha=st.floats(-3, 3), beta=st.floats(-3, 3),
       frac=st.floats(0.1, 1.0))
def test_tangent_step_is_linear(seed, alpha, beta, frac):
    # T(alpha a + beta b) = alpha T(a) + beta T(b): every choice is frozen from m, so T is
    # linear in exact arithmetic; in floating point each entry is a sum of O(100) terms
    # of size <= max|T|, hence the 1e-12 relative tolerance.
    rng = np.random.default_rng(seed)
    p = circle()
    g = make_grid(p, 16, 12, -2.5, 2.5)
    s = GridSolver(p, g)
    m = rng.uniform(0.0, 1.0, g.shape) / g.shape[0]
    a, b = rng.standard_normal((2,) + g.shape) * m
    dt = frac * s.cfl_bound(m)
    _, T, _ = tangent_step(s, m, dt, np.stack([a, b, alpha * a + beta * b]))
    np.testing.assert_allclose(T[2], alpha * T[0] + beta * T[1], rtol=0,
                               atol=1e-12 * np.abs(T).max() * (1 + abs(alpha) + abs(beta)))


@settings(max_examples=8)
@given(seed=st.integers(0, 2**32 - 1), y0=st.floats(0.0, 6.0), amp=st.floats(0.05, 0.5),
       c0=st.floats(-0.5, 0.5), width=st.floats(0.4, 0.8), rough=st.booleans(),
       frac=st.floats(0.2, 0.9))
def test_tangent_step_is_the_derivative_of_the_step(seed, y0, amp, c0, width, rough, frac):
    # Central differences (step(m + e d) - step(m - e d)) / 2e with e = 1e-6 around a smooth
    # density, only where no limiter branch or upwind side differs between m and m +- e d at
    # any stage (assume). Within one branch the step is a polynomial in m (degree <= 8), so
    # the truncation error is O(e^2 |step'''|) ~ 1e-12; round-off in the fluxes is about
    # 1e-16 max|F| / e, measured <= 2e-8 of max|T d| (fluxes ~ 1/dy times the divergence).
    # Tolerance 1e-6 of max|T d|. A wrong branch (e.g. the clipped slope taken for (a+b)/4)
    # gives errors of 1e-2 here.
    rng = np.random.default_rng(seed)
    p = circle()
    g = make_grid(p, 32, 24, -3.0, 3.0)
    s = GridSolver(p, g)
    m = smooth_masses(g, y0, amp, c0, width)
    d = (rng.standard_normal(g.shape) if rough else
         np.multiply.outer(np.sin(g.y_centres[0] + rng.uniform(0, 6)),
                           g.c_centres - rng.uniform(-1, 1))) * m
    dt = frac * s.cfl_bound(m)
    e = 1e-6
    lins, _ = stage_linearisations(s, m, dt)
    for sign in (1, -1):
        other, _ = stage_linearisations(s, m + sign * e * d, dt)
        assume(all(np.array_equal(a.choices(), b.choices()) for a, b in zip(lins, other)))
    _, T, _ = tangent_step(s, m, dt, d[None])
    fd = (s.step(m + e * d, dt).m - s.step(m - e * d, dt).m) / (2 * e)
    np.testing.assert_allclose(fd, T[0], rtol=0, atol=1e-6 * np.abs(T).max())


def test_tangent_derivative_3d_walls(rng):
    # The same check on a 3-D grid with walls in y = (a, b) (tanh unit).
    p = tanh_problem()
    g = make_grid(p, (10, 9), 12, -2.0, 2.0)
    s = GridSolver(p, g)
    a, b = np.meshgrid(*g.y_centres, indexing="ij")
    m = np.multiply.outer(np.exp(-0.5 * ((a - 0.13) ** 2 + (b + 0.21) ** 2)),
                          np.exp(-0.5 * ((g.c_centres - 0.07) / 0.5) ** 2))
    m /= m.sum()
    d = rng.standard_normal(g.shape) * m
    dt = 0.5 * s.cfl_bound(m)
    e = 1e-6
    lins, _ = stage_linearisations(s, m, dt)
    for sign in (1, -1):
        other, _ = stage_linearisations(s, m + sign * e * d, dt)
        assert all(np.array_equal(x.choices(), y.choices()) for x, y in zip(lins, other))
    new, T, _ = tangent_step(s, m, dt, d[None])
    np.testing.assert_allclose(new, s.step(m, dt).m, rtol=0, atol=1e-15 * np.abs(m).max())
    fd = (s.step(m + e * d, dt).m - s.step(m - e * d, dt).m) / (2 * e)
    np.testing.assert_allclose(fd, T[0], rtol=0, atol=1e-6 * np.abs(T).max())


def test_members_keep_their_mass():
    # sum(dm) = 0 initially (S = 1) and the scheme is conservative: sum(dm) + d_outflow
    # stays 0 to round-off (1e-13 of the members' absolute mass); with c in [-3, 3] nothing
    # reaches the outflow faces of the c range [-1.5, 1.5] of rho_in by t = 1, so
    # sum(dm) itself stays 0.
    p = circle()
    grid, m, trunc, _ = prepare(p, grid={"y": 64, "c": 24, "c_min": -3.0, "c_max": 3.0})
    assert trunc == 0.0
    s = GridSolver(p, grid)
    dm = sample_perturbations(m, 4, fluctuation_rng(0))
    scale = np.abs(dm).sum(axis=(1, 2))
    np.testing.assert_allclose(dm.sum(axis=(1, 2)), 0.0, atol=1e-15 * scale.max())
    out = np.zeros(4)
    t = 0.0
    while t < 1.0:
        h = min(0.9 * s.cfl_bound(m), 1.0 - t)
        m, dm, dout = tangent_step(s, m, h, dm)
        out += dout
        t += h
    np.testing.assert_allclose(dm.sum(axis=(1, 2)) + out, 0.0, atol=1e-13 * scale.max())
    np.testing.assert_allclose(out, 0.0, atol=1e-13 * scale.max())
    np.testing.assert_allclose(dm.sum(axis=(1, 2)), 0.0, atol=1e-13 * scale.max())


# -- the covariance ------------------------------------------------------------------------
def test_covariance_stderr_formula():
    S = np.array([[2.0, 0.5], [0.5, 1.0]])
    se = covariance_stderr(S[None], 11)[0]
    np.testing.assert_allclose(se, np.sqrt(np.array([[8.0, 2.25], [2.25, 2.0]]) / 10))


def test_ensemble_at_t0_matches_sigma_0():
    # At t = 0, f_1/2 = sum c phi dm exactly, so E S_hat = Sigma_0^grid = A (diag m - m m^T) A^T
    # with A_qi = c_i phi(x_q, y_i), computed here. (1) The grid's Sigma_0 against the closed
    # form: differences from the midpoint rule in c (dc^2/12 E[phi^2] ~ 1e-3 at dc = 0.125)
    # and in y (phi_resolution <= 1e-3 relative): tolerance 5e-3 of max Sigma_0. (2) The
    # ensemble against Sigma_0^grid within 4.5 standard errors per entry (Wishart, from the
    # exact Sigma_0^grid; 1024 correlated entries, fixed seed) and, for the x-average of the
    # variance, within 3 se with se^2 = 2 tr(Sigma^2) / ((M - 1) Q^2).
    p = circle()
    M = 300
    ds = clt_covariance_ensemble(p, [0.0], members=M,
                                 grid={"y": 64, "c": 48, "c_min": -3.0, "c_max": 3.0},
                                 root_seed=5, progress=False)
    grid, m, _, _ = prepare(p, grid={"y": 64, "c": 48, "c_min": -3.0, "c_max": 3.0})
    s = GridSolver(p, grid)
    A = (s.data.Phi[:, :, None] * s.c).reshape(p.x.shape[0], -1)
    mv = m.reshape(-1)
    S_grid = (A * mv) @ A.T - np.outer(A @ mv, A @ mv)
    S0 = sigma_0_closed_form(p, UNIFORM)
    np.testing.assert_allclose(S_grid, S0, rtol=0, atol=5e-3 * S0.max())
    S_hat = ds["clt_cov"].values[0]
    se = covariance_stderr(S_grid, M)
    np.testing.assert_array_less(np.abs(S_hat - S_grid), 4.5 * se)
    Q = S_grid.shape[0]
    se_mean = np.sqrt(2 * np.sum(S_grid**2) / (M - 1)) / Q
    assert abs(np.diag(S_hat).mean() - np.diag(S_grid).mean()) < 3 * se_mean


def test_dataset_layout_and_chunk_independence():
    p = circle(Q=16)
    kw = dict(members=6, grid={"y": 64, "c": 24, "c_min": -3.0, "c_max": 3.0}, root_seed=2,
              progress=False)
    ds = clt_covariance_ensemble(p, [0.0, 0.3], **kw)
    ds2 = clt_covariance_ensemble(p, [0.0, 0.3], chunk=4, **kw)
    np.testing.assert_array_equal(ds["clt_cov"].values, ds2["clt_cov"].values)
    assert ds["clt_cov"].dims == ("t", "x", "x_")
    assert ds["clt_var"].dims == ("t", "x")
    np.testing.assert_array_equal(ds["x"].values, p.x[:, 0])
    np.testing.assert_array_equal(ds["clt_var"].values,
                                  np.diagonal(ds["clt_cov"].values, axis1=1, axis2=2))
    np.testing.assert_allclose(ds["clt_cov_stderr"].values,
                               covariance_stderr(ds["clt_cov"].values, 6))
    a = ds.attrs
    assert a["method"] == "ensemble" and a["members"] == 6 and a["fluct_key"] == FLUCT_KEY
    assert json.loads(a["c_domain"]) == [-3.0, 3.0] and a["truncated_mass"] == 0.0
    assert json.loads(a["resolution"])["nc"] == 24
    # f_1/2 helper: the sampled fields at t = 0 reproduce clt_cov at t = 0
    grid, m, _, _ = prepare(p, grid={"y": 64, "c": 24, "c_min": -3.0, "c_max": 3.0})
    fh = f_half(GridSolver(p, grid), sample_perturbations(m, 6, fluctuation_rng(2)))
    np.testing.assert_allclose(np.cov(fh.T), ds["clt_cov"].values[0], rtol=1e-12, atol=1e-15)


def test_truncated_grid_is_reported():
    p = circle(c_law=CLaw("normal", mean=0.0, std=1.0), Q=16)
    with pytest.raises(ValueError, match="allow_truncation"):
        clt_covariance_ensemble(p, [0.0], members=3,
                                grid={"y": 64, "c": 16, "c_min": -2.0, "c_max": 2.0})
    ds = clt_covariance_ensemble(p, [0.0], members=3,
                                 grid={"y": 64, "c": 16, "c_min": -2.0, "c_max": 2.0, "allow_truncation": True}, progress=False)
    np.testing.assert_allclose(ds.attrs["truncated_mass"], 2 * special.ndtr(-2.0), rtol=1e-10)


def test_outflow_of_rho_0_warns():
    p = circle(Q=16)
    with pytest.warns(UserWarning, match="widen c_min/c_max"):
        ds = clt_covariance_ensemble(p, [0.0, 1.0], members=2,
                                     grid={"y": 64, "c": 32, "c_min": -1.6, "c_max": 1.6}, progress=False)
    assert ds.attrs["outflow"] > 1e-6


# -- against the influence method ------------------------------------------------------------
INFLUENCE_TIMES = [0.0, 1.0, 2.5, 5.0]


def _check_against_influence(ts, members, root_seed, nodes=(64, 12)):
    # mean_x clt_var of the ensemble against the influence prediction (y = 64, c = 12 nodes,
    # converged: y = 128, c = 24 changes it by < 1e-4 relative up to t = 10; y = 32, c = 8
    # nodes differ from y = 64, c = 12 by < 1e-5 relative up to t = 5, at an eighth of the
    # cost).
    # Sampling error: with S_hat Wishart, Var(mean_x S_hat_xx) = 2 tr(Sigma^2) / ((M-1) Q^2)
    # (Cov(S_aa, S_bb) = 2 Sigma_ab^2 / (M-1)); se from the ensemble's own S_hat.
    # Discretisation: at t = 0 the grid's exact covariance differs from the closed form by
    # 0.17 %; at t > 0 the exact covariance of the discrete tangent-linear scheme (all
    # 4096 cells propagated, docs/methods_fluctuations.md) differs from the influence
    # prediction by at most 1.5 % up to t = 10 on this grid: we allow 2 %, small next to
    # 3 se (12-14 % at M = 400). c in [-4, 4]: rho_0 reaches c = -3.7 by t = 10 and
    # nothing may leave (outflow asserted 0).
    p = circle()
    ens = clt_covariance_ensemble(p, ts, members=members,
                                  grid={"y": 64, "c": 64, "c_min": -4.0, "c_max": 4.0}, root_seed=root_seed, progress=False)
    assert ens.attrs["outflow"] == 0.0
    inf = clt_covariance_influence(p, ts, grid={"y": nodes[0], "c": nodes[1], "dt": 0.05})
    S = ens["clt_cov"].values
    Q = S.shape[1]
    se = np.sqrt(2 * np.einsum("tab,tab->t", S, S) / (members - 1)) / Q
    got = ens["clt_var"].values.mean(axis=1)
    want = inf["clt_var"].values.mean(axis=1)
    np.testing.assert_array_less(np.abs(got - want), 3 * se + 0.02 * want)
    return got, want, se


def test_ensemble_agrees_with_influence_up_to_t5():
    _check_against_influence(INFLUENCE_TIMES, 400, root_seed=11, nodes=(32, 8))


@pytest.mark.slow
def test_ensemble_agrees_with_influence_up_to_t10():
    _check_against_influence(INFLUENCE_TIMES + [7.5, 10.0], 800, root_seed=12)
