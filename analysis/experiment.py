"""Experiments: read a TOML config, check every section, run them, write netCDF files.

``run_config(path, out)`` is what ``mfpc run`` calls. Every section present in the
config is checked before any work starts; each runnable section writes ``DIR/<section>.nc``
with the resolved config (JSON), package versions and root seed in ``attrs``.
"""
from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from particles import Dynamics, NumericalFailure, simulate
from particles import config as C
from particles.problems import build_problem
from particles.simulate import check_save_times

from .io import read_dataset, write_dataset

__all__ = ["load_config", "resolve", "run_config", "Experiment", "ConfigError"]

log = logging.getLogger(__name__)
ConfigError = C.ConfigError

DYNAMICS_SCHEMA = {
    "scheme": C.choice("gd", "sgd", "langevin"),
    "integrator": C.choice("euler", "rk4"),
    "dt": C.number(lo=0, lo_open=True),
    "t_end": C.number(lo=0),
    "save_times": C.number_list(min_len=1),
    "form": C.choice("data", "kernel"),
    "batch": lambda v, where: (
        C.check_section(v, {"P0": C.number(lo=0, lo_open=True), "alpha": C.number(lo=0, hi=1)},
                        where, required=("P0", "alpha"))
        if isinstance(v, dict) else C.schedule(C.integer(lo=1))(v, where)),
    "temperature": C.schedule(C.number(lo=0)),
}
MEANFIELD_SCHEMA = {
    "solvers": lambda v, where: _solvers(v, where),
    "grid": C.table({
        "y": C.integer(lo=4), "c": C.integer(lo=4), "c_min": C.number(), "c_max": C.number(),
        "cfl": C.number(lo=0, hi=1, lo_open=True), "potential": C.choice("auto", "data", "fft"),
        "allow_truncation": C.boolean(), "dt": C.number(lo=0, lo_open=True),
        # the y box of a non-periodic grid, one number per y coordinate (parts: issue 8)
        "y_low": C.number_list(min_len=1), "y_high": C.number_list(min_len=1),
    }),
    "characteristics": C.table({"y": C.integer(lo=1), "c": C.integer(lo=1),
                                "dt": C.number(lo=0, lo_open=True)}),
}
FLUCTUATIONS_SCHEMA = {
    "method": C.choice("influence", "ensemble"),
    "members": C.integer(lo=2),
    "y": C.integer(lo=1),
    "c": C.integer(lo=1),
    "dt": C.number(lo=0, lo_open=True),
}


def _solvers(v, where):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}: expected a list of solvers, e.g. [\"grid\", \"characteristics\"]")
    for s in v:
        C.choice("grid", "characteristics")(s, where)
    return list(dict.fromkeys(v))


PARTICLES_SCHEMA = {
    "n": C.integer_list(lo=1),
    "seeds": C.integer(lo=1),
    "root_seed": C.integer(lo=0),
    "save_state": C.boolean(),
}
#: the sections a config may have (each runnable one writes DIR/<section>.nc)
SECTIONS = ("problem", "init", "dynamics", "particles", "meanfield", "fluctuations")


def load_config(path) -> dict:
    """Read a TOML file; a clear error if it is missing or not valid TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


@dataclass
class Experiment:
    """A checked config: the problem and everything needed to run each section."""

    config: dict
    problem: object
    dynamics: Dynamics
    save_times: np.ndarray
    particles: dict | None
    init: tuple | None = None
    base: Path = field(default_factory=Path.cwd)

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True)


def _read_init_file(path, base):
    p = Path(path)
    if not p.is_absolute():
        p = base / p
    if not p.is_file():
        raise ConfigError(f"init.file={str(path)!r}: no such file ({p})")
    try:
        ds = read_dataset(p)
    except Exception as e:  # noqa: BLE001 - any reading failure is a config error here
        raise ConfigError(f"init.file={str(path)!r} could not be read as netCDF: {e}") from None
    for v in ("y", "c"):
        if v not in ds:
            raise ConfigError(f"init.file={str(path)!r} has no variable {v!r}; it needs y(member, particle) and c(member, particle)")
    y, c = ds["y"], ds["c"]
    if c.dims != ("member", "particle") or y.dims[:2] != ("member", "particle"):
        raise ConfigError(
            f"init.file={str(path)!r}: y has dims {y.dims} and c {c.dims}; "
            "expected y(member, particle[, y_dim]) and c(member, particle)"
        )
    return np.asarray(y.values, float), np.asarray(c.values, float)


def resolve(cfg: dict, base=None) -> Experiment:
    """Check the whole config and build its objects; raise ConfigError before any work."""
    base = Path.cwd() if base is None else Path(base)
    if not isinstance(cfg, dict):
        raise ConfigError("the config must be a TOML table")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known sections are {list(SECTIONS)}")
    for s in ("problem", "dynamics"):
        if s not in cfg:
            raise ConfigError(f"missing section [{s}]")
    problem = build_problem(cfg["problem"], cfg.get("init"))
    dyn = C.check_section(cfg["dynamics"], DYNAMICS_SCHEMA, "dynamics",
                          required=("scheme", "dt", "t_end", "save_times"))
    try:
        save_times = check_save_times(dyn["save_times"], dyn["t_end"])
        dynamics = Dynamics(
            scheme=dyn["scheme"],
            integrator=dyn.get("integrator", "euler"),
            dt=dyn["dt"],
            form=dyn.get("form", "data"),
            batch=dyn.get("batch"),
            temperature=dyn.get("temperature"),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if dynamics.form == "kernel" and problem.kernel_form is None:
        raise ConfigError(
            f"dynamics.form='kernel' but problem {problem.kind!r} has no (F, K) form; use 'data'"
        )
    if problem.info.get("energy") == "interpolation" and (
        dynamics.form != "kernel" or dynamics.scheme == "sgd"
    ):
        raise ConfigError(
            "problem.energy='interpolation' defines the dynamics (4.5) through f and phi; "
            "it needs dynamics.form = 'kernel' and scheme 'gd' or 'langevin' "
            "(use energy = 'data' for SGD or the data form)"
        )
    parts = None
    init = None
    if "particles" in cfg:
        parts = C.check_section(cfg["particles"], PARTICLES_SCHEMA, "particles")
        parts.setdefault("root_seed", 0)
        parts.setdefault("save_state", True)
        file = (cfg.get("init") or {}).get("file")
        if file is not None:
            init = _read_init_file(file, base)
            S, n = init[1].shape
            if "n" in parts and parts["n"] != [n]:
                raise ConfigError(
                    f"particles.n={parts['n']} does not fit init.file ({n} particles); drop particles.n"
                )
            if "seeds" in parts and parts["seeds"] != S:
                raise ConfigError(
                    f"particles.seeds={parts['seeds']} does not fit init.file ({S} members); drop particles.seeds"
                )
            yy = init[0] if init[0].ndim == 3 else init[0][..., None]
            if yy.shape[2] != problem.N:
                raise ConfigError(
                    f"init.file: y has {yy.shape[2]} coordinates per particle; problem needs {problem.N}"
                )
            parts["n"], parts["seeds"] = [n], S
        else:
            for k in ("n", "seeds"):
                if k not in parts:
                    raise ConfigError(f"particles: missing required key {k!r}")
    mf = fl = None
    if "meanfield" in cfg:
        mf = C.check_section(cfg["meanfield"], MEANFIELD_SCHEMA, "meanfield")
        mf.setdefault("solvers", ["grid", "characteristics"])
        mf["grid"] = {"y": 256, "c": 256, "c_min": -5.0, "c_max": 5.0, "cfl": 0.9,
                      "potential": "auto", "allow_truncation": False, **mf.get("grid", {})}
        mf["characteristics"] = {"y": 128, "c": 24, "dt": dynamics.dt,
                                 **mf.get("characteristics", {})}
        if mf["grid"]["c_max"] <= mf["grid"]["c_min"]:
            raise ConfigError(f"meanfield.grid: c_min={mf['grid']['c_min']} must be below "
                              f"c_max={mf['grid']['c_max']}")
        if dynamics.scheme == "langevin" and "characteristics" in mf["solvers"]:
            raise ConfigError("meanfield.solvers: characteristics carry no diffusion; with "
                              "scheme = 'langevin' use solvers = ['grid']")
        if dynamics.scheme == "langevin" and not np.isscalar(dynamics.temperature):
            raise ConfigError("meanfield: the grid solver takes a constant temperature; "
                              "a temperature schedule is not supported there")
        _check_meanfield_problem(problem, mf)
    if "fluctuations" in cfg:
        fl = C.check_section(cfg["fluctuations"], FLUCTUATIONS_SCHEMA, "fluctuations")
        fl = {"method": "influence", "members": 256, "y": 64, "c": 12, "dt": dynamics.dt, **fl}
        if dynamics.scheme == "langevin":
            raise ConfigError("fluctuations: the CLT prediction is for gd/sgd without "
                              "thermal noise; remove [fluctuations] or use scheme = 'gd'")
        if fl["method"] == "ensemble" and (mf is None or "grid" not in mf["solvers"]):
            raise ConfigError("fluctuations.method = 'ensemble' linearises the grid solver: "
                              "add [meanfield] with solvers including 'grid'")
    resolved = {k: v for k, v in cfg.items()}
    if mf is not None:
        resolved["meanfield"] = mf
    if fl is not None:
        resolved["fluctuations"] = fl
    resolved["dynamics"] = {**dynamics.params(), "t_end": dyn["t_end"],
                            "save_times": save_times.tolist()}
    if parts is not None:
        resolved["particles"] = parts
    return Experiment(resolved, problem, dynamics, save_times, parts, init, base)


def _y_range(g):
    """``[(low, high)]`` per y coordinate from meanfield.grid y_low/y_high, or None."""
    if ("y_low" in g) != ("y_high" in g) or len(g.get("y_low", ())) != len(g.get("y_high", ())):
        raise ConfigError("meanfield.grid: give y_low and y_high together, one number per y "
                          "coordinate each")
    return list(zip(g["y_low"], g["y_high"])) if "y_low" in g else None


def _check_meanfield_problem(problem, mf):
    """Refuse, before any work, what the mean-field solvers cannot do for this problem."""
    from meanfield.grid import GridSolver, prepare

    if problem.c_law.law == "constant":
        raise ConfigError("meanfield: a constant c law is a Dirac in c, which no grid "
                          "represents; use init.c law 'uniform' or 'normal'")
    if "grid" in mf["solvers"]:
        g = mf["grid"]
        try:
            grid, m0, _, _ = prepare(problem, ny=g["y"], nc=g["c"], c_min=g["c_min"],
                                     c_max=g["c_max"], allow_truncation=g["allow_truncation"],
                                     y_range=_y_range(g))
        except (ValueError, NotImplementedError) as e:
            raise ConfigError(f"meanfield.grid: {e}") from None
        if g.get("dt") is not None:
            bound = GridSolver(problem, grid, potential=g["potential"]).cfl_bound(m0)
            if g["dt"] > bound:
                raise ConfigError(
                    f"meanfield.grid.dt={g['dt']} exceeds the CFL (positivity) bound "
                    f"{bound:.4g} of the initial density on this grid; use dt <= "
                    f"{0.9 * bound:.3g}, or drop dt for the adaptive step"
                )


def _attrs(exp: Experiment, section: str) -> dict:
    return {
        "config": exp.config_json(),
        "section": section,
        "root_seed": int((exp.particles or {}).get("root_seed", 0)),
        "mfpc_netcdf_conventions": "coords n, seed, t, x; config JSON in attrs['config']",
    }


def run_particles(exp: Experiment, progress=None) -> xr.Dataset:
    """The [particles] section: an ensemble over n and seeds."""
    p = exp.particles
    return simulate(
        exp.problem,
        p["n"],
        p["seeds"],
        exp.dynamics,
        exp.save_times,
        root_seed=p["root_seed"],
        init=exp.init,
        save_state=p["save_state"],
        progress=progress,
    )


def run_meanfield(exp: Experiment, progress=None) -> xr.Dataset:
    """The [meanfield] section: f_0 from the grid and along characteristics."""
    from meanfield.characteristics import solve_characteristics
    from meanfield.grid import solve_grid

    mf = exp.config["meanfield"]
    parts = []
    if "grid" in mf["solvers"]:
        g = mf["grid"]
        tau = exp.dynamics.temperature if exp.dynamics.scheme == "langevin" else 0.0
        parts.append(solve_grid(
            exp.problem, exp.save_times, ny=g["y"], nc=g["c"], c_min=g["c_min"],
            c_max=g["c_max"], y_range=_y_range(g), cfl=g["cfl"], potential=g["potential"],
            tau=float(tau),
            allow_truncation=g["allow_truncation"], dt=g.get("dt"), progress=progress))
    if "characteristics" in mf["solvers"]:
        ch = mf["characteristics"]
        parts.append(solve_characteristics(exp.problem, exp.save_times, ny=ch["y"],
                                           nc=ch["c"], dt=ch["dt"], save_nodes=True))
    ds = xr.merge(parts, combine_attrs="no_conflicts" if len(parts) == 1 else "drop_conflicts")
    if "f_0" not in ds:
        ds["f_0"] = ds["f_0_characteristics"]
        ds["loss_0"] = ds["loss_0_characteristics"]
        ds.attrs["f_0_source"] = "characteristics"
    else:
        ds.attrs["f_0_source"] = "grid"
    return ds


def run_fluctuations(exp: Experiment, progress=None) -> xr.Dataset:
    """The [fluctuations] section: the predicted CLT covariance of sqrt(n)(f_n - f_0)."""
    fl = exp.config["fluctuations"]
    if fl["method"] == "influence":
        from meanfield.influence import clt_covariance_influence

        return clt_covariance_influence(exp.problem, exp.save_times, ny=fl["y"], nc=fl["c"],
                                        dt=fl["dt"])
    from meanfield.linearised import clt_covariance_ensemble

    g = exp.config["meanfield"]["grid"]
    return clt_covariance_ensemble(
        exp.problem, exp.save_times, members=fl["members"], ny=g["y"], nc=g["c"],
        c_min=g["c_min"], c_max=g["c_max"], cfl=g["cfl"],
        allow_truncation=g["allow_truncation"], root_seed=(exp.particles or {}).get("root_seed", 0),
        progress=progress)


RUNNERS = {"particles": run_particles, "meanfield": run_meanfield,
           "fluctuations": run_fluctuations}


def run_config(config_path, out, *, force=False, progress=None) -> dict:
    """Run every runnable section of a config into the folder ``out``.

    Returns {section: (path, status)} with status "written", "up to date" or
    "incomplete". An existing output is never overwritten unless ``force``; with the same
    config it is left as it is ("up to date"), with another config it is an error.
    """
    config_path = Path(config_path)
    exp = resolve(load_config(config_path), base=config_path.parent)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    todo, status = [], {}
    for section, runner in RUNNERS.items():
        if section not in exp.config:
            continue
        path = out / f"{section}.nc"
        if path.exists() and not force:
            try:
                with xr.open_dataset(path, engine="h5netcdf") as old:
                    old_attrs = dict(old.attrs)  # attributes only: no data is read
            except Exception:  # noqa: BLE001 - unreadable counts as "not this config"
                old_attrs = {}
            if old_attrs.get("config") != exp.config_json():
                raise ConfigError(
                    f"{path} exists and was written from a different config; "
                    "pass --force to overwrite it or choose another --out"
                )
            note = "" if old_attrs.get("complete", 1) else " (incomplete)"
            status[section] = (path, "up to date" + note)
            continue
        todo.append((section, runner, path))
    for section, runner, path in todo:
        log.info("running [%s] -> %s", section, path)
        try:
            ds = runner(exp, progress=progress)
        except ValueError as e:  # a bound found during the run (e.g. a later CFL bound)
            raise ConfigError(f"[{section}]: {e}") from None
        except NumericalFailure as e:
            ds = e.partial
            ds.attrs.update(_attrs(exp, section))
            write_dataset(ds, path, overwrite=True)
            status[section] = (path, "incomplete")
            raise
        ds.attrs.update(_attrs(exp, section))
        write_dataset(ds, path, overwrite=True)
        status[section] = (path, "written")
    return status
