r"""The tasks of a sweep: what one is, its stable id, running it, writing its result.

A sweep (:mod:`analysis.sweep.driver`) cuts the runnable sections of a resolved config into tasks:

* ``[particles]``: one task per particle count ``n`` (index ``i_n``) and block of at most
  ``particles.seeds_per_task`` seeds (default :func:`default_seeds_per_task`). Member
  ``(i_n, i_seed)`` draws everything from its own generator
  ``SeedSequence(root_seed, spawn_key=(i_n, i_seed))`` (:mod:`particles.simulate`), so a
  block run alone gives bitwise the numbers of the whole ensemble;
* ``[meanfield]``: one task (every solver of the section);
* ``[fluctuations]``: one task.

A task is plain data (a dict: ``id``, ``section``, ``i_n``, ``n``, ``seeds``). Its ``id``
is stable: 16 hex digits of the SHA-256 of the canonical JSON of the config's identity
(:func:`analysis.store.runfolder.identity`: the keys that change no number left out, the
resolved problem and the hashes of its files in) and of the task's indices
(:func:`task_id`): a task of a changed file is another task. A finished task's Dataset is written atomically to
``DIR/tasks/<id>.npz`` (temporary name, then rename: :func:`save_result`); the partial
Dataset of a task stopped by a :class:`~particles.NumericalFailure` goes to
``DIR/tasks/<id>.failed.npz``. These files are numpy ``.npz`` archives (the arrays, and
the dims and attrs as JSON; read without pickle), not netCDF: a netCDF file costs ~0.1 s
to write and as much to read through h5netcdf, more than the budget of a small task.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import xarray as xr

from particles import NumericalFailure
from particles.engine.checkpoint import Checkpoint

from analysis.store.io import atomic_path
from analysis.sweep.realisations import realisation_problem
from analysis.store.runfolder import identity

__all__ = ["plan_tasks", "task_id", "task_label", "default_seeds_per_task",
           "sub_experiment", "execute", "done_path", "failed_path", "save_result",
           "load_result", "result_damage", "SECTION_ORDER"]

log = logging.getLogger(__name__)

#: the runnable sections, in the order a serial run computes (and a sweep writes) them
SECTION_ORDER = ("particles", "meanfield", "fluctuations")


def default_seeds_per_task(seeds: int, cores: int | None = None) -> int:
    """The default block of seeds of one particle task: the seeds of one n spread over
    the machine's cores, ``ceil(seeds / cores)`` (one task per n on one core).

    Parameters
    ----------
    seeds : int
        Members per n.
    cores : int, optional
        Default: the cores this process may use.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(1, math.ceil(int(seeds) / max(1, int(cores))))


def task_id(config, task: dict) -> str:
    """16 hex digits of the SHA-256 of the config's identity and the task's indices.

    Parameters
    ----------
    config : dict or str
        The resolved config (or its JSON).
    task : dict
        ``section``, ``i_n``, ``n``, ``seeds`` (the ``id`` itself is ignored).
    """
    key = {"config": identity(config),
           "task": {k: task.get(k) for k in ("section", "i_n", "n", "seeds")}}
    if task.get("realisation") is not None:  # only with realisations: the ids stay
        key["task"]["realisation"] = int(task["realisation"])
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _ranges(ids) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    ids, out = sorted(int(i) for i in ids), []
    for i in ids:
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)


def task_label(task: dict) -> str:
    """What a task computes, for messages: ``"particles n=256 seeds 8-15"``."""
    if task["section"] != "particles":
        return f"[{task['section']}]"
    r = task.get("realisation")
    return (f"particles {'' if r is None else f'realisation {r} '}n={task['n']} "
            f"seeds {_ranges(task['seeds'])}")


def plan_tasks(config: dict, sections) -> list:
    """The tasks of ``sections`` (runnable sections of the resolved ``config``), in order.

    Returns
    -------
    list of dict
        Each with ``id`` (:func:`task_id`), ``section``, ``i_n``, ``n``, ``seeds`` (and
        ``realisation`` when ``particles.realisations > 1``: one task per realisation ×
        n × block of seeds).
    """
    tasks = []
    for section in SECTION_ORDER:
        if section not in sections:
            continue
        if section != "particles":
            tasks.append({"section": section, "i_n": None, "n": None, "seeds": None})
            continue
        p = config["particles"]
        seeds = int(p["seeds"])
        block = int(p.get("seeds_per_task") or default_seeds_per_task(seeds))
        R = int(p.get("realisations", 1))
        for r in range(R):
            for i_n, n in enumerate(p["n"]):
                for s0 in range(0, seeds, block):
                    t = {"section": section, "i_n": i_n, "n": int(n),
                         "seeds": list(range(s0, min(s0 + block, seeds)))}
                    if R > 1:
                        t["realisation"] = r
                    tasks.append(t)
    for t in tasks:
        t["id"] = task_id(config, t)
    return tasks


def sub_experiment(exp, task: dict):
    """The experiment of one task: for a particle task only its n and seeds (and their
    rows of an ``init.file``), with ``n_index`` keeping the members' generators."""
    if task["section"] != "particles":
        return exp
    parts = {**exp.particles, "n": [task["n"]], "seeds": list(task["seeds"]),
             "n_index": [task["i_n"]]}
    init = exp.init
    if init is not None:
        init = tuple(a[list(task["seeds"])] for a in init)
    if task.get("realisation") is not None:  # its target (analysis.sweep.realisations)
        r = int(task["realisation"])
        return dataclasses.replace(exp, particles={**parts, "realisation": r}, init=init,
                                   problem=realisation_problem(exp, r))
    return dataclasses.replace(exp, particles=parts, init=init)


def done_path(tasks_dir, tid: str) -> Path:
    """``DIR/tasks/<id>.npz``: the result of a finished task."""
    return Path(tasks_dir) / f"{tid}.npz"


def failed_path(tasks_dir, tid: str) -> Path:
    """``DIR/tasks/<id>.failed.npz``: the partial result of a numerically failed task."""
    return Path(tasks_dir) / f"{tid}.failed.npz"


def _to_json(v):
    """An attribute value as JSON, numpy scalars and arrays with their dtype."""
    if isinstance(v, np.generic):
        return {"__numpy__": v.dtype.str, "value": v.item()}
    if isinstance(v, np.ndarray):
        return {"__numpy__": v.dtype.str, "value": v.tolist(), "array": True}
    if isinstance(v, (list, tuple)):
        return [_to_json(x) for x in v]
    return v


def _from_json(v):
    if isinstance(v, dict) and "__numpy__" in v:
        a = np.asarray(v["value"], dtype=np.dtype(v["__numpy__"]))
        return a if v.get("array") else a[()]
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return v


def save_result(ds: xr.Dataset, path) -> Path:
    """Write ``ds`` atomically to ``path`` (``.npz``: every variable's values, and its dims,
    attrs and whether it is a coordinate in a JSON entry ``__meta__``)."""
    meta = {"attrs": {k: _to_json(v) for k, v in ds.attrs.items()}, "vars": {}}
    arrays = {}
    for i, (name, var) in enumerate(ds.variables.items()):
        meta["vars"][f"v{i}"] = {"name": name, "dims": list(var.dims), "coord": name in ds.coords,
                                 "attrs": {k: _to_json(v) for k, v in var.attrs.items()}}
        arrays[f"v{i}"] = var.values
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, __meta__=np.asarray(json.dumps(meta)), **arrays)
    return Path(path)


def load_result(path) -> xr.Dataset:
    """Read what :func:`save_result` wrote (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        data, coords = {}, {}
        for key, v in meta["vars"].items():
            attrs = {k: _from_json(x) for k, x in v["attrs"].items()}
            (coords if v["coord"] else data)[v["name"]] = (tuple(v["dims"]), z[key], attrs)
    return xr.Dataset(data, coords=coords,
                      attrs={k: _from_json(x) for k, x in meta["attrs"].items()})


def result_damage(path):
    """Why the task result ``path`` cannot be used (truncated, empty, not an archive of
    :func:`save_result`, a folder), or None when :func:`load_result` reads it whole (every
    array is read: a zip member's checksum is checked as it is read)."""
    path = Path(path)
    if not path.is_file():
        return "not a file"
    try:
        ds = load_result(path)
        ds.close()
    except Exception as e:  # noqa: BLE001 - whatever the damage: set aside, recompute
        return f"{type(e).__name__}: {e}"
    return None


def _checkpoint(tasks_dir, tid, every):
    """Keyword arguments that make a runner checkpoint every ``every`` seconds
    (``DIR/tasks/<id>.ckpt.npz``, keyed by the task id: :mod:`particles.engine.checkpoint`)."""
    if every is None:
        return {}
    return {"checkpoint": Checkpoint(Path(tasks_dir) / f"{tid}.ckpt.npz", every, key=tid)}


def execute(exp, task: dict, runner, tasks_dir, *, progress=False,
            checkpoint_every=None) -> dict:
    """Run one task and write its result atomically under ``tasks_dir``.

    Parameters
    ----------
    exp : analysis.run.experiment.Experiment
        The whole resolved experiment (:func:`sub_experiment` takes the task's part).
    task : dict
        From :func:`plan_tasks`.
    runner : callable ``(exp, progress=...) -> xarray.Dataset``
        The section's runner (``analysis.run.experiment.RUNNERS[section]``).
    tasks_dir : path
        ``DIR/tasks``.
    progress : bool or None
        The runner's own progress bar (off in worker processes).
    checkpoint_every : float, optional
        Seconds between checkpoints of the task (``--checkpoint-every``; 0: every step),
        written to ``DIR/tasks/<id>.ckpt.npz``.

    Returns
    -------
    dict
        ``id``, ``status`` ("done", "failure": a NumericalFailure, its partial Dataset, if
        any, in :func:`failed_path`; "bound": a ValueError of the runner, a bound found
        during the run), ``message``, ``seconds``. Any other exception propagates (the
        sweep retries the task).
    """
    t0, tid = time.perf_counter(), task["id"]
    sub = sub_experiment(exp, task)
    kwargs = _checkpoint(tasks_dir, tid, checkpoint_every)
    out = {"id": tid, "status": "done", "message": "", "partial": False}
    try:
        ds = runner(sub, progress=progress, **kwargs)
    except NumericalFailure as e:
        partial = getattr(e, "partial", None)
        if isinstance(partial, xr.Dataset):
            save_result(partial, failed_path(tasks_dir, tid))
        out.update(status="failure", message=str(e), partial=isinstance(partial, xr.Dataset))
    except ValueError as e:  # a bound found during the run (e.g. a later CFL bound)
        out.update(status="bound", message=str(e))
    else:
        save_result(ds, done_path(tasks_dir, tid))
    out["seconds"] = time.perf_counter() - t0
    return out
