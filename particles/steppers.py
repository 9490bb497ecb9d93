r"""The particle stepper: GD (Euler, RK4), SGD and Langevin ensembles for :mod:`particles.loop`.

The state is a batch of weighted unit systems (members b = 1..B, units i = 1..n),
advanced by :func:`particles.dynamics.step` (GD (2.1), SGD (3.1), Langevin Sec. 4.1). With
unit weights ``a = 1/n`` it is the finite-n network of :func:`particles.simulate.simulate`;
with quadrature weights ``w_j`` it is the characteristics of the mean field
(:mod:`meanfield.characteristics`). Member b draws its batches and noise only from its
own generator ``rngs[b]``, which travels in the state.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .dynamics import Dynamics, State, step

__all__ = ["ParticleState", "ParticleStepper", "substeps"]


class ParticleState(NamedTuple):
    """Time, positions y (B, n, N), charges c (B, n), one generator per member (or None)."""

    t: float
    y: np.ndarray
    c: np.ndarray
    rngs: tuple | None = None


def substeps(t0, t1, dt):
    """Number of equal steps of size <= dt from t0 to t1."""
    return max(0, math.ceil((t1 - t0) / dt - 1e-9))


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

    def init(self, y, c, rngs=None, t=0.0) -> ParticleState:
        """The state at time ``t`` from y (B, n, N), c (B, n) and the members' generators."""
        return ParticleState(float(t), y, c, None if rngs is None else tuple(rngs))

    def propose(self, state, t_start, t_end):
        m = substeps(t_start, t_end, self.dynamics.dt)
        return (t_end - t_start) / m if m else 0.0

    def step(self, state, h):
        new = step(self.problem, self.dynamics, State(state.t, state.y, state.c), h, self.a,
                   state.rngs)
        return ParticleState(new.t, new.y, new.c, state.rngs)

    def check(self, state):
        s = np.sum(state.c, axis=-1) + np.sum(state.y, axis=(-2, -1))
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size == 0:
            return None
        who = [self.labels[b] for b in bad[:8]] if self.labels is not None else bad[:8].tolist()
        return f"member(s) {who}"

    def capture(self, state) -> dict:
        snap = {"t": float(state.t), "y": np.array(state.y), "c": np.array(state.c)}
        if state.rngs is not None:
            snap["rng"] = [r.bit_generator.state for r in state.rngs]
        return snap

    def restore(self, snap) -> ParticleState:
        rngs = None
        if snap.get("rng") is not None:
            rngs = []
            for st in snap["rng"]:
                bg = getattr(np.random, st["bit_generator"])()
                bg.state = st
                rngs.append(np.random.Generator(bg))
        return self.init(np.array(snap["y"], float), np.array(snap["c"], float), rngs,
                         t=float(snap["t"]))
