"""Verification of the predicted CLT covariance against particle ensembles.

Sampling error of the ensemble estimate (used by every tolerance here). For S seeds,
D_s = sqrt(n) (f_n - f_0)_s on the x nodes, V = sum_q w_q Var_s(D(x_q)) estimates
tr_mu Sigma = sum_q w_q Sigma(x_q, x_q). If D is Gaussian with covariance Sigma, then
(S - 1) V is a weighted sum of chi^2_{S-1} variables with weights the eigenvalues of
W^{1/2} Sigma W^{1/2}, so Var(V) = 2 tr((W Sigma)^2) / (S - 1) and the relative standard
error of V is se = sqrt(2 tr((W Sigma)^2) / (S - 1)) / tr(W Sigma) (computed from the
predicted Sigma).
"""
import numpy as np
import pytest
from scipy import stats

from meanfield.influence import clt_covariance_influence
from particles import Dynamics, simulate
from particles.laws import CLaw
from particles.presets import circle_problem


def bounded_circle(Q=64):
    return circle_problem(2.0, Q, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


def rel_se(cov, w, S):
    A = cov * w[None, :]
    return np.sqrt(2 * np.trace(A @ A) / (S - 1)) / np.trace(A)


def measured(problem, n, S, ts, f0, root_seed):
    ds = simulate(problem, [n], S, Dynamics("gd", "rk4", 0.05), ts, root_seed=root_seed,
                  save_state=False)
    return np.sqrt(n) * (ds["f_n"].values[0] - f0[None])  # (S, T, Q)


def check_variance(D, pred, w, k_se=3.0, extra=0.0):
    S = D.shape[0]
    V = np.einsum("stq,q->t", (D - D.mean(0)) ** 2, w) / (S - 1)
    P = np.einsum("tq,q->t", pred["clt_var"].values, w)
    se = np.array([rel_se(c, w, S) for c in pred["clt_cov"].values])
    ratio = V / P
    assert np.all(np.abs(ratio - 1) <= k_se * se + extra), (ratio, se)
    return ratio, se


SHORT_TIMES = [0.0, 2.0, 5.0]


@pytest.fixture(scope="module")
def short_prediction():
    """The influence prediction on bounded_circle() at SHORT_TIMES (y = 64, c = 12 nodes),
    computed once for the tests that compare ensembles with it."""
    p = bounded_circle()
    return p, clt_covariance_influence(p, SHORT_TIMES, grid={"y": 64, "c": 12})


def test_clt_variance_short_times(short_prediction):
    # n = 256, 200 seeds, t <= 5: se is 7-9 %; 3 se tolerance (two-sided 0.3 % per time).
    p, pred = short_prediction
    D = measured(p, 256, 200, SHORT_TIMES, pred["f_0_influence"].values, root_seed=21)
    check_variance(D, pred, p.w)


@pytest.mark.slow
@pytest.mark.parametrize("n", [256, 1024])
def test_clt_variance_up_to_t40(n):
    # At every save time up to t = 40 the predicted mean over x of Sigma_t(x, x)
    # matches n times the across-seed variance, within the ensemble's sampling error. With
    # S = 640 seeds, se <= 5 % at every time (asserted). The prediction's own resolution
    # error is bounded by comparing (y, c) = (64, 12) and (128, 24) nodes (about 2-3 % at
    # t = 40) and added to the tolerance.
    p = bounded_circle()
    ts = [0.0, 5.0, 10.0, 20.0, 30.0, 40.0]
    S = 640
    pred = clt_covariance_influence(p, ts, grid={"y": 128, "c": 24})
    coarse = clt_covariance_influence(p, ts, grid={"y": 64, "c": 12})
    P = np.einsum("tq,q->t", pred["clt_var"].values, p.w)
    Pc = np.einsum("tq,q->t", coarse["clt_var"].values, p.w)
    res = np.abs(P - Pc) / P
    D = measured(p, n, S, ts, pred["f_0_influence"].values, root_seed=100 + n)
    se = np.array([rel_se(c, p.w, S) for c in pred["clt_cov"].values])
    assert np.all(se < 0.05), se
    check_variance(D, pred, p.w, extra=res)


def test_gaussian_projections_and_mahalanobis(short_prediction):
    # sqrt(n) (f_n - f_0)(t) projected on the top k = 3 eigenvectors of W^{1/2} Sigma_t W^{1/2}
    # and standardised must be N(0, 1): KS test per component, Bonferroni over 3 components
    # x 2 times at family level 0.01 (each p > 0.01 / 6). The squared Mahalanobis norm of
    # the k components must follow chi^2_k (KS p > 0.01 / 2 per time).
    p, pred = short_prediction
    ts = SHORT_TIMES[1:]
    pred = pred.isel(t=slice(1, None))
    D = measured(p, 256, 300, ts, pred["f_0_influence"].values, root_seed=33)
    sw = np.sqrt(p.w)
    level = 0.01
    for j in range(len(ts)):
        A = sw[:, None] * pred["clt_cov"].values[j] * sw[None, :]
        lam, vec = np.linalg.eigh(A)
        lam, vec = lam[::-1][:3], vec[:, ::-1][:, :3]
        Z = (D[:, j] * sw) @ vec / np.sqrt(lam)  # (S, 3)
        for k in range(3):
            assert stats.kstest(Z[:, k], "norm").pvalue > level / 6
        assert stats.kstest(np.sum(Z**2, axis=1), stats.chi2(3).cdf).pvalue > level / 2
    # the test has power: a 30 % too small predicted variance is detected
    Zbad = Z / np.sqrt(0.7)
    assert stats.kstest(np.sum(Zbad**2, axis=1), stats.chi2(3).cdf).pvalue < level / 2


def reachable_circle():
    """A target the network reaches (f_0 -> f): the fluctuations heal."""
    return circle_problem(2.0, 32, cos=[0.3], sin=[0.0, 0.5],
                          c_law=CLaw("uniform", low=-1, high=1))


def test_self_healing_starts():
    # The first quarter of test_self_healing, at n = 64: the predicted tr Sigma_t falls
    # monotonically to 0.23 of its t = 0 value by t = 20 (asserted below 1/2), and the
    # ensembles follow. 160 seeds: at t = 0 the units are i.i.d. and n Var f_n(0) =
    # Sigma_0 exactly for every n, so the measured value must match within 3 se (se = 6 %);
    # at t = 20 the measured variance must be below half its t = 0 value (measured 0.28;
    # the relative se of the ratio of the two variances is below sqrt(2) x 6 % = 9 %, so
    # 1/2 is more than 2 se above a healing ensemble and far below a non-healing one,
    # whose variance stays near or above its t = 0 value).
    p = reachable_circle()
    ts = [0.0, 20.0]
    pred = clt_covariance_influence(p, ts, grid={"y": 32, "c": 8, "dt": 0.1})
    tr = np.einsum("tq,q->t", pred["clt_var"].values, p.w)
    assert tr[-1] < 0.5 * tr[0], tr
    n = 64
    ds = simulate(p, [n], 160, Dynamics("gd", "rk4", 0.1), ts, root_seed=8, save_state=False)
    D = np.sqrt(n) * (ds["f_n"].values[0] - pred["f_0_influence"].values[None])
    V = np.einsum("stq,q->t", (D - D.mean(0)) ** 2, p.w) / (D.shape[0] - 1)
    se0 = rel_se(pred["clt_cov"].values[0], p.w, D.shape[0])
    assert abs(V[0] / tr[0] - 1) < 3 * se0
    assert V[-1] < 0.5 * V[0], V


@pytest.mark.slow
def test_self_healing():
    # A target the network reaches (f_0 -> f): the predicted tr Sigma_t falls by two orders
    # of magnitude by t = 80, and particle ensembles confirm the fall. n = 256, 160 seeds:
    # at t = 0 the measured value must match (3 se); at t = 80 the measured value must also
    # be below a tenth of its t = 0 value (the decay, not its exact size, is the claim).
    # About 25 s on 2 idle cores; test_self_healing_starts is its fast part.
    p = reachable_circle()
    ts = [0.0, 20.0, 80.0]
    pred = clt_covariance_influence(p, ts, grid={"y": 32, "c": 8, "dt": 0.1})
    tr = np.einsum("tq,q->t", pred["clt_var"].values, p.w)
    assert np.all(np.diff(tr) < 0) and tr[-1] < 0.02 * tr[0], tr
    ds = simulate(p, [256], 160, Dynamics("gd", "rk4", 0.1), ts, root_seed=8, save_state=False)
    D = np.sqrt(256) * (ds["f_n"].values[0] - pred["f_0_influence"].values[None])
    V = np.einsum("stq,q->t", (D - D.mean(0)) ** 2, p.w) / (D.shape[0] - 1)
    se0 = rel_se(pred["clt_cov"].values[0], p.w, D.shape[0])
    assert abs(V[0] / tr[0] - 1) < 3 * se0
    assert V[-1] < 0.1 * V[0], V
