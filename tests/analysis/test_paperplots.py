"""The figures of the paper's Section 4: nodes of the slice (4.7) and of the
great circles (4.12), the network evaluated there, and every figure drawn from a small run
(looked at by eye when written; here: drawn, saved, non-trivial)."""
import numpy as np
import pytest

from analysis.report import paperfigures as pp
from analysis.report.figures import save
from analysis.checks.scaling import final_scaling
from particles.presets import sigmoid_problem, sphere_problem
from tests.analysis.test_scaling import synthetic


@pytest.mark.parametrize("d", [3, 5, 10])
def test_slice_and_great_circles_lie_on_the_sphere(d):
    th, ph, x = pp.slice_nodes(d, m=9)
    assert x.shape == (9 * 18, d)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), np.sqrt(d), rtol=1e-14)
    assert np.all(x[:, 3:] == 0)
    # theta = 0 is the pole x_3 = sqrt(d)
    np.testing.assert_allclose(x[0], np.sqrt(d) * np.eye(d)[2], atol=1e-15)
    th, x = pp.great_circle_nodes(d, 1, 2, m=50)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), np.sqrt(d), rtol=1e-14)
    np.testing.assert_allclose(x[:, 1], np.sqrt(d) * np.cos(th))


def test_slice_needs_three_dimensions():
    with pytest.raises(ValueError, match="d >= 3"):
        pp.slice_nodes(2)


def test_network_at_is_the_mean_of_units_and_skips_padding():
    p = sigmoid_problem(4, 50, "teacher", 3)
    rng = np.random.default_rng(0)
    y, c = rng.normal(size=(5, 5)), rng.normal(size=5)
    x = rng.normal(size=(7, 4))
    want = np.mean(c[:, None] * p.kernel.phi(x, y), axis=0)
    np.testing.assert_allclose(pp.network_at(p, y, c, x), want, rtol=1e-13)
    # NaN-padded units (a smaller n stored in a larger array) are left out
    yp = np.concatenate([y, np.full((2, 5), np.nan)])
    cp = np.concatenate([c, np.full(2, np.nan)])
    np.testing.assert_allclose(pp.network_at(p, yp, cp, x), want, rtol=1e-13)


def test_every_figure_is_drawn(tmp_path):
    sc = final_scaling(synthetic(R=3, bias=3.0), n_boot=50, rng=np.random.default_rng(0))
    paths = [save(pp.loss_vs_n(sc), tmp_path / "loss_n.png"),
             save(pp.loss_vs_n(sc, "signed_pos", label="(4.11)"), tmp_path / "signed.png"),
             save(pp.training_loss(synthetic(R=2), quench=0.5), tmp_path / "train.png")]
    p = sphere_problem(5, 1.0, 200, "interpolation")
    rng = np.random.default_rng(1)
    y = rng.normal(size=(16, 5))
    y *= np.sqrt(5) / np.linalg.norm(y, axis=1, keepdims=True)
    c = rng.normal(size=16)
    paths.append(save(pp.slice_levels(p, y, c, m=21), tmp_path / "slice.png"))
    paths.append(save(pp.great_circles(p, [("n = 16", y, c)], m=40), tmp_path / "gc.png"))
    # a drawn figure, not an empty canvas: larger than the PNG of an empty figure of
    # the largest size drawn here (the great circles: 12 x 3 in), saved the same way
    import matplotlib.pyplot as plt

    empty = save(plt.figure(figsize=(12.0, 3.0)), tmp_path / "empty.png").stat().st_size
    for path in paths:
        assert path.stat().st_size > empty, (path, empty)
