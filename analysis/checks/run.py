r"""Which checks run on a run folder, and the rows of ``report.md`` they give.

:func:`run_checks` reads ``DIR/particles.nc`` (required), ``DIR/meanfield.nc`` and
``DIR/fluctuations.nc`` (optional) and runs every check they allow: the losses always
(:mod:`analysis.checks.losses`), the LLN and CLT against f_0 with a mean field
(:mod:`analysis.checks.limits`) and the SGD prediction with ``sgd_cov``
(:mod:`analysis.checks.sgd`), the checks from the ensembles alone without one
(:mod:`analysis.checks.highdim`), and the M-kernel checks up to :data:`M_MAX_Q` x nodes
(:mod:`analysis.checks.mkernel`). :func:`check_rows` gathers every module's rows
(:mod:`analysis.checks.rows`) in the report's order.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import xarray as xr

from particles.build import build_problem
from particles.engine.config import ConfigError

from analysis.checks import limits
from analysis.checks.baselines import baseline_checks, baseline_rows
from analysis.checks.healing import healing_checks, healing_rows
from analysis.checks.highdim import highdim_checks, highdim_rows
from analysis.checks.limits import limits_rows
from analysis.checks.losses import losses_rows
from analysis.checks.mkernel import M_MAX_Q, mkernel_checks, mkernel_rows
from analysis.checks.power import FAMILY_ALPHA, bootstrap_min_seeds, per_time_level
from analysis.checks.rows import RowContext
from analysis.checks.sgd import sgd_checks, sgd_rows
from analysis.store.runfolder import read_run

__all__ = ["run_checks", "check_rows", "row_context", "incomplete_note", "REPORT_SPAWN_KEY",
           "REQUIRED", "M_MAX_Q"]

log = logging.getLogger(__name__)

#: spawn key of the report's generator: SeedSequence(root_seed, spawn_key=(REPORT_SPAWN_KEY,))
REPORT_SPAWN_KEY = 2**20 + 5
#: variables always present in analysis.nc
REQUIRED = ("lln_slope", "lln_slope_low", "lln_slope_high", "clt_var_ratio", "m_min_eigenvalue")
#: the row builders, in the order of the report's table
ROW_BUILDERS = (limits_rows, mkernel_rows, losses_rows, healing_rows, sgd_rows, highdim_rows,
                baseline_rows)


def _nodes(meanfield, notes):
    """Characteristic nodes at the save times (saved in meanfield.nc) for M[rho_0]."""
    if meanfield is None or "y_nodes" not in meanfield:
        notes.append("M[rho_0] from characteristic nodes: meanfield.nc has none "
                     "(add 'characteristics' to meanfield.solvers)")
        return None
    return meanfield


def _batch_alpha(cfg):
    """α of an SGD batch scaled as P = ceil(P0 n^{2α}) (dynamics.batch), else None."""
    batch = cfg.get("dynamics", {}).get("batch")
    return float(batch["alpha"]) if isinstance(batch, dict) else None


def _problem(cfg, problem, notes=None):
    """The run's problem: the ready one given, else rebuilt from the stored config (paths
    relative to the config's folder, ``cfg["files"]["base"]``).

    When a file the problem was built from (a Python part, a measure or target file) is
    gone or its SHA-256 differs from the run's (``cfg["files"]``), or the rebuilt problem
    is not the run's (``cfg["problem_identity"]``), returns None and says why in
    ``notes``: the checks that need the problem are n.a., the others run.
    """
    if problem is not None:
        return problem
    from particles.userparts import problem_identity, sha256_file

    files = cfg.get("files") or {}
    why = []
    for role, rec in files.items():
        if not role.startswith("problem.") or not isinstance(rec, dict):
            continue
        path = Path(rec["path"])
        if not path.is_file():
            why.append(f"{role} {path} is gone")
        elif sha256_file(path) != rec["sha256"]:
            why.append(f"{role} {path} changed since the run (SHA-256 "
                       f"{sha256_file(path)[:12]}..., the run read {rec['sha256'][:12]}...)")
    rebuilt = None
    if not why:
        try:
            rebuilt = build_problem(cfg["problem"], cfg.get("init"), files.get("base", "."))
        except ConfigError as e:
            if not files:  # a run of a ready Problem: its [problem] is a description
                raise ConfigError(
                    f"the [problem] of this run cannot be rebuilt from its config ({e}); a "
                    "run of a ready Problem (e.g. a user's kernel) is reported from Python: "
                    "make_report(DIR, problem=problem)") from None
            why.append(f"it cannot be rebuilt from its config ({e})")
    if rebuilt is not None and "problem_identity" in cfg:
        from analysis.store.runfolder import differing_keys

        keys = differing_keys({"p": cfg["problem_identity"]},
                              {"p": problem_identity(rebuilt)})
        if keys:
            why.append("the problem rebuilt from its config is not the run's (differs in "
                       f"{', '.join(k[2:] for k in keys)})")
    if why:
        if notes is None:
            raise ConfigError(f"the problem of this run cannot be rebuilt: {'; '.join(why)}")
        notes.append(f"the run's problem cannot be rebuilt: {'; '.join(why)}; the checks "
                     "that need it (M-kernel, the high-dimensional ones) are n.a.")
        return None
    return rebuilt


def incomplete_note(incomplete) -> str:
    """What an incomplete run means for its report, from ``[(file name, failure)]``."""
    files = "; ".join(f"{name} has complete = 0 ({failure})" for name, failure in incomplete)
    return (f"INCOMPLETE RUN: {files}. The run failed; the checks below use only what was "
            "computed before the failure (NaN past it), and later sections may be missing.")


def _read_inputs(out, problem, notes):
    """The run's datasets, config and problem (realisation 0 for the per-run checks)."""
    data, read_notes, identity = read_run(out)
    notes.extend(read_notes)
    particles, meanfield, fluct = (data[s] for s in ("particles", "meanfield", "fluctuations"))
    cfg = json.loads(particles.attrs["config"])
    every = particles  # all target realisations (analysis.sweep.realisations)
    if "realisation" in particles.dims:
        notes.append(f"{particles.sizes['realisation']} target realisations: the scaling rows "
                     "fit each and their mean; the other checks read realisation 0")
        particles = particles.isel(realisation=0, drop=True)
    return {"particles": particles, "every": every, "meanfield": meanfield,
            "fluctuations": fluct, "config": cfg, "f0_name": None,
            "problem": _problem(cfg, problem, notes), "identity": identity}


def _loss_parts(inputs, n_boot, rng):
    particles, meanfield = inputs["particles"], inputs["meanfield"]
    return [limits.loss_monotonicity(particles, meanfield),
            limits.time_to_level(particles, meanfield, n_boot=n_boot, rng=rng),
            limits.final_loss_scaling(particles, meanfield, n_boot=n_boot, rng=rng),
            limits.fluctuation_scaling(particles, alpha=_batch_alpha(inputs["config"]),
                                       n_boot=n_boot, rng=rng)]


def _limit_parts(inputs, n_boot, level, rng):
    """LLN, CLT and the SGD prediction against f_0 (sets ``inputs["f0_name"]``)."""
    particles, meanfield, fluct = (inputs[k] for k in ("particles", "meanfield",
                                                       "fluctuations"))
    f0, inputs["f0_name"] = limits.reference_f0(meanfield)
    parts = [limits.lln(particles, meanfield, fluct, f0=f0, n_boot=n_boot, level=level,
                        rng=rng)]
    if fluct is not None:
        parts.append(limits.clt(particles, meanfield, fluct, f0=f0))
        if "sgd_cov" in fluct and inputs["config"]["dynamics"]["scheme"] == "sgd":
            parts.append(sgd_checks(particles, fluct, inputs["config"], f0=f0))
    return parts


def _mkernel_parts(inputs, n_boot, level, rng, notes):
    problem, particles, meanfield = (inputs[k] for k in ("problem", "particles", "meanfield"))
    if problem is None:  # said in notes by _problem
        return []
    Q = problem.x.shape[0]
    if Q > M_MAX_Q:
        notes.append(f"M[rho]: Q = {Q} > {M_MAX_Q} nodes, the Q x Q kernel is not formed"
                     + (" (its spectrum is measured through the Gram matrix instead)"
                        if meanfield is None else ""))
        return []
    nodes = _nodes(meanfield, notes)
    if "y" not in particles:
        notes.append("particles.nc has no units (save_state = false): M[rho_n] n.a.")
    return [mkernel_checks(problem, particles, meanfield, nodes, n_boot=n_boot, level=level,
                           rng=rng)]


def _baseline_parts(inputs, n_boot, level, rng):
    """The lazy prediction and the baseline ensembles (:mod:`analysis.checks.baselines`)."""
    if inputs["problem"] is None:
        return []
    train = inputs["config"]["dynamics"].get("train", ("y", "c"))
    return [baseline_checks(inputs["problem"], inputs["particles"], inputs["meanfield"],
                            train=train, n_boot=n_boot, level=level, rng=rng)]


def _with_required(ds, particles):
    """``ds`` with the variables every analysis.nc has (NaN where the inputs did not allow
    the check)."""
    T, Nn = particles.sizes["t"], particles.sizes["n"]
    for v in REQUIRED:
        if v not in ds:
            ds[v] = (("n", "t"), np.full((Nn, T), np.nan)) if v == "clt_var_ratio" else \
                ("t", np.full(T, np.nan))
    return ds


def _provenance(ds, out, inputs, notes, n_boot, level):
    identity = inputs["identity"]
    ds.attrs.update({
        "config": inputs["particles"].attrs["config"],
        "f_0_reference": inputs["f0_name"] or "none",
        "notes": json.dumps(notes),
        "report_rng": f"SeedSequence(root_seed, spawn_key=({REPORT_SPAWN_KEY},))",
        "n_boot": n_boot,
        "per_time_level": level,
        "family_alpha": FAMILY_ALPHA,
        "derived_from": json.dumps([p.name for p in sorted(out.glob("*.nc"))
                                    if p.name != "analysis.nc"]),
        "run_id": identity["run_id"],
        "complete": 0 if identity["incomplete"] else 1,
    })
    if identity["incomplete"]:
        ds.attrs["incomplete"] = incomplete_note(identity["incomplete"])


def run_checks(out, *, n_boot=1000, rng=None, problem=None):
    """Read DIR and run the checks; returns (analysis Dataset, inputs dict, notes).

    The run files are read by :func:`analysis.store.runfolder.read_run`, which refuses
    damaged or foreign files and files of different runs
    (:class:`~analysis.store.runfolder.RunFolderError`). ``analysis.nc`` carries the run's
    ``run_id`` and ``complete`` (0 when any run file has ``complete = 0``, with the note
    ``attrs["incomplete"]``).

    ``problem`` is the run's ready :class:`~particles.problem.Problem` when the config's
    ``[problem]`` is only a description (a user's own kernel); by default it is rebuilt
    from the config stored in ``particles.nc``.
    """
    out = Path(out)
    notes = []
    inputs = _read_inputs(out, problem, notes)
    particles = inputs["particles"]
    if rng is None:
        rng = np.random.default_rng(np.random.SeedSequence(
            int(particles.attrs.get("root_seed", 0)), spawn_key=(REPORT_SPAWN_KEY,)))
    level = per_time_level(particles.sizes["t"])[0]
    parts = _loss_parts(inputs, n_boot, rng)
    if inputs["meanfield"] is not None:
        parts += _limit_parts(inputs, n_boot, level, rng)
        parts.append(healing_checks(
            particles, inputs["meanfield"], inputs["fluctuations"], inputs["config"],
            problem=inputs["problem"], a=xr.merge(parts, combine_attrs="drop_conflicts"),
            n_boot=n_boot, level=level, z=per_time_level(particles.sizes["t"])[2], rng=rng))
    elif inputs["problem"] is not None:
        parts.append(highdim_checks(inputs["every"], inputs["problem"], inputs["config"],
                                    n_boot=n_boot, level=level, rng=rng, notes=notes))
    parts += _mkernel_parts(inputs, n_boot, level, rng, notes)
    parts += _baseline_parts(inputs, n_boot, level, rng)
    ds = _with_required(xr.merge(parts, combine_attrs="drop_conflicts"), particles)
    _provenance(ds, out, inputs, notes, n_boot, level)
    for n_ in notes:
        log.info("not checked: %s", n_)
    return ds, inputs, notes


def row_context(a, inputs) -> RowContext:
    """What the row builders need to know of the run beside ``a`` (``inputs`` of
    :func:`run_checks`; ``config`` and ``particles`` are enough)."""
    cfg = inputs["config"]
    level, p_min, z_max = per_time_level(a.sizes["t"])
    problem = inputs.get("problem")
    return RowContext(config=cfg, scheme=cfg["dynamics"]["scheme"],
                      seeds=int(inputs["particles"].sizes["seed"]), level=level, p_min=p_min,
                      z_max=z_max, k_t=bootstrap_min_seeds(level),
                      k_95=bootstrap_min_seeds(0.95), alpha=_batch_alpha(cfg),
                      meanfield=inputs.get("meanfield") is not None,
                      fluctuations=inputs.get("fluctuations") is not None,
                      nodes=0 if problem is None else int(problem.x.shape[0]))


def check_rows(a, inputs):
    """Every module's rows of ``report.md``, in the table's order: a list of
    :class:`~analysis.checks.rows.Row` and :class:`~analysis.checks.rows.NotApplicable`."""
    ctx = row_context(a, inputs)
    return [r for build in ROW_BUILDERS for r in build(a, ctx)]
