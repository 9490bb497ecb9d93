"""mfpc report end to end on a tiny run: analysis.nc, report.md, figures, CLI, missing inputs."""
import json
import re
import shutil

import numpy as np
import pytest
import xarray as xr

from analysis.checks.run import REQUIRED
from analysis.report import make as report
from analysis.cli import main
from analysis.run.experiment import run_config

CONFIG = """
[problem]
kind = "circle"
kappa = 2.0
quadrature = 32
[problem.target]
cos = [0.0, 0.0, 0.5]
sin = [0.0, 1.0]
[init]
c = { law = "uniform", low = -1.5, high = 1.5 }
[dynamics]
scheme = "gd"
integrator = "rk4"
dt = 0.1
t_end = 1.0
save_times = [0.0, 0.5, 1.0]
[particles]
n = [8, 16, 32]
seeds = 6
root_seed = 3
[meanfield]
solvers = ["grid", "characteristics"]
grid = { y = 64, c = 16, c_min = -3.0, c_max = 3.0 }
characteristics = { y = 32, c = 8 }
[fluctuations]
method = "influence"
y = 16
c = 6
"""
FIGURES = {"loss.png", "functions.png", "density.png", "lln.png", "clt_qq.png",
           "m_spectrum.png", "baselines.png"}  # baselines: the lazy prediction beside f_0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """particles.nc, meanfield.nc, fluctuations.nc of the tiny config (a few seconds)."""
    base = tmp_path_factory.mktemp("run")
    (base / "tiny.toml").write_text(CONFIG)
    out = base / "out"
    status = run_config(base / "tiny.toml", out, progress=False)
    assert {s for _, s in status.values()} == {"written"}
    return out


@pytest.fixture(scope="module")
def reported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep")
    for f in run_dir.iterdir():
        shutil.copy(f, out / f.name)
    res = report.make_report(out, n_boot=200)
    return out, res


def test_analysis_nc_has_the_named_variables(reported):
    out, res = reported
    with xr.open_dataset(out / "analysis.nc", engine="h5netcdf") as a:
        for v in ("lln_slope", "lln_slope_low", "lln_slope_high", "m_min_eigenvalue"):
            assert a[v].dims == ("t",), v
        assert a["clt_var_ratio"].dims == ("n", "t")
        assert a["clt_var_ratio_stderr"].dims == ("n", "t")
        assert a["m_min_eigenvalue_source"].dims == ("source", "t")
        assert set(a["source"].values) == {"particles", "grid", "characteristics"}
        assert np.all(np.isfinite(a["lln_slope"].values))
        assert np.all(a["lln_slope_low"].values <= a["lln_slope"].values)
        assert np.all(a["lln_slope"].values <= a["lln_slope_high"].values)
        # exact identities hold on the real run (tolerances: docs/propositions.md)
        assert np.all(a["m_min_eigenvalue"].values >= -float(a["m_psd_tolerance"]))
        assert float(a["m_tangent_residual"].max()) <= 1e-12
        assert float(a["m_identity_residual"].max()) <= a["m_identity_residual"].attrs[
            "tolerance"]
        assert json.loads(a.attrs["config"])["particles"]["n"] == [8, 16, 32]
        # the t = 0 prefactor is exact: tr Σ_0 = E c² ∫ φ² dμ = 0.75 e^{-4} I_0(4)
        np.testing.assert_allclose(float(a["lln_trace_sigma"][0]), 0.75 * 0.20700192,
                                   rtol=1e-3)


def test_report_md_has_the_table(reported):
    out, res = reported
    text = (out / "report.md").read_text()
    assert "| prediction | paper | measured | expected | verdict |" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(lines) >= 3 * 5  # LLN, prefactor, CLT rows per save time and more
    for ln in lines:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln.strip().strip("|"))]
        assert len(cells) == 5 and cells[4] in ("PASS", "FAIL", "INCONCLUSIVE", "n.a."), ln
    for key in ("LLN slope", "LLN prefactor", "CLT variance ratio", "CLT Gaussianity",
                "M[ρ] ⪰ 0", "identity (2.39)", "tangent kernel", "losses non-increasing",
                "time to reach", "self-healing"):
        assert key in text, key
    exact = [ln for ln in lines if "⪰ 0" in ln or "identity (2.39)" in ln
             or "tangent kernel" in ln or "non-increasing" in ln]
    assert exact and all(ln.rstrip(" |").endswith("PASS") for ln in exact)
    assert "truncated mass" in text  # THEORY §4: report the c domain with Σ_t
    assert sum(res["verdicts"].values()) == len(lines)


def test_figures_are_pngs(reported):
    out, res = reported
    names = {p.name for p in (out / "figures").iterdir()}
    assert names == FIGURES  # and no temporary left behind
    for name in FIGURES:
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_rerun_overwrites_atomically(reported):
    out, _ = reported
    before = (out / "analysis.nc").stat().st_mtime_ns
    report.make_report(out, n_boot=50, figures=False)
    assert (out / "analysis.nc").stat().st_mtime_ns > before
    # no temporary left (the manifest lists mfpc's files: analysis.store.runfolder)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".mfpc-manifest.json"]


def test_missing_inputs_are_reported_not_fatal(run_dir, tmp_path):
    shutil.copy(run_dir / "particles.nc", tmp_path / "particles.nc")
    res = report.make_report(tmp_path, n_boot=50, figures=True)
    text = (tmp_path / "report.md").read_text()
    assert "meanfield.nc is missing" in text and "fluctuations.nc is missing" in text
    with xr.open_dataset(tmp_path / "analysis.nc", engine="h5netcdf") as a:
        for v in REQUIRED:
            assert v in a
        assert np.all(np.isnan(a["lln_slope"].values))
        assert list(a["source"].values) == ["particles"]
    # what needs f_0 does not apply: listed below the table with the reason, not as rows
    table, below = text.split("## Checks that do not apply to this run")
    names = [r.prediction for r in res["not_applicable"]]
    for name in ("LLN slope of E‖f_n − f_0‖²_μ vs n", "CLT: variance ratio and Gaussianity",
                 "self-healing: excess loss E ℓ(f_n) − ℓ_0"):
        assert name in names and f"\n- {name}: needs " in below, name
        assert f"| {name}" not in table
    assert "add [meanfield]" in below
    assert f"{len(names)} not applicable" in table
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]  # after the header
    assert sum(res["verdicts"].values()) == len(rows) and res["verdicts"]["n.a."] == 0
    # without a mean field the scaling figures of the paper's Sec. 4 are drawn
    assert {p.name for p in res["figures"]} == {"loss.png", "functions.png", "m_spectrum.png",
                                                "training_loss.png", "loss_n.png",
                                                "signed_pos_n.png", "signed_neg_n.png"}


def test_cli_report(reported, tmp_path, capsys):
    out, _ = reported
    assert main(["report", str(out), "--no-figures"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 2
    assert "has no particles.nc" in capsys.readouterr().err


def test_checks_that_cannot_apply_name_the_reason():
    # the wrong scheme and too many x nodes are reasons in words, not rows
    from analysis.checks.losses import losses_rows
    from analysis.checks.mkernel import M_MAX_Q, mkernel_rows
    from analysis.checks.rows import NotApplicable, RowContext

    a = xr.Dataset({"loss_max_increase": ("n", [-0.1, -0.2]),
                    "loss_0_max_increase": ("solver", [-0.3]),
                    "time_to_level_slope": 0.0, "time_to_level_slope_low": -0.5,
                    "time_to_level_slope_high": 0.5, "loss_level": 0.1,
                    "final_loss_slope": -2.0, "final_loss_slope_low": -2.5,
                    "final_loss_slope_high": -1.5, "final_time": 10.0,
                    "m_gram_min_ratio": ("n", [1e-3, 1e-4])},
                   coords={"n": [16, 32], "t": [0.0, 10.0]})
    ctx = RowContext(config={"dynamics": {"scheme": "langevin"}}, scheme="langevin",
                     seeds=8, level=0.975, p_min=0.025, z_max=2.24, k_t=5, k_95=4,
                     alpha=None, meanfield=False, fluctuations=False, nodes=M_MAX_Q + 1)
    rows = losses_rows(a, ctx) + mkernel_rows(a, ctx)
    na = {r.prediction: r.reason for r in rows if isinstance(r, NotApplicable)}
    assert "langevin" in na["losses non-increasing (GD), all n and seeds"]
    assert "langevin" in na["mean-field loss ℓ(f_0) non-increasing"]
    assert f"Q = {M_MAX_Q + 1}" in na["M[ρ] ⪰ 0 and identity (2.39)"]
    assert "Gram matrix" in na["M[ρ] ⪰ 0 and identity (2.39)"]
    # the time to a level applies to every run: a row
    assert [r.prediction.startswith("time to reach") for r in rows
            if not isinstance(r, NotApplicable)] == [True]
    # a GD run: the monotonicity rows are rows
    gd = ctx._replace(scheme="gd", meanfield=True)
    assert [r.verdict for r in losses_rows(a, gd)[:2]] == ["PASS", "PASS"]
