"""Cost of the two CLT-covariance predictions: influence and ensemble.

Part 1, influence (``meanfield.influence``): wall time of ``influence_matrices`` on the
circle problem from t = 0 to t = 1 (RK4, dt = 0.05: 20 forward steps and 20 reverse
steps) for node counts y × c and x-quadrature sizes Q, per step and per node.

Part 2, ensemble (``meanfield.linearised``): time of one tangent-linear SSP-RK3 step of a
batch of M members on (y, c) grids of the circle problem, split into the part paid once
per step (the three stage linearisations of rho_0, ``stage_linearisations``) and the part
per member (``Linearisation.apply`` at the three stages, batches of ``chunk`` members),
interleaved in rounds (``bench_particles.measure``); medians.

Part 3: wall time of the fluctuation section of ``examples/circle.toml`` (influence,
y = 64, c = 12, dt = 0.05, Q = 64, save times 0, 5, 10, 20, 40), one run.

    python benchmarks/bench_fluctuations.py            # all parts (a few minutes)
    python benchmarks/bench_fluctuations.py --quick    # shorter rounds, no 256^2, no part 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_particles import machine_info, measure, spread  # noqa: E402

from meanfield.grid.solve import GridSolver, advance, prepare  # noqa: E402
from meanfield.influence import clt_covariance_influence, influence_matrices  # noqa: E402
from meanfield.linearised import (  # noqa: E402
    _default_chunk,
    fluctuation_rng,
    sample_perturbations,
)
from meanfield.grid.tangent import stage_linearisations, tangent_rk3  # noqa: E402
from particles.laws import CLaw  # noqa: E402
from particles.presets import circle_problem


def circle(Q):
    return circle_problem(2.0, Q, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


def bench_influence(args):
    print("\n## influence: influence_matrices, t = 0..1, RK4 dt = 0.05 (20 + 20 steps)")
    print("| y x c nodes | J | Q | wall s (median of 3) | ms per step (fwd + rev) "
          "| µs per step and node |")
    print("|---|---:|---:|---:|---:|---:|")
    for ny, nc in args.influence_nodes:
        for Q in args.Q:
            p = circle(Q)
            walls = []
            for _ in range(3):
                t0 = time.perf_counter()
                influence_matrices(p, [0.0, 1.0], grid={"y": ny, "c": nc, "dt": 0.05})
                walls.append(time.perf_counter() - t0)
            w = float(np.median(walls))
            J = ny * nc
            print(f"| {ny} x {nc} | {J} | {Q} | {w:.3f} | {w / 20 * 1e3:.2f} | "
                  f"{w / 20 / J * 1e6:.2f} |", flush=True)


def bench_ensemble(args):
    print("\n## ensemble: one tangent-linear SSP-RK3 step (c in [-2.5, 2.5], Q = 32)")
    print("| grid | cells | M | chunk | forward part ms | tangent ms (M members) | "
          "ms per member-step | ns per cell and member-step | spread |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    p = circle(32)
    for n_y, n_c in args.grids:
        grid, m0, _, _ = prepare(p, grid={"y": n_y, "c": n_c, "c_min": -2.5, "c_max": 2.5})
        s = GridSolver(p, grid)
        # a state of rho_0 at t = 1 (structure in y and c, as in a run)
        m, _ = advance(s, m0, 0.0, 1.0)
        h = 0.9 * s.cfl_bound(m)
        lins, _ = stage_linearisations(s, m, h)
        cells = m.size
        for M in args.members:
            chunk = _default_chunk(cells)
            dms = [sample_perturbations(m0, min(chunk, M - a), fluctuation_rng(0))
                   for a in range(0, M, chunk)]

            def fwd(s=s, m=m, h=h):
                stage_linearisations(s, m, h)

            def tan(lins=lins, h=h, dms=dms):
                for d in dms:
                    tangent_rk3(lins, h, d)

            smp = measure({"fwd": fwd, "tan": tan}, args.rounds, args.block_time, 2)
            f, t = float(np.median(smp["fwd"])), float(np.median(smp["tan"]))
            print(f"| {n_y}x{n_c} | {cells} | {M} | {chunk} | {f * 1e3:.2f} | {t * 1e3:.2f} | "
                  f"{t / M * 1e3:.3f} | {t / M / cells * 1e9:.1f} | ±{spread(smp['tan']):.0%} |",
                  flush=True)


def bench_example():
    print("\n## examples/circle.toml [fluctuations]: influence, y = 64, c = 12, dt = 0.05, "
          "Q = 64, save times 0, 5, 10, 20, 40")
    p = circle(64)
    t0 = time.perf_counter()
    ds = clt_covariance_influence(p, [0.0, 5.0, 10.0, 20.0, 40.0],
                                  grid={"y": 64, "c": 12, "dt": 0.05})
    wall = time.perf_counter() - t0
    tr = ds["clt_var"].mean("x").values
    print(f"wall time {wall:.1f} s; mean_x clt_var at t = 0, 5, 10, 20, 40: "
          f"{np.array2string(tr, precision=4)}")
    return wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--influence-nodes", type=lambda s: tuple(int(v) for v in s.split("x")),
                    nargs="+", default=[(32, 6), (64, 12), (128, 24)])
    ap.add_argument("--Q", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--grids", type=lambda s: tuple(int(v) for v in s.split("x")), nargs="+",
                    default=[(64, 48), (128, 96), (256, 256)])
    ap.add_argument("--members", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-time", type=float, default=0.3)
    ap.add_argument("--no-example", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="3 rounds of 0.1 s, grids up to 128x96, no part 3")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.block_time, args.no_example = 3, 0.1, True
        args.grids = [g for g in args.grids if g[0] * g[1] <= 128 * 96]
    print("\n".join(machine_info()))
    print(f"load average at start: {os.getloadavg()}")
    bench_influence(args)
    bench_ensemble(args)
    if not args.no_example:
        bench_example()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
