"""Verification of the README's main job on examples/circle.toml (slow: minutes)."""
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_main_job_on_the_circle_example(tmp_path):
    out = tmp_path / "circle"
    assert main(["run", str(ROOT / "examples" / "circle.toml"), "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["report", str(out)]) == 0
    with xr.open_dataset(out / "analysis.nc", engine="h5netcdf") as a:
        t = a["t"].values
        later = t > 0
        # the LLN slope interval contains -1 at every save time after t = 0
        lo, hi = a["lln_slope_low"].values[later], a["lln_slope_high"].values[later]
        assert np.all((lo <= -1) & (-1 <= hi)), (lo, hi)
        # CLT variance ratios within their stated uncertainty of 1 (the report's per-time
        # z bound, Bonferroni over the save times: |z| <= 2.58 for 5 times)
        z = a["clt_var_ratio_z"].values
        assert np.all(np.abs(z[np.isfinite(z)]) <= 2.58), z
        # M-kernel minimum eigenvalue >= -1e-12 relative to the largest, every source
        m = a["m_min_eigenvalue_source"].values
        assert np.all(m >= -1e-12), m
    assert (out / "report.md").read_text().count("FAIL |") == 0
    assert len(list((out / "figures").glob("*.png"))) >= 6
