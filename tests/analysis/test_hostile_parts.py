"""Part combinations and data that cannot make sense are refused before any work (exit 2),
naming the parts, the file and the first bad entry; nothing is written."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from particles.engine.config import ConfigError

from .test_cli import write_toml

#: a tiny parts config (gaussian kernel, Lebesgue line, one bump): a run of ~0.1 s
BASE = {
    "problem": {"kernel": {"kind": "gaussian", "sigma": 1.0},
                "measure": {"kind": "lebesgue", "low": [-3.0], "high": [3.0], "nodes": 16},
                "target": {"kind": "gaussian_mixture", "weights": [1.0], "centres": [[0.0]],
                           "sigmas": [0.5]}},
    "dynamics": {"scheme": "gd", "dt": 0.1, "t_end": 0.2, "save_times": [0.0, 0.2]},
    "particles": {"n": [4], "seeds": 1},
}
CIRCLE = {"kernel": {"kind": "circle", "kappa": 0.5},
          "measure": {"kind": "circle", "nodes": 24},
          "target": {"kind": "fourier", "cos": [0.0, 1.0]}}
SPHERE = {"kernel": {"kind": "sphere", "alpha": 1.0}, "measure": {"kind": "sphere", "nodes": 16},
          "target": {"kind": "3spin"}, "d": 3}


def mfpc_run(tmp_path, cfg, capsys):
    """Exit code and stderr of ``mfpc run`` of ``cfg`` into tmp_path/out."""
    path = write_toml(tmp_path / "c.toml", cfg)
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def with_problem(**problem):
    cfg = copy.deepcopy(BASE)
    cfg["problem"] = copy.deepcopy(problem)
    return cfg


COMBINATIONS = {
    "sphere-kernel-on-lebesgue": (
        with_problem(**{**BASE["problem"], "kernel": {"kind": "sphere", "alpha": 1.0}}),
        ["problem.kernel kind='sphere'", "problem.measure kind='lebesgue'"]),
    "sphere-kernel-on-gaussian": (
        with_problem(kernel={"kind": "sphere", "alpha": 1.0},
                     measure={"kind": "gaussian", "nodes": 16}, target={"kind": "3spin"}, d=3),
        ["problem.kernel kind='sphere'", "problem.measure kind='gaussian'"]),
    "sphere-kernel-on-circle": (
        with_problem(**{**CIRCLE, "kernel": {"kind": "sphere", "alpha": 1.0}}),
        ["problem.kernel kind='sphere'", "problem.measure kind='circle'"]),
    "sphere-measure-d1": (with_problem(**{**SPHERE, "d": 1}), ["problem.d = 1"]),
    "fourier-mode-15-on-24-nodes": (
        with_problem(**{**CIRCLE, "target": {"kind": "fourier", "sin": [0.0] * 15 + [1.0]}}),
        ["problem.target kind='fourier'", "problem.measure kind='circle'", "aliases to mode 9"]),
    "interpolation-on-gaussian-parts": (
        with_problem(**{**BASE["problem"], "energy": "interpolation"}),
        ["problem.energy = 'interpolation'", "problem.kernel kind='gaussian'",
         "problem.measure kind='lebesgue'"]),
    "lebesgue-box-1e300": (
        with_problem(**{**BASE["problem"], "measure": {"kind": "lebesgue", "low": [-1e300],
                                                       "high": [1e300], "nodes": 16}}),
        ["problem.measure.low"]),
}


@pytest.mark.parametrize("case", list(COMBINATIONS))
def test_parts_that_cannot_make_sense(tmp_path, capsys, case):
    cfg, names = COMBINATIONS[case]
    code, err = mfpc_run(tmp_path, cfg, capsys)
    assert code == 2, err
    for name in names:
        assert name in err
    assert not (tmp_path / "out").exists()


def test_the_same_parts_that_agree_run(tmp_path, capsys):
    for problem in (CIRCLE, SPHERE):
        code, err = mfpc_run(tmp_path, with_problem(**problem), capsys)
        assert code == 0, err
        (tmp_path / "out" / "particles.nc").unlink()
        (tmp_path / "out" / ".mfpc-manifest.json").unlink()


def test_fluctuations_sgd_on_a_gd_run(tmp_path, capsys):
    cfg = with_problem(**CIRCLE)
    cfg["fluctuations"] = {"method": "influence", "sgd": True, "y": 8, "c": 4}
    code, err = mfpc_run(tmp_path, cfg, capsys)
    assert code == 2 and "fluctuations.sgd = true" in err and "scheme = 'gd'" in err


def test_init_c_of_absurd_size(tmp_path, capsys):
    cfg = copy.deepcopy(BASE)
    cfg["init"] = {"c": {"law": "normal", "std": 1e200}}
    code, err = mfpc_run(tmp_path, cfg, capsys)
    assert code == 2 and "init.c.std = 1e+200 is beyond 1e+08" in err


# ------------------------------------------------------------------------ data files
def write_measure(path, x, w):
    x = np.asarray(x, float)
    xr.Dataset({"x": (("x", "x_dim"), x.reshape(len(x), 1)),
                "weight": (("x",), np.asarray(w, float))}).to_netcdf(path, engine="h5netcdf")


def file_config(tmp_path, x=None, w=None, f=None):
    x = np.linspace(-1, 1, 7) if x is None else np.asarray(x, float)
    w = np.full(len(x), 2 / 7) if w is None else w
    f = np.zeros(len(x)) if f is None else f
    write_measure(tmp_path / "mu.nc", x, w)
    xr.Dataset({"f": (("x",), np.asarray(f, float))}).to_netcdf(tmp_path / "f.nc",
                                                                engine="h5netcdf")
    return with_problem(kernel={"kind": "tanh"},
                        measure={"kind": "file", "path": str(tmp_path / "mu.nc")},
                        target={"kind": "file", "path": str(tmp_path / "f.nc")})


def _put(v, i, value, n=7):
    a = np.linspace(-1, 1, n) if v is None else np.array(v, float)
    a[i] = value
    return a


BAD_DATA = {
    "x-nan": (dict(x=_put(None, 3, np.nan)), "problem.measure.path", "x has 1 value(s) NaN", "(3, 0)"),
    "x-inf": (dict(x=_put(None, 0, np.inf)), "problem.measure.path", "NaN or infinite",
              "(0, 0)"),
    "x-1e200": (dict(x=_put(None, 5, 1e200)), "problem.measure.path", "beyond |x| <= 1e+08",
                "(5, 0)"),
    "weight-nan": (dict(w=_put(np.full(7, 0.3), 2, np.nan)), "problem.measure.path",
                   "weight has 1 value(s) NaN", "2"),
    "weight-negative": (dict(w=_put(np.full(7, 0.3), 4, -0.1)), "problem.measure.path",
                        "weight has 1 value(s) negative", "4"),
    "weight-1e300": (dict(w=_put(np.full(7, 0.3), 1, 1e300)), "problem.measure.path",
                     "beyond |weight| <= 1e+08", "1"),
    "weights-all-0": (dict(w=np.zeros(7)), "problem.measure.path", "every weight is 0", None),
    "f-nan": (dict(f=_put(np.zeros(7), 6, np.nan)), "problem.target.path",
              "f has 1 value(s) NaN", "6"),
    "f-inf": (dict(f=_put(np.zeros(7), 0, -np.inf)), "problem.target.path", "NaN or infinite",
              "0"),
    "f-1e200": (dict(f=_put(np.zeros(7), 3, 1e200)), "problem.target.path",
                "beyond |f| <= 1e+08", "3"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_numbers_in_data_files(tmp_path, capsys, case):
    data, key, what, index = BAD_DATA[case]
    code, err = mfpc_run(tmp_path, file_config(tmp_path, **data), capsys)
    assert code == 2, err
    assert key in err and what in err
    if index is not None:
        assert f"first at index {index}:" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"not netCDF at all", None])
def test_damaged_data_files(tmp_path, capsys, content):
    cfg = file_config(tmp_path)
    path = tmp_path / "mu.nc"
    path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    code, err = mfpc_run(tmp_path, cfg, capsys)
    assert code == 2 and "problem.measure.path" in err and "cannot read" in err


def test_a_file_measure_without_nodes(tmp_path, monkeypatch):
    """h5netcdf writes no empty variable; the file as read is faked."""
    from particles.measures import FileMeasure

    empty = xr.Dataset({"x": (("x", "x_dim"), np.zeros((0, 1))),
                        "weight": (("x",), np.zeros(0))})
    monkeypatch.setattr(xr, "open_dataset", lambda *a, **k: empty)
    with pytest.raises(ConfigError, match=r"problem.measure.path='mu.nc': x has 0 node\(s\)"):
        FileMeasure("mu.nc")


def test_good_data_files_run(tmp_path, capsys):
    code, err = mfpc_run(tmp_path, file_config(tmp_path), capsys)
    assert code == 0, err


# ------------------------------------------------------------- the Python API's shapes
def test_python_parts_of_other_dimensions_are_refused():
    from particles.kernels import GaussianRBF
    from particles.laws import CLaw, YNormal
    from particles.measures import Lebesgue
    from particles.problem import Problem
    from particles.targets import GaussianMixture

    mu = Lebesgue([-3.0], [3.0], 16)
    t1 = GaussianMixture([1.0], [[0.0]], [0.5])
    t2 = GaussianMixture([1.0], [[0.0, 0.0]], [0.5])
    k1, k2 = GaussianRBF(1, 1.0), GaussianRBF(2, 1.0)
    law = dict(y_law=YNormal(1), c_law=CLaw("normal"))
    Problem(kernel=k1, measure=mu, target=t1, **law)  # agree: fine
    with pytest.raises(ConfigError, match=r"the target gaussian_mixture has d = 2, the "
                                          r"measure lebesgue d = 1"):
        Problem(kernel=k1, measure=mu, target=t2, **law)
    with pytest.raises(ConfigError, match=r"the kernel gaussian has d = 2, the measure "
                                          r"lebesgue d = 1"):
        Problem(kernel=k2, measure=mu, target=t1, **law)
    with pytest.raises(ConfigError, match="missing: kernel, measure, target"):
        Problem()
