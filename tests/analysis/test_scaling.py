"""Scaling statistics of high-dimensional runs on synthetic ensembles with a
known answer, and the Gram-matrix spectrum of M against the Q x Q operator."""
import numpy as np
import pytest
import xarray as xr

from meanfield.mkernel import gram_spectrum, m_kernel, operator_spectrum
from analysis.checks.scaling import ensemble_lln, final_scaling
from particles.kernels import CircleKernel, SigmoidUnit

NS = np.array([16, 32, 64, 128, 256])


def synthetic(*, seeds=64, R=None, Q=40, bias=0.3, noise=1.0, loss_power=-1.0, seed=0):
    r"""An ensemble with known scalings: f_n = f - bias/n + n^{-1/2} xi, xi iid N(0, noise^2)
    per (seed, x) and time; loss = A n^{loss_power} (1 + 0.3 eta), eta ~ N(0, 1).

    Then V_n = sum_q w_q Var(f_n) = noise^2 / n (weights sum to 1): n V_n is flat (slope 0);
    the signed errors have mean bias/n * mu(f > 0) (resp. mu(f < 0)): slope -1; the loss's
    mean is A n^{loss_power}: slope loss_power.
    """
    rng = np.random.default_rng(seed)
    T = 2
    x = np.linspace(0, 2 * np.pi, Q, endpoint=False)
    w = np.full(Q, 1.0 / Q)
    reals = 1 if R is None else R
    f = np.stack([np.cos(x + r) for r in range(reals)])  # (R, Q)
    n = NS[:, None, None, None].astype(float)
    shape = (reals, len(NS), seeds, T, Q)
    fn = f[:, None, None, None, :] - bias / n + noise * rng.standard_normal(shape) / np.sqrt(n)
    loss = 2.0 * n[..., 0] ** loss_power * (1 + 0.3 * rng.standard_normal(shape[:-1]))
    dims = ("realisation", "n", "seed", "t")
    ds = xr.Dataset(
        {"f_n": (dims + ("x",), fn), "loss": (dims, loss),
         "f_target": (("realisation", "x"), f), "x_weight": ("x", w)},
        coords={"n": NS, "seed": np.arange(seeds), "t": [0.0, 1.0], "x": np.arange(Q)})
    return ds.isel(realisation=0) if R is None else ds


def test_lln_from_ensemble_alone_finds_the_clt_rate():
    ds = ensemble_lln(synthetic(), n_boot=400, rng=np.random.default_rng(1))
    # n V_n = noise^2 exactly in expectation: the 95 % interval must hold 0 (this holds
    # with probability 0.95 per t for a correct interval; the seeds are fixed) and, with 64
    # seeds per n (relative error of a variance ~ sqrt(2/63) = 0.18 per n over a log range
    # of 2.8), exclude the alternatives +-0.5 of a wrong rate.
    lo, hi = ds["ens_var_slope_low"].values, ds["ens_var_slope_high"].values
    assert np.all((lo <= 0) & (0 <= hi))
    assert np.all((lo > -0.5) & (hi < 0.5))
    np.testing.assert_allclose(NS * ds["ens_var"].isel(t=0).values, 1.0, rtol=4 * 0.18)
    # D_n = V_n + bias^2 (1/n - 1/256)^2 + V_256/64: slope near -1 (within +-0.3: the
    # bias and the reference's own noise bend it by at most 0.1 here)
    s = ds["dist_largest_slope"].values
    assert np.all(np.abs(s + 1) < 0.3)
    assert np.isnan(ds["dist_largest"].sel(n=256)).all()
    assert "largest-n" in ds.attrs["reference"] or "n = 256" in ds.attrs["reference"]


def test_lln_slope_fails_a_wrong_rate():
    # noise ~ n^{-1/4} instead of n^{-1/2}: n V_n grows as n^{1/2}; the interval must
    # exclude 0 (the check can fail)
    ds = synthetic()
    n = ds["n"].values.astype(float)[:, None, None, None]
    f = ds["f_target"].values
    ds["f_n"] = f + (ds["f_n"] - f) * (n ** 0.25)
    out = ensemble_lln(ds, n_boot=400, rng=np.random.default_rng(2))
    assert np.all(out["ens_var_slope_low"].values > 0.2)


def test_final_scaling_per_realisation_and_mean():
    ds = synthetic(R=3, loss_power=-1.0, bias=3.0)
    out = final_scaling(ds, n_boot=400, rng=np.random.default_rng(3))
    assert list(out["fit"].values) == ["mean", "realisation 0", "realisation 1",
                                       "realisation 2"]
    lo, hi = out["loss_slope_low"].values, out["loss_slope_high"].values
    # 30 % noise per member, 64 seeds: the mean per n has 3.8 % error, the slope's
    # standard error over the log range ~0.02; the interval must hold -1 and not -1.5/-0.5
    assert np.all((lo <= -1) & (-1 <= hi))
    assert np.all((lo > -1.5) & (hi < -0.5))
    # the mean over realisations is the mean of the per-realisation means
    np.testing.assert_allclose(out["final_loss_mean"].sel(fit="mean"),
                               out["final_loss_mean"].isel(fit=slice(1, None)).mean("fit"))
    for name in ("signed_pos", "signed_neg"):
        s = out[f"{name}_slope"].values
        # mean bias/n * mu(+-f > 0) = 1.5/n against the seed mean of sum_q w_q Theta xi /
        # sqrt(n), of sd sqrt(1/(2Q)) / sqrt(64 n) = 0.014/sqrt(n): at n = 256 the mean is
        # 6.7 sd from 0 (no sign change), and the slope is -1 within 0.25 (the noise moves
        # log|mean| by at most ~0.15 at n = 256 and less below)
        assert np.all(np.abs(s + 1) < 0.25), (name, s)
        assert np.all(out[f"{name}_sign_changes"].values == 0)


def test_final_scaling_without_realisations_and_sign_change():
    ds = synthetic(bias=0.0)  # no bias: the signed errors are pure noise, signs change
    out = final_scaling(ds, n_boot=200, rng=np.random.default_rng(4))
    assert out.sizes["fit"] == 2
    ch = out["signed_pos_sign_changes"].values
    assert np.all(np.isnan(out["signed_pos_slope"].values[ch > 0]))


@pytest.mark.parametrize("kernel, d, N", [(CircleKernel(kappa=2.0), 1, 1),
                                          (SigmoidUnit(d=3), 3, 4)])
def test_gram_spectrum_matches_the_operator(kernel, d, N):
    rng = np.random.default_rng(5)
    J = 6
    m = J * (N + 1)
    for Q in (m - 5, 3 * m):  # both branches: Q < m (operator) and Q > m (Gram)
        x = rng.normal(size=(Q, d)) if d > 1 else rng.uniform(0, 2 * np.pi, (Q, 1))
        w = rng.uniform(0.5, 1.5, Q) / Q
        y = rng.normal(size=(J, N))
        c = rng.normal(size=J)
        a = np.full(J, 1.0 / J)
        ref = operator_spectrum(m_kernel(kernel, x, y, c, a), w)[: min(Q, m)]
        got = gram_spectrum(kernel, x, w, y, c, a, block_elems=7 * m)  # ragged blocks
        assert got.shape == (min(Q, m),)
        # both are eigvalsh of matrices equal up to round-off: eigenvalues agree within
        # ~ max(Q, m) eps lambda_max (Weyl), 1e-12 relative to the largest with margin
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * ref[0])


def test_gram_form_of_the_bootstrap_variance_is_exact():
    """The bootstrap of V_n reads only the seeds' Gram matrix: a resample's
    sum_q w_q Var equals the direct computation on the resampled rows (round-off)."""
    from analysis.checks.scaling import _gram, _gram_var

    rng = np.random.default_rng(8)
    F = rng.normal(size=(7, 50)) + 3.0
    w = rng.uniform(size=50)
    G = _gram(F, w)
    idx = rng.integers(0, 7, (20, 7))
    K = np.zeros((20, 7))
    np.add.at(K, (np.arange(20)[:, None], idx), 1.0)
    direct = np.sum(w * np.var(F[idx], axis=1, ddof=1), axis=-1)
    # |F|^2 ~ 10 per node: cancellation in k.diag G - k'Gk/S leaves ~1e-13 relative
    np.testing.assert_allclose(_gram_var(K, G), direct, rtol=1e-11)
