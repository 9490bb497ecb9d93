"""One against two threads, SGD draws before/after, and peak memory of large steps.

Rows, each timed interleaved in rounds (house style of ``bench_units.py``: medians,
interquartile spread, the floor measured in the same run):

* ``circle``: circle kernel (kappa = 2), n = 1024, Q = 4096, one Euler GD step;
* ``circle-1e6``: the same with n = 10^6 units and Q = 64 nodes (the series path);
* ``sigmoid``: sigmoid d = 10, data form, Q = 4000 nodes on the sphere, n = 1024, GD;
* ``gaussian``: Gaussian RBF d = 5, sigma = 1, Q = 4000 data points, n = 1024, GD;
* ``sgd``, ``sgd-large``: sigmoid d = 10, SGD on the sphere (3-spin target), P = 1600
  with n = 200, and P = 40000 with n = 1000.

Per row: the floor (one ``exp`` or ``scipy.special.expit`` pass, ``out=``, over the
(n, Q) or (n, P) array a step must evaluate, preallocated; for n = 10^6 over a (4096, Q)
array, times n / 4096, as the whole array would take 512 MB), the step with one thread
and with two (``particles.engine.parallel.threads``). SGD rows also time the step with the
batches drawn per step and member (``dynamics.step`` given the bare generators:
"before") against the stream drawn ahead (``dynamics.Batches``: "after"), both on one
thread, and the 3-spin target on one batch with the former code (outer products in
chunks of 10^4 rows through a non-contiguous matrix) against the current one.

``--memory`` adds the tracemalloc peaks of one step of n = 10^6 circle units (Q = 64)
and of n = 10^5 sigmoid units with an SGD batch of P = 10^4 (default budgets).

    python benchmarks/bench_threads.py                      # every row
    python benchmarks/bench_threads.py --rows sgd --quick
    python benchmarks/bench_threads.py --rows --memory      # peaks only
"""
from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

import numpy as np
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_particles import (load_line, machine_info, measure, quick_args, spread,
                             timing_args)  # noqa: E402
from particles.engine import parallel  # noqa: E402
from particles.dynamics import Batches, Dynamics, State, step  # noqa: E402
from particles.presets import circle_problem, rbf_problem, sigmoid_problem

ROWS = {
    # name: (description, problem kind, Q (nodes of the problem), n, P or None)
    "circle": ("circle kappa=2, Q=4096, n=1024, GD", "circle", 4096, 1024, None),
    "circle-1e6": ("circle kappa=2, Q=64, n=10^6, GD", "circle", 64, 10**6, None),
    "sigmoid": ("sigmoid d=10, data form, Q=4000, n=1024, GD", "sigmoid", 4000, 1024, None),
    "gaussian": ("Gaussian RBF d=5, Q=4000, n=1024, GD", "gaussian", 4000, 1024, None),
    "sgd": ("sigmoid d=10, SGD P=1600 sphere, n=200", "sigmoid", 64, 200, 1600),
    "sgd-large": ("sigmoid d=10, SGD P=40000 sphere, n=1000", "sigmoid", 64, 1000, 40000),
}


def make_problem(kind, Q, seed):
    if kind == "circle":
        return circle_problem(2.0, Q, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0])
    if kind == "gaussian":
        return rbf_problem(5, 1.0, Q, 4, seed=seed)
    return sigmoid_problem(10, Q, target="3spin", seed=seed)


def make_step(problem, dyn, n, seed, *, threads=1, ahead=True):
    """One step of one member, in place, with ``threads`` threads; for SGD the batches
    drawn ahead (``ahead``) or per step."""
    y, c = problem.sample_init(np.random.default_rng([seed, 0]), n)
    box = [State(0.0, y[None], c[None])]
    rngs = [np.random.default_rng([seed, 1])]
    draws = Batches(problem.measure, rngs) if ahead and dyn.scheme == "sgd" else rngs

    def one_step():
        with parallel.threads(threads):
            box[0] = step(problem, dyn, box[0], dyn.dt, 1.0 / n, draws)

    return one_step


def old_three_spin(target, x):
    """The 3-spin target as computed before (chunks of 2**20 / d² rows of outer products
    through the non-contiguous (d², d) matrix: products above BLAS's threading
    threshold)."""
    d = target.d
    X = x.reshape(-1, d)
    G = target._g.reshape(d, d * d).T
    out = np.empty(X.shape)
    rows = max(1, 2**20 // (d * d))
    for s in range(0, len(X), rows):
        xs = X[s : s + rows]
        out[s : s + rows] = (xs[:, :, None] * xs[:, None, :]).reshape(len(xs), d * d) @ G
    return np.sum(X * out, axis=-1) / (3 * d)


def floor_fn(kind, n, cols, rng):
    """The floor and the factor that scales it to the whole (n, cols) array."""
    rows = min(n, 4096)
    A = rng.standard_normal((rows, cols))
    E = np.empty_like(A)
    if kind == "sigmoid":
        return (lambda: special.expit(A, out=E)), n / rows
    return (lambda: np.exp(A, out=E)), n / rows


def peaks(seed):
    """tracemalloc peaks (MB) of one step: n = 10^6 circle units, Q = 64; n = 10^5
    sigmoid units with an SGD batch of P = 10^4 on the sphere."""
    out = {}
    for label, kind, Q, n, P in (("circle n=10^6, Q=64, GD", "circle", 64, 10**6, None),
                                 ("sigmoid n=10^5, SGD P=10^4", "sigmoid", 64, 10**5,
                                  10**4)):
        problem = make_problem(kind, Q, seed)
        dyn = Dynamics("sgd" if P else "gd", "euler", 0.05, batch=P)
        fn = make_step(problem, dyn, n, seed, threads=parallel.get_threads())
        fn()  # buffers of the default budgets exist before the peak is taken
        tracemalloc.start()
        try:
            fn()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        cols = P or Q
        out[label] = (peak / 1e6, 8 * n * cols / 1e6)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="*", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--memory", action="store_true", help="tracemalloc peaks of two steps")
    timing_args(ap, block_time=0.3, quick_block=0.1, min_calls=1)
    args = quick_args(ap.parse_args(argv))

    print("\n".join(machine_info()))
    print(f"rounds={args.rounds}, block={args.block_time}s; default threads here: "
          f"{parallel.get_threads()}; times are medians in ms, (±x%) = interquartile "
          "range / median; ratios to the floor")
    rng = np.random.default_rng(args.seed)
    for key in args.rows:
        label, kind, Q, n, P = ROWS[key]
        scheme = "sgd" if P else "gd"
        dyn = Dynamics(scheme, "euler", 0.05, batch=P)
        problem = make_problem(kind, Q, args.seed)
        floor, scale = floor_fn(kind, n, P or Q, rng)
        fns = {"floor": floor,
               "1 thread": make_step(problem, dyn, n, args.seed, threads=1),
               "2 threads": make_step(problem, dyn, n, args.seed, threads=2)}
        if P:
            fns["per-step draws"] = make_step(problem, dyn, n, args.seed, threads=1,
                                              ahead=False)
            xb = problem.measure.sample(rng, P)[None]
            fns["3-spin before"] = lambda xb=xb: old_three_spin(problem.target, xb)
            fns["3-spin after"] = lambda xb=xb: problem.target(xb)
        s = measure(fns, args.rounds, args.block_time, args.min_calls)
        med = {k: float(np.median(v)) for k, v in s.items()}
        fl = scale * med["floor"]
        print(f"\n{label}: floor {fl * 1e3:.2f} ms (±{spread(s['floor']):.0%})")
        for k in fns:
            if k == "floor":
                continue
            ratio = f"{med[k] / fl:6.2f} floors" if "3-spin" not in k else ""
            print(f"  {k:<16} {med[k] * 1e3:10.2f} ms (±{spread(s[k]):4.0%}) {ratio}")
        print(f"  2 threads / 1 thread = {med['2 threads'] / med['1 thread']:.2f}")
        if P:
            print(f"  per-step draws / drawn ahead = "
                  f"{med['per-step draws'] / med['1 thread']:.2f}; 3-spin before / after "
                  f"= {med['3-spin before'] / med['3-spin after']:.1f}")
    if args.memory:
        print("\ntracemalloc peak of one step (default budgets; one (n, Q or P) float64 "
              "array for comparison):")
        for label, (peak, full) in peaks(args.seed).items():
            print(f"  {label:<30} {peak:8.1f} MB   (n x cols array: {full:.0f} MB)")
    print("after the run, " + load_line())


if __name__ == "__main__":
    main()
