"""Per-step cost of the paper's full forms (docs/paper.md): one task of 8 seeds, median of
k steps through particles.dynamics.step, to extrapolate to 2x10^5 / 2.2x10^6 steps.

    python benchmarks/paper_cost.py
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from particles.dynamics import Batches, Dynamics, State, step  # noqa: E402
from particles.presets import sigmoid_problem, sphere_problem
from particles.simulate import member_rng  # noqa: E402

def per_step(problem, dyn, n, B=8, k=20):
    rngs = [member_rng(0, 0, s) for s in range(B)]
    draws = [problem.sample_init(r, n) for r in rngs]
    st = State(0.0, np.stack([d[0] for d in draws]), np.stack([d[1] for d in draws]))
    src = Batches(problem.measure, rngs) if dyn.scheme == "sgd" else rngs
    st = step(problem, dyn, st, dyn.dt, 1.0 / n, src)
    ts = []
    for _ in range(k):
        t0 = time.perf_counter()
        st = step(problem, dyn, st, dyn.dt, 1.0 / n, src)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))

sph = sphere_problem(5, 1.0, 2000, "interpolation")
lang = Dynamics(scheme="langevin", dt=0.002, form="kernel", temperature=1e-3)
for n in (16, 64, 256):
    print(f"sphere n={n} B=8: {per_step(sph, lang, n)*1e3:.2f} ms/step")
sig = sigmoid_problem(10, 2000, "3spin")
for n, P in ((256, 51), (1024, 204), (256, 2621), (1024, 41943)):
    dyn = Dynamics(scheme="sgd", dt=0.25, batch=P)
    print(f"sigmoid n={n} P={P} B=8: {per_step(sig, dyn, n, k=5 if P > 10000 else 20)*1e3:.1f} ms/step")
