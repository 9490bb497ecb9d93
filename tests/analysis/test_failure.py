"""The failure contract of ``mfpc run``: a NumericalFailure in any section exits 3.

The failed section's partial Dataset (when its solver keeps one) is written marked
``complete = 0`` with CF-1.8 metadata; the sections before it stay complete; never an
AttributeError or a traceback.
"""
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from particles import NumericalFailure
from particles.engine.results import check_cf

from .test_cli import small_config, write_toml

ROOT = Path(__file__).resolve().parents[2]

def section_config(section):
    """Only [section] (no particles: nothing else to wait for) with a step that blows up:
    RK4 with h = 1000 on velocities O(1) overflows within a few dozen steps."""
    cfg = tomllib.loads((ROOT / "examples" / "circle.toml").read_text())
    cfg["dynamics"].update(t_end=1e5, save_times=[0.0, 1e4, 1e5], dt=0.5)
    for s in ("particles", "meanfield", "fluctuations"):
        del cfg[s]
    if section == "meanfield":
        cfg["meanfield"] = {"solvers": ["characteristics"],
                            "characteristics": {"y": 16, "c": 4, "dt": 1000.0}}
    else:
        cfg["fluctuations"] = {"method": "influence", "y": 16, "c": 4, "dt": 1000.0}
    return cfg


def run(tmp_path, cfg):
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    return main(["run", str(cfgp), "--out", str(out), "--no-progress"]), out


@pytest.mark.parametrize("section, solver", [("meanfield", "characteristics"),
                                             ("fluctuations", "influence")])
def test_failure_exits_3_with_the_message(tmp_path, capsys, section, solver):
    rc, out = run(tmp_path, section_config(section))
    err = capsys.readouterr().err
    assert rc == 3
    assert f"numerical failure: [{section}]: {solver}" in err
    assert "non-finite state" in err or "diverging" in err  # growth stops it first
    assert "lower" in err and "dt=1000" in err  # says what to change
    assert "Traceback" not in err and "AttributeError" not in err


@pytest.mark.parametrize("section", ["meanfield", "fluctuations"])
def test_failure_writes_the_partial(tmp_path, section):
    rc, out = run(tmp_path, section_config(section))
    assert rc == 3
    with xr.open_dataset(out / f"{section}.nc", engine="h5netcdf") as ds:
        assert ds.attrs["complete"] == 0
        assert any(w in ds.attrs["failure"] for w in ("non-finite", "diverging"))
        assert check_cf(ds) == []


def test_particles_failure_partial_is_cf(tmp_path, capsys):
    cfg = small_config()
    cfg["dynamics"].update(dt=50.0, t_end=1e5, save_times=[0.0, 100.0, 1e5], integrator="euler")
    rc, out = run(tmp_path, cfg)
    assert rc == 3
    assert f"kept in {out / 'particles.nc'}" in capsys.readouterr().err
    with xr.open_dataset(out / "particles.nc", engine="h5netcdf") as ds:
        assert ds.attrs["complete"] == 0 and "lower dynamics.dt" in ds.attrs["failure"]
        assert check_cf(ds) == []
        assert "mfpc run" in ds.attrs["history"]


def ensemble_config():
    cfg = small_config()
    cfg["meanfield"] = {"solvers": ["grid"], "grid": {"y": 64, "c": 48, "c_min": -4.0,
                                                      "c_max": 4.0}}
    cfg["fluctuations"] = {"method": "ensemble", "members": 4}
    return cfg


def _fail_ensemble(partial):
    """A stand-in ensemble solver that fails after its forward run (the real one needs a
    grid run of hours to blow up: its step is CFL-bounded)."""
    def solver(problem, save_times, **kwargs):
        ts = np.asarray(save_times, float)
        ds = None
        if partial:
            ds = xr.Dataset({"clt_var": (("t", "x"), np.full((len(ts), problem.x.shape[0]),
                                                              np.nan))},
                            coords={"t": ts, "x": problem.x[:, 0]})
        raise NumericalFailure("ensemble: non-finite perturbation at t=0.5", ds)
    return solver


@pytest.mark.parametrize("partial", [False, True])
def test_ensemble_failure(tmp_path, capsys, monkeypatch, partial):
    import meanfield.linearised

    monkeypatch.setattr(meanfield.linearised, "clt_covariance_ensemble",
                        _fail_ensemble(partial))
    rc, out = run(tmp_path, ensemble_config())
    err = capsys.readouterr().err
    assert rc == 3 and "[fluctuations]: ensemble: non-finite perturbation" in err
    assert "AttributeError" not in err
    # the sections before the failure are complete
    for s in ("particles", "meanfield"):
        with xr.open_dataset(out / f"{s}.nc", engine="h5netcdf") as ds:
            assert ds.attrs["complete"] == 1, s
    assert f"complete before the failure: {out / 'particles.nc'}" in err
    path = out / "fluctuations.nc"
    assert path.exists() == partial
    if partial:
        assert f"kept in {path}" in err
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            assert ds.attrs["complete"] == 0 and "ensemble" in ds.attrs["failure"]
            assert check_cf(ds) == []
    else:
        assert "kept nothing" in err


def test_characteristics_failure_keeps_the_grid(tmp_path, monkeypatch):
    """The grid ran before the characteristics failed: meanfield.nc keeps the grid's f_0."""
    import meanfield.characteristics

    def fail(problem, save_times, **kwargs):
        raise NumericalFailure("characteristics: non-finite node state at t=0.5; lower dt")

    monkeypatch.setattr(meanfield.characteristics, "solve_characteristics", fail)
    cfg = small_config()
    cfg["meanfield"] = {"solvers": ["grid", "characteristics"],
                        "grid": {"y": 64, "c": 48, "c_min": -4.0, "c_max": 4.0}}
    rc, out = run(tmp_path, cfg)
    assert rc == 3
    with xr.open_dataset(out / "meanfield.nc", engine="h5netcdf") as ds:
        assert ds.attrs["complete"] == 0 and "characteristics" in ds.attrs["failure"]
        assert np.isfinite(ds["f_0"].values).all() and "f_0_characteristics" not in ds
        assert check_cf(ds) == []
