"""Mutated example configs never give a traceback.

Hypothesis mutates the shipped example configs, shrunk so that an unmutated one runs in
about a second: values (edge integers, edge floats, strings, booleans, lists, tables),
deleted and added keys, nested tables. ``mfpc run`` must return 0, 2 or 3, never raise,
and finish within :data:`BUDGET` seconds (a SIGALRM stops a case that does not: the
refusals of analysis.run.budget must come before any work).
"""
import copy
import signal
import tomllib
from unittest import mock
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from analysis.run import budget
from analysis.cli import main

from .test_cli import write_toml

ROOT = Path(__file__).resolve().parents[2]
#: seconds a case may take: an unmutated shrunk example takes ~1 s on one core; a
#: mutation may at most double the steps or the sizes of the shrunk configs, or be refused
BUDGET = 8.0
EXAMPLES = ("circle", "gaussian_line", "sphere_3spin", "sigmoid_teacher")


def shrunk(name):
    """The example ``name`` with small sizes: few particles, nodes, steps and cells."""
    cfg = tomllib.loads((ROOT / "examples" / f"{name}.toml").read_text())
    p = cfg["problem"]
    if "nodes" in p:
        p["nodes"] = 64
    if p.get("d", 0) > 3:
        p["d"] = 3
    cfg["dynamics"].update(t_end=0.2, save_times=[0.0, 0.1, 0.2], dt=0.05)
    if "temperature" in cfg["dynamics"]:
        cfg["dynamics"]["temperature"] = [[0.0, 1e-3], [0.1, 0.0]]
    if "batch" in cfg["dynamics"]:
        cfg["dynamics"]["batch"] = [[0.0, 4], [0.1, 8]]
    cfg["particles"].update(n=[4, 8], seeds=2)
    if "meanfield" in cfg:
        g = cfg["meanfield"].setdefault("grid", {})
        g.update(y=64 if name == "circle" else 96, c=32)
        cfg["meanfield"]["characteristics"] = {"y": 8, "c": 4}
    if "fluctuations" in cfg:
        cfg["fluctuations"].update(y=6, c=4, members=4)
    return cfg


def test_shrunk_examples_run(tmp_path):
    """The starting points run (exit 0), so that a mutation is what makes a case differ."""
    for name in EXAMPLES:
        write_toml(tmp_path / f"{name}.toml", shrunk(name))
        assert main(["run", str(tmp_path / f"{name}.toml"), "--out", str(tmp_path / name),
                     "--no-progress"]) == 0, name


def _paths(t, prefix=()):
    """Every key path of a config (tables included)."""
    out = []
    for k, v in t.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out += _paths(v, prefix + (k,))
    return out


EDGE = st.sampled_from([0, -1, 1, 2, 2**62, 10**9, 0.0, -1.0, 1e-300, 1e300,
                        float("nan"), float("inf"), -float("inf"), True, False, "", "gd",
                        "circle", "x" * 40, [], [0], [8, 8], [[0.0, 1.0]], {}, {"kind": "circle"},
                        {"law": "normal"}])
VALUES = st.recursive(
    EDGE | st.integers(-3, 300) | st.floats(-10, 10, allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["kind", "law", "y", "c", "n", "low", "high", "x"]),
                      inner, max_size=3),
    max_leaves=6)
KEYS = st.sampled_from(["kind", "n", "seeds", "dt", "t_end", "law", "std", "low", "high",
                        "nodes", "y", "c", "grid", "solvers", "method", "batch",
                        "temperature", "file", "kappa", "members", "zzz", "target"])


@st.composite
def mutations(draw):
    name = draw(st.sampled_from(EXAMPLES))
    cfg = shrunk(name)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(cfg)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = cfg
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["value", "value", "value", "delete", "add", "add_table"]))
        # values are copied: sampled_from hands out the same list or table every time
        if op == "value":
            parent[path[-1]] = copy.deepcopy(draw(VALUES))
        elif op == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
            target[draw(KEYS)] = copy.deepcopy(draw(VALUES) if op == "add" else
                                               {draw(KEYS): draw(VALUES)})
    return name, cfg


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(case=mutations())
def test_mutated_configs_never_raise(tmp_path_factory, case):
    name, cfg = case
    d = tmp_path_factory.mktemp("m")
    try:
        write_toml(d / "c.toml", cfg)
    except (TypeError, ValueError):  # a value the test's TOML writer cannot spell
        reject()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, BUDGET)
    try:
        # the same refusals on every machine: 4 GiB available (what fits in 4 GiB runs
        # within the budget on the shrunk configs; the real memory is tested elsewhere)
        with mock.patch.object(budget, "available_memory", lambda: 4 * 2**30):
            rc = main(["run", str(d / "c.toml"), "--out", str(d / "out"), "--no-progress"])
    except _Timeout:
        pytest.fail(f"mfpc run took more than {BUDGET} s on {name}: {cfg!r}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert rc in (0, 2, 3), (rc, cfg)


def _set(cfg, path, value):
    t = cfg
    for k in path[:-1]:
        t = t[k]
    t[path[-1]] = value
    return cfg


#: tracebacks the mutations found, each now an exit 2 naming the key or a run (0 or 3)
FOUND = [
    ("gaussian_line", ("problem", "kernel", "sigma"), 1e-300, 2, "problem.kernel.sigma"),
    ("gaussian_line", ("problem", "kernel", "sigma"), 1e300, 2, "problem.kernel.sigma"),
    # a flat phi: the grid's step bound is finite but huge (ZeroDivisionError in the step)
    ("gaussian_line", ("problem", "kernel", "sigma"), 1000.0, 0, ""),
    ("circle", ("problem", "kappa"), 1e-300, 0, ""),
    ("gaussian_line", ("meanfield", "grid", "y_high"), [1e300], 2, "meanfield.grid.y_low"),
    ("gaussian_line", ("meanfield", "grid", "c_max"), 1e300, 2, "meanfield.grid.c_min"),
    # 4 d^3 coefficients: 32 GB (was built for minutes before)
    ("sphere_3spin", ("problem", "d"), 1000, 2, "problem.d"),
    # P = 1e9 batch points per step: 3 x 2 x 8 x 1e9 x 4 x 8 B = 1.5 TB
    ("sigmoid_teacher", ("dynamics", "batch"), 10**9, 2, "dynamics.batch"),
]


@pytest.mark.parametrize("name, path, value, code, key", FOUND)
def test_found_by_the_mutations(tmp_path, capsys, monkeypatch, name, path, value, code, key):
    monkeypatch.setattr(budget, "available_memory", lambda: 4 * 2**30)
    cfg = _set(shrunk(name), path, value)
    write_toml(tmp_path / "c.toml", cfg)
    rc = main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "out"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == code, err
    assert "Traceback" not in err
    if code == 2:
        assert key in err, err
        assert not (tmp_path / "out").exists()


# ----------------------------------------------------- part tables, data files, run folder
# Tiny configs (one n of 2 particles, one seed, one step, no saved units): a run takes
# ~0.2 s, almost all of it writing particles.nc; a refusal a few ms.
TINY_PARTS = {
    "line": {"kernel": {"kind": "gaussian", "sigma": 1.0},
             "measure": {"kind": "lebesgue", "low": [-3.0], "high": [3.0], "nodes": 8},
             "target": {"kind": "gaussian_mixture", "weights": [1.0], "centres": [[0.0]],
                        "sigmas": [0.5]}},
    "circle": {"kernel": {"kind": "circle", "kappa": 0.5},
               "measure": {"kind": "circle", "nodes": 24},
               "target": {"kind": "fourier", "cos": [0.0, 1.0]}},
    "sphere": {"kernel": {"kind": "sphere", "alpha": 1.0},
               "measure": {"kind": "sphere", "nodes": 8}, "target": {"kind": "3spin"}, "d": 3},
    "file": {"kernel": {"kind": "tanh"}, "measure": {"kind": "file", "path": "mu.nc"},
             "target": {"kind": "file", "path": "f.nc"}},
}
PART_KINDS = {"kernel": ["gaussian", "circle", "sphere", "tanh", "sigmoid", "relu", "x"],
              "measure": ["lebesgue", "circle", "sphere", "gaussian", "file", "x"],
              "target": ["gaussian_mixture", "fourier", "3spin", "teacher", "file", "x"]}
PART_KEYS = ["sigma", "kappa", "alpha", "nodes", "low", "high", "path", "cos", "sin", "units",
             "seed", "weights", "centres", "sigmas", "scale", "normalised", "kind", "zzz"]
PART_VALUES = (EDGE | st.sampled_from([1e-300, 1e300, -1e300, 1e200, [1e300], [-1e300],
                                       [float("nan")], [[0.0, 0.0]], [[1e300]], [0.0] * 40,
                                       "mu.nc", "f.nc", "missing.nc", "", 1, 3, 8, 1000])
               | st.floats(-1e3, 1e3, allow_nan=False) | st.integers(-5, 50))


def _in(parts, d):
    """``parts`` with the data file names (mu.nc, f.nc, missing.nc) as paths in ``d``."""
    if isinstance(parts, dict):
        return {k: _in(v, d) for k, v in parts.items()}
    if isinstance(parts, list):
        return [_in(v, d) for v in parts]
    return str(d / parts) if parts in ("mu.nc", "f.nc", "missing.nc") else parts


def tiny(parts, d=None):
    return {"problem": _in(copy.deepcopy(parts), d) if d is not None else copy.deepcopy(parts),
            "dynamics": {"scheme": "gd", "dt": 0.1, "t_end": 0.1, "save_times": [0.0, 0.1]},
            "particles": {"n": [2], "seeds": 1, "save_state": False}}


def _write_data(d, x=None, w=None, f=None):
    """mu.nc and f.nc of the file parts in folder ``d`` (good ones by default)."""
    import numpy as np
    import xarray as xr

    x = np.linspace(-1.0, 1.0, 5)[:, None] if x is None else x
    w = np.full(len(x), 0.4) if w is None else w
    f = np.zeros(len(x)) if f is None else f
    xr.Dataset({"x": (("x", "x_dim"), x), "weight": (("x",), w)}).to_netcdf(
        d / "mu.nc", engine="h5netcdf")
    xr.Dataset({"f": (("x",), f)}).to_netcdf(d / "f.nc", engine="h5netcdf")


def _run_case(d, cfg, *extra, out="out", command="run"):
    """``mfpc run`` (or report) under the budget's fixed memory and :data:`BUDGET`:
    exit code and stderr (a traceback fails the test: main raises)."""
    import contextlib
    import io

    err = io.StringIO()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, BUDGET)
    try:
        with mock.patch.object(budget, "available_memory", lambda: 4 * 2**30), \
                contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if command == "run":
                write_toml(d / "c.toml", cfg)
                rc = main(["run", str(d / "c.toml"), "--out", str(d / out), "--no-progress",
                           *extra])
            else:
                rc = main(["report", str(d / out), "--no-figures"])
    except _Timeout:
        pytest.fail(f"mfpc {command} took more than {BUDGET} s: {cfg!r}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return rc, err.getvalue()


def test_tiny_parts_run(tmp_path):
    """The starting points of the part mutations run (exit 0)."""
    _write_data(tmp_path)
    for name, parts in TINY_PARTS.items():
        rc, err = _run_case(tmp_path, tiny(parts, tmp_path), out=name)
        assert rc == 0, (name, err)


@st.composite
def part_mutations(draw):
    name = draw(st.sampled_from(sorted(TINY_PARTS)))
    parts = copy.deepcopy(TINY_PARTS[name])
    for _ in range(draw(st.integers(1, 3))):
        which = draw(st.sampled_from(["kernel", "measure", "target", "problem"]))
        op = draw(st.sampled_from(["kind", "value", "value", "delete", "add"]))
        table = parts if which == "problem" else parts.get(which)
        if not isinstance(table, dict):
            parts[which] = copy.deepcopy(draw(PART_VALUES)) if which != "problem" else {}
            continue
        if op == "kind" and which != "problem":
            table["kind"] = draw(st.sampled_from(PART_KINDS[which]))
        elif op == "delete" and table:
            del table[draw(st.sampled_from(sorted(table)))]
        else:
            keys = (sorted(table) if op == "value" and table else
                    PART_KEYS + (["d", "energy", "seed"] if which == "problem" else []))
            key = draw(st.sampled_from(keys))
            value = draw(PART_VALUES)
            if which == "problem" and key == "energy":
                value = draw(st.sampled_from(["interpolation", "data", value]))
            table[key] = copy.deepcopy(value)
    return name, parts


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(case=part_mutations())
def test_mutated_part_tables_never_raise(tmp_path_factory, case):
    name, parts = case
    d = tmp_path_factory.mktemp("p")
    _write_data(d)
    try:
        write_toml(d / "probe.toml", tiny(parts, d))
    except (TypeError, ValueError):
        reject()
    rc, err = _run_case(d, tiny(parts, d))
    assert rc in (0, 2, 3), (rc, parts, err)
    assert "Traceback" not in err
    if rc == 2:
        assert not (d / "out").exists(), err  # refused before any work


FLOATS = st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-300, 1e8, 1e9, 1e200, 1e300, -1e300,
                          float("nan"), float("inf"), -float("inf")])


@st.composite
def data_mutations(draw):
    import numpy as np

    Q, dim = draw(st.integers(1, 6)), draw(st.integers(1, 2))
    x = np.linspace(-1.0, 1.0, Q)[:, None] * np.ones(dim)
    w, f = np.full(Q, 1.0 / Q), np.zeros(Q)
    for arr in (x.reshape(-1), w, f):
        for _ in range(draw(st.integers(0, 2))):
            arr[draw(st.integers(0, arr.size - 1))] = draw(FLOATS)
    if draw(st.booleans()):
        with np.errstate(all="ignore"):
            w = w * draw(st.sampled_from([0.0, -1.0, 1e300, 1.0]))
    damage = draw(st.sampled_from(["none"] * 6 + ["garbage", "empty", "folder", "missing",
                                                  "no-weight", "x-3d", "f-short", "strings"]))
    return x, w, f, damage, draw(st.sampled_from(["mu.nc", "f.nc"]))


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=data_mutations())
def test_mutated_data_files_never_raise(tmp_path_factory, case):
    import numpy as np
    import xarray as xr

    x, w, f, damage, which = case
    d = tmp_path_factory.mktemp("d")
    with np.errstate(all="ignore"):
        _write_data(d, x, w, f)
    p = d / which
    if damage in ("garbage", "empty", "folder", "missing"):
        p.unlink()
        if damage == "garbage":
            p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 3)
        elif damage == "empty":
            p.write_bytes(b"")
        elif damage == "folder":
            p.mkdir()
    elif damage == "no-weight":
        xr.Dataset({"x": (("x", "x_dim"), x)}).to_netcdf(d / "mu.nc", engine="h5netcdf")
    elif damage == "x-3d":
        xr.Dataset({"x": (("x", "x_dim", "z"), x[..., None]), "weight": (("x",), w)}).to_netcdf(
            d / "mu.nc", engine="h5netcdf")
    elif damage == "f-short":
        xr.Dataset({"f": (("q",), f[:-1] if len(f) > 1 else np.zeros(3))}).to_netcdf(
            d / "f.nc", engine="h5netcdf")
    elif damage == "strings":
        xr.Dataset({"f": (("x",), np.array(["a"] * len(f)))}).to_netcdf(d / "f.nc",
                                                                       engine="h5netcdf")
    rc, err = _run_case(d, tiny(TINY_PARTS["file"], d))
    assert rc in (0, 2, 3), (rc, damage, err)
    assert "Traceback" not in err
    with np.errstate(all="ignore"):
        bad = any(not np.all(np.isfinite(a)) or np.abs(a).max() > 1e8 for a in (x, w, f)) \
            or (w < 0).any() or not w.sum() > 0
    if bad or damage != "none":  # refused naming the file, never run into a failure
        assert rc == 2, (damage, x, w, f, err)
    if rc == 2:
        assert "problem.measure.path" in err or "problem.target.path" in err or \
            "problem.kernel" in err, err
        assert not (d / "out").exists()


# The run folder's state: a finished run (tasks kept, as a run killed before its merge),
# then files damaged, replaced by folders (and folders by files), the lock, the manifest
# and the tasks' manifest garbled, files of the user's put where mfpc writes.
FOLDER_TARGETS = [".mfpc.lock", ".mfpc-manifest.json", "particles.nc", "tasks",
                  "tasks/sweep.json", "TASK", "report.md", "analysis.nc", "figures",
                  "figures/loss.png", "notes.txt", "tasks/todo.txt"]
FOLDER_OPS = ["delete", "garbage", "empty", "truncate", "json", "folder", "user"]
JSON_VALUES = st.sampled_from(["[1, 2]", '{"pid": "abc"}', '{"pid": null}', "{}", "null",
                               '{"pid": 1099511627776, "host": "h"}', '{"host": "h"}',
                               '{"mfpc": "run folder", "files": "x"}',
                               '{"mfpc": "run folder", "files": [], "tasks": [1]}',
                               '{"run_id": 3, "config": []}', '"text"', "1e999"])
#: the marker of a file of the user's (every one must survive, maybe moved aside)
USER = b"USER'S OWN "


@pytest.fixture(scope="module")
def finished_folder(tmp_path_factory):
    """A tiny finished run with its tasks kept, and its config (kept: the same run)."""
    from analysis.sweep import driver

    d = tmp_path_factory.mktemp("finished")
    cfg = tiny(TINY_PARTS["line"])
    with mock.patch.object(driver, "remove_task_files", lambda out: []):
        rc, err = _run_case(d, cfg)
    assert rc == 0, err
    return d / "out", cfg


@st.composite
def folder_mutations(draw):
    ops = [(draw(st.sampled_from(FOLDER_TARGETS)), draw(st.sampled_from(FOLDER_OPS)),
            draw(JSON_VALUES)) for _ in range(draw(st.integers(1, 3)))]
    command = draw(st.sampled_from(["run", "run", "force", "other", "report"]))
    return ops, command


def _user_contents(folder):
    return sorted(p.read_bytes() for p in folder.rglob("*")
                  if p.is_file() and p.read_bytes().startswith(USER))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(case=folder_mutations())
def test_mutated_run_folders_never_raise_or_lose_files(tmp_path_factory, finished_folder,
                                                       case):
    import shutil

    ops, command = case
    src, cfg = finished_folder
    d = tmp_path_factory.mktemp("f")
    out = d / "out"
    shutil.copytree(src, out)
    task = sorted(p.name for p in (out / "tasks").glob("*.npz"))[0]
    for i, (target, op, text) in enumerate(ops):
        p = out / (f"tasks/{task}" if target == "TASK" else target)
        if p.parent.exists() and not p.parent.is_dir():
            continue  # under a file (tasks/ made a file by an earlier op)
        if p.is_dir() and not p.is_symlink():
            if op in ("delete", "folder", "user"):
                continue  # a folder of the user's, or mfpc's tasks/: left to mfpc
            shutil.rmtree(p)
        elif p.exists() and op != "truncate":
            p.unlink()
        p.parent.mkdir(parents=True, exist_ok=True)
        if op == "garbage":
            p.write_bytes(bytes(range(256)) * 4)
        elif op == "empty":
            p.write_bytes(b"")
        elif op == "truncate" and p.is_file():
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif op == "json":
            p.write_text(text)
        elif op == "folder":
            p.mkdir()
            (p / "inside.txt").write_bytes(USER + f"{i} in a folder".encode())
        elif op == "user":
            p.write_bytes(USER + f"{i} {target}".encode())
    mine = _user_contents(out)
    other = copy.deepcopy(cfg)
    other["problem"]["kernel"]["sigma"] = 2.0
    if command == "report":
        rc, err = _run_case(d, cfg, command="report")
    else:
        rc, err = _run_case(d, other if command == "other" else cfg,
                            *(("--force",) if command in ("force", "other") else ()))
    assert rc in (0, 2, 3), (rc, ops, command, err)
    assert "Traceback" not in err
    assert _user_contents(out) == mine, (ops, command, err)  # nothing of the user's lost
