"""The Dask executor (analysis.sweep.daskexec): a LocalCluster and a separately started
``dask scheduler`` + ``dask worker`` give exactly the serial results; an unreachable
scheduler, a scheduler without workers and a missing Dask are clear ConfigErrors."""
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.sweep.daskexec import INSTALL, dask_executor
from particles import Dynamics, simulate
from particles.engine.config import ConfigError
from particles.presets import circle_problem

ROOT = Path(__file__).resolve().parents[2]


def work(i):
    """A picklable top-level task: a few numbers from its own seeded generator."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(11, spawn_key=(i,))))
    return i, rng.standard_normal(4).tolist(), os.getpid()


def blas_threads():
    """The worker's BLAS threads and its step threads (particles.engine.parallel)."""
    from particles.engine.parallel import get_threads

    return (os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS"),
            get_threads())


def flaky(path):
    """Fails the first time it runs (leaves a mark), succeeds after."""
    p = Path(path)
    if not p.exists():
        p.write_text("ran")
        raise RuntimeError("first attempt fails")
    return "second attempt"


def run_all(ex, inputs):
    futures = [ex.submit(work, i) for i in inputs]
    got = {}
    for f in ex.as_completed(futures):
        i, values, _ = f.result()
        got[i] = values
    return got


def tiny_simulation():
    problem = circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0])
    fn = functools.partial(simulate, root_seed=4, n_index=[2], progress=False)
    # one member (n = 8, seed index 1) of SGD: its batches come from its own generator
    return fn, (problem, [8], [1], Dynamics("sgd", "euler", 0.05, batch=4), [0.0, 0.2, 0.5])


def assert_same_dataset(a, b):
    a.attrs.pop("history"), b.attrs.pop("history")
    xr.testing.assert_identical(a, b)


def test_without_dask_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` fails
    for kw, option in (({"dask_local": 2}, "--dask-local"),
                       ({"scheduler": "tcp://127.0.0.1:8786"}, "--scheduler")):
        with pytest.raises(ConfigError, match=rf"^{option} needs Dask, the optional extra "
                                              r"'dask'.*" + INSTALL.replace(".", r"\.")
                                              .replace("[", r"\[")):
            dask_executor(**kw)


def test_bad_options_are_clear():
    with pytest.raises(ConfigError, match=r"give one of --dask-local N .* --scheduler"):
        dask_executor()
    with pytest.raises(ConfigError, match=r"give one of"):
        dask_executor(dask_local=2, scheduler="tcp://127.0.0.1:8786")
    pytest.importorskip("distributed")
    with pytest.raises(ConfigError, match=r"--dask-local 0: give at least 1 worker"):
        dask_executor(dask_local=0)


def test_local_cluster_gives_the_serial_results(tmp_path):
    pytest.importorskip("distributed")
    inputs = list(range(10))
    serial = {i: work(i)[1] for i in inputs}
    fn, args = tiny_simulation()
    alone = fn(*args)
    with dask_executor(dask_local=2) as ex:
        assert ex.workers == 2
        cluster = ex.cluster
        assert run_all(ex, inputs) == serial
        pids = {ex.submit(work, i).result()[2] for i in range(6)}
        assert os.getpid() not in pids  # the tasks ran in the worker processes
        assert ex.submit(blas_threads).result() == ("1", "1", 1)  # N workers use N cores
        # the package's own entry point, on a worker: bitwise the call in this process
        assert_same_dataset(ex.submit(fn, *args).result(), alone)
        # a task that raises: its error comes back; submitted again it runs again
        # (pure=False: Dask does not hand back the failed result it keeps)
        mark = tmp_path / "mark"
        with pytest.raises(RuntimeError, match="first attempt fails"):
            ex.submit(flaky, str(mark)).result()
        assert ex.submit(flaky, str(mark)).result() == "second attempt"
    assert cluster.status.name == "closed"  # the cluster it started is closed with it


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_is_a_clear_error():
    pytest.importorskip("distributed")
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConfigError, match=rf"^--scheduler {address}: no Dask scheduler "
                                          r"could be reached there within 2 s"):
        dask_executor(scheduler=address, timeout=2)


def start(args, log):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc):
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(what, ready, proc, log_path, seconds=60):
    """Poll ``ready()`` until true (the processes' start-up is not timed; this is a
    deadline against a hang, with the process log in the message)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ready():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"{what} did not start: {Path(log_path).read_text()[-2000:]}")


def test_separately_started_scheduler_and_worker(tmp_path):
    pytest.importorskip("distributed")
    import json

    sched_file = tmp_path / "scheduler.json"
    scheduler = worker = None
    try:
        with open(tmp_path / "scheduler.log", "w") as slog:
            scheduler = start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", "0", "--no-dashboard", "--scheduler-file",
                               str(sched_file)], slog)
        wait_for("dask scheduler", sched_file.exists, scheduler, tmp_path / "scheduler.log")
        address = json.loads(sched_file.read_text())["address"]
        # no worker yet: a clear error that says how to start one
        with pytest.raises(ConfigError, match=rf"--scheduler {address}: the scheduler has "
                                              rf"no worker.*dask worker {address} --nthreads 1"):
            dask_executor(scheduler=address, timeout=1)
        with open(tmp_path / "worker.log", "w") as wlog:
            worker = start(["distributed.cli.dask_worker", address, "--nthreads", "1",
                            "--no-dashboard"], wlog)
        inputs = list(range(6))
        fn, args = tiny_simulation()
        with dask_executor(scheduler=address, timeout=60) as ex:
            assert ex.workers == 1 and ex.cluster is None
            assert run_all(ex, inputs) == {i: work(i)[1] for i in inputs}
            assert {ex.submit(work, 0).result()[2]} != {os.getpid()}
            assert_same_dataset(ex.submit(fn, *args).result(), fn(*args))
        # closing the executor leaves the external scheduler and its worker running
        assert scheduler.poll() is None and worker.poll() is None
        with dask_executor(scheduler=address, timeout=30) as ex:
            assert ex.submit(work, 3).result()[1] == work(3)[1]
    finally:
        stop(worker)
        stop(scheduler)
