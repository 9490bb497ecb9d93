r"""``mfpc report DIR``: run every check the outputs in DIR allow and write the results.

:func:`make_report` reads ``DIR/particles.nc`` (required), ``DIR/meanfield.nc`` and
``DIR/fluctuations.nc`` (optional), runs :mod:`analysis.checks.limits` and writes

* ``DIR/analysis.nc`` — every statistic (``lln_slope(t)``, ``clt_var_ratio(n, t)``,
  ``m_min_eigenvalue(t)``, ...), atomically through :func:`analysis.store.io.write_dataset`;
* ``DIR/report.md`` — one table row per prediction: the paper's reference, the measured
  value with its uncertainty, the expected value and a verdict PASS / FAIL /
  INCONCLUSIVE / n.a. (:mod:`analysis.checks.power`), then
  the context (f_0 source, Σ method, c domain and truncated mass) and what could not be
  checked and why;
* ``DIR/figures/*.png`` — :func:`analysis.report.figures.make_figures`.

The outputs are derived data: re-running overwrites them (each file is replaced
atomically). The run files are checked first (:func:`analysis.store.runfolder.read_run`): damaged
or foreign files and files of different runs are refused; an incomplete run (a file with
``complete = 0``) is said at the top of ``report.md`` and in ``analysis.nc``
(``attrs["complete"] = 0``, ``attrs["incomplete"]``). The folder is locked while the
report is written. The tolerances and their derivations are in ``docs/propositions.md``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import xarray as xr
from scipy import stats

from particles.engine.config import ConfigError
from particles.build import build_problem
from particles.engine.results import finish

from analysis.checks import limits as checks
from analysis.store.io import atomic_path, write_dataset
from analysis.checks.highdim import final_alpha, highdim_checks, highdim_rows, quench_time
from analysis.checks.mkernel import mkernel_checks
from analysis.checks.power import VERDICTS, bootstrap_min_seeds, judge, slope_alternatives
from analysis.store.runfolder import check_writable, claim_report, holding, read_run, stamp
from analysis.checks.sgd import gd_rows_na, sgd_checks, sgd_rows
from analysis.store.variables import cf_meta

__all__ = ["make_report", "Row", "rows", "render", "REPORT_SPAWN_KEY"]

log = logging.getLogger(__name__)

#: spawn key of the report's generator: SeedSequence(root_seed, spawn_key=(REPORT_SPAWN_KEY,))
REPORT_SPAWN_KEY = 2**20 + 5
#: largest Q for which M[rho] (Q x Q) is formed and diagonalised
M_MAX_Q = 4000
#: family-wise error rate of each prediction checked at the T save times (Bonferroni):
#: intervals at level 1 - FAMILY_ALPHA/T, p-values against FAMILY_ALPHA/T, |z| against
#: the two-sided normal quantile of FAMILY_ALPHA/T
FAMILY_ALPHA = 0.05
#: identity (2.39) relative residual bound, loss-increase bound (relative to l(0))
IDENTITY_TOL = 1e-10
LOSS_INCREASE_TOL = 1e-10
#: |slope| below which the time to reach a loss level counts as flat in n
FLAT_TOL = 0.1
#: self-healing needs the mean-field floor l_0(T) below this fraction of the loss
FLOOR_MAX = 0.1


#: variables always present in analysis.nc
REQUIRED = ("lln_slope", "lln_slope_low", "lln_slope_high", "clt_var_ratio", "m_min_eigenvalue")


class Row(NamedTuple):
    prediction: str
    reference: str
    measured: str
    expected: str
    verdict: str


def _g(v, d=3):
    v = float(v)
    return "nan" if not np.isfinite(v) else f"{v:.{d}g}"


def _verdict(ok):
    if ok is None:
        return "n.a."
    return "PASS" if ok else "FAIL"


def _with(expected, note):
    """The expected column with the reason of an n.a. or INCONCLUSIVE verdict."""
    return f"{expected}; {note}" if note else expected


def _write_text(path, text):
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def _nodes(meanfield, notes):
    """Characteristic nodes at the save times (saved in meanfield.nc) for M[rho_0]."""
    if meanfield is None or "y_nodes" not in meanfield:
        notes.append("M[rho_0] from characteristic nodes: meanfield.nc has none "
                     "(add 'characteristics' to meanfield.solvers)")
        return None
    return meanfield


def per_time_level(T):
    """Interval level, p-value bound and |z| bound for one row of T (family-wise 5 %)."""
    a = FAMILY_ALPHA / max(int(T), 1)
    return 1.0 - a, a, float(stats.norm.ppf(1.0 - a / 2))


def _batch_alpha(cfg):
    """α of an SGD batch scaled as P = ceil(P0 n^{2α}) (dynamics.batch), else None."""
    batch = cfg.get("dynamics", {}).get("batch")
    return float(batch["alpha"]) if isinstance(batch, dict) else None


#: the CF ``title`` of analysis.nc
TITLE = "mfpc: checks of the paper's predictions (LLN, CLT, M-kernel, losses) on this run"


def _problem(cfg, problem):
    """The run's problem: the ready one given, else rebuilt from the stored config."""
    if problem is not None:
        return problem
    try:
        return build_problem(cfg["problem"], cfg.get("init"))
    except ConfigError as e:
        raise ConfigError(
            f"the [problem] of this run cannot be rebuilt from its config ({e}); a run of a "
            "ready Problem (e.g. a user's kernel) is reported from Python: "
            "make_report(DIR, problem=problem)") from None


def incomplete_note(incomplete) -> str:
    """What an incomplete run means for its report, from ``[(file name, failure)]``."""
    files = "; ".join(f"{name} has complete = 0 ({failure})" for name, failure in incomplete)
    return (f"INCOMPLETE RUN: {files}. The run failed; the checks below use only what was "
            "computed before the failure (NaN past it), and later sections may be missing.")


def run_checks(out, *, n_boot=1000, rng=None, problem=None):
    """Read DIR and run the checks; returns (analysis Dataset, inputs dict, notes).

    The run files are read by :func:`analysis.store.runfolder.read_run`, which refuses damaged or
    foreign files and files of different runs (:class:`~analysis.store.runfolder.RunFolderError`).
    ``analysis.nc`` carries the run's ``run_id`` and ``complete`` (0 when any run file has
    ``complete = 0``, with the note ``attrs["incomplete"]``).

    ``problem`` is the run's ready :class:`~particles.problem.Problem` when the config's
    ``[problem]`` is only a description (a user's own kernel); by default it is rebuilt
    from the config stored in ``particles.nc``.
    """
    out = Path(out)
    data, notes, identity = read_run(out)
    particles, meanfield, fluct = (data[s] for s in ("particles", "meanfield", "fluctuations"))
    cfg = json.loads(particles.attrs["config"])
    every = particles  # all target realisations (analysis.run.realisations)
    if "realisation" in particles.dims:
        notes.append(f"{particles.sizes['realisation']} target realisations: the scaling rows "
                     "fit each and their mean; the other checks read realisation 0")
        particles = particles.isel(realisation=0, drop=True)
    problem = _problem(cfg, problem)
    if rng is None:
        rng = np.random.default_rng(np.random.SeedSequence(
            int(particles.attrs.get("root_seed", 0)), spawn_key=(REPORT_SPAWN_KEY,)))
    level = per_time_level(particles.sizes["t"])[0]
    parts = [checks.loss_monotonicity(particles, meanfield),
             checks.time_to_level(particles, meanfield, n_boot=n_boot, rng=rng),
             checks.final_loss_scaling(particles, meanfield, n_boot=n_boot, rng=rng),
             checks.fluctuation_scaling(particles, alpha=_batch_alpha(cfg), n_boot=n_boot,
                                        rng=rng)]
    f0_name = None
    if meanfield is not None:
        f0, f0_name = checks.reference_f0(meanfield)
        parts.append(checks.lln(particles, meanfield, fluct, f0=f0, n_boot=n_boot,
                                level=level, rng=rng))
        if fluct is not None:
            parts.append(checks.clt(particles, meanfield, fluct, f0=f0))
            if "sgd_cov" in fluct and cfg["dynamics"]["scheme"] == "sgd":
                parts.append(sgd_checks(particles, fluct, cfg, f0=f0))
    else:
        notes.append("LLN and CLT against f_0 need meanfield.nc: n.a. (the LLN from the "
                     "ensembles alone is checked instead)")
        parts.append(highdim_checks(every, problem, cfg, n_boot=n_boot, level=level,
                                    rng=rng, notes=notes))
    if problem.x.shape[0] <= M_MAX_Q:
        nodes = _nodes(meanfield, notes)
        if "y" not in particles:
            notes.append("particles.nc has no units (save_state = false): M[rho_n] n.a.")
        parts.append(mkernel_checks(problem, particles, meanfield, nodes,
                                    n_boot=n_boot, level=level, rng=rng))
    else:
        notes.append(f"M[rho]: Q = {problem.x.shape[0]} > {M_MAX_Q} nodes, the Q x Q kernel "
                     "is not formed" + (" (its spectrum is measured through the Gram matrix "
                                        "instead)" if meanfield is None else ""))
    ds = xr.merge(parts, combine_attrs="drop_conflicts")
    # the variables every analysis.nc has (NaN where the inputs did not allow the check)
    T, Nn = particles.sizes["t"], particles.sizes["n"]
    for v in REQUIRED:
        if v not in ds:
            ds[v] = (("n", "t"), np.full((Nn, T), np.nan)) if v == "clt_var_ratio" else \
                ("t", np.full(T, np.nan))
    ds.attrs.update({
        "config": particles.attrs["config"],
        "f_0_reference": f0_name or "none",
        "notes": json.dumps(notes),
        "report_rng": f"SeedSequence(root_seed, spawn_key=({REPORT_SPAWN_KEY},))",
        "n_boot": n_boot,
        "per_time_level": level,
        "family_alpha": FAMILY_ALPHA,
        "derived_from": json.dumps([p.name for p in sorted(out.glob("*.nc"))
                                    if p.name != "analysis.nc"]),
        "run_id": identity["run_id"],
        "complete": 0 if identity["incomplete"] else 1,
    })
    if identity["incomplete"]:
        ds.attrs["incomplete"] = incomplete_note(identity["incomplete"])
    for n_ in notes:
        log.info("not checked: %s", n_)
    inputs = {"particles": particles, "every": every, "meanfield": meanfield,
              "fluctuations": fluct,
              "config": cfg, "f0_name": f0_name, "problem": problem, "identity": identity}
    return ds, inputs, notes


def rows(a, inputs):
    """The report table from the analysis dataset; see docs/propositions.md."""
    cfg = inputs["config"]
    scheme = cfg["dynamics"]["scheme"]
    ts = a["t"].values
    level, p_min, z_max = per_time_level(len(ts))
    pct = f"{100 * level:.3g} %"
    # seeds, and the fewest a bootstrap interval needs at the row's level (analysis.checks.power)
    S = int(inputs["particles"].sizes["seed"])
    k_t, k_95 = bootstrap_min_seeds(level), bootstrap_min_seeds(0.95)
    out = []
    if "lln_slope" in a:
        for j, t in enumerate(ts):
            s, lo, hi = (float(a[v].values[j]) for v in ("lln_slope", "lln_slope_low",
                                                        "lln_slope_high"))
            ok = None if not np.isfinite(lo) else bool(lo <= -1.0 <= hi)
            v, note = judge(lo, hi, ok, slope_alternatives(-1.0) + (0.0,), center=-1.0,
                            seeds=S, min_seeds=k_t)
            out.append(Row(f"LLN slope of E‖f_n − f_0‖²_μ vs n, t = {t:g}",
                           "Prop. 2.2 (2.41); (2.32)",
                           f"{_g(s)} [{_g(lo)}, {_g(hi)}] ({pct} bootstrap)",
                           _with("−1", note), v))
        if "lln_trace_sigma" in a:
            for j, t in enumerate(ts):
                A, lo, hi, tr = (float(a[v].values[j]) for v in (
                    "lln_prefactor_fixed", "lln_prefactor_fixed_low",
                    "lln_prefactor_fixed_high", "lln_trace_sigma"))
                ok = None if not np.isfinite(lo) else bool(lo <= tr <= hi)
                v, note = judge(lo, hi, ok, (0.5 * tr, 2.0 * tr), center=tr, seeds=S,
                                min_seeds=k_t)
                out.append(Row(f"LLN prefactor n·E‖f_n − f_0‖²_μ, t = {t:g}",
                               "Prop. 2.1 (2.32), THEORY §4",
                               f"{_g(A)} [{_g(lo)}, {_g(hi)}] ({pct}; slope fixed −1; free fit "
                               f"{_g(a['lln_prefactor'].values[j])})",
                               _with(f"tr_μ Σ_t = {_g(tr)}", note), v))
    if "clt_var_ratio_stderr" not in a:
        out.append(Row("CLT: variance ratio and Gaussianity", "Prop. 2.1 (2.32)",
                       "not measured", "needs meanfield.nc and fluctuations.nc", "n.a."))
    else:
        i = int(np.argmax(a["n"].values))
        n = int(a["n"].values[i])
        for j, t in enumerate(ts):
            r = float(a["clt_var_ratio"].values[i, j])
            se = float(a["clt_var_ratio_stderr"].values[i, j])
            ok = None if not np.isfinite(r * se) else bool(abs(r - 1.0) <= z_max * se)
            v, note = judge(r - z_max * se, r + z_max * se, ok, (0.5, 2.0), center=1.0,
                            seeds=S, min_seeds=2)
            out.append(Row(f"CLT variance ratio n·Var(f_n − f_0) / Σ_t, n = {n}, t = {t:g}",
                           "Prop. 2.1 (2.32), THEORY §4", f"{_g(r)} ± {_g(se, 2)}",
                           _with(f"1 (|ratio − 1| ≤ {z_max:.3g} s.e.)", note), v))
        for j, t in enumerate(ts):
            p = float(a["clt_ks_p"].values[i, j])
            pm = float(a["clt_mahalanobis_p"].values[i, j])
            k = int(a["clt_k"].values[j])
            few = f"needs at least 2 seeds (this run has {S})" if S < 2 else ""
            out.append(Row(f"CLT Gaussianity, top-{k} modes of Σ_t, n = {n}, t = {t:g}",
                           "Prop. 2.1 (2.32)",
                           f"KS p = {_g(p, 2)} (Bonferroni); "
                           f"Mahalanobis χ²_{k} KS p = {_g(pm, 2)}",
                           _with(f"both p ≥ {p_min:.2g}", few),
                           _verdict(None if few or not np.isfinite(p + pm) else
                                    bool(p >= p_min and pm >= p_min))))
    if a.sizes.get("source", 0) == 0:
        out.append(Row("M[ρ] ⪰ 0 and identity (2.39)", "(2.38), (2.39)", "not measured",
                       "needs units in particles.nc or rho_0 in meanfield.nc, and at most "
                       f"{M_MAX_Q} x nodes (see the notes below)", "n.a."))
    else:
        tol = float(a["m_psd_tolerance"])
        for src in a["source"].values:
            v = a["m_min_eigenvalue_source"].sel(source=src).values
            m = float(np.nanmin(v)) if np.isfinite(v).any() else np.nan
            out.append(Row(f"M[ρ] ⪰ 0: min over t of λ_min/λ_max ({src})", "(2.38), (2.39)",
                           _g(m), f"≥ −{_g(tol, 2)} (round-off)",
                           _verdict(None if not np.isfinite(m) else bool(m >= -tol))))
        res = a["m_identity_residual"].values
        r = float(np.nanmax(res)) if np.isfinite(res).any() else np.nan
        out.append(Row("identity (2.39) ⟨r, M r⟩_μ = ∫(c²|∇R|² + R²)ρ, random r, all sources",
                       "(2.39), (2.40)", f"max relative gap {_g(r, 2)}",
                       f"≤ {IDENTITY_TOL:g}",
                       _verdict(None if not np.isfinite(r) else bool(r <= IDENTITY_TOL))))
    if "m_tangent_residual" in a:
        r = float(np.nanmax(a["m_tangent_residual"].values))
        tol = max(1e-12, 10 * float(a["n"].max()) * np.finfo(float).eps)
        out.append(Row("M[ρ_n] = n ∇_z f_n · ∇_z f_n (tangent kernel, complex step)",
                       "(2.38), THEORY §3", f"max relative gap {_g(r, 2)}", f"≤ {_g(tol, 2)}",
                       _verdict(None if not np.isfinite(r) else bool(r <= tol))))
    if "m_leading_slope" in a:
        for j, t in enumerate(ts):
            s, lo, hi = (float(a[v].values[j]) for v in ("m_leading_slope",
                                                        "m_leading_slope_low",
                                                        "m_leading_slope_high"))
            i = int(np.argmax(a["n"].values))
            rel = float(a["m_leading_rel_err"].values[i, j])
            v, note = judge(lo, hi, None if not np.isfinite(lo) else bool(lo <= -0.5 <= hi),
                            slope_alternatives(-0.5), center=-0.5, seeds=S, min_seeds=k_t)
            out.append(Row(f"leading eigenvalues of M[ρ_n] → M[ρ_0], t = {t:g}",
                           "(2.31), (2.38)",
                           f"rms rel. error {_g(rel, 2)} at n = {int(a['n'].values[i])}; "
                           f"slope {_g(s)} [{_g(lo)}, {_g(hi)}] ({pct})",
                           _with("slope −1/2", note), v))
    inc = float(np.nanmax(a["loss_max_increase"].values))
    gd = scheme == "gd"
    out.append(Row("losses non-increasing (GD), all n and seeds", "(2.2), (2.37), (2.43)",
                   f"largest increase {_g(inc, 2)} ℓ(0)",
                   f"≤ {LOSS_INCREASE_TOL:g} ℓ(0)" if gd else f"n.a. for scheme {scheme}",
                   _verdict(bool(inc <= LOSS_INCREASE_TOL) if gd else None)))
    if "loss_0_max_increase" in a:
        inc0 = float(np.nanmax(a["loss_0_max_increase"].values))
        out.append(Row("mean-field loss ℓ(f_0) non-increasing", "(2.37), (2.39)",
                       f"largest increase {_g(inc0, 2)} ℓ_0(0)",
                       f"≤ {LOSS_INCREASE_TOL:g} ℓ_0(0)" if scheme != "langevin" else "n.a.",
                       _verdict(bool(inc0 <= LOSS_INCREASE_TOL) if scheme != "langevin"
                                else None)))
    s = float(a["time_to_level_slope"])
    lo, hi = float(a["time_to_level_slope_low"]), float(a["time_to_level_slope_high"])
    # flat: consistent with 0 (0 in the interval) or practically flat (|slope| small)
    flat = bool(abs(s) <= FLAT_TOL or lo <= 0.0 <= hi)
    # alternative: a time ∝ n^{±1} (docs/propositions.md, "n-independent rate")
    v, note = judge(lo, hi, None if not np.isfinite(s) else flat, (-1.0, 1.0),
                    center=0.0, seeds=S, min_seeds=k_95)
    out.append(Row(f"time to reach ℓ = {_g(a['loss_level'])} vs n (n-independent rate)",
                   "remark after Prop. 2.2", f"slope {_g(s)} [{_g(lo)}, {_g(hi)}] (95 %)",
                   _with(f"0 (0 in the interval or |slope| ≤ {FLAT_TOL:g})", note), v))
    s, hi = float(a["final_loss_slope"]), float(a["final_loss_slope_high"])
    lo = float(a["final_loss_slope_low"])
    floor = float(a["loss_floor_ratio"]) if "loss_floor_ratio" in a else np.nan
    if not np.isfinite(floor):
        # without ℓ_0(T) nothing tells whether T is a "long time" (f_0 near f)
        ok, exp = None, "n.a.: no mean-field loss to tell long times; add [meanfield]"
    elif floor > FLOOR_MAX:
        ok, exp = None, (f"n.a.: ℓ_0(T) is {_g(floor, 2)} of the loss (> {FLOOR_MAX:g}); "
                         "run longer")
    else:
        ok, exp = (None if not np.isfinite(hi) else bool(lo < -1.0)), "< −1 (upper bound)"
    if ok is None:
        v = "n.a."
    else:  # PASS: the interval below −1; FAIL: above; INCONCLUSIVE: it holds −1
        v, note = judge(lo, hi, ok, (-1.0,), center=s, seeds=S, min_seeds=k_95)
        exp = _with(exp, note)
    out.append(Row(f"self-healing: final loss vs n, t = {float(a['final_time']):g}",
                   "Prop. 2.3, 2.4 (2.52)–(2.54)",
                   f"slope {_g(s)} [{_g(lo)}, {_g(hi)}] (95 %)", exp, v))
    if scheme == "sgd":
        s = float(a["fluct_slope"].values[-1])
        e = float(a["fluct_expected_slope"])
        lo, hi = float(a["fluct_slope_low"].values[-1]), float(a["fluct_slope_high"].values[-1])
        v, note = "n.a.", ""
        if np.isfinite(e):
            v, note = judge(lo, hi, bool(lo <= e <= hi), slope_alternatives(e), center=e,
                            seeds=S, min_seeds=k_95)
        out.append(Row("SGD: variance of f_n − f_0 vs n at the last save time",
                       "Prop. 3.2 (3.23), (3.34)",
                       f"slope {_g(s)} [{_g(lo)}, {_g(hi)}]",
                       _with(f"−2α = {_g(e)}", note) if np.isfinite(e) else
                       "n.a.: dynamics.batch does not scale P ∝ n^{2α}", v))
        if "sgd_var_ratio" in a:
            z_sgd = per_time_level(len(ts) * a.sizes["n"])[2]
            out = gd_rows_na(out, Row) + sgd_rows(a, Row=Row, seeds=S, z_max=z_sgd,
                                                  k_95=k_95, alpha=_batch_alpha(cfg))
    out.extend(Row(*r) for r in highdim_rows(a, seeds=S, scheme=scheme,
                                             alpha=final_alpha(cfg["dynamics"].get("batch")),
                                             min_seeds=k_95, min_seeds_t=k_t, pct=pct))
    return out


def _context(a, inputs, notes):
    lines = []
    p = inputs["particles"]
    lines.append(f"- problem: `{p.attrs.get('problem', '')}`")
    lines.append(f"- dynamics: `{p.attrs.get('dynamics', '')}`; n = {p['n'].values.tolist()}, "
                 f"{p.sizes['seed']} seeds, save times {p['t'].values.tolist()}")
    lines.append(f"- initial c law: `{json.dumps(inputs['problem'].c_law.params())}`")
    lines.append(f"- f_0 reference: {a.attrs.get('f_0_reference')}")
    lines.append(f"- run_id: `{a.attrs.get('run_id', '')}` (every file of this run carries it)")
    mf = inputs["meanfield"]
    if mf is not None and "f_0" in mf and "f_0_characteristics" in mf:
        d = (mf["f_0"] - mf["f_0_characteristics"])
        d2 = float((d**2 * mf["x_weight"]).sum("x").max()) if "x_weight" in mf else np.nan
        lines.append(f"- grid vs characteristics: max |Δf_0| = {_g(abs(d).max(), 2)}, "
                     f"max_t ‖Δf_0‖²_μ = {_g(d2, 2)} (bias floor of the LLN error)")
    if mf is not None and "truncated_mass" in mf.attrs:
        lines.append(f"- grid: c in [{mf.attrs.get('c_min')}, {mf.attrs.get('c_max')}], "
                     f"truncated initial mass {_g(mf.attrs['truncated_mass'], 2)}, outflow "
                     f"{_g(mf['outflow'].values[-1], 2) if 'outflow' in mf else 'n.a.'}")
    fl = inputs["fluctuations"]
    if fl is not None:
        lines.append(f"- Σ_t: method {fl.attrs.get('method')}, c domain {fl.attrs.get('c_domain')}"
                     f", c nodes {fl.attrs.get('c_nodes_range')}, truncated mass "
                     f"{fl.attrs.get('truncated_mass')}")
    if "time_to_level" in a:
        lines.append(f"- loss level rule: {a.attrs.get('level_rule', '')}")
    for n_ in notes:
        lines.append(f"- not checked: {n_}")
    return lines


def render(table, context, warning=None) -> str:
    """report.md: the table, its counts and the context; ``warning`` first (in bold)."""
    head = ("# Report: the paper's predictions on this run\n\n"
            + (f"**{warning}**\n\n" if warning else "") +
            "Generated by `mfpc report` from the .nc files in this folder (derived data: "
            "re-running overwrites it). Statistics in `analysis.nc`; tolerances and their "
            "derivations in `docs/propositions.md`.\n\n"
            "| prediction | paper | measured | expected | verdict |\n|---|---|---|---|---|\n")
    def cell(v):
        return str(v).replace("|", "\\|")  # a bar inside a cell would split it

    body = "".join("| " + " | ".join(cell(v) for v in r) + " |\n" for r in table)
    counts = {v: sum(r.verdict == v for r in table) for v in VERDICTS}
    summary = "\n" + ", ".join(f"{counts[v]} {v}" for v in VERDICTS) + "\n"
    return head + body + summary + "\n## Context\n\n" + "\n".join(context) + "\n"


def make_report(out, *, n_boot=1000, figures=True, rng=None, problem=None,
                command=None) -> dict:
    """Check the run in ``out`` and write ``analysis.nc``, ``report.md`` and ``figures/``.

    Outputs are derived from the .nc files of ``mfpc run`` and are overwritten on every
    call (atomically: temporary file, then rename).

    Parameters
    ----------
    out : path
        Folder holding ``particles.nc`` (required), ``meanfield.nc``, ``fluctuations.nc``.
    n_boot : int
        Bootstrap resamples of the LLN slope.
    figures : bool
        Draw the PNG figures.
    rng : numpy.random.Generator, optional
        Default ``SeedSequence(root_seed, spawn_key=(REPORT_SPAWN_KEY,))``: reproducible.
    problem : particles.problem.Problem, optional
        The run's ready problem when it was not built from the config (see
        :func:`run_checks`).
    command : str, optional
        The command line for the ``history`` of ``analysis.nc`` (default
        ``mfpc report DIR``).

    Returns
    -------
    dict
        ``{"analysis": path, "report": path, "figures": [paths], "verdicts": {...}}``,
        ``"run_id"`` and ``"incomplete"`` (the note of an incomplete run, else None).

    Raises
    ------
    FileNotFoundError
        If ``out/particles.nc`` does not exist.
    ConfigError
        If the run's problem cannot be rebuilt from its config and none is given; a
        :class:`~analysis.store.runfolder.RunFolderError` if no file can be created in ``out``,
        another process holds it, or its run files are damaged, foreign or of different
        runs (nothing is written then).
    """
    out = Path(out)
    if not (out / "particles.nc").is_file():
        raise FileNotFoundError(f"{out / 'particles.nc'} does not exist; run `mfpc run "
                                f"CONFIG --out {out}` first")
    check_writable(out, create=False, what="report folder")
    with holding(out, "mfpc report"):
        claim_report(out, figures, check_only=True)  # nothing of the user's in the way
        a, inputs, notes = run_checks(out, n_boot=n_boot, rng=rng, problem=problem)
        claim_report(out, figures)  # on the manifest before they are written
        finish(a, title=TITLE, meta=cf_meta(a),
               command=f"mfpc report {out}" if command is None else command)
        apath = write_dataset(a, out / "analysis.nc", overwrite=True)
        table = rows(a, inputs)
        rpath = _write_text(out / "report.md", render(table, _context(a, inputs, notes),
                                                      warning=a.attrs.get("incomplete")))
        paths = []
        if figures:
            from analysis.report import figures as plots

            paths = plots.make_figures(
                out / "figures", inputs["particles"], inputs["meanfield"],
                inputs["fluctuations"], a,
                "f_0_characteristics" if inputs["f0_name"] == "characteristics" else "f_0")
            if inputs["meanfield"] is None:  # the paper's Sec. 4 figures (issue 12)
                from analysis.report.paperfigures import paper_figures

                paths += paper_figures(out / "figures", inputs["every"], a,
                                       inputs["problem"],
                                       quench=quench_time(inputs["config"]["dynamics"]
                                                          .get("batch")))
        stamp(out, [p.relative_to(out).as_posix() for p in [apath, rpath, *paths]])
    verdicts = {v: sum(r.verdict == v for r in table) for v in VERDICTS}
    return {"analysis": apath, "report": rpath, "figures": paths, "verdicts": verdicts,
            "run_id": a.attrs["run_id"], "incomplete": a.attrs.get("incomplete")}
