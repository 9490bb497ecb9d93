r"""Finite-n dynamics: gradient descent (2.1), SGD (3.1) and Langevin, as pure steps.

A step maps an immutable :class:`State` to the next one; the caller owns the loop
(:mod:`particles.simulate`). Deterministic GD is stepped by an :class:`Integrator`
(explicit Euler, order 1, as in training; classical RK4, order 4, to compare with the
mean field at negligible time error). SGD and Langevin are stepped by Euler–Maruyama:

* SGD (3.1): every step draws a fresh batch :math:`X_1..X_P \sim \mu` per member and
  replaces :math:`\langle\cdot\rangle_\mu` by the batch mean (noise temperature
  :math:`\theta = \Delta t/P`, (3.13)). :class:`Batches` draws the batches of several
  steps at once, the same points as step by step.
* Langevin (Sec. 4.1): :math:`dZ = v(Z)\,dt + \sqrt{2\tau}\,dW` on every coordinate.

Batch sizes and temperatures may follow piecewise-constant schedules in time (the
paper's quench: P changes at a given time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from particles.engine import config as C

__all__ = ["State", "Dynamics", "Integrator", "INTEGRATORS", "Batches", "step", "DRAW_BUDGET",
           "DRAW_AHEAD", "scaled_batch", "TRAIN_ALL", "c_velocity"]

#: Elements (points times coordinates, all members) of the batches drawn ahead (32 MiB).
DRAW_BUDGET = 2**22
#: Most steps whose batches are drawn in one call per member.
DRAW_AHEAD = 64
#: ``Dynamics.train`` of trained units: every coordinate moves.
TRAIN_ALL = ("y", "c")


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


def _plain(v):
    """numpy scalars and arrays as Python numbers and lists (for the config's checks)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


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


def _batch_value(v, where):
    """One batch: an integer P >= 1 or a scaling table ``{P0 > 0, 0 <= alpha <= 1[,
    round]}``."""
    if isinstance(v, dict):
        return C.check_section(v, {"P0": C.number(lo=0, lo_open=True),
                                   "alpha": C.number(lo=0, hi=1),
                                   "round": C.choice("ceil", "floor")},
                               where, required=("P0", "alpha"))
    return C.integer(lo=1)(v, where)


#: the rules of ``dynamics.batch`` and ``dynamics.temperature``: the config's schema
#: (:mod:`analysis.run.schema`) and :class:`Dynamics` check with the same ones
BATCH = C.schedule(_batch_value)
TEMPERATURE = C.schedule(C.number(lo=0))


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
    train : sequence of str
        The coordinates that move: ``("y", "c")`` (default, trained units) or ``("c",)``
        (random features: y stays at its initial draw, bitwise; only c is trained, and
        Langevin noise acts on c only). The y velocity is then never computed.
    backend : {"numpy", "jax"}
        Who steps the particles: the numpy steppers of :mod:`particles.steppers`, or the
        compiled ones of :mod:`particles.jax` (``docs/backends.md``).
    dtype : {"float64", "float32"}
        The particles' floating-point type; ``"float32"`` only on the JAX backend.
    """

    scheme: str = "gd"
    integrator: str = "euler"
    dt: float = 0.05
    form: str = "data"
    batch: object = None
    temperature: object = None
    train: tuple = TRAIN_ALL
    backend: str = "numpy"
    dtype: str = "float64"

    def __post_init__(self):
        train = self.train
        if isinstance(train, str) or not all(isinstance(v, str) for v in train) or (
                sorted(train) not in (["c", "y"], ["c"])) or len(set(train)) != len(train):
            raise ValueError(
                f"dynamics.train={list(train) if not isinstance(train, str) else train!r} is "
                'not known; use ["y", "c"] (trained units, the default) or ["c"] (random '
                "features: y frozen at its draw)")
        object.__setattr__(self, "train", TRAIN_ALL if len(train) == 2 else ("c",))
        if self.backend not in ("numpy", "jax"):
            raise ValueError(
                f"dynamics.backend={self.backend!r} is not known; use 'numpy' or 'jax'")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(
                f"dynamics.dtype={self.dtype!r} is not known; use 'float64' or 'float32'")
        if self.dtype == "float32" and self.backend != "jax":
            raise ValueError(
                "dynamics.dtype='float32' needs backend = 'jax' (the numpy backend computes "
                "in float64); set dynamics.backend = 'jax' or drop dynamics.dtype")
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
        if self.batch is not None:  # ConfigError (a ValueError) with the config's message
            object.__setattr__(self, "batch", BATCH(_plain(self.batch), "dynamics.batch"))
        if self.temperature is not None:
            object.__setattr__(self, "temperature",
                               TEMPERATURE(_plain(self.temperature), "dynamics.temperature"))
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

    @property
    def frozen_y(self) -> bool:
        """True when only c is trained (``train = ["c"]``)."""
        return self.train == ("c",)

    def params(self) -> dict:
        """The resolved keys (the run identity); ``train``, ``backend`` and ``dtype`` only
        when they differ from the defaults, so that the identity of a config without them
        does not depend on the keys' existence."""
        out = {
            "scheme": self.scheme,
            "integrator": self.integrator,
            "dt": self.dt,
            "form": self.form,
            "batch": self.batch,
            "temperature": self.temperature,
        }
        if self.frozen_y:
            out["train"] = list(self.train)
        if self.backend != "numpy":
            out["backend"] = self.backend
        if self.dtype != "float64":
            out["dtype"] = self.dtype
        return out


class Batches:
    r"""Per-member streams of SGD data points, drawn several steps ahead.

    Member b's points come from its own generator ``rngs[b]`` only, in the order in
    which ``measure.sample`` draws them: when the measure declares ``"stream"`` (one call
    ``sample(rng, P + P')`` draws the points of ``sample(rng, P)`` then
    ``sample(rng, P')``, bitwise), the batches of the next K steps are drawn in one call
    per member into a (B, K·P, d) buffer (K as large as :data:`DRAW_BUDGET` allows, at
    most :data:`DRAW_AHEAD`), and every step takes the next P points: the numbers are
    those of drawing P points per member every step, so the loop over members runs once
    per K steps. A batch size that changes mid-buffer (a schedule) takes what is left
    and draws the rest ahead again. A measure without ``"stream"`` is drawn step by
    step. The stream is consumed, like a generator: :meth:`capture` and
    :meth:`resume` save and rebuild it bitwise.

    Parameters
    ----------
    measure : object with ``sample(rng, P) -> (P, d)``
    rngs : sequence of numpy.random.Generator, one per member
    budget : int, optional
        Elements of the buffer (default :data:`DRAW_BUDGET`).
    """

    def __init__(self, measure, rngs, *, budget=None):
        self.measure = measure
        self.rngs = tuple(rngs)
        self.budget = DRAW_BUDGET if budget is None else int(budget)
        self.ahead = "stream" in getattr(measure, "capabilities", ())
        self.buf = None  # (B, points, d): carry then fresh points
        self.used = 0  # points of buf already taken
        self.start = None  # the generators' states before the fresh points were drawn
        self.carry = None  # (B, L, d): the points left from the previous buffer
        self.size = 0  # fresh points drawn per member

    def take(self, P) -> np.ndarray:
        """The next ``P`` points of every member, shape (B, P, d) (not to be written)."""
        if self.buf is None or self.used + P > self.buf.shape[1]:
            self._refill(P)
        x = self.buf[:, self.used : self.used + P]
        self.used += P
        return x

    def _refill(self, P):
        B = len(self.rngs)
        carry = None if self.buf is None else self.buf[:, self.used :]
        left = 0 if carry is None else carry.shape[1]
        if self.ahead:
            d = self.buf.shape[2] if self.buf is not None else getattr(self.measure, "d", 1)
            k = min(DRAW_AHEAD, max(1, self.budget // max(1, B * P * d)))
        else:
            k = 1
        self._fill(carry, k * P - left)

    def _fill(self, carry, size):
        """Draw ``size`` fresh points per member after ``carry`` (B, L, d) or None."""
        self.start = [r.bit_generator.state for r in self.rngs]
        left = 0 if carry is None else carry.shape[1]
        buf = None
        for b, r in enumerate(self.rngs):  # once per buffer; one member's points at a time
            pts = np.asarray(self.measure.sample(r, size), float)
            if buf is None:
                buf = np.empty((len(self.rngs), left + size, pts.shape[-1]))
            buf[b, left:] = pts
        if left:
            buf[:, :left] = carry
        self.carry = buf[:, :left].copy()
        self.buf, self.used, self.size = buf, 0, size

    def capture(self) -> dict:
        """What :meth:`resume` needs: the generators' states before the buffer's fresh
        points (``"rng"``), their number, the points taken and the carried points."""
        if self.buf is None:
            return {"rng": [r.bit_generator.state for r in self.rngs]}
        return {"rng": self.start, "draw_size": self.size, "draw_used": self.used,
                "draw_carry": self.carry}

    @classmethod
    def resume(cls, measure, rngs, snap, *, budget=None):
        """The stream of :meth:`capture`: ``rngs`` are generators in the states of
        ``snap["rng"]``; the fresh points are drawn again, so the generators end where
        the captured ones were."""
        new = cls(measure, rngs, budget=budget)
        if "draw_size" in snap:
            carry = np.asarray(snap["draw_carry"], float)
            new._fill(carry if carry.shape[1] else None, int(snap["draw_size"]))
            new.used = int(snap["draw_used"])
        return new


def _batch(measure, rngs, P):
    """(B, P, d) points, member b's from ``rngs[b]`` (a :class:`Batches` or generators)."""
    if isinstance(rngs, Batches):
        return rngs.take(P)
    return np.stack([measure.sample(r, P) for r in rngs])


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
    rngs : list of numpy.random.Generator, one per member, or Batches
        Needed by ``sgd`` (batches) and ``langevin`` (noise); member b draws only from
        ``rngs[b]``, so a member rerun alone draws the same numbers. For ``sgd``, a
        :class:`Batches` stream over the same generators gives the same batches with
        the draws amortised over several steps.
    record : dict, optional
        Receives ``record["f"]``, the network on the problem's nodes at the step's start,
        when the step computes it (GD and Langevin in the data form;
        :meth:`Problem.velocity`).
    """
    y, c = state.y, state.c
    kernel = problem.kernel
    if dyn.frozen_y:
        return _step_c(problem, dyn, state, h, a, rngs, record)
    if dyn.scheme == "gd":
        v = lambda yy, cc: problem.velocity(yy, cc, a, form=dyn.form,  # noqa: E731
                                            record=record)
        y1, c1 = INTEGRATORS[dyn.integrator](v, y, c, h)
    elif dyn.scheme == "sgd":
        P = dyn.batch_at(state.t, y.shape[1])
        xb = _batch(problem.measure, rngs, P)  # (B, P, d)
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


def c_velocity(problem, y, c, a, *, x=None, w=None, form="data", record=None):
    r"""The c velocity of (2.1) alone, :math:`\dot c_i = -\langle\varphi(\cdot, y_i),
    r\rangle_\mu` (``form = "kernel"``: :math:`F(y_i) - \sum_j K(y_i, y_j)a_jc_j`), for
    frozen y: :meth:`particles.problem.Problem.velocity` (same shapes and ``record``),
    whose fused pull-back and fused form compute the y gradient as one more contraction
    of what they compute anyway (evaluating φ alone again costs more:
    ``benchmarks/bench_baselines.py``); the y velocity is dropped, never stepped.
    Returns vc (B, n)."""
    return problem.velocity(y, c, a, x=x, w=w, form=form, record=record)[1]


def _step_c(problem, dyn, state, h, a, rngs, record):
    """One step of ``train = ["c"]``: y is returned as it came (the same array)."""
    y, c = state.y, state.c
    if dyn.scheme == "gd":
        v = lambda _, cc: (0.0, c_velocity(problem, y, cc, a, form=dyn.form,  # noqa: E731
                                            record=record))
        _, c1 = INTEGRATORS[dyn.integrator](v, 0.0, c, h)  # y's stages: scalars 0
    elif dyn.scheme == "sgd":
        P = dyn.batch_at(state.t, y.shape[1])
        xb = _batch(problem.measure, rngs, P)
        c1 = c + h * c_velocity(problem, y, c, a, x=xb, w=np.full(xb.shape[:2], 1.0 / P))
    else:
        tau = dyn.temperature_at(state.t)
        vc = c_velocity(problem, y, c, a, form=dyn.form, record=record)
        xi = np.stack([r.standard_normal(y.shape[1]) for r in rngs])  # (B, n)
        c1 = c + h * vc + np.sqrt(2.0 * tau * h) * xi
    return State(state.t + h, y, c1)
