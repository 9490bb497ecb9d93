"""``mfpc advise``: the step bound on a quadratic problem, the batch advice against SGD
ensembles, the command line."""
import numpy as np
import pytest

from analysis.advise import (RK4_BOUND, advise, batch_advice, hessian_lambda_max, stable_dt)
from analysis.checks.limits import clt_relative_stderr
from analysis.cli import main
from analysis.run.experiment import resolve


def _quadratic(rng, lam):
    V = np.linalg.qr(rng.normal(size=(len(lam), len(lam))))[0]
    return (V * lam) @ V.T


def _steps(A, dt, integrator, k):
    """||z_k|| / ||z_0|| of k steps of z' = -A z."""
    z = np.ones(A.shape[0])
    z0 = np.linalg.norm(z)
    for _ in range(k):
        if integrator == "euler":
            z = z - dt * (A @ z)
        else:
            f = lambda v: -(A @ v)  # noqa: E731
            k1 = f(z); k2 = f(z + 0.5 * dt * k1); k3 = f(z + 0.5 * dt * k2)  # noqa: E702
            k4 = f(z + dt * k3)
            z = z + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return np.linalg.norm(z) / z0


def test_rk4_bound():
    # |R(-x)| = 1 at the bound, R the RK4 stability polynomial
    x = RK4_BOUND
    assert abs(1 - x + x**2 / 2 - x**3 / 6 + x**4 / 24) == pytest.approx(1.0, abs=1e-12)
    assert RK4_BOUND == pytest.approx(2.785293563, abs=1e-8)


def test_lanczos_finds_the_largest_algebraic_end(rng):
    # indefinite: the largest |eigenvalue| is -5, the largest eigenvalue 3
    lam = np.concatenate([[-5.0, 3.0], rng.uniform(-4, 2.5, 40)])
    A = _quadratic(rng, lam)
    got = hessian_lambda_max(lambda z: A @ z, rng.normal(size=len(lam)), rng=rng)
    # central differences of a linear gradient are exact up to round-off: eps ||A|| / h
    assert got == pytest.approx(3.0, rel=1e-6)


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_advised_dt_stable_and_one_and_a_half_times_diverges(rng, integrator):
    # E = z^T A z / 2 with A >= 0: the step bound is exact. At the advised dt (less a 1e-6
    # relative margin for the Lanczos/FD error) the iteration does not grow; at 1.5 x it
    # grows as |R(-1.5 b)|^k with |R| = 2 (Euler) or 4.3 (RK4) on the top direction.
    lam = np.concatenate([[4.0], rng.uniform(0, 3.9, 30)])
    A = _quadratic(rng, lam)
    dt = stable_dt(hessian_lambda_max(lambda z: A @ z, np.zeros(len(lam)), rng=rng),
                   integrator)
    assert dt == pytest.approx({"euler": 2.0, "rk4": RK4_BOUND}[integrator] / 4.0, rel=1e-6)
    assert _steps(A, dt * (1 - 1e-6), integrator, 400) <= 1.0 + 1e-9
    assert _steps(A, 1.5 * dt, integrator, 40) > 1e6


def test_batch_advice_formulas():
    # P_eq = n dt trSGD / trSigma; the ratio at P = P_eq is 1 and predicted var doubles
    adv = batch_advice([10, 100], 0.1, 2.0, 4.0, 0.5, batch=[2.0, 20.0])
    np.testing.assert_allclose(adv["batch_equal"], [2.0, 20.0])
    np.testing.assert_allclose(adv["batch_ratio"], [4.0, 40.0])
    np.testing.assert_allclose(adv["sgd_term_ratio"], [1.0, 1.0])  # P ∝ n keeps it
    np.testing.assert_allclose(adv["predicted_var"], [4.0, 4.0])
    gd = batch_advice([10], 0.1, 2.0, 4.0, 0.5)
    assert gd["sgd_term_ratio"][0] == 0.0 and gd["predicted_var"][0] == 2.0


def _cfg(n=64, amp=1.0, **dyn):
    return {
        "problem": {"kind": "circle", "kappa": 2.0, "quadrature": 32,
                    "target": {"cos": [0.0, 0.5 * amp], "sin": [0.0, 0.3 * amp]}},
        "init": {"c": {"law": "uniform", "low": -1.5, "high": 1.5}},
        "dynamics": {"scheme": "gd", "integrator": "euler", "dt": 0.05, "t_end": 2.0,
                     "save_times": [0.0, 1.0, 2.0], **dyn},
        "particles": {"n": [n], "seeds": 8, "root_seed": 5},
        "fluctuations": {"method": "influence", "y": 16, "c": 4}}


def test_advise_without_a_mean_field_gives_dt_max_and_names_the_capability(monkeypatch):
    exp = resolve(_cfg())
    why = "kernel 'circle' does not declare 'hessian_y'"
    monkeypatch.setattr(type(exp.problem), "missing",
                        lambda self, cap: why if cap == "hessian_y" else "")
    ds, notes = advise(exp)
    assert np.all(np.isfinite(ds["dt_max"].values)) and np.all(ds["dt_max"].values > 0)
    assert "batch_equal" not in ds
    assert any(why in n and "batch advice" in n for n in notes)


def test_cli_advise(tmp_path, capsys):
    from tests.analysis.test_cli import write_toml

    cfg = write_toml(tmp_path / "c.toml", _cfg())
    assert main(["advise", str(cfg), "--out", str(tmp_path / "o"), "--sgd-ratio", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "dt_max" in text and "P(r=0.5)" in text
    import xarray as xr
    from particles.engine.results import check_cf
    with xr.open_dataset(tmp_path / "o" / "advice.nc", engine="h5netcdf") as ds:
        assert check_cf(ds) == []
        for v in ("dt_max", "batch_equal", "batch_ratio", "sgd_term_ratio", "predicted_var"):
            assert ds[v].dims == ("n",)
        np.testing.assert_allclose(ds["batch_ratio"].values, ds["batch_equal"].values / 0.5)
    assert main(["advise", str(cfg), "--sgd-ratio", "-1"]) == 2


def _ensemble_ratio(exp, P, S):
    """n Var(f_n - f_0)(T) summed with the weights of mu over S seeds of Euler SGD with
    batch P, and the predicted covariance's relative standard error of that sum."""
    from particles import Dynamics, simulate

    p = exp.problem
    n = int(exp.particles["n"][0])
    dyn = Dynamics("sgd", "euler", float(exp.dynamics.dt), batch=int(P))
    ds = simulate(p, [n], S, dyn, exp.save_times, root_seed=11, save_state=False)
    f = ds["f_n"].isel(n=0, t=-1).values  # (S, Q)
    return n * float(np.sum(p.w * np.var(f, axis=0, ddof=1)))


@pytest.mark.slow
def test_predicted_var_matches_sgd_ensembles():
    # At the advised integer P for r = 1 and at the config's own P the ensemble's
    # n Var / tr Sigma_T is within 3 s.e. of 1 + P_eq / P. The s.e. is that of a sample
    # variance sum over S Gaussian seeds with the predicted covariance (clt_relative_stderr
    # with the eigenvalues of W^1/2 (Sigma_T + n theta Sigma^SGD_T) W^1/2); the O(dt) gap of
    # Euler SGD to its continuous-time limit is below 1 % here (docs/methods_fluctuations.md).
    from meanfield.sgdnoise import sgd_covariance_influence

    # a target twice as large as the fast tests' and n = 256: P_eq ~ 2, so the SGD term is
    # as large as the discreteness term at the advised P (a GD-only prediction is 20 s.e. off)
    exp = resolve(_cfg(n=256, amp=2.0, scheme="sgd", batch=4))
    ds, _ = advise(exp, ratio=1.0)
    n, S = int(exp.particles["n"][0]), 400
    sg = sgd_covariance_influence(exp.problem, exp.save_times, None, grid={"y": 16, "c": 4, "dt": float(exp.dynamics.dt)})
    w = exp.problem.w
    sw = np.sqrt(w)
    tr = float(np.sum(w * sg["clt_var"].values[-1]))
    P_eq = float(ds["batch_equal"].values[0])
    for P in (max(1, round(float(ds["batch_ratio"].values[0]))), 4):
        pred = 1.0 + P_eq / P
        if P == 4:
            assert float(ds["predicted_var"].values[0]) == pytest.approx(tr * pred, rel=1e-9)
        cov = sg["clt_cov"].values[-1] + n * float(exp.dynamics.dt) / P * sg["sgd_cov"].values[-1]
        se = clt_relative_stderr(np.linalg.eigvalsh(sw[:, None] * cov * sw[None, :]), S) * pred
        got = _ensemble_ratio(exp, P, S) / tr
        assert abs(got - pred) <= 3 * se, (P, got, pred, se)
