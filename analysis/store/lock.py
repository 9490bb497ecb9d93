"""One ``mfpc run`` per output folder at a time: a lock file a dead process cannot leave stuck.

``DIR/.mfpc.lock`` is created with ``O_CREAT | O_EXCL`` (atomic on every local file system)
and holds the owner's pid, host and start time as JSON. A second run finds it and is refused
while the owner lives; a lock whose owner is gone (same host, no such pid) is stale and is
taken over. The lock is removed when the owner leaves the ``with`` block, whatever happens.
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
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "what": self.what}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # being written right now, or garbage: look again
                    time.sleep(0.05)
                    owner = self._owner()
                if owner and (owner.get("host") != me["host"] or _alive(int(owner["pid"]))):
                    since = time.strftime("%Y-%m-%d %H:%M:%S",
                                          time.localtime(float(owner.get("started", 0))))
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
            if owner is None or owner.get("pid") == os.getpid():
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
