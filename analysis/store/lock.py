"""One ``mfpc run`` per output folder at a time: a lock file a dead process cannot leave stuck.

``DIR/.mfpc.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on every local file system)
and holds the owner's pid, host and start time as JSON. A second run finds it and is refused
while the owner lives; a lock whose owner is gone (same host, no such pid) is stale and is
taken over. A lock that cannot be read (not JSON, no integer pid, no host, a folder) is
refused with how to clear it: whether its owner lives cannot be told. The lock is removed when the owner leaves the ``with`` block, whatever happens.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

__all__ = ["FolderLock", "FolderBusy", "LOCK_NAME"]

LOCK_NAME = ".mfpc.lock"


class FolderBusy(RuntimeError):
    """Another live process holds the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


#: the largest pid a lock may name (Linux's PID_MAX_LIMIT is 2**22; pids are C ints)
MAX_PID = 2**31 - 1


def _valid(owner):
    """``owner`` if it is a lock's JSON (a table with an integer ``pid`` in 1..MAX_PID and
    a string ``host``), else a string that says what is wrong with it."""
    if not isinstance(owner, dict):
        return f"a JSON {type(owner).__name__}, not a table with pid and host"
    pid = owner.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 1 <= pid <= MAX_PID:
        return f"pid {pid!r} is not a process id (an integer in 1..{MAX_PID})"
    if not isinstance(owner.get("host"), str):
        return f"host {owner.get('host')!r} is not a host name"
    try:
        float(owner.get("started", 0))
    except (TypeError, ValueError):
        return f"started {owner.get('started')!r} is not a time"
    return owner


class FolderLock:
    """Context manager holding ``folder/.mfpc.lock`` for this process.

    Raises
    ------
    FolderBusy
        When a live process (or a process on another host, which cannot be checked) holds
        the lock; the message names it and says what to do.
    """

    def __init__(self, folder, *, what: str = "mfpc run"):
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._held = False

    def _owner(self):
        """The owner written in the lock (``pid``, ``host``, ...), None while it cannot
        be read (being written right now), or :data:`DAMAGED` with why."""
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return _valid(owner)

    def _damaged(self, why):
        kind = "folder" if self.path.is_dir() else "file"
        return FolderBusy(
            f"{self.path} is not a lock mfpc can read ({why}), so whether another mfpc "
            f"process uses {self.path.parent} cannot be told; if no mfpc run or report is "
            f"running there, delete the {kind} {self.path} and run again")

    def acquire(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "what": self.what}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.path.is_dir():
                    raise self._damaged("a folder, not a file") from None
                owner = self._owner()
                if owner is None:  # being written right now, or garbage: look again
                    time.sleep(0.05)
                    owner = self._owner()
                if owner is None:
                    raise self._damaged("not JSON")
                if isinstance(owner, str):
                    raise self._damaged(owner)
                if owner.get("host") != me["host"] or _alive(owner["pid"]):
                    try:
                        since = time.strftime("%Y-%m-%d %H:%M:%S",
                                              time.localtime(float(owner.get("started", 0))))
                    except (OverflowError, OSError, ValueError):
                        since = "an unknown time"
                    raise FolderBusy(
                        f"{self.path.parent} is in use by {owner.get('what', 'mfpc')} (pid "
                        f"{owner['pid']} on {owner.get('host')}, since {since}); wait for it "
                        f"to finish or choose another --out (if that process is gone, delete "
                        f"{self.path})")
                try:  # stale: its owner is dead
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._held = True
            return self
        raise FolderBusy(f"could not take {self.path}; delete it if no mfpc run is active")

    def release(self):
        if self._held:
            owner = self._owner()
            if owner is None or isinstance(owner, str) or owner.get("pid") == os.getpid():
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
            self._held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
