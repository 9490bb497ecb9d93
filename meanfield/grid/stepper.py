r"""The grid stepper: SSP-RK3 steps of the CCH scheme for (2.9) under :func:`particles.engine.loop.run`.

Both step sizes come from the one rule :func:`particles.engine.loop.substeps`. Adaptive
steps (``dt=None``): each step is ``h = (t_end - t)/k``, the equal substeps of what is left
of the interval at most ``cfl * bound(m)`` (the positivity bound of :class:`GridSolver`
with the support widened by two cells; one step of what is left when it is shorter than
``1e-9`` of that); a step whose later stages have a smaller bound is redone shorter (the
stepper then returns a state whose time says so). Fixed steps (``dt``): the equal
substeps ``<= dt`` of the interval, each step spreading what is left over the steps left
(so the last one ends on the save time up to round-off), and a ValueError when one exceeds
the bound.

Divergence that stays finite (:class:`GridWatch`): the scheme is conservative and,
below its bound, positive, so the total mass plus the outflow may not grow and no cell may
turn negative beyond :data:`MASS_RTOL` of the mass; the mean-field loss (1.2) may not
exceed :data:`LOSS_FACTOR` times its running minimum (a factor, not round-off: with
``tau > 0`` the flow descends the free energy, not the loss); and the positivity bound may
not fall below :data:`BOUND_DROP` times its start (face speeds grown a millionfold would
stall the run in ever smaller steps). A broken rule is a
:class:`particles.engine.loop.Divergence`, a :class:`particles.engine.loop.NumericalFailure` of the driver.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from particles.engine.loop import Divergence, substeps
from particles.steppers import ATOL

from meanfield.defaults import GRID
from meanfield.grid.solver import GridSolver

__all__ = ["GridState", "GridStepper", "GridWatch", "MASS_RTOL", "LOSS_FACTOR", "BOUND_DROP"]

#: Largest relative growth of mass + outflow and largest negative cell mass, relative to
#: the mass. Round-off of the flux updates is ~ eps per cell and step, a random walk over
#: steps: ~ sqrt(10^5 steps) * 2.2e-16 * (cells ~ 10^6) ~ 1e-7 at worst; 1e-6 is above it
#: and far below any blow-up.
MASS_RTOL = 1e-6
#: Largest factor of the mean-field loss over its running minimum (see module doc).
LOSS_FACTOR = 1e3
#: Smallest factor of the positivity bound over its value at the first step.
BOUND_DROP = 1e-6


class GridWatch(NamedTuple):
    """What the divergence check remembers: the mass at the start (cells + outflow), the
    running minimum and the last value of the loss, the positivity bound at the start."""

    mass0: float
    lmin: float
    last: float
    bound0: float


class GridState(NamedTuple):
    """Time, cell masses ``m`` (``grid.shape``), cumulative outflow through the c faces;
    ``h``, ``bound`` and ``step_outflow`` describe the step that led here (statistics)."""

    t: float
    m: np.ndarray
    outflow: float = 0.0
    h: float = 0.0
    bound: float = math.inf
    step_outflow: float = 0.0
    watch: GridWatch | None = None


class GridStepper:
    """SSP-RK3 steps of a :class:`GridSolver` (module doc) for :func:`particles.engine.loop.run`.

    Parameters
    ----------
    solver : GridSolver
    cfl : float in (0, 1]
    dt : float, optional
        Fixed largest step instead of the adaptive ``cfl * bound``.
    name : str
        The solver named in failure messages.
    """

    def __init__(self, solver: GridSolver, *, cfl=GRID["cfl"], dt=None, name="grid"):
        self.solver, self.cfl, self.dt, self.name = solver, float(cfl), dt, name
        self.advice = ("lower meanfield.cfl (or dt)" if dt is None
                       else f"lower meanfield.dt={dt}")
        self._t_end = None  # the save time the proposed step heads for (for a redo)
        p = solver.problem
        self._f_scale = 0.5 * float(np.sum(p.w * p.f_x ** 2))  # loss scale of ATOL

    def init(self, m, t=0.0) -> GridState:
        return GridState(float(t), np.asarray(m, float))

    def propose(self, state, t_start, t_end):
        self._t_end = t_end
        left = t_end - state.t
        if not left > 0:
            return 0.0
        if self.dt is not None:
            _, h = substeps(t_start, t_end, self.dt)  # > 0 since left > 0
            # steps left in this interval: exact integer up to round-off in t
            return left / max(round(left / h), 1)
        b = self.solver.step_bound(state.m)
        if not b < math.inf:
            return left
        k, h = substeps(state.t, t_end, self.cfl * b)
        return h if k else left

    def step(self, state, h):
        s, m = self.solver, state.m
        k0, rate0, b0 = s.start(m)
        left = self._t_end - state.t if self._t_end is not None else h
        for attempt in range(31):
            res = s.rk3(m, h, k0, rate0, b0)
            if h <= res.bound * (1 + 1e-12):
                break
            if self.dt is not None:
                raise ValueError(
                    f"dt={h:.4g} exceeds the CFL (positivity) bound {res.bound:.4g} at "
                    f"t={state.t:.4g} on this grid; use dt <= {self.cfl * res.bound:.3g}, or "
                    "dt=None for the adaptive step cfl*bound"
                )
            if attempt == 30:  # pragma: no cover - the bound moves by O(h) per stage
                raise RuntimeError(f"no step below the positivity bound at t={state.t:.6g}")
            h = substeps(0.0, left, self.cfl * res.bound)[1]  # span: left exactly
        w = state.watch
        if w is None:
            l0 = s.loss(m)
            w = GridWatch(float(m.sum()) + state.outflow, l0, l0, b0)
        w = w._replace(lmin=min(w.lmin, w.last), last=s.loss(res.m))
        return GridState(state.t + h, res.m, state.outflow + res.outflow, h, res.bound,
                         res.outflow, w)

    def check(self, state):
        mass = float(state.m.sum()) + state.outflow
        if not np.isfinite(mass):
            return "cell masses"
        w = state.watch
        if w is None:
            return None
        low = float(state.m.min())
        if mass > w.mass0 * (1 + MASS_RTOL) or low < -MASS_RTOL * w.mass0:
            return Divergence(
                f"mass + outflow {mass:.6g} from {w.mass0:.6g}, smallest cell mass {low:.3g}: "
                f"the scheme conserves mass and keeps it >= 0 up to {MASS_RTOL:g} of it")
        if not w.last <= LOSS_FACTOR * w.lmin + ATOL * (self._f_scale + w.lmin):
            return Divergence(
                f"the mean-field loss rose to {w.last:.3g} from its running minimum "
                f"{w.lmin:.3g}, beyond {LOSS_FACTOR:.0e} times it")
        if state.bound < BOUND_DROP * w.bound0:
            return Divergence(
                f"the positivity bound fell to {state.bound:.3g} from {w.bound0:.3g} at the "
                f"start: face speeds grew beyond {1 / BOUND_DROP:.0e} times theirs")
        return None

    def capture(self, state) -> dict:
        snap = {"t": float(state.t), "m": np.array(state.m), "outflow": float(state.outflow)}
        if state.watch is not None:
            snap.update({f"watch_{k}": float(v) for k, v in state.watch._asdict().items()})
        return snap

    def restore(self, snap) -> GridState:
        w = None
        if "watch_mass0" in snap:
            w = GridWatch(*(float(snap[f"watch_{k}"]) for k in GridWatch._fields))
        return GridState(float(snap["t"]), np.array(snap["m"], float), float(snap["outflow"]),
                         watch=w)
