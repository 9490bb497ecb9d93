"""The one table of long names and units (particles.engine.variables) behind every file."""
import numpy as np
import pytest
import xarray as xr

from particles.engine.results import check_cf, finish
from particles.engine.variables import VARIABLES, cf_meta, long_name_units


def test_every_entry_has_a_long_name_and_a_unit():
    for name, (long_name, units) in VARIABLES.items():
        assert long_name.strip() and units == "1", name


def test_problem_dependent_names():
    assert long_name_units("y_3")[0] == "unit position, coordinate 3 of y (cell centre)"
    assert long_name_units("y_x") is None and long_name_units("no such variable") is None


def test_finish_takes_every_file_s_names_from_the_table():
    """A solver variable, an analysis variable and a grid axis of N = 2, with no ``meta``:
    all named from the table; a name it lacks is refused, naming the table."""
    ds = xr.Dataset({"f_0": (("t", "x"), np.zeros((2, 3))), "lln_slope": ((), 0.0),
                     "rho_0": (("t", "y_0", "y_1", "c"), np.zeros((2, 2, 2, 2)))},
                    coords={"t": [0.0, 1.0], "x": [0.0, 1.0, 2.0], "y_0": [0.0, 1.0],
                            "y_1": [0.0, 1.0], "c": [0.0, 1.0]})
    finish(ds, title="t", command="test")
    assert check_cf(ds) == []
    assert ds["lln_slope"].attrs["long_name"] == VARIABLES["lln_slope"][0]
    assert ds["y_1"].attrs["long_name"] == long_name_units("y_1")[0]
    assert set(cf_meta(ds)) == set(ds.variables)
    with pytest.raises(KeyError, match="particles.engine.variables.VARIABLES"):
        finish(xr.Dataset({"unnamed": ((), 0.0)}), title="t", command="test")
