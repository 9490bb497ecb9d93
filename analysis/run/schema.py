"""The schemas of the runnable sections of a config (``docs/config.md``): one validator
per key (:mod:`particles.engine.config`), read by :func:`analysis.run.experiment.resolve`. The
``[problem]`` schemas live with the parts (:mod:`particles.build`,
:mod:`particles.presets`)."""
from __future__ import annotations

from particles.dynamics import BATCH, TEMPERATURE
from particles.engine import config as C
from particles.simulate import ROOT_SEED, SIZES

__all__ = ["DYNAMICS_SCHEMA", "MEANFIELD_SCHEMA", "FLUCTUATIONS_SCHEMA", "PARTICLES_SCHEMA",
           "check_closure_horizon"]

ConfigError = C.ConfigError

DYNAMICS_SCHEMA = {
    "scheme": C.choice("gd", "sgd", "langevin"),
    "integrator": C.choice("euler", "rk4"),
    "dt": C.number(lo=0, lo_open=True),
    "t_end": C.number(lo=0),
    "save_times": C.number_list(min_len=1, unique=True),
    "form": C.choice("data", "kernel"),
    "batch": BATCH,  # the rules Dynamics checks its arguments with
    "temperature": TEMPERATURE,
    "train": lambda v, where: _train(v, where),
    "backend": C.choice("numpy", "jax"),
    "dtype": C.choice("float64", "float32"),
}
MEANFIELD_SCHEMA = {
    "solvers": lambda v, where: _solvers(v, where),
    "grid": C.table({
        "y": C.integer(lo=4), "c": C.integer(lo=4), "c_min": C.number(), "c_max": C.number(),
        "cfl": C.number(lo=0, hi=1, lo_open=True), "potential": C.choice("auto", "data", "fft"),
        "allow_truncation": C.boolean(), "dt": C.number(lo=0, lo_open=True),
        # the y box of a non-periodic grid, one number per y coordinate
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
    "sgd": C.boolean(),  # the SGD fluctuation prediction (meanfield.sgdnoise)
    # horizon h of the closure (2.50) check (analysis.checks.healing); default the save spacing
    "closure_horizon": C.number(lo=0, lo_open=True),
}


def _train(v, where):
    """``dynamics.train``: ["y", "c"] (trained units) or ["c"] (random features)."""
    if not isinstance(v, list) or sorted(v) not in (["c", "y"], ["c"]) or len(set(v)) != len(v):
        raise ConfigError(f'{where}={v!r} is not known; use ["y", "c"] (trained units, the '
                          'default) or ["c"] (random features: y frozen at its draw)')
    return list(v)


def _baselines(v, where):
    """``particles.baselines``: a list of "monte_carlo", "random_features"."""
    if not isinstance(v, list):
        raise ConfigError(f'{where}: expected a list, e.g. ["monte_carlo", "random_features"]')
    for i, s in enumerate(v):
        C.choice("monte_carlo", "random_features")(s, f"{where}[{i}]")
    return C.distinct(list(v), where)


def check_closure_horizon(h, save_times):
    """Refuse a ``fluctuations.closure_horizon`` that joins no two save times (the closure
    check compares Σ at t and t + h, both save times)."""
    ts = [float(t) for t in save_times]
    if not any(abs(u - (t + h)) <= 1e-9 * max(1.0, abs(t + h)) for t in ts for u in ts):
        raise ConfigError(
            f"fluctuations.closure_horizon={h:g} joins no two of dynamics.save_times {ts} "
            "(the closure check needs t and t + h both saved); use a difference of two save "
            "times, or drop the key (default: the save spacing)")


def _solvers(v, where):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{where}: expected a list of solvers, e.g. [\"grid\", \"characteristics\"]")
    for i, s in enumerate(v):
        C.choice("grid", "characteristics")(s, f"{where}[{i}]")
    return C.distinct(list(v), where)


PARTICLES_SCHEMA = {
    "n": SIZES,  # the rules simulate checks its arguments with
    "seeds": C.integer(lo=1),
    "root_seed": ROOT_SEED,
    "save_state": C.boolean(),
    "seeds_per_task": C.integer(lo=1),  # the sweep's block of seeds (analysis.sweep.tasks)
    # target realisations learnt side by side (analysis.sweep.tasks.realisation_config)
    "realisations": C.integer(lo=1),
    # the baseline ensembles beside the trained one (particles.baselines)
    "baselines": lambda v, where: _baselines(v, where),
}
