r"""``mfpc advise CONFIG``: the step and batch guidelines of the paper for a config's problem.

Computed before a long run, per n of ``[particles] n``:

* ``dt_max(n)``: the largest stable step of the chosen integrator on
  :math:`E = n\ell` at the initial draws, :math:`c_{int}/\lambda_{max}` with
  :math:`c_{int} = 2` (Euler) or :math:`\approx 2.785` (RK4: the root of
  :math:`|R(-x)| = 1`, :data:`RK4_BOUND`). :math:`\lambda_{max}` is the largest
  eigenvalue of the Hessian of E in :math:`z = (c_i, y_i)` (GD is :math:`\dot z =
  -\nabla E`), found by Lanczos (``scipy.sparse.linalg.eigsh``, ``which='LA'``: the
  Hessian is indefinite, so power iteration would find the wrong end) on
  Hessian-vector products, central differences of the gradient. It depends on the draw
  through :math:`\max_i|c_i|` (the curvature term :math:`\langle r, c_i\nabla^2_y
  \varphi_i\rangle`), so it is the minimum over the config's first few members, with
  the spread in ``dt_max_spread``. Always given: it needs no mean field.
* With a mean field (the influence method: :mod:`meanfield.sgdnoise` at T,
  :mod:`meanfield.influence` on ``times`` points up to T):
  :math:`n\,\mathrm{Var}(f_n - f_0)(T) \approx \Sigma_T + n\theta\,\Sigma^{SGD}_T`
  (THEORY §4b), :math:`\theta = \Delta t/P`.
  ``batch_equal(n)`` :math:`= P_{eq} = n\,\Delta t\,\mathrm{tr}_\mu\Sigma^{SGD}_T/
  \mathrm{tr}_\mu\Sigma_T`, the batch at which the two terms are equal;
  ``batch_ratio(n)`` :math:`= P_{eq}/r` for the ratio ``--sgd-ratio r``;
  ``sgd_term_ratio(n)`` :math:`= n\theta\,\mathrm{tr}\Sigma^{SGD}_T/\mathrm{tr}\Sigma_T
  = P_{eq}/P` for the config's own :math:`(\Delta t, P)` (0 for GD); ``predicted_var(n)``
  :math:`= \mathrm{tr}_\mu\Sigma_T (1 + P_{eq}/P)`. :math:`P\propto n` (α = ½) keeps
  the ratio fixed.
* ``healing_t_min(n)``: the shortest T for which the self-healing check
  (:mod:`analysis.checks.healing`) has power: the first time at or after the peak of
  :math:`\mathrm{tr}\Sigma_t` where the predicted signal of the excess loss is ``z``
  standard errors (:func:`analysis.checks.healing.excess_power`, with the config's
  seeds), plus the time for :math:`\mathrm{tr}\Sigma_t` to halve from there, where
  the power still holds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.sparse.linalg import LinearOperator, eigsh

from particles.engine.results import finish
from particles.simulate import member_rng

__all__ = ["advise", "hessian_lambda_max", "stable_dt", "RK4_BOUND", "EULER_BOUND",
           "batch_advice", "format_table", "advise_config"]

EULER_BOUND = 2.0


def _rk4_bound() -> float:
    """The root x > 0 of |1 - x + x²/2 - x³/6 + x⁴/24| = 1 (bisection on [2.5, 3])."""
    g = lambda x: abs(1 - x + x**2 / 2 - x**3 / 6 + x**4 / 24) - 1  # noqa: E731
    lo, hi = 2.5, 3.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if g(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


#: RK4's stability interval on the negative real axis, 2.7852935...
RK4_BOUND = _rk4_bound()
#: members (seeds) whose initial draws set dt_max
ADVISE_SEEDS = 4
#: signal-to-standard-error ratio the self-healing check needs
POWER_Z = 3.0
def stable_dt(lam_max: float, integrator: str) -> float:
    """The largest stable step on :math:`\\dot z = -Hz` with top eigenvalue ``lam_max``."""
    bound = {"euler": EULER_BOUND, "rk4": RK4_BOUND}[integrator]
    return bound / lam_max if lam_max > 0 else float("inf")


def hessian_lambda_max(grad, z, *, rng, tol=1e-8):
    r"""Largest (algebraic) eigenvalue of the Hessian of E at ``z``, by Lanczos.

    Hessian-vector products are central differences of ``grad`` (:math:`\nabla E`):
    :math:`Hv \approx (\nabla E(z + hv) - \nabla E(z - hv))/(2h)` with
    :math:`h = \epsilon^{1/3}\max(1, \|z\|_\infty)/\|v\|_\infty`: error
    :math:`O(h^2\|\nabla^3E\|) + O(\epsilon\|\nabla E\|/h)`, about 1e-10 relative.

    Parameters
    ----------
    grad : callable, z (m,) -> (m,)
    z : ndarray, shape (m,)
    rng : numpy.random.Generator
        The Lanczos starting vector.
    """
    z = np.asarray(z, float).ravel()
    m = z.size
    scale = max(1.0, float(np.max(np.abs(z))))

    def hv(v):
        v = np.asarray(v, float).ravel()
        nv = float(np.max(np.abs(v)))
        if nv == 0:
            return np.zeros(m)
        h = np.cbrt(np.finfo(float).eps) * scale / nv
        return (grad(z + h * v) - grad(z - h * v)) / (2 * h)

    op = LinearOperator((m, m), matvec=hv, dtype=float)
    if m <= 2:
        H = np.column_stack([hv(e) for e in np.eye(m)])
        return float(np.max(np.linalg.eigvalsh(0.5 * (H + H.T))))
    lam = eigsh(op, k=1, which="LA", v0=rng.normal(size=m), tol=tol,
                return_eigenvectors=False, maxiter=max(1000, 20 * m))
    return float(lam[0])


def _energy_grad(problem, n):
    """∇E(z) for E = nℓ, z = (c (n,), y (n, N)) flattened: minus the GD velocity."""
    N = problem.N

    def grad(z):
        c = z[:n]
        y = z[n:].reshape(n, N)
        vy, vc = problem.velocity(y[None], c[None], 1.0 / n)
        return -np.concatenate([vc[0], vy[0].ravel()])

    return grad


def dt_max_table(problem, ns, integrator, *, root_seed=0, seeds=ADVISE_SEEDS):
    """λ_max and dt_max per n over the first ``seeds`` members of the config's run
    (the same initial draws as ``mfpc run``: :func:`particles.simulate.member_rng`).

    Returns (lam (len(ns), seeds), dt_max (len(ns),): the smallest over the seeds)."""
    lam = np.full((len(ns), seeds), np.nan)
    for i, n in enumerate(ns):
        for s in range(seeds):
            rng = member_rng(root_seed, i, s)
            y, c = problem.sample_init(rng, int(n))
            z = np.concatenate([c, np.asarray(y, float).reshape(int(n), -1).ravel()])
            lam[i, s] = hessian_lambda_max(_energy_grad(problem, int(n)), z,
                                           rng=np.random.default_rng(
                                               np.random.SeedSequence(root_seed,
                                                                      spawn_key=(i, s, 7))))
    dt = np.array([stable_dt(float(np.max(row)), integrator) for row in lam])
    return lam, dt


def batch_advice(ns, dt, tr_sigma, tr_sgd, ratio, batch=None):
    r"""The batch advice per n from :math:`\mathrm{tr}_\mu\Sigma_T` and
    :math:`\mathrm{tr}_\mu\Sigma^{SGD}_T` (per unit θ, constant θ).

    ``batch``: the config's P per n (None for GD). Returns a dict of arrays:
    ``batch_equal``, ``batch_ratio``, ``sgd_term_ratio``, ``predicted_var``.
    """
    ns = np.asarray(ns, float)
    P_eq = ns * dt * tr_sgd / tr_sigma
    P = np.full_like(ns, np.inf) if batch is None else np.asarray(batch, float)
    term = P_eq / P
    return {"batch_equal": P_eq, "batch_ratio": P_eq / ratio, "sgd_term_ratio": term,
            "predicted_var": tr_sigma * (1.0 + term)}


def healing_t_min(ts, trace, r0, ns, seeds, z=POWER_Z):
    """Shortest T (among ``ts``) giving the self-healing check power, per n (module doc)."""
    from analysis.checks.healing import excess_power

    ts, trace, r0 = (np.asarray(a, float) for a in (ts, trace, r0))
    peak = int(np.nanargmax(trace))
    out = np.full(len(ns), np.nan)
    for i, n in enumerate(ns):
        pw = excess_power(r0, trace, float(n), seeds)
        start = [k for k in range(peak, len(ts)) if pw[k] >= z]
        if not start:
            continue
        a = start[0]
        done = [k for k in range(a + 1, len(ts))
                if pw[k] >= z and trace[k] <= 0.5 * trace[a]]
        if done:
            out[i] = ts[done[0]]
    return out


def advise(exp, *, ratio=0.1, times=6, progress=False):
    """The advice for a resolved :class:`~analysis.run.experiment.Experiment`.

    Returns (xarray.Dataset, notes list)."""
    cfg = exp.config
    problem, dyn = exp.problem, exp.dynamics
    parts = exp.particles or {}
    ns = np.asarray(parts.get("n", [64, 256, 1024]), int)
    seeds = int(parts.get("seeds", 32))
    root = int(parts.get("root_seed", 0))
    notes = []
    lam, dt_max = dt_max_table(problem, ns, dyn.integrator, root_seed=root,
                               seeds=min(ADVISE_SEEDS, max(1, seeds)))
    ds = xr.Dataset({"dt_max": ("n", dt_max),
                     "lambda_max": (("n", "advise_seed"), lam),
                     "dt_max_spread": ("n", np.array([
                         stable_dt(float(np.min(r)), dyn.integrator) - d
                         for r, d in zip(lam, dt_max)]))},
                    coords={"n": ns, "advise_seed": np.arange(lam.shape[1])})
    ds["dt_max"].attrs.update(
        long_name=f"largest stable {dyn.integrator} step on E = n l at the initial draws: "
                  f"{'2' if dyn.integrator == 'euler' else f'{RK4_BOUND:.4f}'}/lambda_max, "
                  "the smallest over the members",
        integrator=dyn.integrator, config_dt=float(dyn.dt))
    if float(dyn.dt) >= float(np.min(dt_max)):
        notes.append(f"dynamics.dt = {dyn.dt:g} is at or above dt_max = "
                     f"{float(np.min(dt_max)):.3g} at n = {int(ns[np.argmin(dt_max)])}: the run "
                     "may diverge; lower dynamics.dt")
    missing = problem.missing("hessian_y") if hasattr(problem, "missing") else None
    if missing:
        notes.append(f"batch advice, predicted variance and healing time n.a.: they need "
                     f"Σ_T and Σ^SGD_T from the influence method, which needs {missing}")
        return ds, notes
    from meanfield.defaults import INFLUENCE
    from meanfield.influence import clt_covariance_influence
    from meanfield.sgdnoise import sgd_covariance_influence

    fl = cfg.get("fluctuations") or {}
    res = dict(grid={"y": fl.get("y", INFLUENCE["y"]), "c": fl.get("c", INFLUENCE["c"]),
                     "dt": fl.get("dt", float(dyn.dt))}, progress=progress)
    t_end = float(exp.save_times[-1])
    w = problem.w
    # Sigma^SGD at T alone (its cost grows with the observables injected), Sigma_t and
    # f_0 on a grid of times for the healing time
    sg = sgd_covariance_influence(problem, [t_end], None, **res)
    tr_T = float((sg["clt_var"].values[-1] * w).sum())
    tr_sgd_T = float((sg["sgd_var"].values[-1] * w).sum())
    grid = np.unique(np.concatenate([np.linspace(0.0, t_end, times), exp.save_times]))
    cl = clt_covariance_influence(problem, grid, **res)
    tr = (cl["clt_var"].values * w).sum(axis=1)
    r0 = np.sqrt(((cl["f_0_influence"].values - problem.f_x) ** 2 * w).sum(axis=1))
    batch = None
    if dyn.scheme == "sgd":
        batch = [dyn.batch_at(0.0, int(n)) for n in ns]
        if isinstance(dyn.batch, list):
            notes.append("dynamics.batch changes in time: sgd_term_ratio and predicted_var "
                         "use P(0)")
    adv = batch_advice(ns, float(dyn.dt), tr_T, tr_sgd_T, ratio, batch)
    for k, v in adv.items():
        ds[k] = ("n", v)
    ds["healing_t_min"] = ("n", healing_t_min(grid, tr, r0, ns, seeds))
    ds["trace_sigma"] = ("t", tr)
    ds["r0_norm"] = ("t", r0)
    ds["trace_sigma_sgd_T"] = tr_sgd_T
    ds = ds.assign_coords(t=grid)
    ds["batch_ratio"].attrs["sgd_ratio"] = ratio
    ds["sgd_term_ratio"].attrs["long_name"] = (
        "n theta tr Sigma^SGD_T / tr Sigma_T for the config's (dt, P) (0 for GD)")
    ds["predicted_var"].attrs["long_name"] = "tr_mu of the predicted n Var(f_n - f_0) at T"
    ds["healing_t_min"].attrs["long_name"] = (
        f"shortest T at which the self-healing check has power ({POWER_Z:g} s.e., "
        f"{seeds} seeds) and tr Sigma has halved while it does")
    if dyn.scheme == "sgd" and not (isinstance(dyn.batch, dict)
                                    and float(dyn.batch.get("alpha", 0)) == 0.5):
        notes.append("P ∝ n (batch = {P0, alpha = 0.5}, the paper's crossover) keeps "
                     "sgd_term_ratio fixed in n; this config's batch does not scale so")
    return ds, notes


def format_table(ds, notes) -> str:
    """The printed table."""
    cols = [("n", "n", "d"), ("dt_max", "dt_max", ".3g"), ("batch_equal", "P_eq", ".3g"),
            ("batch_ratio", f"P(r={ds['batch_ratio'].attrs.get('sgd_ratio', '')})"
             if "batch_ratio" in ds else "P(r)", ".3g"),
            ("sgd_term_ratio", "SGD/CLT", ".3g"), ("predicted_var", "tr nVar_T", ".3g"),
            ("healing_t_min", "T for healing", ".3g")]
    cols = [c for c in cols if c[0] in ds or c[0] == "n"]
    head = " | ".join(c[1] for c in cols)
    lines = [head, "-" * len(head)]
    for i in range(ds.sizes["n"]):
        vals = []
        for v, _, f in cols:
            x = ds[v].values[i]
            vals.append(format(int(x), f) if f == "d" else
                        ("nan" if not np.isfinite(x) else format(float(x), f)))
        lines.append(" | ".join(vals))
    lines.append(f"dt_max: {ds['dt_max'].attrs.get('long_name', '')}; dynamics.dt = "
                 f"{ds['dt_max'].attrs.get('config_dt')}")
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def advise_config(config_path, *, out=None, ratio=0.1, force=True, command=None):
    """``mfpc advise CONFIG [--out DIR] [--sgd-ratio r]``: prints and returns the table;
    ``DIR/advice.nc`` written atomically (:func:`analysis.store.io.write_dataset`)."""
    from analysis.run.experiment import ConfigError, load_config, resolve
    from analysis.store.io import write_dataset

    if not (ratio > 0 and np.isfinite(ratio)):
        raise ConfigError(f"--sgd-ratio {ratio}: must be a positive number")
    config_path = Path(config_path)
    exp = resolve(load_config(config_path), base=config_path.parent)
    ds, notes = advise(exp, ratio=ratio)
    ds.attrs.update({"config": exp.config_json(), "notes": json.dumps(notes)})
    finish(ds, title="mfpc advise: step and batch guidelines",
           command=command)
    text = format_table(ds, notes)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_dataset(ds, Path(out) / "advice.nc", overwrite=force)
    return ds, text
