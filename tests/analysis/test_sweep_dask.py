"""Sweeps on Dask: a LocalCluster sweep and a sweep joined to a separately
started scheduler with one worker process equal the serial sweep exactly."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

pytest.importorskip("analysis.sweep.daskexec")
pytest.importorskip("distributed")

from analysis.cli import main  # noqa: E402
from analysis.sweep.executors import make_executor  # noqa: E402
from analysis.run.experiment import resolve, run_experiment  # noqa: E402

from .test_cli import write_toml  # noqa: E402
from .test_sweep import assert_same_run, sweep_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("particles", "meanfield", "fluctuations")


def load(path):
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serial")
    cfgp = write_toml(tmp / "c.toml", sweep_config())
    assert main(["run", str(cfgp), "--out", str(tmp / "out"), "--no-progress"]) == 0
    return {s: load(tmp / "out" / f"{s}.nc") for s in SECTIONS}


def test_local_cluster_equals_serial(tmp_path, serial):
    cfg = sweep_config()
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    exp = resolve(cfg, base=tmp_path)
    with make_executor(dask_local=2) as ex:
        status = run_experiment(exp, tmp_path / "out", executor=ex, progress=False,
                                source={"config": cfg, "base": str(tmp_path)})
    assert {s: v[1] for s, v in status.items()} == dict.fromkeys(SECTIONS, "written")
    for s, ref in serial.items():
        assert_same_run(load(tmp_path / "out" / f"{s}.nc"), ref)
    assert cfgp.exists()


def _wait_for(path, proc, what):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 60, f"the {what} did not start within 60 s"
        time.sleep(0.1)


@pytest.mark.slow  # two more interpreters with Dask: ~10 s on an idle machine
def test_joined_scheduler_with_one_worker_equals_serial(tmp_path, serial):
    """A real ``dask scheduler`` and one ``dask worker`` process, started and stopped here."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sfile = tmp_path / "scheduler.json"
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file",
             str(sfile), "--port", "0", "--no-dashboard"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(sfile, procs[0], "scheduler")
        address = json.loads(sfile.read_text())["address"]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
             "--nworkers", "1", "--no-dashboard"], cwd=ROOT, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cfgp = write_toml(tmp_path / "c.toml", sweep_config())
        out = tmp_path / "out"
        assert main(["run", str(cfgp), "--out", str(out), "--no-progress", "--scheduler",
                     address]) == 0
        for s, ref in serial.items():
            assert_same_run(load(out / f"{s}.nc"), ref)
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
