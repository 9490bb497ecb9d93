"""Results that would be silently wrong, and exit codes that would mislead: edited files,
a divergence found where there is none, a verdict on nothing, a bound reached mid-run,
the memory refusal of many realisations, more workers than tasks."""
from __future__ import annotations

import copy
import json
import tomllib
import warnings

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from analysis.run import experiment
from analysis.run.experiment import resolve
from analysis.sweep.executors import SerialExecutor
from particles.engine.config import ConfigError

from .test_cli import ROOT, write_toml
from .test_hostile_runfolder import snapshot
from .test_runs import config, run


def _rewrite(path, change):
    """Load ``path``, apply ``change(ds)``, write it back in place (attrs kept)."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = ds.load()
    change(ds)
    path.unlink()
    ds.to_netcdf(path, engine="h5netcdf")


def _add_ten(ds):
    f = ds["f_n"].values.copy()
    f[0, 0, -1, 3] += 10.0
    ds["f_n"] = (ds["f_n"].dims, f, ds["f_n"].attrs)


def _edit_dt(ds):
    cfg = json.loads(ds.attrs["config"])
    cfg["dynamics"]["dt"] = 0.05  # run_id kept as it was
    ds.attrs["config"] = json.dumps(cfg, sort_keys=True)


@pytest.mark.parametrize("edit", [_add_ten, _edit_dt], ids=["f_n+10", "dt"])
def test_an_edited_result_is_refused_by_the_report(tmp_path, capsys, edit):
    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    with xr.open_dataset(P / "particles.nc", engine="h5netcdf") as ds:
        assert len(ds.attrs["data_sha256"]) == 64
        run_id = ds.attrs["run_id"]
    _rewrite(P / "particles.nc", edit)
    with xr.open_dataset(P / "particles.nc", engine="h5netcdf") as ds:
        assert ds.attrs["run_id"] == run_id
    before = snapshot(P)
    capsys.readouterr()
    assert main(["report", str(P), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert f"{P / 'particles.nc'} was changed after mfpc wrote it" in err
    assert "Traceback" not in err
    assert snapshot(P) == before  # no analysis.nc, report.md


def test_an_unedited_result_is_accepted_as_read_back(tmp_path, capsys):
    """The digest is of the values as read back (NaN padding of particle >= n included)."""
    from particles.engine.results import data_digest

    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    with xr.open_dataset(P / "particles.nc", engine="h5netcdf") as ds:
        ds = ds.load()
    assert np.isnan(ds["y"].values).any()  # n = 8 padded to 16
    assert data_digest(ds) == ds.attrs["data_sha256"]
    assert main(["report", str(P), "--no-figures"]) == 0


#: a target the network already represents (f = 0) with c symmetric around 0: the loss
#: stays at round-off (1e-35) all run
REPRESENTED = """
[problem]
kind = "circle"
kappa = 2.0
quadrature = 64
[problem.target]
cos = [0.0]
sin = [0.0]
[init]
c = { law = "uniform", low = -1.5, high = 1.5 }
[dynamics]
scheme = "gd"
integrator = "rk4"
dt = 0.05
t_end = 10.0
save_times = [0.0, 5.0, 10.0]
[fluctuations]
method = "influence"
y = 16
c = 4
"""


def test_no_divergence_at_round_off_of_a_represented_target(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(REPRESENTED)
    assert main(["run", str(path), "--out", str(tmp_path / "P"), "--no-progress"]) == 0, \
        capsys.readouterr().err
    with xr.open_dataset(tmp_path / "P" / "fluctuations.nc", engine="h5netcdf") as ds:
        assert int(ds.attrs["complete"]) == 1


def test_the_divergence_rule_still_sees_a_rise(tmp_path):
    """The floor 1e-10 * 0.5 E[c^2 |phi|^2] is far below a real rise of the loss: a GD run
    with dt beyond the stability bound still stops."""
    from particles import Dynamics, NumericalFailure, simulate
    from particles.presets import circle_problem

    pr = circle_problem(2.0, 64, cos=[0.0, 1.0])
    with pytest.raises(NumericalFailure, match="rose to"):
        simulate(pr, [16], 1, Dynamics("gd", "euler", 40.0), [0.0, 400.0])


def test_loss_increase_on_one_save_time_is_nan_without_warnings():
    from analysis.checks.losses import loss_monotonicity

    one = xr.Dataset({"loss": (("n", "seed", "t"), np.ones((2, 3, 1)))},
                     coords={"n": [8, 16], "t": [0.0]})
    zero = xr.Dataset({"loss": (("n", "seed", "t"), np.zeros((2, 3, 2)))},
                      coords={"n": [8, 16], "t": [0.0, 1.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for ds in (one, zero):
            assert np.isnan(loss_monotonicity(ds)["loss_max_increase"].values).all()
    up = xr.Dataset({"loss": (("n", "seed", "t"), np.array([[[1.0, 0.5, 0.75]]]))},
                    coords={"n": [8], "t": [0.0, 1.0, 2.0]})
    np.testing.assert_allclose(loss_monotonicity(up)["loss_max_increase"].values, [0.25])


def test_t_end_0_runs_and_reports(tmp_path, capsys):
    cfg = config("particles")
    cfg["dynamics"].update(t_end=0.0, save_times=[0.0])
    P = tmp_path / "P"
    assert run(tmp_path, cfg, P) == 0
    assert main(["report", str(P), "--no-figures"]) == 0
    assert "Traceback" not in capsys.readouterr().err


CFL = """
[problem]
kind = "circle"
kappa = 2.0
quadrature = 64
[problem.target]
cos = [0.0, 0.0, 0.5]
sin = [0.0, 1.0, 0.0, -0.3]
[init]
c = { law = "uniform", low = -1.5, high = 1.5 }
[dynamics]
scheme = "gd"
dt = 0.05
t_end = 1.0
save_times = [0.0, 1.0]
[particles]
n = [4]
seeds = 1
[meanfield]
solvers = ["grid"]
grid = { y = 64, c = 32, dt = 0.09 }
"""


def test_a_cfl_bound_reached_mid_run_is_a_numerical_failure(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(CFL)
    P = tmp_path / "P"
    assert main(["run", str(path), "--out", str(P), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "exceeds the CFL (positivity) bound" in err and "Traceback" not in err
    assert "complete before the failure" in err and (P / "particles.nc").is_file()
    assert not (P / "meanfield.nc").exists() and not (P / "tasks").exists()


def test_many_realisations_are_refused_by_name():
    cfg = tomllib.loads((ROOT / "examples" / "sigmoid_teacher.toml").read_text())
    for s in ("meanfield", "fluctuations"):
        cfg.pop(s, None)
    cfg["particles"]["realisations"] = 10**9
    with pytest.raises(ConfigError, match=r"lower particles.realisations \(= 1000000000\)"):
        resolve(cfg)


@pytest.mark.parametrize("workers, used", [(12, 2), (2, 2), (1, 1)])
def test_workers_are_capped_at_the_tasks(tmp_path, capsys, caplog, monkeypatch, workers,
                                         used):
    seen = []

    def executor(w, dask_local, scheduler):
        seen.append(w)
        return SerialExecutor()

    monkeypatch.setattr(experiment, "make_executor", executor)
    cfg = copy.deepcopy(config("particles"))
    cfg["particles"].update(n=[8], seeds=2, seeds_per_task=1)  # 2 tasks
    path = write_toml(tmp_path / "c.toml", cfg)
    assert main(["run", str(path), "--out", str(tmp_path / "P"), "--no-progress",
                 "--workers", str(workers)]) == 0
    assert seen == [used]
    said = f"--workers {workers}: the sweep has 2 task(s), so 2 process(es) run them"
    assert (said in caplog.text) == (workers > 2)
