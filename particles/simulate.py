r"""Ensembles of finite-n runs over particle counts and seeds, returned as a Dataset.

One time loop alternates "advance to the next save time" with "observe" (save f_n on
the nodes, the loss (1.2) and, if asked, the units). For each n the ensemble of seeds is
one vectorised state of shape (seeds, n, N). Member ``(i_n, i_seed)`` draws its initial
units and all its noise from
``Generator(PCG64(SeedSequence(root_seed, spawn_key=(i_n, i_seed))))``, so any member
rerun alone (``simulate(..., n=[n], seeds=[i_seed], n_index=[i_n])``) gives the same
numbers.
"""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from .dynamics import Dynamics, State, step

__all__ = ["simulate", "integrate", "member_rng", "NumericalFailure", "versions"]

log = logging.getLogger(__name__)


class NumericalFailure(RuntimeError):
    """A run produced NaN or overflow. ``partial`` holds everything computed before."""

    def __init__(self, message, partial=None):
        super().__init__(message)
        self.partial = partial


def member_rng(root_seed: int, i_n: int, i_seed: int) -> np.random.Generator:
    """The generator of ensemble member (i_n, i_seed)."""
    ss = np.random.SeedSequence(int(root_seed), spawn_key=(int(i_n), int(i_seed)))
    return np.random.Generator(np.random.PCG64(ss))


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("mfpc", "numpy", "scipy", "xarray", "h5netcdf", "h5py"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _substeps(t0, t1, dt):
    """Number of equal steps of size <= dt from t0 to t1."""
    return max(0, math.ceil((t1 - t0) / dt - 1e-9))


def integrate(problem, dynamics, state, a, save_times, observe, rngs=None, bar=None,
              before_step=None):
    """The time loop: advance to each save time, then ``observe(j, state)``.

    Steps are equal and at most ``dynamics.dt`` between consecutive save times;
    ``before_step(state, h)``, if given, sees the state at the start of every step (the
    influence method records the forward run this way). Returns ``None``, or
    ``(t, members)`` when some members stopped being finite at time ``t`` (then the loop
    stops; earlier observations stand). Shared by the particle ensembles and the
    characteristics and influence solvers of :mod:`meanfield`.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for j, t_save in enumerate(save_times):
            m = _substeps(state.t, t_save, dynamics.dt)
            if m:
                h = (t_save - state.t) / m
                for _ in range(m):
                    if before_step is not None:
                        before_step(state, h)
                    state = step(problem, dynamics, state, h, a, rngs)
                    if bar is not None:
                        bar.update()
                    ok = _finite_members(state.y, state.c)
                    if not ok.all():
                        return state.t, np.flatnonzero(~ok)
            state = State(float(t_save), state.y, state.c)
            observe(j, state)
    return None


def check_save_times(save_times, t_end=None):
    ts = np.asarray(save_times, dtype=float)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError("dynamics.save_times must be a non-empty list of numbers")
    if not np.all(np.isfinite(ts)) or np.any(ts < 0):
        raise ValueError(f"dynamics.save_times={ts.tolist()} must be finite and >= 0")
    if np.any(np.diff(ts) <= 0):
        raise ValueError(f"dynamics.save_times={ts.tolist()} must be strictly increasing")
    if t_end is not None and ts[-1] > t_end + 1e-12:
        raise ValueError(
            f"dynamics.save_times={ts.tolist()} must lie in [0, t_end={t_end}]; "
            "drop the later times or raise t_end"
        )
    return ts


def _finite_members(y, c):
    s = np.sum(c, axis=-1) + np.sum(y, axis=(-2, -1))
    return np.isfinite(s)


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
    ns = [int(n)] if np.isscalar(n) else [int(v) for v in n]
    seed_ids = list(range(int(seeds))) if np.isscalar(seeds) else [int(s) for s in seeds]
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

    x = problem.x
    Q, S, T, nmax = x.shape[0], len(seed_ids), len(ts), max(ns)
    f_n = np.full((len(ns), S, T, Q), np.nan)
    loss = np.full((len(ns), S, T), np.nan)
    if save_state:
        ys = np.full((len(ns), S, T, nmax, problem.N), np.nan)
        cs = np.full((len(ns), S, T, nmax), np.nan)
    total = sum(_substeps(0.0, ts[-1], dynamics.dt) for _ in ns) if ts[-1] > 0 else 0
    bar = tqdm(total=total, disable=(None if progress is None else not progress),
               desc="particles", unit="step", leave=False)
    failure = None

    def dataset():
        coords = {"n": ns, "seed": seed_ids, "t": ts}
        dims_x = ("x",)
        data = {
            "f_n": (("n", "seed", "t", "x"), f_n),
            "loss": (("n", "seed", "t"), loss),
            "f_target": (dims_x, problem.f_x),
            "x_weight": (dims_x, problem.w),
        }
        if x.shape[1] == 1:
            coords["x"] = x[:, 0]
        else:
            coords["x"] = np.arange(Q)
            data["x_nodes"] = (("x", "x_dim"), x)
        if save_state:
            data["y"] = (("n", "seed", "t", "particle", "y_dim"), ys)
            data["c"] = (("n", "seed", "t", "particle"), cs)
        ds = xr.Dataset(data, coords=coords)
        ds["f_n"].attrs["long_name"] = "network f_n on the x nodes (1.1)"
        ds["loss"].attrs["long_name"] = "loss 1/2 ||f_n - f||^2_mu (1.2)"
        ds.attrs.update(
            {
                "root_seed": int(root_seed),
                "n_index": json.dumps(n_index),
                "seed_spawn_key": "SeedSequence(root_seed, spawn_key=(n_index[i_n], seed))",
                "problem": json.dumps(problem.params()),
                "dynamics": json.dumps(dynamics.params()),
                "time_step_rule": "equal steps <= dt between consecutive save times",
                "versions": json.dumps(versions()),
                "complete": int(failure is None),
            }
        )
        if failure is not None:
            ds.attrs["failure"] = failure
        return ds

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for k, nk in enumerate(ns):
            rngs = [member_rng(root_seed, n_index[k], s) for s in seed_ids]
            if init is None:
                draws = [problem.sample_init(r, nk) for r in rngs]
                y = np.stack([d[0] for d in draws])
                c = np.stack([d[1] for d in draws])
            else:
                y, c = y0_all.copy(), c0_all.copy()
            a = 1.0 / nk

            def observe(j, state, k=k, nk=nk, a=a):
                fk = problem.network(state.y, a * state.c)
                f_n[k, :, j] = fk
                loss[k, :, j] = problem.loss(fk)
                if save_state:
                    ys[k, :, j, :nk] = problem.kernel.wrap(state.y)
                    cs[k, :, j, :nk] = state.c

            bad = integrate(problem, dynamics, State(0.0, y, c), a, ts, observe, rngs, bar)
            if bad is not None:
                t_bad, members = bad
                failure = (
                    f"non-finite state at t={t_bad:.6g} for n={nk}, "
                    f"seed(s) {[seed_ids[b] for b in members][:8]}; the step "
                    f"dt={dynamics.dt} is probably too large for this problem: lower dynamics.dt"
                )
            if failure:
                break
    bar.close()
    ds = dataset()
    if failure:
        log.error(failure)
        raise NumericalFailure(failure, ds)
    return ds
