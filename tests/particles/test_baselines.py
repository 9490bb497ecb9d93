"""Monte-Carlo units (particles.baselines): G of (2.46), the units, their expected loss."""
import numpy as np
import pytest
from scipy import special

from particles.baselines import (monte_carlo_expected_loss, monte_carlo_units,
                                 monte_carlo_variance, solve_G)
from particles.closed_forms import circle_fourier_F, circle_K
from particles.laws import CLaw
from particles.presets import circle_problem
from particles.simulate import member_rng

KAPPA = 2.0
COS, SIN = [0.1, 0.4, 0.0, 0.2], [0.0, 0.6, -0.3]


def _circle(**kw):
    return circle_problem(KAPPA, 64, COS, SIN, c_law=CLaw("uniform", low=-1.5, high=1.5), **kw)


def test_circle_G_is_its_fourier_closed_form_and_solves_KG_F():
    p = _circle()
    sol = solve_G(p)
    assert sol.method == "exact"
    y = np.linspace(0, 2 * np.pi, 37)[:, None]
    # the closed form written out: G_k = a_k e^{kappa} / (2 pi I_k(kappa))
    k = np.arange(4)
    a, b = np.zeros(4), np.zeros(4)
    a[:len(COS)], b[:len(SIN)] = COS, SIN
    Gk = lambda v: v / (2 * np.pi * special.iv(k, KAPPA) * np.exp(-KAPPA))  # noqa: E731
    ref = np.cos(y * k) @ Gk(a) + np.sin(y * k) @ Gk(b)
    # the two differ by round-off of terms of size max|G| ~ 2: 1e-13 leaves 200 eps
    assert np.max(np.abs(sol.G(y) - ref)) < 1e-13 * np.max(np.abs(ref))
    # K G = F with circle_K and circle_fourier_F: the trapezoid rule over y' on m nodes is
    # exact for the modes below m of the periodic integrand K(y, .)G(.); K's modes beyond
    # m - 4 = 252 are below e^{-2 kappa} I_252(2 kappa) ~ 1e-300, so what is left is the
    # round-off of m terms: m eps max|K G| ~ 256 * 2.2e-16 * 1 < 1e-12
    m = 256
    yp = (2 * np.pi * np.arange(m) / m)[:, None]
    K, _ = circle_K(p.kernel)
    F, _ = circle_fourier_F(p.kernel, p.target)
    KG = K(y, yp) @ sol.G(yp) * (2 * np.pi / m)
    assert np.max(np.abs(KG - F(y))) < 1e-12
    assert sol.residual < 1e-12  # the same statement on the x nodes


def test_regularised_G_on_the_circle_is_near_the_exact_one():
    """The Tikhonov solve shrinks mode k of h by lam/(lam_k + lam); lam_k >= (2 pi g_3^2)
    / (2 pi g_0^2) ~ 8.7e-3 of the top for k <= 3 (kappa = 2), so with lam = 1e-10 of the
    top the relative error is ~1e-8; round-off on the null directions of f enters h
    through T* damped by sqrt(lam_j) / (lam_j + lam) <= 1/(2 sqrt(lam)) ~ 5e4 times
    eps |f| ~ 1e-11. 1e-6 of max|h| bounds both with a margin of 100."""
    p = _circle()
    exact = solve_G(p)

    class NotFourier:  # the same target, hidden from the exact path
        name = "parts"

        def __init__(self, t):
            self.t = t

        def __call__(self, x):
            return self.t(x)

    q = p.replace(target=NotFourier(p.target))
    reg = solve_G(q)
    assert reg.method == "regularised" and "regularised" in reg.description
    y = np.linspace(0, 2 * np.pi, 41)[:, None]
    assert np.max(np.abs(reg.h(y) - exact.h(y))) < 1e-6 * np.max(np.abs(exact.h(y)))
    assert reg.residual < 1e-6


def test_units_share_the_y_of_the_trained_member():
    p = _circle()
    y, c = monte_carlo_units(p, member_rng(3, 1, 2), 50)
    y2, _ = p.sample_init(member_rng(3, 1, 2), 50)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(c, solve_G(p).h(y))


@pytest.mark.parametrize("n", [16, 128])
def test_ensemble_loss_is_the_exact_expected_loss(n):
    """S members of n Monte-Carlo units: their mean loss is within 3 standard errors
    (sample std / sqrt(S)) of (1/2n) Var (fixed seeds: a deterministic test)."""
    p = _circle()
    sol = solve_G(p)
    S = 400
    units = [monte_carlo_units(p, member_rng(7, 0, s), n, sol) for s in range(S)]
    y = np.stack([u[0] for u in units])
    c = np.stack([u[1] for u in units])
    loss = p.loss(p.network(y, c / n))
    exact = monte_carlo_expected_loss(p, n, sol)
    se = loss.std(ddof=1) / np.sqrt(S)
    assert abs(loss.mean() - exact) < 3 * se
    var, bias = monte_carlo_variance(p, sol)
    assert bias < 1e-25  # exact G: E f_n = f up to the rule's round-off
    # the rate n^{-1} by construction
    assert np.isclose(monte_carlo_expected_loss(p, 2 * n, sol), exact / 2, rtol=1e-12)


def test_a_y_law_without_a_rule_is_refused_with_the_reason():
    from particles.laws import YUniformSphere
    with pytest.raises(ValueError, match="y law 'uniform_sphere'"):
        solve_G(_circle().replace(y_law=YUniformSphere(2)))


# -- random features: train = ["c"] ------------------------------------------------------
from particles.dynamics import Dynamics, c_velocity  # noqa: E402
from particles.simulate import simulate  # noqa: E402


@pytest.mark.parametrize("dyn", [
    Dynamics("gd", "euler", 0.1, train=("c",)),
    Dynamics("gd", "rk4", 0.1, train=("c",)),
    Dynamics("gd", "euler", 0.1, form="kernel", train=("c",)),
    Dynamics("sgd", "euler", 0.1, batch=8, train=("c",)),
    Dynamics("langevin", "euler", 0.1, temperature=1e-3, train=("c",)),
])
def test_random_features_keep_y_bitwise_and_train_c(dyn):
    p = _circle()
    ds = simulate(p, [16], 3, dyn, [0.0, 0.5, 2.0], root_seed=5, progress=False)
    y = ds.y.values
    assert np.array_equal(y[:, :, 1:], np.broadcast_to(y[:, :, :1], y[:, :, 1:].shape),
                          equal_nan=True)
    assert not np.array_equal(ds.c.values[:, :, 0], ds.c.values[:, :, -1])
    if dyn.scheme == "gd":
        assert np.all(ds.loss.values[..., -1] < ds.loss.values[..., 0])
    # the same draw as trained units of the same (n, seed)
    full = simulate(p, [16], 3, Dynamics("gd", "euler", 0.1), [0.0], root_seed=5,
                    progress=False)
    np.testing.assert_array_equal(full.y.values[:, :, 0], y[:, :, 0])


@pytest.mark.parametrize("form", ["data", "kernel"])
def test_c_velocity_is_the_c_part_of_the_full_velocity(form, rng):
    """Two paths to the same sums over Q = 64 nodes (or n = 12 units): round-off of
    64 terms of size <= sup|phi| |r| ~ 2, 64 * 2.2e-16 * 2 < 1e-13."""
    p = _circle()
    y = rng.uniform(0, 2 * np.pi, (2, 12, 1))
    c = rng.normal(size=(2, 12))
    _, vc = p.velocity(y, c, 1 / 12, form=form)
    np.testing.assert_allclose(c_velocity(p, y, c, 1 / 12, form=form), vc, rtol=0, atol=1e-13)


def test_other_train_values_are_refused():
    for bad in [("y",), ("c", "c"), ("z",), "c"]:
        with pytest.raises(ValueError, match="dynamics.train"):
            Dynamics("gd", train=bad)
    assert "train" not in Dynamics("gd").params()  # the default keeps run ids
    assert Dynamics("gd", train=["c"]).params()["train"] == ["c"]


def test_baseline_ensembles_share_each_members_draw_of_y():
    """Members (n, seed) of the trained, Monte-Carlo and random-features ensembles have
    the same y: the Monte-Carlo network is the one of the trained member's y with
    c = h(y), the random features' run is the trained run's draw with y frozen."""
    from particles.baselines import baseline_ensembles

    p = _circle()
    dyn = Dynamics("gd", "euler", 0.1)
    ns, ts = [8, 16], [0.0, 0.3]
    trained = simulate(p, ns, 3, dyn, ts, root_seed=9, progress=False)
    extra = baseline_ensembles(p, ns, 3, dyn, ts, ["monte_carlo", "random_features"],
                               root_seed=9)
    h = solve_G(p).h
    for k, n in enumerate(ns):
        y = trained.y.values[k, :, 0, :n]  # wrapped to [0, 2 pi): h is 2 pi-periodic
        f = p.network(y, h(y) / n)
        # the same sums over n units of phi at the same y up to the wrap: round-off
        np.testing.assert_allclose(extra.f_n_monte_carlo.values[k], f, atol=1e-13)
    rf = simulate(p, ns, 3, Dynamics("gd", "euler", 0.1, train=("c",)), ts, root_seed=9,
                  progress=False)
    np.testing.assert_array_equal(rf.y.values[:, :, 0], trained.y.values[:, :, 0])
    np.testing.assert_array_equal(extra.f_n_random_features.values, rf.f_n.values)
    assert extra.loss_monte_carlo.dims == ("n", "seed")


def test_monte_carlo_refusal_names_the_reason():
    from particles.baselines import monte_carlo_refusal
    from particles.laws import YUniformSphere

    assert monte_carlo_refusal(_circle()) is None
    why = monte_carlo_refusal(_circle().replace(y_law=YUniformSphere(2)))
    assert "uniform_sphere" in why and "drop 'monte_carlo'" in why
