"""The output folder of one run: its identity, writability, lock, leftovers and stale files.

Every file ``mfpc run`` writes carries ``attrs["run_id"]``, :func:`run_id` of the resolved
config (a hash of its canonical JSON without the keys that do not change numbers,
:data:`IDENTITY_IGNORED`). The resolved config holds what runs, not only what was written:
``problem_identity`` (:func:`particles.userparts.problem_identity`: every part's type and
``params()``, the SHA-256 of each Python part's file and of each data file), so a changed
file or a changed Python-built problem is another run; ``files`` records each file's path
and hash for the report. ``mfpc run`` and ``mfpc report`` use this module, in order:

1. :func:`check_writable` — ``--out`` names a folder in which a file can be created (a
   temporary probe file is created and removed), before any work;
2. :func:`holding` — the folder's :class:`~analysis.store.lock.FolderLock` (a second live
   process is refused with a :class:`RunFolderError`), inside which :func:`remove_leftovers`
   deletes the temporary files a killed process left (only temporaries of names on the
   manifest);
3. :func:`plan_run` (``mfpc run``) — which sections to compute, which files are up to date,
   which must go (``--force``: sections the config no longer has, old derived outputs);
   refusing files of another run, foreign or damaged files and a failed run
   (``complete = 0``) unless ``--force``;
4. :func:`read_run` (``mfpc report``) — the run files read whole, refused if any is damaged,
   foreign, or of another run than the others.

mfpc deletes or overwrites only files it wrote itself: the folder's manifest
``DIR/.mfpc-manifest.json`` (:class:`Manifest`) lists them, each entered before it is
written (:func:`claim`). ``mfpc run`` refuses a folder that is not empty and has no
manifest (:func:`open_run_folder`); a file of a name mfpc writes that is not on the
manifest, or a folder where a file goes, is refused (:func:`claim`), and ``--force`` and the
removal of leftovers and stale files touch only files on it (:func:`remove_owned`,
:func:`remove_task_files`).

All refusals are :class:`RunFolderError` (a :class:`~particles.engine.config.ConfigError`:
``mfpc`` exits 2) naming the file and what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import xarray as xr

from particles.engine.config import ConfigError

from analysis.store.io import read_dataset
from analysis.store.lock import LOCK_NAME, FolderBusy, FolderLock

__all__ = ["run_id", "RunFolderError", "IDENTITY_IGNORED", "RUN_FILES", "DERIVED",
           "FIGURE_NAMES", "TMP_PATTERN", "check_writable", "holding", "remove_leftovers",
           "plan_run", "remove_stale", "remove_empty_folders", "read_run", "file_identity",
           "identity", "differing_keys", "TASKS_DIR"]

#: the file of each runnable section, in run order
RUN_FILES = {"particles": "particles.nc", "meanfield": "meanfield.nc",
             "fluctuations": "fluctuations.nc"}
#: what ``mfpc report`` derives from the run files (and ``figures/`` with FIGURE_NAMES)
DERIVED = ("analysis.nc", "report.md")
FIGURE_NAMES = ("loss.png", "functions.png", "density.png", "lln.png", "clt_qq.png",
                "m_spectrum.png",
                # runs without a mean field (analysis.report.paperfigures.paper_figures)
                "training_loss.png", "loss_n.png", "signed_pos_n.png", "signed_neg_n.png",
                "slice.png", "great_circles.png", "sgd_variance.png",
                # the baselines beside trained units (analysis.report.baselinefigures)
                "baselines.png")
#: keys of the resolved config that do not change any number: not part of the identity
#: (``particles.seeds_per_task`` only cuts the ensemble into tasks: every member draws
#: from its own generator, so the numbers do not depend on it;
#: ``files``: the paths and hashes of the files the problem was built from, for the report;
#: their hashes are in ``problem_identity``, a path alone changes no number)
IDENTITY_IGNORED = (("problem", "description"), ("particles", "seeds_per_task"), ("files",))
#: the folder of a sweep's finished tasks inside DIR (:mod:`analysis.sweep.driver`)
TASKS_DIR = "tasks"
#: temporary names of :func:`analysis.store.io.atomic_path` (``.NAME.XXXXXXXX.tmp``) for the files
#: mfpc writes, and of the writability probe
TMP_PATTERN = re.compile(
    r"^\.(?:particles\.nc|meanfield\.nc|fluctuations\.nc|analysis\.nc|report\.md|"
    r"loss\.png|functions\.png|density\.png|lln\.png|clt_qq\.png|m_spectrum\.png|"
    r"mfpc-probe)\.[A-Za-z0-9_]+\.tmp$")


class RunFolderError(ConfigError):
    """The output folder cannot be used as it is (``mfpc`` exits 2, nothing written)."""


def _canonical(v):
    """JSON-ready value with integral floats as ints (``kappa = 2`` is ``kappa = 2.0``)."""
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def identity(config) -> dict:
    """The part of a resolved config that changes numbers, canonical (:func:`_canonical`):
    a copy without the keys of :data:`IDENTITY_IGNORED`, with ``problem_identity`` (the
    resolved problem and its files' hashes).

    Parameters
    ----------
    config : dict or str
        The resolved config, or its JSON (``attrs["config"]`` of a run file).
    """
    cfg = json.loads(config) if isinstance(config, str) else json.loads(json.dumps(config))
    for section, *key in IDENTITY_IGNORED:
        if not key:
            cfg.pop(section, None)
        elif isinstance(cfg.get(section), dict):
            cfg[section].pop(key[0], None)
    return _canonical(cfg)


def run_id(config) -> str:
    """The identity of a run: 16 hex digits of the SHA-256 of its canonical config JSON.

    Parameters
    ----------
    config : dict or str
        The resolved config, or its JSON (``attrs["config"]`` of a run file).
    """
    text = json.dumps(identity(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differing_keys(old, new) -> list:
    """The dotted keys (``dynamics.dt``, ``particles.n``) whose values differ between two
    resolved configs (dicts or JSON), keys that change no number left out; a key present
    in one config only counts as differing."""
    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                yield from walk(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{prefix}{k}.")
        elif a != b:
            yield prefix[:-1]
    return list(walk(identity(old), identity(new), ""))


_ABSENT = object()


def _differ(old, new) -> str:
    """``"; keys that differ: a.b, c"`` for a refusal message (empty if none found)."""
    try:
        keys = differing_keys(old, new)
    except (TypeError, ValueError):
        return ""
    return f"; keys that differ: {', '.join(keys)}" if keys else ""


# ----------------------------------------------------------------------------- writability
def _create_probe(folder) -> str:
    """Create an empty temporary file in ``folder`` and return its name (tests patch it)."""
    fd, name = tempfile.mkstemp(prefix=".mfpc-probe.", suffix=".tmp", dir=folder)
    os.close(fd)
    return name


def check_writable(out, *, create=True, what="--out") -> list:
    """Check that ``out`` is (or can be made) a folder in which files can be created.

    Creates the missing folders when ``create`` and returns them (deepest first), so a
    caller can remove them if it writes nothing; on any refusal they are removed here.

    Raises
    ------
    RunFolderError
        ``out`` is empty, lies under a file, cannot be created, or no file can be created
        in it (read-only, no space, ...).
    """
    if str(out).strip() == "":
        raise RunFolderError(f'{what} "" names no folder; name one, e.g. {what} runs/circle')
    out = Path(out)
    missing, p = [], out
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise RunFolderError(f"{what} {out}: {p} is a file, not a folder; choose another "
                             f"{what} (a folder, or a path under one)")
    if missing and not create:
        raise RunFolderError(f"{what} {out} does not exist")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"{what} {out}: the folder cannot be created ({e.strerror or e}); "
                             f"choose a writable {what}") from None
    try:
        probe = _create_probe(out)
    except OSError as e:
        remove_empty_folders(missing)
        raise RunFolderError(f"{what} {out}: no file can be created in this folder "
                             f"({type(e).__name__}: {e.strerror or e}); make it writable or "
                             f"choose another {what}") from None
    with contextlib.suppress(FileNotFoundError):  # a lock holder may clean it first
        os.unlink(probe)
    return missing


def remove_empty_folders(folders):
    """Remove ``folders`` (deepest first, as :func:`check_writable` returns them) while empty."""
    for d in folders:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def holding(out, what="mfpc run"):
    """Hold ``out``'s :class:`FolderLock` (refusing a busy folder) and clean its leftovers."""
    lock = FolderLock(out, what=what)
    try:
        lock.acquire()
    except FolderBusy as e:
        raise RunFolderError(str(e)) from None
    except OSError as e:
        raise RunFolderError(f"{out}: cannot create the lock file {lock.path} "
                             f"({e.strerror or e}); make the folder writable") from None
    try:
        remove_leftovers(out, lock)
        yield lock
    finally:
        lock.release()


def remove_leftovers(out, lock) -> list:
    """Delete the temporary files a killed process left in ``out``, ``out/figures`` and
    ``out/tasks``: only temporaries of names on the folder's manifest
    (:func:`temporary_of`: ``.NAME.XXXXXXXX.tmp`` with ``NAME`` mfpc's) and of mfpc's own
    probe and manifest, and only while ``lock`` (this folder's :class:`FolderLock`) is
    held: a live writer's temporaries are never touched.
    """
    out = Path(out)
    if not getattr(lock, "_held", False) or lock.path.parent != out:
        raise RuntimeError(f"remove_leftovers needs the lock of {out} held")
    man = Manifest.load(out)
    gone = []
    for sub in ("", "figures", TASKS_DIR):
        folder = out / sub if sub else out
        if not folder.is_dir() or folder.is_symlink():
            continue
        for p in folder.iterdir():
            name = temporary_of(p.name)
            if name is None or not p.is_file() or p.is_symlink():
                continue
            rel = f"{sub}/{name}" if sub else name
            if (not sub and name in (_PROBE, MANIFEST_NAME)) or (man is not None
                                                                and man.lists(rel)):
                p.unlink()
                gone.append(p)
    return gone


# ------------------------------------------------------------------------------ manifest
#: ``DIR/.mfpc-manifest.json``: the files mfpc wrote in DIR (the only ones it may remove)
MANIFEST_NAME = ".mfpc-manifest.json"
#: the name of the writability probe (:func:`check_writable`)
_PROBE = ".mfpc-probe"
_TEMPORARY = re.compile(r"^\.(.+)\.[A-Za-z0-9_]+\.tmp$")
#: the names a task writes in ``DIR/tasks`` (:mod:`analysis.sweep.tasks`) besides sweep.json
TASK_SUFFIXES = (".npz", ".failed.npz", ".ckpt.npz")
__all__ += ["MANIFEST_NAME", "Manifest", "claim", "remove_owned", "remove_task_files",
            "open_run_folder", "temporary_of", "TASK_SUFFIXES"]


def temporary_of(name):
    """``NAME`` of a temporary ``.NAME.XXXXXXXX.tmp`` (:func:`analysis.store.io.atomic_path`,
    checkpoints, the probe), else None."""
    m = _TEMPORARY.match(name)
    if m is None:
        return None
    return _PROBE if m.group(1) == _PROBE[1:] else m.group(1)


def _ignorable(name) -> bool:
    """mfpc's own bookkeeping in DIR: the lock, the probe and their temporaries."""
    return name in (LOCK_NAME, MANIFEST_NAME) or temporary_of(name) in (_PROBE, MANIFEST_NAME)


class Manifest:
    """What mfpc wrote in a run folder: ``files`` (paths relative to DIR), ``dirs``
    (folders it created) and ``tasks`` (the task ids whose files ``tasks/<id>.npz``,
    ``.failed.npz`` and ``.ckpt.npz`` are mfpc's). Names are entered *before* the file
    is written (:func:`claim`), so a killed process never leaves a file of its own off
    the list. Saved atomically as JSON in ``DIR/.mfpc-manifest.json``."""

    def __init__(self, out, files=(), dirs=(), tasks=(), stamps=None):
        self.out = Path(out)
        self.files, self.dirs, self.tasks = set(files), set(dirs), set(tasks)
        #: ``{rel: [size, mtime_ns]}`` of the files as mfpc left them (:func:`stamp`)
        self.stamps = dict(stamps or {})

    @property
    def path(self):
        return self.out / MANIFEST_NAME

    @classmethod
    def load(cls, out):
        """The manifest of ``out``, or None if it has none.

        Raises
        ------
        RunFolderError
            The manifest cannot be read (damaged, a folder, not mfpc's).
        """
        path = Path(out) / MANIFEST_NAME
        if not path.exists() and not path.is_symlink():
            return None
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict) or d.get("mfpc") != "run folder":
                raise ValueError("not an mfpc manifest")
            lists = [d.get(k, []) for k in ("files", "dirs", "tasks")]
            if not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                       for v in lists):
                raise ValueError("its lists are not lists of names")
            stamps = d.get("stamps", {})
            if not isinstance(stamps, dict) or not all(
                    isinstance(v, list) and len(v) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
                    for v in stamps.values()):
                raise ValueError("its stamps are not [size, mtime_ns] pairs")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise RunFolderError(
                f"{path} (the list of the files mfpc wrote in {out}) cannot be read "
                f"({type(e).__name__}: {e}); mfpc removes nothing it cannot prove its own: "
                f"choose another folder, or sort {out} by hand and delete {path}") from None
        return cls(out, *lists, stamps=stamps)

    def owns(self, rel) -> bool:
        """Whether ``rel`` (a path relative to DIR, ``/``-separated) is mfpc's: on the list,
        and as mfpc left it (a file the user changed since, e.g. notes added to
        report.md, is the user's)."""
        rel = str(rel)
        if not self.lists(rel):
            return False
        stamp = self.stamps.get(rel)
        if stamp is None:
            return True  # entered, not yet stamped (a process killed after the write)
        try:
            st = os.stat(self.out / rel)
        except OSError:
            return True
        return [st.st_size, st.st_mtime_ns] == stamp

    def lists(self, rel) -> bool:
        """Whether the name ``rel`` is on the manifest (whatever the file now holds)."""
        rel = str(rel)
        if rel in self.files:
            return True
        head, _, name = rel.partition("/")
        if head != TASKS_DIR or "/" in name:
            return False
        for suffix in TASK_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in self.tasks:
                return True
        return False

    def save(self):
        from analysis.store.io import atomic_path

        self.stamps = {k: v for k, v in self.stamps.items() if self.lists(k)}
        text = json.dumps({"mfpc": "run folder", "files": sorted(self.files),
                           "dirs": sorted(self.dirs), "tasks": sorted(self.tasks),
                           "stamps": self.stamps})
        with atomic_path(self.path) as tmp:
            Path(tmp).write_text(text)


def _in_the_way(out, names, limit=6) -> str:
    shown = ", ".join(str(Path(out) / n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def open_run_folder(out, *, what="mfpc run") -> Manifest:
    """The manifest of the run folder ``out`` (a new, unsaved one for an empty folder).

    ``mfpc run`` uses only an empty folder or a folder with a manifest (a run folder);
    ``mfpc report`` also a folder without one (run files copied by hand): it enters the
    files it writes then (:func:`claim` refuses those in the way).

    Raises
    ------
    RunFolderError
        ``mfpc run`` on a folder that is not empty and has no manifest (the message names
        what is in it), or a damaged manifest.
    """
    out = Path(out)
    man = Manifest.load(out)
    if man is not None:
        return man
    if what == "mfpc run":
        names = sorted(p.name for p in out.iterdir() if not _ignorable(p.name))
        if names:
            raise RunFolderError(
                f"{out} is not empty and is not an mfpc run folder (it has no {MANIFEST_NAME}"
                f", the list of the files mfpc wrote there): {_in_the_way(out, names)} would "
                "be in the way. mfpc removes only files it wrote itself; choose a new or "
                "empty --out, or move these away")
    return Manifest(out)


def claim(out, rels=(), *, tasks=(), dirs=(), check_only=False) -> Manifest:
    """Enter ``rels`` (files mfpc is about to write, relative to ``out``), the task ids
    ``tasks`` and the folders ``dirs`` (created here if missing) on the manifest, before
    any of them is written (``check_only``: only the refusals, nothing created or saved).

    Raises
    ------
    RunFolderError
        A file of ``rels`` exists and is not mfpc's (not on the manifest), or a folder is
        where a file goes (or a file where a folder goes); nothing entered then.
    """
    out = Path(out)
    man = Manifest.load(out) or Manifest(out)
    for d in dirs:
        p = out / d
        if (p.exists() or p.is_symlink()) and not p.is_dir():
            raise RunFolderError(f"{p} is a file where mfpc writes the folder {d}/; move it "
                                 "away (mfpc removes only files it wrote itself)")
    probe = [Path(r).parent for r in rels if str(Path(r).parent) != "."]
    for r in rels:
        p = out / r
        if p.is_dir():
            raise RunFolderError(f"{p} is a folder where mfpc writes the file {r}; move it "
                                 "away (mfpc removes only files it wrote itself)")
        if (p.exists() or p.is_symlink()) and not man.owns(r):
            raise RunFolderError(
                f"{p} is in the way: mfpc writes {r} here, and this file is not one it "
                f"wrote (it is not on {man.path}, or it changed since mfpc wrote it); move "
                "it away (mfpc never removes or overwrites a file it did not write)")
    for d in sorted(set(probe)):
        if (out / d).is_dir():
            check_writable(out / d, create=False, what="folder")
    if check_only:
        return man
    for d in dirs:
        p = out / d
        if not p.exists():
            p.mkdir(parents=True)
            man.dirs.add(str(d))
    man.files.update(str(r) for r in rels)
    man.tasks.update(tasks)
    if rels or tasks or dirs or not man.path.exists():
        man.save()
    return man


def claim_report(out, figures=True, *, check_only=False) -> Manifest:
    """Enter what ``mfpc report`` writes (``analysis.nc``, ``report.md``, ``figures/``) on
    the manifest of ``out`` before any work: a user's file of one of these names, a folder
    where a file goes, a ``figures`` that is a file or read-only, are refused
    (:func:`claim`)."""
    rels = list(DERIVED) + ([f"figures/{n}" for n in FIGURE_NAMES] if figures else [])
    return claim(out, rels, dirs=["figures"] if figures else [], check_only=check_only)


__all__ += ["claim_report"]


def stamp(out, rels):
    """Record the size and modification time of the files ``rels`` mfpc has just written
    (on the manifest): a file that later differs was changed by someone else and is no
    longer removed or overwritten by mfpc."""
    out = Path(out)
    man = Manifest.load(out)
    if man is None:
        return None
    for r in rels:
        r = str(r)
        try:
            st = os.stat(out / r)
        except OSError:
            continue
        if man.lists(r):
            man.stamps[r] = [st.st_size, st.st_mtime_ns]
    man.save()
    return man


__all__ += ["stamp"]


def remove_owned(out, rels) -> list:
    """Delete the files of ``rels`` that are mfpc's (on the manifest) and exist; the
    others are left. Returns those deleted."""
    out = Path(out)
    man = Manifest.load(out)
    if man is None:
        return []
    gone = []
    for r in rels:
        p = out / r
        if man.owns(str(r)) and p.is_file() and not p.is_symlink():
            p.unlink()
            gone.append(p)
        man.files.discard(str(r))
    man.save()
    return gone


def remove_task_files(out) -> list:
    """Delete mfpc's files in ``DIR/tasks`` (sweep.json, the results, checkpoints and
    temporaries of the task ids on the manifest) and the folder if mfpc created it and
    it is left empty; a user's file there stays. Returns those deleted."""
    out = Path(out)
    tasks_dir = out / TASKS_DIR
    man = Manifest.load(out)
    if man is None or not tasks_dir.is_dir() or tasks_dir.is_symlink():
        return []
    gone = []
    for p in tasks_dir.iterdir():
        name = temporary_of(p.name) or p.name
        if man.owns(f"{TASKS_DIR}/{name}") and p.is_file() and not p.is_symlink():
            p.unlink()
            gone.append(p)
    man.tasks.clear()
    man.files = {f for f in man.files if not f.startswith(f"{TASKS_DIR}/")}
    if TASKS_DIR in man.dirs and not any(tasks_dir.iterdir()):
        tasks_dir.rmdir()
        man.dirs.discard(TASKS_DIR)
    man.save()
    return gone


# ------------------------------------------------------------------------------ run files
def file_identity(path, section) -> dict:
    """The attrs of a run file (no data read); a :class:`RunFolderError` if it is damaged
    or was not written by ``mfpc run`` for ``section``. Adds ``run_id`` if missing."""
    path = Path(path)
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            attrs = dict(ds.attrs)
    except Exception as e:  # noqa: BLE001 - any reading failure: the file is damaged
        raise RunFolderError(_damaged(path, e)) from None
    return _identity(path, section, attrs)


def _damaged(path, e):
    return (f"{path} cannot be read as netCDF ({type(e).__name__}: {e}); it is truncated, "
            f"damaged or not a netCDF file: delete it, or rerun the config with "
            f"`mfpc run CONFIG --out {path.parent} --force`")


def _identity(path, section, attrs):
    try:
        cfg = json.loads(attrs["config"])
        if not isinstance(cfg, dict) or attrs.get("section") != section:
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise RunFolderError(
            f"{path} was not written by `mfpc run` (no mfpc config of [{section}] in its "
            f"attributes); move it away, or choose another folder") from None
    attrs.setdefault("run_id", run_id(cfg))
    return attrs


def plan_run(out, config_json, sections, *, force=False):
    """What ``mfpc run`` does in ``out``: sections to compute, up to date, files to remove.

    Parameters
    ----------
    out : Path
        The (locked) output folder.
    config_json : str
        The resolved config of the new run.
    sections : sequence of str
        Its runnable sections, in order.
    force : bool
        Recompute every section: remove every run file first (also those of sections the
        new config no longer has), so that a failure leaves no file of the old run.

    Returns
    -------
    todo : list of str
        Sections to compute.
    status : dict
        ``{section: (path, "up to date")}`` of the files left as they are.
    remove : list of Path
        Files to delete before any work (:func:`remove_stale`).

    Raises
    ------
    RunFolderError
        Without ``force``: a run file of another config (the message lists the keys that
        differ, :func:`differing_keys`), a foreign or damaged one, or a file of this config
        from a numerically failed run (``complete = 0``). A file of this config whose
        sweep lost tasks (``complete = 0`` with ``missing_members``) is computed again:
        the sweep reruns only the tasks missing from ``DIR/tasks/``.
    """
    out, rid = Path(out), run_id(config_json)
    man = open_run_folder(out)
    todo, status, remove = [], {}, []
    for section, name in RUN_FILES.items():
        path = out / name
        if not path.exists():
            if section in sections:
                todo.append(section)
            continue
        if force:  # removed before any work: a failure leaves no file of the old run
            if not man.owns(name):
                raise RunFolderError(
                    f"{path} is not a file mfpc wrote in this folder (it is not on "
                    f"{man.path}, or it changed since mfpc wrote it), so --force does not "
                    "remove it; move it away, or choose another --out")
            remove.append(path)
            if section in sections:
                todo.append(section)
            continue
        attrs = file_identity(path, section)
        if section not in sections:
            raise RunFolderError(
                f"{path} is from another run (run_id {attrs['run_id']}"
                f"{_differ(attrs['config'], config_json)}) and this config has no "
                f"[{section}]; a folder holds one run: pass --force to remove it, or choose "
                "another --out")
        if attrs["run_id"] != rid:
            raise RunFolderError(
                f"{path} exists and was written from a different config (run_id "
                f"{attrs['run_id']}, this config {rid}{_differ(attrs['config'], config_json)})"
                "; pass --force to overwrite it or choose another --out")
        if not int(attrs.get("complete", 1)) and "missing_members" in attrs:
            # tasks failed (not the numbers): run the missing ones (analysis.sweep.driver)
            todo.append(section)
            continue
        if not int(attrs.get("complete", 1)):
            raise RunFolderError(
                f"{path} is from a failed run of this config (complete = 0: "
                f"{attrs.get('failure', 'no reason stored')}); the run stopped there and "
                "nothing after it was computed. Change the config as the failure says and "
                "rerun with --force (which recomputes every section), or choose another --out")
        status[section] = (path, "up to date")
    if todo or force:  # new data: what was derived from the old files is stale
        remove += [out / n for n in DERIVED] + [out / "figures" / n for n in FIGURE_NAMES]
    # only mfpc's own files: a user's report.md or figures/loss.png stays
    return todo, status, [p for p in remove if p.exists()
                          and man.owns(p.relative_to(out).as_posix())]


def remove_stale(out, paths):
    """Delete ``paths`` (from :func:`plan_run`; only files on the manifest are deleted)
    and ``out/figures`` if mfpc created it and it is left empty."""
    out = Path(out)
    remove_owned(out, [Path(p).relative_to(out).as_posix() for p in paths])
    figures = out / "figures"
    man = Manifest.load(out)
    if (man is not None and "figures" in man.dirs and figures.is_dir()
            and not figures.is_symlink() and not any(figures.iterdir())):
        figures.rmdir()
        man.dirs.discard("figures")
        man.save()


def _check_digest(path, ds):
    """Refuse a file whose data or config no longer match the digest mfpc wrote in it
    (``attrs["data_sha256"]``, :func:`particles.engine.results.data_digest`)."""
    from particles.engine.results import data_digest

    stored = ds.attrs.get("data_sha256")
    if stored is not None and data_digest(ds) != str(stored):
        raise RunFolderError(
            f"{path} was changed after mfpc wrote it: its data or config no longer match the "
            "digest written with them (attrs data_sha256); its numbers cannot be trusted. "
            f"Rerun its config with `mfpc run CONFIG --out {path.parent} --force`")


def read_run(out):
    """Read the run files of ``out`` for ``mfpc report``.

    Returns
    -------
    data : dict
        ``{section: Dataset or None}`` (``particles`` required).
    notes : list of str
        Missing optional files.
    identity : dict
        ``run_id`` and ``incomplete``: ``[(file name, failure)]`` of files with
        ``complete = 0``.

    Raises
    ------
    FileNotFoundError
        No ``particles.nc``.
    RunFolderError
        A file is damaged, not written by mfpc, or the files come from different runs.
    """
    out = Path(out)
    data, notes, ids, incomplete = {}, [], {}, []
    for section, name in RUN_FILES.items():
        path = out / name
        if not path.exists():
            if section == "particles":
                raise FileNotFoundError(f"{path} does not exist; run `mfpc run CONFIG --out "
                                        f"{out}` first")
            notes.append(f"{name} is missing: checks needing it are n.a.")
            data[section] = None
            continue
        try:
            ds = read_dataset(path)
        except Exception as e:  # noqa: BLE001 - any reading failure: the file is damaged
            raise RunFolderError(_damaged(path, e)) from None
        attrs = _identity(path, section, dict(ds.attrs))
        _check_digest(path, ds)
        ids[name] = attrs["run_id"]
        if not int(attrs.get("complete", 1)):
            incomplete.append((name, str(attrs.get("failure", "no reason stored"))))
        data[section] = ds
    if len(set(ids.values())) > 1:
        listed = ", ".join(f"{n} (run_id {i})" for n, i in ids.items())
        raise RunFolderError(
            f"{out} holds files of different runs: {listed}; report one run: rerun its "
            f"config with `mfpc run CONFIG --out {out} --force` (which removes the others)")
    return data, notes, {"run_id": ids["particles.nc"], "incomplete": incomplete}
