"""Hostile input gets a clear error before any work.

Each case runs ``mfpc run`` in-process on a small circle config with one mutation and
asserts exit 2, that the message names the key (or the file) and says what to do, and
that nothing is written: the output folder is never created.
"""
import copy
import tomllib
from pathlib import Path

import numpy as np
import pytest

from analysis.cli import main

from .test_cli import write_toml
from .test_preflight import circle as small  # the circle example, shrunk

ROOT = Path(__file__).resolve().parents[2]


def refused(tmp_path, capsys, cfg, *needles, config=None):
    """Run ``cfg`` (or the file ``config``); assert exit 2, nothing written, and every
    needle in the message. Returns the message."""
    if config is None:
        config = tmp_path / "c.toml"
        write_toml(config, cfg)
    out = tmp_path / "out"
    rc = main(["run", str(config), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("mfpc: error: "), err
    for n in needles:
        assert n in err, (n, err)
    assert not out.exists(), "nothing may be written for a refused config"
    return err


def accepted(tmp_path, cfg):
    """Run ``cfg`` into a fresh folder; assert exit 0."""
    i = len(list(tmp_path.glob("ok*.toml")))
    write_toml(tmp_path / f"ok{i}.toml", cfg)
    assert main(["run", str(tmp_path / f"ok{i}.toml"), "--out", str(tmp_path / f"ok{i}"),
                 "--no-progress"]) == 0


def mutate(path, value):
    cfg = small()
    t = cfg
    for k in path[:-1]:
        t = t.setdefault(k, {})
    if value is None:
        del t[path[-1]]
    else:
        t[path[-1]] = value
    return cfg


# -- 1. a wrong type where a name is expected -------------------------------------------
NAME_KEYS = [("problem", "kind"), ("dynamics", "scheme"), ("dynamics", "integrator"),
             ("dynamics", "form"), ("fluctuations", "method"),
             ("meanfield", "grid", "potential"), ("init", "c", "law")]


@pytest.mark.parametrize("path", NAME_KEYS, ids=".".join)
@pytest.mark.parametrize("value", [["circle"], {"a": 1}, 3, True], ids=repr)
def test_name_of_wrong_type(tmp_path, capsys, path, value):
    refused(tmp_path, capsys, mutate(path, value), ".".join(path), "expected a name")


@pytest.mark.parametrize("solvers, key", [([["grid"]], "meanfield.solvers[0]"),
                                          ([{"a": 1}], "meanfield.solvers[0]"),
                                          ({"a": "grid"}, "meanfield.solvers")])
def test_solvers_of_wrong_type(tmp_path, capsys, solvers, key):
    refused(tmp_path, capsys, mutate(("meanfield", "solvers"), solvers), key)


def test_part_kinds_of_wrong_type(tmp_path, capsys):
    cfg = tomllib.loads((ROOT / "examples" / "gaussian_line.toml").read_text())
    for part in ("kernel", "measure", "target"):
        bad = copy.deepcopy(cfg)
        bad["problem"][part]["kind"] = [bad["problem"][part]["kind"]]
        refused(tmp_path, capsys, bad, f"problem.{part}.kind", "expected a name")
        bad["problem"][part]["kind"] = {"kind": "x"}
        refused(tmp_path, capsys, bad, f"problem.{part}.kind", "expected a name")
    bad = copy.deepcopy(cfg)
    bad["init"]["y"]["law"] = ["uniform"]
    refused(tmp_path, capsys, bad, "init.y.law", "expected a name")


# -- 2. a config that is not UTF-8, or unreadable ---------------------------------------
def _text(cfg, tmp_path):
    write_toml(tmp_path / "ok.toml", cfg)
    return (tmp_path / "ok.toml").read_text()


@pytest.mark.parametrize("kind", ["binary", "utf16", "latin1_comment"])
def test_config_not_utf8(tmp_path, capsys, kind):
    text = _text(small(), tmp_path)
    raw = {"binary": bytes(range(256)) * 4,
           "utf16": text.encode("utf-16"),
           "latin1_comment": ("# caf\u00e9 au lait\n" + text).encode("latin-1")}[kind]
    path = tmp_path / "bad.toml"
    path.write_bytes(raw)
    refused(tmp_path, capsys, None, str(path), "not UTF-8", "save it as UTF-8", config=path)


def test_config_unreadable(tmp_path, capsys, monkeypatch):
    """We run as root, so a chmod does not deny the read: the open raises instead."""
    path = tmp_path / "c.toml"
    write_toml(path, small())
    real_open = open

    def deny(file, *a, **k):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    refused(tmp_path, capsys, None, str(path), "Permission denied", "permissions",
            config=path)


def test_config_missing_or_a_folder(tmp_path, capsys):
    refused(tmp_path, capsys, None, "nope.toml", "does not exist",
            config=tmp_path / "nope.toml")
    (tmp_path / "dir.toml").mkdir()
    refused(tmp_path, capsys, None, "dir.toml", "not a file", config=tmp_path / "dir.toml")


# -- 5. repeated values in lists that must be distinct ----------------------------------
@pytest.mark.parametrize("path, value, key", [
    (("particles", "n"), [8, 8], "particles.n"),
    (("particles", "n"), [8, 16, 8], "particles.n"),
    (("dynamics", "save_times"), [0.0, 0.2, 0.2], "dynamics.save_times"),
    (("meanfield", "solvers"), ["grid", "grid"], "meanfield.solvers"),
])
def test_repeated_values(tmp_path, capsys, path, value, key):
    err = refused(tmp_path, capsys, mutate(path, value), key, "repeated value")
    # the hint (each value once) is a value that works
    hint = list(dict.fromkeys(value))
    assert str(hint) in err
    accepted(tmp_path, mutate(path, hint))


# -- 6. keys that would be accepted and ignored -----------------------------------------
@pytest.mark.parametrize("key, value, scheme", [("batch", 4, "gd"), ("temperature", 0.1, "gd"),
                                                ("batch", 4, "langevin"),
                                                ("temperature", 0.1, "sgd")])
def test_scheme_keys_that_do_not_apply(tmp_path, capsys, key, value, scheme):
    cfg = small()
    del cfg["meanfield"], cfg["fluctuations"]
    cfg["dynamics"].update(scheme=scheme, integrator="euler")
    cfg["dynamics"].update({"sgd": {"batch": 4}, "langevin": {"temperature": 0.1}}.get(scheme, {}))
    cfg["dynamics"][key] = value
    refused(tmp_path, capsys, cfg, f"dynamics.{key}", f"scheme = {scheme!r}")


@pytest.mark.parametrize("law, extra", [
    ({"law": "uniform", "low": -1.0, "high": 1.0}, {"std": 1.0}),
    ({"law": "uniform", "low": -1.0, "high": 1.0}, {"mean": 0.0}),
    ({"law": "normal"}, {"low": -1.0}),
    ({"law": "constant", "value": 1.0}, {"std": 1.0}),
])
def test_c_law_keys_that_do_not_apply(tmp_path, capsys, law, extra):
    cfg = small()
    del cfg["meanfield"], cfg["fluctuations"]
    cfg["init"]["c"] = {**law, **extra}
    refused(tmp_path, capsys, cfg, "init.c", repr(next(iter(extra))), "do not apply")


def test_y_law_keys_that_do_not_apply(tmp_path, capsys):
    cfg = tomllib.loads((ROOT / "examples" / "gaussian_line.toml").read_text())
    cfg["init"]["y"]["std"] = 1.0
    refused(tmp_path, capsys, cfg, "init.y", "'std'", "do not apply")
    cfg = small()
    cfg["init"]["y"] = {"law": "uniform", "low": [0.0], "high": [1.0]}
    refused(tmp_path, capsys, cfg, "init.y")


def test_init_file_without_particles(tmp_path, capsys):
    cfg = small()
    del cfg["particles"]
    cfg["init"]["file"] = "init.nc"
    refused(tmp_path, capsys, cfg, "init.file", "no [particles]")


# -- 4. an init file that cannot start a run --------------------------------------------
def _init_file(path, y, c, ydims=("member", "particle")):
    import xarray as xr

    from analysis.store.io import write_dataset

    write_dataset(xr.Dataset({"y": (ydims, np.asarray(y, float)),
                              "c": (("member", "particle"), np.asarray(c, float))}), path)


def _with_init(tmp_path, y, c, ydims=("member", "particle")):
    _init_file(tmp_path / "init.nc", y, c, ydims)
    cfg = small()
    cfg["init"]["file"] = "init.nc"
    cfg["particles"] = {}
    return cfg


def _good(S=2, n=5):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 2 * np.pi, (S, n)), rng.uniform(-1, 1, (S, n))


def test_init_file_good_one_runs(tmp_path):
    """The reference the bad files below are made from: it runs (so a test can fail)."""
    accepted(tmp_path, _with_init(tmp_path, *_good()))


def test_init_file_4d_y(tmp_path, capsys):
    y, c = _good()
    cfg = _with_init(tmp_path, y[..., None, None], c, ("member", "particle", "y_dim", "z"))
    refused(tmp_path, capsys, cfg, "init.file='init.nc'", "expected y(member, particle")


@pytest.mark.parametrize("S, n", [(0, 5), (2, 0), (0, 0)])
def test_init_file_empty(tmp_path, capsys, S, n):
    cfg = _with_init(tmp_path, np.zeros((S, n)), np.zeros((S, n)))
    err = refused(tmp_path, capsys, cfg, "init.file='init.nc'", f"{S} member(s)",
                  f"{n} particle(s)")
    assert "particles.n" not in err  # the file is at fault, not a key the user did not give


@pytest.mark.parametrize("var", ["y", "c"])
@pytest.mark.parametrize("value, what", [(np.nan, "NaN or infinite"),
                                         (np.inf, "NaN or infinite"),
                                         (-np.inf, "NaN or infinite"),
                                         (1e200, "beyond")])
def test_init_file_bad_values(tmp_path, capsys, var, value, what):
    y, c = _good()
    (y if var == "y" else c)[1, 3] = value
    err = refused(tmp_path, capsys, _with_init(tmp_path, y, c), "init.file='init.nc'",
                  f"{var} has", what, "(1, 3)")
    assert "dynamics.dt" not in err


# -- 3. sizes that cannot fit, step counts that cannot finish ---------------------------
GiB = 2**30


@pytest.fixture
def eight_gib(monkeypatch):
    """A machine with 8 GiB available, whatever this one has (the refusals below need
    far more: each size is >= 40 GiB in the tally of analysis.run.budget)."""
    from analysis.run import budget

    monkeypatch.setattr(budget, "available_memory", lambda: 8 * GiB)


@pytest.mark.parametrize("path, value, key", [
    # (seeds, n, Q, N+1) pull-back: 3 x 2 x 1e9 x 64 x 2 x 8 B = 6 TiB
    (("particles", "n"), [10**9], "particles.n"),
    (("particles", "n"), [8, 2**62], "particles.n"),
    # 3 x 1e9 x 8 x 64 x 2 x 8 B = 23 TiB
    (("particles", "seeds"), 10**9, "particles.seeds"),
    # the nodes alone: 2 x 1e9 x (1 + 3) x 8 B = 60 GiB, refused before they are built
    (("problem", "quadrature"), 10**9, "problem.quadrature"),
    (("problem", "quadrature"), 2**62, "problem.quadrature"),
    # 14 cell arrays of 4e8 cells: 42 GiB
    (("meanfield", "grid"), {"y": 20000, "c": 20000, "c_min": -3.0, "c_max": 3.0},
     "meanfield.grid.y or meanfield.grid.c"),
    (("meanfield", "grid"), {"y": 2**62, "c": 48, "c_min": -3.0, "c_max": 3.0},
     "meanfield.grid.y"),
    # recorded forward states: 2 steps x 1e10 nodes x 2 x 8 B = 300 GiB
    (("fluctuations", "y"), 10**10, "fluctuations.y"),
])
def test_sizes_that_cannot_fit(tmp_path, capsys, eight_gib, path, value, key):
    import time

    start = time.perf_counter()
    err = refused(tmp_path, capsys, mutate(path, value), key, "of memory, more than the",
                  "8 GiB available")
    assert time.perf_counter() - start < 5.0  # refused before any work: no allocation
    assert "needs about" in err


def test_sizes_that_cannot_fit_this_machine(tmp_path, capsys):
    """The same refusal against the memory this machine really has (n = 1e9 needs TiB)."""
    refused(tmp_path, capsys, mutate(("particles", "n"), [10**9]), "particles.n",
            "available")
    refused(tmp_path, capsys, mutate(("meanfield", "grid"), {"y": 20000, "c": 20000}),
            "meanfield.grid.y")


def test_ensemble_members_that_cannot_fit(tmp_path, capsys, eight_gib):
    cfg = small()
    cfg["fluctuations"] = {"method": "ensemble", "members": 10**7}
    # 3 x 1e7 members x 64 x 48 cells x 8 B = 690 GiB
    refused(tmp_path, capsys, cfg, "fluctuations.members")


@pytest.mark.parametrize("kappa, hint", [(1e300, "problem.kappa <= "), (1e5, "problem.quadrature >= ")])
def test_kappa_beyond_the_quadrature(tmp_path, capsys, kappa, hint):
    err = refused(tmp_path, capsys, mutate(("problem", "kappa"), kappa), "problem.kappa",
                  hint)
    # the hint is a value that works
    value = float(err.split(hint)[1].split()[0].rstrip(";,"))
    key = ("problem", "kappa") if "kappa" in hint else ("problem", "quadrature")
    cfg = mutate(key, int(value) if key[1] == "quadrature" else value)
    if key[1] == "quadrature":
        cfg["problem"]["kappa"] = kappa
        cfg["particles"]["seeds"] = 1
    del cfg["meanfield"], cfg["fluctuations"]  # the grid then needs its own y (its hint)
    accepted(tmp_path, cfg)


@pytest.mark.parametrize("update, key", [
    ({"dt": 1e-300}, "dynamics.dt"),
    ({"t_end": 1e300, "save_times": [0.0, 1e300]}, "dynamics.t_end"),
    ({"dt": 1e-10}, "dynamics.dt"),  # 2e9 steps
])
def test_steps_that_cannot_finish(tmp_path, capsys, update, key):
    cfg = small()
    cfg["dynamics"].update(update)
    refused(tmp_path, capsys, cfg, key, "more than the 1e+09 that can finish")


def test_solver_steps_that_cannot_finish(tmp_path, capsys):
    cfg = small()
    cfg["fluctuations"]["dt"] = 1e-12
    refused(tmp_path, capsys, cfg, "fluctuations.dt", "steps")
    cfg = small()
    cfg["meanfield"]["solvers"] = ["characteristics"]
    cfg["meanfield"]["characteristics"] = {"y": 8, "c": 4, "dt": 1e-12}
    refused(tmp_path, capsys, cfg, "meanfield.characteristics.dt", "steps")


# -- 7. hints that work, messages that name config keys ---------------------------------
def _hint(err, key):
    """The number after ``key >= `` or ``key = `` in a message."""
    import re

    return re.search(re.escape(key) + r" >?= \[?(-?[\d.]+)", err).group(1)


@pytest.mark.parametrize("ny", [8, 16, 57])
def test_grid_y_hint_works(tmp_path, capsys, ny):
    """grid.y = 16 once said "use ny >= 57", and 57 was then refused with "use ny >= 61"."""
    err = refused(tmp_path, capsys, mutate(("meanfield", "grid", "y"), ny),
                  f"meanfield.grid.y={ny} does not resolve phi", "use meanfield.grid.y >= ")
    assert "phi_tol" not in err and "y_range" not in err  # not config keys
    hint = int(_hint(err, "use meanfield.grid.y"))
    assert hint > ny
    cfg = mutate(("meanfield", "grid", "y"), hint)
    del cfg["fluctuations"]
    accepted(tmp_path, cfg)


def test_c_range_hint_works(tmp_path, capsys):
    cfg = mutate(("meanfield", "grid", "c_min"), -1.0)
    err = refused(tmp_path, capsys, cfg, "outside the grid", "meanfield.grid.c_min/c_max to [",
                  "meanfield.grid.allow_truncation = true")
    assert "y_range" not in err and "allow_truncation=True" not in err
    lo, hi = (float(v) for v in err.split("c_min/c_max to [")[1].split("]")[0].split(","))
    cfg["meanfield"]["grid"].update(c_min=lo, c_max=hi)
    del cfg["fluctuations"]
    accepted(tmp_path, cfg)


def test_y_box_hint_works(tmp_path, capsys):
    cfg = tomllib.loads((ROOT / "examples" / "gaussian_line.toml").read_text())
    cfg["particles"] = {"n": [4], "seeds": 1}
    cfg["dynamics"].update(t_end=0.1, save_times=[0.0, 0.1], dt=0.05)
    cfg["meanfield"] = {"solvers": ["grid"], "grid": {
        "y": 64, "c": 48, "c_min": -7.0, "c_max": 7.0, "y_low": [-1.0], "y_high": [4.5]}}
    del cfg["fluctuations"]
    err = refused(tmp_path, capsys, cfg, "outside the grid", "meanfield.grid.y_low = [",
                  "meanfield.grid.y_high = [")
    low = float(err.split("y_low = [")[1].split("]")[0])
    high = float(err.split("y_high = [")[1].split("]")[0])
    cfg["meanfield"]["grid"].update(y_low=[low], y_high=[high])
    cfg["meanfield"]["grid"]["y"] = 128  # the box is wider: phi needs the same dy
    accepted(tmp_path, cfg)


def test_grid_c_hint_names_keys(tmp_path, capsys):
    err = refused(tmp_path, capsys, mutate(("meanfield", "grid", "c"), 4),
                  "meanfield.grid.c=4 is too coarse", "use meanfield.grid.c >= ")
    cfg = mutate(("meanfield", "grid", "c"), int(_hint(err, "use meanfield.grid.c")))
    del cfg["fluctuations"]
    accepted(tmp_path, cfg)


def test_y_box_on_the_circle_is_refused(tmp_path, capsys):
    cfg = mutate(("meanfield", "grid", "y_low"), [0.0])
    cfg["meanfield"]["grid"]["y_high"] = [1.0]
    refused(tmp_path, capsys, cfg, "meanfield.grid.y_low/y_high", "drop y_low and y_high")


@pytest.mark.parametrize("low, high", [([-1.0, 0.0], [1.0, 2.0]), ([1.0], [-1.0])])
def test_y_box_of_the_wrong_shape(tmp_path, capsys, low, high):
    cfg = tomllib.loads((ROOT / "examples" / "gaussian_line.toml").read_text())
    cfg["meanfield"]["grid"].update(y_low=low, y_high=high)
    refused(tmp_path, capsys, cfg, "meanfield.grid.y_low", "one per y coordinate")


def test_documented_meanfield_defaults_work(tmp_path):
    """docs/config.md: c ~ N(0, 1) and the default c range (-5, 5) leave 5.7e-7 of the mass
    outside, refused (> 1e-8); the default range follows the c law instead."""
    from analysis.run.experiment import default_c_range, resolve
    from particles.laws import CLaw

    lo, hi = default_c_range(CLaw("normal"))
    # all but 1e-12 of N(0, 1) lies within +-7.13, rounded outward to 0.1
    assert (lo, hi) == (-7.2, 7.2)
    assert default_c_range(CLaw("uniform", low=-1.5, high=1.5)) == (-5.0, 5.0)
    cfg = small()
    del cfg["init"], cfg["fluctuations"]
    cfg["meanfield"] = {"solvers": ["grid"], "grid": {"y": 64, "c": 96}}
    exp = resolve(cfg, base=tmp_path)
    assert (exp.config["meanfield"]["grid"]["c_min"], exp.config["meanfield"]["grid"]["c_max"]) == (lo, hi)
    accepted(tmp_path, cfg)


@pytest.mark.parametrize("example, path, key", [
    ("gaussian_line", ("problem", "measure", "nodes"), "problem.measure.nodes"),
    ("sigmoid_teacher", ("problem", "nodes"), "problem.nodes"),
    ("sigmoid_teacher", ("problem", "target", "units"), "problem.target.units"),
])
def test_problem_nodes_that_cannot_fit(tmp_path, capsys, eight_gib, example, path, key):
    cfg = tomllib.loads((ROOT / "examples" / f"{example}.toml").read_text())
    t = cfg
    for k in path[:-1]:
        t = t[k]
    t[path[-1]] = 10**10  # 2 x 1e10 x (d + 3) x 8 B >= 600 GiB, before anything is built
    refused(tmp_path, capsys, cfg, key, "8 GiB available")


def test_budget_batch_is_the_dynamics_batch():
    """The memory tally sizes SGD batches by the rule the run uses (``scaled_batch``,
    ``round = "floor"`` included): n = 1001, P0 = 0.2 gives floor 200 against ceil 201."""
    import math

    from analysis.run import budget
    from particles.dynamics import scaled_batch

    floor = {"P0": 0.2, "alpha": 0.5, "round": "floor"}
    for spec in (floor, {"P0": 0.2, "alpha": 0.5}, {"P0": 1e-6, "alpha": 0.25}):
        assert budget._largest_batch(spec, 1001) == scaled_batch(spec, 1001)
    assert budget._largest_batch(floor, 1001) == 200
    assert budget._largest_batch([[0, floor], [1.0, {"P0": 0.04, "alpha": 1,
                                                      "round": "floor"}]], 1001) == 40080
    assert budget._largest_batch({"P0": 1e300, "alpha": 100}, 1001) == math.inf
