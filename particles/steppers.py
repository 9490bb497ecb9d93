r"""The particle stepper: GD (Euler, RK4), SGD and Langevin ensembles for :mod:`particles.engine.loop`.

The state is a batch of weighted unit systems (members b = 1..B, units i = 1..n),
advanced by :func:`particles.dynamics.step` (GD (2.1), SGD (3.1), Langevin Sec. 4.1). With
unit weights ``a = 1/n`` it is the finite-n network of :func:`particles.simulate.simulate`;
with quadrature weights ``w_j`` it is the characteristics of the mean field
(:mod:`meanfield.characteristics`). Member b draws its batches and noise only from its
own generator ``rngs[b]``, which travels in the state; SGD batches come through a
:class:`particles.dynamics.Batches` stream over those generators (drawn several steps
ahead, the same points), which :meth:`ParticleStepper.capture` saves as the generators'
states at the buffer's start, the points taken and any carried points.

Divergence that stays finite (``docs/engine.md``, "Divergence"): :meth:`ParticleStepper.check`
watches every member's loss (1.2) against its running minimum and the charges against
their start (:class:`Watch`), and reports a :class:`particles.engine.loop.Divergence`:

* GD in the residual form (``form = "data"``) is a gradient flow of the loss, and so is
  every stable Euler or RK4 step of it (descent lemma, ``h < 2/L``): the loss may not rise
  above its running minimum by more than round-off, :data:`GD_RTOL` relative plus
  :data:`ATOL` of the loss scale. The loss is the one the step computes anyway (the
  network values of its first velocity evaluation, at the step's start), so the check
  costs nothing and sees a rise one step late; a step that lands on a save time is also
  checked at its end (one network evaluation), so no diverged state is ever observed.
* SGD, Langevin and the kernel form (whose flow descends the energy (4.5), not the loss)
  may raise the loss: it may not exceed :data:`NOISY_FACTOR` times its running minimum.
  Their loss is evaluated on the nodes every ``stride`` steps (one evaluation costs about
  ``Q/P`` SGD steps or ``Q/n`` kernel-form steps; the stride keeps the overhead near
  1/8).
* Every scheme: the largest charge may not exceed :data:`STATE_FACTOR` times its start
  (at least 1).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from particles.dynamics import Batches, Dynamics, State, step
from particles.engine.loop import Divergence, lands, substeps

__all__ = ["ParticleState", "ParticleStepper", "Watch", "GD_RTOL", "ATOL",
           "NOISY_FACTOR", "STATE_FACTOR"]

#: GD: largest relative rise of the loss over its running minimum. Round-off of the loss
#: ``0.5 sum_q w_q r_q^2`` over Q nodes is ~ Q eps relative (1.4e-14 for Q = 64, 2e-12 for
#: Q = 10^4); the network values ``r_q`` carry n eps of the sum of |a_i c_i phi|, which
#: the absolute part below covers. 1e-10 leaves a margin of 50 or more.
GD_RTOL = 1e-10
#: Absolute part of every loss tolerance, relative to the loss scale
#: ``L_ref = 0.5 |f|^2_mu + L(0) + 0.5 E[c^2 |phi|^2_mu]`` (the last term: the scale of the
#: units themselves, which keeps L_ref > 0 when f = 0 and L(0) = 0, a target the network
#: already represents): the absolute round-off of the loss,
#: ``sqrt(2 L) * n eps * sum_i |a_i c_i| sup|phi|``, is ~ 1e4 * 2.2e-16 * L_ref ~ 2e-12 L_ref
#: for n <= 10^4 units with charges of the target's size.
ATOL = 1e-10
#: SGD, Langevin, kernel form: largest factor of the loss over its running minimum. The
#: noise of SGD (temperature dt/P) and Langevin (tau) keeps the loss near a floor where it
#: fluctuates by O(1) factors; a rise by 10^3 is a divergence, not noise.
NOISY_FACTOR = 1e3
#: Every scheme: largest factor of max|c| over max(1, max|c(0)|). Under GD the charges
#: move at most ``sup|phi| sqrt(2 L(0))`` per unit time; the shipped examples reach
#: |c| ~ 70 from O(1) starts; 10^6 is far beyond any run and far below an overflow.
STATE_FACTOR = 1e6


class Watch(NamedTuple):
    """What the divergence check remembers: per member the running minimum of the loss
    ``lmin`` and the last loss seen ``last`` (B,), the charge scale ``cref`` (B,) (max(1,
    max|c(0)|)), the loss scale ``lref`` (B,) and the number of steps taken."""

    lmin: np.ndarray
    last: np.ndarray
    cref: np.ndarray
    lref: np.ndarray
    steps: int = 0


class ParticleState(NamedTuple):
    """Time, positions y (B, n, N), charges c (B, n), one generator per member (or None),
    the divergence watch (or None before the first step) and, for SGD, the members'
    batch streams over those generators (:class:`particles.dynamics.Batches`, or None)."""

    t: float
    y: np.ndarray
    c: np.ndarray
    rngs: tuple | None = None
    watch: Watch | None = None
    draws: Batches | None = None


class ParticleStepper:
    r"""Fixed equal substeps of :func:`particles.dynamics.step` between save times.

    Parameters
    ----------
    problem : particles.problem.Problem
    dynamics : Dynamics
    a : float or ndarray, shape (B, n)
        Unit weights: ``1/n`` for a network, quadrature weights for characteristics.
    name : str
        The solver named in failure messages.
    labels : sequence of str, optional
        One label per member for failure messages (e.g. ``"seed 3"``).
    advice : str, optional
        What to lower on failure (default: ``dynamics.dt``).
    """

    def __init__(self, problem, dynamics: Dynamics, a, *, name="particles", labels=None,
                 advice=None):
        self.problem, self.dynamics, self.a = problem, dynamics, a
        self.name = name
        self.labels = labels
        self.advice = advice or (f"the step dt={dynamics.dt} is probably too large for "
                                 "this problem: lower dynamics.dt")
        #: the loss is a Lyapunov function of the step (GD in the residual form)
        self.monotone = dynamics.scheme == "gd" and dynamics.form == "data"
        self._t_end = None
        #: the step computes the network on the nodes at its start (GD, Langevin in the
        #: data form): the loss comes with it
        self._records = dynamics.scheme != "sgd" and dynamics.form == "data"
        self._f_scale = 0.5 * float(np.sum(problem.w * problem.f_x ** 2))

    def init(self, y, c, rngs=None, t=0.0) -> ParticleState:
        """The state at time ``t`` from y (B, n, N), c (B, n) and the members' generators."""
        rngs = None if rngs is None else tuple(rngs)
        draws = (Batches(self.problem.measure, rngs)
                 if rngs is not None and self.dynamics.scheme == "sgd" else None)
        return ParticleState(float(t), y, c, rngs, None, draws)

    def propose(self, state, t_start, t_end):
        self._t_end = t_end  # the save time the step heads for (checked on landing)
        return substeps(t_start, t_end, self.dynamics.dt)[1]

    def _stride(self, state):
        """Steps between two loss evaluations on the nodes (SGD, kernel form)."""
        Q, n = self.problem.x.shape[0], state.c.shape[-1]
        work = (self.dynamics.batch_at(state.t, n) if self.dynamics.scheme == "sgd" else n)
        # one evaluation on Q nodes costs about Q/work steps: every 8 Q/work steps it adds
        # about 1/8 to the run
        return max(1, math.ceil(8 * Q / max(work, 1)))

    def _unit_scale(self, y, c, sample=16):
        r"""The loss scale of the units themselves, :math:`\tfrac12 E[c^2 \|\varphi(\cdot,
        y)\|^2_\mu]` (B,) (weighted by ``a``, over at most ``sample`` evenly spaced units):
        the floor of the loss scale when the target and the initial loss are 0 (a target
        the network already represents), where the round-off of the network values
        (``n eps sum_i |a_i c_i phi|``, :data:`ATOL`) is still of this size."""
        n = c.shape[-1]
        idx = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(int))
        a = np.broadcast_to(self.a, c.shape)[..., idx]
        with np.errstate(all="ignore"):
            phi2 = np.sum(self.problem.kernel.phi(self.problem.x, y[..., idx, :]) ** 2
                          * self.problem.w, axis=-1)  # (B, m): ||phi(., y_j)||^2_mu
            scale = 0.5 * np.sum(a * c[..., idx] ** 2 * phi2, axis=-1) / np.sum(a, axis=-1)
        return np.where(np.isfinite(scale), scale, 0.0)

    def _loss(self, y, c):
        a = np.broadcast_to(self.a, c.shape)
        return self.problem.loss(self.problem.network(y, a * c))

    def step(self, state, h):
        watch = state.watch
        record = {} if self._records else None
        new = step(self.problem, self.dynamics, State(state.t, state.y, state.c), h, self.a,
                   state.rngs if state.draws is None else state.draws, record=record)
        seen = []  # losses in time order: at the step's start (recorded), at its end
        if record:
            seen.append(self.problem.loss(record["f"]))
        if watch is None:
            cref = np.maximum(1.0, np.max(np.abs(state.c), axis=-1))
            l0 = seen[0] if seen else self._loss(state.y, state.c)
            lref = (self._f_scale + np.where(np.isfinite(l0), l0, 0.0)
                    + self._unit_scale(state.y, state.c))
            watch = Watch(l0.copy(), l0.copy(), cref, lref, 0)
        steps = watch.steps + 1
        # a step that lands on a save time is checked at its end, before it is observed
        landing = self._t_end is not None and lands(new.t, self._t_end, h)
        if landing or (not seen and steps % self._stride(state) == 0):
            seen.append(self._loss(new.y, new.c))
        for loss in seen:
            if self._broken(watch) is not None:
                break  # keep the loss that broke the rule for check to report
            watch = watch._replace(lmin=np.fmin(watch.lmin, watch.last), last=loss)
        return ParticleState(new.t, new.y, new.c, state.rngs, watch._replace(steps=steps),
                             state.draws)

    def _broken(self, w):
        """Indices of the members whose last loss breaks the rule (module doc), or None."""
        atol = ATOL * w.lref
        if self.monotone:
            limit = w.lmin + GD_RTOL * w.lmin + atol
        else:
            limit = NOISY_FACTOR * w.lmin + atol
        bad = np.flatnonzero(~(w.last <= limit))
        return bad if bad.size else None

    def check(self, state):
        w = state.watch
        if w is None:
            return check_members(state.c, state.y, self.labels)
        bad = self._broken(w)
        return check_members(state.c, state.y, self.labels, w.cref, w.lmin, w.last,
                             np.array([], int) if bad is None else bad, w.steps,
                             self.monotone, GD_RTOL, self.dynamics)

    def capture(self, state) -> dict:
        snap = {"t": float(state.t), "y": np.array(state.y), "c": np.array(state.c)}
        if state.draws is not None:  # the generators' states at the buffer's start, ...
            snap.update(state.draws.capture())
        elif state.rngs is not None:
            snap["rng"] = [r.bit_generator.state for r in state.rngs]
        if state.watch is not None:
            snap.update({f"watch_{k}": np.array(v) for k, v in state.watch._asdict().items()})
        return snap

    def restore(self, snap) -> ParticleState:
        rngs = None
        if snap.get("rng") is not None:
            rngs = []
            for st in snap["rng"]:
                bg = getattr(np.random, st["bit_generator"])()
                bg.state = st
                rngs.append(np.random.Generator(bg))
        state = self.init(np.array(snap["y"], float), np.array(snap["c"], float), rngs,
                          t=float(snap["t"]))
        if state.draws is not None:  # the buffer drawn again: the generators end as saved
            state = state._replace(draws=Batches.resume(self.problem.measure, state.rngs,
                                                        snap))
        if "watch_lmin" in snap:
            w = Watch(*(np.array(snap[f"watch_{k}"], float) for k in Watch._fields[:4]),
                      int(snap["watch_steps"]))
            state = state._replace(watch=w)
        return state


def check_members(c, y, labels, cref=None, lmin=None, last=None, broken=(), steps=0,
                  monotone=True, rtol=GD_RTOL, dynamics=None):
    """The failure contract's verdict on a batch of members (module doc), for every
    particle stepper: None while finite and healthy; a str naming the members whose state
    is not finite; a :class:`Divergence` for a charge grown beyond :data:`STATE_FACTOR`
    times its start (``cref``) or for the members ``broken`` whose loss broke the rule
    (``last`` against the running minimum ``lmin``; ``rtol`` of gradient descent,
    ``monotone``, else :data:`NOISY_FACTOR`). ``labels`` name the members (else indices).
    """
    def who(bad):
        return [labels[b] for b in bad[:8]] if labels is not None else bad[:8].tolist()

    c, y = np.asarray(c, float), np.asarray(y, float)
    bad = np.flatnonzero(~np.isfinite(np.sum(c, axis=-1) + np.sum(y, axis=(-2, -1))))
    if bad.size:
        return f"member(s) {who(bad)}"
    if cref is None:
        return None
    cmax = np.max(np.abs(c), axis=-1)
    bad = np.flatnonzero(cmax > STATE_FACTOR * cref)
    if bad.size:
        b = bad[0]
        return Divergence(
            f"member(s) {who(bad)}: the largest charge |c| = {cmax[b]:.3g} grew "
            f"beyond {STATE_FACTOR:.0e} times its start {cref[b]:.3g}")
    if not len(broken):
        return None
    if monotone:
        rule = f"gradient descent may not raise it by more than round-off ({rtol:.0e} relative)"
    else:
        rule = (f"{dynamics.scheme} ({dynamics.form} form) may not raise it beyond "
                f"{NOISY_FACTOR:.0e} times its running minimum")
    b = broken[0]
    what = "loss" if np.isfinite(last[b]) else "non-finite loss"
    return Divergence(
        f"member(s) {who(broken)}: the {what} rose to {last[b]:.3g} from its running "
        f"minimum {lmin[b]:.3g} after {steps} steps; {rule}")
