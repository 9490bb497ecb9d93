r"""The baselines beside trained units: Monte-Carlo units, random features, the lazy regime.

Statistics (:func:`baseline_checks`, merged into ``analysis.nc``):

* the lazy prediction :math:`f_{lazy}(t) = f + e^{-tM[\rho_{in}]}(f(0) - f)` over the
  trained coordinates (:mod:`meanfield.lazy`) beside the reference :math:`f_0(t)`:
  ``f_lazy(t, x)``, ``lazy_gap(t)`` (relative to :math:`\|f(0) - f\|_\mu`), ``lazy_loss(t)``
  and the reference's loss ``lazy_reference_loss(t)``;
  for ``train = ["c"]`` with the characteristics as reference, M of the characteristics'
  own nodes and ``lazy_gap_bound(t)``, RK4's time error (:func:`meanfield.lazy.rk4_gap_bound`);
* per ensemble (``trained``, ``monte_carlo``, ``random_features``) the excess loss at the
  last save time over its limit and its slope in n, with a bootstrap interval over seeds:
  trained units over :math:`\ell(f_0(T))`, random features over their mean field
  :math:`\ell(f_{lazy,c}(T))` (exact for y frozen), Monte-Carlo units over their bias
  (0 for the exact G), with the exact :math:`(1/2n)\mathrm{Var}` beside them.

Rows (:func:`baseline_rows`; ``docs/propositions.md``): a verdict where the paper predicts
(trained units' excess loss decays faster than Monte-Carlo's :math:`n^{-1}`; Monte-Carlo
units at the rate :math:`n^{-1}`; the lazy gap of random features within its bound); the
random-features comparison and the trained units' lazy gap are measurements, shown
without a verdict.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from analysis.checks.highdim import ensemble_lln_row
from analysis.checks.estimators import (align_to, bootstrap_slope, bootstrap_stat,
                                        finite_rows, reference_f0, reference_loss0)
from analysis.checks.power import SLOPE_OFFSET, judge, slope_alternatives
from analysis.checks.rows import NotApplicable, Row, fmt, verdict, with_note

__all__ = ["baseline_checks", "baseline_rows", "ensemble_view", "ENSEMBLES", "LAZY_MAX_Q"]

#: The ensembles compared, in the order of the ``ensemble`` coordinate.
ENSEMBLES = ("trained", "monte_carlo", "random_features")
#: how the rows name each ensemble
LABELS = {"trained": "trained units", "monte_carlo": "Monte-Carlo units",
          "random_features": "random features"}
#: Largest number of nodes of the Q x Q lazy kernel.
LAZY_MAX_Q = 4096


def _lazy(problem, particles, meanfield, train):
    """The lazy variables, or (None, reason)."""
    from meanfield import lazy

    if meanfield is None:
        return None, ("the run has no [meanfield]: f_lazy is compared with f_0(t), which "
                      "needs one")
    Q = problem.x.shape[0]
    if Q > LAZY_MAX_Q:
        return None, (f"Q = {Q} nodes: the Q x Q kernel M[rho_in] is over {LAZY_MAX_Q}")
    f0, name = reference_f0(meanfield)
    f0 = align_to(f0, particles).transpose("t", "x").values
    ts = particles["t"].values
    kw = {}
    bound = None
    if name == "characteristics" and "characteristics_nodes" in meanfield.attrs:
        nodes = json.loads(meanfield.attrs["characteristics_nodes"])
        kw = {"grid": {"y": int(nodes["y"]), "c": int(nodes["c"])}}
    op, f_start = lazy.lazy_operator(problem, train=train, **kw)
    fl = lazy.f_lazy(op, ts, f_start, problem.f_x)
    data = {"f_lazy": (("t", "x"), fl),
            "lazy_gap": (("t",), lazy.lazy_gap(f0, fl, f_start, problem.f_x, problem.w)),
            "lazy_loss": (("t",), lazy.lazy_loss(fl, problem.f_x, problem.w))}
    if "y" not in train and kw:
        dt = float(meanfield.attrs.get("characteristics_dt", np.nan))
        bound = lazy.rk4_gap_bound(op, ts, dt)
        data["lazy_gap_bound"] = (("t",), bound)
    l0 = reference_loss0(meanfield)
    if l0 is not None:
        data["lazy_reference_loss"] = (("t",), align_to(l0, particles).values)
    ds = xr.Dataset(data, coords={"t": ts})
    ds.attrs.update({"lazy_train": ",".join(train), "lazy_reference": name})
    return ds, ""


def _floors(problem, particles, meanfield, train):
    """The limit each ensemble's loss tends to at the last save time."""
    from meanfield import lazy
    from particles.baselines import monte_carlo_variance

    floors = {"trained": np.nan, "monte_carlo": np.nan, "random_features": np.nan}
    l0 = None if meanfield is None else reference_loss0(meanfield)
    if l0 is not None:
        floors["trained"] = float(align_to(l0, particles).values[-1])
    T = float(particles["t"].values[-1])
    if "loss_random_features" in particles and problem.x.shape[0] <= LAZY_MAX_Q:
        op, f_start = lazy.lazy_operator(problem, train=("c",))
        floors["random_features"] = float(
            lazy.lazy_loss(lazy.f_lazy(op, [T], f_start, problem.f_x), problem.f_x,
                           problem.w)[0])
    var = np.nan
    if "loss_monte_carlo" in particles:
        var, bias = monte_carlo_variance(problem)
        floors["monte_carlo"] = 0.5 * bias
    return floors, var


def baseline_checks(problem, particles, meanfield=None, *, train=("y", "c"), n_boot=1000,
                    level=0.95, rng) -> xr.Dataset:
    r"""The baseline statistics of a run (module doc).

    Parameters
    ----------
    problem : particles.problem.Problem
    particles : xarray.Dataset
        ``particles.nc`` (``loss``, and ``loss_monte_carlo``, ``loss_random_features``
        where ``[particles] baselines`` ran them).
    meanfield : xarray.Dataset, optional
    train : tuple of str
        ``dynamics.train`` of the run.
    n_boot, level, rng
        Bootstrap over seeds.

    Returns
    -------
    xarray.Dataset
        ``lazy_*`` (module doc; absent with ``attrs["lazy_reason"]`` when they cannot be
        computed), ``baseline_excess_loss(ensemble, n)``, ``baseline_excess_slope``,
        ``_low``, ``_high`` (ensemble), ``baseline_floor(ensemble)``,
        ``monte_carlo_expected_loss(n)``.
    """
    train = tuple(train)
    ds, reason = _lazy(problem, particles, meanfield, train)
    out = ds if ds is not None else xr.Dataset(attrs={"lazy_reason": reason})
    ns = particles["n"].values
    floors, var = _floors(problem, particles, meanfield, train)
    names = {"trained": "loss", "monte_carlo": "loss_monte_carlo",
             "random_features": "loss_random_features"}
    E = len(ENSEMBLES)
    excess = np.full((E, len(ns)), np.nan)
    slope = np.full((E, 4), np.nan)
    boots = {}
    for e, ens in enumerate(ENSEMBLES):
        v = names[ens]
        if v not in particles or not np.isfinite(floors[ens]):
            continue
        L = particles[v]
        L = (L.isel(t=-1) if "t" in L.dims else L).transpose("n", "seed").values
        floor = floors[ens]
        with np.errstate(invalid="ignore"):
            excess[e] = np.nanmean(L, axis=1) - floor
        groups = [finite_rows(r) for r in L]
        boot = bootstrap_stat(groups, lambda r, f=floor: r.mean(axis=1) - f, n_boot, rng)
        boots[ens] = boot
        slope[e] = bootstrap_slope(ns, excess[e], boot, level)
    out["baseline_excess_loss"] = (("ensemble", "n"), excess)
    out["baseline_excess_slope"] = (("ensemble",), slope[:, 0])
    out["baseline_excess_slope_low"] = (("ensemble",), slope[:, 2])
    out["baseline_excess_slope_high"] = (("ensemble",), slope[:, 3])
    out["baseline_floor"] = (("ensemble",), np.array([floors[e] for e in ENSEMBLES]))
    out["monte_carlo_expected_loss"] = (("n",), 0.5 * var / ns.astype(float)
                                        + (floors["monte_carlo"] if np.isfinite(var)
                                           else np.nan))
    if "trained" in boots and "monte_carlo" in boots:
        # n·excess of trained units over that of Monte-Carlo units, per n: the paper's
        # comparison at the run's T (seeds resampled independently per ensemble)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = excess[0] / excess[1]
            rb = boots["trained"] / boots["monte_carlo"]
        q = [(1 - level) / 2, (1 + level) / 2]
        lo, hi = (np.nanquantile(rb, q, axis=0) if np.isfinite(rb).any()
                  else np.full((2, len(ns)), np.nan))
        out["baseline_excess_ratio"] = (("n",), ratio)
        out["baseline_excess_ratio_low"] = (("n",), lo)
        out["baseline_excess_ratio_high"] = (("n",), hi)
    if any(f"f_n_{e}" in particles for e in ENSEMBLES[1:]):
        for k, v in _ensemble_lln(particles, n_boot, level, rng).items():
            out[k] = (("ensemble",), v)
    out = out.assign_coords(ensemble=list(ENSEMBLES), n=ns)
    out.attrs["baseline_train"] = ",".join(train)
    return out


def _ensemble_lln(particles, n_boot, level, rng):
    """Per ensemble, the LLN from the ensemble alone at the last save time
    (:func:`analysis.checks.scaling.ensemble_lln`: the slope of n·E‖f_n − E f_n‖²_μ in
    n): ``baseline_lln_slope`` with ``_low``/``_high``, NaN where an ensemble is absent."""
    from analysis.checks.scaling import ensemble_lln

    last = particles["t"].values[-1:]
    out = {k: np.full(len(ENSEMBLES), np.nan) for k in (
        "baseline_lln_slope", "baseline_lln_slope_low", "baseline_lln_slope_high")}
    for e, ens in enumerate(ENSEMBLES):
        if ens != "trained" and f"f_n_{ens}" not in particles:
            continue
        d = ensemble_lln(ensemble_view(particles, ens).sel(t=last), n_boot=n_boot,
                         level=level, rng=rng)
        for k in out:
            out[k][e] = float(d[k.replace("baseline_lln_slope", "ens_var_slope")].values[-1])
    return out


def ensemble_view(particles, ensemble):
    """``particles.nc`` as if ``ensemble`` were the trained one: its ``f_n`` and ``loss``
    in place of the trained units' (``y``, ``c`` dropped), for the per-ensemble rows of the
    LLN and CLT checks. Monte-Carlo units do not move: their ``f_n`` and ``loss`` are the
    same at every save time, and their limit is f, not f_0(t).

    Parameters
    ----------
    particles : xarray.Dataset
    ensemble : {"trained", "monte_carlo", "random_features"}
    """
    if ensemble == "trained":
        return particles
    f, loss = particles[f"f_n_{ensemble}"], particles[f"loss_{ensemble}"]
    if "t" not in f.dims:
        f = f.expand_dims(t=particles["t"].values).transpose("n", "seed", "t", "x")
        loss = loss.expand_dims(t=particles["t"].values).transpose("n", "seed", "t")
    drop = [v for v in particles.data_vars if v in ("y", "c") or v.startswith(("f_n_", "loss_"))]
    out = particles.drop_vars(drop).assign(f_n=f, loss=loss)
    out.attrs["ensemble"] = ensemble
    return out


def _slope(a, ens):
    i = list(a["ensemble"].values).index(ens)
    return tuple(float(a[f"baseline_excess_slope{s}"].values[i]) for s in ("", "_low", "_high"))


def baseline_rows(a, ctx) -> list:
    """Rows of the baselines (module doc; ``docs/propositions.md``)."""
    rows = []
    lazy_pred = "lazy regime: f_0(t) beside f + exp(-t M[rho_in])(f(0) - f)"
    if "lazy_gap" not in a:
        rows.append(NotApplicable(lazy_pred, str(a.attrs.get("lazy_reason", "not computed"))))
    else:
        gap = a["lazy_gap"].values
        t = a["lazy_gap"]["t"].values
        k = int(np.nanargmax(gap))
        if "lazy_gap_bound" in a:
            b = a["lazy_gap_bound"].values
            rows.append(Row("random features (y frozen): the mean field is the lazy "
                            "prediction exactly", "M_c constant; RK4 error bound",
                            f"max lazy_gap {fmt(gap[k])}",
                            f"<= {fmt(b[k])} (RK4 time error)",
                            verdict(bool(np.all(gap <= b)))))
        elif a.attrs.get("lazy_train") == "c":
            rows.append(Row("random features (y frozen): the mean field is the lazy "
                            "prediction exactly", "M_c constant",
                            f"max lazy_gap {fmt(gap[k])} ({a.attrs.get('lazy_reference')})",
                            "the solver's discretisation error; a bound is derived for the "
                            "characteristics only: add them to meanfield.solvers", "n.a."))
        else:
            ll, tl = a["lazy_loss"].values[-1], t[-1]
            mf = (f" against {fmt(a['lazy_reference_loss'].values[-1])} for the mean field"
                  if "lazy_reference_loss" in a else "")
            rows.append(Row("lazy gap ||f_0 - f_lazy|| / ||f(0) - f|| (feature learning, "
                            "measured)", "(2.37)-(2.38) with M frozen at rho_in",
                            f"max {fmt(gap[k])} at t = {fmt(t[k])}; {fmt(gap[-1])} at "
                            f"t = {fmt(tl)}; lazy loss {fmt(ll)}{mf} at t = {fmt(tl)}",
                            "a measurement: no prediction", "n.a."))
    have = [e for e in ENSEMBLES if np.isfinite(_slope(a, e)[0])] \
        if "baseline_excess_slope" in a else []
    pred = "trained units' excess loss decays faster than Monte-Carlo's n^-1"
    if "monte_carlo" not in have:
        # without Monte-Carlo units the trained units' own rate is the self-healing row
        rows.append(NotApplicable(pred, "no Monte-Carlo ensemble: add particles.baselines "
                                        "= [\"monte_carlo\"]"))
    elif "trained" not in have:
        rows.append(NotApplicable(pred, "no excess-loss slope of the trained units (a "
                                        "mean-field loss floor and two n are needed)"))
    else:
        s, lo, hi = _slope(a, "trained")
        alt = (-1.0,)
        v, note = judge(lo, hi, bool(lo < -1.0), alt, center=-1.0 - SLOPE_OFFSET,
                        seeds=ctx.seeds, min_seeds=ctx.k_95)
        mc = " beside Monte-Carlo {} [{}, {}]".format(*map(fmt, _slope(a, "monte_carlo")))
        rows.append(Row(pred, "§1 (1.3); Prop. 2.3-2.4",
                        f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}]{mc}",
                        with_note("< -1", note), v))
    if "monte_carlo" in have:
        s, lo, hi = _slope(a, "monte_carlo")
        alts = slope_alternatives(-1.0)
        v, note = judge(lo, hi, bool(lo <= -1.0 <= hi), alts, center=-1.0, seeds=ctx.seeds,
                        min_seeds=ctx.k_95)
        rows.append(Row("Monte-Carlo units: loss (1/2n) Var_{y~rho_bar}(G phi / rho_bar)",
                        "§1 (1.3)", f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}]",
                        with_note("-1", note), v))
    if "baseline_excess_ratio" in a:
        rows.append(_ratio_row(a, ctx))
    rows += _ensemble_lln_rows(a, ctx)
    if "random_features" in have:
        s, lo, hi = _slope(a, "random_features")
        rows.append(Row("random features (c trained, y frozen) beside trained units",
                        "no prediction: c converges to the L2(mu) projection onto the "
                        "span of the units, which can converge fast in n on the circle",
                        f"slope {fmt(s)} [{fmt(lo)}, {fmt(hi)}]",
                        "a measurement, not a prediction", "n.a."))
    return rows


def _ensemble_lln_rows(a, ctx):
    """The LLN per ensemble (trained units and each baseline) from the ensembles alone, and
    why the CLT is not given per ensemble."""
    if "baseline_lln_slope" not in a:
        return []
    out = []
    T = float(a["t"].values[-1])
    for e, ens in enumerate(ENSEMBLES):
        s, lo, hi = (float(a[f"baseline_lln_slope{k}"].values[e]) for k in ("", "_low",
                                                                             "_high"))
        if not np.isfinite(s):
            continue
        # the rule of the LLN rows without f_0 (Monte-Carlo units have n V_n = Var(G phi /
        # rho_bar) exactly: slope 0)
        out.append(ensemble_lln_row(
            f"LLN per ensemble ({LABELS[ens]}): n·E‖f_n − E f_n‖²_μ vs n, t = {T:g}",
            "Prop. 2.1, 2.2 (2.32); §1 (1.3)", s, lo, hi, ctx, ctx.k_95))
    out.append(NotApplicable(
        "CLT per ensemble (Monte-Carlo units, random features)",
        "Σ_t is predicted for trained units only (influence or ensemble method); no covariance "
        "of the baselines is computed, so their fluctuations are measured by the LLN rows "
        "per ensemble"))
    return out


def _ratio_row(a, ctx):
    """Trained units' excess loss against Monte-Carlo units' at the largest n and the run's
    T: both are c/n to leading order, Monte-Carlo's c = Var(G φ/ρ̄)/2 for ever, the trained
    units' c = ½ tr Σ_T + ⟨r_0, b_T⟩ healing with T (Prop. 2.3, 2.4), so the paper predicts a
    ratio below 1 once training has healed part of the fluctuations."""
    i = int(np.argmax(a["n"].values))
    r, lo, hi = (float(a[f"baseline_excess_ratio{k}"].values[i]) for k in ("", "_low",
                                                                           "_high"))
    name = ("trained units' excess loss below Monte-Carlo units' "
            f"(n = {int(a['n'].values[i])}, t = {float(a['t'].values[-1]):g})")
    if not np.isfinite(lo):
        return NotApplicable(name, "the excess losses are not finite at the largest n")
    # PASS: the interval below 1; FAIL: above; INCONCLUSIVE: it holds the alternative of no
    # advantage at all (ratio 1)
    v, note = judge(lo, hi, bool(lo <= 1.0), (1.0,), center=min(r, 0.5), seeds=ctx.seeds,
                    min_seeds=ctx.k_95)
    return Row(name, "§1 (1.3); Prop. 2.3, 2.4",
               f"ratio {fmt(r)} [{fmt(lo)}, {fmt(hi)}] (bootstrap over seeds)",
               with_note("< 1", note), v)
