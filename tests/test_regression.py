"""Regression pin: the shipped examples (shrunk) give the numbers of commit d954fdd.

``tests/data/regression.npz`` was written by ``python -m tests.regression`` on the code
before problems were composed from parts and every solver ran on one time loop (issue 8).
The presets (``kind = "circle" | "sigmoid" | "sphere"``) must expand to parts that give the
same numbers to round-off: 1e-12 relative to each array's largest entry (a change of
arithmetic order moves results by a few ulps, ~1e-15; any change of method moves them by
far more than 1e-12).
"""
import numpy as np
import pytest

from tests.regression import DATA, compute

RTOL = 1e-12


@pytest.fixture(scope="module")
def now():
    return compute()


def test_every_pinned_array_is_reproduced(now):
    ref = np.load(DATA)
    assert set(ref.files) == set(now), "the shrunk runs changed: regenerate only on purpose"
    for key in ref.files:
        a, b = ref[key], now[key]
        assert a.shape == b.shape, key
        scale = np.nanmax(np.abs(a))
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=key)
        np.testing.assert_allclose(np.nan_to_num(b), np.nan_to_num(a), rtol=0,
                                   atol=RTOL * scale, err_msg=key)
