"""The baseline checks (analysis.checks.baselines) and their figure."""
import numpy as np
import pytest
import xarray as xr

from analysis.checks.baselines import baseline_checks, baseline_rows
from analysis.checks.power import bootstrap_min_seeds
from analysis.checks.rows import NotApplicable, Row, RowContext
from meanfield.characteristics import solve_characteristics
from particles.laws import CLaw
from particles.presets import circle_problem

S = 40


def _problem():
    return circle_problem(2.0, 16, [0.0, 0.4], [0.0, 0.6],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


def _ctx(seeds=S):
    return RowContext({}, "gd", seeds, 0.95, 0.05, 2.0, bootstrap_min_seeds(0.95),
                      bootstrap_min_seeds(0.95), None)


def _particles(p, slope_trained, slope_mc, rng, ts=(0.0, 1.0)):
    """Losses A n^slope times log-normal noise of 10 % per seed at the last save time
    (1 + that before)."""
    ns = np.array([16, 32, 64, 128, 256])
    noise = lambda: np.exp(0.1 * rng.standard_normal((len(ns), S)))  # noqa: E731
    lt = 0.3 * ns[:, None] ** slope_trained * noise()
    lm = 0.3 * ns[:, None] ** slope_mc * noise()
    ts = np.asarray(ts)
    return xr.Dataset({
        "loss": (("n", "seed", "t"), np.stack([lt + 1] * (len(ts) - 1) + [lt], -1)),
        "loss_monte_carlo": (("n", "seed"), lm),
        "f_target": (("x",), p.f_x), "x_weight": (("x",), p.w)},
        coords={"n": ns, "seed": np.arange(S), "t": ts, "x": p.x[:, 0]})


def _meanfield(p, ts):
    ch = solve_characteristics(p, ts, grid={"y": 16, "c": 4, "dt": 0.1})
    ch["f_0"] = ch["f_0_characteristics"]
    ch["loss_0"] = ch["loss_0_characteristics"] * 0  # a floor of 0: the synthetic losses
    ch["loss_0_characteristics"] = ch["loss_0"]
    return ch


@pytest.mark.parametrize("slope, expected", [(-2.0, "PASS"), (-0.5, "FAIL")])
def test_synthetic_power_laws_give_the_expected_verdicts(slope, expected):
    """Trained excess loss ~ n^slope beside Monte-Carlo ~ n^-1, 40 seeds of 10 % noise:
    the slope's interval is ~ +-0.05 wide, far from -1 in either case."""
    rng = np.random.default_rng(0)
    p = _problem()
    parts = _particles(p, slope, -1.0, rng)
    a = baseline_checks(p, parts, _meanfield(p, [0.0, 1.0]), n_boot=300, rng=rng)
    s = a["baseline_excess_slope"].sel(ensemble="trained")
    assert abs(float(s) - slope) < 0.1
    rows = baseline_rows(a, _ctx())
    trained = [r for r in rows if isinstance(r, Row) and r.prediction.startswith("trained")]
    assert trained[0].verdict == expected
    mc = [r for r in rows if isinstance(r, Row) and r.prediction.startswith("Monte")]
    assert mc[0].verdict == "PASS"  # slope -1 by construction
    lazy = [r for r in rows if isinstance(r, Row) and r.prediction.startswith("lazy gap")]
    assert lazy[0].verdict == "n.a." and "measurement" in lazy[0].expected
    assert not np.isfinite(a["baseline_excess_slope"].sel(ensemble="random_features"))


def test_without_a_mean_field_the_lazy_rows_say_why():
    rng = np.random.default_rng(1)
    p = _problem()
    a = baseline_checks(p, _particles(p, -2.0, -1.0, rng), None, n_boot=100, rng=rng)
    rows = baseline_rows(a, _ctx())
    na = [r for r in rows if isinstance(r, NotApplicable)]
    assert any("no [meanfield]" in r.reason for r in na)
    assert any("no excess-loss slope of the trained" in r.reason for r in na)


def test_random_features_run_holds_its_lazy_gap_within_the_bound():
    p = _problem()
    ts = [0.0, 2.0, 8.0]
    mf = solve_characteristics(p, ts, grid={"y": 16, "c": 4, "dt": 0.1}, train=("c",))
    rng = np.random.default_rng(2)
    parts = _particles(p, -2.0, -1.0, rng, ts)
    a = baseline_checks(p, parts, mf, train=("c",), n_boot=100, rng=rng)
    assert np.all(a["lazy_gap"].values <= a["lazy_gap_bound"].values)
    row = [r for r in baseline_rows(a, _ctx()) if r.prediction.startswith("random features (y")]
    assert row[0].verdict == "PASS"


def test_the_figure_draws_every_ensemble(tmp_path):
    from analysis.report.baselinefigures import baseline_figure
    from analysis.report.figures import save

    rng = np.random.default_rng(3)
    p = _problem()
    parts = _particles(p, -2.0, -1.0, rng)
    mf = _meanfield(p, [0.0, 1.0])
    a = baseline_checks(p, parts, mf, n_boot=50, rng=rng)
    fig = baseline_figure(parts, a, mf)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "trained units" in labels and "Monte-Carlo units" in labels
    assert len(fig.axes) == 2
    assert save(fig, tmp_path / "baselines.png").stat().st_size > 0


def test_ensemble_view_puts_a_baseline_in_place_of_the_trained_units():
    from analysis.checks.baselines import ensemble_view

    rng = np.random.default_rng(4)
    p = _problem()
    parts = _particles(p, -2.0, -1.0, rng)
    parts["f_n_monte_carlo"] = (("n", "seed", "x"), rng.normal(size=(5, S, 16)))
    v = ensemble_view(parts, "monte_carlo")
    assert v.loss.dims == ("n", "seed", "t") and v.f_n.dims == ("n", "seed", "t", "x")
    np.testing.assert_array_equal(v.loss.isel(t=0), parts.loss_monte_carlo)
    np.testing.assert_array_equal(v.loss.isel(t=1), parts.loss_monte_carlo)
    assert "loss_monte_carlo" not in v and v.attrs["ensemble"] == "monte_carlo"


CONFIG = """
[problem]
kind = "circle"
kappa = 2.0
quadrature = 32
[problem.target]
cos = [0.0, 0.4]
[init]
c = { law = "uniform", low = -1.5, high = 1.5 }
[dynamics]
scheme = "gd"
dt = 0.1
t_end = 0.2
save_times = [0.0, 0.2]
[particles]
n = [4, 8]
seeds = 2
"""


@pytest.mark.parametrize("extra, message", [
    ('[dynamics]\ntrain = ["y"]', "dynamics.train"),
    ('[dynamics]\ntrain = ["c", "c"]', "dynamics.train"),
    ('[particles]\nbaselines = ["lazy"]', "particles.baselines"),
    ('[dynamics]\ntrain = ["c"]\n[particles]\nbaselines = ["random_features"]',
     "particles.baselines"),
    ('[dynamics]\ntrain = ["c"]\n[fluctuations]\nmethod = "ensemble"', "dynamics.train"),
])
def test_bad_train_and_baselines_are_refused_before_any_work(extra, message):
    import tomllib

    from analysis.run.experiment import ConfigError, resolve

    cfg = tomllib.loads(CONFIG)
    for section, table in tomllib.loads(extra).items():
        cfg.setdefault(section, {}).update(table)
    if "meanfield" not in cfg and "fluctuations" in cfg:
        cfg["meanfield"] = {"solvers": ["grid"]}
    with pytest.raises(ConfigError, match=message):
        resolve(cfg)


def test_a_run_with_baselines_writes_them_beside_the_trained_ensemble(tmp_path):
    import tomllib

    from analysis.run.experiment import resolve, run_experiment

    cfg = tomllib.loads(CONFIG)
    cfg["particles"]["baselines"] = ["monte_carlo", "random_features"]
    from analysis.sweep.executors import make_executor

    run_experiment(resolve(cfg), tmp_path / "out", progress=False, executor=make_executor(1))
    ds = xr.open_dataset(tmp_path / "out" / "particles.nc", engine="h5netcdf")
    for v in ("f_n_monte_carlo", "loss_monte_carlo", "f_n_random_features",
              "loss_random_features"):
        assert np.all(np.isfinite(ds[v].values)), v
    assert "monte_carlo" in ds.attrs["baselines"] and "exact" in ds.attrs["monte_carlo_G"]
    ds.close()
    # the report: the LLN per ensemble as rows, the CLT per ensemble said not to apply,
    # the figure of every ensemble
    from analysis.report.make import make_report

    res = make_report(tmp_path / "out", n_boot=50)
    text = (tmp_path / "out" / "report.md").read_text()
    for label in ("trained units", "Monte-Carlo units", "random features"):
        assert f"| LLN per ensemble ({label})" in text, label
    assert any(r.prediction.startswith("CLT per ensemble") for r in res["not_applicable"])
    assert (tmp_path / "out" / "figures" / "baselines.png").is_file()


def test_random_features_against_the_grid_alone_is_a_measurement():
    from meanfield.grid.solve import solve_grid

    p = _problem()
    ts = [0.0, 2.0]
    mf = solve_grid(p, ts, grid={"y": 64, "c": 32, "c_min": -5.0, "c_max": 5.0}, train=("c",))
    mf.attrs["f_0_source"] = "grid"
    rng = np.random.default_rng(5)
    a = baseline_checks(p, _particles(p, -2.0, -1.0, rng, ts), mf, train=("c",),
                        n_boot=50, rng=rng)
    assert "lazy_gap_bound" not in a
    row = [r for r in baseline_rows(a, _ctx()) if r.prediction.startswith("random features (y")]
    assert row[0].verdict == "n.a." and "characteristics" in row[0].expected
    assert a["lazy_gap"].values[-1] < 1e-3  # the grid's error, small


@pytest.mark.parametrize("trained, verdict", [(0.2, "PASS"), (1.0, "INCONCLUSIVE"),
                                              (5.0, "FAIL")])
def test_excess_ratio_against_monte_carlo(trained, verdict):
    """Trained units' excess loss over Monte-Carlo units' at the largest n: below 1 PASS,
    about 1 INCONCLUSIVE, above FAIL (synthetic losses whose excess is c/n, 64 seeds)."""
    from analysis.checks.baselines import _ratio_row

    ns = np.array([16, 64, 256])
    rng = np.random.default_rng(7)
    S = 64
    # excess c/n with a relative spread of 10 % over seeds: the ratio's bootstrap interval
    # is about +-2 x 0.1 x sqrt(2/S) ~ +-0.035 wide, far from 1 for 0.2 and 5
    tr = trained / ns[:, None] * (1 + 0.1 * rng.standard_normal((3, S)))
    mc = 1.0 / ns[:, None] * (1 + 0.1 * rng.standard_normal((3, S)))
    from analysis.checks.estimators import bootstrap_stat

    a = xr.Dataset(coords={"n": ns, "t": [0.0, 10.0]})
    b = {k: bootstrap_stat(list(v), lambda r: r.mean(axis=1), 400, rng) for k, v in
         (("tr", tr), ("mc", mc))}
    q = np.nanquantile(b["tr"] / b["mc"], [0.025, 0.975], axis=0)
    a["baseline_excess_ratio"] = ("n", tr.mean(1) / mc.mean(1))
    a["baseline_excess_ratio_low"], a["baseline_excess_ratio_high"] = ("n", q[0]), ("n", q[1])
    assert _ratio_row(a, _ctx()).verdict == verdict
