"""A sweep killed with SIGKILL (its whole process group: the main process and its worker
processes) resumes: the rerun runs only the tasks that had not finished, and its merged
files equal those of an uninterrupted serial run."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import xarray as xr

from analysis.run import experiment
from analysis.cli import main
from analysis.store.runfolder import TASKS_DIR

from .test_cli import small_config, write_toml

ROOT = Path(__file__).resolve().parents[2]
DONE = re.compile(r"^[0-9a-f]{16}\.npz$")  # a finished task's result (analysis.sweep.tasks)


def kill_config():
    """8 particle tasks (n = 8, 16; 4 seeds; one seed a task) of ~0.3 s each (100 RK4
    steps), and a small [meanfield]: long enough to be killed mid-way."""
    cfg = small_config()
    cfg["particles"] = {"n": [8, 16], "seeds": 4, "root_seed": 3, "seeds_per_task": 1}
    cfg["dynamics"].update(t_end=2.0, save_times=[0.0, 1.0, 2.0], dt=0.02)
    cfg["meanfield"] = {"solvers": ["characteristics"], "characteristics": {"y": 16, "c": 4}}
    return cfg


def finished(out):
    d = out / TASKS_DIR
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in d.iterdir()
            if DONE.match(p.name)} if d.is_dir() else {}


def load(path):
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = ds.load()
    ds.attrs.pop("history")
    return ds


def test_killed_sweep_resumes_without_redoing_finished_tasks(tmp_path, monkeypatch):
    cfgp = write_toml(tmp_path / "c.toml", kill_config())
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "analysis.cli", "run", str(cfgp), "--out",
                          str(out), "--no-progress", "--workers", "2"], cwd=ROOT, env=env,
                         start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while len(finished(out)) < 2:
            assert p.poll() is None, p.communicate()
            assert time.time() - t0 < 120, "no task finished within 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # the main process and its workers
        p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    before = finished(out)
    assert 2 <= len(before) < 9, "killed mid-way: some tasks finished, not all"
    assert not (out / "particles.nc").exists() and not (out / "meanfield.nc").exists()

    # the rerun (serial, in this process) runs only the other tasks; the finished task
    # files are the very files of the killed run (same inode and mtime) until the merge
    ran, real = [], experiment.run_task

    def task(spec, t, tasks_dir, options, attempt=0):
        assert {n: v for n, v in finished(out).items() if n in before} == before
        ran.append(f"{t['id']}.npz")
        return real(spec, t, tasks_dir, options, attempt)

    monkeypatch.setattr(experiment, "run_task", task)
    assert main(["run", str(cfgp), "--out", str(out), "--no-progress"]) == 0
    assert not set(ran) & set(before)
    assert len(ran) + len(before) == 9  # 8 particle tasks and [meanfield]
    assert not (out / TASKS_DIR).exists()
    monkeypatch.undo()

    # the merged files equal an uninterrupted serial run's
    ref = tmp_path / "ref"
    assert main(["run", str(cfgp), "--out", str(ref), "--no-progress"]) == 0
    for name in ("particles.nc", "meanfield.nc"):
        xr.testing.assert_identical(load(out / name), load(ref / name))


def test_killed_task_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """--checkpoint-every 0: a task killed mid-run leaves DIR/tasks/<id>.ckpt.npz; the rerun
    restores it (the checkpoint is loaded, not ignored) and the merged file equals an
    uninterrupted run's bitwise."""
    from particles.engine.checkpoint import Checkpoint

    cfg = kill_config()
    cfg.pop("meanfield")
    cfg["particles"] = {"n": [16], "seeds": 2, "root_seed": 3, "seeds_per_task": 2}
    cfg["dynamics"].update(t_end=8.0, save_times=[0.0, 4.0, 8.0], dt=0.01)  # 800 RK4 steps
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "analysis.cli", "run", str(cfgp), "--out",
                          str(out), "--no-progress", "--checkpoint-every", "0"], cwd=ROOT,
                         env=env, start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    t0 = time.time()

    def ckpts():
        d = out / TASKS_DIR
        return sorted(d.glob("*.ckpt.npz")) if d.is_dir() else []

    try:
        while not ckpts():
            assert p.poll() is None, p.communicate()
            assert time.time() - t0 < 120, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(0.3)  # some steps past the first checkpoint
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL and ckpts() and not finished(out)

    loaded, real = [], Checkpoint.load

    def load_spy(self):
        held = real(self)
        loaded.append(held is not None)
        return held

    monkeypatch.setattr(Checkpoint, "load", load_spy)
    assert main(["run", str(cfgp), "--out", str(out), "--no-progress",
                 "--checkpoint-every", "0"]) == 0
    monkeypatch.undo()
    assert loaded and loaded[0], "the rerun did not restore the killed task's checkpoint"
    assert not (out / TASKS_DIR).exists()
    ref = tmp_path / "ref"
    assert main(["run", str(cfgp), "--out", str(ref), "--no-progress"]) == 0
    xr.testing.assert_identical(load(out / "particles.nc"), load(ref / "particles.nc"))
