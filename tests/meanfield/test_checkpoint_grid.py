"""Checkpoints inside the mean-field solvers: the grid (adaptive and fixed steps, with
diffusion), the characteristics and the tangent-linear ensemble, interrupted after a
checkpoint and rerun with it, give bitwise the Dataset of a run that never stopped."""
import logging

import pytest
import xarray as xr

from meanfield.characteristics import solve_characteristics
from meanfield.grid.solve import solve_grid
from meanfield.linearised import clt_covariance_ensemble
from particles.engine.checkpoint import Checkpoint, CheckpointWarning
from particles.laws import CLaw
from particles.presets import circle_problem
from tests.particles.test_checkpoint import Clock, Killed, assert_same

SAVE_TIMES = [0.0, 0.2, 0.5]
GRID = {"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5}
SOLVERS = {
    "grid-adaptive": lambda p, **kw: solve_grid(p, SAVE_TIMES, grid={**GRID, "cfl": 0.9},
                                                progress=False, **kw),
    "grid-fixed-dt": lambda p, **kw: solve_grid(p, SAVE_TIMES, grid={**GRID, "dt": 0.02},
                                                progress=False, **kw),
    "grid-diffusion": lambda p, **kw: solve_grid(p, SAVE_TIMES, grid=GRID, temperature=0.01,
                                                 progress=False, **kw),
    "characteristics": lambda p, **kw: solve_characteristics(p, SAVE_TIMES,
                                                             grid={"y": 16, "c": 4},
                                                             save_nodes=True, **kw),
    "ensemble": lambda p, **kw: clt_covariance_ensemble(p, [0.0, 0.1, 0.2], members=3,
                                                        chunk=2, root_seed=5, grid=GRID,
                                                        progress=False, **kw),
}


@pytest.fixture(scope="module")
def circle():
    return circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


def steps_of(circle, which, tmp_path):
    """Clock calls of a whole run without writes (one per step and save time)."""
    clock = Clock()
    SOLVERS[which](circle, checkpoint=Checkpoint(tmp_path / "w.npz", 1e9, clock=clock))
    return clock.calls


@pytest.mark.parametrize("which", sorted(SOLVERS))
def test_grid_restart_from_checkpoint_is_bitwise(circle, which, tmp_path, caplog):
    whole = SOLVERS[which](circle)
    calls = steps_of(circle, which, tmp_path)
    path = tmp_path / "task.npz"
    # killed about two thirds of the way, after checkpoints every 2 clock ticks
    first = Checkpoint(path, 2.0, key="mf", clock=Clock(kill_at=2 * calls // 3))
    with pytest.raises(Killed):
        SOLVERS[which](circle, checkpoint=first)
    assert first.writes > 0 and path.exists()
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="particles.engine.checkpoint"):
        resumed = SOLVERS[which](circle, checkpoint=Checkpoint(path, 1e9, key="mf",
                                                                clock=clock))
    assert "resuming from checkpoint" in caplog.text
    assert clock.calls < calls  # only what was left was run
    assert not path.exists()
    assert_same(resumed, whole)


def test_grid_checkpoint_of_another_key_is_not_used(circle, tmp_path):
    whole = SOLVERS["grid-adaptive"](circle)
    path = tmp_path / "task.npz"
    with pytest.raises(Killed):
        SOLVERS["grid-adaptive"](circle, checkpoint=Checkpoint(path, 0, key="a",
                                                               clock=Clock(kill_at=8)))
    with pytest.warns(CheckpointWarning, match=r"belongs to key='a'"):
        ds = SOLVERS["grid-adaptive"](circle, checkpoint=Checkpoint(path, 1e9, key="b"))
    assert_same(ds, whole)


def test_grid_checkpoint_keeps_step_statistics(circle, tmp_path):
    # the attrs built from every step (n_steps, dt_min, ...) survive a restart
    whole = SOLVERS["grid-adaptive"](circle)
    path = tmp_path / "task.npz"
    with pytest.raises(Killed):
        SOLVERS["grid-adaptive"](circle, checkpoint=Checkpoint(path, 0, clock=Clock(9)))
    ds = SOLVERS["grid-adaptive"](circle, checkpoint=Checkpoint(path, 0))
    assert ds.attrs["n_steps"] == whole.attrs["n_steps"] > 8
    xr.testing.assert_identical(ds.drop_attrs(), whole.drop_attrs())


def small_experiment():
    import tomllib
    from pathlib import Path

    from analysis.run.experiment import resolve

    root = Path(__file__).resolve().parents[2]
    cfg = tomllib.loads((root / "examples" / "circle.toml").read_text())
    cfg["dynamics"].update(t_end=0.5, save_times=SAVE_TIMES, dt=0.05)
    cfg["particles"] = {"n": [8], "seeds": 2, "root_seed": 1}
    cfg["meanfield"]["grid"] = {"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5}
    cfg["meanfield"]["characteristics"] = {"y": 16, "c": 4}
    cfg["fluctuations"] = {"method": "ensemble", "members": 3}
    return resolve(cfg)


@pytest.mark.parametrize("section", ["particles", "meanfield", "fluctuations"])
def test_experiment_runners_pass_the_checkpoint_on(section, tmp_path, caplog):
    from analysis.run.experiment import RUNNERS

    exp, runner = small_experiment(), RUNNERS[section]
    whole = runner(exp, progress=False)
    path = tmp_path / "task.npz"
    first = Checkpoint(path, 0, key=section, clock=Clock(kill_at=6))
    with pytest.raises(Killed):
        runner(exp, progress=False, checkpoint=first)
    assert list(tmp_path.iterdir()), "a checkpoint was written"  # meanfield: task.grid.npz
    with caplog.at_level(logging.INFO, logger="particles.engine.checkpoint"):
        again = runner(exp, progress=False, checkpoint=Checkpoint(path, 0, key=section))
    assert "resuming from checkpoint" in caplog.text
    assert not list(tmp_path.iterdir()), "completed runs remove their checkpoints"
    assert_same(again, whole)
