"""Runs without a mean field: the report's rows from the ensembles alone, the
Gram spectrum of M on every run, the quench row and the paper's figures, end to end on
small runs of the shipped high-dimensional examples."""
import tomllib
from pathlib import Path

import numpy as np
import xarray as xr

from analysis.cli import main
from analysis.checks.highdim import final_alpha, quench_time
from analysis.store.runfolder import FIGURE_NAMES
from particles.engine.results import check_cf

from .test_cli import write_toml

ROOT = Path(__file__).resolve().parents[2]
QUENCH = [[0.0, {"P0": 0.2, "alpha": 0.5, "round": "floor"}],
          [2.0, {"P0": 0.04, "alpha": 1.0, "round": "floor"}]]


def _cfg(name):
    return tomllib.loads((ROOT / "examples" / f"{name}.toml").read_text())


def _run_and_report(tmp_path, cfg):
    path = write_toml(tmp_path / "c.toml", cfg)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    return out, (out / "report.md").read_text()


def test_final_alpha_is_the_rule_in_force_at_the_end():
    assert final_alpha(QUENCH) == 1.0  # after the paper's quench
    assert final_alpha({"P0": 1.0, "alpha": 0.25}) == 0.25
    assert final_alpha(8) is None and final_alpha([[0, 4], [1.0, 8]]) is None


def test_quench_time_of_schedules():
    assert quench_time(QUENCH) == 2.0
    assert quench_time([[0, 8], [1.0, 8]]) is None  # no change of rule
    assert quench_time(8) is None and quench_time({"P0": 1, "alpha": 0.5}) is None


def test_sigmoid_sgd_with_quench_report(tmp_path):
    cfg = _cfg("sigmoid_teacher")
    cfg["problem"].update(d=4, nodes=200)
    cfg["dynamics"].update(t_end=4.0, save_times=[0.0, 1.0, 2.0, 3.0, 4.0], batch=QUENCH)
    cfg["particles"] = {"n": [10, 20, 40], "seeds": 6, "root_seed": 2}
    out, report = _run_and_report(tmp_path, cfg)
    a = xr.open_dataset(out / "analysis.nc", engine="h5netcdf")
    assert check_cf(a) == []
    for v in ("ens_var_slope", "dist_largest_slope", "loss_slope", "loss_slope_low",
              "loss_slope_high", "signed_pos_slope", "signed_neg_slope", "m_gram_min_ratio",
              "quench_loss_ratio"):
        assert v in a, v
    # Gram spectrum on every n: n (N + 1) = 6 n <= 4096; min(Q = 200, 6 n) eigenvalues
    assert list(a["m_gram_size"].values) == [60, 120, 200]
    assert np.all(a["m_gram_min_ratio"].values >= -a["m_gram_tolerance"].values)
    assert float(a["quench_time"]) == 2.0 and int(a["quench_n"]) == 40
    for row in ("LLN without f_0", "E‖f_n − f̄‖²_μ", "final loss (4.8) vs n",
                "signed error (4.11), Θ(f)", "Gram matrix of the features",
                "loss after the quench"):
        assert row in report, row
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"training_loss.png", "loss_n.png", "signed_pos_n.png", "signed_neg_n.png",
            "great_circles.png"} <= figs
    assert figs <= set(FIGURE_NAMES)  # so that --force removes them with the run


def test_sphere_interpolation_report_draws_the_slice(tmp_path):
    cfg = _cfg("sphere_3spin")
    cfg["problem"]["nodes"] = 200
    cfg["dynamics"].update(t_end=0.2, save_times=[0.0, 0.1, 0.2],
                           temperature=[[0.0, 1e-3], [0.1, 0.0]])
    cfg["particles"] = {"n": [8, 16, 32], "seeds": 4, "root_seed": 1}
    out, report = _run_and_report(tmp_path, cfg)
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"slice.png", "great_circles.png", "loss_n.png"} <= figs
    assert figs <= set(FIGURE_NAMES)  # so that --force removes them with the run
    assert "LLN without f_0" in report
    # GD-type run: the loss row asks for faster than 1/n
    assert "≤ −1 (faster than n^−1)" in report
