"""Self-healing on the excess loss and the closure row, on synthetic data with known answers
and on a tiny real run."""
import numpy as np
import pytest
import xarray as xr

from analysis.checks.healing import excess_power, healing_checks, healing_rows, closure_row
from analysis.checks.power import bootstrap_min_seeds
from analysis.checks.rows import NotApplicable, Row, RowContext

TS = np.array([0.0, 1.0, 2.0, 4.0, 8.0])
NS = np.array([16, 64, 256])
Q = 8


def _ctx(S):
    return RowContext(config={}, scheme="gd", seeds=S, level=0.99, p_min=0.002, z_max=3.0,
                      k_t=bootstrap_min_seeds(0.99), k_95=bootstrap_min_seeds(0.95), alpha=None)


def _synthetic(rng, *, S=64, power=1.0, r0_amp=1e-3):
    """Loss = l_0(t) + (tr Sigma_t / 2) / n^power + noise of the size the estimator has.

    tr Sigma_t peaks at t = 1 and decays as e^{-(t - 1)/2} after; r_0 decays as e^{-t}.
    Per seed the excess has standard deviation ||r_0|| sqrt(tr Sigma / n) (the
    <r_0, delta f> term) plus (tr Sigma)/(sqrt 2 n) (the 1/2 ||delta f||^2 term)."""
    tr = np.where(TS <= 1.0, 0.1 + 0.1 * TS, 0.2 * np.exp(-(TS - 1.0) / 2))
    r0 = r0_amp * np.exp(-TS)
    w = np.full(Q, 1.0 / Q)
    f = np.linspace(-1, 1, Q)
    # f_0 = f + r0 * (unit vector in L^2(mu))
    u = np.ones(Q)  # ||u||_mu = 1
    f0 = f[None, :] + r0[:, None] * u[None, :]
    l0 = 0.01 * np.exp(-TS)
    n = NS[:, None, None].astype(float)
    mean = 0.5 * tr[None, None, :] / n ** power
    sd = np.sqrt(r0**2 * tr / n + tr**2 / (2 * n**2))
    loss = l0 + mean + sd * rng.normal(size=(len(NS), S, len(TS)))
    x = np.arange(Q, dtype=float)
    particles = xr.Dataset({"loss": (("n", "seed", "t"), loss), "f_target": ("x", f),
                            "x_weight": ("x", w)},
                           coords={"n": NS, "seed": np.arange(S), "t": TS, "x": x})
    meanfield = xr.Dataset({"loss_0": ("t", l0), "f_0": (("t", "x"), f0)},
                           coords={"t": TS, "x": x})
    fl = xr.Dataset({"clt_var": (("t", "x"), np.repeat(tr[:, None], Q, axis=1))},
                    coords={"t": TS, "x": x})
    return particles, meanfield, fl, tr


def test_known_slope_and_fall(rng):
    p, mf, fl, tr = _synthetic(rng)
    # intervals at 99 % for 5 save times: a family-wise 5 % chance of a miss (Bonferroni)
    a = healing_checks(p, mf, fl, {}, n_boot=1000, level=0.99, rng=rng)
    # every variable is named in the one table that finish() writes into analysis.nc
    from particles.engine.variables import long_name_units

    assert all(long_name_units(v) for v in a.variables if v not in a.coords)
    # the excess-loss slope in n is -1 at every t (its interval holds it)
    assert np.all(a["excess_loss_slope_low"].values <= -1.0)
    assert np.all(a["excess_loss_slope_high"].values >= -1.0)
    # the fall of n * excess from the peak (t = 1) to t = 8 is tr(8)/tr(1) = e^{-3.5}
    np.testing.assert_allclose(a["excess_loss_fall_expected"].values, np.exp(-3.5))
    assert np.all(a["excess_loss_fall_high"].values < 1.0)
    assert np.all(a["excess_loss_fall_low"].values <= np.exp(-3.5) * 1.5)
    # the trace's decay after its peak: tr(8)/tr(1) and the halving time 2 ln 2
    assert float(a["trace_sigma_peak_time"]) == 1.0
    assert float(a["trace_sigma_decay"]) == pytest.approx(np.exp(-3.5))
    assert float(a["healing_time_measured"]) == pytest.approx(2 * np.log(2), rel=1e-12)
    rows = healing_rows(a, _ctx(p.sizes["seed"]))
    verdicts = {r.prediction: r.verdict for r in rows if isinstance(r, Row)}
    assert all(v == "PASS" for k, v in verdicts.items() if "falls over time" in k)
    assert sum("falls over time" in k for k in verdicts) == len(NS)
    assert verdicts["Σ_t heals: tr_μ Σ_T / peak of tr_μ Σ_t"] == "PASS"
    # no clt_cov: the closure row says what it needs
    cl = [r for r in rows if r.prediction.startswith("closure")]
    assert isinstance(cl[0], NotApplicable) and "clt_cov" not in cl[0].reason


def test_wrong_slope_fails(rng):
    # excess ~ n^{-1/2}: the slope rows must not pass
    p, mf, fl, tr = _synthetic(rng, power=0.5)
    a = healing_checks(p, mf, fl, {}, n_boot=400, rng=rng)
    assert np.all(a["excess_loss_slope_low"].values > -1.0)  # the intervals exclude -1
    rows = healing_rows(a, _ctx(p.sizes["seed"]))
    slope = [r for r in rows if isinstance(r, Row) and "vs n" in r.prediction]
    assert slope and all(r.verdict == "FAIL" for r in slope)


def test_no_power_is_not_judged(rng):
    # ||r_0|| large (0.5): the <r_0, delta f> noise swamps tr Sigma/(2n) at every n and t
    p, mf, fl, tr = _synthetic(rng, S=8, r0_amp=0.5)
    mf["f_0"] = mf["f_0"] * 0 + p["f_target"] + 0.5  # ||r_0|| = 0.5 at every t
    a = healing_checks(p, mf, fl, {}, n_boot=200, rng=rng)
    assert np.all(a["excess_loss_power"].values < 3.0)
    rows = healing_rows(a, _ctx(8))
    na = [r for r in rows if isinstance(r, NotApplicable)]
    assert any("no power" in r.reason and "run longer" in r.reason for r in na)
    assert all(not (isinstance(r, Row) and "falls over time" in r.prediction) for r in rows)


def test_power_formula():
    # signal / se = (tr/2n) / sqrt((r0^2 tr / n + tr^2/(2 n^2)) / S)
    assert excess_power(0.0, 0.2, 10, 2) == pytest.approx(1.0)  # (0.01)/sqrt(0.0002/2)
    assert excess_power(0.1, 0.2, 10, 8) == pytest.approx(
        0.01 / np.sqrt((0.01 * 0.2 / 10 + 0.0002) / 8))


def _closure_ds(err, reg, tol):
    t = np.arange(len(err), dtype=float)
    a = xr.Dataset({"closure_error": ("t", err), "closure_regime": ("t", reg),
                    "closure_tolerance": ("t", tol)}, coords={"t": t})
    a["closure_error"].attrs["h"] = 1.0
    return a


def test_closure_row_rule():
    # small ratio, error within tolerance, shrinking with the ratio: PASS
    r = closure_row(_closure_ds([0.4, 0.01], [1.0, 0.05], [3.0, 0.11]))
    assert r.verdict == "PASS"
    # error above its tolerance where the ratio is small: FAIL
    assert closure_row(_closure_ds([0.4, 0.2], [1.0, 0.05], [3.0, 0.11])).verdict == "FAIL"
    # error grows as the ratio falls by more than 2x: FAIL
    assert closure_row(_closure_ds([0.3, 0.5], [1.0, 0.4], [3.0, 1.0])).verdict == "FAIL"
    # out of the regime everywhere: INCONCLUSIVE, saying so
    r = closure_row(_closure_ds([0.6, 0.4], [1.5, 1.1], [5.0, 3.0]))
    assert r.verdict == "INCONCLUSIVE" and "outside the closure's regime" in r.expected


def test_closure_horizon_key():
    from analysis.run.experiment import ConfigError, resolve

    cfg = {"problem": {"kind": "circle", "kappa": 2.0, "quadrature": 32,
                       "target": {"cos": [0.0, 0.05]}},
           "init": {"c": {"law": "uniform", "low": -1.5, "high": 1.5}},
           "dynamics": {"scheme": "gd", "dt": 0.1, "t_end": 4.0, "save_times": [0.0, 2.0, 4.0]},
           "fluctuations": {"method": "influence", "closure_horizon": 4.0}}
    assert resolve(cfg).config["fluctuations"]["closure_horizon"] == 4.0
    cfg["fluctuations"]["closure_horizon"] = 3.0
    with pytest.raises(ConfigError, match="closure_horizon=3 joins no two"):
        resolve(cfg)
    cfg["fluctuations"]["closure_horizon"] = -1.0
    with pytest.raises(ConfigError, match="closure_horizon"):
        resolve(cfg)


@pytest.mark.slow
def test_tiny_real_run(tmp_path):
    # a tiny circle run through mfpc run; the checks on its outputs
    import textwrap
    from analysis.run.experiment import run_config
    from analysis.store.runfolder import read_run
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent("""
        [problem]
        kind = "circle"
        kappa = 2.0
        quadrature = 32
        [problem.target]
        cos = [0.0, 0.05]
        [init]
        c = { law = "uniform", low = -1.5, high = 1.5 }
        [dynamics]
        scheme = "gd"
        integrator = "rk4"
        dt = 0.1
        t_end = 6.0
        save_times = [0.0, 2.0, 4.0, 6.0]
        [particles]
        n = [16, 64]
        seeds = 16
        [meanfield]
        solvers = ["characteristics"]
        characteristics = { y = 32, c = 8 }
        [fluctuations]
        method = "influence"
        y = 32
        c = 8
        """))
    run_config(cfg, tmp_path / "out", progress=False)
    data, _, _ = read_run(tmp_path / "out")
    rng = np.random.default_rng(0)
    import json
    conf = json.loads(data["particles"].attrs["config"])
    from particles.build import build_problem

    a = healing_checks(data["particles"], data["meanfield"], data["fluctuations"], conf,
                       problem=build_problem(conf["problem"], conf.get("init")),
                       n_boot=200, rng=rng)
    assert np.isfinite(a["closure_error"].values[:-1]).all()
    assert np.all(a["closure_regime"].values < 0.3)
    rows = healing_rows(a, _ctx(16))
    assert any(r.prediction.startswith("closure") and isinstance(r, Row) for r in rows)


@pytest.mark.slow
def test_healing_example(tmp_path):
    # examples/circle_healing.toml: self-healing PASSes at every n and the closure row has
    # a verdict (PASS: the run is inside the closure's regime, delta ~ 0.03)
    import json
    from pathlib import Path
    from analysis.run.experiment import run_config
    from analysis.store.runfolder import read_run
    from analysis.checks.limits import lln

    root = Path(__file__).resolve().parents[2]
    run_config(root / "examples" / "circle_healing.toml", tmp_path, progress=False)
    data, _, _ = read_run(tmp_path)
    p, mf, fl = data["particles"], data["meanfield"], data["fluctuations"]
    rng = np.random.default_rng(0)
    base = lln(p, mf, fl, n_boot=200, rng=rng)
    from particles.build import build_problem

    conf = json.loads(p.attrs["config"])
    a = healing_checks(p, mf, fl, conf, a=base, n_boot=1000, rng=rng,
                       problem=build_problem(conf["problem"], conf.get("init"),
                                             root / "examples"))
    rows = healing_rows(a, _ctx(p.sizes["seed"]))
    heal = [r for r in rows if "falls over time" in r.prediction]
    assert len(heal) == p.sizes["n"] and all(r.verdict == "PASS" for r in heal), heal
    closure = [r for r in rows if r.prediction.startswith("closure")]
    assert isinstance(closure[0], Row) and closure[0].verdict in ("PASS", "FAIL", "INCONCLUSIVE")
