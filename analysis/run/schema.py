"""The schemas of the runnable sections of a config (``docs/config.md``): one validator
per key (:mod:`particles.engine.config`), read by :func:`analysis.run.experiment.resolve`. The
``[problem]`` schemas live with the parts (:mod:`particles.build`,
:mod:`particles.presets`)."""
from __future__ import annotations

from particles.engine import config as C

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
    "batch": C.schedule(lambda v, where: (
        C.check_section(v, {"P0": C.number(lo=0, lo_open=True), "alpha": C.number(lo=0, hi=1),
                            "round": C.choice("ceil", "floor")},
                        where, required=("P0", "alpha"))
        if isinstance(v, dict) else C.integer(lo=1)(v, where))),
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
    "sgd": C.boolean(),  # the SGD fluctuation prediction (meanfield.sgdnoise; issue 13)
    # horizon h of the closure (2.50) check (analysis.checks.healing); default the save spacing
    "closure_horizon": C.number(lo=0, lo_open=True),
}


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
    "n": C.integer_list(lo=1, unique=True),
    "seeds": C.integer(lo=1),
    "root_seed": C.integer(lo=0),
    "save_state": C.boolean(),
    "seeds_per_task": C.integer(lo=1),  # the sweep's block of seeds (analysis.sweep.tasks)
    # target realisations learnt side by side (issue 12; analysis.sweep.tasks.realisation_config)
    "realisations": C.integer(lo=1),
}
