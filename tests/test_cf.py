"""CF-1.8 on every file ``mfpc run`` and ``mfpc report`` write.

Two small circle configs with every section (grid and characteristics with the influence
method; the grid with the ensemble method) run through ``analysis.cli.main`` in-process;
each ``.nc`` file in the output folder is read back and :func:`particles.engine.results.check_cf`
must find nothing: ``Conventions``, ``title``, ``history`` (UTC time and the command line),
``source``, ``references``; ``long_name`` and ``units`` on every variable and coordinate;
int32 integers; no ``_FillValue`` on coordinates.
"""
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.cli import main
from particles.engine.results import check_cf

from tests.analysis.test_cli import write_toml

ROOT = Path(__file__).resolve().parents[1]
FILES = {"particles.nc", "meanfield.nc", "fluctuations.nc", "analysis.nc"}


def config(method):
    cfg = tomllib.loads((ROOT / "examples" / "circle.toml").read_text())
    cfg["particles"] = {"n": [8, 16], "seeds": 3, "root_seed": 1}
    cfg["dynamics"].update(t_end=1.0, save_times=[0.0, 0.5, 1.0], dt=0.1)
    if method == "influence":
        cfg["meanfield"] = {"solvers": ["grid", "characteristics"],
                            "grid": {"y": 64, "c": 48, "c_min": -3.0, "c_max": 3.0},
                            "characteristics": {"y": 32, "c": 8}}
        cfg["fluctuations"] = {"method": "influence", "y": 16, "c": 4}
    else:
        cfg["meanfield"] = {"solvers": ["grid"],
                            "grid": {"y": 64, "c": 48, "c_min": -4.0, "c_max": 4.0}}
        cfg["fluctuations"] = {"method": "ensemble", "members": 8}
    return cfg


@pytest.mark.parametrize("method", ["influence", "ensemble"])
def test_every_file_written_is_cf(tmp_path, method):
    cfgp = write_toml(tmp_path / "c.toml", config(method))
    out = tmp_path / "out"
    assert main(["run", str(cfgp), "--out", str(out), "--no-progress"]) == 0
    assert main(["report", str(out), "--no-figures"]) == 0
    written = {p.name for p in out.glob("*.nc")}
    assert written == FILES
    for name in sorted(written):
        with xr.open_dataset(out / name, engine="h5netcdf") as ds:
            assert check_cf(ds) == [], name
            assert ds.attrs["Conventions"] == "CF-1.8"
            command = (f"mfpc report {out}" if name == "analysis.nc"
                       else f"mfpc run {cfgp} --out {out}")
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ: " + re.escape(command),
                            ds.attrs["history"]), (name, ds.attrs["history"])
            assert ds.attrs["title"].startswith("mfpc: ")
            for c in ds.coords:
                assert "_FillValue" not in ds[c].attrs and \
                    ds[c].encoding.get("_FillValue") is None, (name, c)
                if np.issubdtype(ds[c].dtype, np.integer):
                    assert ds[c].dtype == np.int32, (name, c)
    with xr.open_dataset(out / "analysis.nc", engine="h5netcdf") as a:
        # the coordinates of the checks carry their own names (not a solver's)
        for c in ("solver", "source", "clt_mode", "m_mode", "m_k"):
            assert a[c].attrs["long_name"] and a[c].attrs["units"] == "1", c
