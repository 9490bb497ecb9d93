"""Time per explicit-Euler GD step of the RBF problems, fused against generic.

The issue's row "Gaussian RBF, d = 5, data form, Q = 4000, n = 1024" (and, for context,
the sphere RBF (4.2) on the same sizes in the data form), one member. For each row the
script times, interleaved in rounds (``bench_particles.measure``) so that drift on a
shared machine hits every quantity alike:

* the floor: one ``numpy.exp(A, out=E)`` over the (n, Q) float64 array (both
  preallocated): every step must evaluate φ on all n·Q pairs;
* "after": one ``particles.dynamics.step`` with ``Dynamics("gd", "euler")`` and the
  kernel's fused ``pullback`` (:mod:`particles.kernels.expblocks`);
* "before": the same step with the generic ``Kernel.pullback`` (``phi_grad`` materialised
  as an (n, Q, d) array), the path of any kernel without a fused pull-back;
* when ``jax`` is importable, a JAX ``jit(grad)`` of the same loss (it is optional and
  never a dependency of the toolkit; the run says when it is absent).

It prints medians, spreads (interquartile range / median) and the ratios step / floor.
Target: step at most 2 floors. Both paths are checked against
``pullback_reference`` first.

    python benchmarks/bench_rbf.py
    python benchmarks/bench_rbf.py --quick
"""
from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_particles import (load_line, machine_info, measure, quick_args, spread,
                             timing_args)  # noqa: E402

from particles.dynamics import Dynamics, State, step  # noqa: E402
from particles.kernels import Kernel, pullback_reference  # noqa: E402
from particles.presets import rbf_problem, sphere_problem


def generic(problem):
    """A copy of ``problem`` whose kernel uses the generic ``Kernel.pullback``."""
    k = copy.copy(problem.kernel)
    k.pullback = types.MethodType(Kernel.pullback, k)
    p = copy.copy(problem)
    p.kernel = k
    return p


def check(problem, rng):
    """Fused and generic pull-backs agree with the reference before anything is timed."""
    y = problem.sample_init(rng, 48)[0][None]
    a = rng.standard_normal((1, 48)) / 48
    x, w, f_x = problem.x[:300], problem.w[:300], problem.f_x[:300]
    ref = pullback_reference(problem.kernel, y, a, x, w, f_x)
    for p in (problem, generic(problem)):
        for got, r in zip(p.kernel.pullback(y, a, x, w, f_x), ref):
            np.testing.assert_allclose(got, r, rtol=1e-12, atol=1e-13 * np.max(np.abs(r)))


def jax_step(problem, n):  # pragma: no cover - jax is optional and absent here
    """A jit-compiled GD Euler step of the same network, or None without jax."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    x, w, f_x = (jnp.asarray(v) for v in (problem.x, problem.w, problem.f_x))
    kernel = problem.kernel

    if hasattr(kernel, "sigma"):
        def phi(y):
            d2 = jnp.sum((x[None, :, :] - y[:, None, :]) ** 2, -1)
            return kernel.A * jnp.exp(-0.5 * d2 / kernel.sigma**2)
    else:
        def phi(y):
            return jnp.exp(kernel.alpha * (y @ x.T - kernel.d))

    def loss(y, c):
        r = (c / n) @ phi(y) - f_x
        return 0.5 * jnp.sum(w * r * r)

    g = jax.grad(loss, argnums=(0, 1))

    @jax.jit
    def one(y, c, h):
        gy, gc = g(y, c)
        return y - h * n * gy, c - h * n * gc

    return one, jnp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--Q", type=int, default=4000)
    ap.add_argument("--d", type=int, default=5)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--kernels", nargs="+", default=["gaussian", "sphere"])
    timing_args(ap, block_time=0.3, quick_block=0.1)
    args = quick_args(ap.parse_args(argv))
    print("\n".join(machine_info()))
    n, Q, d = args.n, args.Q, args.d
    dyn = Dynamics(scheme="gd", integrator="euler", dt=0.05)
    print(f"one {dyn.scheme}/{dyn.integrator} step, B = 1 member, n = {n}, Q = {Q}, d = {d}; "
          f"rounds={args.rounds}, block={args.block_time}s; floor = np.exp(A, out=E) on "
          f"({n}, {Q}) float64; times are medians in ms, (±x%) = IQR / median")
    rng = np.random.default_rng(args.seed)
    A = -4.0 * rng.random((n, Q))
    E = np.empty_like(A)
    problems = {
        "gaussian": lambda: rbf_problem(d, args.sigma, Q, 4, seed=args.seed),
        "sphere": lambda: sphere_problem(d, args.alpha, Q, "data", "teacher", 4,
                                         seed=args.seed),
    }
    fns = {"floor": lambda: np.exp(A, out=E)}
    labels = {"floor": "floor: exp over (n, Q)"}
    for name in args.kernels:
        problem = problems[name]()
        check(problem, rng)
        y, c = problem.sample_init(np.random.default_rng([args.seed, 1]), n)
        state = State(0.0, y[None], c[None])
        for tag, p in (("after", problem), ("before", generic(problem))):
            fns[f"{name} {tag}"] = (lambda p=p, s=state: step(p, dyn, s, dyn.dt, 1.0 / n))
            labels[f"{name} {tag}"] = f"{name} step, {'fused' if tag == 'after' else 'generic'}"
        js = jax_step(problem, n)
        if js is not None:  # pragma: no cover
            one, jnp = js
            yj, cj = jnp.asarray(y), jnp.asarray(c)
            fns[f"{name} jax"] = lambda: one(yj, cj, dyn.dt)[0].block_until_ready()
            labels[f"{name} jax"] = f"{name} step, JAX jit(grad)"
    try:
        import jax  # noqa: F401
    except ImportError:
        print("jax: not importable (optional; no JAX row)")
    s = measure(fns, args.rounds, args.block_time, args.min_calls)
    med = {k: float(np.median(v)) for k, v in s.items()}
    print(f"{'quantity':<34} {'median ms':>10} {'spread':>7} {'/ floor':>8}")
    for k in fns:
        print(f"{labels[k]:<34} {med[k] * 1e3:>10.2f} {spread(s[k]):>6.0%} "
              f"{med[k] / med['floor']:>8.2f}")
    for name in args.kernels:
        print(f"{name}: before / after = {med[f'{name} before'] / med[f'{name} after']:.1f}x; "
              f"target step <= 2 floors: "
              f"{'met' if med[f'{name} after'] <= 2 * med['floor'] else 'NOT met'}")
    print("after the run, " + load_line())


if __name__ == "__main__":
    main()
