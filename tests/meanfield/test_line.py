"""The non-periodic 1-D mean field: the Gaussian line problem of ``examples/
gaussian_line.toml``, grid (walls in y) against characteristics.

phi is the normalised Gaussian kernel with sigma² = 1/2, mu = dx on R (trapezoid nodes on
[-6, 6]), the target a signed mixture of three Gaussians, y ~ U[-2, 2] and c ~ U[-2, 2]
(bounded c: THEORY §4). Resolution study (max_x |f_0^grid - f_0^char| at t = 2, 4, with
characteristics at 48 x 16 nodes, whose own error against 24 x 8 nodes is 2e-7):

    grid y x c cells   96 x 48   192 x 96   384 x 192
    error              2.0e-4    9.4e-5     3.7e-5      (max |f_0| = 0.19)

The grid's error is first order in the cell size (it halves with the cells: the
limiter's clipping at the edges of rho_in), so at 192 x 96 the tolerance 2e-4 (about
1e-3 of max |f_0|, twice the measured error) holds with margin, a wrong potential or
wall moves f_0 by O(1e-2), and the test also asks that the error shrink with the cells.
"""
import numpy as np
import pytest

from meanfield.characteristics import solve_characteristics
from meanfield.grid.solve import solve_grid
from particles.build import build_problem

LINE = {
    "kernel": {"kind": "gaussian", "sigma": 0.7071067811865476, "normalised": True},
    "measure": {"kind": "lebesgue", "low": [-6.0], "high": [6.0], "nodes": 81},
    "target": {"kind": "gaussian_mixture",
               "weights": [0.3333333333333333, -0.6666666666666666, 0.3333333333333333],
               "centres": [[-2.0], [0.0], [2.0]],
               "sigmas": [0.7071067811865476, 1.0, 0.7071067811865476]},
}
INIT = {"y": {"law": "uniform", "low": [-2.0], "high": [2.0]},
        "c": {"law": "uniform", "low": -2.0, "high": 2.0}}
TS = [0.0, 2.0, 4.0]
TOL = 2e-4


@pytest.fixture(scope="module")
def line():
    return build_problem(LINE, INIT)


@pytest.fixture(scope="module")
def characteristics(line):
    return solve_characteristics(line, TS,
                                 grid={"y": 48, "c": 16, "dt": 0.05})["f_0_characteristics"].values


def _grid(problem, ny, nc):
    ds = solve_grid(problem, TS,
                    grid={"y": ny, "c": nc, "c_min": -3.0, "c_max": 3.0, "y_low": [-4.0], "y_high": [4.0]},
                    progress=False, save_rho=False)
    return ds["f_0"].values, ds


def test_grid_and_characteristics_agree_on_the_line(line, characteristics):
    f_fine, _ = _grid(line, 192, 96)
    f_coarse, _ = _grid(line, 96, 48)
    err_fine = np.abs(f_fine - characteristics)[1:].max()
    err_coarse = np.abs(f_coarse - characteristics)[1:].max()
    assert err_fine <= TOL, err_fine
    assert err_coarse > 1.5 * err_fine, (err_coarse, err_fine)  # converges with the cells
    np.testing.assert_allclose(f_fine[0], characteristics[0], rtol=0, atol=1e-12)


def test_the_default_box_of_a_uniform_law_is_widened(line):
    """Without y_range the grid takes the y law's box widened by BOX_MARGIN."""
    from meanfield.grid.cells import make_grid
    from particles.laws import BOX_MARGIN

    g = make_grid(line, 32, 8)
    assert g.y_periodic == (False,)
    assert (g.y_low[0], g.y_high[0]) == (-2.0 - 4 * BOX_MARGIN, 2.0 + 4 * BOX_MARGIN)


@pytest.mark.slow
def test_gaussian_line_example_end_to_end(tmp_path):
    """``examples/gaussian_line.toml`` runs and reports with no n.a. row for the LLN, CLT,
    M-kernel and self-healing predictions (about 40 s on 2 cores)."""
    from pathlib import Path

    from analysis.cli import main

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "line"
    assert main(["run", str(root / "examples" / "gaussian_line.toml"), "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["report", str(out), "--no-figures"]) == 0
    rows = [r for r in (out / "report.md").read_text().splitlines() if r.startswith("| ")]
    verdict = {}
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split(" | ")]
        verdict.setdefault(cells[0].split(",")[0].split(" ")[0], []).append(cells[-1])
    for key in ("LLN", "CLT", "M[ρ]", "M[ρ_n]", "leading", "identity", "self-healing:"):
        assert key in verdict, (key, sorted(verdict))
        assert "n.a." not in verdict[key], (key, verdict[key])
