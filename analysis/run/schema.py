"""The schemas of the runnable sections of a config (``docs/config.md``): one validator
per key (:mod:`particles.engine.config`), read by :func:`analysis.run.experiment.resolve`. The
``[problem]`` schemas live with the parts (:mod:`particles.build`,
:mod:`particles.presets`)."""
from __future__ import annotations

from particles.engine import config as C

__all__ = ["DYNAMICS_SCHEMA", "MEANFIELD_SCHEMA", "FLUCTUATIONS_SCHEMA", "PARTICLES_SCHEMA"]

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
    "backend": C.choice("numpy", "jax"),
    "dtype": C.choice("float64", "float32"),
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
}


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
