r"""Problem parts written in Python files and named by a config, and the identity of a problem.

A part table (``[problem.kernel]``, ``[problem.measure]``, ``[problem.target]``) with
``python = "FILE.py:NAME"`` builds its part by calling ``NAME`` (a class or a factory) of
``FILE.py``, with the table's other keys as keyword arguments; ``[problem] python =
"FILE.py:NAME"`` builds the whole :class:`~particles.problem.Problem` (the other keys of
``[problem]`` as keyword arguments). ``FILE`` is relative to the config file. ``python``
and ``kind`` exclude each other in one table.

Besides the table's keys, ``NAME`` receives these reserved keyword arguments when its
signature accepts them (by name, or through ``**kwargs``; a table key of the same name is
refused):

============  ===========================================================================
part          reserved keyword arguments
============  ===========================================================================
measure       ``d`` (``[problem] d``, absent if not given), ``rng`` (the nodes' generator
              of ``[problem] seed``, :func:`particles.presets.problem_rngs`)
kernel        ``d`` (the measure's dimension), ``rng`` (the target's generator of
              ``[problem] seed``)
target        ``d``, ``measure``, ``kernel``, ``rng`` (the target's generator of
              ``[problem.target] seed`` or ``[problem] seed``)
problem       ``rng`` (the target's generator of ``[problem] seed``)
============  ===========================================================================

Every Python part implements ``params()`` (a dict of JSON numbers, strings, lists): its
identity, hashed into the run's identity with the SHA-256 of its file.

The file is imported by path (:func:`importlib.util.spec_from_file_location`, a module
name made of the file's hash), never from ``sys.path``; the bytes hashed are the bytes
executed. Every error raised while the file is imported or ``NAME`` is called, and a part
that does not answer a small probe (φ of the wrong shape, NaN, not an array), is a
:class:`~particles.engine.config.ConfigError` naming the file and its line (``mfpc`` exits
2), before any work.

Workers of a sweep import the same file by path and check its hash first; a remote worker
receives the file's bytes with its task (:func:`shipping`).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import re
import sys
import threading
import traceback
from pathlib import Path

import numpy as np

from particles.engine.config import ConfigError

__all__ = ["sha256_file", "file_record", "load", "build_part", "build_user_problem",
           "probe_kernel", "probe_measure", "probe_target", "part_identity",
           "problem_identity", "problem_files", "ship", "shipping", "RESERVED"]

#: reserved keyword arguments of each part (module docstring)
RESERVED = {"measure": ("d", "rng"), "kernel": ("d", "rng"),
            "target": ("d", "measure", "kernel", "rng"), "problem": ("rng",)}

#: ``{absolute path: (sha256, bytes or None)}`` of the files a sweep's tasks expect
#: (:func:`shipping`): bytes given (a remote worker) are executed instead of the disk's
_EXPECTED: dict = {}
_LOCK = threading.Lock()
#: ``(path, sha256) -> module``: each version of a file is executed once a process
_MODULES: dict = {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    """The SHA-256 of a file's contents (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path) -> dict:
    """``{"path": absolute path, "sha256": hash}`` of a data file (refused if unreadable
    by the caller, which reads it)."""
    p = Path(path).resolve()
    return {"path": str(p), "sha256": sha256_file(p)}


@contextlib.contextmanager
def shipping(files):
    """Expect ``files`` while building parts in this process: ``{path: {"sha256", and
    optionally "source": bytes}}`` (a sweep's task). A file whose hash differs is refused;
    shipped bytes are executed instead of reading the path."""
    with _LOCK:
        for path, rec in (files or {}).items():
            _EXPECTED[str(path)] = (rec["sha256"], rec.get("source"))
    yield


def ship(files, with_bytes=False) -> dict:
    """What a sweep's task carries of the Python files of ``files`` (``{role: {"path",
    "sha256"}}``): ``{path: {"sha256"}}``, with the file's bytes (``"source"``) for remote
    workers; the bytes are checked against the hash the run has."""
    out = {}
    for role, rec in (files or {}).items():
        if not role.endswith(".python") or not isinstance(rec, dict):
            continue
        entry = {"sha256": rec["sha256"]}
        if with_bytes:
            data, _ = _read(Path(rec["path"]), role, rec["path"])
            if sha256_bytes(data) != rec["sha256"]:
                raise ConfigError(f"{role}: {rec['path']} changed while the run started; "
                                  "run again")
            entry["source"] = data
        out[rec["path"]] = entry
    return out


def _where_line(path, tb) -> int | None:
    """The line of the last frame of ``tb`` in the file ``path``."""
    line = None
    for fr in traceback.extract_tb(tb):
        if fr.filename == str(path):
            line = fr.lineno
    return line


def user_location(e) -> str | None:
    """``FILE:LINE`` of the last frame of exception ``e`` in a user's Python part loaded
    here, or None: an error raised by the user's code while a run calls it (the frames of a
    worker process come as the text of its traceback, ``e.__cause__``)."""
    paths = {p for p, _ in _MODULES}
    where = None
    for fr in traceback.extract_tb(e.__traceback__):
        if fr.filename in paths:
            where = f"{fr.filename}:{fr.lineno}"
    cause = getattr(e, "__cause__", None)
    text = getattr(cause, "tb", None)  # concurrent.futures' _RemoteTraceback
    if isinstance(text, str):
        for path, line in re.findall(r'File "([^"]+)", line (\d+)', text):
            if path in paths:
                where = f"{path}:{line}"
    return where


def _user_error(info, what, e) -> ConfigError:
    """A ConfigError for exception ``e`` raised by the user's file while ``what``."""
    path = info["path"]
    if isinstance(e, SyntaxError) and e.filename == path:
        line = e.lineno
    else:
        line = _where_line(path, e.__traceback__)
    at = f"{path}:{line}" if line else f"{path} ({info['spec']})"
    return ConfigError(f"{info['key']} = {info['spec']!r}: {at}: {what} raised "
                       f"{type(e).__name__}: {e}; fix {Path(path).name}")


@contextlib.contextmanager
def _reported(info, what):
    """Any exception inside is the user file's error (module docstring)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - whatever the user's code raises
        raise _user_error(info, what, e) from None


def _read(path: Path, key, spec) -> tuple[bytes, str]:
    """The bytes to execute and their hash: the shipped ones, or the file's (checked
    against the expected hash when the sweep gave one)."""
    exp = _EXPECTED.get(str(path))
    if exp is not None and exp[1] is not None:
        return exp[1], exp[0]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{key} = {spec!r}: cannot read {path} ({e.strerror or e}); give "
                          "the path of a Python file relative to the config file") from None
    sha = sha256_bytes(data)
    if exp is not None and exp[0] != sha:
        raise ConfigError(f"{key} = {spec!r}: {path} changed since the run started (SHA-256 "
                          f"{sha[:16]}..., the run has {exp[0][:16]}...); rerun the config")
    return data, sha


def load(spec, base, key):
    """``NAME`` of ``FILE.py`` for ``spec = "FILE.py:NAME"`` (FILE relative to ``base``).

    Returns
    -------
    obj : object
        The class or factory.
    info : dict
        ``key``, ``spec``, ``path`` (absolute), ``sha256``, ``name``, ``line`` (where
        ``NAME`` is defined, if known).
    """
    if not isinstance(spec, str) or spec.count(":") < 1 or not spec.rsplit(":", 1)[1]:
        raise ConfigError(f"{key} = {spec!r}: expected \"FILE.py:NAME\" (a class or factory "
                          "NAME in the Python file FILE.py, relative to the config file)")
    file, name = spec.rsplit(":", 1)
    if not file.endswith(".py"):
        raise ConfigError(f"{key} = {spec!r}: {file!r} is not a .py file; expected "
                          "\"FILE.py:NAME\"")
    path = Path(file)
    if not path.is_absolute():
        path = Path(base) / path
    path = path.resolve()
    if str(path) not in _EXPECTED and not path.is_file():
        raise ConfigError(f"{key} = {spec!r}: no such file {path}; FILE is relative to the "
                          "config file")
    data, sha = _read(path, key, spec)
    info = {"key": key, "spec": spec, "path": str(path), "sha256": sha, "name": name}
    mod = _MODULES.get((str(path), sha))
    if mod is None:
        modname = f"mfpc_user_{sha[:20]}"
        mspec = importlib.util.spec_from_file_location(modname, path)
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[modname] = mod  # dataclasses and pickling look classes up here
        try:
            with _reported(info, "importing the file"):
                exec(compile(data, str(path), "exec"), mod.__dict__)  # noqa: S102
        except ConfigError:
            sys.modules.pop(modname, None)
            raise
        _MODULES[(str(path), sha)] = mod
    obj = getattr(mod, name, None)
    if obj is None or not callable(obj):
        have = sorted(k for k, v in vars(mod).items() if callable(v) and not k.startswith("_")
                      and getattr(v, "__module__", None) == mod.__name__)
        raise ConfigError(f"{key} = {spec!r}: {path} defines no class or function {name!r}"
                          f"{'' if obj is None else ' (it is not callable)'}; it defines "
                          f"{have or 'none'}")
    with contextlib.suppress(TypeError, OSError):
        info["line"] = inspect.getsourcelines(obj)[1]
    return obj, info


def _accepts(obj) -> tuple[set, bool]:
    """The keyword names ``obj`` accepts and whether it takes ``**kwargs``."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in sig.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _call(obj, info, kwargs, reserved, what):
    """``obj(**kwargs, **the accepted reserved ones)``; errors are the file's."""
    clash = sorted(set(kwargs) & set(reserved))
    if clash:
        raise ConfigError(f"{info['key'].rsplit('.', 1)[0]}: key(s) {clash} are reserved "
                          f"(mfpc passes them to {info['name']}); rename them")
    names, var = _accepts(obj)
    extra = {k: v for k, v in reserved.items() if var or k in names}
    if not var:
        unknown = sorted(set(kwargs) - names)
        if unknown:
            line = f":{info['line']}" if info.get("line") else ""
            raise ConfigError(
                f"{info['key'].rsplit('.', 1)[0]}: key(s) {unknown} are not parameters of "
                f"{info['name']} ({info['path']}{line}), which takes "
                f"{sorted(names - set(RESERVED_ALL)) or 'none'}; drop them")
    with _reported(info, f"{what} {info['name']}(...)"):
        return obj(**kwargs, **extra)


RESERVED_ALL = sorted({k for v in RESERVED.values() for k in v})


def _params(part, info):
    """``part.params()``, checked: a dict that JSON can write."""
    fn = getattr(part, "params", None)
    line = f":{info['line']}" if info.get("line") else ""
    owner = next((c for c in type(part).__mro__ if "params" in vars(c)), None)
    mine = type(part).__module__.startswith("mfpc_user_")
    if mine and owner is not None and not owner.__module__.startswith("mfpc_user_"):
        raise ConfigError(f"{info['key']} = {info['spec']!r}: {type(part).__name__} "
                          f"({info['path']}{line}) inherits params() from "
                          f"{owner.__module__}.{owner.__qualname__}; define params() in "
                          "your class: it returns the part's parameters (its identity)")
    if not callable(fn):
        raise ConfigError(f"{info['key']} = {info['spec']!r}: {info['name']} "
                          f"({info['path']}{line}) has no method params(); a Python part "
                          "returns its parameters (its identity) from params()")
    with _reported(info, f"{info['name']}.params()"):
        p = fn()
    try:
        if not isinstance(p, dict):
            raise TypeError(f"a {type(p).__name__}")
        json.dumps(_jsonable(p))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{info['key']} = {info['spec']!r}: {info['name']}.params() "
                          f"({info['path']}) must return a dict of numbers, strings and lists,"
                          f" got {e}") from None
    return p


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"a value of type {type(v).__name__} ({v!r})")


def build_part(role, table, base, reserved):
    """The part ``role`` ("kernel", "measure", "target") of ``[problem.<role>]`` with
    ``python``; ``reserved``: the reserved keyword arguments available (module docstring).
    The part gets ``mfpc_source`` (the file's record) and is checked to have params()."""
    key = f"problem.{role}.python"
    obj, info = load(table["python"], base, key)
    kwargs = {k: v for k, v in table.items() if k != "python"}
    part = _call(obj, info, kwargs, reserved, "building the part:")
    _params(part, info)
    _tag(part, info)
    return part, info


def _tag(part, info):
    with contextlib.suppress(AttributeError, TypeError):
        part.mfpc_source = {"path": info["path"], "sha256": info["sha256"],
                            "spec": info["spec"], "key": info["key"]}


def build_user_problem(problem_cfg, base, rng):
    """The Problem of ``[problem] python = "FILE.py:NAME"``; its parts must have params()."""
    from particles.problem import Problem

    key = "problem.python"
    obj, info = load(problem_cfg["python"], base, key)
    # [problem] seed makes rng (passed on only where NAME takes it); description is a label
    names, var = _accepts(obj)
    kwargs = {k: v for k, v in problem_cfg.items() if k not in ("python", "description")
              and (k != "seed" or var or "seed" in names)}
    problem = _call(obj, info, kwargs, {"rng": rng}, "building the problem:")
    if not isinstance(problem, Problem):
        raise ConfigError(f"{key} = {info['spec']!r}: {info['name']} returned a "
                          f"{type(problem).__name__}, not a particles.problem.Problem")
    for role in ("kernel", "measure", "target"):
        part = getattr(problem, role)
        _params(part, {**info, "name": f"the {role} ({type(part).__name__})"})
    _tag(problem, info)
    probe_kernel(problem.kernel, problem.measure, problem.y_law, info)
    return problem, info


# -- probes: a part that answers wrongly is refused before any work -------------------
def _bad_array(v, shape):
    """Why ``v`` is not a finite float array of ``shape`` ("" when it is)."""
    if not isinstance(v, np.ndarray):
        return f"a {type(v).__name__}, not a numpy array"
    if v.shape != tuple(shape):
        return f"an array of shape {v.shape}, expected {tuple(shape)}"
    if not np.issubdtype(v.dtype, np.number):
        return f"an array of dtype {v.dtype}, not numbers"
    if not np.all(np.isfinite(v)):
        return f"{int(np.sum(~np.isfinite(v)))} non-finite value(s) (NaN or inf)"
    return ""


def _refuse_probe(info, what, why):
    line = f":{info['line']}" if info.get("line") else ""
    raise ConfigError(f"{info['key']} = {info['spec']!r}: {what} ({info['path']}{line}) "
                      f"returned {why}; fix {Path(info['path']).name}")


def probe_kernel(kernel, measure, y_law, info, n=2, Q=3):
    """Evaluate φ and ∇_yφ once on ``Q`` of the measure's nodes and ``n`` units of the
    initial law (a fixed generator): refuse shapes other than (n, Q) and (n, Q, N),
    non-arrays and non-finite values."""
    x = np.asarray(measure.nodes, float)[:Q]
    rng = np.random.default_rng(0)
    with _reported(info, "drawing probe units from the initial law for"):
        y = kernel.retract(np.asarray(y_law.sample(rng, n), float))
    q = len(x)
    with _reported(info, "phi(x, y) of"):
        p = kernel.phi(x, y)
    why = _bad_array(p, (n, q))
    if why:
        _refuse_probe(info, f"phi(x (Q={q}, d), y (n={n}, N))", why)
    with _reported(info, "phi_grad(x, y) of"):
        pg = kernel.phi_grad(x, y)
    if not isinstance(pg, tuple) or len(pg) != 2:
        _refuse_probe(info, "phi_grad(x, y)", f"{type(pg).__name__}, not a tuple (phi, grad)")
    for v, shape, what in ((pg[0], (n, q), "phi_grad(x, y)[0]"),
                           (pg[1], (n, q, kernel.N), "phi_grad(x, y)[1]")):
        why = _bad_array(v, shape)
        if why:
            _refuse_probe(info, what, why)


def probe_measure(measure, info):
    """Refuse nodes other than a finite (Q, d) array and weights other than (Q,)."""
    nodes = getattr(measure, "nodes", None)
    if not isinstance(nodes, np.ndarray) or nodes.ndim != 2:
        _refuse_probe(info, "the measure's nodes", f"{type(nodes).__name__} "
                      f"{getattr(nodes, 'shape', '')}, not an array (Q, d)")
    for v, shape, what in ((nodes, nodes.shape, "the measure's nodes"),
                           (getattr(measure, "weights", None), (len(nodes),),
                            "the measure's weights")):
        why = _bad_array(v, shape)
        if why:
            _refuse_probe(info, what, why)


def probe_target(target, measure, info):
    """Refuse f(nodes) other than a finite array (Q,)."""
    with _reported(info, "f(nodes) of"):
        f = target(measure.nodes)
    why = _bad_array(f, (len(measure.nodes),))
    if why:
        _refuse_probe(info, "f(nodes)", why)


# -- identity -------------------------------------------------------------------------
#: params longer than this (as JSON) enter the identity as their hash
_INLINE = 2000


def _digest(a) -> str:
    """16 hex digits of the SHA-256 of an array's values rounded to float32 (the same
    values however they were summed; a last-bit difference of float64 sums stays hidden)."""
    a = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def part_identity(part) -> dict:
    """``{"type", "params", ("source")}``: the part's class, its params() (their hash if
    long; ``path`` left out: the file's hash stands for it) and its Python file's hash."""
    t = type(part)
    src = getattr(part, "mfpc_source", None)
    out = {"type": src["spec"] if src else f"{t.__module__}.{t.__qualname__}"}
    fn = getattr(part, "params", None)
    try:
        p = _jsonable(fn()) if callable(fn) else {}
    except Exception:  # noqa: BLE001 - a part without usable params: its type only
        p = {}
    if isinstance(p, dict):
        p.pop("path", None)
    text = json.dumps(p, sort_keys=True)
    out["params"] = p if len(text) <= _INLINE else {"sha256": sha256_bytes(text.encode())}
    if src:
        out["source_sha256"] = src["sha256"]
    return out


def problem_identity(problem) -> dict:
    """What runs: each part's :func:`part_identity`, the initial laws' params, a digest
    of the nodes, weights and target values, and the hashes of the files the problem
    read (``problem.mfpc_files``: role -> record)."""
    ident = {r: part_identity(getattr(problem, r)) for r in ("kernel", "measure", "target")}
    for r in ("y_law", "c_law"):
        ident[r] = part_identity(getattr(problem, r))
    src = getattr(problem, "mfpc_source", None)
    if src:
        ident["problem"] = {"type": src["spec"], "source_sha256": src["sha256"]}
    ident["values"] = {"nodes": _digest(problem.x), "weights": _digest(problem.w),
                       "f": _digest(problem.f_x)}
    files = problem_files(problem)
    if files:
        ident["files"] = {role: rec["sha256"] for role, rec in files.items()}
    return ident


def problem_files(problem) -> dict:
    """``{role: {"path", "sha256"}}`` of every file the problem was built from (Python
    parts and data files)."""
    files = dict(getattr(problem, "mfpc_files", None) or {})
    for owner in (problem, problem.kernel, problem.measure, problem.target):
        src = getattr(owner, "mfpc_source", None)
        if src:
            files[src["key"]] = {"path": src["path"], "sha256": src["sha256"]}
    return files
