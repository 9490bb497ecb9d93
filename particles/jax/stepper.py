r"""The particle stepper on JAX: GD (Euler, RK4), SGD and Langevin, compiled.

The same engine as :class:`particles.steppers.ParticleStepper` (``docs/engine.md``):
``name``, ``advice``, ``propose``, ``step``, ``check``, ``capture``, ``restore``, plus
``advance(state, t_end, max_steps)``, a stretch of equal steps as one compiled
``while`` loop (``lax.fori_loop`` with the step count an argument: compiled once per
shape, whatever the count), which :func:`particles.engine.loop.run` calls in chunks.

The velocities (2.1) in the data (residual) form are the gradient of the energy
:math:`E = \ell/a = n\ell` (``a = 1/n``) by autodiff of the network
:math:`f_n(x_q) = \sum_i a c_i\varphi(x_q, y_i)` over the data nodes:
:math:`\dot c = -\partial_c E`, :math:`\dot y = -\partial_y E` (projected on the tangent
space of a constrained kernel, then retracted after the step). φ is the kernel's
``phi_xp(jax.numpy, ...)``; no hand-written derivative is used. The kernel (F, K) form
runs for the interpolation energy (4.5) (:meth:`JaxParticleStepper._kernel_velocity_fn`).
The nodes (or an SGD batch) are cut into blocks of at most :data:`PAIR_BUDGET`/(B·n) (padded with zero
weights): the gradient is the sum of the blocks' gradients, so memory is bounded
whatever Q·n. Members are batched with ``vmap`` on one device.

Randomness: member b's key is drawn from its ``SeedSequence`` (the spawn key of its
numpy generator with :data:`JAX_SPAWN` appended); step k draws from ``fold_in(key_b,
k)`` (k counted from the run's start): SGD batches (:mod:`particles.jax.sampling`; the
target is evaluated on them on the device, :mod:`particles.jax.targets`, or by a host
callback for a target without a JAX form) and Langevin noise. A member rerun alone
draws the same numbers; its trajectory then agrees to round-off (to the bit when the
compiled shapes are the same: ``docs/backends.md``).

Divergence is watched as :class:`particles.steppers.ParticleStepper` does, inside the
loop: GD and Langevin in the data form see the loss of every step's start; SGD sees the
loss on the nodes at every save time and at the end of a call after at least 8 Q/P steps
(as the numpy stepper's stride, about 1/8 of the run's cost). float32 widens the
round-off parts of the rules by :math:`\epsilon_{32}/\epsilon_{64}`.
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np

from particles.jax import device_name, require_jax
from particles.kernels.base import states_phi
from particles.engine.loop import lands, substeps
from particles.steppers import ATOL, GD_RTOL, NOISY_FACTOR, check_members

__all__ = ["JaxState", "JaxParticleStepper", "unsupported", "PAIR_BUDGET", "JAX_SPAWN"]

#: Largest number of (member, unit, node) pairs in one block of the energy's gradient
#: (2**18: 2 MiB per float64 intermediate, so the forward and backward passes of a block
#: stay in cache; measured on this CPU, sigmoid n = 1024, Q = 4000, one thread: 17.6 ms a
#: step at 2**18 against 32.2 ms at 2**21).
PAIR_BUDGET = 2**18
#: Appended to a member's spawn key for its JAX key (``"JAX"`` in ASCII).
JAX_SPAWN = 0x4A4158
#: Compiled functions per problem, keyed by the options and shapes: a stepper built
#: again for the same problem (a restart, the next n) reuses them.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def interpolation(problem) -> bool:
    """True when the problem's (F, K) form is the interpolation energy (4.5), F := f,
    K := φ (:func:`particles.closed_forms.interpolation_form`), which the JAX backend
    runs in the kernel form."""
    kf = problem.kernel_form
    return kf is not None and str(kf.description).startswith("interpolation energy")


def unsupported(problem, dynamics) -> str:
    """Why the JAX backend cannot run ``dynamics`` on ``problem`` ("" when it can)."""
    if dynamics.form != "data" and not interpolation(problem):
        return ("dynamics.form = 'kernel' runs on the JAX backend for the interpolation "
                "energy (4.5) only; use form = 'data' or backend = 'numpy'")
    if not states_phi(problem.kernel):
        return (f"kernel {problem.kernel.name!r} does not state phi_xp(xp, x, y) (φ against "
                "an array namespace, docs/kernels.md), which the JAX backend differentiates; "
                "use backend = 'numpy'")
    if dynamics.scheme == "sgd":
        from particles.jax.sampling import sampler

        if sampler(problem.measure) is None:
            return (f"SGD on the JAX backend draws batches with jax.random; measure "
                    f"{getattr(problem.measure, 'name', '?')!r} has no JAX sampler; use "
                    "backend = 'numpy'")
    return ""


def _on_device(target, dtype):
    """The target in ``jax.numpy`` cast to ``dtype`` (:mod:`particles.jax.targets`), or
    None (then it is evaluated by a host callback)."""
    from particles.jax.targets import target_fn

    f = target_fn(target)
    if f is None:
        return None
    return lambda x: f(x).astype(dtype)


class JaxState(NamedTuple):
    """Time, positions y (B, n, N) and charges c (B, n) (device arrays), the members'
    keys (B, 2) (uint32), the steps taken since the run's start and the divergence watch
    ``(lmin, last, bad, cref, lref)`` (device arrays of shape (B,))."""

    t: float
    y: object
    c: object
    keys: object
    steps: int
    watch: tuple


def member_key(rng) -> np.ndarray:
    """The JAX key (2 uint32 words) of a member from its numpy generator's SeedSequence."""
    ss = rng.bit_generator.seed_seq
    child = np.random.SeedSequence(ss.entropy, spawn_key=tuple(ss.spawn_key) + (JAX_SPAWN,))
    return child.generate_state(2, np.uint32)


class JaxParticleStepper:
    """The compiled particle stepper (module doc). Parameters as
    :class:`particles.steppers.ParticleStepper`; ``a`` is the scalar unit weight ``1/n``."""

    def __init__(self, problem, dynamics, a, *, name="particles", labels=None, advice=None):
        why = unsupported(problem, dynamics)
        if why:
            from particles.engine.config import ConfigError

            raise ConfigError(why)
        self.jax = require_jax()
        self.problem, self.dynamics, self.a = problem, dynamics, float(a)
        self.name, self.labels = name, labels
        self.advice = advice or (f"the step dt={dynamics.dt} is probably too large for "
                                 "this problem: lower dynamics.dt")
        self.dtype = np.dtype(dynamics.dtype)
        self.device = device_name()
        self.monotone = dynamics.scheme == "gd" and dynamics.form == "data"
        wide = float(np.finfo(self.dtype).eps / np.finfo(np.float64).eps)
        self.rtol, self.atol = GD_RTOL * wide, ATOL * wide
        self._f_scale = 0.5 * float(np.sum(problem.w * problem.f_x ** 2))
        self._h = self._t_end = None
        self._unseen = 0  # SGD steps since the watch last saw the loss on the nodes
        self._compiled = _COMPILED.setdefault(problem, {})
        jnp = self.jax.numpy
        self._x = jnp.asarray(problem.x, self.dtype)
        self._w = jnp.asarray(problem.w, self.dtype)
        self._fx = jnp.asarray(problem.f_x, self.dtype)

    # -- the energy and its gradient ------------------------------------------------
    def _blocks(self, B, n, Q):
        """Nodes per block and number of blocks for B members of n units on Q nodes: as
        few blocks as :data:`PAIR_BUDGET` allows, of equal size (little padding)."""
        most = max(8, PAIR_BUDGET // max(1, B * n))
        if Q <= most:
            return Q, 1
        m = -(-Q // most)
        return -(-Q // m), m

    def _velocity_fn(self, B, n, Q):
        """``vel(y (n, N), c (n,), x (Q, d), w (Q,), fx (Q,)) -> (vy, vc, loss)`` of one
        member, the nodes in blocks (:meth:`_blocks`)."""
        jax, jnp = self.jax, self.jax.numpy
        kernel, a = self.problem.kernel, self.a
        frozen = self.dynamics.frozen_y
        size, m = self._blocks(B, n, Q)

        def loss(yc, x, w, fx):
            y, c = yc
            # the barrier keeps XLA from fusing φ into the product (a slow loop fusion)
            p = jax.lax.optimization_barrier(kernel.phi_xp(jnp, x, y))
            r = jnp.matmul(a * c, p) - fx
            return 0.5 * jnp.sum(w * r * r)

        grad = jax.value_and_grad(loss)

        def vel(y, c, x, w, fx):
            if m == 1:
                L, (gy, gc) = grad((y, c), x, w, fx)
            else:
                pad = m * size - Q
                xs = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
                ws = jnp.concatenate([w, jnp.zeros(pad, w.dtype)])
                fs = jnp.concatenate([fx, jnp.zeros(pad, fx.dtype)])

                def block(acc, blk):
                    Lb, (gyb, gcb) = grad((y, c), *blk)
                    return (acc[0] + Lb, acc[1] + gyb, acc[2] + gcb), None

                zero = (jnp.zeros((), y.dtype), jnp.zeros_like(y), jnp.zeros_like(c))
                (L, gy, gc), _ = jax.lax.scan(
                    block, zero, (xs.reshape((m, size) + x.shape[1:]), ws.reshape(m, size),
                                  fs.reshape(m, size)))
            if frozen:  # random features: y stays at its draw (XLA drops the unused gy)
                return jnp.zeros_like(y), -gc / a, L
            vy = kernel.tangent_xp(jnp, y, -gy / a)
            return vy, -gc / a, L

        return vel

    def _kernel_velocity_fn(self, n):
        r"""``vel(y, c, *_) -> (vy, vc, nan)`` of one member in the kernel form of the
        interpolation energy (4.5): the gradient of
        :math:`E = -\sum_i ac_i f(y_i) + \tfrac12\sum_{ij} ac_i ac_j\varphi(y_j, y_i)`
        (``ac = a c``) divided by ``a``: :math:`\dot c = f - K ac`,
        :math:`\dot y = c(\nabla f - \sum_m\nabla_1K\,ac_m)`, projected. K is φ
        (``phi_xp``, autodiff); f is the target on the device (:mod:`particles.jax.targets`,
        ∇f by autodiff) or, without a JAX form, f and ``target.grad`` (the closed form's
        F, ∇F) by host callbacks. O(n²) memory per member."""
        jax, jnp = self.jax, self.jax.numpy
        kernel, target, a, dt = self.problem.kernel, self.problem.target, self.a, self.dtype
        frozen = self.dynamics.frozen_y
        N = kernel.N
        F = _on_device(target, dt)
        if F is None:  # f and its grad on the host
            f_shape = jax.ShapeDtypeStruct((n,), dt)
            g_shape = jax.ShapeDtypeStruct((n, N), dt)

            def host(fun):
                return lambda z: np.asarray(fun(np.asarray(z, float)), dt)

            @jax.custom_vjp
            def F(y):
                return jax.pure_callback(host(target), f_shape, y,
                                         vmap_method="expand_dims")

            def F_fwd(y):
                return F(y), y

            def F_bwd(y, g):
                grad = jax.pure_callback(host(target.grad), g_shape, y,
                                         vmap_method="expand_dims")
                return (g[..., None] * grad,)

            F.defvjp(F_fwd, F_bwd)

        def energy(yc):
            y, c = yc
            ac = a * c
            K = kernel.phi_xp(jnp, y, y)  # K[i, j] = φ(y_j, y_i)
            return -jnp.dot(ac, F(y)) + 0.5 * jnp.dot(ac, jnp.matmul(K, ac))

        grad = jax.grad(energy)
        nan = jnp.asarray(np.nan, dt)

        def vel(y, c, *_):
            gy, gc = grad((y, c))
            if frozen:  # random features: y stays at its draw
                return jnp.zeros_like(y), -gc / a, nan
            return kernel.tangent_xp(jnp, y, -gy / a), -gc / a, nan

        return vel

    def _loss_fn(self, B, n):
        """Compiled loss (1.2) on the problem's nodes of every member: (B,)."""
        jax, jnp = self.jax, self.jax.numpy
        kernel, a = self.problem.kernel, self.a
        Q = self._x.shape[0]
        size, m = self._blocks(B, n, Q)
        pad = m * size - Q
        x = jnp.concatenate([self._x, jnp.broadcast_to(self._x[:1], (pad,) + self._x.shape[1:])])
        w = jnp.concatenate([self._w, jnp.zeros(pad, self.dtype)])
        fx = jnp.concatenate([self._fx, jnp.zeros(pad, self.dtype)])

        def one(y, c):
            def block(acc, blk):
                xb, wb, fb = blk
                p = jax.lax.optimization_barrier(kernel.phi_xp(jnp, xb, y))
                r = jnp.matmul(a * c, p) - fb
                return acc + 0.5 * jnp.sum(wb * r * r), None

            L, _ = jax.lax.scan(block, jnp.zeros((), y.dtype),
                                (x.reshape((m, size) + x.shape[1:]), w.reshape(m, size),
                                 fx.reshape(m, size)))
            return L

        return jax.jit(jax.vmap(one))

    # -- one step of one member, and the compiled loop --------------------------------
    def _step_fn(self, B, n, P):
        jax, jnp = self.jax, self.jax.numpy
        dyn, kernel, dt = self.dynamics, self.problem.kernel, self.dtype
        frozen = dyn.frozen_y
        Q = self._x.shape[0]
        vel = (self._kernel_velocity_fn(n) if dyn.form == "kernel"
               else self._velocity_fn(B, n, P if dyn.scheme == "sgd" else Q))
        x0, w0, f0 = self._x, self._w, self._fx
        N = kernel.N
        nan = jnp.asarray(np.nan, dt)
        if dyn.scheme == "sgd":
            from particles.jax.sampling import sampler

            draw, target = sampler(self.problem.measure), self.problem.target
            f_device = _on_device(target, dt)
            shape = jax.ShapeDtypeStruct((P,), dt)

            def f_target(xb):
                if f_device is not None:
                    return f_device(xb)
                return jax.pure_callback(
                    lambda z: np.asarray(target(np.asarray(z, float)), dt), shape, xb,
                    vmap_method="expand_dims")

        def step(y, c, key, k, h, tau):
            if dyn.scheme == "sgd":
                xb = draw(jax.random.fold_in(key, k), P, dt)
                fb = f_target(xb)
                vy, vc, _ = vel(y, c, xb, jnp.full(P, 1.0 / P, dt), fb)
                y1, c1, L = y + h * vy, c + h * vc, nan
            elif dyn.scheme == "langevin":
                vy, vc, L = vel(y, c, x0, w0, f0)
                xi = jax.random.normal(jax.random.fold_in(key, k), (n, N + 1), dt)
                s = jnp.sqrt(2.0 * tau * h)
                # random features: the noise acts on c only and y stays at its draw
                y1 = y if frozen else y + h * vy + s * kernel.tangent_xp(jnp, y, xi[:, :-1])
                c1 = c + h * vc + s * xi[:, -1]
            elif dyn.integrator == "euler":
                vy, vc, L = vel(y, c, x0, w0, f0)
                y1, c1 = y + h * vy, c + h * vc
            else:
                k1y, k1c, L = vel(y, c, x0, w0, f0)
                k2y, k2c, _ = vel(y + 0.5 * h * k1y, c + 0.5 * h * k1c, x0, w0, f0)
                k3y, k3c, _ = vel(y + 0.5 * h * k2y, c + 0.5 * h * k2c, x0, w0, f0)
                k4y, k4c, _ = vel(y + h * k3y, c + h * k3c, x0, w0, f0)
                y1 = y + (h / 6) * (k1y + 2 * k2y + 2 * k3y + k4y)
                c1 = c + (h / 6) * (k1c + 2 * k2c + 2 * k3c + k4c)
            return kernel.retract_xp(jnp, y1), c1, L

        members = jax.vmap(step, in_axes=(0, 0, 0, None, None, None))
        rtol, atol, monotone = self.rtol, self.atol, self.monotone

        def watch_update(watch, L):
            lmin, last, bad, cref, lref = watch
            lmin = jnp.where(bad, lmin, jnp.fmin(lmin, last))
            last = jnp.where(bad, last, L)
            limit = (lmin + rtol * lmin if monotone else NOISY_FACTOR * lmin) + atol * lref
            return lmin, last, bad | ~(last <= limit), cref, lref

        def loop(y, c, keys, k0, count, h, tau, watch):
            h, tau = jnp.asarray(h, dt), jnp.asarray(tau, dt)

            def body(i, carry):
                y, c, watch = carry
                y1, c1, L = members(y, c, keys, k0 + i, h, tau)
                if dyn.scheme != "sgd" and dyn.form == "data":
                    watch = watch_update(watch, L)
                return y1, c1, watch

            return jax.lax.fori_loop(0, count, body, (y, c, watch))

        return jax.jit(loop), jax.jit(watch_update)

    def _compiled_for(self, B, n, P):
        key = (repr(self.dynamics), self.a, B, n, P)
        got = self._compiled.get(key)
        if got is None:
            got = self._compiled[key] = (*self._step_fn(B, n, P), self._loss_fn(B, n))
        return got

    # -- the stepper protocol -----------------------------------------------------------
    def init(self, y, c, rngs=None, t=0.0, steps=0) -> JaxState:
        """The state at time ``t`` from y (B, n, N), c (B, n) and the members' numpy
        generators (their SeedSequences give the JAX keys)."""
        jnp = self.jax.numpy
        y = jnp.asarray(np.asarray(y, float), self.dtype)
        c = jnp.asarray(np.asarray(c, float), self.dtype)
        B, n = c.shape
        keys = (np.stack([member_key(r) for r in rngs]) if rngs is not None
                else np.zeros((B, 2), np.uint32))
        loss = self._compiled_for(B, n, self._P(t, n))[2]
        l0 = np.asarray(loss(y, c), float)
        cref = np.maximum(1.0, np.max(np.abs(np.asarray(c, float)), axis=-1))
        lref = self._f_scale + np.where(np.isfinite(l0), l0, 0.0)
        watch = tuple(jnp.asarray(v, self.dtype) for v in (l0, l0, cref, lref))
        watch = (watch[0], watch[1], jnp.zeros(B, bool), watch[2], watch[3])
        return JaxState(float(t), y, c, jnp.asarray(keys, jnp.uint32), int(steps), watch)

    def _P(self, t, n):
        return self.dynamics.batch_at(t, n) if self.dynamics.scheme == "sgd" else 0

    def _tau(self, t):
        return self.dynamics.temperature_at(t) if self.dynamics.scheme == "langevin" else 0.0

    def propose(self, state, t_start, t_end):
        self._t_end = t_end
        self._h = substeps(t_start, t_end, self.dynamics.dt)[1]
        return self._h

    def step(self, state, h):
        return self._run(state, h, 1)

    def advance(self, state, t_end, max_steps):
        """Up to ``max_steps`` steps of the size last proposed for the save interval
        ending at ``t_end``, in one compiled call: it stops where the run lands on
        ``t_end`` and before a step whose batch size or temperature (a schedule) differs
        from the first one's. Returns ``(state, steps taken)``; the numbers are those of
        as many calls of :meth:`step`, bitwise."""
        h = self._h
        n = int(state.c.shape[1])
        P0, tau0 = self._P(state.t, n), self._tau(state.t)
        t, k = float(state.t), 0
        while k < max_steps:
            if k and (self._P(t, n) != P0 or self._tau(t) != tau0):
                break
            t += h
            k += 1
            if lands(t, t_end, h):
                break
        return self._run(state, h, k), k

    def _run(self, state, h, k):
        B, n = (int(s) for s in state.c.shape)
        P = self._P(state.t, n)
        loop, watch_update, loss = self._compiled_for(B, n, P)
        y, c, watch = loop(state.y, state.c, state.keys, state.steps, k, h,
                           self._tau(state.t), state.watch)
        t = float(state.t)
        for _ in range(k):
            t += h
        landed = self._t_end is not None and lands(t, self._t_end, h)
        if self.dynamics.scheme == "sgd" or self.dynamics.form == "kernel":
            # the loss on the Q nodes costs about Q/P (SGD) or Q/n (kernel form) steps:
            # seen at every save time and after at least 8 Q/P (8 Q/n) steps, it adds at
            # most about 1/8 to the run
            self._unseen += k
            work = P if self.dynamics.scheme == "sgd" else n
            if landed or self._unseen >= 8 * self._x.shape[0] / max(work, 1):
                watch, self._unseen = watch_update(watch, loss(y, c)), 0
        elif landed:
            watch = watch_update(watch, loss(y, c))
        return JaxState(t, y, c, state.keys, state.steps + k, watch)

    def check(self, state):
        lmin, last, broken, cref, _ = (np.asarray(v) for v in state.watch)
        return check_members(state.c, state.y, self.labels, cref, lmin, last,
                             np.flatnonzero(broken), state.steps, self.monotone, self.rtol,
                             self.dynamics)

    def capture(self, state) -> dict:
        snap = {"t": float(state.t), "y": np.asarray(state.y), "c": np.asarray(state.c),
                "keys": np.asarray(state.keys), "steps": int(state.steps)}
        for name, v in zip(("lmin", "last", "bad", "cref", "lref"), state.watch):
            snap[f"watch_{name}"] = np.asarray(v)
        return snap

    def restore(self, snap) -> JaxState:
        jnp = self.jax.numpy
        watch = tuple(jnp.asarray(np.asarray(snap[f"watch_{k}"]))
                      for k in ("lmin", "last", "bad", "cref", "lref"))
        return JaxState(float(snap["t"]), jnp.asarray(np.asarray(snap["y"])),
                        jnp.asarray(np.asarray(snap["c"])),
                        jnp.asarray(np.asarray(snap["keys"]), jnp.uint32),
                        int(snap["steps"]), watch)
