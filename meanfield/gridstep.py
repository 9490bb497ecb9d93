r"""The grid stepper: SSP-RK3 steps of the CCH scheme for (2.9) under :func:`particles.loop.run`.

Adaptive steps (``dt=None``): each step is ``h = (t_end - t)/k`` with the smallest ``k``
giving ``h <= cfl * bound(m)`` (the positivity bound of :class:`GridSolver` with the
support widened by two cells); a step whose later stages have a smaller bound is redone
shorter (the stepper then returns a state whose time says so). Fixed steps (``dt``): equal
substeps ``<= dt`` between save times and a ValueError when one exceeds the bound.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .defaults import GRID
from .gridsolver import GridSolver

__all__ = ["GridState", "GridStepper"]


class GridState(NamedTuple):
    """Time, cell masses ``m`` (``grid.shape``), cumulative outflow through the c faces;
    ``h``, ``bound`` and ``step_outflow`` describe the step that led here (statistics)."""

    t: float
    m: np.ndarray
    outflow: float = 0.0
    h: float = 0.0
    bound: float = math.inf
    step_outflow: float = 0.0


class GridStepper:
    """SSP-RK3 steps of a :class:`GridSolver` (module doc) for :func:`particles.loop.run`.

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

    def init(self, m, t=0.0) -> GridState:
        return GridState(float(t), np.asarray(m, float))

    def propose(self, state, t_start, t_end):
        self._t_end = t_end
        left = t_end - state.t
        if not left > 0:
            return 0.0
        if self.dt is not None:
            n = math.ceil((t_end - t_start) / self.dt - 1e-9)
            # steps left in this interval: exact integer up to round-off in t
            k = round(left / ((t_end - t_start) / n)) if n else 1
            return left / max(k, 1)
        b = self.solver.step_bound(state.m)
        return left / max(1, math.ceil(left / (self.cfl * b) - 1e-9)) if b < math.inf else left

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
            h = left / math.ceil(left / (self.cfl * res.bound) - 1e-9)
        return GridState(state.t + h, res.m, state.outflow + res.outflow, h, res.bound,
                         res.outflow)

    def check(self, state):
        if np.isfinite(state.outflow) and np.isfinite(state.m.sum()):
            return None
        return "cell masses"

    def capture(self, state) -> dict:
        return {"t": float(state.t), "m": np.array(state.m), "outflow": float(state.outflow)}

    def restore(self, snap) -> GridState:
        return GridState(float(snap["t"]), np.array(snap["m"], float), float(snap["outflow"]))
