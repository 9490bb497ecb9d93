r"""Sweeps that survive faults: plan the tasks, skip the finished ones, run the rest on an
executor with retries, merge them into the run files.

``mfpc run`` (:func:`analysis.run.experiment.run_experiment`) computes its sections through
:func:`run_sweep`, in this order:

1. :func:`check_tasks` -- ``DIR/tasks/`` of another config is refused (the message lists
   the keys that differ) unless ``--force``, which removes it; before any work;
2. the tasks of the sections to compute (:func:`analysis.sweep.tasks.plan_tasks`); those whose
   result ``DIR/tasks/<id>.npz`` exists are finished and are not run again (a run killed at
   any moment, ``kill -9`` included, resumes there: a result appears under its name only
   when whole, by a rename);
3. the others are submitted to the executor (:mod:`analysis.sweep.executors`); one progress bar
   counts the tasks, wherever they run. A task that raises is submitted again, up to
   ``retries`` times, then reported by id with its error. A task stopped by a
   :class:`~particles.NumericalFailure` (or a bound reached during its run, a numerical
   failure too: it depends on the data the run reached) is not retried:
   the tasks after it (larger n, later sections) are cancelled, as a serial run would
   never have reached them;
4. every section is merged (particles: the blocks of seeds put back in their places of the
   ``(n, seed)`` ensemble) and written atomically to ``DIR/<section>.nc``, value for value
   what one uninterrupted serial run writes. Then mfpc's files in ``DIR/tasks/`` are
   removed (those on the run folder's manifest: :func:`analysis.store.runfolder.claim`),
   and the folder if it is left empty.

A finished result that cannot be read (truncated, empty, not an archive, a folder under its
name) is set aside as ``DIR/tasks/<id>.npz.set-aside`` with a warning, and its task is
computed again.

Failures: a numerical failure writes its section's partial result (``complete = 0``),
no later section, removes ``DIR/tasks/`` and raises :class:`SectionFailure` (exit 3); tasks
that failed after their retries leave the other tasks merged, ``particles.nc`` marked
``complete = 0`` with ``missing_members`` (e.g. ``"n=256 seeds 8-15"``), ``DIR/tasks/``
kept, and raise :class:`TasksFailed` (exit 3): the same ``mfpc run`` again runs only the
missing tasks.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm

from particles import NumericalFailure
from particles.engine.config import ConfigError
from particles.userparts import user_location

from analysis.sweep.executors import SerialExecutor
from analysis.store.io import atomic_path, write_dataset
from analysis.sweep.realisations import stack_realisations
from analysis.store.runfolder import (RUN_FILES, TASKS_DIR, RunFolderError, claim,
                                     differing_keys, remove_task_files, run_id, stamp,
                                     temporary_of)
from analysis.sweep.tasks import (SECTION_ORDER, _ranges, done_path, failed_path, load_result,
                                  plan_tasks, result_damage, task_label)

__all__ = ["run_sweep", "check_tasks", "cap_workers", "merge_particles", "missing_members",
           "SectionFailure", "TasksFailed", "MANIFEST"]

log = logging.getLogger(__name__)

#: ``DIR/tasks/sweep.json``: the run_id and resolved config the task results belong to
MANIFEST = "sweep.json"


class SectionFailure(NumericalFailure):
    """A :class:`~particles.NumericalFailure` in one section of a run.

    ``section`` names it, ``path`` is the file holding its partial Dataset (marked
    ``complete = 0``) or None when the solver kept nothing, ``status`` is what was
    written so far (as :func:`analysis.run.experiment.run_experiment` returns it).
    """

    def __init__(self, message, partial, section, path, status):
        super().__init__(message, partial)
        self.section, self.path, self.status = section, path, status


class TasksFailed(RuntimeError):
    """Tasks that still raised after their retries (``mfpc run`` exits 3).

    ``failed`` is ``[(id, label, error)]``, ``status`` what was written (the other tasks
    merged; ``particles.nc`` with ``complete = 0`` and ``missing_members``).
    """

    def __init__(self, message, failed, status):
        super().__init__(message)
        self.failed, self.status = failed, status


def cap_workers(workers, n_tasks, option="--workers"):
    """``workers`` capped at the number of tasks ``n_tasks`` (more processes would idle),
    said with a warning, as is a count beyond this machine's cores."""
    if workers is None or int(workers) <= 1:
        return workers
    workers = int(workers)
    if workers > n_tasks:
        log.warning("%s %d: the sweep has %d task(s), so %d process(es) run them",
                    option, workers, n_tasks, max(1, n_tasks))
        workers = max(1, n_tasks)
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
    if workers > cores:
        log.warning("%s %d exceeds the %d core(s) this process may use: the processes share "
                    "them (slower than --workers %d)", option, workers, cores, cores)
    return workers


def check_tasks(out, config_json, *, force=False):
    """Refuse ``DIR/tasks/`` of another config, before any work (``--force`` removes it).

    Raises
    ------
    RunFolderError
        The manifest of ``DIR/tasks`` names another run_id; the message lists the keys
        that differ (:func:`analysis.store.runfolder.differing_keys`).
    """
    tasks_dir = Path(out) / TASKS_DIR
    if (tasks_dir.exists() or tasks_dir.is_symlink()) and not tasks_dir.is_dir():
        raise RunFolderError(f"{tasks_dir} is a file where mfpc keeps the folder of a "
                             "sweep's finished tasks; move it away, or choose another --out")
    if not tasks_dir.is_dir():
        return
    if force:
        remove_task_files(out)  # mfpc's files only: a user's file there stays
        return
    try:
        old = json.loads((tasks_dir / MANIFEST).read_text())
        old_id, old_cfg = old["run_id"], old["config"]
    except FileNotFoundError:
        return  # killed before its manifest: no result of any run in it
    except (OSError, ValueError, KeyError, TypeError):
        raise RunFolderError(f"{tasks_dir / MANIFEST} is damaged; delete {tasks_dir} or "
                             "pass --force (which recomputes every task)") from None
    if old_id != run_id(config_json):
        keys = ", ".join(differing_keys(old_cfg, config_json)) or "none found"
        raise RunFolderError(
            f"{tasks_dir} holds the tasks of a sweep of a different config (run_id {old_id}, "
            f"this config {run_id(config_json)}; keys that differ: {keys}); pass --force to "
            "remove them and run this config, or choose another --out")


def _start(out, tasks, sections, config_json):
    """Enter the files of the sweep on the run folder's manifest (refusing any in the
    way, a read-only ``DIR/tasks``), create ``DIR/tasks`` with its ``sweep.json``, remove
    the temporaries killed writers left of mfpc's files, and set aside finished results
    that cannot be read (:func:`_set_aside`)."""
    tasks_dir = Path(out) / TASKS_DIR
    man = claim(out, [RUN_FILES[s] for s in sections] + [f"{TASKS_DIR}/{MANIFEST}"],
                tasks=[t["id"] for t in tasks], dirs=[TASKS_DIR])
    manifest = tasks_dir / MANIFEST
    if not manifest.exists():
        with atomic_path(manifest) as tmp:
            Path(tmp).write_text(json.dumps({"run_id": run_id(config_json),
                                             "config": json.loads(config_json)}))
        man = stamp(out, [f"{TASKS_DIR}/{MANIFEST}"])
    for p in tasks_dir.iterdir():
        name = temporary_of(p.name)
        if name is not None and man.lists(f"{TASKS_DIR}/{name}") and p.is_file():
            p.unlink()
    for t in tasks:
        path = done_path(tasks_dir, t["id"])
        if path.exists() or path.is_symlink():
            why = result_damage(path)
            if why is not None:
                _set_aside(path, t, why)


def _set_aside(path, task, why):
    """Rename the unreadable result ``path`` to ``<name>.set-aside[-k]`` (kept for a look,
    never removed by mfpc) and say so: its task is computed again."""
    k, aside = 0, path.with_name(path.name + ".set-aside")
    while aside.exists() or aside.is_symlink():
        k += 1
        aside = path.with_name(f"{path.name}.set-aside-{k}")
    path.rename(aside)
    log.warning("the result of task %s (%s), %s, cannot be read (%s): set aside as %s; "
                "the task is computed again", task["id"], task_label(task), path, why, aside)


def _later(a, b) -> bool:
    """Task ``a`` comes after task ``b`` in a serial run (later section or larger n)."""
    sa, sb = SECTION_ORDER.index(a["section"]), SECTION_ORDER.index(b["section"])
    return sa > sb or (sa == sb and a["section"] == "particles" and a["i_n"] > b["i_n"])


def _run_tasks(ex, todo, submit_args, retries, bar):
    """Run ``todo`` on ``ex``: ``{id: result dict}``, ``{id: error}`` and the first task
    stopped by a numerical failure or bound (the tasks after it cancelled)."""
    attempts, results, errors, stop, pending = Counter(), {}, {}, None, {}

    def submit(t):
        try:
            pending[ex.submit(*submit_args(t, attempts[t["id"]]))] = t
        except Exception as e:  # noqa: BLE001 - the executor is broken (a worker died)
            errors[t["id"]] = f"cannot be submitted ({type(e).__name__}: {e})"
            bar.update()

    for t in todo:
        submit(t)
    while pending:
        for fut in ex.as_completed(list(pending)):
            t = pending.pop(fut, None)
            if t is None or fut.cancelled():
                continue
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - any error of a task: retried
                attempts[t["id"]] += 1
                err = f"{type(e).__name__}: {e}"
                where = user_location(e)
                if where:  # the user's own code raised: name the file and line
                    err = f"{where}: your Python part raised {err}; fix {Path(where.rsplit(':', 1)[0]).name}"
                if attempts[t["id"]] <= retries:
                    log.warning("task %s (%s) failed (%s); retry %d of %d", t["id"],
                                task_label(t), err, attempts[t["id"]], retries)
                    submit(t)
                else:
                    errors[t["id"]] = err
                    bar.update()
                continue
            results[t["id"]] = res
            bar.update()
            if res["status"] != "done" and (stop is None or _later(stop, t)):
                stop = t
                for f2, t2 in pending.items():
                    if _later(t2, t):
                        f2.cancel()  # a running one finishes (and is merged)
                break  # as_completed again over what is left (cancelled ones come back)
    return results, errors, stop


def missing_members(tasks) -> str:
    """``"n=8 seeds 0-1, 4; n=16 seeds 2"``: the members of the particle ``tasks``."""
    by_n = {}
    for t in tasks:
        r = t.get("realisation")
        key = f"{'' if r is None else f'realisation {r} '}n={t['n']}"
        by_n.setdefault(key, []).extend(t["seeds"])
    return "; ".join(f"{k} seeds {_ranges(s)}" for k, s in by_n.items())


def merge_particles(parts, config) -> xr.Dataset:
    """The ``(n, seed)`` ensemble of its particle tasks, stacked over target realisations
    when there are several (:func:`analysis.sweep.realisations.stack_realisations`; a
    realisation none of whose tasks finished is NaN)."""
    R = int(config["particles"].get("realisations", 1))
    if R == 1:
        return _merge_members(parts, config)
    merged = []
    for r in range(R):
        mine = [(t, ds) for t, ds in parts if t.get("realisation") == r]
        ds = _merge_members(mine or parts[:1], config)
        if not mine:  # every task of it failed: its members are missing
            ds = ds.copy()
            for name, var in ds.data_vars.items():
                if "n" in var.dims or name == "f_target":
                    ds[name] = var * np.nan
        merged.append(ds)
    return stack_realisations(merged)


def _merge_members(parts, config) -> xr.Dataset:
    """The ``(n, seed)`` ensemble from the Datasets of its particle tasks.

    Parameters
    ----------
    parts : list of (dict, xarray.Dataset)
        Tasks (:func:`analysis.sweep.tasks.plan_tasks`) and their Datasets (one n, a block of
        seeds each).
    config : dict
        The resolved config: ``particles.n`` and ``particles.seeds`` give the ensemble.

    Returns
    -------
    xarray.Dataset
        The variables along ``n`` and ``seed`` put together (NaN for members no task
        gave, and where ``particle >= n``), the others and the attrs from the first part;
        ``attrs["n_index"]`` of the whole ensemble.
    """
    ns, seeds = [int(v) for v in config["particles"]["n"]], int(config["particles"]["seeds"])
    sizes = {"n": len(ns), "seed": seeds, "particle": max(ns)}
    first = parts[0][1]
    data = {}
    for name, var in first.data_vars.items():
        if "n" not in var.dims:
            data[name] = (var.dims, var.values, dict(var.attrs))
            continue
        full = np.full([sizes.get(d, first.sizes[d]) for d in var.dims], np.nan, var.dtype)
        for task, ds in parts:
            v = ds[name].transpose(*var.dims).values
            idx = tuple({"n": [task["i_n"]], "seed": task["seeds"]}.get(d, slice(None))
                        for d in var.dims)
            block = np.ix_(*[i if isinstance(i, list) else np.arange(s)
                             for i, s in zip(idx, v.shape)])
            full[block] = v
        data[name] = (var.dims, full, dict(var.attrs))
    coords = {name: (c.dims, c.values, dict(c.attrs)) for name, c in first.coords.items()
              if name not in ("n", "seed")}
    coords["n"] = ("n", np.asarray(ns, np.int32), dict(first["n"].attrs))
    coords["seed"] = ("seed", np.arange(seeds, dtype=np.int32), dict(first["seed"].attrs))
    attrs = dict(first.attrs)
    attrs["n_index"] = json.dumps(list(range(len(ns))))
    attrs.pop("failure", None)
    attrs["complete"] = 1
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _section_dataset(section, tasks, tasks_dir, config):
    """The merged Dataset of one section from its finished (and failed) tasks, or None."""
    parts = []
    for t in tasks:
        for path in (done_path(tasks_dir, t["id"]), failed_path(tasks_dir, t["id"])):
            if path.is_file():
                try:
                    parts.append((t, load_result(path)))
                except Exception as e:  # noqa: BLE001 - damaged since it was checked
                    raise RunFolderError(
                        f"{path} cannot be read ({type(e).__name__}: {e}); run the same "
                        "command again: it sets the file aside and computes the task "
                        "again") from None
                break
    if not parts:
        return None
    if section == "particles":
        return merge_particles(parts, config)
    return parts[0][1]


def run_sweep(exp, out, sections, *, task_fn, spec=None, finish, executor=None,
              retries=2, progress=None, checkpoint_every=None) -> dict:
    """Compute ``sections`` of ``exp`` as tasks and write ``out/<section>.nc``.

    Parameters
    ----------
    exp : analysis.run.experiment.Experiment
    out : Path
        The run folder, locked by the caller (:func:`analysis.store.runfolder.holding`).
    sections : list of str
        The sections to compute (:func:`analysis.store.runfolder.plan_run`).
    task_fn : callable
        The top-level task function ``task_fn(spec, task, tasks_dir, options, attempt)``
        (:func:`analysis.run.experiment.run_task`).
    spec : dict, optional
        ``{"config": the config as read, "base": folder}``: what a task in another
        process resolves. None (a ready Problem): only the serial executor can run it.
    finish : callable ``(section, ds, failure) -> ds``
        Provenance and CF metadata of a file to write.
    executor : Executor, optional
        Default :class:`~analysis.sweep.executors.SerialExecutor`.
    retries : int
        How many times a task that raised is submitted again.
    progress : bool or None
        The bar over tasks (and, serially, the runners' own bars); None: on a terminal.
    checkpoint_every : float, optional
        Seconds between checkpoints inside a task.

    Returns
    -------
    dict
        ``{section: (path, "written")}``.

    Raises
    ------
    SectionFailure, TasksFailed, ConfigError
        Module doc.
    """
    out, ex = Path(out), executor or SerialExecutor()
    serial = isinstance(ex, SerialExecutor)
    if spec is None and not serial:
        raise ConfigError(
            "a Problem handed to resolve(cfg, problem=...) cannot be sent to other processes;"
            " run it without --workers, --dask-local or --scheduler, or name its parts in the"
            " config (python = \"FILE.py:NAME\" in [problem.kernel], [problem.measure], "
            "[problem.target] or [problem]: docs/kernels.md), which every executor runs")
    tasks_dir = out / TASKS_DIR
    tasks = plan_tasks(exp.config, sections)
    _start(out, tasks, sections, exp.config_json())
    todo = [t for t in tasks if not done_path(tasks_dir, t["id"]).exists()]
    if len(todo) < len(tasks):
        log.info("%d of %d tasks finished before: not run again", len(tasks) - len(todo),
                 len(tasks))
    options = {"progress": progress if serial else False, "checkpoint_every": checkpoint_every}
    args = (lambda t, k: (task_fn, exp if serial else spec, t, str(tasks_dir), options, k))
    with tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc="mfpc tasks",
              unit="task", disable=None if progress is None else not progress) as bar:
        try:
            results, errors, stop = _run_tasks(ex, todo, args, retries, bar)
        finally:  # the results as the tasks left them: a file changed later is not mfpc's
            stamp(out, [f"{TASKS_DIR}/{p.name}" for t in todo
                        for p in (done_path(tasks_dir, t["id"]), failed_path(tasks_dir, t["id"]))])
    return _write(exp, out, sections, tasks, results, errors, stop, finish, retries)


def _write(exp, out, sections, tasks, results, errors, stop, finish, retries):
    """Merge and write every section (module doc, step 4); each file written is stamped
    on the run folder's manifest (:func:`analysis.store.runfolder.stamp`)."""
    try:
        return _write_sections(exp, out, sections, tasks, results, errors, stop, finish,
                               retries)
    finally:
        stamp(out, [RUN_FILES[s] for s in sections])


def _write_sections(exp, out, sections, tasks, results, errors, stop, finish, retries):
    tasks_dir, status, failed = out / TASKS_DIR, {}, []
    for section in [s for s in SECTION_ORDER if s in sections]:
        mine = [t for t in tasks if t["section"] == section]
        path = out / f"{section}.nc"
        if stop is not None and stop["section"] == section:
            msg = results[stop["id"]]["message"]
            if results[stop["id"]]["status"] == "bound":
                # a bound that depends on what the run reached (a later CFL bound): a
                # numerical failure of this section, the sections before it kept (exit 3)
                remove_task_files(out)
                raise SectionFailure(f"[{section}]: {msg} (a bound reached during the run, "
                                     "after the sections before it were written)", None,
                                     section, None, status)
            ds = _section_dataset(section, mine, tasks_dir, exp.config)
            kept = None
            if ds is not None:
                write_dataset(finish(section, ds, msg), path, overwrite=True)
                status[section] = (kept := path, "incomplete")
            remove_task_files(out)
            raise SectionFailure(f"[{section}]: {msg}", ds, section, kept, status)
        lost = [t for t in mine if t["id"] in errors]
        ds = _section_dataset(section, mine, tasks_dir, exp.config)
        if lost:
            failed += [(t["id"], task_label(t), errors[t["id"]]) for t in lost]
            if section == "particles" and ds is not None:
                ds.attrs["missing_members"] = missing_members(lost)
                why = "; ".join(f"task {t['id']} ({task_label(t)}): {errors[t['id']]}"
                                for t in lost)
                write_dataset(finish(section, ds, f"tasks failed after {retries} retries: "
                                     f"{why}"), path, overwrite=True)
                status[section] = (path, "incomplete")
            continue
        write_dataset(finish(section, ds, None), path, overwrite=True)
        status[section] = (path, "written")
    if failed:
        lines = "; ".join(f"task {i} ({label}): {err}" for i, label, err in failed)
        raise TasksFailed(
            f"{len(failed)} task(s) failed after {retries} retries: {lines}. The other "
            f"tasks are merged; run the same command again to run only the missing tasks "
            f"(finished ones are kept in {tasks_dir})", failed, status)
    remove_task_files(out)
    return status
