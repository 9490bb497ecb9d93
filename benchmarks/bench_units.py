"""Time per step of the dot-product unit problems (4.9) against the ``expit`` floor.

Rows of the issue's table, each timed interleaved in rounds (house style of
``bench_particles.py``: medians, interquartile spread, the floor measured in the same run):

* ``gd``: sigmoid, d = 10, data form, Q = 4000 nodes on the sphere, n = 1024, one explicit
  Euler GD step;
* ``sgd``: sigmoid, d = 10, SGD with a fresh batch of P = 1600 points on the sphere per
  step (drawn inside the step, from the member's generator), n = 200.

Per row: the floor (one ``scipy.special.expit(A, out=E)`` over the (n, Q) or (n, P) array
of pre-activations, the largest array a step must evaluate, both preallocated), the step
through the generic ``Kernel.pullback`` (it materialises the (n, Q, N) gradient array:
"before") and through the fused ``SigmoidUnit.pullback`` ("after"), and the ratios to the
floor. Before timing, the fused pull-back is checked against ``pullback_reference``.
JAX is not used here (not a dependency; the issue's JAX figures are from another run).

    python benchmarks/bench_units.py                 # both rows, B = 1 member
    python benchmarks/bench_units.py --rows gd --quick
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
from particles.dynamics import Dynamics, State, step  # noqa: E402
from particles.kernels import Kernel, pullback_reference  # noqa: E402
from particles.presets import sigmoid_problem

ROWS = {
    # name: (description, d, nodes Q (data form) or None, n, scheme, batch P)
    "gd": ("sigmoid d=10, data form, Q=4000, n=1024, Euler GD", 10, 4000, 1024, "gd", None),
    "sgd": ("sigmoid d=10, SGD P=1600 on the sphere, n=200", 10, 64, 200, "sgd", 1600),
}


def check_kernel(problem, rng):
    """The fused pull-back agrees with the reference before anything is timed."""
    kernel = problem.kernel
    y = rng.standard_normal((2, 16, kernel.N))
    a = rng.standard_normal((2, 16)) / 16
    x, w, f_x = problem.x[:200], problem.w[:200], problem.f_x[:200]
    for got, ref in zip(kernel.pullback(y, a, x, w, f_x),
                        pullback_reference(kernel, y, a, x, w, f_x)):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def make_step(problem, dyn, n, B, seed, generic):
    """A closure doing one step of B members in place; ``generic`` routes the step
    through the generic ``Kernel.pullback`` (an instance attribute on this problem's
    kernel, so the other closure is untouched)."""
    if generic:
        kernel = problem.kernel
        kernel.pullback = lambda *args: Kernel.pullback(kernel, *args)
    ys, cs = zip(*(problem.sample_init(np.random.default_rng([seed, b]), n) for b in range(B)))
    box = [State(0.0, np.stack(ys), np.stack(cs))]
    rngs = [np.random.default_rng([seed, 1, b]) for b in range(B)]

    def one_step():
        box[0] = step(problem, dyn, box[0], dyn.dt, 1.0 / n, rngs)

    return one_step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--members", type=int, default=1, help="ensemble members B (default 1)")
    timing_args(ap, block_time=0.3, quick_block=0.1, min_calls=2)
    args = quick_args(ap.parse_args(argv))

    print("\n".join(machine_info()))
    print(f"B={args.members} member(s); rounds={args.rounds}, block={args.block_time}s; "
          "floor = scipy.special.expit(A, out=E) on the (n, Q or P) float64 array")
    print("times are medians in ms; (±x%) = interquartile range / median; "
          "ratio = step / (B * floor)")
    print(f"{'row':<52} {'floor ms':>16} {'generic ms':>18} {'fused ms':>18} "
          f"{'generic/fl':>10} {'fused/fl':>9} {'speed-up':>8}")
    rng = np.random.default_rng(args.seed)
    B = args.members
    for key in args.rows:
        label, d, Q, n, scheme, P = ROWS[key]
        dyn = Dynamics(scheme=scheme, integrator="euler", dt=0.05, batch=P)
        # two copies of one problem (same seed): one steps through the generic pull-back
        fused_problem = sigmoid_problem(d, Q, target="3spin", seed=args.seed)
        generic_problem = sigmoid_problem(d, Q, target="3spin", seed=args.seed)
        check_kernel(fused_problem, rng)
        cols = P if scheme == "sgd" else Q
        A = rng.standard_normal((n, cols))  # pre-activations of O(1)
        E = np.empty_like(A)
        fns = {
            "floor": lambda A=A, E=E: special.expit(A, out=E),
            "generic": make_step(generic_problem, dyn, n, B, args.seed, generic=True),
            "fused": make_step(fused_problem, dyn, n, B, args.seed, generic=False),
        }
        s = measure(fns, args.rounds, args.block_time, args.min_calls)
        med = {k: float(np.median(v)) for k, v in s.items()}
        floor = B * med["floor"]
        print(f"{label:<52} {med['floor'] * 1e3:>9.3f} (±{spread(s['floor']):4.0%})"
              f" {med['generic'] * 1e3:>11.2f} (±{spread(s['generic']):4.0%})"
              f" {med['fused'] * 1e3:>11.2f} (±{spread(s['fused']):4.0%})"
              f" {med['generic'] / floor:>10.1f} {med['fused'] / floor:>9.2f}"
              f" {med['generic'] / med['fused']:>8.1f}", flush=True)
    print("after the run, " + load_line())


if __name__ == "__main__":
    main()
