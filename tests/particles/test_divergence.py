"""Divergence that stays finite: a run whose loss grows by orders of magnitude
is stopped as a numerical failure (exit 3) with where and when, through the driver's
failure contract (partial Dataset, ``complete = 0``); a healthy run is not stopped.

Each diverging run below stays finite for many steps (circle, n = 16, Euler dt = 50: loss
5e10; RK4 dt = 1000: 2e130; characteristics dt = 1000: loss_0 5e125), so a check on
finiteness alone would let it end with exit 0 and ``complete = 1``.
"""
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from particles import Dynamics, ParticleStepper
from particles.engine.loop import Divergence
from particles.presets import circle_problem
from particles.steppers import ATOL, GD_RTOL, NOISY_FACTOR, STATE_FACTOR, Watch

from ..analysis.test_cli import write_toml

ROOT = Path(__file__).resolve().parents[2]


def example(name):
    return tomllib.loads((ROOT / "examples" / f"{name}.toml").read_text())


def only(cfg, keep):
    for s in ("particles", "meanfield", "fluctuations"):
        if s not in keep:
            cfg.pop(s, None)
    return cfg


def run(tmp_path, cfg):
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    return main(["run", str(cfgp), "--out", str(out), "--no-progress"]), out


def big_step(dt, integrator="euler"):
    """The circle example with steps of dt and save times 0, dt, 2 dt, 10 dt: the first
    step is taken whole (no overflow for many steps: the loss grows to 1e10..1e130)."""
    cfg = example("circle")
    cfg["dynamics"].update(dt=dt, integrator=integrator, t_end=10.0 * dt,
                           save_times=[0.0, dt, 2.0 * dt, 10.0 * dt])
    return cfg


def assert_kept_before(ds, loss_var):
    """The partial holds the save times before the failure, none of the blown-up values:
    every finite stored loss is below 10 times the first one (a GD loss never rises).
    (The particle counts after the failing one were never started: NaN throughout.)"""
    loss = ds[loss_var].values
    first = loss[..., 0]
    assert np.isfinite(first).any()
    finite = np.isfinite(loss)
    assert np.all(loss[finite] <= 10 * np.nanmax(first)), loss
    assert not finite.all(), "the failure must stop the run before the last save time"


@pytest.mark.parametrize("dt, integrator", [(50.0, "euler"), (1000.0, "euler"),
                                            (1000.0, "rk4")])
def test_particles_divergence_exits_3(tmp_path, capsys, dt, integrator):
    cfg = only(big_step(dt, integrator), {"particles"})
    cfg["particles"] = {"n": [16, 32], "seeds": 2, "root_seed": 1}
    rc, out = run(tmp_path, cfg)
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "numerical failure" in err and "particles: diverging at t=" in err
    assert "n=16" in err and "seed" in err  # which member
    assert f"dt={dt}" in err and "lower dynamics.dt" in err  # what to change
    assert "Traceback" not in err
    with xr.open_dataset(out / "particles.nc", engine="h5netcdf") as ds:
        assert ds.attrs["complete"] == 0 and "diverging" in ds.attrs["failure"]
        assert_kept_before(ds, "loss")
    assert not (out / "meanfield.nc").exists()


@pytest.mark.parametrize("section, solver, var", [
    ("meanfield", "characteristics", "loss_0_characteristics"),
    ("fluctuations", "influence (forward)", None)])
@pytest.mark.parametrize("dt", [50.0, 1000.0])
def test_meanfield_divergence_exits_3(tmp_path, capsys, section, solver, var, dt):
    cfg = only(big_step(1.0), set())
    cfg["dynamics"].update(t_end=10.0 * dt, save_times=[0.0, dt, 2.0 * dt, 10.0 * dt])
    if section == "meanfield":
        cfg["meanfield"] = {"solvers": ["characteristics"],
                            "characteristics": {"y": 16, "c": 4, "dt": dt}}
    else:
        cfg["fluctuations"] = {"method": "influence", "y": 16, "c": 4, "dt": dt}
    rc, out = run(tmp_path, cfg)
    err = capsys.readouterr().err
    assert rc == 3, err
    assert f"[{section}]: {solver}: diverging at t=" in err
    assert f"dt={dt}" in err and "lower" in err
    assert "Traceback" not in err and "AttributeError" not in err
    with xr.open_dataset(out / f"{section}.nc", engine="h5netcdf") as ds:
        assert ds.attrs["complete"] == 0 and "diverging" in ds.attrs["failure"]
        if var is not None:
            assert_kept_before(ds, var)
        else:  # the forward f_0 kept: finite and of the target's size (|f| <= 1.5; a
            # diverged f_0 is orders of magnitude beyond the bound 10)
            f0 = ds["f_0_influence"].values
            assert np.isfinite(f0[0]).all() and np.nanmax(np.abs(f0)) < 10


def shrink(cfg, n, seeds, t_end, saves):
    cfg["particles"] = {"n": n, "seeds": seeds, "root_seed": 1}
    cfg["dynamics"].update(t_end=t_end, save_times=saves)
    return cfg


def healthy_configs():
    circle = shrink(only(example("circle"), {"particles"}), [16, 32], 2, 4.0, [0.0, 2.0, 4.0])
    circle["meanfield"] = {"solvers": ["characteristics"],
                           "characteristics": {"y": 16, "c": 4}}
    circle["fluctuations"] = {"method": "influence", "y": 16, "c": 4}
    euler = shrink(only(example("circle"), {"particles"}), [8, 64], 2, 20.0, [0.0, 20.0])
    euler["dynamics"].update(integrator="euler", dt=0.5)  # stable, large steps
    sgd = shrink(only(example("sigmoid_teacher"), {"particles"}), [40], 2, 4.0,
                 [0.0, 2.0, 4.0])
    sgd["problem"]["nodes"] = 1000
    sgd["dynamics"]["batch"] = [[0.0, 8], [2.0, 64]]
    lang = shrink(only(example("sphere_3spin"), {"particles"}), [16], 2, 2.0, [0.0, 1.0, 2.0])
    lang["problem"]["nodes"] = 1000
    lang["dynamics"]["temperature"] = [[0.0, 1e-3], [1.0, 0.0]]
    hot = shrink(only(example("circle"), {"particles"}), [16], 2, 4.0, [0.0, 4.0])
    hot["dynamics"].update(scheme="langevin", integrator="euler", temperature=0.5)
    return {"circle": circle, "euler": euler, "sgd": sgd, "langevin": lang, "hot": hot}


@pytest.mark.parametrize("name", sorted(healthy_configs()))
def test_healthy_run_is_not_stopped(tmp_path, capsys, name):
    rc, out = run(tmp_path, healthy_configs()[name])
    assert rc == 0, capsys.readouterr().err
    for f in out.glob("*.nc"):
        with xr.open_dataset(f, engine="h5netcdf") as ds:
            assert ds.attrs["complete"] == 1, f


# -- the rules of ParticleStepper.check, on hand-made watches ------------------------------
@pytest.fixture(scope="module")
def circle():
    return circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0])


def state_with(stepper, lmin, last, c=1.0):
    one = np.ones(1)
    w = Watch(lmin * one, last * one, one, one, 5)  # lref = 1
    return stepper.init(np.zeros((1, 2, 1)), np.full((1, 2), c))._replace(watch=w)


def test_gd_rule_allows_round_off_only(circle):
    st = ParticleStepper(circle, Dynamics("gd", "rk4", 0.1), 0.5, labels=["n=2, seed 0"])
    tol = GD_RTOL * 0.3 + ATOL  # lmin = 0.3, lref = 1
    assert st.check(state_with(st, 0.3, 0.3 + 0.5 * tol)) is None
    bad = st.check(state_with(st, 0.3, 0.3 + 2 * tol))
    assert isinstance(bad, Divergence) and "n=2, seed 0" in bad and "round-off" in bad


def test_noisy_rule_allows_a_factor(circle):
    st = ParticleStepper(circle, Dynamics("langevin", "euler", 0.1, temperature=0.1), 0.5)
    assert st.check(state_with(st, 1e-3, 0.5 * NOISY_FACTOR * 1e-3)) is None
    assert isinstance(st.check(state_with(st, 1e-3, 2 * NOISY_FACTOR * 1e-3)), Divergence)
    # a loss that overflowed while the state stayed finite
    assert "non-finite loss" in st.check(state_with(st, 1e-3, np.inf))


def test_state_rule(circle):
    st = ParticleStepper(circle, Dynamics("gd", "euler", 0.1), 0.5)
    assert st.check(state_with(st, 0.3, 0.3, c=0.5 * STATE_FACTOR)) is None
    bad = st.check(state_with(st, 0.3, 0.3, c=2 * STATE_FACTOR))
    assert isinstance(bad, Divergence) and "charge" in bad


# -- the grid (meanfield.grid.stepper): conservative and positive below its bound -------------
@pytest.fixture(scope="module")
def ucircle():
    """The circle with c ~ U[-1.5, 1.5]: the whole initial law inside c in [-2.5, 2.5]."""
    from particles.laws import CLaw

    return circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


def grid_run(circle, **kw):
    from meanfield.grid.solve import solve_grid

    return solve_grid(circle, [0.0, 0.1, 1.0], grid={"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5},
                      progress=False, **kw)


def _grow_after(monkeypatch, calls, factor):
    """GridSolver.rk3 returns masses times ``factor`` (finite) from its ``calls``-th call."""
    from meanfield.grid.solver import GridSolver, StepResult

    real, count = GridSolver.rk3, {"n": 0}

    def wrapped(self, *args):
        count["n"] += 1
        res = real(self, *args)
        if count["n"] >= calls:
            return StepResult(res.m * factor, res.outflow, res.bound)
        return res

    monkeypatch.setattr(GridSolver, "rk3", wrapped)


def test_healthy_grid_is_not_stopped(ucircle):
    ds = grid_run(ucircle)
    assert ds.attrs["complete"] == 1
    assert np.isfinite(ds["loss_0"].values).all()


@pytest.mark.parametrize("factor, what", [(1.5, "mass + outflow"), (-1.0, "smallest cell")])
def test_grid_mass_growth_or_sign_is_divergence(ucircle, monkeypatch, factor, what):
    from particles import NumericalFailure

    _grow_after(monkeypatch, 10, factor)
    with pytest.raises(NumericalFailure, match=r"^grid: diverging at t=\S+ \(mass") as e:
        grid_run(ucircle)
    assert what in str(e.value) and "lower meanfield.cfl" in str(e.value)
    part = e.value.partial
    assert part.attrs["complete"] == 0 and np.isfinite(part["f_0"].isel(t=0)).all()


def test_grid_loss_and_bound_rules(ucircle):
    from meanfield.grid.cells import make_grid
    from meanfield.grid.solver import GridSolver
    from meanfield.grid.stepper import BOUND_DROP, LOSS_FACTOR, GridState, GridStepper, GridWatch

    grid = make_grid(ucircle, ny=16, nc=8, c_min=-2.0, c_max=2.0)
    st = GridStepper(GridSolver(ucircle, grid))
    m = np.full(grid.shape, 1.0 / np.prod(grid.shape))
    ok = GridWatch(1.0, 0.1, 0.1, 0.01)
    assert st.check(GridState(1.0, m, 0.0, 0.01, 0.01, 0.0, ok)) is None
    bad = st.check(GridState(1.0, m, 0.0, 0.01, 0.01, 0.0,
                             ok._replace(last=2 * LOSS_FACTOR * 0.1)))
    assert isinstance(bad, Divergence) and "mean-field loss" in bad
    bad = st.check(GridState(1.0, m, 0.0, 0.01, 0.5 * BOUND_DROP * 0.01, 0.0, ok))
    assert isinstance(bad, Divergence) and "positivity bound" in bad


def test_failure_at_the_first_step_points_at_the_data(tmp_path, capsys):
    # c of order 1e300: the first step overflows whatever dt is, so lowering dt alone is
    # the wrong advice; a config is refused the law (beyond 1e8, the bound of init.file),
    # a run from Python is told to look at the initial law and the target
    cfg = only(example("circle"), {"particles"})
    cfg["particles"] = {"n": [16], "seeds": 2, "root_seed": 1}
    cfg["dynamics"].update(t_end=1.0, save_times=[0.0, 1.0])
    cfg["init"]["c"] = {"law": "uniform", "low": -1e300, "high": 1e300}
    rc, _ = run(tmp_path, cfg)
    err = capsys.readouterr().err
    assert rc == 2 and "init.c.low = -1e+300 is beyond 1e+08" in err, err
    from particles import Dynamics, NumericalFailure, simulate
    from particles.laws import CLaw
    from particles.presets import circle_problem

    pr = circle_problem(2.0, 64, cos=[0.0, 1.0], c_law=CLaw("uniform", low=-1e300, high=1e300))
    with pytest.raises(NumericalFailure) as e:
        simulate(pr, [16], 2, Dynamics("gd", "euler", 0.05), [0.0, 1.0], root_seed=1)
    assert "first step" in str(e.value) and "initial law" in str(e.value), str(e.value)
    # a (finite) divergence, a dt problem, does not say so
    (tmp_path / "b").mkdir()
    rc, _ = run(tmp_path / "b", only(big_step(50.0), {"particles"}))
    err = capsys.readouterr().err
    assert rc == 3 and "first step" not in err, err


def test_ensemble_forward_run_keeps_its_divergence_watch(ucircle, monkeypatch):
    # the tangent ensemble steps the same grid: its forward run must be watched as the
    # grid's is (a watch dropped between steps never sees the mass grow)
    from meanfield.linearised import clt_covariance_ensemble
    from particles import NumericalFailure

    _grow_after(monkeypatch, 10, 1.5)
    with pytest.raises(NumericalFailure, match=r"^ensemble: diverging at t=\S+ \(forward "
                                                r"run: mass \+ outflow"):
        clt_covariance_ensemble(ucircle, [0.0, 0.1, 1.0], members=4,
                                grid={"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5}, root_seed=1, progress=False)


def test_noisy_loss_is_evaluated_rarely(ucircle, monkeypatch):
    # SGD: one loss evaluation on Q nodes costs about Q/P steps; the check evaluates it
    # every ceil(8 Q/P) steps (plus at save times), about 1/8 of the run's cost
    calls = {"n": 0}
    real = ParticleStepper._loss

    def counted(self, *args):
        calls["n"] += 1
        return real(self, *args)

    monkeypatch.setattr(ParticleStepper, "_loss", counted)
    dyn = Dynamics("sgd", "euler", 0.01, batch=4)
    from particles import simulate

    simulate(ucircle, [8], 1, dyn, [0.0, 1.0], progress=False)  # 100 steps, Q = 16, P = 4
    stride = math.ceil(8 * 16 / 4)
    # the first step's loss, one every `stride` steps, one on landing at t = 1
    assert calls["n"] <= 1 + 100 // stride + 1, calls
