"""Sweeps: tasks and their ids, process workers equal to serial, retries and
missing members, config changes refused, executor options, the progress bar over tasks."""
import copy
import json

import numpy as np
import pytest
import xarray as xr

from analysis.run import experiment

from analysis.sweep import driver as sweep, tasks
from analysis.sweep.executors import SerialExecutor, make_executor
from analysis.run.experiment import ConfigError, resolve, run_particles
from analysis.store.io import write_dataset
from analysis.store.runfolder import TASKS_DIR, differing_keys

from .test_cli import write_toml
from .test_runs import config, run

def sweep_config(seeds_per_task=1, sections=("meanfield", "fluctuations")):
    """small_config (n = 8, 16; 3 seeds) with test_runs' small [meanfield] and
    [fluctuations]: 6 particle tasks of one seed, and one task each for those."""
    cfg = config("particles", *sections)
    cfg["particles"]["seeds_per_task"] = seeds_per_task
    return cfg


def load(path):
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def assert_same_run(a, b, ignore=()):
    """Identical data, coords and attrs, except the time-stamped ``history`` (and the
    attrs ``ignore``: the config of a run without [meanfield] beside one with it)."""
    a, b = a.copy(), b.copy()
    for ds in (a, b):
        for k in ("history", *ignore):
            ds.attrs.pop(k, None)
    xr.testing.assert_identical(a, b)


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The uninterrupted serial sweep of sweep_config() (the reference)."""
    tmp = tmp_path_factory.mktemp("serial")
    out = tmp / "out"
    assert run(tmp, sweep_config(), out) == 0
    return {s: load(out / f"{s}.nc") for s in ("particles", "meanfield", "fluctuations")}


# ------------------------------------------------------------------------ tasks and ids
def test_plan_cuts_the_ensemble_into_blocks_with_stable_ids():
    cfg = resolve(sweep_config(seeds_per_task=2)).config
    plan = tasks.plan_tasks(cfg, ["particles", "meanfield"])
    assert [(t["section"], t["n"], t["seeds"]) for t in plan] == [
        ("particles", 8, [0, 1]), ("particles", 8, [2]), ("particles", 16, [0, 1]),
        ("particles", 16, [2]), ("meanfield", None, None)]
    ids = [t["id"] for t in plan]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    # keys that change no number keep the ids; a key that changes numbers changes them all
    same = copy.deepcopy(cfg)
    same["problem"]["description"] = "a note"  # (a ready Problem's description)
    assert [t["id"] for t in tasks.plan_tasks(same, ["particles", "meanfield"])] == ids
    other = sweep_config(seeds_per_task=2)
    other["dynamics"]["dt"] = 0.05
    new = [t["id"] for t in tasks.plan_tasks(resolve(other).config, ["particles", "meanfield"])]
    assert not set(new) & set(ids)
    assert tasks.task_label(plan[1]) == "particles n=8 seeds 2"


def test_default_block_spreads_the_seeds_over_the_cores():
    assert tasks.default_seeds_per_task(3, cores=1) == 3  # one task per n
    assert tasks.default_seeds_per_task(3, cores=2) == 2
    assert tasks.default_seeds_per_task(64, cores=8) == 8
    assert tasks.default_seeds_per_task(2, cores=8) == 1


def test_missing_members_names_the_blocks():
    lost = [{"n": 256, "seeds": [8, 9, 10, 11]}, {"n": 256, "seeds": [12, 13, 14, 15]},
            {"n": 16, "seeds": [2]}]
    assert sweep.missing_members(lost) == "n=256 seeds 8-15; n=16 seeds 2"


def test_differing_keys_lists_only_keys_that_change_numbers():
    a = resolve(sweep_config()).config
    b = copy.deepcopy(a)
    b["dynamics"]["dt"] = 0.05
    b["problem"]["kappa"] = 3.0
    b["problem"]["description"] = "changes no number"
    b["particles"]["seeds_per_task"] = 2
    assert differing_keys(a, b) == ["dynamics.dt", "problem.kappa"]
    assert differing_keys(a, json.dumps(a)) == []


def test_task_results_round_trip_exactly(tmp_path):
    """What a task writes (npz, no pickle) reads back identical: values, dtypes, dims,
    coordinates, attrs of the Dataset and of each variable (numpy scalars and arrays)."""
    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"f": (("n", "x"), rng.standard_normal((2, 5)), {"long_name": "f", "units": "1"}),
         "k": ("x", np.arange(5, dtype=np.int32)), "flag": ((), np.bool_(True))},
        coords={"n": ("n", np.array([8, 16], np.int32)), "x": np.linspace(0, 1, 5)},
        attrs={"complete": 1, "cfl": np.float64(0.4), "shape": np.array([3, 4], np.int32),
               "note": "é", "list": [1.5, 2.5]})
    got = tasks.load_result(tasks.save_result(ds, tmp_path / "r.npz"))
    xr.testing.assert_identical(got, ds)
    for name in ds.variables:
        assert got[name].dtype == ds[name].dtype, name
    assert got.attrs["shape"].dtype == np.int32 and type(got.attrs["cfl"]) is np.float64
    assert [p.name for p in tmp_path.iterdir()] == ["r.npz"]  # atomic: no temporary left


# ---------------------------------------------------------------- equal to a serial run
def test_sweep_equals_one_ensemble_run(tmp_path, serial):
    """The blocks merged are the one vectorised ensemble of a single run, value for
    value (seeds_per_task = 1: every member in a task of its own)."""
    exp = resolve(sweep_config())
    whole = experiment._finish(exp, "particles", run_particles(exp, progress=False), None)
    assert_same_run(serial["particles"], load(write_dataset(whole, tmp_path / "whole.nc")))
    assert serial["particles"].attrs["complete"] == 1
    assert "missing_members" not in serial["particles"].attrs


def test_workers_2_equal_serial(tmp_path, serial):
    out = tmp_path / "out"
    assert run(tmp_path, sweep_config(), out, "--workers", "2") == 0
    for s, ref in serial.items():
        assert_same_run(load(out / f"{s}.nc"), ref)
    assert not (out / TASKS_DIR).exists()  # merged: the task results are gone


def test_block_size_changes_no_number(tmp_path, serial):
    out = tmp_path / "out"
    assert run(tmp_path, sweep_config(seeds_per_task=2), out) == 0
    a, b = load(out / "particles.nc"), serial["particles"]
    for v in ("f_n", "loss", "y", "c"):
        np.testing.assert_array_equal(a[v].values, b[v].values)


# ------------------------------------------------------------------------------ retries
def counting(monkeypatch, fail=None, times=None):
    """Patch the sweep's task function: record every call's task id; raise for the task
    whose label is ``fail`` (always, or the first ``times`` calls)."""
    calls, real = [], experiment.run_task

    def task(spec, task, tasks_dir, options, attempt=0):
        calls.append(task["id"])
        if tasks.task_label(task) == fail and (times is None or calls.count(task["id"]) <= times):
            raise RuntimeError(f"injected failure of {fail}")
        return real(spec, task, tasks_dir, options, attempt)

    monkeypatch.setattr(experiment, "run_task", task)
    return calls


def test_a_failing_task_is_retried_then_reported_while_the_rest_merge(tmp_path, capsys,
                                                                     monkeypatch, serial):
    cfg = sweep_config(sections=())
    out = tmp_path / "out"
    calls = counting(monkeypatch, fail="particles n=16 seeds 2")
    assert run(tmp_path, cfg, out, "--retries", "3") == 3
    err = capsys.readouterr().err
    plan = tasks.plan_tasks(resolve(cfg).config, ["particles"])
    bad = next(t["id"] for t in plan if tasks.task_label(t) == "particles n=16 seeds 2")
    assert calls.count(bad) == 4  # the first try and 3 retries
    assert len(calls) == len(plan) + 3  # every other task once
    assert f"task {bad} (particles n=16 seeds 2): RuntimeError: injected failure" in err
    assert "after 3 retries" in err and "Traceback" not in err
    ds = load(out / "particles.nc")
    assert ds.attrs["complete"] == 0 and ds.attrs["missing_members"] == "n=16 seeds 2"
    assert "injected failure" in ds.attrs["failure"]
    ref = serial["particles"]
    for v in ("f_n", "loss", "y", "c"):
        assert np.isnan(ds[v].sel(n=16, seed=2).values).all()
        kept = ds[v].where(~((ds.n == 16) & (ds.seed == 2)))
        np.testing.assert_array_equal(kept.values,
                                      ref[v].where(~((ref.n == 16) & (ref.seed == 2))).values)
    assert not tasks.done_path(out / TASKS_DIR, bad).exists()
    # the same command again runs only the missing task, and the run is complete
    monkeypatch.undo()
    calls2 = counting(monkeypatch)
    assert run(tmp_path, cfg, out) == 0
    assert calls2 == [bad]
    assert_same_run(load(out / "particles.nc"), ref, ignore=("config", "run_id", "data_sha256"))


def test_a_task_that_fails_once_succeeds_on_retry(tmp_path, monkeypatch, serial):
    out = tmp_path / "out"
    calls = counting(monkeypatch, fail="particles n=8 seeds 1", times=1)
    assert run(tmp_path, sweep_config(sections=()), out) == 0
    assert len(calls) == 7  # 6 tasks, one of them twice
    assert_same_run(load(out / "particles.nc"), serial["particles"],
                    ignore=("config", "run_id", "data_sha256"))


def test_no_retries_reports_at_once(tmp_path, capsys, monkeypatch):
    calls = counting(monkeypatch, fail="particles n=8 seeds 0")
    assert run(tmp_path, sweep_config(sections=()), tmp_path / "out", "--retries", "0") == 3
    assert len(calls) == 6
    assert "1 task(s) failed after 0 retries" in capsys.readouterr().err


# --------------------------------------------------------------------- config changes
def test_changed_config_is_refused_naming_the_keys_unless_force(tmp_path, capsys):
    out = tmp_path / "out"
    cfg = sweep_config(sections=())
    assert run(tmp_path, cfg, out) == 0
    other = copy.deepcopy(cfg)
    other["dynamics"]["dt"] = 0.05
    other["problem"]["kappa"] = 3.0
    capsys.readouterr()
    assert run(tmp_path, other, out, name="b.toml") == 2
    err = capsys.readouterr().err
    assert "different config" in err and "keys that differ: dynamics.dt, problem.kappa" in err
    assert run(tmp_path, other, out, "--force", name="b.toml") == 0
    assert json.loads(load(out / "particles.nc").attrs["config"])["dynamics"]["dt"] == 0.05


def test_tasks_of_another_config_are_refused_unless_force(tmp_path, capsys, monkeypatch):
    """An interrupted sweep (tasks/ without particles.nc) and a changed config."""
    out = tmp_path / "out"
    cfg = sweep_config(sections=())
    counting(monkeypatch, fail="particles n=8 seeds 0")
    assert run(tmp_path, cfg, out, "--retries", "0") == 3
    (out / "particles.nc").unlink()
    finished = sorted(p.name for p in (out / TASKS_DIR).iterdir())
    monkeypatch.undo()
    other = copy.deepcopy(cfg)
    other["particles"]["root_seed"] = 7
    other["particles"]["seeds_per_task"] = 3  # changes no number: not listed
    capsys.readouterr()
    assert run(tmp_path, other, out, name="b.toml") == 2
    err = capsys.readouterr().err
    assert "holds the tasks of a sweep of a different config" in err
    assert "keys that differ: particles.root_seed)" in err and "--force" in err
    assert sorted(p.name for p in (out / TASKS_DIR).iterdir()) == finished  # untouched
    assert run(tmp_path, other, out, "--force", name="b.toml") == 0
    assert load(out / "particles.nc").attrs["root_seed"] == 7


# -------------------------------------------------------------------- executor options
@pytest.mark.parametrize("extra, message", [
    (["--workers", "2", "--dask-local", "2"], "--workers and --dask-local exclude each other"),
    (["--workers", "2", "--scheduler", "tcp://h:8786"], "--workers and --scheduler exclude"),
    (["--dask-local", "2", "--scheduler", "tcp://h:8786"], "--dask-local and --scheduler"),
    (["--workers", "0"], "--workers 0: give at least 1 worker"),
    (["--retries", "-1"], "--retries -1: give 0 or more"),
    (["--checkpoint-every", "-1"], "--checkpoint-every -1.0: give a number of seconds >= 0"),
])
def test_bad_executor_options_are_refused_before_work(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert run(tmp_path, sweep_config(sections=()), out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_dask_options_without_dask_name_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # Dask not installed
    assert run(tmp_path, sweep_config(sections=()), tmp_path / "out", "--dask-local", "2") == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[dask]"' in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_make_executor_defaults_to_serial():
    with make_executor() as ex:
        assert isinstance(ex, SerialExecutor) and ex.workers == 1
    with pytest.raises(ConfigError, match="exclude each other"):
        make_executor(workers=2, scheduler="tcp://h:8786")


def test_serial_executor_follows_the_protocol():
    with SerialExecutor() as ex:
        futs = [ex.submit(pow, 2, k) for k in range(4)]
        futs[2].cancel()
        got = [f.result() for f in ex.as_completed(futs) if not f.cancelled()]
    assert got == [1, 2, 8]
    boom = SerialExecutor().submit(int, "x")
    with pytest.raises(ValueError):
        boom.result()


# ------------------------------------------------------------------------------ progress
@pytest.mark.parametrize("workers", [None, 2])
def test_one_bar_over_tasks(tmp_path, capsys, workers):
    cfgp = write_toml(tmp_path / "c.toml", sweep_config(sections=()))
    experiment.run_config(cfgp, tmp_path / "out", progress=True, workers=workers)
    err = capsys.readouterr().err
    assert "mfpc tasks" in err and "6/6" in err


def test_process_workers_use_one_thread_each():
    """N workers use N cores: BLAS and the step threads (MFPC_THREADS) on one thread."""
    from analysis.sweep.executors import ProcessExecutor

    from .test_daskexec import blas_threads

    with ProcessExecutor(1) as ex:
        assert ex.submit(blas_threads).result() == ("1", "1", 1)
