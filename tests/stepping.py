"""Helpers of the stepper tests: a snapshot round trip and stepping as the driver does."""
import json

import numpy as np


def roundtrip(snap, tmp_path, name="snap"):
    """The snapshot through np.savez (arrays, numbers) and JSON (generator states)."""
    arrays = {k: v for k, v in snap.items() if k != "rng"}
    np.savez(tmp_path / f"{name}.npz", **arrays)
    (tmp_path / f"{name}.json").write_text(json.dumps(snap.get("rng")))
    with np.load(tmp_path / f"{name}.npz") as f:
        out = {k: f[k] for k in f.files}
    out["rng"] = json.loads((tmp_path / f"{name}.json").read_text())
    return out


def advance(stepper, state, t0, t1, steps=None):
    """Step as the driver does inside one save interval, at most ``steps`` steps."""
    k = 0
    while steps is None or k < steps:
        h = stepper.propose(state, t0, t1)
        if not h > 0:
            break
        new = stepper.step(state, h)
        landed = t1 - new.t <= 0.5 * (new.t - state.t)
        state, k = new, k + 1
        if landed:
            return state._replace(t=t1)
    return state
