"""The characteristics solver: quadrature of rho_in, geometric convergence, reuse of the engine."""
import numpy as np
import pytest

from meanfield.characteristics import c_rule, characteristic_nodes, solve_characteristics
from particles.laws import CLaw
from particles.presets import circle_problem


@pytest.fixture
def circle():
    return circle_problem(2.0, 64, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))


@pytest.mark.parametrize("law", [CLaw("normal", mean=0.3, std=0.7), CLaw("uniform", low=-1, high=2)])
def test_c_rule_integrates_polynomials_exactly(law):
    # An m-node Gauss rule is exact for polynomials of degree <= 2m - 1.
    c, w = c_rule(law, 6)
    samples = law.dist.moment
    for k in range(12):
        np.testing.assert_allclose(np.sum(w * c**k), samples(k), rtol=1e-12, atol=1e-12)


def test_initial_f0_is_exact(circle):
    # f_0(0, x) = E[c] * integral phi(x, y) dy/2pi = E[c] e^{-kappa} I_0(kappa): zero for U[-1.5, 1.5];
    # use a law with nonzero mean to make it a real check.
    from scipy import special

    p = circle_problem(2.0, 64, cos=[0.0, 1.0], c_law=CLaw("normal", mean=0.4, std=1.0))
    ds = solve_characteristics(p, [0.0], grid={"y": 32, "c": 4})
    np.testing.assert_allclose(ds["f_0_characteristics"].values[0],
                               0.4 * special.ive(0, 2.0), rtol=1e-13)
    y, c, w = characteristic_nodes(p, 32, 4)
    assert y.shape == (128, 1) and c.shape == (128,)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-14)


def test_geometric_convergence_in_node_counts(circle):
    # Smooth flow map + spectral quadratures: the error must fall geometrically. A method
    # of algebraic order p gains 2^p per doubling of the nodes; demanding more than x10 at
    # every doubling (and 1e-9 at the finest) rules out any order below log2(10) = 3.3,
    # i.e. anything slower than the spectral rates of the trapezoid and Gauss rules.
    ts = [0.0, 2.0]
    ref = solve_characteristics(circle, ts,
                                grid={"y": 128, "c": 24})["f_0_characteristics"].values[-1]
    errs = []
    for m in (1, 2, 4, 8):
        f = solve_characteristics(circle, ts,
                                  grid={"y": 8 * m, "c": 2 * m})["f_0_characteristics"].values[-1]
        errs.append(np.max(np.abs(f - ref)))
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all(ratios > 10), errs
    assert errs[-1] < 1e-9, errs


def test_characteristics_loss_non_increasing(circle):
    ds = solve_characteristics(circle, np.linspace(0, 10, 21), grid={"y": 32, "c": 8})
    assert np.all(np.diff(ds["loss_0_characteristics"].values) <= 1e-14)
