"""mfpc removes or overwrites only files it wrote itself (the run folder's manifest).

Every case asserts the exit code, the file named in the message, and that every file of
the user's is still there with its bytes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from analysis.cli import main
from analysis.store import runfolder

from .test_runs import config, run

#: a PNG of the user's (any bytes: only their survival is checked)
PNG = b"\x89PNG\r\n\x1a\n user's figure"


def snapshot(folder, skip=()):
    """``{relative path: bytes}`` of every file under ``folder``."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def kept(before, folder):
    """Every file of ``before`` is in ``folder`` with the same bytes."""
    now = snapshot(folder)
    lost = [k for k, v in before.items() if now.get(k) != v]
    assert not lost, f"files of the user's removed or changed: {lost}"


def user_files(P, nested=True):
    """The issue's reproducer (tasks/todo.txt, report.md, figures/loss.png) and files in
    nested subfolders of figures/ and tasks/."""
    (P / "tasks").mkdir(parents=True, exist_ok=True)
    (P / "figures").mkdir(exist_ok=True)
    (P / "tasks" / "todo.txt").write_text("x\n")
    (P / "report.md").write_text("notes\n")
    (P / "figures" / "loss.png").write_bytes(PNG)
    if nested:
        (P / "figures" / "drafts" / "deep").mkdir(parents=True)
        (P / "figures" / "drafts" / "deep" / "loss.png").write_bytes(PNG + b" deep")
        (P / "tasks" / "sub").mkdir()
        (P / "tasks" / "sub" / "todo.txt").write_text("y\n")
    return snapshot(P)


def test_a_folder_of_the_users_is_refused_and_kept(tmp_path, capsys):
    """`mkdir -p P/tasks P/figures; echo x > P/tasks/todo.txt; echo notes > P/report.md;
    cp a.png P/figures/loss.png; mfpc run base.toml --out P`: exit 2, nothing touched."""
    P = tmp_path / "P"
    before = user_files(P)
    for extra in ((), ("--force",)):
        assert run(tmp_path, config("particles"), P, *extra) == 2
        err = capsys.readouterr().err
        assert f"{P} is not empty and is not an mfpc run folder" in err
        for name in ("figures", "report.md", "tasks"):
            assert str(P / name) in err
        assert "Traceback" not in err
        kept(before, P)
        assert sorted(p.name for p in P.iterdir()) == ["figures", "report.md", "tasks"]


def test_a_single_file_of_the_users_is_named(tmp_path, capsys):
    P = tmp_path / "P"
    P.mkdir()
    (P / "particles.nc").write_bytes(b"mine")
    assert run(tmp_path, config("particles"), P, "--force") == 2
    assert f"{P / 'particles.nc'} would be in the way" in capsys.readouterr().err
    assert (P / "particles.nc").read_bytes() == b"mine"


def test_users_files_in_a_run_folder_survive_force_and_report(tmp_path, capsys):
    """A run folder (mfpc's manifest) with the user's files in figures/, tasks/ and
    subfolders: --force with another config, the sweep and the report leave them."""
    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    (P / "figures" / "drafts").mkdir(parents=True)
    (P / "figures" / "drafts" / "a.png").write_bytes(PNG)
    (P / "figures" / "mine.png").write_bytes(PNG)
    (P / "tasks" / "sub").mkdir(parents=True)
    (P / "tasks" / "todo.txt").write_text("x\n")
    (P / "tasks" / "sub" / "y.txt").write_text("y\n")
    (P / "notes.txt").write_text("notes\n")
    mine = {k: v for k, v in snapshot(P).items()
            if k.startswith(("figures/", "tasks/", "notes"))}
    capsys.readouterr()
    assert main(["report", str(P), "--no-figures"]) == 0
    assert run(tmp_path, config("particles", kappa=3.0), P, "--force", name="b.toml") == 0
    kept(mine, P)
    assert not (P / "analysis.nc").exists()  # mfpc's stale report is gone
    assert main(["report", str(P)]) == 0
    kept(mine, P)
    assert (P / "figures" / "loss.png").is_file()
    # the sweep's own files in tasks/ are gone, the user's stay
    assert sorted(p.name for p in (P / "tasks").iterdir()) == ["sub", "todo.txt"]


def test_a_users_report_in_a_run_folder_is_never_overwritten(tmp_path, capsys):
    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    (P / "report.md").write_text("my notes\n")
    (P / "figures").mkdir()
    (P / "figures" / "loss.png").write_bytes(PNG)
    before = snapshot(P)
    # new data: mfpc's stale derived files would go, but these are not mfpc's
    assert run(tmp_path, config("particles", kappa=3.0), P, "--force", name="b.toml") == 0
    assert (P / "report.md").read_text() == "my notes\n"
    assert (P / "figures" / "loss.png").read_bytes() == PNG
    capsys.readouterr()
    assert main(["report", str(P)]) == 2
    err = capsys.readouterr().err
    assert f"{P / 'report.md'} is in the way" in err and "Traceback" not in err
    assert not (P / "analysis.nc").exists()  # refused before any work
    (P / "report.md").unlink()
    assert main(["report", str(P)]) == 2
    assert f"{P / 'figures' / 'loss.png'} is in the way" in capsys.readouterr().err
    assert (P / "figures" / "loss.png").read_bytes() == PNG
    assert before["particles.nc"] != (P / "particles.nc").read_bytes()  # the rerun wrote


def test_force_does_not_remove_a_run_file_it_did_not_write(tmp_path, capsys):
    """particles.nc copied by hand into a folder the report made a run folder."""
    src, P = tmp_path / "src", tmp_path / "P"
    assert run(tmp_path, config("particles"), src) == 0
    P.mkdir()
    shutil.copy(src / "particles.nc", P / "particles.nc")
    assert main(["report", str(P), "--no-figures"]) == 0
    before = snapshot(P, skip=(runfolder.MANIFEST_NAME,))
    capsys.readouterr()
    assert run(tmp_path, config("particles", kappa=3.0), P, "--force", name="b.toml") == 2
    err = capsys.readouterr().err
    assert f"{P / 'particles.nc'} is not a file mfpc wrote in this folder" in err
    kept(before, P)


@pytest.mark.parametrize("what", ["manifest-damaged", "manifest-folder"])
def test_a_damaged_manifest_is_said_and_nothing_removed(tmp_path, capsys, what):
    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    m = P / runfolder.MANIFEST_NAME
    m.unlink()
    if what == "manifest-folder":
        m.mkdir()
    else:
        m.write_text('{"mfpc": "run folder", "files": [1]}')
    before = snapshot(P)
    assert run(tmp_path, config("particles", kappa=3.0), P, "--force", name="b.toml") == 2
    err = capsys.readouterr().err
    assert f"{m} (the list of the files mfpc wrote in {P}) cannot be read" in err
    assert "Traceback" not in err
    kept(before, P)


def test_leftover_temporaries_of_other_names_stay(tmp_path):
    """Only temporaries of names on the manifest are leftovers."""
    P = tmp_path / "P"
    P.mkdir()
    runfolder.claim(P, ["particles.nc"])
    ours, theirs = P / ".particles.nc.abcd1234.tmp", P / ".mine.nc.abcd1234.tmp"
    ours.write_text("")
    theirs.write_text("")
    with runfolder.holding(P):
        pass
    assert not ours.exists() and theirs.exists()


def test_a_file_of_mfpcs_the_user_changed_becomes_the_users(tmp_path, capsys):
    """Notes added to mfpc's report.md: the file is no longer as mfpc left it (size and
    time stamped on the manifest), so a rerun keeps it and the report refuses it."""
    P = tmp_path / "P"
    assert run(tmp_path, config("particles"), P) == 0
    assert main(["report", str(P), "--no-figures"]) == 0
    with open(P / "report.md", "a") as fh:
        fh.write("\nmy notes on this run\n")
    mine = (P / "report.md").read_bytes()
    assert run(tmp_path, config("particles", kappa=3.0), P, "--force", name="b.toml") == 0
    assert (P / "report.md").read_bytes() == mine
    assert not (P / "analysis.nc").exists()  # unchanged: mfpc's, stale, removed
    capsys.readouterr()
    assert main(["report", str(P), "--no-figures"]) == 2
    assert f"{P / 'report.md'} is in the way" in capsys.readouterr().err
    assert (P / "report.md").read_bytes() == mine
