r"""Checkpoints inside a long run: what :func:`particles.engine.loop.run` needs to go on bitwise.

Every ``every`` seconds of wall time (checked after a step; ``every = 0``: after every
step) the driver writes one file, atomically (a temporary name in the same folder, then
:func:`os.replace`, so a run killed at any moment, ``kill -9`` included, leaves either the
previous checkpoint or the new one, never half of one):

* the stepper's ``capture(state)`` (``docs/engine.md``: the state and every member's
  random generator state);
* where the run is: the index ``j`` of the next save time, the start ``t0`` of the save
  interval the state is in (fixed-step steppers take their steps from the interval, so
  a state restored mid-interval must see the same one) and the steps taken;
* everything already observed: the caller's output arrays, registered with
  :meth:`Checkpoint.track` (arrays are saved and refilled in place on resume; lists and
  dicts of JSON numbers, e.g. step statistics, likewise);
* an identity: the caller's ``key`` (a task id, a hash of the resolved config) and a
  ``stage`` (which run of a multi-run solver, e.g. ``"n_index=2"``).

On start :func:`particles.engine.loop.run` asks :meth:`Checkpoint.load` for the snapshot of its
key and stage. A file of another key or stage, or with other tracked arrays, is *ignored*
with a :class:`CheckpointWarning` naming both keys (it is overwritten at the next write);
a damaged file (unreadable, truncated, not a checkpoint) is likewise *discarded* with a
warning that says why: the run then starts from the beginning, so the numbers are those
of an uninterrupted run either way. A checkpoint is never used unless its key, stage and
tracked arrays all match. After the run completes the driver removes the file.

File format: one ``.npz`` (no pickles) holding ``state/<name>`` (captured arrays and
numbers), ``tracked/<name>`` (tracked arrays) and ``meta``, a JSON string with
``format``, ``key``, ``stage``, ``j``, ``t0``, ``steps``, the generator states ``rng``
and the tracked lists and dicts.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["Checkpoint", "CheckpointWarning", "FORMAT"]

log = logging.getLogger(__name__)

#: The format tag written into every checkpoint; another tag is a foreign file.
FORMAT = "mfpc-checkpoint-1"


class CheckpointWarning(UserWarning):
    """A checkpoint file was found but not used (another key or stage, damaged)."""


class Checkpoint:
    r"""Where and how often a run saves what it needs to continue.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file (conventionally ``.npz``); its folder must exist.
    every : float
        Seconds of wall time between two writes (``0``: after every step).
    key : str
        The identity of the work (task id, config hash): a file of another key is not used.
    clock : callable () -> float, optional
        Seconds (default :func:`time.monotonic`); injectable for tests.

    Attributes
    ----------
    stage : str
        Which run of the caller the checkpoint belongs to (set by a solver that makes
        several runs, e.g. one per n); part of the identity.
    writes : int
        How many checkpoints this object wrote.
    """

    def __init__(self, path, every: float, *, key: str = "", clock=None):
        every = float(every)
        if not every >= 0:
            raise ValueError(f"checkpoint every={every} must be >= 0 seconds "
                             "(0 writes after every step)")
        self.path = Path(path)
        self.every = every
        self.key = str(key)
        self.stage = ""
        self.writes = 0
        self._clock = clock or time.monotonic
        self._last = self._clock()
        self._arrays: dict[str, np.ndarray] = {}
        self._other: dict[str, list | dict] = {}

    def __repr__(self):
        return (f"Checkpoint({str(self.path)!r}, every={self.every}, key={self.key!r}, "
                f"stage={self.stage!r})")

    def part(self, name: str) -> "Checkpoint":
        """A checkpoint of its own for one of several solvers a task runs in turn: the file
        ``<stem>.<name><suffix>`` beside this one, the key ``<key>/<name>``, the same
        ``every`` and clock."""
        ck = Checkpoint(self.path.with_name(f"{self.path.stem}.{name}{self.path.suffix}"),
                        self.every, key=f"{self.key}/{name}", clock=self._clock)
        ck._last = self._last
        return ck

    # -- what the caller registers ---------------------------------------------------------
    def track(self, **values) -> "Checkpoint":
        """Register the caller's outputs by name: saved with every checkpoint, refilled in
        place on resume. ndarrays, lists and dicts (of JSON numbers, strings, lists)."""
        for name, v in values.items():
            if isinstance(v, np.ndarray):
                self._arrays[name] = v
            elif isinstance(v, (list, dict)):
                self._other[name] = v
            else:
                raise TypeError(f"Checkpoint.track({name}=...): a {type(v).__name__} cannot "
                                "be refilled in place; pass an ndarray, list or dict")
        return self

    # -- the driver's side -----------------------------------------------------------------
    def due(self) -> bool:
        """True when ``every`` seconds have passed since the last write (or the start)."""
        return self.every == 0 or self._clock() - self._last >= self.every

    def save(self, snapshot: dict, *, j: int, t0: float, steps: int = 0) -> None:
        """Write ``snapshot`` (a stepper's ``capture``), the position and the tracked
        values, atomically."""
        meta = {"format": FORMAT, "key": self.key, "stage": self.stage, "j": int(j),
                "t0": float(t0), "steps": int(steps), "rng": snapshot.get("rng"),
                "other": self._other, "tracked": sorted(self._arrays)}
        arrays = {f"state/{k}": np.asarray(v) for k, v in snapshot.items() if k != "rng"}
        arrays.update({f"tracked/{k}": v for k, v in self._arrays.items()})
        arrays["meta"] = np.array(json.dumps(meta))
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.writes += 1
        self._last = self._clock()

    def load(self):
        """The held position and snapshot of this key and stage, with the tracked values
        refilled, or ``None`` (no file; another key, stage or layout; damaged: warned).

        Returns
        -------
        None or dict
            ``{"j", "t0", "steps", "snapshot"}``.
        """
        got = self._read()
        if got is None:
            return None
        meta, arrays = got
        held = f"key={meta['key']!r}, stage={meta['stage']!r}"
        if meta["key"] != self.key:
            self._ignore(f"it belongs to {held}, not key={self.key!r}, stage={self.stage!r}")
            return None
        why = self._layout_mismatch(meta, arrays)
        if why:
            self._ignore(f"its tracked outputs differ from this run's ({why})")
            return None
        if meta["stage"] != self.stage:
            self._ignore(f"it belongs to {held}, not key={self.key!r}, stage={self.stage!r}")
            return None
        for name, v in self._arrays.items():
            v[...] = arrays[f"tracked/{name}"]
        for name, v in self._other.items():
            saved = meta["other"][name]
            if isinstance(v, list):
                v[:] = saved
            else:
                v.clear()
                v.update(saved)
        snap = {k[len("state/"):]: arrays[k] for k in arrays if k.startswith("state/")}
        if meta.get("rng") is not None:
            snap["rng"] = meta["rng"]
        log.info("resuming from checkpoint %s (key %r, stage %r, save index %d, t=%s)",
                 self.path, self.key, self.stage, meta["j"], snap.get("t"))
        return {"j": int(meta["j"]), "t0": float(meta["t0"]), "steps": int(meta["steps"]),
                "snapshot": snap}

    def held_stage(self):
        """The stage of the file if it is a checkpoint :meth:`load` would use at that
        stage (readable, of this key, with these tracked outputs), else None; a solver of
        several runs uses it to skip the runs already finished."""
        got = self._read(quiet=True)
        if got is None or got[0]["key"] != self.key or self._layout_mismatch(*got):
            return None
        return got[0]["stage"]

    def remove(self) -> None:
        """Delete the file (the run it belongs to is complete) and the temporary files
        that writers killed mid-write left beside it."""
        for p in [self.path, *self.path.parent.glob(f".{self.path.name}.*.tmp")]:
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    # -- internals -------------------------------------------------------------------------
    def _read(self, quiet=False):
        if not self.path.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            meta = json.loads(str(arrays.pop("meta")))
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
            for k in ("key", "stage", "j", "t0", "steps", "other", "tracked"):
                meta[k]  # noqa: B018 - a missing entry is a damaged file
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
            if not quiet:
                self._ignore(f"it cannot be read as a checkpoint ({type(e).__name__}: {e})",
                             damaged=True)
            return None
        return meta, arrays

    def _layout_mismatch(self, meta, arrays):
        if sorted(meta["tracked"]) != sorted(self._arrays):
            return f"arrays {sorted(meta['tracked'])} vs {sorted(self._arrays)}"
        if sorted(meta["other"]) != sorted(self._other):
            return f"values {sorted(meta['other'])} vs {sorted(self._other)}"
        for name, v in self._arrays.items():
            a = arrays[f"tracked/{name}"]
            if a.shape != v.shape or a.dtype != v.dtype:
                return f"{name}: {a.dtype}{list(a.shape)} vs {v.dtype}{list(v.shape)}"
        for name, v in self._other.items():
            if type(meta["other"][name]) is not type(v):
                return f"{name}: {type(meta['other'][name]).__name__} vs {type(v).__name__}"
        return None

    def _ignore(self, why, damaged=False):
        what = "discarded" if damaged else "ignored"
        message = (f"checkpoint {self.path} {what}: {why}; the run starts from the beginning "
                   "and the file is overwritten at the next checkpoint")
        log.warning(message)
        warnings.warn(message, CheckpointWarning, stacklevel=4)
