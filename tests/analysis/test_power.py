"""Verdicts with power: a statistic that cannot be estimated is n.a. with the
reason; a PASS whose interval also holds the alternative is INCONCLUSIVE with the seeds it
would need; the report counts INCONCLUSIVE. Synthetic data with a known answer: the
error E‖f_n − f_0‖² = n^rate exactly (f_n − f_0 Gaussian with variance n^rate per node).
"""
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.checks import limits as checks
from analysis.cli import main
from analysis.checks.power import (INCONCLUSIVE, VERDICTS, bootstrap_min_seeds, judge,
                                   per_time_level, seeds_needed)
from analysis.checks.rows import NotApplicable, Row
from analysis.checks.run import row_context
from analysis.report.make import render

from .test_cli import write_toml

ROOT = Path(__file__).resolve().parents[2]
T = 3  # save times: intervals at the per-time level 1 - 0.05/3 (98.3 %)


def synthetic(S, ns, rate, Q=1, seed=0):
    """particles and meanfield datasets with f_0 = 0 and f_n ~ N(0, n^rate) per node."""
    rng = np.random.default_rng(seed)
    ns = np.asarray(ns)
    x = np.linspace(0.0, 2 * np.pi, Q, endpoint=False)
    t = np.arange(T, dtype=float)
    sd = ns[:, None, None, None] ** (rate / 2)
    fn = sd * rng.standard_normal((len(ns), S, T, Q))
    particles = xr.Dataset({"f_n": (("n", "seed", "t", "x"), fn),
                            "x_weight": ("x", np.full(Q, 1.0 / Q))},
                           coords={"n": ns, "seed": np.arange(S), "t": t, "x": x})
    meanfield = xr.Dataset({"f_0_characteristics": (("t", "x"), np.zeros((T, Q)))},
                           coords={"t": t, "x": x})
    return particles, meanfield


def lln_rows(S, ns, rate, Q=1, seed=0):
    """The report's LLN slope rows of the synthetic run."""
    p, m = synthetic(S, ns, rate, Q, seed)
    level = per_time_level(T)[0]
    a = checks.lln(p, m, n_boot=1000, level=level, rng=np.random.default_rng(seed + 1))
    ctx = row_context(a, {"config": {"dynamics": {"scheme": "gd"}}, "particles": p,
                          "meanfield": m})
    return [r for r in checks.lln_rows(a, ctx) if r.prediction.startswith("LLN slope")]


def test_min_seeds_of_a_bootstrap():
    # S^(1-S) < a/2: at 95 %, 3^-2 = 0.11 and 4^-3 = 0.016 < 0.025; at 98.3 %, 4^-3 is not
    # below 0.0083 but 5^-4 = 0.0016 is
    assert bootstrap_min_seeds(0.95) == 4
    assert bootstrap_min_seeds(1 - 0.05 / 3) == 5


@pytest.mark.parametrize("S", [1, 2])
def test_too_few_seeds_is_na_with_the_reason(S):
    # 1 seed would give a zero-width interval (a FAIL or PASS by chance), 2 seeds intervals
    # like [-4.7, 2.2]: below bootstrap_min_seeds the rows are n.a. with the reason
    got = lln_rows(S, [16, 64, 256], -1.0)
    assert len(got) == T
    for r in got:
        assert r.verdict == "n.a.", r
        assert f"needs at least 5 seeds (this run has {S})" in r.expected


def test_enough_seeds_give_a_conclusive_pass_and_fail():
    # 400 seeds, n over a factor 64, Q = 8 nodes: the slope's interval is about ±0.05
    for r in lln_rows(400, [16, 64, 256, 1024], -1.0, Q=8):
        assert r.verdict == "PASS", r
    for r in lln_rows(400, [16, 64, 256, 1024], -0.5, Q=8):  # the alternative's rate
        assert r.verdict == "FAIL", r


def test_wide_interval_is_inconclusive_and_its_seed_hint_works():
    # 6 seeds, n over a factor 2, one node: the interval is several units wide
    got = lln_rows(6, [16, 32], -1.0)
    inc = [r for r in got if r.verdict == INCONCLUSIVE]
    assert inc, got
    assert all(r.verdict in ("PASS", INCONCLUSIVE) for r in got), got
    for j, r in enumerate(got):
        if r.verdict != INCONCLUSIVE:
            continue
        assert "the alternative" in r.expected and "-0.5" in r.expected
        need = int(r.expected.split("about ")[1].split(" seeds")[0])
        assert need > 6
        # the hint is a value that works: that many seeds (a fresh draw) tell -1 from -1/2
        again = lln_rows(need, [16, 32], -1.0, seed=5)[j]
        assert again.verdict == "PASS", again


def test_judge_rules():
    alts = (-1.5, -0.5, 0.0)
    assert judge(-1.2, -0.8, True, alts, center=-1.0, seeds=10) == ("PASS", "")
    assert judge(-0.4, 0.2, False, alts, center=-1.0, seeds=10) == ("FAIL", "")
    v, note = judge(-1.6, -0.4, True, alts, center=-1.0, seeds=10)
    # half-width 0.6 against the distance 0.5: 10 (2 * 0.6/0.5)^2 = 57.6 -> 58 seeds
    assert v == INCONCLUSIVE and "about 58 seeds" in note
    assert seeds_needed(-1.6, -0.4, -1.0, alts, 10) == 58
    assert judge(np.nan, np.nan, None, alts, center=-1.0, seeds=10)[0] == "n.a."
    assert judge(-1.2, -0.8, True, alts, center=-1.0, seeds=3, min_seeds=5) == (
        "n.a.", "needs at least 5 seeds (this run has 3)")


def test_report_counts_inconclusive():
    table = [Row("a", "", "", "", v) for v in ("PASS", "FAIL", INCONCLUSIVE, INCONCLUSIVE,
                                                "n.a.")]
    text = render(table, [])
    assert "1 PASS, 1 FAIL, 2 INCONCLUSIVE, 1 n.a.\n" in text
    assert VERDICTS == ("PASS", "FAIL", INCONCLUSIVE, "n.a.")
    # checks that do not apply are counted apart and listed below the table, not rows
    text = render(table[:4] + [NotApplicable("b", "needs c"), NotApplicable("d", "needs e")],
                  [])
    table_part, below = text.split("## Checks that do not apply to this run")
    assert "1 PASS, 1 FAIL, 2 INCONCLUSIVE, 2 not applicable\n" in table_part
    assert "| b |" not in text and below.startswith("\n\n- b: needs c\n- d: needs e\n")


def run_report(tmp_path, seeds):
    cfg = tomllib.loads((ROOT / "examples" / "circle.toml").read_text())
    cfg["particles"] = {"n": [16, 32, 64], "seeds": seeds, "root_seed": 1}
    cfg["dynamics"].update(t_end=2.0, save_times=[0.0, 1.0, 2.0], dt=0.1)
    cfg["meanfield"] = {"solvers": ["characteristics"], "characteristics": {"y": 16, "c": 4}}
    cfg["fluctuations"] = {"method": "influence", "y": 16, "c": 4}
    out = tmp_path / "out"
    assert main(["run", str(write_toml(tmp_path / "c.toml", cfg)), "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["report", str(out), "--no-figures"]) == 0
    return (out / "report.md").read_text()


@pytest.mark.parametrize("seeds", [1, 2])
def test_report_of_one_or_two_seeds(tmp_path, seeds):
    # 1 or 2 seeds through mfpc run and report: every row with a bootstrap interval (LLN
    # slope and prefactor, M slope, time to level) is n.a. with the reason
    text = run_report(tmp_path, seeds)
    boot = [ln for ln in text.splitlines() if ln.startswith("| ") and (
        "LLN" in ln or "leading eigenvalues" in ln or "time to reach" in ln)]
    assert len(boot) == 3 * T + 1
    for ln in boot:
        assert ln.rstrip(" |").endswith("n.a.") and "needs at least" in ln, ln
    assert "INCONCLUSIVE" in text.split("## Context")[0]  # counted in the summary
