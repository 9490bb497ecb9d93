"""Cost of a random-features step (``dynamics.train = ["c"]``) against a trained-units step.

One ``particles.dynamics.step`` of the circle problem (κ = 2, Q = 256, GD Euler, B = 1
member) with ``train = ("y", "c")`` and ``train = ("c",)``, n = 256 … 16384, interleaved
in rounds (``bench_particles.measure``); medians and the ratio frozen / trained of the
same run. The frozen step goes through the kernel's fused pull-back like the trained one
and drops its y gradient (evaluating φ alone through ``kernel.phi``, twice, measured 10 to
50 times slower than the fused pull-back here); it saves the y update, tangent and
retraction.

    python benchmarks/bench_baselines.py [--quick]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_particles import machine_info, measure, spread, timing_args  # noqa: E402

from particles.dynamics import Dynamics, State, step  # noqa: E402
from particles.laws import CLaw  # noqa: E402
from particles.presets import circle_problem  # noqa: E402


def main(argv=None):
    ap = timing_args(argparse.ArgumentParser(description=__doc__), block_time=0.15,
                     quick_block=0.05)
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.block_time = 3, args.quick_block
    p = circle_problem(2.0, 256, [0.0, 0.4], [0.0, 0.6], c_law=CLaw("uniform", low=-1.5,
                                                                    high=1.5))
    rng = np.random.default_rng(args.seed)
    print("\n".join(machine_info()))
    print(f"circle, kappa=2, Q=256, gd/euler, B=1; rounds={args.rounds}, "
          f"block={args.block_time}s; medians in ms, (±) = IQR / median")
    print(f"{'n':>7} {'trained ms':>18} {'frozen y ms':>18} {'frozen/trained':>15}")
    for n in (256, 1024, 4096, 16384):
        y, c = p.sample_init(rng, n)
        st = State(0.0, y[None], c[None])
        dyn = {"trained": Dynamics("gd"), "frozen": Dynamics("gd", train=("c",))}
        fns = {k: (lambda d=d: step(p, d, st, 0.05, 1.0 / n)) for k, d in dyn.items()}
        s = measure(fns, args.rounds, args.block_time, args.min_calls)
        m = {k: 1e3 * np.median(v) for k, v in s.items()}
        print(f"{n:>7} {m['trained']:>10.3f} (±{100 * spread(s['trained']):3.0f}%) "
              f"{m['frozen']:>10.3f} (±{100 * spread(s['frozen']):3.0f}%) "
              f"{m['frozen'] / m['trained']:>15.2f}")


if __name__ == "__main__":
    main()
