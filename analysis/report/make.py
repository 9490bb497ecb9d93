r"""``mfpc report DIR``: run every check the outputs in DIR allow and write the results.

:func:`make_report` runs the checks (:func:`analysis.checks.run.run_checks` on
``DIR/particles.nc``, ``DIR/meanfield.nc`` and ``DIR/fluctuations.nc``), renders their rows
(:func:`analysis.checks.run.check_rows`) and writes

* ``DIR/analysis.nc`` — every statistic (``lln_slope(t)``, ``clt_var_ratio(n, t)``,
  ``m_min_eigenvalue(t)``, ...), atomically through :func:`analysis.store.io.write_dataset`;
* ``DIR/report.md`` — one table row per prediction: the paper's reference, the measured
  value with its uncertainty, the expected value and a verdict PASS / FAIL /
  INCONCLUSIVE / n.a. (:mod:`analysis.checks.power`); below the table the counts, one
  line per check that does not apply to this run and why (:mod:`analysis.checks.rows`),
  then the context (f_0 source, Σ method, c domain and truncated mass) and what could not
  be checked and why;
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
from pathlib import Path

import numpy as np

from particles.engine.results import finish

from analysis.checks.highdim import quench_time
from analysis.checks.power import VERDICTS
from analysis.checks.rows import NotApplicable, fmt
from analysis.checks.run import check_rows, run_checks
from analysis.store.io import atomic_path, write_dataset
from analysis.store.runfolder import check_writable, claim_report, holding, stamp
from particles.engine.variables import cf_meta

__all__ = ["make_report", "render", "TITLE"]

#: the CF ``title`` of analysis.nc
TITLE = "mfpc: checks of the paper's predictions (LLN, CLT, M-kernel, losses) on this run"


def _write_text(path, text):
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def _context(a, inputs, notes):
    lines = []
    p = inputs["particles"]
    lines.append(f"- problem: `{p.attrs.get('problem', '')}`")
    lines.append(f"- dynamics: `{p.attrs.get('dynamics', '')}`; n = {p['n'].values.tolist()}, "
                 f"{p.sizes['seed']} seeds, save times {p['t'].values.tolist()}")
    if inputs["problem"] is not None:
        lines.append(f"- initial c law: `{json.dumps(inputs['problem'].c_law.params())}`")
    lines.append(f"- f_0 reference: {a.attrs.get('f_0_reference')}")
    lines.append(f"- run_id: `{a.attrs.get('run_id', '')}` (every file of this run carries it)")
    mf = inputs["meanfield"]
    if mf is not None and "f_0" in mf and "f_0_characteristics" in mf:
        d = (mf["f_0"] - mf["f_0_characteristics"])
        d2 = float((d**2 * mf["x_weight"]).sum("x").max()) if "x_weight" in mf else np.nan
        lines.append(f"- grid vs characteristics: max |Δf_0| = {fmt(abs(d).max(), 2)}, "
                     f"max_t ‖Δf_0‖²_μ = {fmt(d2, 2)} (bias floor of the LLN error)")
    if mf is not None and "truncated_mass" in mf.attrs:
        lines.append(f"- grid: c in [{mf.attrs.get('c_min')}, {mf.attrs.get('c_max')}], "
                     f"truncated initial mass {fmt(mf.attrs['truncated_mass'], 2)}, outflow "
                     f"{fmt(mf['outflow'].values[-1], 2) if 'outflow' in mf else 'n.a.'}")
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


def _cell(v):
    return str(v).replace("|", "\\|")  # a bar inside a cell would split it


def counts(table) -> dict:
    """``{verdict: number of rows}`` for every verdict of :data:`VERDICTS`."""
    return {v: sum(r.verdict == v for r in table) for v in VERDICTS}


def _summary(table, not_applicable):
    """PASS, FAIL, INCONCLUSIVE; n.a. where rows have it; the checks that did not apply."""
    c = counts(table)
    shown = [v for v in VERDICTS if v != "n.a." or c[v]]
    parts = [f"{c[v]} {v}" for v in shown]
    if not_applicable:
        parts.append(f"{len(not_applicable)} not applicable")
    return ", ".join(parts)


def render(rows, context, warning=None) -> str:
    """report.md: the table of the :class:`~analysis.checks.rows.Row` in ``rows``, its
    counts, one line per :class:`~analysis.checks.rows.NotApplicable` and the context;
    ``warning`` first (in bold)."""
    table = [r for r in rows if not isinstance(r, NotApplicable)]
    na = [r for r in rows if isinstance(r, NotApplicable)]
    head = ("# Report: the paper's predictions on this run\n\n"
            + (f"**{warning}**\n\n" if warning else "") +
            "Generated by `mfpc report` from the .nc files in this folder (derived data: "
            "re-running overwrites it). Statistics in `analysis.nc`; tolerances and their "
            "derivations in `docs/propositions.md`.\n\n"
            "| prediction | paper | measured | expected | verdict |\n|---|---|---|---|---|\n")
    body = "".join("| " + " | ".join(_cell(v) for v in r) + " |\n" for r in table)
    text = head + body + "\n" + _summary(table, na) + "\n"
    if na:
        text += ("\n## Checks that do not apply to this run\n\n"
                 + "".join(f"- {r.prediction}: {r.reason}\n" for r in na))
    return text + "\n## Context\n\n" + "\n".join(context) + "\n"


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
        :func:`analysis.checks.run.run_checks`).
    command : str, optional
        The command line for the ``history`` of ``analysis.nc`` (default
        ``mfpc report DIR``).

    Returns
    -------
    dict
        ``{"analysis": path, "report": path, "figures": [paths], "verdicts": {...}}``
        (the number of table rows of each verdict of :data:`~analysis.checks.power.VERDICTS`),
        ``"not_applicable"`` (the :class:`~analysis.checks.rows.NotApplicable` listed below
        the table), ``"run_id"`` and ``"incomplete"`` (the note of an incomplete run, else
        None).

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
        rows = check_rows(a, inputs)
        rpath = _write_text(out / "report.md", render(rows, _context(a, inputs, notes),
                                                      warning=a.attrs.get("incomplete")))
        paths = []
        if figures:
            from analysis.report import figures as plots

            paths = plots.make_figures(
                out / "figures", inputs["particles"], inputs["meanfield"],
                inputs["fluctuations"], a,
                "f_0_characteristics" if inputs["f0_name"] == "characteristics" else "f_0")
            if inputs["meanfield"] is None and inputs["problem"] is not None:
                # the paper's Sec. 4 figures
                from analysis.report.paperfigures import paper_figures

                paths += paper_figures(out / "figures", inputs["every"], a,
                                       inputs["problem"],
                                       quench=quench_time(inputs["config"]["dynamics"]
                                                          .get("batch")))
            if "lazy_gap" in a or "loss_monte_carlo" in inputs["particles"] \
                    or "loss_random_features" in inputs["particles"]:
                from analysis.report.baselinefigures import baseline_figure

                paths.append(plots.save(baseline_figure(inputs["particles"], a,
                                                        inputs["meanfield"]),
                                        out / "figures" / "baselines.png"))
        stamp(out, [p.relative_to(out).as_posix() for p in [apath, rpath, *paths]])
    na = [r for r in rows if isinstance(r, NotApplicable)]
    return {"analysis": apath, "report": rpath, "figures": paths,
            "verdicts": counts([r for r in rows if not isinstance(r, NotApplicable)]),
            "not_applicable": na,
            "run_id": a.attrs["run_id"], "incomplete": a.attrs.get("incomplete")}
