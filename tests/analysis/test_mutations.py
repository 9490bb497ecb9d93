"""Mutated example configs never give a traceback (issue 9).

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
