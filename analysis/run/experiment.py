"""Experiments: read a TOML config, check every section, run them, write netCDF files.

``run_config(path, out)`` is what ``mfpc run`` calls: :func:`resolve` checks every section
present in the config, then :mod:`analysis.run.preflight` refuses what a solver cannot do for
this problem, all before any work starts; :func:`run_experiment` then runs the sections as
a sweep of tasks (:mod:`analysis.sweep.driver`) into ``DIR/<section>.nc`` (CF-1.8 through
:func:`particles.engine.results.finish`) with the resolved config (JSON), its identity ``run_id``,
package versions and root seed in ``attrs``; the folder is checked, locked and cleaned
first (:mod:`analysis.store.runfolder`). A :class:`~particles.NumericalFailure` writes its
section's partial Dataset (if kept) marked ``complete = 0`` and is raised again as a
:class:`SectionFailure` (``mfpc run`` exits 3). A ready :class:`~particles.problem.Problem`
(a user's own kernel) runs through ``resolve(cfg, problem=...)`` and :func:`run_experiment`.
Defaults of ``[meanfield]`` and ``[fluctuations]`` come from :mod:`meanfield.defaults`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from particles import Dynamics, NumericalFailure, simulate
from particles.engine import config as C
from particles.build import build_problem
from particles import userparts
from particles.engine.results import finish
from particles.engine.loop import check_save_times
from meanfield import defaults as D

from analysis.run import budget, preflight

from analysis.sweep import tasks
from analysis.sweep.executors import check_options, make_executor
from analysis.run.inputs import load_config, read_init_file
from analysis.sweep.realisations import check_realisations, realisation_problem, stack_realisations
from analysis.run.schema import (DYNAMICS_SCHEMA, FLUCTUATIONS_SCHEMA, MEANFIELD_SCHEMA,  # noqa: F401
                     PARTICLES_SCHEMA, check_closure_horizon)
from analysis.store.runfolder import (check_writable, holding, plan_run, remove_empty_folders, remove_stale,
                        run_id)
from analysis.sweep.driver import (SectionFailure, TasksFailed, cap_workers, check_tasks,
                                   run_sweep)
from particles.engine.variables import cf_meta

__all__ = ["load_config", "resolve", "run_config", "run_experiment", "run_task", "Experiment",
           "ConfigError", "SectionFailure", "TasksFailed", "TITLES"]

ConfigError = C.ConfigError

#: the sections a config may have (each runnable one writes DIR/<section>.nc)
SECTIONS = ("problem", "init", "dynamics", "particles", "meanfield", "fluctuations")


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


#: the [problem] section of a ready Problem: a description, stored, never parsed
USER_PROBLEM_SCHEMA = {"kind": C.string(), "description": C.string()}


def _problem(cfg, problem, base="."):
    """The problem: built from ``[problem]`` and ``[init]`` (paths relative to ``base``),
    or the ready one given."""
    if problem is None:
        return build_problem(cfg["problem"], cfg.get("init"), base)
    C.check_section(cfg["problem"], USER_PROBLEM_SCHEMA, "problem")
    extra = sorted(set(cfg.get("init") or {}) - {"file"})
    if extra:
        raise ConfigError(
            f"init: key(s) {extra} do not apply to a ready Problem, which carries its own "
            "initial law (y_law, c_law); drop them (init.file is allowed)")
    return problem


#: mass of the c law that the default c range of the grid may leave out (far below the
#: grid's TRUNCATION_TOL = 1e-8, so that the defaults are accepted)
DEFAULT_C_MASS = 1e-12


def default_c_range(c_law):
    """The grid's default c range: ``meanfield.defaults.GRID``'s ``[c_min, c_max]``
    (-5, 5), widened to hold all but 1e-12 of the c law (mean +- 7.1 std of a normal law),
    rounded outward to 0.1."""
    lo, hi = D.GRID["c_min"], D.GRID["c_max"]
    if getattr(c_law, "law", None) in ("normal", "uniform"):
        a, b = c_law.support(DEFAULT_C_MASS)
        lo, hi = min(lo, np.floor(a * 10) / 10), max(hi, np.ceil(b * 10) / 10)
    return float(lo), float(hi)


def _meanfield_section(cfg, dynamics, problem):
    """``[meanfield]`` checked, with the defaults of :mod:`meanfield.defaults` (the c range
    following the c law: :func:`default_c_range`)."""
    mf = C.check_section(cfg["meanfield"], MEANFIELD_SCHEMA, "meanfield")
    mf.setdefault("solvers", ["grid", "characteristics"])
    c_min, c_max = default_c_range(problem.c_law)
    grid = {k: v for k, v in D.GRID.items() if v is not None}  # dt: adaptive unless given
    mf["grid"] = {**grid, "c_min": c_min, "c_max": c_max, **mf.get("grid", {})}
    mf["characteristics"] = {**D.CHARACTERISTICS, "dt": dynamics.dt,
                             **mf.get("characteristics", {})}
    if mf["grid"]["c_max"] <= mf["grid"]["c_min"]:
        raise ConfigError(f"meanfield.grid: c_min={mf['grid']['c_min']} must be below "
                          f"c_max={mf['grid']['c_max']}")
    return mf


def _fluctuations_section(cfg, dynamics):
    """``[fluctuations]`` checked, with the defaults of :mod:`meanfield.defaults`."""
    fl = C.check_section(cfg["fluctuations"], FLUCTUATIONS_SCHEMA, "fluctuations")
    sgd = {"sgd": True} if dynamics.scheme == "sgd" else {}  # GD configs keep their run_id
    return {"method": "influence", "members": D.ENSEMBLE["members"], "y": D.INFLUENCE["y"],
            "c": D.INFLUENCE["c"], "dt": dynamics.dt, **sgd, **fl}


#: dynamics keys that apply to one scheme only: key -> (scheme, what it is)
_SCHEME_KEYS = {"batch": ("sgd", "the SGD batch size"),
                "temperature": ("langevin", "the Langevin temperature")}


def _applies(dyn, cfg):
    """Refuse keys that the chosen options would ignore (accepted and ignored)."""
    for key, (scheme, what) in _SCHEME_KEYS.items():
        if key in dyn and dyn["scheme"] != scheme:
            raise ConfigError(
                f"dynamics.{key} is {what}, which scheme = {dyn['scheme']!r} ignores; drop "
                f"dynamics.{key} or use scheme = {scheme!r}")
    if "file" in (cfg.get("init") or {}) and "particles" not in cfg:
        raise ConfigError(
            "init.file gives the particles' initial units, but the config has no "
            "[particles] section, so it would be ignored; add [particles] (n and seeds then "
            "come from the file) or drop init.file")


def _check_baselines(parts, dynamics, problem):
    """``particles.baselines`` that can run: refused before any work otherwise."""
    from particles.baselines import monte_carlo_refusal

    names = (parts or {}).get("baselines", [])
    if "random_features" in names and dynamics.frozen_y:
        raise ConfigError(
            'particles.baselines: "random_features" is the trained ensemble itself when '
            'dynamics.train = ["c"]; drop one of them')
    why = monte_carlo_refusal(problem) if "monte_carlo" in names else None
    if why:
        raise ConfigError(f"particles.baselines: {why}")


def _refuse(message):
    """Raise the budget's refusal (memory or steps), if any, as a :class:`ConfigError`."""
    if message:
        raise ConfigError(message)


def resolve(cfg: dict, base=None, problem=None) -> Experiment:
    """Check the whole config and build its objects; raise ConfigError before any work.

    Every section's keys and values are checked, then :func:`analysis.run.preflight.preflight`
    asks whether each solver the config names can serve this problem.

    Parameters
    ----------
    cfg : dict
        The config (a parsed TOML file).
    base : path, optional
        Folder against which relative paths (``init.file``) are read; default the cwd.
    problem : particles.problem.Problem, optional
        A ready problem (e.g. a user's own kernel written in Python). Then ``[problem]``
        is only a description stored in the outputs' attrs (``kind``, ``description``;
        not parsed) and ``[init]`` may only name a ``file``.
    """
    base = Path.cwd() if base is None else Path(base)
    if not isinstance(cfg, dict):
        raise ConfigError("the config must be a TOML table")
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known sections are {list(SECTIONS)}")
    for s in ("problem", "dynamics"):
        if s not in cfg:
            raise ConfigError(f"missing section [{s}]")
    if problem is None:  # the sizes of [problem] before anything is built
        _refuse(budget.problem_need(cfg["problem"]).check())
    ready = problem is not None
    problem = _problem(cfg, problem, base)
    dyn = C.check_section(cfg["dynamics"], DYNAMICS_SCHEMA, "dynamics",
                          required=("scheme", "dt", "t_end", "save_times"))
    _applies(dyn, cfg)
    try:
        save_times = check_save_times(dyn["save_times"], dyn["t_end"])
        dynamics = Dynamics(
            scheme=dyn["scheme"],
            integrator=dyn.get("integrator", "euler"),
            dt=dyn["dt"],
            form=dyn.get("form", "data"),
            batch=dyn.get("batch"),
            temperature=dyn.get("temperature"),
            train=tuple(dyn.get("train", ("y", "c"))),
            backend=dyn.get("backend", "numpy"),
            dtype=dyn.get("dtype", "float64"),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if dynamics.backend == "jax":
        from particles.jax import require_jax

        require_jax()
        from particles.jax.stepper import unsupported

        if unsupported(problem, dynamics):
            raise ConfigError(f"dynamics.backend = 'jax': {unsupported(problem, dynamics)}")
    parts = _particles_section(cfg, problem, base) if "particles" in cfg else None
    init = parts.pop("_init", None) if parts is not None else None
    check_realisations(cfg, parts, ready)
    _check_baselines(parts, dynamics, problem)
    mf = _meanfield_section(cfg, dynamics, problem) if "meanfield" in cfg else None
    fl = _fluctuations_section(cfg, dynamics) if "fluctuations" in cfg else None
    if dynamics.frozen_y and fl is not None and (fl["method"] != "influence" or fl.get("sgd")):
        raise ConfigError(
            'dynamics.train = ["c"] (random features) is served by fluctuations.method = '
            '"influence" without the SGD prediction; the ensemble and SGD predictions move y: '
            "use method = \"influence\" with GD, or drop dynamics.train")
    if fl is not None and "closure_horizon" in fl:
        check_closure_horizon(fl["closure_horizon"], save_times)
    preflight.preflight(problem, dynamics, mf, fl, save_times=save_times, parts=parts)
    resolved = {k: v for k, v in cfg.items()}
    if mf is not None:
        resolved["meanfield"] = mf
    if fl is not None:
        resolved["fluctuations"] = fl
    resolved["dynamics"] = {**dynamics.params(), "t_end": dyn["t_end"],
                            "save_times": save_times.tolist()}
    if parts is not None:
        resolved["particles"] = parts
    # what runs: the problem's parts, their files' hashes (analysis.store.runfolder.identity)
    files = userparts.problem_files(problem)
    if (cfg.get("init") or {}).get("file") is not None:
        files["init.file"] = userparts.file_record(_init_path(cfg["init"]["file"], base))
    resolved["problem_identity"] = userparts.problem_identity(problem)
    if files:
        resolved["problem_identity"]["files"] = {k: v["sha256"] for k, v in files.items()}
        resolved["files"] = {"base": str(base.resolve()), **files}
    return Experiment(resolved, problem, dynamics, save_times, parts, init, base)


def _init_path(file, base):
    p = Path(file)
    return p if p.is_absolute() else base / p


def _particles_section(cfg, problem, base):
    """``[particles]`` checked; an ``init.file`` read and matched (key ``_init``)."""
    parts = C.check_section(cfg["particles"], PARTICLES_SCHEMA, "particles")
    parts.setdefault("root_seed", 0)
    parts.setdefault("save_state", True)
    file = (cfg.get("init") or {}).get("file")
    if file is None:
        for k in ("n", "seeds"):
            if k not in parts:
                raise ConfigError(f"particles: missing required key {k!r}")
        return parts
    init = read_init_file(file, base)
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
    return {**parts, "_init": (yy, init[1])}


def _attrs(exp: Experiment, section: str) -> dict:
    return {
        "config": exp.config_json(),
        "section": section,
        "root_seed": int((exp.particles or {}).get("root_seed", 0)),
        "run_id": run_id(exp.config_json()),
        "mfpc_netcdf_conventions": "coords n, seed, t, x; config JSON in attrs['config']",
    }


def run_particles(exp: Experiment, progress=None, checkpoint=None) -> xr.Dataset:
    """The [particles] section: an ensemble over n and seeds (``checkpoint``: a
    :class:`particles.engine.checkpoint.Checkpoint` passed to :func:`particles.simulate`)."""
    p = exp.particles
    if int(p.get("realisations", 1)) > 1 and p.get("realisation") is None:
        # the whole ensemble in this process (a sweep runs one realisation a task)
        return stack_realisations([
            run_particles(dataclasses.replace(exp, problem=realisation_problem(exp, r),
                                              particles={**p, "realisation": r}),
                          progress=progress)
            for r in range(int(p["realisations"]))])
    ds = simulate(
        exp.problem,
        p["n"],
        p["seeds"],
        exp.dynamics,
        exp.save_times,
        root_seed=p["root_seed"],
        n_index=p.get("n_index"),  # a sweep's task: its n's index in particles.n
        init=exp.init,
        save_state=p["save_state"],
        progress=progress,
        checkpoint=checkpoint,
        realisation=int(p.get("realisation") or 0),
    )
    if p.get("baselines"):
        from particles.baselines import baseline_ensembles

        extra = baseline_ensembles(
            exp.problem, p["n"], p["seeds"], exp.dynamics, exp.save_times, p["baselines"],
            root_seed=p["root_seed"], n_index=p.get("n_index"), init=exp.init,
            realisation=int(p.get("realisation") or 0))
        ds = ds.assign(extra.data_vars)
        ds.attrs.update(extra.attrs)
    return ds


def run_meanfield(exp: Experiment, progress=None, checkpoint=None) -> xr.Dataset:
    """The [meanfield] section: f_0 from the grid and along characteristics (each with
    its own ``checkpoint.part``: a restart redoes a solver that had completed)."""
    from meanfield.characteristics import solve_characteristics
    from meanfield.grid.solve import solve_grid

    mf = exp.config["meanfield"]
    parts = []
    try:
        if "grid" in mf["solvers"]:
            g = mf["grid"]
            temperature = (exp.dynamics.temperature if exp.dynamics.scheme == "langevin"
                           else 0.0)
            parts.append(solve_grid(
                exp.problem, exp.save_times, grid=g, temperature=float(temperature),
                progress=progress, checkpoint=checkpoint and checkpoint.part("grid"),
                train=exp.dynamics.train))
        if "characteristics" in mf["solvers"]:
            ch = mf["characteristics"]
            parts.append(solve_characteristics(exp.problem, exp.save_times, grid=ch,
                                               save_nodes=True,
                                               checkpoint=checkpoint
                                               and checkpoint.part("characteristics"),
                                               train=exp.dynamics.train))
    except NumericalFailure as e:
        # the partial of the failed solver beside what the solvers before it computed
        done = parts + [p for p in [getattr(e, "partial", None)] if isinstance(p, xr.Dataset)]
        raise NumericalFailure(str(e), _merge_meanfield(done) if done else None) from e
    return _merge_meanfield(parts)


def _merge_meanfield(parts):
    """One meanfield Dataset from the solvers' ones; ``f_0`` from the grid when it ran."""
    ds = xr.merge(parts, combine_attrs="no_conflicts" if len(parts) == 1 else "drop_conflicts")
    if "f_0" not in ds and "f_0_characteristics" in ds:
        ds["f_0"] = ds["f_0_characteristics"]
        ds["loss_0"] = ds["loss_0_characteristics"]
        ds.attrs["f_0_source"] = "characteristics"
    else:
        ds.attrs["f_0_source"] = "grid"
    return ds


def run_fluctuations(exp: Experiment, progress=None, checkpoint=None) -> xr.Dataset:
    """The [fluctuations] section: the predicted CLT covariance of sqrt(n)(f_n - f_0), and
    with ``sgd`` the SGD one per unit theta_ref (:mod:`meanfield.sgdnoise`).
    ``checkpoint``: the CLT ensemble of the ensemble method only (the influence method
    and the forced SGD ensemble run without)."""
    fl = exp.config["fluctuations"]
    if fl["method"] == "influence":
        from meanfield.influence import clt_covariance_influence
        from meanfield.sgdnoise import sgd_covariance_influence

        nodes = {k: fl[k] for k in ("y", "c", "dt")}
        if fl.get("sgd"):
            return sgd_covariance_influence(exp.problem, exp.save_times, exp.dynamics,
                                            grid=nodes)
        return clt_covariance_influence(exp.problem, exp.save_times, grid=nodes,
                                        train=exp.dynamics.train)
    from meanfield.linearised import clt_covariance_ensemble
    from meanfield.sgdensemble import with_sgd_ensemble

    g = exp.config["meanfield"]["grid"]
    # the grid of [meanfield] without its fixed dt: the ensemble takes the adaptive steps
    grid = dict(members=fl["members"], grid={k: v for k, v in g.items() if k != "dt"},
                root_seed=(exp.particles or {}).get("root_seed", 0), progress=progress)
    ds = clt_covariance_ensemble(exp.problem, exp.save_times, checkpoint=checkpoint, **grid)
    return with_sgd_ensemble(ds, exp.problem, exp.save_times, exp.dynamics, **grid) \
        if fl.get("sgd") else ds


RUNNERS = {"particles": run_particles, "meanfield": run_meanfield,
           "fluctuations": run_fluctuations}
#: the CF ``title`` of each file ``mfpc run`` writes
TITLES = {
    "particles": "mfpc: finite-n networks f_n (1.1) as particle systems, ensembles over n and seeds",
    "meanfield": "mfpc: the mean-field limit rho_0 and f_0 of (2.9), (2.34)",
    "fluctuations": "mfpc: predicted CLT covariance of sqrt(n) (f_n - f_0) (Prop. 2.1)",
}


@functools.lru_cache(maxsize=4)
def _resolved(config_json, base, files_key=""):  # once a worker process (and file version)
    return resolve(json.loads(config_json), base=base)


def run_task(spec, task, tasks_dir, options, attempt=0) -> dict:
    """One task of a sweep, of plain data (any executor ships it): ``spec`` is ``{"config",
    "base", "files", "run_id"}`` (resolved once a process) or the Experiment; ``attempt``
    makes a retry a new call. Returns :func:`analysis.sweep.tasks.execute`'s.

    ``files`` are the run's Python files (:func:`particles.userparts.ship`: their hashes,
    for a remote worker their bytes), checked before a part is built; a worker whose
    resolved run differs from the run's ``run_id`` (a data file changed since) refuses."""
    if isinstance(spec, Experiment):
        exp = spec
    else:
        files = spec.get("files") or {}
        with userparts.shipping(files):
            exp = _resolved(json.dumps(spec["config"], sort_keys=True, default=str),
                            str(spec["base"]),
                            json.dumps({k: v["sha256"] for k, v in files.items()},
                                       sort_keys=True))
        if spec.get("run_id") and run_id(exp.config_json()) != spec["run_id"]:
            from analysis.store.runfolder import differing_keys

            raise ConfigError(
                f"this worker's problem is not the run's (run_id {run_id(exp.config_json())}"
                f", the run {spec['run_id']}; differs in "
                f"{', '.join(differing_keys(spec['identity'], exp.config)) or 'none found'})"
                ": a file changed since the run started")
    return tasks.execute(exp, task, RUNNERS[task["section"]], tasks_dir, **options)


def _finish(exp, section, ds, command, failure=None):
    """Provenance attrs and CF-1.8 metadata of one output Dataset (in place)."""
    ds.attrs.update(_attrs(exp, section))
    if failure is not None:
        ds.attrs["complete"] = 0
        ds.attrs["failure"] = str(failure)
    else:
        ds.attrs.setdefault("complete", 1)
    return finish(ds, title=TITLES[section], meta=cf_meta(ds), command=command)


def run_experiment(exp: Experiment, out, *, force=False, progress=None, command=None,
                   executor=None, retries=2, checkpoint_every=None, source=None) -> dict:
    """Run every runnable section of a resolved experiment into the folder ``out``.

    Each section writes ``out/<section>.nc`` through :func:`particles.engine.results.finish`
    (CF-1.8, ``history`` with ``command``, ``attrs["run_id"]``: the run's identity,
    :func:`analysis.store.runfolder.run_id`). Before any work (:mod:`analysis.store.runfolder`):
    ``out`` must be a folder in which files can be created; it is locked for this run
    (another live ``mfpc run`` there is refused); temporary files a killed run left are
    removed. An existing output is never overwritten unless ``force``; with the same config
    and complete it is left as it is ("up to date"); a file of another config, a foreign
    or damaged file, or one of a failed run (``complete = 0``) is an error. ``force``
    recomputes every section, removes the files of sections the config no longer has, and
    with any new file the old ``analysis.nc``, ``report.md`` and figures are removed.
    Sections run as a sweep of tasks (:mod:`analysis.sweep.driver`): a killed run resumes.

    Parameters
    ----------
    exp : Experiment
        From :func:`resolve` (which checked every section before any work).
    out : path
        Output folder (created if missing).
    force : bool
        Overwrite existing outputs (and finished tasks).
    progress : bool or None
        Progress bars; ``None`` shows them only on a terminal.
    command : str, optional
        The command line for ``history`` (default ``python`` and this process's argv).
    executor, retries, checkpoint_every, source
        As :func:`analysis.sweep.driver.run_sweep` (``source`` is its ``spec``); ``executor`` may
        be a callable returning one: called only when there is work, closed after.

    Returns
    -------
    dict
        ``{section: (path, status)}``, status "written" or "up to date".

    Raises
    ------
    ConfigError
        A bound found during a run (e.g. a later CFL bound); nothing written for it. A
        :class:`~analysis.store.runfolder.RunFolderError` (a ConfigError) for a folder that
        cannot be used as it is, before any work.
    SectionFailure
        A :class:`~particles.NumericalFailure` in any section: its partial Dataset, if
        the solver kept one, is written marked ``complete = 0`` (status "incomplete");
        later sections do not run.
    TasksFailed
        Tasks that raised after their retries (the others merged).
    """
    created = check_writable(out)
    out = Path(out)
    try:
        with holding(out, "mfpc run"):
            todo, status, stale = plan_run(out, exp.config_json(),
                                           [s for s in RUNNERS if s in exp.config], force=force)
            if todo:
                check_tasks(out, exp.config_json(), force=force)
            remove_stale(out, stale)
            if todo:  # an executor is made only when there is work
                own = executor is not None and not hasattr(executor, "submit")
                ex = executor() if own else executor
                try:
                    status.update(run_sweep(
                        exp, out, todo, task_fn=run_task, spec=source, executor=ex,
                        finish=lambda s, ds, why: _finish(exp, s, ds, command, failure=why),
                        retries=retries, progress=progress, checkpoint_every=checkpoint_every))
                finally:
                    if own:
                        ex.close()
    finally:
        if created and not any(out.iterdir()):  # refused or failed before any file
            remove_empty_folders(created)
    return status


def run_config(config_path, out, *, force=False, progress=None, command=None, workers=None,
               dask_local=None, scheduler=None, retries=2, checkpoint_every=None,
               backend=None) -> dict:
    """``mfpc run CONFIG --out DIR``: :func:`resolve`, then :func:`run_experiment` on the
    executor of :func:`analysis.sweep.executors.make_executor`. Returns ``{section: (path,
    status)}``; ``history`` says ``mfpc run CONFIG --out DIR`` unless ``command``.
    ``backend`` (``--backend``) replaces ``[dynamics] backend``."""
    config_path = Path(config_path)
    check_options(workers, dask_local, scheduler, retries, checkpoint_every)
    cfg = load_config(config_path)
    if backend is not None and isinstance(cfg.get("dynamics"), dict):
        cfg["dynamics"] = {**cfg["dynamics"], "backend": backend}
    if command is None:
        command = f"mfpc run {config_path} --out {out}" + (" --force" if force else "")
    exp = resolve(cfg, base=config_path.parent)
    # what a task carries: the config as read, its Python files (their bytes for a remote
    # scheduler) and the run's identity, checked by the worker (run_task)
    source = {"config": cfg, "base": str(config_path.parent.resolve()),
              "files": userparts.ship(exp.config.get("files"), with_bytes=bool(scheduler)),
              "run_id": run_id(exp.config_json()),
              "identity": exp.config}
    workers = cap_workers(workers, len(tasks.plan_tasks(
        exp.config, [s for s in RUNNERS if s in exp.config])))
    return run_experiment(
        exp, out, force=force, progress=progress,
        command=command, retries=retries, checkpoint_every=checkpoint_every,
        executor=functools.partial(make_executor, workers, dask_local, scheduler),
        source=source)
