"""The folder lock: a second live process is refused, a dead owner's lock is taken over."""
import json
import multiprocessing as mp
import os
import subprocess
import sys

import pytest

from analysis.store.lock import LOCK_NAME, FolderBusy, FolderLock


def _hold(folder, ready, release):
    with FolderLock(folder):
        ready.set()
        release.wait(30)


def test_second_process_is_refused_while_the_first_holds(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(tmp_path, ready, release))
    p.start()
    try:
        assert ready.wait(30)
        with pytest.raises(FolderBusy, match=rf"in use by mfpc run \(pid {p.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        release.set()
        p.join(30)
    assert not (tmp_path / LOCK_NAME).exists()
    with FolderLock(tmp_path):  # free again
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_dead_owner_leaves_no_stuck_lock(tmp_path):
    # a process that took the lock and died without releasing it (as after kill -9)
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from analysis.store.lock import "
            "FolderLock; FolderLock(sys.argv[1]).acquire(); os._exit(0)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code, str(tmp_path), root], check=True)
    stale = json.loads((tmp_path / LOCK_NAME).read_text())
    assert stale["pid"] != os.getpid()
    with FolderLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_lock_is_released_on_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with FolderLock(tmp_path):
            1 / 0
    assert not (tmp_path / LOCK_NAME).exists()
