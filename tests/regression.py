"""Shrunk runs of every shipped example, for the regression pin of the one-engine refactor.

``python -m tests.regression`` (from the repository root) writes
``tests/data/regression.npz``: the numbers of these shrunk runs as computed by the code of
commit d954fdd (before problems were composed from parts and every solver ran on one time
loop). ``tests/test_regression.py`` reruns the same shrunk runs and holds the present code
to them (1e-12 relative, THEORY-independent: the arithmetic of a preset must not change).
Only public entry points are used, so the same file runs against old and new code.

One key is pinned from later code: ``circle/ensemble/clt_cov``, rewritten alone by
``python -m tests.regression circle/ensemble/clt_cov`` on commit 3c55b49, which makes a
limiter half-slope within round-off of 0 the tie at 0 in the tangent-linear
(:data:`meanfield.grid.tangent.TIE_RTOL`). At d954fdd the branch of such a cell (the
circle's symmetric extrema, where neighbouring cells are equal in exact arithmetic) is
frozen from the sign of an ulp-sized jump, which the BLAS kernel of the potential decides:
with ``OPENBLAS_CORETYPE`` Haswell, SkylakeX or Sandybridge, on numpy 1.26.4 to 2.4.6
alike, ``circle/grid/rho_0`` moves by 3e-15 while this key comes out 2e-4 to 6e-4 of its
largest entry away from the d954fdd number, which holds on the machine that wrote it only.
From 3c55b49 on, the key agrees across those kernels and versions to 1e-15 (it moved by
2.3e-3 at t = 0.5 and 1, the branch of those cells). Every other key is d954fdd's, bit for
bit.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "regression.npz"

#: example -> (particles override, dynamics override, with mean field and fluctuations)
SHRINK = {
    "circle": ({"n": [16, 64], "seeds": 2, "root_seed": 1},
               {"t_end": 1.0, "save_times": [0.0, 0.5, 1.0]}, True),
    "sigmoid_teacher": ({"n": [40], "seeds": 2, "root_seed": 2},
                        {"t_end": 0.5, "save_times": [0.0, 0.25, 0.5], "dt": 0.05,
                         "batch": [[0.0, 8], [0.25, 64]]}, False),
    "sphere_3spin": ({"n": [16], "seeds": 2, "root_seed": 1},
                     {"t_end": 0.04, "save_times": [0.0, 0.02, 0.04],
                      "temperature": [[0.0, 1e-3], [0.02, 0.0]]}, False),
}


def shrunk_config(name):
    cfg = tomllib.loads((ROOT / "examples" / f"{name}.toml").read_text())
    parts, dyn, _ = SHRINK[name]
    cfg["particles"] = dict(parts)
    cfg["dynamics"].update(dyn)
    if name != "circle":
        cfg["problem"]["nodes"] = 500
    for s in ("meanfield", "fluctuations"):
        cfg.pop(s, None)
    return cfg


def compute():
    """{key: array} of every shrunk run."""
    from analysis.run.experiment import resolve
    from meanfield.characteristics import solve_characteristics
    from meanfield.grid.solve import solve_grid
    from meanfield.influence import clt_covariance_influence
    from meanfield.linearised import clt_covariance_ensemble
    from particles import simulate

    out = {}
    for name, (_, _, with_mf) in SHRINK.items():
        exp = resolve(shrunk_config(name))
        p = exp.particles
        ds = simulate(exp.problem, p["n"], p["seeds"], exp.dynamics, exp.save_times,
                      root_seed=p["root_seed"], progress=False)
        for v in ("f_n", "loss", "y", "c"):
            out[f"{name}/particles/{v}"] = ds[v].values
        out[f"{name}/f_target"] = ds["f_target"].values
        if not with_mf:
            continue
        ts = [0.0, 0.5, 1.0]
        g = solve_grid(exp.problem, ts,
                       grid={"y": 64, "c": 48, "c_min": -3.0, "c_max": 3.0}, progress=False)
        out[f"{name}/grid/f_0"] = g["f_0"].values
        out[f"{name}/grid/rho_0"] = g["rho_0"].values
        ch = solve_characteristics(exp.problem, ts, grid={"y": 32, "c": 8, "dt": 0.05})
        out[f"{name}/characteristics/f_0"] = ch["f_0_characteristics"].values
        inf = clt_covariance_influence(exp.problem, ts, grid={"y": 16, "c": 6, "dt": 0.05})
        out[f"{name}/influence/clt_cov"] = inf["clt_cov"].values
        ens = clt_covariance_ensemble(exp.problem, ts, members=4,
                                      grid={"y": 64, "c": 32, "c_min": -3.0, "c_max": 3.0}, root_seed=1, progress=False)
        out[f"{name}/ensemble/clt_cov"] = ens["clt_cov"].values
    return out


def main(argv=None):
    """Write :data:`DATA`; with key arguments, rewrite only those keys (the rest kept)."""
    import sys

    keys = list(sys.argv[1:] if argv is None else argv)
    now = compute()
    if keys:
        unknown = sorted(set(keys) - set(now))
        if unknown:
            raise SystemExit(f"unknown keys {unknown}; the keys are {sorted(now)}")
        with np.load(DATA) as old:
            kept = {k: old[k] for k in old.files}
        now = {**kept, **{k: now[k] for k in keys}}
    DATA.parent.mkdir(parents=True, exist_ok=True)
    tmp = DATA.with_name(DATA.stem + ".tmp.npz")
    np.savez_compressed(tmp, **now)
    tmp.replace(DATA)
    print(f"wrote {', '.join(keys) or 'every key'} to {DATA}")


if __name__ == "__main__":
    main()
