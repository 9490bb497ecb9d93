r"""Checks and report rows of runs without a mean field (the paper's Section 4).

:func:`highdim_checks` adds to ``analysis.nc``: the LLN from the ensembles alone and the
scaling of the loss (4.8) and the signed errors (4.11) (:mod:`analysis.checks.scaling`), the
nonzero spectrum of :math:`M[\rho_n]` through the Gram matrix of the features
(:func:`meanfield.mkernel.gram_spectrum`: any number of x nodes), and the loss across the
quench of an SGD batch schedule. :func:`highdim_rows` turns them into rows of
``report.md``; tolerances and alternatives in ``docs/propositions.md``.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.checks.estimators import bootstrap_stat, finite_rows
from meanfield.mkernel import gram_spectrum, psd_tolerance
from analysis.checks.power import INCONCLUSIVE, judge, slope_alternatives
from analysis.checks.rows import NotApplicable, Row, fmt, verdict, with_note
from analysis.checks.scaling import ensemble_lln, final_scaling

__all__ = ["highdim_checks", "highdim_rows", "quench_time", "final_alpha", "GRAM_MAX"]

#: largest Gram matrix side n (N + 1) whose spectrum is computed (eigvalsh of 4096² takes
#: ~10 s on 2 cores; cost ∝ side³)
GRAM_MAX = 4096


def quench_time(batch):
    """The last time a batch schedule changes its rule (None when it never does)."""
    if not isinstance(batch, list) or len(batch) < 2:
        return None
    changes = [t for (t, v), (_, prev) in zip(batch[1:], batch[:-1]) if v != prev]
    return float(changes[-1]) if changes else None


def final_alpha(batch):
    """α of the batch rule in force at the end of the run (``P ∝ n^{2α}``): of a scaling
    table, or of the last entry of a schedule (after the paper's quench, α = 1); None for
    a fixed P."""
    if isinstance(batch, list) and batch:
        batch = batch[-1][1]
    return float(batch["alpha"]) if isinstance(batch, dict) else None


def _gram(problem, particles, notes):
    """``m_gram_*`` of every n whose Gram side is at most GRAM_MAX (seed 0, last t)."""
    if "y" not in particles or "c" not in particles:
        notes.append("particles.nc has no units (save_state = false): Gram spectrum n.a.")
        return None
    ns = particles["n"].values
    N = particles.sizes.get("y_dim", 1)
    keep = [i for i, n in enumerate(ns) if n * (N + 1) <= GRAM_MAX]
    if len(keep) < len(ns):
        notes.append(f"Gram spectrum of M[rho_n]: n (N + 1) > {GRAM_MAX} for n = "
                     f"{', '.join(str(int(ns[i])) for i in range(len(ns)) if i not in keep)}"
                     " (not computed: cost grows as the cube)")
    ratio = np.full(len(ns), np.nan)
    rank = np.full(len(ns), -1)
    side = np.zeros(len(ns), int)
    for i in keep:
        n = int(ns[i])
        y = particles["y"].isel(n=i, seed=0, t=-1).values[:n]
        c = particles["c"].isel(n=i, seed=0, t=-1).values[:n]
        if not (np.all(np.isfinite(y)) and np.all(np.isfinite(c))):
            continue
        ev = gram_spectrum(problem.kernel, problem.x, problem.w, y, c, np.full(n, 1.0 / n))
        side[i] = len(ev)
        top = float(ev[0])
        ratio[i] = float(ev[-1] / top) if top > 0 else np.nan
        rank[i] = int(np.sum(ev > psd_tolerance(len(ev)) * top))
    return xr.Dataset({"m_gram_min_ratio": ("n", ratio), "m_gram_rank": ("n", rank),
                       "m_gram_size": ("n", side),
                       "m_gram_tolerance": psd_tolerance(int(max(side.max(), 1)))},
                      coords={"n": ns})


def _quench(particles, tq, n_boot, level, rng):
    """Mean loss at the last save time over that at the last save time ≤ the quench,
    at the largest n, with a bootstrap interval over seeds."""
    ts = particles["t"].values
    before = np.nonzero(ts <= tq + 1e-12)[0]
    if not len(before) or before[-1] == len(ts) - 1:
        return None
    i = int(np.argmax(particles["n"].values))
    L = particles["loss"].isel(n=i)
    if "realisation" in L.dims:
        L = L.mean("realisation")
    L = L.transpose("seed", "t").values
    pair = finite_rows(L[:, [before[-1], -1]])
    if len(pair) < 2:
        return None
    ratio = float(pair[:, 1].mean() / pair[:, 0].mean())
    boot = bootstrap_stat([pair], lambda g: g[..., 1].mean(axis=1) / g[..., 0].mean(axis=1),
                          n_boot, rng)[:, 0]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return xr.Dataset({"quench_loss_ratio": ratio, "quench_loss_ratio_low": float(lo),
                       "quench_loss_ratio_high": float(hi), "quench_time": float(ts[before[-1]]),
                       "quench_n": int(particles["n"].values[i])})


def highdim_checks(particles, problem, cfg, *, n_boot=1000, level=0.95, rng, notes):
    """The statistics of the module doc as one Dataset (dimension ``fit`` for the slopes
    per realisation and for their mean)."""
    parts = [ensemble_lln(particles, n_boot=n_boot, level=level, rng=rng),
             final_scaling(particles, n_boot=n_boot, level=0.95, rng=rng)]
    first = (particles.isel(realisation=0, drop=True) if "realisation" in particles.dims
             else particles)  # the units of realisation 0 (``problem`` is its problem)
    g = _gram(problem, first, notes)
    if g is not None:
        parts.append(g)
    tq = quench_time(cfg.get("dynamics", {}).get("batch"))
    if tq is not None:
        q = _quench(particles, tq, n_boot, 0.95, rng)
        if q is None:
            notes.append(f"loss after the quench: no save time after t = {tq:g}")
        else:
            parts.append(q)
    return xr.merge(parts, combine_attrs="drop_conflicts")


def _ensemble_lln_rows(a, ctx):
    """The LLN from the ensembles alone: n V_n per t and the distance to the largest-n
    mean at the last t."""
    out = []
    for j, t in enumerate(a["t"].values):
        s, lo, hi = (float(a[f"ens_var_slope{k}"].values[j]) for k in ("", "_low", "_high"))
        out.append(ensemble_lln_row(f"LLN without f_0: n·E‖f_n − E f_n‖²_μ vs n, t = {t:g}",
                                    "Prop. 2.1, 2.2 (2.32); THEORY §5", s, lo, hi, ctx,
                                    ctx.k_t, f" ({ctx.pct} bootstrap)"))
    s, lo, hi = (float(a[f"dist_largest_slope{k}"].values[-1]) for k in ("", "_low", "_high"))
    ok = None if not np.isfinite(lo) else bool(lo <= -1.0)
    v, note = judge(lo, hi, ok, (-0.5,), center=-1.0, seeds=ctx.seeds, min_seeds=ctx.k_t)
    out.append(Row(f"E‖f_n − f̄‖²_μ vs n, t = {float(a['t'].values[-1]):g} "
                   "(f̄: largest-n ensemble mean, a proxy of f_0)",
                   "Prop. 2.2 (2.41)", f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}] ({ctx.pct})",
                   with_note("≤ −1", note), v))
    return out


SCALINGS = (("loss", "final loss (4.8)", "Figs. 1, 3; (3.36)"),
            ("signed_pos", "signed error (4.11), Θ(f)", "Fig. 3; (3.34)"),
            ("signed_neg", "signed error (4.11), Θ(−f)", "Fig. 3; (3.34)"))


def _scaling_row(a, ctx, name, label, ref, alpha):
    """The slope in n of the final loss or a signed error, mean over the realisations.

    GD (and Langevin cooled to GD): self-healing, faster than 1/n (Fig. 1); SGD with
    P ∝ n^{2α}: the noise term n θ Σ^SGD / n ∝ n^{-2α} beside the n^{-1} part (Fig. 3).
    """
    if ctx.scheme == "sgd" and alpha is None:
        return NotApplicable(f"{label} vs n", "the SGD prediction needs a batch rule "
                             "P ∝ n^{2α} at the end of the run (dynamics.batch = "
                             "{P0, alpha}, or a schedule ending in one)")
    e = -min(1.0, 2.0 * alpha) if ctx.scheme == "sgd" else -1.0
    vals = {k: a[f"{name}_slope{k}"] for k in ("", "_low", "_high")}
    s, lo, hi = (float(vals[k].sel(fit="mean")) for k in ("", "_low", "_high"))
    per = vals[""].values[1:]
    spread = (f"; per realisation {fmt(np.nanmin(per))} … {fmt(np.nanmax(per))}"
              if len(per) > 1 else "")
    if ctx.scheme != "sgd":  # GD: the loss self-heals (Fig. 1); the bias E f_n − f_0 is O(1/n)
        ok = None if not np.isfinite(lo) else bool(lo <= e)
        alts, exp = (-0.5,), ("≤ −1 (faster than n^−1)" if name == "loss" else
                              "≤ −1 (bias O(1/n); f_0(T) − f not known here)")
    else:
        ok = None if not np.isfinite(lo) else bool(lo <= e <= hi)
        alts, exp = slope_alternatives(e), f"{fmt(e)}"
    v, note = judge(lo, hi, ok, alts, center=e, seeds=ctx.seeds, min_seeds=ctx.k_95)
    return Row(f"{label} vs n, t = {float(a['final_time']):g}, mean over "
               f"{a.sizes['fit'] - 1} realisation(s)", ref,
               f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}] (95 %){spread}", with_note(exp, note), v)


def _gram_row(a):
    r = a["m_gram_min_ratio"].values
    tol = float(a["m_gram_tolerance"])
    done = np.isfinite(r)
    m = float(np.min(r[done])) if done.any() else np.nan
    ranks = ", ".join(f"n = {int(n)}: {int(k)}/{int(s)}" for n, k, s, ok in zip(
        a["n"].values, a["m_gram_rank"].values, a["m_gram_size"].values, done) if ok)
    return Row("M[ρ_n] ⪰ 0 on L²(μ), Gram matrix of the features (any Q), last t",
               "(2.38), (2.39)", f"min λ_min/λ_max {fmt(m)}; rank {ranks}",
               f"≥ −{fmt(tol, 2)} (round-off)",
               verdict(None if not np.isfinite(m) else bool(m >= -tol)))


def _quench_row(a):
    r, lo, hi = (float(a[f"quench_loss_ratio{k}"]) for k in ("", "_low", "_high"))
    if not np.isfinite(lo + hi):
        v, note = "n.a.", ""
    elif hi < 1.0 or lo > 1.0:
        v, note = verdict(hi < 1.0), ""
    else:
        v, note = INCONCLUSIVE, "the interval holds 1: run longer after the quench"
    return Row(f"loss after the quench (t ≥ {float(a['quench_time']):g}), "
               f"n = {int(a['quench_n'])}", "Sec. 4.2, Fig. 2; Prop. 3.3",
               f"ratio to the loss at the quench {fmt(r)} [{fmt(lo)}, {fmt(hi)}] (95 %)",
               with_note("< 1 (the larger batch quenches the SGD noise)", note), v)


def ensemble_lln_row(name, reference, s, lo, hi, ctx, min_seeds, level=""):
    """The row of an LLN slope from an ensemble alone (slope of n·E‖f_n − E f_n‖²_μ in n)."""
    # the LLN at the CLT rate: n V_n bounded, slope <= 0; alternative: a variance decaying
    # only as n^{-1/2} (slope +1/2)
    ok = None if not np.isfinite(lo) else bool(lo <= 0.0)
    v, note = judge(lo, hi, ok, (0.5,), center=0.0, seeds=ctx.seeds, min_seeds=min_seeds)
    return Row(name, reference, f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}]{level}",
               with_note("≤ 0 (0: the CLT scale; below: self-healed)", note), v)


def highdim_rows(a, ctx):
    """The rows of the statistics of :func:`highdim_checks` present in ``a``."""
    out = _ensemble_lln_rows(a, ctx) if "ens_var_slope" in a else []
    if "loss_slope" in a:
        alpha = final_alpha(ctx.config["dynamics"].get("batch"))
        out += [_scaling_row(a, ctx, *names, alpha) for names in SCALINGS
                if f"{names[0]}_slope" in a]
    if "m_gram_min_ratio" in a:
        out.append(_gram_row(a))
    if "quench_loss_ratio" in a:
        out.append(_quench_row(a))
    return out
