"""Time per explicit-Euler GD step of the circle problem against the ``exp`` floor.

For each n the script times, interleaved in rounds so that drift on a shared machine
hits every quantity alike:

* the floor: one ``numpy.exp(A, out=E)`` over an (n, Q) float64 array (both arrays
  preallocated, so no allocation or page faults are timed);
* for context only, ``numpy.exp(A)``, which allocates its (n, Q) result every call;
* one ``particles.dynamics.step`` with ``Dynamics(scheme="gd", integrator="euler")`` on
  the circle problem, for B = 1 member and for B = 8 members (context).

It prints per n the median times (``time.perf_counter``), their spread, the ratio of the
step to the floor (B = 8: to 8 floors) and the growth exponent of time in n fitted by
log-log least squares (``scipy.stats.linregress``). Targets: ratio <= 2 at
n = 16384 and exponent 1.0 +- 0.1 for B = 1.

    python benchmarks/bench_particles.py                 # n = 256, 1024, ..., 65536
    python benchmarks/bench_particles.py --n 256 512 1024 --quick
"""
from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from particles.dynamics import Dynamics, State, step  # noqa: E402
from particles.kernels import pullback_reference  # noqa: E402
from particles.presets import circle_problem

ENV_VARS = ("OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def machine_info() -> list[str]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    lines = [
        f"machine: {platform.machine()}, nproc {affinity} (cpu_count {os.cpu_count()}), "
        f"CPU {model}",
        f"python {platform.python_version()}, numpy {np.__version__}",
    ]
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        lines.append(f"numpy BLAS: {blas.get('name')} {blas.get('version')}")
    except Exception:  # pragma: no cover - show_config layout differs across numpy
        pass
    lines.append("env: " + ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in ENV_VARS))
    lines.append(load_line())
    try:
        from threadpoolctl import threadpool_info

        for p in threadpool_info():
            lines.append(
                f"threadpoolctl: {p.get('internal_api')} {p.get('version')} "
                f"threads={p.get('num_threads')} arch={p.get('architecture')}"
            )
    except ImportError:
        lines.append("threadpoolctl: not installed")
    return lines


def load_line():
    try:
        return "load average (1, 5, 15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "load average: ?"


def check_kernel(problem, rng):
    """The fast path agrees with the reference before anything is timed."""
    y = rng.uniform(0, 2 * np.pi, (2, 64, 1))
    a = rng.standard_normal((2, 64)) / 64
    args = (y, a, problem.x, problem.w, problem.f_x)
    for got, ref in zip(problem.kernel.pullback(*args), pullback_reference(problem.kernel, *args)):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def timed_block(fn, calls):
    out = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return out


def measure(fns, rounds, block_time, min_calls):
    """Median seconds per call of each fn, blocks interleaved over ``rounds`` rounds."""
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up: buffers, page faults, BLAS init
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
        calls[name] = max(min_calls, int(block_time / max(one, 1e-7)))
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += timed_block(fn, calls[name])
    return {name: np.asarray(s) for name, s in samples.items()}


def spread(s):
    """Interquartile range relative to the median."""
    q1, q2, q3 = np.percentile(s, [25, 50, 75])
    return (q3 - q1) / q2


def timing_args(ap, *, block_time, quick_block, min_calls=3):
    """The timing options every benchmark shares (interleaved rounds of timed blocks,
    ``--quick``, ``--seed``); ``quick_args`` applies ``--quick`` after parsing."""
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    ap.add_argument("--block-time", type=float, default=block_time,
                    help=f"seconds per timed block and quantity (default {block_time})")
    ap.add_argument("--min-calls", type=int, default=min_calls)
    ap.add_argument("--quick", action="store_true",
                    help=f"3 rounds of {quick_block} s blocks")
    ap.add_argument("--seed", type=int, default=0)
    ap.set_defaults(quick_block=quick_block)
    return ap


def quick_args(args):
    if args.quick:
        args.rounds, args.block_time = 3, args.quick_block
    return args


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[256, 1024, 4096, 16384, 65536])
    ap.add_argument("--Q", type=int, default=256, help="quadrature nodes (default 256)")
    ap.add_argument("--members", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--kappa", type=float, default=2.0)
    timing_args(ap, block_time=0.15, quick_block=0.05)
    args = quick_args(ap.parse_args(argv))

    print("\n".join(machine_info()))
    rng = np.random.default_rng(args.seed)
    problem = circle_problem(args.kappa, args.Q, cos=[0.0, 1.0], sin=[0.0, 0.5])
    check_kernel(problem, rng)
    dyn = Dynamics(scheme="gd", integrator="euler", dt=0.05)
    Q = args.Q
    print(
        f"circle problem, kappa={args.kappa}, Q={Q}, {dyn.scheme}/{dyn.integrator} "
        f"dt={dyn.dt}; rounds={args.rounds}, block={args.block_time}s; "
        "floor = np.exp(A, out=E) on (n, Q) float64"
    )
    print("times are medians in ms; (±x%) = interquartile range / median; "
          "ratio = step / floor (B members: step / (B * floor)); "
          "exp(A) = np.exp allocating its result (context, not the floor)")

    head = f"{'n':>7} {'floor ms':>16} {'exp(A) ms':>16}"
    for B in args.members:
        head += f" {f'step B={B} ms':>20} {f'ratio B={B}':>10}"
    print(head)
    rows = []
    for n in args.n:
        A = -2 * args.kappa * rng.random((n, Q))  # the range of kappa (cos - 1)
        E = np.empty_like(A)
        fns = {"floor": lambda A=A, E=E: np.exp(A, out=E), "alloc": lambda A=A: np.exp(A)}
        for B in args.members:
            ys, cs = zip(*(problem.sample_init(np.random.default_rng([args.seed, b]), n)
                           for b in range(B)))
            box = [State(0.0, np.stack(ys), np.stack(cs))]

            def one_step(box=box, n=n):
                box[0] = step(problem, dyn, box[0], dyn.dt, 1.0 / n)

            fns[B] = one_step
        s = measure(fns, args.rounds, args.block_time, args.min_calls)
        med = {k: float(np.median(v)) for k, v in s.items()}
        rows.append((n, med))
        line = f"{n:>7} {med['floor'] * 1e3:>9.3f} (±{spread(s['floor']):4.0%})"
        line += f" {med['alloc'] * 1e3:>9.3f} (±{spread(s['alloc']):4.0%})"
        for B in args.members:
            line += f" {med[B] * 1e3:>12.3f} (±{spread(s[B]):4.0%}) {med[B] / (B * med['floor']):>10.2f}"
        print(line, flush=True)

    if len(rows) >= 2:
        logn = np.log([n for n, _ in rows])
        print("growth exponent of time in n (log-log least squares, ± standard error):")
        for key in ["floor", "alloc"] + list(args.members):
            fit = stats.linregress(logn, np.log([m[key] for _, m in rows]))
            label = {"floor": "floor", "alloc": "exp(A)"}.get(key, f"step B={key}")
            print(f"  {label:>12}: {fit.slope:.3f} ± {fit.stderr:.3f}")
    targets = [m for n, m in rows if n == 16384]
    if 1 in args.members and targets and len(rows) >= 2:
        ratio = targets[0][1] / targets[0]["floor"]
        slope = stats.linregress(logn, np.log([m[1] for _, m in rows])).slope
        ok = ratio <= 2.0 and abs(slope - 1.0) <= 0.1
        print(f"targets (B=1): ratio at n=16384 {ratio:.2f} <= 2, exponent {slope:.3f} "
              f"in 1.0 ± 0.1: {'met' if ok else 'NOT met'}")
    print("after the run, " + load_line())


if __name__ == "__main__":
    main()
