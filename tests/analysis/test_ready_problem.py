"""A problem built in Python runs through mfpc's sections and its report (README example)."""
import json
import re
from pathlib import Path

import xarray as xr

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_ready_problem_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = next(b for b in blocks if "run_experiment" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102
    out = tmp_path / "runs" / "mine"
    with xr.open_dataset(out / "particles.nc", engine="h5netcdf") as ds:
        cfg = json.loads(ds.attrs["config"])
        assert cfg["problem"] == {"kind": "user", "description": "the circle, built in Python"}
        assert ds.attrs["complete"] == 1 and ds.sizes["n"] == 2
    with xr.open_dataset(out / "analysis.nc", engine="h5netcdf") as a:
        assert a["loss_max_increase"].dims == ("n",)
    assert (out / "report.md").is_file()


def test_report_of_a_ready_problem_needs_it(tmp_path, monkeypatch, capsys):
    """Without the problem, `mfpc report` cannot rebuild a kind = "user" problem: exit 2."""
    from analysis.cli import main

    test_readme_ready_problem_example_runs(tmp_path, monkeypatch)
    assert main(["report", str(tmp_path / "runs" / "mine"), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "make_report(DIR, problem=problem)" in err and "Traceback" not in err
