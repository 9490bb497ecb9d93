"""Preflight: what a solver cannot do for the problem is refused before any work.

Each refusal exits 2 through ``mfpc run``, names the key and the missing capability, and
leaves nothing behind: ``particles.nc`` (the first section) is never computed.
"""
import copy
import tomllib
from pathlib import Path

import pytest

from analysis.run import experiment
from analysis.cli import main
from analysis.run.experiment import ConfigError, resolve
from particles.engine.config import CapabilityError
from particles.kernels import CircleKernel

from .test_cli import write_toml

ROOT = Path(__file__).resolve().parents[2]


def circle():
    cfg = tomllib.loads((ROOT / "examples" / "circle.toml").read_text())
    cfg["particles"] = {"n": [8], "seeds": 2}
    cfg["dynamics"].update(t_end=0.2, save_times=[0.0, 0.2], dt=0.1)
    cfg["meanfield"] = {"solvers": ["grid"], "grid": {"y": 64, "c": 48, "c_min": -3.0,
                                                      "c_max": 3.0}}
    cfg["fluctuations"] = {"method": "influence", "y": 8, "c": 4}
    return cfg


def rbf():
    """A 1-d Gaussian RBF problem: a grid can hold it, the FFT potential cannot serve."""
    cfg = circle()
    cfg["problem"] = {"kind": "rbf", "d": 1, "sigma": 1.0, "nodes": 16,
                      "target": {"kind": "teacher", "units": 2}}
    cfg["init"] = {"c": {"law": "uniform", "low": -1.0, "high": 1.0}}
    cfg["meanfield"]["grid"]["y"] = 96  # resolves phi on the box of +-6 std
    del cfg["fluctuations"]
    return cfg


def sphere():
    cfg = circle()
    cfg["problem"] = {"kind": "sphere", "d": 3, "alpha": 1.0, "nodes": 16, "energy": "data",
                      "target": {"kind": "teacher", "units": 2}}
    cfg["init"] = {"c": {"law": "uniform", "low": -1.0, "high": 1.0}}
    del cfg["meanfield"]
    return cfg


def sigmoid():
    cfg = sphere()
    cfg["problem"] = {"kind": "sigmoid", "d": 2, "nodes": 16,  # the sphere needs d >= 2
                      "target": {"kind": "teacher", "units": 2}}
    del cfg["fluctuations"]
    return cfg


def _set(section, key, value):
    def mutate(c):
        c[section][key] = value
    return mutate


def _grid_potential_fft(c):
    c["meanfield"]["grid"]["potential"] = "fft"


def _solvers(*s):
    def mutate(c):
        c["meanfield"] = {"solvers": list(s)}
    return mutate


REFUSED = [
    # (config, mutation, the message names ...)
    (rbf, _grid_potential_fft, r"meanfield.grid.potential: .* capability 'fft'"),
    (sphere, lambda c: None, r"fluctuations.method: .* capability 'hessian_y'"),
    (sigmoid, _set("dynamics", "form", "kernel"), r"dynamics.form: .* capability 'kernel_form'"),
    (circle, lambda c: c["fluctuations"].update(method="ensemble") or c.pop("meanfield"),
     r"fluctuations.method = 'ensemble' linearises the grid solver"),
    (sphere, lambda c: c.pop("fluctuations") and _solvers("grid")(c),
     r"meanfield.grid: the y law 'uniform_sphere' has no grid box"),
    (sphere, lambda c: c.pop("fluctuations") and _solvers("characteristics")(c),
     r"meanfield.solvers = \['characteristics'\]: .*has no tensor quadrature"),
]


@pytest.mark.parametrize("make, mutate, message", REFUSED)
def test_refused_before_any_work(tmp_path, monkeypatch, capsys, make, mutate, message):
    cfg = copy.deepcopy(make())
    mutate(cfg)

    def no_particles(*a, **k):  # pragma: no cover - only reached if the preflight fails
        raise AssertionError("particles.nc was computed before the refusal")

    monkeypatch.setattr(experiment, "simulate", no_particles)
    cfgp = write_toml(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    assert main(["run", str(cfgp), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfpc: error: ")
    assert "Traceback" not in err
    import re
    assert re.search(message, err), err
    assert not out.exists()  # nothing written, not even the folder


def test_missing_capability_is_a_capability_error(tmp_path):
    with pytest.raises(CapabilityError, match="'fft'"):
        cfg = rbf()
        _grid_potential_fft(cfg)
        resolve(cfg, base=tmp_path)


# -- a ready Problem (a user's kernel): [problem] is a description only ---------------------
class NoHessianCircle(CircleKernel):
    """The circle kernel without its Hessian in y declared (a user's kernel would)."""

    capabilities = frozenset({"grad_x"})


class NoSampleMeasure:
    """A data measure with nodes and weights that cannot draw SGD batches."""

    def __init__(self, measure):
        self.nodes, self.weights = measure.nodes, measure.weights
        self._params = measure.params()

    def params(self):
        return self._params


def user_problem(**replace):
    from particles.build import build_problem

    cfg = circle()
    problem = build_problem(cfg["problem"], cfg["init"])
    return problem.replace(**replace)


def user_config():
    cfg = circle()
    cfg["problem"] = {"kind": "user", "description": "the circle kernel, built in Python"}
    cfg["init"] = {}
    return cfg


def test_ready_problem_is_used_and_problem_section_not_parsed(tmp_path):
    problem = user_problem()
    exp = resolve(user_config(), base=tmp_path, problem=problem)
    assert exp.problem is problem
    assert exp.config["problem"] == {"kind": "user",
                                     "description": "the circle kernel, built in Python"}
    cfg = user_config()
    cfg["problem"]["kappa"] = 2.0
    with pytest.raises(ConfigError, match=r"problem: unknown key\(s\) \['kappa'\]"):
        resolve(cfg, base=tmp_path, problem=problem)
    cfg = user_config()
    cfg["init"] = {"c": {"law": "normal"}}
    with pytest.raises(ConfigError, match=r"init: key\(s\) \['c'\] do not apply to a ready"):
        resolve(cfg, base=tmp_path, problem=problem)


@pytest.mark.parametrize("replace, mutate, message", [
    ({"kernel": NoHessianCircle(2.0)}, lambda c: None,
     r"fluctuations.method: .* capability 'hessian_y'"),
    ({"kernel_form": None}, _set("dynamics", "form", "kernel"),
     r"dynamics.form: .* capability 'kernel_form'"),
])
def test_ready_problem_refusals(tmp_path, replace, mutate, message):
    cfg = user_config()
    mutate(cfg)
    with pytest.raises(CapabilityError, match=message):
        resolve(cfg, base=tmp_path, problem=user_problem(**replace))


def test_sgd_needs_a_measure_that_samples(tmp_path):
    problem = user_problem()
    problem = problem.replace(measure=NoSampleMeasure(problem.measure))
    cfg = user_config()
    cfg["dynamics"].update(scheme="sgd", integrator="euler", batch=4)
    del cfg["meanfield"], cfg["fluctuations"]
    with pytest.raises(CapabilityError, match=r"dynamics.scheme: .* capability 'sample'"):
        resolve(cfg, base=tmp_path, problem=problem)
    # the same problem with a measure that samples is accepted
    resolve(cfg, base=tmp_path, problem=user_problem())
