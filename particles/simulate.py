r"""Ensembles of finite-n runs over particle counts and seeds, returned as a Dataset.

Each n is one :class:`particles.steppers.ParticleStepper` run by the one time loop
:func:`particles.engine.loop.run`, which alternates "advance to the next save time" with
"observe" (save f_n on the nodes, the loss (1.2) and, if asked, the units). For each n the ensemble of seeds is
one vectorised state of shape (seeds, n, N). Member ``(i_n, i_seed)`` draws its initial
units and all its noise from
``Generator(PCG64(SeedSequence(root_seed, spawn_key=(i_n, i_seed))))``, so any member
rerun alone (``simulate(..., n=[n], seeds=[i_seed], n_index=[i_n])``) gives the same
numbers. With ``dynamics.backend = "jax"`` the stepper is
:class:`particles.jax.stepper.JaxParticleStepper` (the members' noise from JAX keys drawn
from the same SeedSequences; ``docs/backends.md``); the attrs record ``backend``,
``dtype`` and ``device``.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from particles.dynamics import Dynamics
from particles.engine import config as C
from particles.engine.loop import NumericalFailure, check_save_times, run  # noqa: F401 - re-exported
from particles.engine.results import dataset as cf_dataset
from particles.engine.results import run_status, x_coord
from particles.engine.variables import VARIABLES
from particles.steppers import ParticleStepper

__all__ = ["simulate", "member_rng", "NumericalFailure"]


#: the largest root seed: the outputs store it as a netCDF attribute, whose widest
#: integer type is uint64 (h5py refuses a larger Python int)
ROOT_SEED_MAX = 2**64 - 1


def _root_seed(v, where):
    v = C.integer(lo=0)(v, where)
    if v > ROOT_SEED_MAX:
        raise C.ConfigError(
            f"{where}: {v} is larger than {ROOT_SEED_MAX} (2**64 - 1), the largest integer "
            "a netCDF attribute (uint64) holds, where the outputs store the root seed; "
            "choose a smaller seed")
    return v


#: the rules of ``particles.root_seed`` and ``particles.n``: the config's schema
#: (:mod:`analysis.run.schema`) and :func:`simulate` check with the same ones
ROOT_SEED = _root_seed
SIZES = C.integer_list(lo=1, unique=True)


def _plain(v):
    """numpy scalars and arrays as Python numbers and lists (for the config's checks)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def member_rng(root_seed: int, i_n: int, i_seed: int, realisation: int = 0
               ) -> np.random.Generator:
    """The generator of ensemble member (i_n, i_seed) of target realisation
    ``realisation`` (spawn key ``(i_n, i_seed)`` for realisation 0, the run without
    realisations; ``(i_n, i_seed, r)`` for r > 0)."""
    key = (int(i_n), int(i_seed)) + ((int(realisation),) if realisation else ())
    ss = np.random.SeedSequence(int(root_seed), spawn_key=key)
    return np.random.Generator(np.random.PCG64(ss))


def simulate(
    problem,
    n,
    seeds,
    dynamics: Dynamics,
    save_times,
    *,
    root_seed: int = 0,
    n_index=None,
    init=None,
    save_state: bool = True,
    progress: bool | None = None,
    checkpoint=None,
    realisation: int = 0,
) -> xr.Dataset:
    r"""Run an ensemble of finite-n networks and return what was observed.

    Parameters
    ----------
    problem : particles.problem.Problem
    n : int or sequence of int
        Particle counts.
    seeds : int or sequence of int
        Number of seeds (members 0..seeds-1) or the seed indices to run.
    dynamics : particles.dynamics.Dynamics
    save_times : sequence of float
        Increasing times in [0, t_end] at which to observe; the run stops at the last.
    root_seed : int
        Root of every member's ``SeedSequence``.
    realisation : int
        The target realisation this ensemble learns (its members' generators:
        :func:`member_rng`).
    n_index : sequence of int, optional
        The ``i_n`` of each n in the spawn key (default ``range(len(n))``).
    init : tuple (y, c), optional
        Initial units instead of sampling: y (S, n, N), c (S, n); then ``n`` and
        ``seeds`` must match their shapes (S seeds).
    save_state : bool
        Also save the units ``y(n, seed, t, particle, y_dim)``, ``c(n, seed, t, particle)``
        (padded with NaN where particle >= n).
    progress : bool or None
        Progress bar; ``None`` shows it only on a terminal.
    checkpoint : particles.engine.checkpoint.Checkpoint, optional
        Checkpoints inside the run (:mod:`particles.engine.checkpoint`): one run per n, the
        stage ``"n_index=<i_n>"``; the outputs of the n already done are tracked, so a
        run resumed from the checkpoint of a later n skips the earlier ones. The result
        is bitwise that of a run that never stopped.

    Returns
    -------
    xarray.Dataset
        ``f_n(n, seed, t, x)``, ``loss(n, seed, t)``, ``f_target(x)``, ``x_weight(x)``,
        and ``y``, ``c`` if ``save_state``. ``attrs["complete"]`` is 1, or 0 with
        ``attrs["failure"]`` when a :class:`NumericalFailure` cut the run short.

    Raises
    ------
    NumericalFailure
        When a member's state stops being finite; ``.partial`` is the Dataset so far.
    """
    ns = SIZES(_plain(n), "particles.n")  # ConfigError with the config's messages
    root_seed = ROOT_SEED(_plain(root_seed), "particles.root_seed")
    seeds = _plain(seeds)
    if isinstance(seeds, list):
        seed_ids = C.distinct([C.integer(lo=0)(s, f"particles.seeds[{i}]")
                               for i, s in enumerate(seeds)], "particles.seeds")
    else:
        seed_ids = list(range(C.integer(lo=1)(seeds, "particles.seeds")))
    n_index = list(range(len(ns))) if n_index is None else [int(i) for i in n_index]
    ts = check_save_times(save_times)
    if any(v < 1 for v in ns):
        raise ValueError(f"particles.n={ns} must all be >= 1")
    if len(seed_ids) < 1:
        raise ValueError("particles.seeds must be >= 1")
    if init is not None:
        y0_all, c0_all = (np.asarray(v, float) for v in init)
        if y0_all.ndim == 2:
            y0_all = y0_all[..., None]
        if y0_all.shape[:2] != c0_all.shape or y0_all.shape[2] != problem.N:
            raise ValueError(
                f"init file: y has shape {y0_all.shape} and c {c0_all.shape}; expected "
                f"y (member, particle[, {problem.N}]) and c (member, particle)"
            )
        if ns != [c0_all.shape[1]] or len(seed_ids) != c0_all.shape[0]:
            raise ValueError("with an init file, n and seeds come from its shapes")

    if dynamics.backend == "jax":
        from particles.jax import device_name
        from particles.jax.stepper import JaxParticleStepper as Stepper

        device = device_name()
    else:
        Stepper = ParticleStepper
        device = "cpu (numpy)"
    x = problem.x
    Q, S, T, nmax = x.shape[0], len(seed_ids), len(ts), max(ns)
    f_n = np.full((len(ns), S, T, Q), np.nan)
    loss = np.full((len(ns), S, T), np.nan)
    if save_state:
        ys = np.full((len(ns), S, T, nmax, problem.N), np.nan)
        cs = np.full((len(ns), S, T, nmax), np.nan)

    def dataset(failure=None):
        coords = {"n": np.asarray(ns, np.int32), "seed": np.asarray(seed_ids, np.int32),
                  "t": ts}
        dims_x = ("x",)
        data = {
            "f_n": (("n", "seed", "t", "x"), f_n),
            "loss": (("n", "seed", "t"), loss),
            "f_target": (dims_x, problem.f_x),
            "x_weight": (dims_x, problem.w),
        }
        coords["x"] = x_coord(x)
        if x.shape[1] > 1:
            data["x_nodes"] = (("x", "x_dim"), x)
        if save_state:
            data["y"] = (("n", "seed", "t", "particle", "y_dim"), ys,
                         {"long_name": VARIABLES["y_unit"][0], "units": "1"})
            data["c"] = (("n", "seed", "t", "particle"), cs,
                         {"long_name": VARIABLES["c_unit"][0], "units": "1"})
        attrs = {
            "root_seed": int(root_seed),
            "n_index": json.dumps(n_index),
            "seed_spawn_key": ("SeedSequence(root_seed, spawn_key=(n_index[i_n], seed"
                               + (f", {int(realisation)}))" if realisation else "))")),
            "problem": json.dumps(problem.params()),
            "dynamics": json.dumps(dynamics.params()),
            "time_step_rule": "equal steps <= dt between consecutive save times",
            "backend": dynamics.backend,
            "dtype": dynamics.dtype,
            "device": device,
            **run_status(failure),
        }
        return cf_dataset(data, coords, attrs, title="mfpc particle ensembles")

    first = 0
    if checkpoint is not None:
        checkpoint.track(f_n=f_n, loss=loss, **({"y": ys, "c": cs} if save_state else {}))
        stages = [f"n_index={i}" for i in n_index]
        held = checkpoint.held_stage()
        first = stages.index(held) if held in stages else 0
    for k, nk in enumerate(ns):
        if k < first:
            continue  # finished before the checkpoint was written: its outputs come back
        if checkpoint is not None:
            checkpoint.stage = stages[k]
        rngs = [member_rng(root_seed, n_index[k], s, realisation) for s in seed_ids]
        if init is None:
            draws = [problem.sample_init(r, nk) for r in rngs]
            y = np.stack([d[0] for d in draws])
            c = np.stack([d[1] for d in draws])
        else:
            y, c = y0_all.copy(), c0_all.copy()
        a = 1.0 / nk

        def observe(j, state, k=k, nk=nk, a=a):
            y, c = np.asarray(state.y, float), np.asarray(state.c, float)  # a device's too
            fk = problem.network(y, a * c)
            f_n[k, :, j] = fk
            loss[k, :, j] = problem.loss(fk)
            if save_state:
                ys[k, :, j, :nk] = problem.kernel.wrap(y)
                cs[k, :, j, :nk] = c

        stepper = Stepper(problem, dynamics, a, name="particles",
                          labels=[f"n={nk}, seed {s}" for s in seed_ids])
        run(stepper, stepper.init(y, c, rngs), ts, observe, progress=progress,
            desc=f"particles n={nk}", partial=dataset, checkpoint=checkpoint)
    return dataset()
