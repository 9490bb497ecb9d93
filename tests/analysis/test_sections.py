"""mfpc run with [meanfield] and [fluctuations]: files, names, bad input before work."""
import copy
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.run.experiment import ConfigError, resolve, run_config

ROOT = Path(__file__).resolve().parents[2]


def small():
    cfg = tomllib.loads((ROOT / "examples" / "circle.toml").read_text())
    cfg["particles"] = {"n": [8, 16], "seeds": 3, "root_seed": 1}
    cfg["dynamics"].update(t_end=1.0, save_times=[0.0, 0.5, 1.0], dt=0.1)
    cfg["meanfield"] = {"solvers": ["grid", "characteristics"],
                        "grid": {"y": 64, "c": 64, "c_min": -3.0, "c_max": 3.0},
                        "characteristics": {"y": 32, "c": 8}}
    cfg["fluctuations"] = {"method": "influence", "y": 16, "c": 4}
    return cfg


def test_meanfield_and_fluctuations_files(tmp_path):
    from tests.analysis.test_cli import write_toml

    cfgp = write_toml(tmp_path / "c.toml", small())
    status = run_config(cfgp, tmp_path / "out", progress=False)
    assert {k: v[1] for k, v in status.items()} == {
        "particles": "written", "meanfield": "written", "fluctuations": "written"}
    with xr.open_dataset(tmp_path / "out" / "meanfield.nc", engine="h5netcdf") as mf:
        for v, dims in {"f_0": ("t", "x"), "f_0_characteristics": ("t", "x"),
                        "loss_0": ("t",), "mass": ("t",), "outflow": ("t",)}.items():
            assert mf[v].dims == dims, v
        assert mf["rho_0"].dims[0] == "t" and mf["rho_0"].dims[-1] == "c"
        np.testing.assert_allclose(mf["t"].values, [0.0, 0.5, 1.0])
        # grid and characteristics agree on this smooth short run (both converge to f_0;
        # 64 x 64 cells: second-order error ~ (2 pi / 64)^2 * |f_0''| ~ 1e-2 at most)
        assert float(abs(mf["f_0"] - mf["f_0_characteristics"]).max()) < 1e-2
    with xr.open_dataset(tmp_path / "out" / "particles.nc", engine="h5netcdf") as pt:
        np.testing.assert_allclose(pt["x"].values, mf["x"].values)
    with xr.open_dataset(tmp_path / "out" / "fluctuations.nc", engine="h5netcdf") as fl:
        assert fl["clt_cov"].dims == ("t", "x", "x_")
        assert fl["clt_var"].dims == ("t", "x")
        assert fl.attrs["method"] == "influence"
        assert "truncated_mass" in fl.attrs and "resolution" in fl.attrs


BAD = [
    (lambda c: c["meanfield"]["grid"].update(c_min=-1.0, c_max=1.0),
     r"mass .* outside the grid .* widen meanfield.grid.c_min/c_max to \[-1.5, 1.5\]"),
    (lambda c: c["meanfield"]["grid"].update(y=8), r"meanfield.grid.y=8 does not resolve phi.*use meanfield.grid.y >= "),
    (lambda c: c["meanfield"].update(solvers=["spectral"]), r"'spectral' is not allowed"),
    (lambda c: c["meanfield"]["grid"].update(c_min=2.0, c_max=1.0), r"must be below"),
    (lambda c: c["fluctuations"].update(method="ensemble") or c["meanfield"].update(
        solvers=["characteristics"]), r"add \[meanfield\] with solvers including 'grid'"),
    (lambda c: c["init"].update(c={"law": "constant", "value": 1.0}), r"constant c law is a Dirac"),
    (lambda c: c["dynamics"].update(scheme="langevin", integrator="euler", temperature=0.1),
     r"characteristics carry no diffusion"),
    (lambda c: c["fluctuations"].update(members=1), r"fluctuations.members: must be >= 2"),
]


@pytest.mark.parametrize("mutate, message", BAD)
def test_bad_meanfield_input(tmp_path, mutate, message):
    cfg = copy.deepcopy(small())
    mutate(cfg)
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, base=tmp_path)


def test_grid_dt_above_cfl_bound_is_refused(tmp_path):
    from tests.analysis.test_cli import write_toml

    cfg = small()
    cfg["meanfield"]["grid"]["dt"] = 1.0
    del cfg["fluctuations"]
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    with pytest.raises(ConfigError, match=r"grid.dt=1.0 exceeds the CFL \(positivity\) bound .* use dt <="):
        run_config(cfgp, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before any work


def test_fluctuations_ensemble_method_file(tmp_path):
    from tests.analysis.test_cli import write_toml

    cfg = small()
    cfg["meanfield"]["solvers"] = ["grid"]
    cfg["meanfield"]["grid"].update(y=64, c=48, c_min=-4.0, c_max=4.0)
    cfg["fluctuations"] = {"method": "ensemble", "members": 8}
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    run_config(cfgp, tmp_path / "out", progress=False)
    with xr.open_dataset(tmp_path / "out" / "fluctuations.nc", engine="h5netcdf") as fl:
        assert fl.attrs["method"] == "ensemble" and fl.attrs["members"] == 8
        for v in ("clt_cov", "clt_cov_stderr"):
            assert fl[v].dims == ("t", "x", "x_")
        assert np.all(fl["clt_cov_stderr"].values >= 0)
        np.testing.assert_allclose(fl["clt_var"].values,
                                   np.diagonal(fl["clt_cov"].values, axis1=1, axis2=2))


def test_defaults_come_from_meanfield_defaults(tmp_path, monkeypatch):
    """[meanfield] and [fluctuations] defaults are read from meanfield.defaults (changed
    here to values no literal in analysis has) at resolve time."""
    from meanfield import defaults as D

    monkeypatch.setitem(D.GRID, "y", 72)
    monkeypatch.setitem(D.GRID, "c", 40)
    monkeypatch.setitem(D.GRID, "c_min", -3.5)
    monkeypatch.setitem(D.GRID, "c_max", 3.25)
    monkeypatch.setitem(D.GRID, "cfl", 0.7)
    monkeypatch.setitem(D.CHARACTERISTICS, "y", 33)
    monkeypatch.setitem(D.CHARACTERISTICS, "c", 7)
    monkeypatch.setitem(D.INFLUENCE, "y", 17)
    monkeypatch.setitem(D.INFLUENCE, "c", 5)
    monkeypatch.setitem(D.ENSEMBLE, "members", 9)
    cfg = small()
    cfg["meanfield"] = {}
    cfg["fluctuations"] = {}
    exp = resolve(cfg, base=tmp_path)
    mf, fl = exp.config["meanfield"], exp.config["fluctuations"]
    assert mf["grid"] == {"y": 72, "c": 40, "c_min": -3.5, "c_max": 3.25, "cfl": 0.7,
                          "potential": D.GRID["potential"],
                          "allow_truncation": D.GRID["allow_truncation"]}
    assert mf["characteristics"] == {"y": 33, "c": 7, "dt": exp.dynamics.dt}
    assert fl == {"method": "influence", "members": 9, "y": 17, "c": 5,
                  "dt": exp.dynamics.dt}
