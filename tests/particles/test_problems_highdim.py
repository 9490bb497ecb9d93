"""The high-dimensional problems (paper Sec. 4): rbf, sphere, sigmoid.

Closed forms against quadrature, the interpolation energy (4.5), the sphere constraint
along runs, problem-level seeding, the config errors, and the example configs.
"""
import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

import particles
from particles.engine.config import ConfigError
from particles.presets import problem_rngs, rbf_problem
from particles.closed_forms import rbf_gaussian_K
from particles.kernels import GaussianRBF
from particles.measures import GaussianMeasure
from particles.build import build_problem
from particles.targets import ThreeSpin

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Central differences with h = 1e-5 on O(1) smooth functions: see test_kernels.py.
from tests.particles.test_kernels import FD, _fd  # noqa: E402


SPHERE = {"kind": "sphere", "d": 5, "alpha": 1.0, "nodes": 500, "energy": "interpolation",
          "target": {"kind": "3spin"}}
RBF = {"kind": "rbf", "d": 1, "sigma": 0.7, "nodes": 64, "target": {"kind": "teacher",
                                                                    "units": 3}}
SIGMOID = {"kind": "sigmoid", "d": 4, "nodes": 300, "target": {"kind": "teacher", "units": 3}}


# -- rbf: closed forms for mu = N(0, s^2 I) -----------------------------------------
# Gauss–Hermite with m nodes is exact for polynomials of degree < 2m; phi(x, y) phi(x, y')
# is entire but narrower than the weight (width sigma/sqrt 2 against scale), so the
# error falls geometrically: for sigma = 0.8, scale = 1.3 it is 1e-3, 2e-6, 3e-9, 3e-15
# at m = 20, 40, 60, 100. m = 150 per axis is exact to round-off: rtol 1e-11.
@pytest.mark.parametrize("d", [1, 2])
def test_rbf_K_and_F_against_gauss_hermite(d):
    kernel, scale = GaussianRBF(d, 0.8), 1.3
    mu = GaussianMeasure(d, 150**d, scale=scale)
    rng = np.random.default_rng(d)
    y = rng.standard_normal((2, 4, d))
    p = kernel.phi(mu.nodes, y)
    K_quad = np.einsum("bnq,bmq,q->bnm", p, p, mu.weights)
    K, _ = rbf_gaussian_K(kernel, scale)
    np.testing.assert_allclose(K(y, y), K_quad, rtol=1e-11, atol=1e-14)

    problem = rbf_problem(d, 0.8, 150**d, 4, scale=scale, seed=3)
    F_quad = np.einsum("bnq,q->bn", problem.kernel.phi(problem.x, y), problem.w * problem.f_x)
    np.testing.assert_allclose(problem.kernel_form.F(y), F_quad, rtol=1e-11, atol=1e-14)


def test_rbf_grad_F_and_grad_K_against_finite_differences():
    problem = rbf_problem(3, 0.9, 200, 4, scale=1.2, seed=1)
    kf = problem.kernel_form
    rng = np.random.default_rng(2)
    y, y2 = rng.standard_normal((4, 3)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(kf.grad_F(y), _fd(kf.F, y), **FD)
    for i in range(4):
        np.testing.assert_allclose(kf.grad_K(y, y2)[i], _fd(lambda yi: kf.K(yi[None], y2)[0], y[i]),
                                   **FD)


def test_rbf_velocity_kernel_form_equals_data_form_in_d1():
    """d = 1 with 150 Gauss–Hermite nodes: the quadrature is exact to round-off (above),
    so both forms of (2.1) agree to 1e-11."""
    problem = rbf_problem(1, 0.7, 150, 5, seed=4)
    rng = np.random.default_rng(5)
    y, c = rng.standard_normal((2, 9, 1)), rng.standard_normal((2, 9))
    vy_d, vc_d = problem.velocity(y, c, 1 / 9, form="data")
    vy_k, vc_k = problem.velocity(y, c, 1 / 9, form="kernel")
    np.testing.assert_allclose(vc_k, vc_d, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(vy_k, vy_d, rtol=1e-11, atol=1e-12)


# -- sphere: the interpolation energy (4.5) -------------------------------------------
@pytest.mark.parametrize("target", [{"kind": "3spin"}, {"kind": "teacher", "units": 4}])
def test_sphere_kernel_form_is_4_5_and_projected_gradient_of_energy(target):
    cfg = {**SPHERE, "target": target}
    problem = build_problem(cfg)
    d, alpha, n = 5, 1.0, 6
    rng = np.random.default_rng(6)
    y, c = problem.sample_init(rng, n)
    c = 3.0 * c
    f = problem.target
    vy, vc = problem.velocity(y[None], c[None], 1.0 / n, form="kernel")
    # (4.5) written out with phi = exp(alpha (y.y' - d)) and C_i C_j
    phi = np.exp(alpha * (y @ y.T - d))
    vc_45 = f(y) - phi @ c / n
    vy_45 = c[:, None] * f.grad(y) - (alpha / n) * c[:, None] * (phi * c) @ y
    vy_45 -= np.sum(vy_45 * y, -1, keepdims=True) * y / d  # the Lagrange multiplier
    np.testing.assert_allclose(vc[0], vc_45, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(vy[0], vy_45, rtol=1e-12, atol=1e-12)

    def energy(yy, cc):
        return -cc @ f(yy) + cc @ np.exp(alpha * (yy @ yy.T - d)) @ cc / (2 * n)

    np.testing.assert_allclose(vc[0], -_fd(lambda cc: energy(y, cc), c), rtol=1e-7, atol=1e-8)
    gy = np.stack([_fd(lambda yi: energy(np.concatenate([y[:i], yi[None], y[i + 1:]]), c), y[i])
                   for i in range(n)])
    np.testing.assert_allclose(vy[0], problem.kernel.tangent(y, -gy), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize(
    "scheme, integrator, extra",
    [("gd", "euler", {}), ("gd", "rk4", {}),
     ("langevin", "euler", {"temperature": [[0.0, 0.05], [0.1, 0.0]]})],
)
def test_sphere_constraint_holds_at_every_save_time(scheme, integrator, extra):
    """|y_i| = sqrt(d) after tangential projection and renormalisation: to round-off."""
    problem = build_problem(SPHERE, {"c": {"law": "normal", "std": 2.0}})
    dyn = particles.Dynamics(scheme=scheme, integrator=integrator, dt=0.002, form="kernel",
                             **extra)
    ds = particles.simulate(problem, [4, 8], 2, dyn, [0.0, 0.05, 0.1, 0.2], root_seed=3,
                            progress=False)
    r = np.linalg.norm(ds["y"].values, axis=-1)
    r = r[np.isfinite(r)]
    assert r.size == 2 * 4 * (4 + 8)
    np.testing.assert_allclose(r, np.sqrt(5), rtol=0, atol=1e-12)
    assert np.all(np.diff(ds["loss"].values[..., :2], axis=-1) != 0)  # the units did move


def test_sphere_data_energy_has_no_kernel_form():
    problem = build_problem({**SPHERE, "energy": "data"})
    assert problem.kernel_form is None
    y, c = problem.sample_init(np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="no closed"):
        problem.velocity(y[None], c[None], 1 / 3, form="kernel")


def test_sphere_teacher_units_on_sphere_and_nodes_on_sphere():
    problem = build_problem({**SPHERE, "target": {"kind": "teacher", "units": 7}})
    np.testing.assert_allclose(np.linalg.norm(problem.target.y, axis=-1), np.sqrt(5), rtol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(problem.x, axis=-1), np.sqrt(5), rtol=1e-14)


# -- seeding ---------------------------------------------------------------------------
def test_target_from_seed_and_independent_of_nodes():
    a = build_problem(SPHERE).target.a
    b = build_problem({**SPHERE, "nodes": 800}).target.a
    np.testing.assert_array_equal(a, b)  # changing the node sample keeps the target
    t_rng, _ = problem_rngs(0)
    np.testing.assert_array_equal(a, ThreeSpin.random(5, t_rng).a)
    other = build_problem({**SPHERE, "seed": 1})
    assert not np.allclose(a, other.target.a)
    assert not np.allclose(build_problem(SPHERE).x, other.x)
    np.testing.assert_array_equal(build_problem(SPHERE).x, build_problem(SPHERE).x)


def test_sigmoid_measures_and_params_are_json():
    sph = build_problem(SIGMOID)
    np.testing.assert_allclose(np.linalg.norm(sph.x, axis=-1), 2.0, rtol=1e-14)
    gauss = build_problem({**SIGMOID, "d": 2, "nodes": 49, "measure": "gaussian",
                           "scale": 2.0, "activation": "tanh"})
    assert gauss.measure.kind == "quadrature" and gauss.x.shape == (49, 2)
    np.testing.assert_allclose(gauss.w.sum(), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.sum(gauss.w[:, None] * gauss.x**2, 0), 4.0, rtol=1e-12)
    for p in (sph, gauss, build_problem(SPHERE), build_problem(RBF)):
        info = json.loads(json.dumps(p.params()))
        assert info["seed"] == 0 and "target" in info


def test_sigmoid_sgd_step_with_three_spin_and_teacher():
    """SGD draws batches x (B, P, d); the target is evaluated on them."""
    for target in ({"kind": "3spin"}, {"kind": "teacher", "units": 2}):
        problem = build_problem({**SIGMOID, "target": target})
        dyn = particles.Dynamics(scheme="sgd", dt=0.05, batch=[[0.0, 4], [0.1, 16]])
        ds = particles.simulate(problem, 6, 2, dyn, [0.0, 0.2], progress=False)
        assert np.all(np.isfinite(ds["loss"].values))


# -- config errors ---------------------------------------------------------------------
BAD = [
    (SPHERE, {"radius": 1.0}, "unknown key.*radius.*allowed keys"),
    (SPHERE, {"d": 2.5}, r"problem\.d: expected an integer"),
    (SPHERE, {"d": 1}, r"problem\.d: must be >= 2"),
    (SPHERE, {"alpha": -1.0}, r"problem\.alpha: must be > 0"),
    (SPHERE, {"alpha": "1"}, r"problem\.alpha: expected a number"),
    (SPHERE, {"energy": "l2"}, r"problem\.energy: 'l2' is not allowed; use one of "
                               r"'interpolation', 'data'"),
    (SPHERE, {"seed": -1}, r"problem\.seed: must be >= 0"),
    (SPHERE, {"target": {"kind": "fourier"}}, r"problem\.target\.kind: 'fourier' is not allowed"),
    (SPHERE, {"target": {"kind": "3spin", "units": 3}}, "units applies to kind='teacher' only"),
    (SPHERE, {"target": {"kind": "teacher"}}, "kind='teacher' needs units"),
    (SPHERE, {"target": {"kind": "teacher", "units": 0}}, r"problem\.target\.units: must be >= 1"),
    (SPHERE, {"target": "3spin"}, r"problem\.target: expected a table"),
    (RBF, {"sigma": 0}, r"problem\.sigma: must be > 0"),
    (RBF, {"nodes": 10.0}, r"problem\.nodes: expected an integer"),
    (RBF, {"target": {"kind": "3spin"}},
     "'3spin' is not allowed for kind='rbf'; use one of 'teacher'"),
    (RBF, {"kappa": 2.0}, "unknown key.*kappa"),
    (SIGMOID, {"activation": "relu"}, r"problem\.activation: 'relu' is not allowed; use one of "
                                      r"'sigmoid', 'tanh'"),
    (SIGMOID, {"measure": "cube"}, r"problem\.measure: 'cube' is not allowed"),
    (SIGMOID, {"scale": 2.0}, "scale applies to measure = 'gaussian' only"),
    (SIGMOID, {"alpha": 1.0}, "unknown key.*alpha"),
    (SIGMOID, {"d": True}, r"problem\.d: expected an integer"),
]


@pytest.mark.parametrize("base, change, match", BAD)
def test_builder_rejects_bad_input(base, change, match):
    with pytest.raises(ConfigError, match=match):
        build_problem({**base, **change})


@pytest.mark.parametrize("base, drop", [(SPHERE, "energy"), (SPHERE, "alpha"), (RBF, "sigma"),
                                        (RBF, "target"), (SIGMOID, "nodes"), (SIGMOID, "d")])
def test_builder_requires_keys(base, drop):
    cfg = {k: v for k, v in base.items() if k != drop}
    with pytest.raises(ConfigError, match=rf"missing required key\(s\) \['{drop}'\]"):
        build_problem(cfg)


@pytest.mark.parametrize("d, nodes, match", [(1, 0, "must be >= 1"),
                                             (2, 50, "perfect power such as 49 or 64"),
                                             (2, 63, "perfect power such as 49 or 64")])
def test_gauss_hermite_node_count(d, nodes, match):
    with pytest.raises(ConfigError, match=match):
        build_problem({**RBF, "d": d, "nodes": nodes})
    with pytest.raises(ConfigError, match=match):
        build_problem({**SIGMOID, "d": d, "nodes": nodes, "measure": "gaussian"})


@pytest.mark.parametrize("base, y, match", [
    (SPHERE, {"law": "normal"},
     "does not fit the sphere problem; use y = { law = 'uniform_sphere'"),
    (SPHERE, {"law": "uniform_sphere", "std": 1.0}, "does not fit the sphere problem"),
    (RBF, {"law": "uniform_sphere"}, "use 'normal'"),
    (SIGMOID, {"law": "uniform"}, "use 'normal'"),
])
def test_initial_y_law_must_fit(base, y, match):
    with pytest.raises(ConfigError, match=match):
        build_problem(base, {"y": y})


# -- example configs ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sphere_3spin.toml", "sigmoid_teacher.toml"])
def test_example_config_runs_its_first_steps(name):
    """The example builds and its dynamics runs (10 steps of it; the full example is
    ~10 s and is run by hand)."""
    with open(EXAMPLES / name, "rb") as fh:
        cfg = tomllib.load(fh)
    problem = build_problem(cfg["problem"], cfg.get("init"))
    d, p = cfg["dynamics"], cfg["particles"]
    assert d["save_times"][-1] == d["t_end"]
    dyn = particles.Dynamics(scheme=d["scheme"], integrator=d.get("integrator", "euler"),
                             dt=d["dt"], form=d.get("form", "data"), batch=d.get("batch"),
                             temperature=d.get("temperature"))
    ds = particles.simulate(problem, p["n"], p["seeds"], dyn, [0.0, 10 * d["dt"]],
                            root_seed=p["root_seed"], progress=False)
    loss = ds["loss"].values
    assert np.all(np.isfinite(loss)) and np.all(loss[..., 1] < loss[..., 0])
