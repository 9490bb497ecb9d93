r"""Finite-n dynamics: gradient descent (2.1), SGD (3.1) and Langevin, as pure steps.

A step maps an immutable :class:`State` to the next one; the caller owns the loop
(:mod:`particles.simulate`). Deterministic GD is stepped by an :class:`Integrator`
(explicit Euler, order 1, as in training; classical RK4, order 4, to compare with the
mean field at negligible time error). SGD and Langevin are stepped by Euler–Maruyama:

* SGD (3.1): every step draws a fresh batch :math:`X_1..X_P \sim \mu` per member and
  replaces :math:`\langle\cdot\rangle_\mu` by the batch mean (noise temperature
  :math:`\theta = \Delta t/P`, (3.13)).
* Langevin (Sec. 4.1): :math:`dZ = v(Z)\,dt + \sqrt{2\tau}\,dW` on every coordinate.

Batch sizes and temperatures may follow piecewise-constant schedules in time (the
paper's quench: P changes at a given time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = ["State", "Dynamics", "Integrator", "INTEGRATORS", "step", "scaled_batch"]


class State(NamedTuple):
    """Ensemble state: time, positions y (B, n, N), charges c (B, n)."""

    t: float
    y: np.ndarray
    c: np.ndarray


@dataclass(frozen=True)
class Integrator:
    """An explicit one-step method for z' = v(z) with its declared order."""

    name: str
    order: int

    def __call__(self, v, y, c, h):
        if self.name == "euler":
            vy, vc = v(y, c)
            return y + h * vy, c + h * vc
        k1 = v(y, c)
        k2 = v(y + 0.5 * h * k1[0], c + 0.5 * h * k1[1])
        k3 = v(y + 0.5 * h * k2[0], c + 0.5 * h * k2[1])
        k4 = v(y + h * k3[0], c + h * k3[1])
        y1 = y + (h / 6) * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        c1 = c + (h / 6) * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
        return y1, c1


INTEGRATORS = {"euler": Integrator("euler", 1), "rk4": Integrator("rk4", 4)}


def _schedule(value, t):
    """Value of a piecewise-constant schedule [[t0, v0], [t1, v1], ...] at time t."""
    if np.isscalar(value) or value is None or isinstance(value, dict):
        return value
    current = value[0][1]
    for start, v in value:
        if t + 1e-12 >= start:
            current = v
    return current


def scaled_batch(spec, n) -> int:
    r"""The batch :math:`P = \lceil P_0 n^{2\alpha}\rceil` (``round = "floor"``:
    :math:`\lfloor P_0 n^{2\alpha}\rfloor`) of a scaling table ``{"P0", "alpha"[,
    "round"]}``, at least 1. A relative 1e-12 slack keeps exact products (``0.2 * 1000``)
    from rounding the wrong way."""
    P = spec["P0"] * float(n) ** (2 * spec["alpha"])
    if spec.get("round", "ceil") == "floor":
        return max(1, math.floor(P * (1 + 1e-12)))
    return max(1, math.ceil(P * (1 - 1e-12)))


@dataclass(frozen=True)
class Dynamics:
    r"""How the particles move.

    Parameters
    ----------
    scheme : {"gd", "sgd", "langevin"}
    integrator : {"euler", "rk4"}
        ``rk4`` only for ``gd`` (a noisy step has no order-4 meaning).
    dt : float
        Largest time step; steps are shortened uniformly to land on save times.
    form : {"data", "kernel"}
        Residual form through the data (O(n·Q), default) or the (F, K) form (O(n²)).
    batch : int, dict {"P0": P0, "alpha": alpha[, "round": "ceil"|"floor"]}, or a list
        of [time, P or dict]
        SGD batch size P, the scaling of Sec. 3 :math:`P = \lceil P_0 n^{2\alpha}\rceil`
        (or :math:`\lfloor\cdot\rfloor` with ``round = "floor"``; noise temperature
        :math:`\theta = \Delta t/P \propto n^{-2\alpha}`, (3.23)), or a schedule of
        either (the quench of Sec. 4.2: ``[[0, {P0 = 0.2, alpha = 0.5, round = "floor"}],
        [T_q, {P0 = 0.04, alpha = 1, round = "floor"}]]`` gives
        :math:`P = \lfloor n/5\rfloor`, then :math:`\lfloor (n/5)^2\rfloor` from
        :math:`T_q`; :func:`scaled_batch`).
    temperature : float or list of [time, tau]
        Langevin temperature :math:`\tau`, or a schedule.
    """

    scheme: str = "gd"
    integrator: str = "euler"
    dt: float = 0.05
    form: str = "data"
    batch: object = None
    temperature: object = None

    def __post_init__(self):
        if self.scheme not in ("gd", "sgd", "langevin"):
            raise ValueError(
                f"dynamics.scheme={self.scheme!r} is not known; use 'gd', 'sgd' or 'langevin'"
            )
        if self.integrator not in INTEGRATORS:
            raise ValueError(
                f"dynamics.integrator={self.integrator!r} is not known; use 'euler' or 'rk4'"
            )
        if self.scheme != "gd" and self.integrator != "euler":
            raise ValueError(
                f"dynamics.integrator='{self.integrator}' with scheme='{self.scheme}': "
                "noisy schemes are stepped by Euler–Maruyama; use integrator = 'euler'"
            )
        if not (np.isfinite(self.dt) and self.dt > 0):
            raise ValueError(f"dynamics.dt={self.dt} must be a finite number > 0")
        if self.form not in ("data", "kernel"):
            raise ValueError(f"dynamics.form={self.form!r} is not known; use 'data' or 'kernel'")
        if self.scheme == "sgd" and self.batch is None:
            raise ValueError("dynamics.scheme='sgd' needs dynamics.batch = P (an integer >= 1)")
        if self.scheme == "langevin" and self.temperature is None:
            raise ValueError(
                "dynamics.scheme='langevin' needs dynamics.temperature = tau (a number >= 0)"
            )

    @property
    def order(self) -> int:
        return INTEGRATORS[self.integrator].order

    def batch_at(self, t, n=None) -> int:
        """Batch size at time ``t`` for ``n`` particles."""
        value = _schedule(self.batch, t)
        if isinstance(value, dict):
            if n is None:
                raise ValueError("a batch scaled with n needs n")
            return scaled_batch(value, n)
        return int(value)

    def temperature_at(self, t) -> float:
        return float(_schedule(self.temperature, t))

    def params(self) -> dict:
        return {
            "scheme": self.scheme,
            "integrator": self.integrator,
            "dt": self.dt,
            "form": self.form,
            "batch": self.batch,
            "temperature": self.temperature,
        }


def step(problem, dyn: Dynamics, state: State, h: float, a, rngs=None, *,
         record=None) -> State:
    """Advance ``state`` by one step of size ``h``.

    Parameters
    ----------
    problem : particles.problem.Problem
    dyn : Dynamics
    state : State
    h : float
    a : float or ndarray, shape (B, n)
        Unit weights (``1/n`` for particles).
    rngs : list of numpy.random.Generator, one per member
        Needed by ``sgd`` (batches) and ``langevin`` (noise); member b draws only from
        ``rngs[b]``, so a member rerun alone draws the same numbers.
    record : dict, optional
        Receives ``record["f"]``, the network on the problem's nodes at the step's start,
        when the step computes it (GD and Langevin in the data form;
        :meth:`Problem.velocity`).
    """
    y, c = state.y, state.c
    kernel = problem.kernel
    if dyn.scheme == "gd":
        v = lambda yy, cc: problem.velocity(yy, cc, a, form=dyn.form,  # noqa: E731
                                            record=record)
        y1, c1 = INTEGRATORS[dyn.integrator](v, y, c, h)
    elif dyn.scheme == "sgd":
        P = dyn.batch_at(state.t, y.shape[1])
        xb = np.stack([problem.measure.sample(r, P) for r in rngs])  # (B, P, d)
        wb = np.full(xb.shape[:2], 1.0 / P)
        vy, vc = problem.velocity(y, c, a, x=xb, w=wb)
        y1, c1 = y + h * vy, c + h * vc
    else:
        tau = dyn.temperature_at(state.t)
        vy, vc = problem.velocity(y, c, a, form=dyn.form, record=record)
        noise = [r.standard_normal((y.shape[1], y.shape[2] + 1)) for r in rngs]
        xi = np.stack(noise)  # (B, n, N + 1)
        s = np.sqrt(2.0 * tau * h)
        y1 = y + h * vy + s * kernel.tangent(y, xi[..., :-1])
        c1 = c + h * vc + s * xi[..., -1]
    return State(state.t + h, kernel.retract(y1), c1)
