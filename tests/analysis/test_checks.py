"""The checks on synthetic ensembles with known laws: each recovers what was put in and
rejects what was not. Fixed seeds; tolerances derived in the comments."""
import numpy as np
import pytest
import xarray as xr

from analysis.checks import limits as checks
from analysis.checks.fit import fit_power_law

Q, T = 12, 2


def _sigma(rng, scale=1.0):
    """A smooth-ish covariance on Q nodes: random eigenvectors, decaying eigenvalues."""
    V, _ = np.linalg.qr(rng.standard_normal((Q, Q)))
    lam = scale * 0.5 ** np.arange(Q)
    return (V * lam) @ V.T


def synthetic(rng, ns, S, sigmas, *, rate=lambda n: 1.0 / n, noise=None, w=None):
    r"""Datasets shaped like mfpc run's: f_n = f_0 + sqrt(rate(n)) Σ^{1/2} z, z ~ ``noise``."""
    w = np.full(Q, 1.0 / Q) if w is None else w
    x = np.linspace(0, 1, Q, endpoint=False)
    ts = np.arange(T, dtype=float)
    f0 = np.stack([np.sin(2 * np.pi * x + t) for t in ts])
    noise = noise or (lambda size: rng.standard_normal(size))
    f_n = np.empty((len(ns), S, T, Q))
    for j in range(T):
        # covariance of f_n(x) is Σ(x, x') (the weights enter only through tr_mu); the
        # factor V Λ^{1/2} puts each noise coordinate on one eigenvector of Σ
        lam, V = np.linalg.eigh(sigmas[j])
        L = V * np.sqrt(np.clip(lam, 0, None))
        for i, n in enumerate(ns):
            f_n[i, :, j] = f0[j] + np.sqrt(rate(n)) * noise((S, Q)) @ L.T
    target = np.cos(2 * np.pi * x)
    loss = 0.5 * np.sum(w * (f_n - target) ** 2, axis=-1)
    particles = xr.Dataset(
        {"f_n": (("n", "seed", "t", "x"), f_n), "loss": (("n", "seed", "t"), loss),
         "x_weight": ("x", w), "f_target": ("x", target)},
        coords={"n": ns, "seed": np.arange(S), "t": ts, "x": x})
    meanfield = xr.Dataset({"f_0": (("t", "x"), f0),
                            "loss_0": ("t", 0.5 * np.sum(w * (f0 - target) ** 2, axis=-1))},
                           coords={"t": ts, "x": x})
    cov = np.stack(sigmas)
    fluct = xr.Dataset({"clt_cov": (("t", "x", "x_"), cov),
                        "clt_var": (("t", "x"), np.diagonal(cov, axis1=1, axis2=2))},
                       coords={"t": ts, "x": x, "x_": x})
    return particles, meanfield, fluct


@pytest.fixture
def sigmas():
    r = np.random.default_rng(7)
    return [_sigma(r, 1.0), _sigma(r, 0.3)]


def test_lln_recovers_slope_and_prefactor(sigmas):
    rng = np.random.default_rng(1)
    p, m, fl = synthetic(rng, [16, 64, 256, 1024], 64, sigmas)
    ds = checks.lln(p, m, fl, n_boot=1000, rng=np.random.default_rng(2))
    for j in range(T):
        lo, hi = float(ds.lln_slope_low[j]), float(ds.lln_slope_high[j])
        assert lo <= -1.0 <= hi
        # 64 seeds: err/E err has relative sd ~ sqrt(2 tr Σ²)/tr Σ ~ 0.9, so each mean
        # is known to ~11 %; a slope over a factor 64 in n to ~0.11 / ln 64 * 2 ~ 0.05
        assert hi - lo < 0.3
        tr = float(ds.lln_trace_sigma[j])
        np.testing.assert_allclose(tr, np.mean(np.diag(sigmas[j])), rtol=1e-12)
        assert float(ds.lln_prefactor_fixed_low[j]) <= tr <= float(ds.lln_prefactor_fixed_high[j])


def test_lln_rejects_a_wrong_rate(sigmas):
    # variance ∝ n^{-1/2}: the interval must exclude -1 (the estimate is near -1/2)
    rng = np.random.default_rng(3)
    p, m, fl = synthetic(rng, [16, 64, 256, 1024], 64, sigmas, rate=lambda n: n**-0.5)
    ds = checks.lln(p, m, fl, n_boot=500, rng=np.random.default_rng(4))
    assert np.all(ds.lln_slope_high.values < -0.3) and np.all(ds.lln_slope_low.values > -0.7)


def test_lln_leaves_out_failed_members(sigmas):
    rng = np.random.default_rng(5)
    p, m, fl = synthetic(rng, [16, 64, 256], 32, sigmas)
    p["f_n"][1, 3, 1] = np.nan
    ds = checks.lln(p, m, fl, n_boot=100, rng=np.random.default_rng(6))
    assert int(ds.lln_seeds[1, 1]) == 31 and int(ds.lln_seeds[1, 0]) == 32
    assert np.all(np.isfinite(ds.lln_slope.values))


def test_clt_relative_stderr_matches_monte_carlo():
    # the derived se of V / tr Σ_w (docstring of clt_relative_stderr) against the sd of
    # R = 4000 replicates. The sd of R values is itself uncertain by a relative
    # sqrt((kurt - 1) / 4R) <= sqrt(3.4 / 16000) ~ 1.5 % (kurt <= 3 + 12/(S-1)); 5 of
    # those: 7 %.
    rng = np.random.default_rng(11)
    S, R = 10, 4000
    Sw = _sigma(rng)
    lam = np.linalg.eigvalsh(Sw)
    D = rng.standard_normal((R, S, Q)) @ np.linalg.cholesky(Sw).T
    V = np.sum(np.var(D, axis=1, ddof=1), axis=1) / np.trace(Sw)
    np.testing.assert_allclose(np.mean(V), 1.0, atol=5 * np.std(V) / np.sqrt(R))
    np.testing.assert_allclose(np.std(V, ddof=1), checks.clt_relative_stderr(lam, S), rtol=0.07)


def test_clt_variance_ratio_and_gaussianity(sigmas):
    rng = np.random.default_rng(12)
    p, m, fl = synthetic(rng, [32, 128], 400, sigmas)
    ds = checks.clt(p, m, fl, k=4)
    # the predicted covariance: |ratio - 1| <= 3 se (two-sided 0.3 % under the null)
    assert np.all(np.abs(ds.clt_var_ratio.values - 1.0) <= 3 * ds.clt_var_ratio_stderr.values)
    assert np.all(ds.clt_var_ratio_stderr.values < 0.08)  # S = 400: sqrt(2/399)·(≤1)
    # KS at level 0.01 with a fixed seed (a 1 % false alarm rate per test, fixed draw)
    assert np.all(ds.clt_ks_p.values >= 0.01) and np.all(ds.clt_mahalanobis_p.values >= 0.01)
    xi = ds.clt_xi.isel(n=-1, t=0).values
    # whitened components: unit variance to 4 sd of a sample variance, 4 sqrt(2/400)
    np.testing.assert_allclose(np.var(xi, axis=0, ddof=1), 1.0, atol=4 * np.sqrt(2 / 400))


def test_clt_detects_a_wrong_covariance(sigmas):
    rng = np.random.default_rng(13)
    p, m, _ = synthetic(rng, [32, 128], 400, [1.5 * s for s in sigmas])
    fl = synthetic(rng, [32], 2, sigmas)[2]  # the prediction says Σ, the data have 1.5 Σ
    ds = checks.clt(p, m, fl)
    # ratio 1.5 against se < 0.08: more than 6 se away
    assert np.all(ds.clt_var_ratio_z.values > 3)


def test_clt_detects_non_gaussian_fluctuations(sigmas):
    # centred exponential noise (skewness 2) on each eigenvector of Σ, the right
    # covariance: the variance ratio is fine, the KS tests must reject. The KS distance
    # of Exp(1) - 1 from N(0, 1) is 0.16; the p = 1e-3 critical value for 400 samples is
    # 1.95/sqrt(400) = 0.098 (x k = 3 for Bonferroni: still far).
    rng = np.random.default_rng(14)
    p, m, fl = synthetic(rng, [128], 400, sigmas,
                         noise=lambda size: rng.exponential(size=size) - 1.0)
    ds = checks.clt(p, m, fl, k=3)
    assert np.all(np.abs(ds.clt_var_ratio_z.values) <= 3)
    assert np.all(ds.clt_ks_p.values < 1e-3) and np.all(ds.clt_mahalanobis_p.values < 1e-3)


def test_clt_mode_count_follows_the_rank(sigmas):
    rng = np.random.default_rng(15)
    V, _ = np.linalg.qr(rng.standard_normal((Q, 2)))
    low = [V @ np.diag([1.0, 0.5]) @ V.T] * T
    p, m, fl = synthetic(rng, [64], 50, low)
    ds = checks.clt(p, m, fl, k=4)
    assert ds.clt_k.values.tolist() == [2, 2]
    assert np.all(np.isnan(ds.clt_xi.isel(clt_mode=slice(2, None)).values))


def test_power_law_slopes_is_fit_power_law(rng):
    x = np.array([8.0, 16, 32, 64, 128])
    Y = np.exp(rng.standard_normal((20, 5)))
    Y[3, 2] = np.nan
    Y[4, 0] = -1.0
    got = checks.power_law_slopes(x, Y)
    for b in range(20):
        ok = np.isfinite(Y[b]) & (Y[b] > 0)
        np.testing.assert_allclose(got[b], fit_power_law(x[ok], Y[b, ok]).slope, rtol=1e-12)


def _loss_dataset(L, ts, ns, loss_0=None):
    p = xr.Dataset({"loss": (("n", "seed", "t"), L),
                    "f_n": (("n", "seed", "t", "x"), np.zeros(L.shape + (2,))),
                    "x_weight": ("x", [0.5, 0.5])},
                   coords={"n": ns, "seed": np.arange(L.shape[1]), "t": ts, "x": [0.0, 1.0]})
    m = None if loss_0 is None else xr.Dataset({"loss_0": ("t", loss_0)}, coords={"t": ts})
    return p, m


def test_loss_monotonicity_reports_the_largest_increase():
    ts = np.linspace(0, 4, 9)
    L = np.broadcast_to(np.exp(-ts), (2, 3, 9)).copy()
    p, m = _loss_dataset(L, ts, [8, 16], np.exp(-ts))
    ds = checks.loss_monotonicity(p, m)
    # strictly decreasing: the "largest increase" is the smallest decrease, the last step
    np.testing.assert_allclose(ds.loss_max_increase.values, np.exp(-4) - np.exp(-3.5),
                               rtol=1e-12)
    L[1, 2, 5] = L[1, 2, 4] + 0.01  # a bump
    ds = checks.loss_monotonicity(_loss_dataset(L, ts, [8, 16])[0])
    np.testing.assert_allclose(ds.loss_max_increase.values[1], 0.01, rtol=1e-12)


def test_time_to_level_flat_and_not_flat():
    ts = np.linspace(0, 6, 13)
    ns = [16, 64, 256]
    rng = np.random.default_rng(21)
    jitter = 1 + 0.01 * rng.standard_normal((3, 8, 1))
    flat = 0.4 * np.exp(-ts)[None, None] * jitter
    p, m = _loss_dataset(flat, ts, ns, 0.4 * np.exp(-ts))
    ds = checks.time_to_level(p, m, fraction=0.5, n_boot=200, rng=rng)
    # log-linear interpolation is exact for an exponential: t = ln 2 for the mean field
    np.testing.assert_allclose(float(ds.time_to_level_0), np.log(2), rtol=1e-12)
    assert abs(float(ds.time_to_level_slope)) < 0.05
    # rate ∝ 1/n: the crossing time is ln 2 · n/16 (exact under log-linear interpolation)
    ts = np.linspace(0, 20, 11)
    slow = 0.4 * np.exp(-ts[None, None] * (16 / np.array(ns))[:, None, None]) * jitter
    p, m = _loss_dataset(slow, ts, ns, 0.4 * np.exp(-ts))
    ds = checks.time_to_level(p, m, fraction=0.5, n_boot=200, rng=rng)
    assert abs(float(ds.time_to_level_slope) - 1.0) < 0.05
    assert float(ds.time_to_level_slope_low) > 0.9


def test_final_loss_scaling_and_floor():
    ns = np.array([16, 64, 256, 1024])
    rng = np.random.default_rng(22)
    L = (3.0 * ns[:, None, None] ** -2.0) * np.exp(0.05 * rng.standard_normal((4, 10, 2)))
    p, m = _loss_dataset(L, np.array([0.0, 50.0]), ns, np.array([1.0, 0.0]))
    ds = checks.final_loss_scaling(p, m, n_boot=300, rng=rng)
    assert float(ds.final_loss_slope_low) <= -2.0 <= float(ds.final_loss_slope_high)
    assert float(ds.loss_floor_ratio) == 0.0


def test_fluctuation_scaling_recovers_the_exponent(sigmas):
    rng = np.random.default_rng(23)
    alpha = 0.3
    p, _, _ = synthetic(rng, [16, 64, 256, 1024], 64, sigmas, rate=lambda n: n ** (-2 * alpha))
    ds = checks.fluctuation_scaling(p, alpha=alpha, n_boot=500, rng=rng)
    assert float(ds.fluct_expected_slope) == -2 * alpha
    assert np.all(ds.fluct_slope_low.values <= -0.6) and np.all(ds.fluct_slope_high.values >= -0.6)


def test_monotonicity_without_an_interval_does_not_apply():
    """One save time (t_end = 0) or a loss of 0 at t = 0 leaves loss_max_increase NaN: the
    row is a check that does not apply, with the reason, never a FAIL on "nan"."""

    from analysis.checks.losses import GD_DECREASE, MF_DECREASE, _monotonicity_rows
    from analysis.checks.rows import NotApplicable, RowContext

    ctx = RowContext(config={}, scheme="gd", seeds=4, level=0.95, p_min=0.05, z_max=2.0,
                     k_t=2, k_95=2, alpha=None)
    a = xr.Dataset({"loss_max_increase": ("n", [np.nan, np.nan]),
                    "loss_0_max_increase": ("solver", [np.nan])})
    rows = _monotonicity_rows(a, ctx)
    assert [type(r) for r in rows] == [NotApplicable, NotApplicable]
    assert [r.prediction for r in rows] == [GD_DECREASE, MF_DECREASE]
    assert "one save time" in rows[0].reason
    # one n measured is enough for a verdict; an increase beyond round-off is a FAIL
    a = xr.Dataset({"loss_max_increase": ("n", [np.nan, 1e-3])})
    assert _monotonicity_rows(a, ctx)[0].verdict == "FAIL"
