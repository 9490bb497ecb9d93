"""The paper's problems, one table: one mfpc step against its floor and its peers.

One row per line of the issue's table:

* ``sgd200``: sigmoid (4.9), d = 10, SGD with a fresh batch of P = 1600 points on the
  sphere per step (drawn inside the step, 3-spin target (4.1) on them), n = 200;
* ``sgd1000``: the same with P = 40000, n = 1000;
* ``sigmoid``: sigmoid, d = 10, data form, Q = 4000 nodes on the sphere, n = 1024;
* ``gaussian``: Gaussian RBF, d = 5, data form, Q = 4000 nodes of N(0, I), a 4-unit
  teacher, n = 1024;
* ``sphere256``, ``sphere1024``: sphere RBF (4.2), d = 5, alpha = 1, the interpolation
  energy (4.5) of the 3-spin model in the kernel (F, K) form, n = 256 and 1024.

Per row, timed interleaved in rounds (``bench_particles.measure``: medians, interquartile
spread, all quantities of a row alike hit by drift on the shared machine):

* ``mfpc``: one explicit Euler step through the public ``particles.dynamics.step``, as
  a user runs it (one member); for the kernel-form rows also with one thread
  (``particles.engine.parallel.threads(1)``; by default the fused (F, K) sums run on
  ``get_threads()`` = 2 threads over row blocks once a step has 2**18 pairs);
* ``floor``: one ``numpy.exp`` / ``scipy.special.expit`` pass with ``out=`` over the
  largest array the step must evaluate ((n, P), (n, Q) or (n, n)), both preallocated;
* ``numpy``: the plain-numpy step a user would write (matrix products, unblocked);
* ``jax``: when ``jax`` is importable (the optional extra ``jax``), a ``jax.jit`` of
  ``jax.grad`` of the same loss (the empirical loss (1.2) on the nodes or the batch; the
  energy (4.5)) and one Euler update, float64, ``block_until_ready``, compile excluded.
  The SGD rows draw their batch and evaluate the 3-spin target inside the jitted step,
  as the mfpc step does inside its own. ``JAX floor``: JAX's own pass, a jitted
  ``exp`` / logistic (as ``tanh(s/2)/2 + 1/2``) of the floor's array (XLA vectorises the float64 ``exp`` with
  AVX2; numpy does so only with AVX-512, so on an AVX2 machine JAX's floor is lower).

* ``mfpc JAX``: the toolkit's JAX backend (``[dynamics] backend = "jax"``,
  :class:`particles.jax.stepper.JaxParticleStepper`), float64, as a run steps it: one
  ``advance`` call of :data:`JAX_STEPS` steps (a compiled loop; compile excluded), the
  time divided by the steps; the SGD rows draw their batches from JAX keys and evaluate
  the target by a host callback, the kernel-form rows (the interpolation energy (4.5))
  evaluate the 3-spin target and its gradient so. Shown with its ratio to the JAX floor
  and the numpy backend's step over it (the speed-up).

Before timing, the numpy and JAX steps are checked against the mfpc step from the same
state (the SGD rows: numpy with the same generator; JAX with its own draw is not).
Targets: every row at most 2 floors and at most the JAX step.

    python benchmarks/bench_paper.py                  # every row (a few minutes)
    python benchmarks/bench_paper.py --quick --rows sphere256 gaussian
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_particles import (load_line, machine_info, measure, quick_args, spread,
                             timing_args)  # noqa: E402
from particles.engine.parallel import threads  # noqa: E402
from particles.dynamics import Dynamics, State, step  # noqa: E402
from particles.presets import rbf_problem, sigmoid_problem, sphere_problem

#: key -> (label, kind, sizes); kind picks the problem, the floor and the peers
ROWS = {
    "sgd200": ("sigmoid (4.9) d=10, SGD P=1600 on the sphere, n=200", "sgd",
               dict(d=10, n=200, P=1600)),
    "sgd1000": ("same, P=40000, n=1000", "sgd", dict(d=10, n=1000, P=40000)),
    "sigmoid": ("sigmoid d=10, data form, Q=4000, n=1024", "sigmoid",
                dict(d=10, n=1024, Q=4000)),
    "gaussian": ("Gaussian RBF d=5, data form, Q=4000, n=1024", "gaussian",
                 dict(d=5, n=1024, Q=4000)),
    "sphere256": ("sphere RBF (4.5) energy, kernel form, d=5, n=256", "sphere",
                  dict(d=5, n=256)),
    "sphere1024": ("sphere RBF (4.5) energy, kernel form, d=5, n=1024", "sphere",
                   dict(d=5, n=1024)),
}
DT = 1e-3
#: steps per timed call of the JAX backend's ``advance``
JAX_STEPS = 4


# -- problems and the mfpc step ---------------------------------------------------------
def make_problem(kind, s, seed):
    if kind == "sgd":
        return sigmoid_problem(s["d"], 64, target="3spin", seed=seed)
    if kind == "sigmoid":
        return sigmoid_problem(s["d"], s["Q"], target="3spin", seed=seed)
    if kind == "gaussian":
        return rbf_problem(s["d"], 1.0, s["Q"], 4, seed=seed)
    return sphere_problem(s["d"], 1.0, 1000, "interpolation", "3spin", seed=seed)


def make_dynamics(kind, s):
    if kind == "sgd":
        return Dynamics(scheme="sgd", integrator="euler", dt=DT, batch=s["P"])
    return Dynamics(scheme="gd", integrator="euler", dt=DT,
                    form="kernel" if kind == "sphere" else "data")


def floor_fn(kind, s, rng, jax_too=False):
    """One preallocated ``exp``/``expit`` pass over the step's largest array, and (when
    asked and importable) JAX's own pass, a jitted ``exp``/``sigmoid`` of the same array."""
    cols = {"sgd": s.get("P"), "sphere": s["n"]}.get(kind, s.get("Q"))
    A = -rng.random((s["n"], cols)) if kind in ("gaussian", "sphere") else \
        rng.standard_normal((s["n"], cols))
    E = np.empty_like(A)
    sig = kind in ("sgd", "sigmoid")
    fns = {"floor": (lambda: special.expit(A, out=E)) if sig else (lambda: np.exp(A, out=E))}
    if jax_too:
        import jax
        import jax.numpy as jnp

        # the logistic as tanh(s/2)/2 + 1/2: XLA's float64 tanh is vectorised, its float64
        # logistic (jax.nn.sigmoid) is not on AVX2: the lower of the two is the floor
        op = jax.jit((lambda v: 0.5 * jnp.tanh(0.5 * v) + 0.5) if sig else jnp.exp)
        Aj = jnp.asarray(A)
        fns["jfloor"] = lambda: op(Aj).block_until_ready()
    return fns


# -- the plain-numpy steps a user would write -------------------------------------------
def numpy_step(kind, problem, s):
    """``one(y, c, rng) -> (y, c)``: the Euler step written directly in numpy."""
    n, h, kernel = s["n"], DT, problem.kernel
    target = problem.target

    def data_sigmoid(y, c, x, w, f_x):
        d = x.shape[1]
        H = special.expit(y[:, :d] @ x.T + y[:, d:])  # (n, Q)
        r = w * ((c / n) @ H - f_x)
        vc = -(H @ r)
        G = H * (1 - H) * r
        gy = np.concatenate([G @ x, G.sum(1, keepdims=True)], axis=1)
        return y - h * c[:, None] * gy, c + h * vc

    if kind == "sgd":
        def one(y, c, rng):
            x = problem.measure.sample(rng, s["P"])
            return data_sigmoid(y, c, x, np.full(s["P"], 1.0 / s["P"]), target(x))
    elif kind == "sigmoid":
        def one(y, c, rng):
            return data_sigmoid(y, c, problem.x, problem.w, problem.f_x)
    elif kind == "gaussian":
        x, w, f_x, sig2 = problem.x, problem.w, problem.f_x, kernel.sigma**2

        def one(y, c, rng):
            D = np.sum(x * x, 1) + np.sum(y * y, 1)[:, None] - 2 * y @ x.T
            E = kernel.A * np.exp(-D / (2 * sig2))
            r = w * ((c / n) @ E - f_x)
            Er = E @ r
            gy = ((E * r) @ x - y * Er[:, None]) / sig2
            return y - h * c[:, None] * gy, c - h * Er
    else:
        alpha, d = kernel.alpha, kernel.d

        def one(y, c, rng):
            K = np.exp(alpha * (y @ y.T - d))
            ac = c / n
            vc = target(y) - K @ ac
            vy = c[:, None] * (target.grad(y) - alpha * K @ (ac[:, None] * y))
            vy -= np.sum(vy * y, 1, keepdims=True) / np.sum(y * y, 1, keepdims=True) * y
            y1 = y + h * vy
            return y1 * (np.sqrt(d) / np.linalg.norm(y1, axis=1, keepdims=True)), c + h * vc
    return one


# -- the JAX jit(grad) steps -------------------------------------------------------------
def jax_step(kind, problem, s):  # pragma: no cover - jax is an optional extra
    """``(one, to_device)``: a jitted Euler step of the same loss, or None without jax."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    n, h, kernel = s["n"], DT, problem.kernel
    a3 = getattr(problem.target, "a", None)

    def spin(x):  # the 3-spin model (4.1), f = (1/d) sum a_pqr x_p x_q x_r
        return jnp.einsum("pqr,Pp,Pq,Pr->P", a3, x, x, x) / x.shape[1]

    def sigmoid_loss(y, c, x, w, f_x):
        d = x.shape[1]
        H = jax.nn.sigmoid(y[:, :d] @ x.T + y[:, d:])
        r = (c / n) @ H - f_x
        return 0.5 * jnp.sum(w * r * r)

    def euler(loss):
        g = jax.grad(loss, argnums=(0, 1))

        def update(y, c, *args):
            gy, gc = g(y, c, *args)
            return y - h * n * gy, c - h * n * gc
        return update

    if kind == "sgd":
        upd, P, d = euler(sigmoid_loss), s["P"], s["d"]

        @jax.jit
        def one(y, c, key):
            key, sub = jax.random.split(key)
            x = jax.random.normal(sub, (P, d))
            x = x * (jnp.sqrt(d) / jnp.linalg.norm(x, axis=1, keepdims=True))
            y1, c1 = upd(y, c, x, jnp.full(P, 1.0 / P), spin(x))
            return y1, c1, key
    elif kind in ("sigmoid", "gaussian"):
        x, w, f_x = (jnp.asarray(v) for v in (problem.x, problem.w, problem.f_x))
        if kind == "sigmoid":
            loss = sigmoid_loss
        else:
            def loss(y, c, x, w, f_x):
                d2 = jnp.sum(x * x, 1) + jnp.sum(y * y, 1)[:, None] - 2 * y @ x.T
                r = (c / n) @ (kernel.A * jnp.exp(-0.5 * d2 / kernel.sigma**2)) - f_x
                return 0.5 * jnp.sum(w * r * r)
        upd = euler(loss)

        @jax.jit
        def one(y, c, key):
            return (*upd(y, c, x, w, f_x), key)
    else:
        alpha, d = kernel.alpha, kernel.d

        def energy(y, c):  # (4.5) with charges c/n: -(1/n) c.f(y) + (1/2n^2) c.K.c
            ac = c / n
            return -ac @ spin(y) + 0.5 * ac @ jnp.exp(alpha * (y @ y.T - d)) @ ac
        g = jax.grad(energy, argnums=(0, 1))

        @jax.jit
        def one(y, c, key):
            gy, gc = g(y, c)
            vy = -n * gy
            vy = vy - jnp.sum(vy * y, 1, keepdims=True) / jnp.sum(y * y, 1, keepdims=True) * y
            y1 = y + h * vy
            return y1 * (jnp.sqrt(d) / jnp.linalg.norm(y1, axis=1, keepdims=True)), \
                c - h * n * gc, key
    return one, jnp.asarray, jax.random.PRNGKey


def jax_backend(kind, problem, dyn, s, y0, c0, seed):  # pragma: no cover - optional
    """``advance()`` of :data:`JAX_STEPS` steps of the toolkit's JAX backend from (y0,
    c0), compiled before it is returned; None without jax."""
    try:
        from particles.jax.stepper import JaxParticleStepper
    except ImportError:
        return None
    import dataclasses

    st = JaxParticleStepper(problem, dataclasses.replace(dyn, backend="jax"), 1.0 / s["n"])
    box = {"s": st.init(y0[None], c0[None], [np.random.default_rng([seed, 4])])}
    t_end = 1e9 * DT
    st.propose(box["s"], 0.0, t_end)

    def advance(k=JAX_STEPS):
        box["s"], _ = st.advance(box["s"], t_end, k)
        box["s"].y.block_until_ready()

    advance(1)  # compile
    return advance


# -- one row ----------------------------------------------------------------------------
def check(kind, problem, dyn, state, numpy_one, jax_one, seed):
    """numpy and JAX steps against the mfpc step from the same state (relative 1e-9 of
    each array's largest entry: the same sums in another order; the SGD rows' JAX draw
    differs and is not compared)."""
    def close(got, ref, who):
        for g, r in zip(got, ref):
            np.testing.assert_allclose(np.asarray(g), r, rtol=0,
                                       atol=1e-9 * np.max(np.abs(r)), err_msg=who)
    ref = step(problem, dyn, state, DT, 1.0 / state.c.shape[1],
               [np.random.default_rng([seed, 9])])
    y, c = state.y[0], state.c[0]
    close(numpy_one(y, c, np.random.default_rng([seed, 9])), (ref.y[0], ref.c[0]), "numpy")
    if jax_one is not None and kind != "sgd":
        one, dev, key = jax_one
        close(one(dev(y), dev(c), key(0))[:2], (ref.y[0], ref.c[0]), "jax")


def run_row(key, args, rng):
    label, kind, s = ROWS[key]
    problem = make_problem(kind, s, args.seed)
    dyn = make_dynamics(kind, s)
    y0, c0 = problem.sample_init(np.random.default_rng([args.seed, 1]), s["n"])
    state = State(0.0, y0[None], c0[None])
    numpy_one = numpy_step(kind, problem, s)
    jax_one = None if args.no_jax else jax_step(kind, problem, s)
    check(kind, problem, dyn, state, numpy_one, jax_one, args.seed)
    # each stepper advances its own copy from the same start
    box = {"mfpc": state, "numpy": (y0.copy(), c0.copy())}
    rngs = [np.random.default_rng([args.seed, 2])]
    nrng = np.random.default_rng([args.seed, 3])

    def mfpc():
        box["mfpc"] = step(problem, dyn, box["mfpc"], DT, 1.0 / s["n"], rngs)

    def plain():
        box["numpy"] = numpy_one(*box["numpy"], nrng)

    fns = {**floor_fn(kind, s, rng, jax_one is not None), "mfpc": mfpc, "numpy": plain}
    if kind == "sphere":
        def mfpc1():
            with threads(1):
                mfpc()

        fns["mfpc1"] = mfpc1
    if jax_one is not None:
        one, dev, prng = jax_one
        box["jax"] = (dev(y0), dev(c0), prng(args.seed))

        def jstep():
            out = one(*box["jax"])
            out[0].block_until_ready()
            box["jax"] = out

        fns["jax"] = jstep
    jb = None if args.no_jax else jax_backend(kind, problem, dyn, s, y0, c0, args.seed)
    if jb is not None:
        fns["mfpcjax"] = jb
    samples = measure(fns, args.rounds, args.block_time, args.min_calls)
    if "mfpcjax" in samples:
        samples["mfpcjax"] = np.asarray(samples["mfpcjax"]) / JAX_STEPS
    return label, {k: (float(np.median(v)), spread(v)) for k, v in samples.items()}


def fmt_ms(t):
    return f"{t * 1e3:.3g}" if t < 1 else f"{t * 1e3:.0f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--no-jax", action="store_true", help="leave the JAX column out")
    timing_args(ap, block_time=0.3, quick_block=0.1, min_calls=2)
    args = quick_args(ap.parse_args(argv))
    print("\n".join(machine_info()))
    try:
        import jax
        print(f"jax {jax.__version__} (float64), devices {jax.devices()}"
              + (" (not used: --no-jax)" if args.no_jax else ""))
    except ImportError:
        print("jax: not importable (optional extra 'jax'; no JAX columns)")
    print(f"one explicit Euler step, B = 1 member; rounds={args.rounds}, "
          f"block={args.block_time}s; medians in ms (±IQR/median)")
    rng = np.random.default_rng(args.seed)
    head = ("| problem, one step | floor ms | mfpc ms | mfpc / floor | mfpc 1 thread ms "
            "| numpy ms | JAX ms | mfpc / JAX | JAX floor ms | mfpc JAX ms "
            "| mfpc JAX / JAX floor | numpy backend / mfpc JAX |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in args.rows:
        label, med = run_row(key, args, rng)
        fl, mf, nu = med["floor"], med["mfpc"], med["numpy"]
        jx, m1, jf = med.get("jax"), med.get("mfpc1"), med.get("jfloor")
        cells = [label, f"{fmt_ms(fl[0])} (±{fl[1]:.0%})", f"{fmt_ms(mf[0])} (±{mf[1]:.0%})",
                 f"{mf[0] / fl[0]:.2f}", f"{fmt_ms(m1[0])} (±{m1[1]:.0%})" if m1 else "-",
                 f"{fmt_ms(nu[0])} (±{nu[1]:.0%})",
                 f"{fmt_ms(jx[0])} (±{jx[1]:.0%})" if jx else "-",
                 f"{mf[0] / jx[0]:.2f}" if jx else "-",
                 f"{fmt_ms(jf[0])} (±{jf[1]:.0%})" if jf else "-"]
        mj = med.get("mfpcjax")
        cells += ([f"{fmt_ms(mj[0])} (±{mj[1]:.0%})", f"{mj[0] / jf[0]:.2f}" if jf else "-",
                   f"{mf[0] / mj[0]:.2f}"] if mj else ["-", "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    print("after the run, " + load_line())


if __name__ == "__main__":
    main()
