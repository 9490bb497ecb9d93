"""Damaged run-folder state and hostile arguments end in clear errors (exit 2, a
ConfigError) or repair themselves; never a traceback, never a file of the user's lost."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from analysis.store import runfolder
from analysis.store.lock import LOCK_NAME
from analysis.sweep import driver
from particles.engine.config import ConfigError

from .test_hostile_runfolder import snapshot
from .test_runs import config, run


def _keep_tasks(monkeypatch):
    """Finished runs keep DIR/tasks (as a run killed before its merge does)."""
    monkeypatch.setattr(driver, "remove_task_files", lambda out: [])


def _values(path):
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds["f_n"].values.copy()


DAMAGES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "random": lambda p: p.write_bytes(np.random.default_rng(1).bytes(2048)),
    "folder": lambda p: (p.unlink(), p.mkdir(), (p / "inside.txt").write_text("x")),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_task_result_is_set_aside_and_computed_again(tmp_path, capsys, caplog,
                                                               monkeypatch, damage):
    P = tmp_path / "P"
    cfg = config("particles")
    cfg["particles"]["seeds_per_task"] = 2
    with monkeypatch.context() as m:
        _keep_tasks(m)
        assert run(tmp_path, cfg, P) == 0
    whole = _values(P / "particles.nc")
    (P / "particles.nc").unlink()  # as if killed before the merge
    results = sorted((P / "tasks").glob("*[0-9a-f].npz"))
    assert len(results) == 4  # 2 n x 2 blocks of seeds
    bad = results[1]
    DAMAGES[damage](bad)
    capsys.readouterr()
    assert run(tmp_path, cfg, P) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert f"{bad}, cannot be read" in caplog.text and "computed again" in caplog.text
    np.testing.assert_array_equal(_values(P / "particles.nc"), whole)  # bit for bit
    aside = bad.with_name(bad.name + ".set-aside")
    assert aside.exists()  # kept for a look, never removed
    assert sorted(p.name for p in (P / "tasks").iterdir()) == [aside.name]


def test_root_seed_beyond_uint64_is_refused_before_work(tmp_path, capsys):
    P = tmp_path / "P"
    cfg = config("particles")
    cfg["particles"]["root_seed"] = 2**64
    assert run(tmp_path, cfg, P) == 2
    err = capsys.readouterr().err
    assert "particles.root_seed: 18446744073709551616 is larger than 18446744073709551615" in err
    assert not P.exists()
    cfg["particles"]["root_seed"] = 2**64 - 1  # the largest the outputs hold
    assert run(tmp_path, cfg, P) == 0
    with xr.open_dataset(P / "particles.nc", engine="h5netcdf") as ds:
        assert int(ds.attrs["root_seed"]) == 2**64 - 1
    assert main(["report", str(P), "--no-figures"]) == 0


@pytest.mark.parametrize("content, why", [
    ("[1, 2]", "a JSON list"), ('{"host": "h"}', "pid None"), ('{"pid": "abc"}', "pid 'abc'"),
    ('{"pid": null}', "pid None"), (json.dumps({"pid": 2**40, "host": "h"}), "pid 1099511627776"),
    ("not json", "not JSON"), ("", "not JSON"), (None, "a folder")],
    ids=["list", "no-pid", "pid-str", "pid-null", "pid-huge", "text", "empty", "folder"])
@pytest.mark.parametrize("command", ["run", "report"])
def test_a_damaged_lock_is_said_with_how_to_clear_it(tmp_path, capsys, content, why, command):
    P = tmp_path / "P"
    if command == "report":
        assert run(tmp_path, config("particles"), P) == 0
    else:
        P.mkdir()
    lock = P / LOCK_NAME
    if content is None:
        lock.mkdir()
    else:
        lock.write_text(content)
    before = snapshot(P)
    capsys.readouterr()
    code = (run(tmp_path, config("particles"), P) if command == "run"
            else main(["report", str(P), "--no-figures"]))
    assert code == 2
    err = capsys.readouterr().err
    assert f"{lock} is not a lock mfpc can read ({why}" in err
    assert f"delete the {'folder' if content is None else 'file'} {lock}" in err
    assert "Traceback" not in err
    assert snapshot(P) == before and lock.exists()


def test_tasks_as_a_file_is_refused(tmp_path, capsys):
    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    (P / "tasks").write_text("my file")
    before = snapshot(P)
    for extra in ((), ("--force",)):
        assert run(tmp_path, config("particles", kappa=3.0), P, "--force",
                   name="b.toml") == 2
        err = capsys.readouterr().err
        assert f"{P / 'tasks'} is a file where mfpc keeps the folder" in err
        assert snapshot(P) == before


@pytest.mark.parametrize("name", ["analysis.nc", "report.md", "figures/loss.png"])
def test_a_folder_where_the_report_writes_a_file(tmp_path, capsys, name):
    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    (P / name).mkdir(parents=True)
    (P / name / "x.txt").write_text("mine")
    before = snapshot(P)
    capsys.readouterr()
    assert main(["report", str(P)]) == 2
    err = capsys.readouterr().err
    assert f"{P / name} is a folder where mfpc writes the file {name}" in err
    assert "Traceback" not in err
    assert snapshot(P) == before  # no analysis.nc, report.md written first
    # the run beside it leaves the folder alone
    assert run(tmp_path, config("particles", kappa=3.0), P, "--force", name="b.toml") == 0
    assert (P / name / "x.txt").read_text() == "mine"


def _read_only(monkeypatch, name):
    """Folders named ``name`` refuse new files (as a read-only folder does; the tests may
    run as root, who writes anywhere)."""
    real = runfolder._create_probe

    def probe(folder):
        if os.path.basename(folder) == name:
            raise PermissionError(13, "Permission denied")
        return real(folder)

    monkeypatch.setattr(runfolder, "_create_probe", probe)


def test_figures_a_file_or_read_only_is_refused_before_work(tmp_path, capsys, monkeypatch):
    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    (P / "figures").write_text("mine")
    capsys.readouterr()
    assert main(["report", str(P)]) == 2
    err = capsys.readouterr().err
    assert f"{P / 'figures'} is a file where mfpc writes the folder figures/" in err
    assert not (P / "analysis.nc").exists() and not (P / "report.md").exists()
    assert (P / "figures").read_text() == "mine"
    (P / "figures").unlink()
    (P / "figures").mkdir()
    _read_only(monkeypatch, "figures")
    assert main(["report", str(P)]) == 2
    err = capsys.readouterr().err
    assert f"folder {P / 'figures'}: no file can be created" in err
    assert not (P / "analysis.nc").exists() and not (P / "report.md").exists()
    assert main(["report", str(P), "--no-figures"]) == 0  # no figures: no need


def test_a_read_only_tasks_folder_is_refused_before_work(tmp_path, capsys, monkeypatch):
    P = tmp_path / "P"
    cfg = config("particles")
    with monkeypatch.context() as m:
        _keep_tasks(m)
        assert run(tmp_path, cfg, P) == 0
    (P / "particles.nc").unlink()
    before = snapshot(P)

    def no_work(*a, **k):
        raise AssertionError("a task ran although the run should have been refused")

    monkeypatch.setattr(driver, "_run_tasks", no_work)
    _read_only(monkeypatch, "tasks")
    capsys.readouterr()
    assert run(tmp_path, cfg, P) == 2
    assert f"folder {P / 'tasks'}: no file can be created" in capsys.readouterr().err
    assert snapshot(P) == before


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, capsys, monkeypatch):
    P = tmp_path / "P"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "_run_tasks", interrupted)
    assert run(tmp_path, config("particles"), P) == 130
    err = capsys.readouterr().err
    assert "mfpc: interrupted" in err and "run the same command again to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (P / LOCK_NAME).exists()


# ------------------------------------------------------------ the Python API's arguments
def _api_cases():
    from particles import Dynamics, simulate
    from particles.presets import circle_problem

    pr = circle_problem(quadrature=16)
    dyn = Dynamics()

    def sim(**kw):
        args = dict(n=[4], seeds=1, dynamics=dyn, save_times=[0.0, 0.1])
        args.update(kw)
        return lambda: simulate(pr, **args)

    return {
        "n=[]": (sim(n=[]), "particles.n: expected a list of integers"),
        "n=[8.5]": (sim(n=[8.5]), "particles.n[0]: expected an integer, got 8.5"),
        "n=[8, 8]": (sim(n=[8, 8]), "particles.n: repeated value(s) [8]"),
        "root_seed=-1": (sim(root_seed=-1), "particles.root_seed: must be >= 0"),
        "root_seed=2**64": (sim(root_seed=2**64), "is larger than 18446744073709551615"),
        "batch=-3": (lambda: Dynamics(scheme="sgd", batch=-3), "dynamics.batch: must be >= 1"),
        "temperature=-1": (lambda: Dynamics(scheme="langevin", temperature=-1),
                           "dynamics.temperature: must be >= 0"),
        "P0=0": (lambda: Dynamics(scheme="sgd", batch={"P0": 0, "alpha": 0.5}),
                 "dynamics.batch.P0: must be > 0"),
        "Problem()": (lambda: __import__("particles.problem", fromlist=["Problem"]).Problem(),
                      "Problem needs"),
        "kappa=-1": (lambda: circle_problem(kappa=-1), "problem.kappa: must be > 0"),
        "quadrature=2": (lambda: circle_problem(quadrature=2),
                         "problem.quadrature: must be >= 4"),
    }


@pytest.mark.parametrize("case", list(_api_cases()))
def test_the_python_api_checks_its_arguments_as_the_config(case):
    call, message = _api_cases()[case]
    with pytest.raises(ConfigError) as e:
        call()
    assert message in str(e.value)


@pytest.mark.slow
def test_a_real_sigint_exits_130_and_resumes(tmp_path):
    """SIGINT to a running ``mfpc run`` (default handler, as a terminal's Ctrl-C): exit
    130, the message, no traceback; the same command then finishes (exit 0)."""
    import signal
    import subprocess
    import sys
    import time

    cfg = config("particles")
    cfg["dynamics"].update(t_end=400.0, save_times=[0.0, 400.0])
    path = tmp_path / "c.toml"
    from .test_cli import write_toml

    write_toml(path, cfg)
    cmd = [sys.executable, "-m", "analysis.cli", "run", str(path), "--out",
           str(tmp_path / "P"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                   signal.SIG_DFL))
    time.sleep(8)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "mfpc: interrupted" in err and "Traceback" not in err
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=600).returncode == 0
