r"""Several realisations of a random target in one run (the paper's Sec. 4: 10 draws of
the 3-spin coefficients; ``[particles] realisations = R``).

Realisation ``r`` learns the target drawn as ``[problem.target] seed = s + r`` would draw
it, with ``s`` the target's seed (``[problem.target] seed``, else ``[problem] seed``, else
0); the data nodes stay those of ``[problem] seed`` for every realisation. Realisation 0
is the run without realisations, bit for bit; its members keep their generators, and
those of realisation ``r > 0`` are ``SeedSequence(root_seed, spawn_key=(i_n, i_seed, r))``
(:func:`particles.simulate.member_rng`). ``particles.nc`` then has a dimension
``realisation`` on ``f_n``, ``loss``, ``y``, ``c`` and ``f_target``.
"""
from __future__ import annotations

import copy

import numpy as np

from particles.engine import config as C
from particles.build import build_problem

__all__ = ["check_realisations", "realisation_config", "realisation_problem",
           "stack_realisations", "RULE"]

#: the random targets (the others are fixed functions: one realisation)
RANDOM_TARGETS = ("teacher", "3spin")
#: what ``particles.nc`` says of its realisations
RULE = ("realisation r: the target drawn with [problem.target] seed = s + r (s the "
        "target's seed, else [problem] seed, else 0), the nodes of [problem] seed; member "
        "generators SeedSequence(root_seed, spawn_key=(i_n, i_seed[, r for r > 0]))")


def check_realisations(cfg, parts, ready_problem):
    """Refuse ``particles.realisations > 1`` where it cannot apply (before any work);
    ``parts`` is the checked ``[particles]`` (or None), the rest of ``cfg`` is checked."""
    R = int((parts or {}).get("realisations", 1))
    if R == 1:
        return
    where = f"particles.realisations = {R}"
    if ready_problem:
        raise C.ConfigError(f"{where} needs a [problem] built from the config (a ready "
                            "Problem has one target); set realisations = 1")
    for s in ("meanfield", "fluctuations"):
        if s in cfg:
            raise C.ConfigError(f"{where}: [{s}] solves for one target; drop [{s}] (the "
                                "report then reads the LLN and the scaling from the "
                                "ensembles) or set realisations = 1")
    if (cfg.get("init") or {}).get("file") is not None:
        raise C.ConfigError(f"{where}: init.file fixes the members' units for one target; "
                            "drop init.file or set realisations = 1")
    target = cfg["problem"].get("target")
    kind = target.get("kind") if isinstance(target, dict) else None
    if kind not in RANDOM_TARGETS:
        raise C.ConfigError(f"{where}: the target {kind or 'of this problem'!r} is a fixed "
                            f"function; realisations need a random target "
                            f"({' or '.join(RANDOM_TARGETS)})")


def realisation_config(problem_cfg: dict, r: int) -> dict:
    """``[problem]`` of realisation ``r`` (module doc); ``r = 0`` gives it unchanged."""
    if int(r) == 0:
        return problem_cfg
    out = copy.deepcopy(problem_cfg)
    t = out["target"]
    t["seed"] = int(t.get("seed", out.get("seed", 0))) + int(r)
    return out


def realisation_problem(exp, r: int):
    """The problem of realisation ``r`` of the experiment ``exp``."""
    if int(r) == 0:
        return exp.problem
    return build_problem(realisation_config(exp.config["problem"], r),
                         exp.config.get("init"), exp.base)  # paths relative to the config


def stack_realisations(datasets):
    """One ``particles`` Dataset from those of realisations 0, 1, ... (in order): the
    variables along ``n`` and ``f_target`` get a leading dimension ``realisation``; the
    others and the attrs come from realisation 0 (``attrs["realisation_rule"]``)."""
    first = datasets[0]
    out = first.copy()
    for name, var in first.data_vars.items():
        if "n" in var.dims or name == "f_target":
            stacked = np.stack([ds[name].transpose(*var.dims).values for ds in datasets])
            out[name] = (("realisation",) + var.dims, stacked, dict(var.attrs))
    out = out.assign_coords(realisation=("realisation",
                                         np.arange(len(datasets), dtype=np.int32),
                                         {"long_name": "target realisation index r",
                                          "units": "1"}))
    out.attrs["realisation_rule"] = RULE
    out.attrs["seed_spawn_key"] = ("SeedSequence(root_seed, spawn_key=(n_index[i_n], seed"
                                   "[, realisation for realisation > 0]))")
    failures = [ds.attrs.get("complete", 1) for ds in datasets]
    out.attrs["complete"] = int(min(failures))
    return out
