"""Steps per second of the paper's full forms on the JAX backend, on any JAX device.

Runs from the source tree with no install step and writes nothing:

    PYTHONPATH=. python benchmarks/bench_device.py                 # the default device
    JAX_PLATFORMS=cpu  PYTHONPATH=. python benchmarks/bench_device.py
    JAX_PLATFORMS=cuda PYTHONPATH=. python benchmarks/bench_device.py
    PYTHONPATH=. python benchmarks/bench_device.py --quick         # fewer rounds
    PYTHONPATH=. python benchmarks/bench_device.py --numpy         # and the numpy backend

It imports numpy, scipy, xarray, tqdm, jax and the toolkit's packages only (no netCDF,
no matplotlib). Each row is one task as ``mfpc run`` makes it (8 seeds of one n, the
members batched on the device), stepped by
:class:`particles.jax.stepper.JaxParticleStepper` exactly as a run steps it
(``advance``: a stretch of steps in one compiled call), in float64 and float32:

* Fig. 3 (``examples/paper_sigmoid.toml``): sigmoid units, 3-spin target, data uniform on
  the sphere, SGD at n = 1024 before the quench (P = ⌊n/5⌋ = 204) and after it
  (P = ⌊(n/5)²⌋ = 41943), d = 10 and d = 25. The full form takes 2×10⁶ steps before the
  quench and 2×10⁵ after it: the projected wall time of one task is
  2×10⁶ · (step before) + 2×10⁵ · (step after).
* Fig. 1 (``examples/paper_rbf_sphere.toml``): sphere RBF units (4.2), d = 5, α = 1, the
  interpolation energy (4.5) of the 3-spin model in the kernel (F, K) form, Langevin
  (τ = 10⁻³), dt = 0.002, n = 256: 2×10⁵ steps.

Per row: compile (not timed), then ``--rounds`` timings of ``--steps`` steps each,
``block_until_ready``; the median seconds per step. The machine's load is printed
before and after (a shared machine: compare medians taken at similar loads).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from particles.dynamics import Dynamics  # noqa: E402
from particles.jax import device_name, require_jax  # noqa: E402
from particles.jax.stepper import JaxParticleStepper  # noqa: E402
from particles.presets import sigmoid_problem, sphere_problem  # noqa: E402
from particles.simulate import member_rng  # noqa: E402

#: (label, kind, d, n, P, steps of the full form)
ROWS = [
    ("Fig. 1, sphere RBF (4.5), kernel form, d = 5, n = 256", "fig1", 5, 256, 0, 200_000),
    ("Fig. 3, d = 10, n = 1024, before the quench (P = 204)", "fig3", 10, 1024, 204,
     2_000_000),
    ("Fig. 3, d = 10, n = 1024, after the quench (P = 41943)", "fig3", 10, 1024, 41943,
     200_000),
    ("Fig. 3, d = 25, n = 1024, before the quench (P = 204)", "fig3", 25, 1024, 204,
     2_000_000),
    ("Fig. 3, d = 25, n = 1024, after the quench (P = 41943)", "fig3", 25, 1024, 41943,
     200_000),
]
SEEDS = 8
#: nodes of the loss the divergence watch sees every 8 Q/P (8 Q/n) steps (the full forms
#: have 10^5 and 10^6; the watch's share of a step is at most about 1/8 either way)
NODES = 2000


def problem_dynamics(kind, d, P, dtype):
    """The row's problem and dynamics (``examples/paper_rbf_sphere.toml``,
    ``examples/paper_sigmoid.toml``)."""
    if kind == "fig1":
        return (sphere_problem(d, 1.0, NODES, "interpolation", "3spin", seed=0),
                Dynamics("langevin", "euler", 0.002, form="kernel", temperature=1e-3,
                         backend="jax", dtype=dtype))
    return (sigmoid_problem(d, NODES, target="3spin", seed=0),
            Dynamics("sgd", "euler", 0.25, batch=P, backend="jax", dtype=dtype))


def load():
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def time_row(kind, d, n, P, dtype, steps, rounds):
    """Median seconds per step of one task (SEEDS members) and the spread of the rounds."""
    problem, dyn = problem_dynamics(kind, d, P, dtype)
    st = JaxParticleStepper(problem, dyn, 1.0 / n)
    rngs = [member_rng(2, 0, s) for s in range(SEEDS)]
    init = [problem.sample_init(r, n) for r in rngs]
    state = st.init(np.stack([v[0] for v in init]), np.stack([v[1] for v in init]), rngs)
    t_end = 1e9 * dyn.dt
    st.propose(state, 0.0, t_end)
    state, _ = st.advance(state, t_end, 1)  # compile
    state.y.block_until_ready()
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        state, k = st.advance(state, t_end, steps)
        state.y.block_until_ready()
        per.append((time.perf_counter() - t0) / k)
    if st.check(state) is not None:
        raise RuntimeError(f"the benchmark's state failed: {st.check(state)}")
    per = np.array(per)
    q1, q3 = np.percentile(per, [25, 75])
    return float(np.median(per)), float((q3 - q1) / np.median(per))


def time_numpy(kind, d, n, P, steps, rounds):
    """The same task on the numpy backend (``particles.dynamics.step``, SGD batches drawn
    ahead as a run draws them): median seconds per step and spread."""
    from particles.dynamics import Batches, State, step

    problem, dyn = problem_dynamics(kind, d, P, "float64")
    dyn = Dynamics(dyn.scheme, dyn.integrator, dyn.dt, form=dyn.form, batch=dyn.batch,
                   temperature=dyn.temperature)
    rngs = [member_rng(2, 0, s) for s in range(SEEDS)]
    init = [problem.sample_init(r, n) for r in rngs]
    state = State(0.0, np.stack([v[0] for v in init]), np.stack([v[1] for v in init]))
    draws = Batches(problem.measure, rngs) if dyn.scheme == "sgd" else rngs
    state = step(problem, dyn, state, dyn.dt, 1.0 / n, draws)
    per = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            state = step(problem, dyn, state, dyn.dt, 1.0 / n, draws)
        per.append((time.perf_counter() - t0) / steps)
    per = np.array(per)
    q1, q3 = np.percentile(per, [25, 75])
    return float(np.median(per)), float((q3 - q1) / np.median(per))


def fmt_time(seconds):
    for unit, s in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= s:
            return f"{seconds / s:.3g} {unit}"
    return f"{seconds:.3g} s"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of fewer steps")
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"],
                    choices=["float64", "float32"])
    ap.add_argument("--numpy", action="store_true",
                    help="also time the numpy backend on the same task (a CPU column)")
    args = ap.parse_args(argv)
    jax = require_jax("benchmarks/bench_device.py")
    print(f"jax {jax.__version__}, device {device_name()}, {os.cpu_count()} CPUs; {load()}")
    print(f"one task = {SEEDS} seeds of one n batched on the device; medians over rounds "
          "(±IQR/median)")
    rounds = 2 if args.quick else 5
    head = "| row | dtype | s / step | steps / s | full form (steps) | projected |"
    lines = [head, "|---|---|---|---|---|---|"]
    if args.numpy:
        lines[0] += " numpy backend s / step | numpy / JAX |"
        lines[1] += "---|---|"
    totals = {}
    for label, kind, d, n, P, full in ROWS:
        # about as long for each row
        steps = max(1, (4 if args.quick else 20) * 204 // P) if P else (20 if args.quick else 100)
        for dtype in args.dtypes:
            med, iqr = time_row(kind, d, n, P, dtype, steps, rounds)
            wall = med * full
            if kind == "fig3":
                totals[(d, dtype)] = totals.get((d, dtype), 0.0) + wall
            lines.append(f"| {label} | {dtype} | {med:.3g} (±{iqr:.0%}) | {1 / med:.3g} "
                         f"| {full:.0e} | {fmt_time(wall)} |")
            if args.numpy:
                if dtype == args.dtypes[0]:
                    ref = time_numpy(kind, d, n, P, steps, rounds)
                lines[-1] += f" {ref[0]:.3g} (±{ref[1]:.0%}) | {ref[0] / med:.2f} |"
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    print("\nprojected wall time of one task of the full Fig. 3 form (before + after the "
          "quench, n = 1024, 8 seeds):")
    for (d, dtype), wall in totals.items():
        print(f"  d = {d}, {dtype}: {fmt_time(wall)}")
    print(f"after the run, {load()}")


if __name__ == "__main__":
    main()
