"""Runs that cannot lie: run identity, --force, concurrent runs, --out, failed and
incomplete runs, leftover temporaries, reports on damaged, foreign or mixed folders."""
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.run import experiment

from analysis.store import runfolder
from analysis.cli import main
from analysis.store.runfolder import run_id
from analysis.store.lock import LOCK_NAME

from .test_cli import small_config, write_toml

ROOT = Path(__file__).resolve().parents[2]
#: a small [meanfield] / [fluctuations] (characteristics, influence): a second or two
MEANFIELD = {"solvers": ["characteristics"], "characteristics": {"y": 16, "c": 4}}
FLUCTUATIONS = {"method": "influence", "y": 8, "c": 4}
DERIVED = ("analysis.nc", "report.md", "figures")


def config(*sections, **problem):
    """small_config's [particles] (or none) with the given extra sections and problem keys."""
    cfg = small_config()
    cfg["problem"].update(problem)
    if "particles" not in sections:
        del cfg["particles"]
    if "meanfield" in sections:
        cfg["meanfield"] = copy.deepcopy(MEANFIELD)
    if "fluctuations" in sections:
        cfg["fluctuations"] = dict(FLUCTUATIONS)
    return cfg


def run(tmp_path, cfg, out, *extra, name="c.toml"):
    cfgp = write_toml(tmp_path / name, cfg)
    return main(["run", str(cfgp), "--out", str(out), "--no-progress", *extra])


def attrs(path):
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return dict(ds.attrs)


def listing(folder):
    """The names in ``folder`` but mfpc's manifest (its bookkeeping of its own files)."""
    return sorted(p.name for p in Path(folder).iterdir()
                  if p.name != runfolder.MANIFEST_NAME) if Path(folder).exists() else None


@pytest.fixture
def no_work(monkeypatch):
    """Every solver fails the test if it is called: refusals must come before any work."""
    def sentinel(exp, progress=None):
        raise AssertionError("a section ran although the run should have been refused")

    for s in experiment.RUNNERS:
        monkeypatch.setitem(experiment.RUNNERS, s, sentinel)


# ------------------------------------------------------------------- 1. run identity
def test_run_id_is_the_canonical_config():
    cfg = config("particles", kappa=2.0)
    same = json.loads(json.dumps(cfg))
    same["problem"]["kappa"] = 2  # the same number
    same["problem"]["description"] = "a note"  # changes no number
    other = config("particles", kappa=3.0)
    assert run_id(cfg) == run_id(same) == run_id(json.dumps(cfg))
    assert run_id(cfg) != run_id(other)
    assert len(run_id(cfg)) == 16


def test_every_file_carries_the_run_id(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tmp_path, config("particles", "meanfield"), out) == 0
    a, b = attrs(out / "particles.nc"), attrs(out / "meanfield.nc")
    assert a["run_id"] == b["run_id"] == run_id(a["config"])
    assert main(["report", str(out), "--no-figures"]) == 0
    assert attrs(out / "analysis.nc")["run_id"] == a["run_id"]
    assert f"run_id: `{a['run_id']}`" in (out / "report.md").read_text()


@pytest.mark.parametrize("mf_change", [{"problem": {"kappa": 3.0}},
                                       {"dynamics": {"t_end": 1.0, "save_times": [0.0, 1.0]}}],
                         ids=["kappa", "save_times"])
def test_report_refuses_files_of_different_runs(tmp_path, capsys, mf_change):
    """particles with kappa = 2 beside mean field with kappa = 3 (a report of them would
    pass rows comparing two problems), or with other save times: exit 2 naming both files."""
    out, other = tmp_path / "out", tmp_path / "other"
    assert run(tmp_path, config("particles", kappa=2.0), out) == 0
    cfg = config("meanfield", kappa=2.0)
    for section, change in mf_change.items():
        cfg[section].update(change)
    # mfpc run itself no longer mixes them: the folder holds another run's particles.nc
    assert run(tmp_path, cfg, out, name="mf.toml") == 2
    err = capsys.readouterr().err
    assert f"{out / 'particles.nc'} is from another run" in err and "--force" in err
    assert listing(out) == ["particles.nc"]
    # files mixed by hand (or by an older mfpc): the report refuses them
    assert run(tmp_path, cfg, other, name="mf.toml") == 0
    shutil.copy(other / "meanfield.nc", out / "meanfield.nc")
    capsys.readouterr()
    assert main(["report", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "holds files of different runs" in err
    assert "particles.nc (run_id" in err and "meanfield.nc (run_id" in err
    assert "Traceback" not in err
    assert listing(out) == ["meanfield.nc", "particles.nc"]  # nothing written


# ----------------------------------------------------------- 2. --force removes stale files
def test_force_removes_sections_the_config_no_longer_has(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tmp_path, config("particles", "fluctuations"), out) == 0
    assert main(["report", str(out)]) == 0
    assert {"fluctuations.nc", "analysis.nc", "report.md", "figures"} <= set(listing(out))
    (out / "figures" / "mine.txt").write_text("a user's file")  # not mfpc's: stays
    capsys.readouterr()
    # without --force: refused, naming the file and --force
    assert run(tmp_path, config("fluctuations"), out, name="b.toml") == 2
    err = capsys.readouterr().err
    assert f"{out / 'particles.nc'} is from another run" in err
    assert "has no [particles]" in err and "--force" in err
    new = config("particles")
    assert run(tmp_path, new, out, "--force", name="b.toml") == 0
    assert listing(out) == ["figures", "particles.nc"]
    assert listing(out / "figures") == ["mine.txt"]
    assert json.loads(attrs(out / "particles.nc")["config"]).get("fluctuations") is None
    assert main(["report", str(out), "--no-figures"]) == 0  # one run again
    assert "fluctuations.nc is missing" in (out / "report.md").read_text()


def test_new_data_removes_old_derived_outputs(tmp_path):
    """A section computed anew makes analysis.nc and report.md stale: they go."""
    out = tmp_path / "out"
    assert run(tmp_path, config("particles"), out) == 0
    assert main(["report", str(out), "--no-figures"]) == 0
    (out / "particles.nc").unlink()
    assert run(tmp_path, config("particles"), out) == 0
    assert listing(out) == ["particles.nc"]
    # nothing new: the report of this very run stays
    assert main(["report", str(out), "--no-figures"]) == 0
    assert run(tmp_path, config("particles"), out) == 0
    assert listing(out) == ["analysis.nc", "particles.nc", "report.md"]


def test_force_leaves_no_file_of_the_old_run_when_the_new_one_fails(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tmp_path, config("particles", "meanfield"), out) == 0
    assert run(tmp_path, failing(), out, "--force", name="b.toml") == 3
    # the old meanfield.nc went before any work; the new particles.nc is the partial
    assert listing(out) == ["particles.nc"]
    assert attrs(out / "particles.nc")["complete"] == 0
    capsys.readouterr()
    assert main(["report", str(out), "--no-figures"]) == 0  # one run, said incomplete
    assert "INCOMPLETE RUN" in capsys.readouterr().err


# ---------------------------------------------------------------- 3. concurrent runs
#: a real `mfpc run` process whose [particles] waits for the file RELEASE (at most 60 s)
#: and that leaves a temporary as a write in progress would
CHILD = """
import sys, tempfile, time
from pathlib import Path
from analysis.run import experiment
from analysis.cli import main
cfg, out, release = sys.argv[1:4]
orig = experiment.RUNNERS["particles"]
def slow(exp, progress=None):
    tempfile.mkstemp(prefix=".particles.nc.", suffix=".tmp", dir=out)
    Path(out, "started").write_text("")
    t0 = time.time()
    while not Path(release).exists() and time.time() - t0 < 60:
        time.sleep(0.05)
    return orig(exp, progress=progress)
experiment.RUNNERS["particles"] = slow
sys.exit(main(["run", cfg, "--out", out, "--no-progress"]))
"""


def start_child(tmp_path, out, cfg):
    cfgp = write_toml(tmp_path / "first.toml", cfg)
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(cfgp), str(out),
                          str(tmp_path / "release")], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (out / "started").exists():
        assert p.poll() is None, p.communicate()
        assert time.time() - t0 < 60, "the first run never started"
        time.sleep(0.05)
    return p


def test_second_run_is_refused_while_the_first_holds_the_folder(tmp_path):
    out = tmp_path / "out"
    first = start_child(tmp_path, out, config("particles"))
    try:
        cfgp = write_toml(tmp_path / "second.toml", config("particles", kappa=3.0))
        second = subprocess.run([sys.executable, "-m", "analysis.cli", "run", str(cfgp),
                                 "--out", str(out), "--no-progress"], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"in use by mfpc run (pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        # the refused run touched nothing, not even the first one's temporary
        names = listing(out)
        assert LOCK_NAME in names and "particles.nc" not in names
        assert sum(n.startswith(".particles.nc.") for n in names) == 1
    finally:
        (tmp_path / "release").write_text("")
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    # the folder holds the first run only
    assert json.loads(attrs(out / "particles.nc")["config"])["problem"].get("kappa") != 3.0
    assert LOCK_NAME not in listing(out)


def test_a_killed_run_leaves_neither_lock_nor_temporaries(tmp_path, capsys):
    """kill -9 during a write: the next run takes the folder over and removes only the
    temporaries of mfpc's pattern."""
    out = tmp_path / "out"
    first = start_child(tmp_path, out, config("particles"))
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=60)
    names = listing(out)
    assert LOCK_NAME in names and any(runfolder.TMP_PATTERN.match(n) for n in names)
    keep = [".particles.nc.keep", "notes.tmp", ".other.nc.abcdefgh.tmp"]
    for n in keep:
        (out / n).write_text("not mfpc's temporary")
    (out / "figures").mkdir()
    (out / "figures" / ".loss.png.abc_1234.tmp").write_text("")
    assert run(tmp_path, config("particles"), out) == 0
    # the temporaries of mfpc's files are gone; figures/.loss.png.abc_1234.tmp is not a
    # temporary of a file mfpc wrote here (no loss.png on the manifest): it stays
    assert listing(out) == sorted(keep + ["figures", "particles.nc", "started"])
    assert listing(out / "figures") == [".loss.png.abc_1234.tmp"]


def test_leftovers_are_removed_only_under_the_lock(tmp_path):
    leftover = tmp_path / ".particles.nc.abcd1234.tmp"
    leftover.write_text("")
    with pytest.raises(RuntimeError, match="lock"):
        runfolder.remove_leftovers(tmp_path, runfolder.FolderLock(tmp_path))
    assert leftover.exists()
    with runfolder.holding(tmp_path):  # particles.nc is not on a manifest: not mfpc's
        assert leftover.exists()
    runfolder.claim(tmp_path, ["particles.nc"])
    with runfolder.holding(tmp_path):
        assert not leftover.exists()


def _hold(folder, ready, release):
    from analysis.store.lock import FolderLock

    with FolderLock(folder):
        ready.set()
        release.wait(60)


def test_report_is_refused_while_a_run_holds_the_folder(tmp_path, capsys, good_particles):
    import multiprocessing as mp

    shutil.copy(good_particles, tmp_path / "particles.nc")
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(tmp_path, ready, release))
    p.start()
    try:
        assert ready.wait(60)
        assert main(["report", str(tmp_path), "--no-figures"]) == 2
        assert f"{tmp_path} is in use by mfpc run (pid {p.pid}" in capsys.readouterr().err
        assert listing(tmp_path) == [LOCK_NAME, "particles.nc"]
    finally:
        release.set()
        p.join(60)


# ---------------------------------------------------------------------- 4. --out
def test_out_under_a_file_is_refused_before_work(tmp_path, capsys, no_work):
    f = tmp_path / "file.txt"
    f.write_text("")
    for out in (f / "sub", f):
        assert run(tmp_path, config("particles"), out) == 2
        err = capsys.readouterr().err
        assert f"--out {out}: {f} is a file, not a folder" in err
    assert listing(tmp_path) == ["c.toml", "file.txt"]


def test_out_in_a_read_only_folder_is_refused_before_work(tmp_path, capsys, monkeypatch,
                                                         no_work):
    def read_only(folder):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runfolder, "_create_probe", read_only)
    out = tmp_path / "ro" / "out"
    assert run(tmp_path, config("particles"), out) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: no file can be created in this folder" in err
    assert "Permission denied" in err
    assert listing(tmp_path) == ["c.toml"]  # the folders it made for the probe are gone


def test_out_where_no_folder_can_be_created(tmp_path, capsys, no_work):
    out = Path("/proc/mfpc-no-such-folder/out")
    assert run(tmp_path, config("particles"), out) == 2
    assert f"--out {out}: the folder cannot be created" in capsys.readouterr().err
    assert not out.exists()


def test_empty_out_is_refused(tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    assert run(tmp_path, config("particles"), "") == 2
    assert '--out "" names no folder' in capsys.readouterr().err
    assert listing(tmp_path) == ["c.toml"]
    assert main(["report", ""]) == 2
    assert 'report "" names no folder' in capsys.readouterr().err


# ------------------------------------------------------------- 5., 6. failed runs
def failing():
    """Euler with dt = 50 blows up at the first step of n = 16 (test_failure)."""
    cfg = config("particles", "meanfield")
    cfg["dynamics"].update(dt=50.0, t_end=1e5, save_times=[0.0, 100.0, 1e5],
                           integrator="euler")
    return cfg


def test_rerun_after_a_failed_run_stops_unless_force(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tmp_path, failing(), out) == 3
    assert listing(out) == ["particles.nc"]  # the failure stopped before [meanfield]
    before = (out / "particles.nc").stat().st_mtime_ns
    capsys.readouterr()
    assert run(tmp_path, failing(), out) == 2
    err = capsys.readouterr().err
    assert f"{out / 'particles.nc'} is from a failed run of this config (complete = 0" in err
    assert "--force" in err and "Traceback" not in err
    assert listing(out) == ["particles.nc"]
    assert (out / "particles.nc").stat().st_mtime_ns == before
    # the hint works: the changed config with --force runs every section
    fixed = failing()
    fixed["dynamics"].update(dt=0.1, t_end=1.0, save_times=[0.0, 0.5, 1.0])
    assert run(tmp_path, fixed, out, "--force", name="fixed.toml") == 0
    assert listing(out) == ["meanfield.nc", "particles.nc"]
    assert attrs(out / "particles.nc")["complete"] == 1


def test_report_on_an_incomplete_run_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(tmp_path, failing(), out) == 3
    capsys.readouterr()
    assert main(["report", str(out), "--no-figures"]) == 0
    cap = capsys.readouterr()
    assert "mfpc: warning: INCOMPLETE RUN: particles.nc has complete = 0" in cap.err
    head = (out / "report.md").read_text().splitlines()[:4]
    assert any(line.startswith("**INCOMPLETE RUN: particles.nc has complete = 0")
               for line in head)
    a = attrs(out / "analysis.nc")
    assert a["complete"] == 0 and "particles.nc has complete = 0" in a["incomplete"]
    # a complete run says nothing of the kind
    assert run(tmp_path, config("particles"), tmp_path / "ok", name="ok.toml") == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "ok"), "--no-figures"]) == 0
    assert "INCOMPLETE" not in capsys.readouterr().err
    assert attrs(tmp_path / "ok" / "analysis.nc")["complete"] == 1
    assert "INCOMPLETE" not in (tmp_path / "ok" / "report.md").read_text()


# ------------------------------------------------- 8. reports on folders that cannot be read
@pytest.fixture(scope="module")
def good_particles(tmp_path_factory):
    base = tmp_path_factory.mktemp("good")
    assert run(base, config("particles"), base / "out") == 0
    return base / "out" / "particles.nc"


def _truncated(path, good):
    data = good.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random(path, good):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _empty(path, good):
    path.write_bytes(b"")


def _foreign(path, good):
    xr.Dataset({"temperature": ("x", np.arange(3.0))}).to_netcdf(path, engine="h5netcdf")


def _other_section(path, good):
    """An mfpc file of another section under this name (particles.nc as meanfield.nc)."""
    with xr.open_dataset(good, engine="h5netcdf") as ds:
        ds = ds.load()
    other = "meanfield" if path.name == "particles.nc" else "particles"
    ds.assign_attrs(section=other).to_netcdf(path, engine="h5netcdf")


@pytest.mark.parametrize("spoil, message", [
    (_truncated, "cannot be read as netCDF"), (_random, "cannot be read as netCDF"),
    (_empty, "cannot be read as netCDF"), (_foreign, "was not written by `mfpc run`"),
    (_other_section, "was not written by `mfpc run`")],
    ids=["truncated", "random", "empty", "foreign", "other-section"])
@pytest.mark.parametrize("name", ["particles.nc", "meanfield.nc"])
def test_report_on_a_damaged_or_foreign_file(tmp_path, capsys, good_particles, spoil,
                                             message, name):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(good_particles, out / "particles.nc")
    spoil(out / name, good_particles)
    before = listing(out)
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"mfpc: error: {out / name} {message}" in err and "Traceback" not in err
    assert listing(out) == before  # no analysis.nc, report.md, figures, lock or temporary
    # mfpc run into that folder is refused too, --force included: these files are not
    # on a manifest of mfpc's, so mfpc does not remove them
    for force in ((), ("--force",)):
        assert run(tmp_path, config("particles"), out, *force) == 2
        err = capsys.readouterr().err
        assert f"{out} is not empty and is not an mfpc run folder" in err
        assert str(out / name) in err and "Traceback" not in err
        assert listing(out) == before


def test_report_into_a_read_only_folder(tmp_path, capsys, monkeypatch, good_particles):
    def read_only(folder):
        raise PermissionError(13, "Permission denied")

    shutil.copy(good_particles, tmp_path / "particles.nc")
    monkeypatch.setattr(runfolder, "_create_probe", read_only)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"report folder {tmp_path}: no file can be created in this folder" in err
    assert "Traceback" not in err
    assert listing(tmp_path) == ["particles.nc"]
