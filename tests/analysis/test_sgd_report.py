"""The SGD prediction in ``mfpc run`` / ``mfpc report`` (fluctuations.sgd,
sgd_cov / sgd_var CF metadata, the SGD rows of analysis/checks/sgd.py)."""
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from analysis.run.experiment import ConfigError, resolve
from analysis.checks.power import VERDICTS, per_time_level
from analysis.checks.rows import RowContext
from analysis.checks.sgd import sgd_checks, sgd_rows
from particles.engine.results import check_cf
from particles.engine.variables import VARIABLES

from tests.analysis.test_cli import write_toml

ROOT = Path(__file__).resolve().parents[2]


def small_sgd(method="influence"):
    cfg = tomllib.loads((ROOT / "examples" / "circle_sgd.toml").read_text())
    cfg["particles"] = {"n": [16, 32, 64], "seeds": 6, "root_seed": 2}
    cfg["dynamics"].update(t_end=2.0, save_times=[0.0, 1.0, 2.0], dt=0.1,
                           batch={"P0": 0.25, "alpha": 0.25})
    if method == "influence":
        cfg["meanfield"] = {"solvers": ["characteristics"],
                            "characteristics": {"y": 32, "c": 8}}
        cfg["fluctuations"] = {"method": "influence", "y": 16, "c": 4}
    else:
        cfg["meanfield"] = {"solvers": ["grid"],
                            "grid": {"y": 64, "c": 48, "c_min": -3.0, "c_max": 3.0}}
        cfg["fluctuations"] = {"method": "ensemble", "members": 8}
    return cfg


@pytest.mark.parametrize("method", ["influence", "ensemble"])
def test_sgd_run_and_report(tmp_path, method):
    cfgp = write_toml(tmp_path / "c.toml", small_sgd(method))
    out = tmp_path / "out"
    assert main(["run", str(cfgp), "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out), "--no-figures"]) == 0
    for name in ("particles.nc", "meanfield.nc", "fluctuations.nc", "analysis.nc"):
        with xr.open_dataset(out / name, engine="h5netcdf") as ds:
            assert check_cf(ds) == [], name
    with xr.open_dataset(out / "fluctuations.nc", engine="h5netcdf") as fl:
        for v in ("sgd_cov", "sgd_var"):
            assert (fl[v].attrs["long_name"], fl[v].attrs["units"]) == VARIABLES[v]
        assert fl["sgd_cov"].dims == ("t", "x", "x_") and fl["sgd_var"].dims == ("t", "x")
        assert fl.attrs["sgd_method"] == method
        assert "theta_ref" in fl.attrs["sgd_theta"]
        assert float(fl["sgd_var"].isel(t=0).max()) == 0.0
        assert float(fl["sgd_var"].isel(t=-1).min()) > 0.0
        if method == "ensemble":
            assert "sgd_cov_stderr" in fl
    with xr.open_dataset(out / "analysis.nc", engine="h5netcdf") as a:
        assert a["sgd_var_ratio"].dims == ("n", "t")
        assert np.all(np.isfinite(a["sgd_var_ratio"].values[:, 1:]))
        np.testing.assert_allclose(a["sgd_theta"].values, 0.1 / np.array([1, 2, 2]))
    text = (out / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| SGD: n·Var")]
    assert len(rows) == 3 * 2  # n x (t > 0)
    assert all(line.rstrip(" |").split("|")[-1].strip() in VERDICTS for line in rows)
    assert "| SGD: exponent of Var f_n vs n" in text
    assert "| SGD self-quench" in text
    # the GD predictions (LLN, CLT) do not apply: listed below the table, not as rows
    table, below = text.split("## Checks that do not apply to this run")
    assert not [line for line in table.splitlines() if line.startswith(("| LLN", "| CLT"))]
    for name in ("LLN slope", "LLN prefactor", "CLT variance ratio", "CLT Gaussianity",
                 "leading eigenvalues of M[ρ_n]", "SGD: variance of f_n − f_0 vs n"):
        assert f"\n- {name}" in below and "the GD prediction" in below, name


def test_sgd_key_defaults_and_refusals():
    cfg = small_sgd()
    assert resolve(cfg).config["fluctuations"]["sgd"] is True
    gd = small_sgd()
    gd["dynamics"].pop("batch")
    gd["dynamics"].update(scheme="gd")
    assert "sgd" not in resolve(gd).config["fluctuations"]  # a GD config's identity stays
    gd["fluctuations"]["sgd"] = True  # no batch to predict the noise of: refused
    with pytest.raises(ConfigError, match="fluctuations.sgd = true .*scheme = 'gd'"):
        resolve(gd)
    bad = small_sgd()
    bad["fluctuations"]["sgd"] = "yes"
    with pytest.raises(ConfigError, match="fluctuations.sgd"):
        resolve(bad)


def synthetic(with_sgd_term, S=400, seed=0):
    """Particles whose sqrt(n) (f_n - f_0) is N(0, Sigma + n theta Sigma^SGD) (or Sigma
    alone), with known Sigma, Sigma^SGD on Q = 6 uniform nodes."""
    rng = np.random.default_rng(seed)
    Q, ns, ts = 6, np.array([64, 256, 1024]), np.array([0.0, 1.0, 2.0])
    B = rng.standard_normal((Q, Q)) / Q
    clt = np.stack([B @ B.T * (1 + 0.1 * t) for t in ts])
    G = rng.standard_normal((Q, Q)) / Q
    sgd = np.stack([G @ G.T * t for t in ts])
    cfg = {"dynamics": {"scheme": "sgd", "integrator": "euler", "dt": 0.05,
                        "batch": {"P0": 0.125, "alpha": 0.25}}}
    theta = 0.05 / np.ceil(0.125 * ns ** 0.5 - 1e-9)
    f = np.zeros((len(ns), S, len(ts), Q))
    for i, n in enumerate(ns):
        for j in range(len(ts)):
            cov = clt[j] + (n * theta[i] * sgd[j] if with_sgd_term else 0.0)
            L = np.linalg.cholesky(cov + 1e-14 * np.eye(Q))
            f[i, :, j] = (rng.standard_normal((S, Q)) @ L.T) / np.sqrt(n)
    x = np.arange(Q, dtype=float)
    particles = xr.Dataset({"f_n": (("n", "seed", "t", "x"), f),
                            "x_weight": ("x", np.full(Q, 1 / Q)),
                            "f_target": ("x", np.ones(Q))},
                           coords={"n": ns, "seed": np.arange(S), "t": ts, "x": x})
    fl = xr.Dataset({"clt_cov": (("t", "x", "x_"), clt), "sgd_cov": (("t", "x", "x_"), sgd)},
                    coords={"t": ts, "x": x, "x_": x})
    f0 = xr.DataArray(np.zeros((len(ts), Q)), dims=("t", "x"), coords={"t": ts, "x": x})
    return particles, fl, cfg, f0


def context(cfg, *, seeds, alpha=None):
    """The rows' context of a run with 3 save times (the variance rows take their |z|
    bound over n and t from the dataset: per_time_level(3 * 3) here)."""
    level, p_min, z_max = per_time_level(3)
    return RowContext(config=cfg, scheme="sgd", seeds=seeds, level=level, p_min=p_min,
                      z_max=z_max, k_t=5, k_95=4, alpha=alpha)


@pytest.mark.parametrize("with_sgd_term, expected", [(True, "PASS"), (False, "FAIL")])
def test_variance_rows_can_pass_and_fail(with_sgd_term, expected):
    # 400 seeds: the relative se of a variance over 6 nodes is <= sqrt(2/399) = 7 %; the SGD
    # term is n theta tr Sigma^SGD / tr Sigma ~ 1-13 x at t = 2, so leaving it out of the
    # data gives ratios far below 1 - z se at the largest n (FAIL there), and with it
    # every row is within z = 3.2 se (Bonferroni over 6 rows at 5 %) and the GD
    # alternative is excluded at the largest n (PASS).
    particles, fl, cfg, f0 = synthetic(with_sgd_term)
    a = sgd_checks(particles, fl, cfg, f0=f0)
    rows = sgd_rows(a, context(cfg, seeds=400, alpha=0.25))
    var_rows = [r for r in rows if r.prediction.startswith("SGD: n·Var")]
    assert len(var_rows) == 6
    last = [r for r in var_rows if "n = 1024, t = 2" in r.prediction]
    assert last[0].verdict == expected, last
    if with_sgd_term:
        assert all(r.verdict in ("PASS", "INCONCLUSIVE") for r in var_rows), var_rows


@pytest.mark.parametrize("last, loss_end, expected", [
    (1e-4, 1e-3, "PASS"),   # growth fell with the loss (bound 10 * 1e-3 * 1 = 1e-2)
    (0.5, 1e-3, "FAIL"),    # still growing although l_0 fell 1000-fold
    (1e-4, 0.5, "n.a."),    # l_0 has not fallen below QUENCH_LOSS: not a long time yet
])
def test_self_quench_row(last, loss_end, expected):
    ts = np.array([0.0, 1.0, 10.0, 20.0])
    a = xr.Dataset({"sgd_trace": ("t", [0.0, 1.0, 2.0, 2.0 + 10 * last]),
                    "sgd_growth": ("t", [np.nan, 1.0, 0.1, last]),
                    "sgd_loss_0": ("t", [1.0, 0.5, loss_end, loss_end / 2]),
                    "sgd_expected_slope": ("t", np.full(4, np.nan)),
                    "sgd_var_ratio": (("n", "t"), np.ones((1, 4))),
                    "sgd_var_ratio_stderr": (("n", "t"), np.full((1, 4), 0.1)),
                    "sgd_ratio_gd": (("n", "t"), np.full((1, 4), 0.2)),
                    "sgd_term_ratio": (("n", "t"), np.full((1, 4), 4.0)),
                    "sgd_theta": ("n", [0.01])}, coords={"n": [256], "t": ts})
    rows = sgd_rows(a, context({"dynamics": {"scheme": "sgd"}}, seeds=100))
    quench = [r for r in rows if r.prediction.startswith("SGD self-quench")]
    assert len(quench) == 1 and quench[0].verdict == expected, quench


@pytest.mark.slow
def test_circle_sgd_example(tmp_path):
    # examples/circle_sgd.toml through mfpc run + report: the SGD term is several times
    # Sigma_t at the largest n (sgd_term_ratio > 3 at t = 20), no row FAILs, and at the
    # largest n every SGD variance row after t = 0 excludes the GD prediction (PASS).
    out = tmp_path / "sgd"
    assert main(["run", str(ROOT / "examples" / "circle_sgd.toml"), "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    with xr.open_dataset(out / "analysis.nc", engine="h5netcdf") as a:
        assert float(a["sgd_term_ratio"].isel(n=-1, t=-1)) > 3.0
    text = (out / "report.md").read_text()
    assert text.count("FAIL |") == 0
    big = [line for line in text.splitlines() if line.startswith("| SGD: n·Var")
           and "n = 1024," in line]
    assert big and all(line.rstrip(" |").endswith("PASS") for line in big), big
    assert (out / "figures" / "sgd_variance.png").exists()
