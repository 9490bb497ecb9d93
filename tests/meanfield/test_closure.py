"""The f-level closure (2.50): exact propagation, against the influence Σ, its regime."""
import numpy as np
import pytest
from scipy import linalg

from meanfield.closure import (closure_error, closure_regime, closure_tolerance,
                               halving_time_measured, halving_time_predicted,
                               propagate_covariance, rk4_propagation_gap, trace_mu,
                               l2_frobenius)
from meanfield.influence import clt_covariance_influence, forward_run
from meanfield.mkernel import m_kernel
from particles.laws import CLaw
from particles.presets import circle_problem

U = CLaw("uniform", low=-1.5, high=1.5)


def test_propagation_is_the_matrix_exponential(rng):
    # e^{-hMW} Sigma e^{-hWM} by scipy's expm (Pade, relative error ~1e-15 per entry);
    # the eigen route agrees to round-off of a Q = 12 eigendecomposition (~Q eps ||.||).
    Q = 12
    A = rng.normal(size=(Q, 5))
    M = A @ A.T
    w = rng.uniform(0.5, 1.5, Q) / Q
    B = rng.normal(size=(Q, Q))
    S = B @ B.T
    h = 0.7
    E = linalg.expm(-h * M * w[None, :])
    ref = E @ S @ E.T
    got = propagate_covariance(M, w, S, h)
    assert np.max(np.abs(got - ref)) <= 1e3 * np.finfo(float).eps * np.max(np.abs(ref))
    # h = 0 is the identity; a batch of horizons
    np.testing.assert_allclose(propagate_covariance(M, w, S, 0.0), S, rtol=1e-12, atol=1e-12)
    both = propagate_covariance(M, w, np.stack([S, S]), np.array([0.0, h]))
    np.testing.assert_allclose(both[1], got, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="horizon"):
        propagate_covariance(M, w, S, -1.0)


def test_halving_times_on_known_decays():
    # tr = e^{-2 lam t} halves at ln 2 / (2 lam) (log-linear interpolation is exact)
    lam = 0.3
    ts = np.linspace(0, 10, 11)
    tr = np.exp(-2 * lam * ts)
    assert halving_time_measured(ts, tr) == pytest.approx(np.log(2) / (2 * lam), rel=1e-12)
    # the peak first: growth to t = 2, then decay from there
    tr2 = np.where(ts <= 2, 1 + ts, 3 * np.exp(-2 * lam * (ts - 2)))
    assert halving_time_measured(ts, tr2) == pytest.approx(np.log(2) / (2 * lam), rel=1e-12)
    assert np.isnan(halving_time_measured(ts, 1 + ts))  # never halves
    # predicted: diagonal M on two directions sharing the trace equally, rates 1 and 0.1
    M = np.diag([1.0, 0.1])
    w = np.ones(2)
    th, rate = halving_time_predicted(M, w, np.eye(2))
    assert np.exp(-2 * th) + np.exp(-0.2 * th) == pytest.approx(1.0, rel=1e-9)
    assert rate == pytest.approx(1.0)  # the fastest direction carries half the trace
    # a null direction carrying half the trace never halves
    assert halving_time_predicted(np.diag([1.0, 0.0]), w, np.eye(2))[0] == np.inf


def test_regime_ratio():
    assert closure_regime(0.033, 0.030**2) == pytest.approx(1.1)
    np.testing.assert_allclose(closure_regime(np.array([1.0, 1.0]), np.array([4.0, 0.0])),
                               [0.5, np.nan])


def _influence_closure(eps_cos, eps_sin, ts, *, Q=32, ny=32, nc=6, dt=0.05):
    """(errors, regimes, tolerances) of the closure t_k -> t_{k+1}, M from the influence
    method's own forward nodes at t_k (the same discretisation as Sigma)."""
    p = circle_problem(2.0, Q, cos=[0.0, eps_cos], sin=[0.0, eps_sin], c_law=U)
    ds = clt_covariance_influence(p, ts, grid={"y": ny, "c": nc, "dt": dt})
    fw = forward_run(p, np.asarray(ts, float), grid={"y": ny, "c": nc, "dt": dt})
    cov = ds["clt_cov"].values
    errs, regs, tols = [], [], []
    s = np.sqrt(p.w)
    for k in range(len(ts) - 1):
        Y, C = fw.ends[k]
        M = m_kernel(p.kernel, p.x, Y, C, fw.w)
        h = ts[k + 1] - ts[k]
        e, _ = closure_error(M, p.w, cov[k], cov[k + 1], h)
        r0 = np.sqrt(np.sum(p.w * (fw.f0[k] - p.f_x) ** 2))
        d = closure_regime(r0, trace_mu(cov[k], p.w))
        gap = rk4_propagation_gap(np.linalg.eigvalsh(s[:, None] * M * s[None, :]), h, dt)
        errs.append(e)
        regs.append(d)
        tols.append(closure_tolerance(d, gap, l2_frobenius(cov[k], p.w),
                                      l2_frobenius(cov[k + 1], p.w)))
    return np.array(errs), np.array(regs), np.array(tols)


def test_closure_matches_influence_for_a_tiny_target():
    # Target 0.001 cos x: r_0 stays ~1e-3 beside sqrt(tr Sigma) ~ 0.4, ratio ~2e-3. The
    # tolerance (closure_tolerance, docs/propositions.md) is 2 delta + delta^2 for the
    # dropped term plus the RK4 time discretisation of the influence flow (M from the
    # influence's own nodes: no discretisation gap in M).
    errs, regs, tols = _influence_closure(0.001, 0.0, [0.0, 1.0, 2.0], Q=16, ny=16, nc=4)
    assert np.all(regs < 0.01)
    assert np.all(errs <= tols), (errs, tols)
    # and the closure is not trivially met: without propagation (h = 0) the error is O(1)
    p = circle_problem(2.0, 16, cos=[0.0, 0.001], c_law=U)
    ds = clt_covariance_influence(p, [0.0, 1.0], grid={"y": 16, "c": 4, "dt": 0.05})
    c = ds["clt_cov"].values
    assert l2_frobenius(c[0] - c[1], p.w) / l2_frobenius(c[1], p.w) > 10 * tols.max()


def test_closure_error_falls_with_the_regime_ratio():
    # Same horizon 0 -> 1, targets of shrinking amplitude: the dropped term M[rho_1/2] r_0
    # shrinks with r_0, and with it the error (measured: about quadratically)
    out = [_influence_closure(a, 0.0, [0.0, 1.0], Q=16, ny=16, nc=4) for a in (0.4, 0.1, 0.025)]
    errs = np.array([o[0][0] for o in out])
    regs = np.array([o[1][0] for o in out])
    assert np.all(np.diff(regs) < 0)
    assert np.all(np.diff(errs) < 0), errs
    # where the ratio is small the error is within the tolerance
    assert out[-1][0][0] <= out[-1][2][0]


@pytest.mark.slow
def test_circle_case_of_the_paper_example():
    # kappa = 2, target 0.4 cos x + 0.6 sin x, c ~ U[-1.5, 1.5]: from t = 70 to 80 the
    # closure predicts tr Sigma_80 ~ 5.2e-4 against ~7.8e-4, relative Frobenius error 0.40.
    # Its discretisation error is measured by halving the resolution of the influence
    # method (nodes and step): the error must match 0.40 within 3x that difference plus
    # the spread of the value 0.40 as quoted (two digits: +-0.005).
    e1 = _influence_closure(0.4, 0.6, [70.0, 80.0], Q=64, ny=64, nc=12, dt=0.05)[0][0]
    e2 = _influence_closure(0.4, 0.6, [70.0, 80.0], Q=64, ny=32, nc=6, dt=0.1)[0][0]
    disc = abs(e1 - e2)
    assert abs(e1 - 0.40) <= 3 * disc + 0.005, (e1, e2)
