r"""The one time loop: any stepper advanced between save times, observed, failures handled.

A *stepper* (particles, characteristics, the influence forward and adjoint runs, the
grid, the tangent-linear grid ensemble) declares its state and its step; the driver
:func:`run` never knows which equation is stepped (jax-md ``init_fn, apply_fn``; diffrax
``AbstractSolver.init/step``; py-pde ``Controller``). The protocol (``docs/engine.md``):

``name`` : str
    Which solver, for messages (``"particles (n=64)"``, ``"grid"``, ...).
``advice`` : str
    What to lower when the state stops being finite (``"lower dynamics.dt"``).
``propose(state, t_start, t_end) -> h``
    The next step from ``state`` inside the save interval ``[t_start, t_end]``; ``0``
    when nothing is left to do. Fixed-step steppers return the equal substep ``h`` of
    :func:`substeps` (``m = ceil((t_end - t_start)/dt - 1e-9)``, ``h = (t_end -
    t_start)/m``), computed from the interval alone (so the numbers do not depend on
    where a run was restored).
``step(state, h) -> state``
    One step; it may take a shorter one (the grid's redo) and says so by the time of
    the state it returns. States are ``NamedTuple`` with a float field ``t``.
``check(state) -> None | str``
    ``None`` while the state is finite, else which part is not (``"member(s) ['n=64,
    seed 1']"``); the driver then fails with ``"<name>: non-finite state at t=<t>
    (<which>); <advice>"``. A state that is finite but diverging (a loss that rises where
    it may not, a state that grows by orders of magnitude) is reported as a
    :class:`Divergence` (a ``str``) saying what grew; the driver then fails with
    ``"<name>: diverging at t=<t> (<what>); <advice>"``.
``capture(state) -> dict`` and ``restore(snapshot) -> state``
    The state as a flat dict of numpy arrays and numbers (``np.savez``), the generator
    states under the key ``"rng"`` as a list of ``bit_generator.state`` dicts (JSON);
    ``restore`` on a freshly built stepper continues bitwise as a run that never stopped;
    :mod:`particles.engine.checkpoint` writes them inside long runs (``run(..., checkpoint=)``).
``advance(state, t_end, max_steps) -> (state, k)`` (optional)
    Up to ``max_steps`` steps of the size last proposed in one call (a compiled backend:
    :class:`particles.jax.stepper.JaxParticleStepper`), bitwise ``k`` calls of ``step``;
    the driver uses it when no ``before_step``/``after_step`` watches every step
    (:func:`_advance`).

A run lands on a save time when what is left is at most half the step just taken
(:func:`lands`); the state's time is then set to the save time exactly. These two
functions are the only step-count and landing rule: the driver and every stepper call
them.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
from tqdm.auto import tqdm

__all__ = ["NumericalFailure", "Divergence", "run", "check_save_times", "substeps", "lands"]

log = logging.getLogger(__name__)


class NumericalFailure(RuntimeError):
    """A run produced NaN or overflow, or diverged. ``partial`` holds what was computed.

    ``partial`` is an :class:`xarray.Dataset` with ``attrs["complete"] = 0`` and
    ``attrs["failure"]`` the message (or ``None`` when the caller gave no dataset).
    """

    def __init__(self, message, partial=None):
        super().__init__(message)
        self.partial = partial


class Divergence(str):
    """What a stepper's ``check`` returns for a state that is finite but diverging: the
    text says what grew, from what, to what, and which rule it broke."""


def substeps(t_start, t_end, dt):
    """The equal steps of size at most ``dt`` from ``t_start`` to ``t_end``.

    ``m = ceil((t_end - t_start)/dt - 1e-9)`` (at least 0; the ``1e-9`` keeps an interval
    that is a whole number of steps up to round-off from taking one more) and ``h =
    (t_end - t_start)/m``.

    Returns
    -------
    m : int
        The number of steps; 0 when the interval is shorter than ``1e-9 dt`` (or empty).
    h : float
        Their size; 0.0 when ``m`` is 0.
    """
    span = t_end - t_start
    m = max(0, math.ceil(span / dt - 1e-9))
    return m, (span / m if m else 0.0)


def lands(t, t_end, h):
    """Whether a step of size ``h`` that ended at ``t`` has landed on the save time
    ``t_end``: what is left is at most half of it."""
    return t_end - t <= 0.5 * h


def check_save_times(save_times, t_end=None):
    """Save times as a float array, checked: non-empty, finite, >= 0, increasing."""
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


def run(stepper, state, save_times, observe, *, before_step=None, after_step=None,
        progress=None, desc=None, partial=None, checkpoint=None):
    r"""Advance ``stepper`` from ``state`` to each save time and observe there.

    Parameters
    ----------
    stepper : object following the stepper protocol (module doc)
    state : NamedTuple with a float field ``t``
        ``state.t`` must not exceed ``save_times[0]``.
    save_times : sequence of float, increasing
    observe : callable ``(j, state) -> None | state``
        Called at save time ``j`` with ``state.t == save_times[j]``. It may return a
        state to continue from (the adjoint sweep injects cotangents this way).
    before_step, after_step : callable, optional
        ``before_step(state, h)`` before every step (the influence method records its
        forward run); ``after_step(old, new)`` after every step (statistics).
    progress : bool or None
        The progress bar (in model time); ``None`` shows it only on a terminal.
    desc : str, optional
        Its label (default ``stepper.name``).
    partial : callable ``(message) -> xarray.Dataset``, optional
        Builds the dataset of everything observed so far, marked ``complete = 0``.
    checkpoint : particles.engine.checkpoint.Checkpoint, optional
        If it holds a snapshot of its key and stage, the run restores the state
        (``stepper.restore``), the caller's tracked outputs and its place, and goes on from
        there (``state`` is then not used); while running it writes one when due (at the
        start, after a step that did not land, and after each observation); the file is
        removed when the run completes. A restored run gives bitwise the numbers of one
        that never stopped.

    Returns
    -------
    state
        The state at the last save time.

    Raises
    ------
    NumericalFailure
        When ``stepper.check`` reports a non-finite or diverging state: the message names
        the solver, the time and what to lower; ``.partial`` is ``partial(message)``.
    """
    ts = [float(t) for t in save_times]
    j0, t0, steps = 0, float(state.t), 0
    held = checkpoint.load() if checkpoint is not None else None
    if held is not None:
        state = stepper.restore(held["snapshot"])
        j0, t0, steps = held["j"], held["t0"], held["steps"]
    elif checkpoint is not None and checkpoint.due():
        # a later run of a solver of several runs (one per n) starts with one, so what
        # the earlier runs observed is kept from the start
        checkpoint.save(stepper.capture(state), j=0, t0=t0, steps=0)
    # a stepper with ``advance`` (a compiled backend) takes stretches of steps per call,
    # unless the caller watches every step
    advance = (getattr(stepper, "advance", None)
               if before_step is None and after_step is None else None)
    pace = {}  # seconds per step of the last advance call
    span = max(ts[-1] - float(state.t), 0.0)
    bar = tqdm(total=span, disable=(None if progress is None else not progress),
               desc=desc or stepper.name, unit="time", leave=False)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for j in range(j0, len(ts)):
                t1 = ts[j]
                if j > j0 or held is None:  # else: the restored interval's start
                    t0 = float(state.t)
                while True:
                    h = stepper.propose(state, t0, t1)
                    if not h > 0:
                        break
                    if advance is not None:  # a stretch of steps in one call
                        state, k, landed = _advance(stepper, state, t1, h, partial,
                                                    steps, checkpoint, pace)
                        bar.update(k * h)
                        steps += k
                        if landed:
                            break
                        if checkpoint is not None and checkpoint.due():
                            checkpoint.save(stepper.capture(state), j=j, t0=t0,
                                            steps=steps)
                        continue
                    if before_step is not None:
                        before_step(state, h)
                    new = stepper.step(state, h)
                    taken = float(new.t) - float(state.t)
                    if after_step is not None:
                        after_step(state, new)
                    landed = lands(float(new.t), t1, taken)
                    state = new
                    bar.update(taken)
                    steps += 1
                    bad = stepper.check(state)
                    if bad is not None:
                        _fail(stepper, state, bad, partial, first=steps == 1)
                    if landed:
                        break
                    if checkpoint is not None and checkpoint.due():
                        checkpoint.save(stepper.capture(state), j=j, t0=t0, steps=steps)
                state = state._replace(t=t1)
                got = observe(j, state)
                if got is not None:
                    state = got
                if checkpoint is not None and checkpoint.due() and j + 1 < len(ts):
                    checkpoint.save(stepper.capture(state), j=j + 1, t0=float(state.t),
                                    steps=steps)
    finally:
        bar.close()
    if checkpoint is not None:
        checkpoint.remove()
    return state


#: Most steps of one ``advance`` call (:func:`_advance`).
ADVANCE_STEPS = 256


def _advance(stepper, state, t1, h, partial, steps, checkpoint, pace):
    """One ``stepper.advance`` call toward the save time ``t1``: at most
    :data:`ADVANCE_STEPS` steps, fewer with a checkpoint so that a call takes about a
    quarter of its interval (measured on the previous call). After a call whose state
    fails ``check``, the call is replayed step by step from its start to find the step
    where it failed (the failure contract). Returns ``(state, steps, landed)``."""
    most = ADVANCE_STEPS
    rate = pace.get("rate")
    if checkpoint is not None and rate:
        most = max(1, min(most, int(0.25 * checkpoint.every / rate)))
    start, clock = state, time.perf_counter()
    new, k = stepper.advance(state, t1, most)
    bad = stepper.check(new)  # waits for the call: a device runs it asynchronously
    pace["rate"] = (time.perf_counter() - clock) / max(k, 1)
    if bad is not None:
        state = start
        for i in range(k):
            state, _ = stepper.advance(state, t1, 1)
            bad = stepper.check(state)
            if bad is not None:
                _fail(stepper, state, bad, partial, first=steps + i == 0)
        _fail(stepper, new, stepper.check(new), partial)
    return new, k, t1 - float(new.t) <= 0.5 * h


def _fail(stepper, state, bad, partial, first=False):
    what = "diverging" if isinstance(bad, Divergence) else "non-finite state"
    message = f"{stepper.name}: {what} at t={float(state.t):.6g} ({bad}); {stepper.advice}"
    if first and not isinstance(bad, Divergence):
        # an overflow in the very first step may come from the data, not from the step
        message += ("; it failed at the first step, so check the scales of the initial law "
                    "and of the target as well")
    log.error(message)
    raise NumericalFailure(message, partial(message) if partial is not None else None)
