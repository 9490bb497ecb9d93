"""Python parts in other processes: a worker on this machine imports the file by path and
checks its hash; a remote worker (``--scheduler``) builds the part from the bytes the task
carries, so the file need not exist where it runs.

The remote case is played by worker processes of this machine from which the file has
been removed after the run resolved (what a remote machine without the file sees): the
executor is made only when there is work, after the run is resolved, and the test's
stand-in for it removes the file before starting two worker processes.
"""
import pytest
import xarray as xr

from analysis.run import experiment
from analysis.sweep.driver import TasksFailed
from analysis.sweep.executors import make_executor

from .test_userparts import _write


def _remove_then(path, monkeypatch):
    def executor(workers, dask_local, scheduler):
        path.unlink()  # gone before any worker starts
        return make_executor(workers=2)
    monkeypatch.setattr(experiment, "make_executor", executor)


def test_a_remote_worker_runs_the_shipped_file(tmp_path, monkeypatch):
    cfg = _write(tmp_path / "cfg")
    _remove_then(tmp_path / "cfg" / "k.py", monkeypatch)
    status = experiment.run_config(cfg, tmp_path / "out", progress=False,
                                   scheduler="tcp://remote:8786")
    assert status["particles"][1] == "written"
    with xr.open_dataset(tmp_path / "out" / "particles.nc", engine="h5netcdf") as ds:
        assert ds["f_n"].notnull().all()


@pytest.mark.slow  # a second pool of worker processes: ~7 s on a busy machine
def test_a_local_worker_reads_the_file_and_refuses_it_when_gone(tmp_path, monkeypatch):
    cfg = _write(tmp_path / "cfg")
    _remove_then(tmp_path / "cfg" / "k.py", monkeypatch)
    with pytest.raises(TasksFailed, match="k.py"):
        experiment.run_config(cfg, tmp_path / "out", progress=False, workers=2, retries=0)
