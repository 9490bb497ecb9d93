"""Time per right-hand side of the Eulerian grid solver of (2.9), and one mean-field solve.

Part 1 times ``GridSolver.rhs(m, out)`` (potential U, both or all three flux sweeps) on

* 2-D grids (circle problem, y periodic): 128², 256², 512² cells;
* 3-D grids (tanh unit, y = (a, b) in a box with walls, c): 64³ and 128³ cells;

interleaved in rounds so that drift on a shared machine hits every size alike, and
prints the median time per call, its spread (interquartile range / median), the time
per cell, and the growth exponent of time in the number of cells fitted by log-log
least squares (``scipy.stats.linregress``; target: 2-D within 1.0 ± 0.1, 256² ≤ 2 ms).
Before timing, the fast right-hand side is checked against ``meanfield.grid.fv.rhs_reference``.

Part 2 solves the circle example (kappa=2, Q=64, f = 0.5 cos 2x + sin x − 0.3 sin 3x,
c ~ U[−1.5, 1.5]) on a 256 × 256 grid with c in [−7, 7] (the particles' c reach
[−5.4, 3.7] by t = 40) to save times 0, 5, 10, 20, 40 and prints the wall time and the
step statistics.

    python benchmarks/bench_grid.py               # full (about 2 minutes)
    python benchmarks/bench_grid.py --quick       # 3 short rounds, no 128³
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_particles import machine_info, measure, spread  # noqa: E402

from meanfield.grid import fv  # noqa: E402
from meanfield.grid.solve import GridSolver, initial_masses, make_grid, solve_grid  # noqa: E402
from particles.kernels import SigmoidUnit  # noqa: E402
from particles.laws import CLaw, YNormal  # noqa: E402
from particles.measures import UniformBox  # noqa: E402
from particles.problem import Problem  # noqa: E402
from particles.presets import circle_problem


def circle_example():
    return circle_problem(2.0, 64, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


def tanh_example():
    return Problem(name="tanh1d", kernel=SigmoidUnit(d=1, activation="tanh"),
                   measure=UniformBox(d=1, Q=16, low=-1, high=1),
                   target=lambda x: 0.5 * np.sin(2 * x[..., 0]),
                   y_law=YNormal(2, 0.0, 0.5), c_law=CLaw("uniform", low=-1, high=1))


def check_reference(rng):
    """Fast right-hand side == loops, 2-D periodic and 3-D walls, before timing."""
    for problem, ny, nc, cr in [(circle_example(), 12, 10, 3.0), (tanh_example(), (5, 6), 7, 2.0)]:
        g = make_grid(problem, ny, nc, -cr, cr)
        s = GridSolver(problem, g, block=40)
        m = rng.uniform(0, 1, g.shape)
        ref, _ = fv.rhs_reference(m, s.potential(m), g.dy + (g.dc,), g.c_centres, s.bcs)
        np.testing.assert_allclose(s.rhs(m), ref, rtol=0, atol=1e-13 * np.abs(ref).max())


def bench_rhs(args):
    cases = [("2-D", f"{n}x{n}", circle_example(), n, n, 7.0) for n in args.n2]
    cases += [("3-D", f"{n}x{n}x{n}", tanh_example(), n, n, 3.0) for n in args.n3]
    fns, info = {}, {}
    for dim, label, problem, ny, nc, cr in cases:
        g = make_grid(problem, ny, nc, -cr, cr)
        s = GridSolver(problem, g)
        m, _ = initial_masses(problem, g)
        m = m + 1e-3 * m.max() * np.random.default_rng(0).uniform(size=m.shape)
        out = np.empty(g.shape)
        fns[label] = (lambda s=s, m=m, out=out: s.rhs(m, out))
        info[label] = (dim, int(np.prod(g.shape)), s.U_of_g.name)
    samples = measure(fns, args.rounds, args.block_time, args.min_calls)
    print("\n| grid | cells | potential | median ms / RHS | spread | ns / cell |")
    print("|---|---:|---|---:|---:|---:|")
    rows = []
    for label, s in samples.items():
        dim, cells, pot = info[label]
        med = float(np.median(s))
        rows.append((dim, cells, med))
        print(f"| {label} | {cells} | {pot} | {med * 1e3:.3f} | ±{spread(s):.0%} "
              f"| {med / cells * 1e9:.1f} |")
    print()
    for dim in ("2-D", "3-D"):
        pts = [(c, t) for d, c, t in rows if d == dim]
        if len(pts) >= 2:
            fit = stats.linregress(np.log([c for c, _ in pts]), np.log([t for _, t in pts]))
            err = f" ± {fit.stderr:.2f}" if len(pts) > 2 else " (two sizes)"
            print(f"growth exponent of time in cells, {dim}: {fit.slope:.2f}{err}")
    return rows


def bench_solve(args):
    problem = circle_example()
    t0 = time.perf_counter()
    ds = solve_grid(problem, [0, 5, 10, 20, 40],
                    grid={"y": 256, "c": 256, "c_min": -7.0, "c_max": 7.0},
                    progress=False)
    wall = time.perf_counter() - t0
    a = ds.attrs
    print("\nmean-field solve, circle example, 256 x 256, c in [-7, 7], t = 0..40:")
    print(f"  wall time {wall:.1f} s, {a['n_steps']} SSP-RK3 steps "
          f"({3 * a['n_steps']} RHS), {wall / (3 * a['n_steps']) * 1e3:.2f} ms per RHS "
          "incl. stage updates")
    print(f"  dt min/mean/max {a['dt_min']:.4g} / {a['dt_mean']:.4g} / {a['dt_max']:.4g}, "
          f"largest CFL number {a['cfl_max']:.3f} (cfl={a['cfl']}), potential {a['potential']}")
    print(f"  loss_0 at t = {ds.t.values.tolist()}: {np.round(ds.loss_0.values, 5).tolist()}")
    print(f"  |mass - 1| max {np.abs(ds.mass.values - 1).max():.1e}, outflow "
          f"{ds.outflow.values[-1]:.1e}, truncated initial mass {a['truncated_mass']:.1e}")
    return wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n2", type=int, nargs="*", default=[128, 256, 512])
    ap.add_argument("--n3", type=int, nargs="*", default=[64, 128])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--block-time", type=float, default=0.3)
    ap.add_argument("--min-calls", type=int, default=3)
    ap.add_argument("--no-solve", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 rounds of 0.1 s, no 128^3")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.block_time, args.n3 = 3, 0.1, [n for n in args.n3 if n <= 64]
    print("\n".join(machine_info()))
    import os

    print(f"load average at start: {os.getloadavg()}")
    check_reference(np.random.default_rng(1))
    print(f"RHS timings: rounds={args.rounds}, block={args.block_time}s per size and round")
    bench_rhs(args)
    if not args.no_solve:
        bench_solve(args)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
