"""Checkpoints inside a run (particles.engine.checkpoint): a run interrupted after a checkpoint
and rerun with it gives bitwise the Dataset of a run that never stopped; a checkpoint of
another key or a damaged one is not used (a CheckpointWarning, the run starts over)."""
import logging

import numpy as np
import pytest
import xarray as xr

from particles import Dynamics, simulate
from particles.engine.checkpoint import Checkpoint, CheckpointWarning
from particles.presets import circle_problem

DYNAMICS = {
    "gd-euler": Dynamics("gd", "euler", 0.05),
    "gd-rk4": Dynamics("gd", "rk4", 0.05),
    "sgd": Dynamics("sgd", "euler", 0.05, batch=4),
    "langevin": Dynamics("langevin", "euler", 0.05, temperature=0.05),
}
#: 0 -> 0.3: 6 steps, 0.3 -> 1.0: 14 steps per n (dt = 0.05); two n
SAVE_TIMES = [0.0, 0.3, 1.0]
NS, SEEDS = [4, 8], 2


class Killed(Exception):
    """Stands for the process being killed."""


class Clock:
    """A clock that ticks one second per call and kills the run at call ``kill_at``."""

    def __init__(self, kill_at=None):
        self.calls, self.kill_at = 0, kill_at

    def __call__(self):
        self.calls += 1
        if self.kill_at is not None and self.calls >= self.kill_at:
            raise Killed
        return float(self.calls)


@pytest.fixture(scope="module")
def circle():
    return circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0])


def run(circle, dyn, checkpoint=None, save_state=True):
    return simulate(circle, NS, SEEDS, dyn, SAVE_TIMES, root_seed=3, save_state=save_state,
                    progress=False, checkpoint=checkpoint)


def assert_same(a, b):
    """Bitwise equal values, coords and attrs (the history line carries the time)."""
    for ds in (a, b):
        ds.attrs.pop("history", None)
    xr.testing.assert_identical(a, b)


@pytest.fixture(scope="module")
def reference(circle):
    return {k: run(circle, d) for k, d in DYNAMICS.items()}


def full_calls(circle, dyn, tmp_path):
    """Clock calls of a checkpointed run that never stops (the work of a whole run)."""
    clock = Clock()
    run(circle, dyn, Checkpoint(tmp_path / "full.npz", 1e9, key="full", clock=clock))
    return clock.calls


def held_stage(path):
    """The stage of the checkpoint file (read directly)."""
    import json

    with np.load(path) as f:
        return json.loads(str(f["meta"]))["stage"]


#: clock calls at which the runs below are killed: inside the first n, inside the second
KILL_AT = {9: "n_index=0", 45: "n_index=1"}


@pytest.mark.parametrize("which", sorted(DYNAMICS))
@pytest.mark.parametrize("kill_at", sorted(KILL_AT))
def test_restart_from_checkpoint_is_bitwise(circle, reference, which, kill_at, tmp_path,
                                            caplog):
    dyn = DYNAMICS[which]
    path = tmp_path / "task.npz"
    first = Checkpoint(path, 2.0, key="task-1", clock=Clock(kill_at))
    with pytest.raises(Killed):
        run(circle, dyn, first)
    assert first.writes > 0 and held_stage(path) == KILL_AT[kill_at]
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="particles.engine.checkpoint"):
        resumed = run(circle, dyn, Checkpoint(path, 1e9, key="task-1", clock=clock))
    assert "resuming from checkpoint" in caplog.text
    # the rerun did only what was left: fewer steps (clock calls, one per step and save
    # time when no checkpoint is written) than a whole run
    assert clock.calls < full_calls(circle, dyn, tmp_path)
    assert not path.exists(), "a completed run removes its checkpoint"
    assert_same(resumed, reference[which])


def test_every_step_checkpoint_mid_interval(circle, reference, tmp_path):
    # every = 0: a checkpoint after every step, so the kill lands mid-interval
    path = tmp_path / "task.npz"
    ck = Checkpoint(path, 0, key="k", clock=Clock(12))
    with pytest.raises(Killed):
        run(circle, DYNAMICS["langevin"], ck)
    assert ck.writes >= 5
    assert_same(run(circle, DYNAMICS["langevin"], Checkpoint(path, 0, key="k")),
                reference["langevin"])


def interrupted(circle, path, key="task-1", kill_at=20):
    with pytest.raises(Killed):
        run(circle, DYNAMICS["sgd"], Checkpoint(path, 2.0, key=key, clock=Clock(kill_at)))
    assert path.exists()


def test_checkpoint_of_another_key_is_not_used(circle, reference, tmp_path):
    path = tmp_path / "task.npz"
    interrupted(circle, path, key="task-1")
    clock = Clock()
    with pytest.warns(CheckpointWarning, match=r"ignored: it belongs to key='task-1'.*"
                                               r"not key='task-2'"):
        ds = run(circle, DYNAMICS["sgd"], Checkpoint(path, 1e9, key="task-2", clock=clock))
    assert clock.calls == full_calls(circle, DYNAMICS["sgd"], tmp_path)  # all redone
    assert_same(ds, reference["sgd"])


@pytest.mark.parametrize("kill_at", sorted(KILL_AT))
def test_checkpoint_with_other_outputs_is_not_used(circle, tmp_path, kill_at):
    # the same key but the run now saves no units: the tracked arrays differ (and the
    # first n is not skipped for a checkpoint of the second that cannot be used)
    path = tmp_path / "task.npz"
    interrupted(circle, path, kill_at=kill_at)
    assert held_stage(path) == KILL_AT[kill_at]
    with pytest.warns(CheckpointWarning, match=r"tracked outputs differ"):
        ds = run(circle, DYNAMICS["sgd"], Checkpoint(path, 1e9, key="task-1"),
                 save_state=False)
    assert_same(ds, run(circle, DYNAMICS["sgd"], save_state=False))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_checkpoint_is_discarded(circle, reference, tmp_path, damage):
    # the choice: a damaged file is discarded with a warning and the run starts over
    # (its numbers are those of an uninterrupted run either way); never used
    path = tmp_path / "task.npz"
    interrupted(circle, path)
    raw = path.read_bytes()
    path.write_bytes({"garbage": b"not a checkpoint at all",
                      "truncated": raw[: len(raw) // 2], "empty": b""}[damage])
    clock = Clock()
    with pytest.warns(CheckpointWarning, match=r"discarded: it cannot be read"):
        ds = run(circle, DYNAMICS["sgd"], Checkpoint(path, 1e9, key="task-1", clock=clock))
    assert clock.calls == full_calls(circle, DYNAMICS["sgd"], tmp_path)
    assert_same(ds, reference["sgd"])
    assert not path.exists()


def test_write_is_atomic_and_bad_input_is_clear(tmp_path):
    with pytest.raises(ValueError, match=r"every=-1.0 must be >= 0"):
        Checkpoint(tmp_path / "a.npz", -1)
    ck = Checkpoint(tmp_path / "a.npz", 0, key="k")
    with pytest.raises(TypeError, match=r"track\(x=\.\.\.\): a float cannot"):
        ck.track(x=1.0)
    out = np.zeros(3)
    ck.track(out=out)
    out[:] = [1, 2, 3]
    ck.save({"t": 0.5, "y": np.ones(2), "rng": [{"a": 2**100}]}, j=1, t0=0.25)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]  # no temporary left behind
    out[:] = 0
    held = ck.load()
    np.testing.assert_array_equal(out, [1, 2, 3])
    assert (held["j"], held["t0"]) == (1, 0.25)
    assert held["snapshot"]["rng"] == [{"a": 2**100}]  # 128-bit generator states survive


KILLED_RUN = """
import sys
from particles import Dynamics, simulate
from particles.engine.checkpoint import Checkpoint
from particles.presets import circle_problem
circle = circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0])
simulate(circle, [4, 6], 2, Dynamics("sgd", "euler", 0.01, batch=4),
         [float(t) for t in range(11)], root_seed=9, progress=False,
         checkpoint=Checkpoint(sys.argv[1], 0, key="killed"))
"""


def test_restart_after_sigkill_is_bitwise(circle, tmp_path):
    # a real process killed with SIGKILL while it writes a checkpoint after every step
    # (2 x 1000 steps): the file it leaves is whole (atomic writes) and resumes bitwise
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    path = tmp_path / "task.npz"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(path)], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        end = time.monotonic() + 120  # a deadline against a hang, not a timing
        while not path.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)  # let it go on writing, so that the kill falls anywhere
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert path.exists()
    dyn = Dynamics("sgd", "euler", 0.01, batch=4)
    args = (circle, [4, 6], 2, dyn, [float(t) for t in range(11)])
    resumed = simulate(*args, root_seed=9, progress=False,
                       checkpoint=Checkpoint(path, 1e9, key="killed"))
    assert not list(tmp_path.iterdir()), "no checkpoint or temporary file is left"
    assert_same(resumed, simulate(*args, root_seed=9, progress=False))
