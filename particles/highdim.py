r"""Builders for the high-dimensional problems of the paper's Sec. 4: rbf, sphere, sigmoid.

Each builder checks its ``[problem]`` section (``docs/config_problems.md``) and returns a
:class:`~particles.problem.Problem`. They are registered in
:data:`particles.problems.BUILDERS` when this module is imported (``problems`` imports
it at its end).

Problem-level randomness: the target (teacher units, 3-spin coefficients) is drawn from
``Generator(PCG64(SeedSequence(seed)))`` and the fixed node sample of the data measure
(when there is one) from ``Generator(PCG64(SeedSequence(seed, spawn_key=(0,))))`` (the
first child of the same sequence), so changing ``nodes`` never changes the target. The
members' generators have spawn keys of length two (``particles.simulate.member_rng``)
and never coincide with these.

* ``rbf``: Gaussian RBF :math:`\varphi(x, y) = e^{-|x-y|^2/(2\sigma^2)}` on :math:`R^d`,
  :math:`\mu = N(0, s^2 I_d)`, a teacher target. Closed forms (THEORY §7)

  .. math::
      K(y, y') = (1 + 2s^2/\sigma^2)^{-d/2}
      \exp\Big(-\frac{|y-y'|^2}{4\sigma^2} - \frac{|y+y'|^2}{4(\sigma^2+2s^2)}\Big),
      \qquad F(y) = \frac1m\sum_j c^*_j K(y, y^*_j),

  give the exact (F, K) form of (2.1) (``dynamics.form = "kernel"``).
* ``sphere``: :math:`\varphi(x, y) = e^{\alpha(x\cdot y - d)}` on :math:`|x| = |y| = \sqrt d`
  (4.2)–(4.3), sign corrected (THEORY §6), :math:`\mu` uniform on the sphere (a fixed
  sample), target the 3-spin model (4.1) or a teacher. ``energy = "interpolation"`` gives
  the (F, K) form :math:`F := f`, :math:`K := \varphi`, so that ``form = "kernel"`` runs
  (4.5) exactly; ``energy = "data"`` has only the data form (the loss (1.2) on the sample).
* ``sigmoid``: :math:`\varphi(x, y) = h(a\cdot x + b)`, ``y = (a, b)`` (4.9), ``h`` the
  logistic sigmoid or ``tanh``, :math:`\mu` uniform on :math:`|x| = \sqrt d` (the paper)
  or Gaussian, target 3-spin or a teacher.
"""
from __future__ import annotations

import numpy as np

from . import config as C
from . import problems
from .kernels import GaussianRBF, SigmoidUnit, SphereRBF
from .laws import CLaw, YNormal, YUniformSphere
from .measures import GaussianMeasure, SphereUniform
from .problem import KernelForm, Problem
from .targets import TeacherNetwork, ThreeSpin

__all__ = [
    "rbf_problem",
    "sphere_problem",
    "sigmoid_problem",
    "rbf_gaussian_K",
    "teacher_F",
    "interpolation_form",
    "problem_rngs",
]

TARGET_SCHEMA = {"kind": C.choice("teacher", "3spin"), "units": C.integer(lo=1)}
SEED_RULE = (
    "target from Generator(PCG64(SeedSequence(seed))); node sample from "
    "Generator(PCG64(SeedSequence(seed, spawn_key=(0,))))"
)


def problem_rngs(seed):
    """Generators ``(target_rng, nodes_rng)`` of the problem-level randomness (module doc)."""
    target_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))
    nodes_rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(0,)))
    )
    return target_rng, nodes_rng


# -- closed forms ---------------------------------------------------------------------
def rbf_gaussian_K(kernel, scale):
    r"""Closed-form :math:`K(y, y')` and :math:`\nabla_1 K` for the Gaussian RBF and
    :math:`\mu = N(0, s^2 I_d)` (module docstring).

    Returns callables ``K(y, y2) -> (..., n, m)`` and ``grad_K(y, y2) -> (..., n, m, d)``
    for ``y`` (..., n, d), ``y2`` (..., m, d).
    """
    s2, sig2, d = float(scale) ** 2, kernel.sigma**2, kernel.d
    pref = (1.0 + 2.0 * s2 / sig2) ** (-0.5 * d)
    b = sig2 + 2.0 * s2

    def _parts(y, y2):
        dm = y[..., :, None, :] - y2[..., None, :, :]
        sm = y[..., :, None, :] + y2[..., None, :, :]
        K = pref * np.exp(-np.sum(dm**2, -1) / (4 * sig2) - np.sum(sm**2, -1) / (4 * b))
        return K, dm, sm

    def K(y, y2):
        return _parts(y, y2)[0]

    def grad_K(y, y2):
        k, dm, sm = _parts(y, y2)
        return k[..., None] * (-dm / (2 * sig2) - sm / (2 * b))

    return K, grad_K


def teacher_F(teacher, K, grad_K):
    r""":math:`F(y) = \frac1m\sum_j c^*_j K(y, y^*_j)` and its gradient for a teacher target."""
    ys, cs, m = teacher.y, teacher.c, len(teacher.c)

    def F(y):
        return K(y, ys) @ cs / m

    def grad_F(y):
        return np.einsum("...nmk,m->...nk", grad_K(y, ys), cs) / m

    return F, grad_F


def interpolation_form(kernel, target):
    r"""The interpolation energy of (4.5): :math:`F := f`, :math:`K := \varphi` (THEORY §6).

    ``K(y, y') = φ(y', y)`` and ``∇₁K(y, y') = ∇_y φ(y', y)`` (for the sphere RBF,
    :math:`\alpha y' e^{\alpha(y\cdot y' - d)}`); ``F = f`` and ``∇F = ∇f`` ((4.6) for the
    3-spin model). Velocities are projected on the tangent space of the sphere by
    :meth:`Problem.velocity`.
    """

    def K(y, y2):
        return kernel.phi(y2, y)

    def grad_K(y, y2):
        return kernel.phi_grad(y2, y)[1]

    return KernelForm(
        F=target,
        grad_F=target.grad,
        K=K,
        grad_K=grad_K,
        description="interpolation energy (4.5): F := f, K := phi (THEORY §6)",
    )


# -- targets and initial laws ---------------------------------------------------------
def _check_target(t, kind, allowed=("teacher", "3spin")):
    """Check ``problem.target`` (already through TARGET_SCHEMA) for problem ``kind``."""
    if t["kind"] not in allowed:
        raise C.ConfigError(
            f"problem.target.kind={t['kind']!r} is not allowed for kind={kind!r}; "
            f"use one of {', '.join(map(repr, allowed))}"
        )
    if t["kind"] == "teacher" and t.get("units") is None:
        raise C.ConfigError("problem.target: kind='teacher' needs units = m (an integer >= 1)")
    if t["kind"] != "teacher" and t.get("units") is not None:
        raise C.ConfigError("problem.target.units applies to kind='teacher' only; drop it")
    return t


def _draw_target(t, kernel, d, rng):
    r"""The target of a checked ``problem.target`` and its info entries.

    Teacher: :math:`y^*_j \sim N(0, I_N)` (retracted onto the sphere for the sphere
    kernel), then :math:`c^*_j \sim N(0, 1)`. 3-spin: :math:`a_{pqr} \sim N(0, 1)` (4.1).
    """
    if t["kind"] == "teacher":
        m = int(t["units"])
        y = kernel.retract(rng.standard_normal((m, kernel.N)))
        c = rng.standard_normal(m)
        return TeacherNetwork(kernel, y, c), {"target": "teacher", "target.units": m}
    return ThreeSpin.random(d, rng), {"target": "3spin (4.1), a_pqr ~ N(0, 1)"}


def _gaussian_measure(d, nodes, scale, rng):
    if d <= 2:
        m = int(round(nodes ** (1.0 / d)))
        m -= m**d > nodes
        if m**d != nodes:
            raise C.ConfigError(
                f"problem.nodes={nodes}: with d={d} the Gauss–Hermite product rule has m^{d} "
                f"nodes; use a perfect power such as {m ** d} or {(m + 1) ** d}"
            )
    return GaussianMeasure(d, nodes, rng=rng, scale=scale)


# -- problems (callable from Python) --------------------------------------------------
def rbf_problem(d, sigma, nodes, units, *, scale=1.0, seed=0, c_law=None, y_law=None):
    """Gaussian RBF in R^d, data N(0, scale² I), a teacher target of ``units`` units."""
    kernel = GaussianRBF(d, sigma)
    t_rng, x_rng = problem_rngs(seed)
    t = _check_target({"kind": "teacher", "units": units}, "rbf", ("teacher",))
    target, tinfo = _draw_target(t, kernel, d, t_rng)
    measure = _gaussian_measure(d, nodes, scale, x_rng)
    K, grad_K = rbf_gaussian_K(kernel, scale)
    F, grad_F = teacher_F(target, K, grad_K)
    form = KernelForm(
        F, grad_F, K, grad_K,
        "closed forms for mu = N(0, scale^2 I): exact, where the data form uses the nodes",
    )
    return Problem(
        kind="rbf",
        kernel=kernel,
        measure=measure,
        target=target,
        y_law=y_law or YNormal(d),
        c_law=c_law or CLaw("normal"),
        kernel_form=form,
        info={**tinfo, "kernel_form": form.description, "seed": int(seed),
              "seed_rule": SEED_RULE},
    )


def sphere_problem(d, alpha, nodes, energy, target="3spin", units=None, *, seed=0,
                   c_law=None):
    """Sphere RBF (4.2)–(4.5), uniform data on |x| = √d, 3-spin or teacher target."""
    if energy not in ("interpolation", "data"):
        raise C.ConfigError(
            f"problem.energy={energy!r} is not allowed; use 'interpolation' or 'data'"
        )
    kernel = SphereRBF(d, alpha)
    t_rng, x_rng = problem_rngs(seed)
    f, tinfo = _draw_target(_check_target({"kind": target, "units": units}, "sphere"),
                            kernel, d, t_rng)
    measure = SphereUniform(d, nodes, x_rng)
    if energy == "interpolation":
        form = interpolation_form(kernel, f)
        meaning = ("interpolation energy (4.5) -sum_i c_i f(y_i) + (1/2n) sum_ij c_i c_j "
                   "phi(y_i, y_j): run it with dynamics.form = 'kernel'; the nodes only "
                   "evaluate the loss (4.8)")
    else:
        form = None
        meaning = "loss (1.2) on the node sample: dynamics.form = 'data' (or sgd)"
    return Problem(
        kind="sphere",
        kernel=kernel,
        measure=measure,
        target=f,
        y_law=YUniformSphere(d),
        c_law=c_law or CLaw("normal"),
        kernel_form=form,
        info={**tinfo, "energy": energy, "energy.meaning": meaning,
              "kernel_form": form.description if form else "none (data form only)",
              "seed": int(seed), "seed_rule": SEED_RULE},
    )


def sigmoid_problem(d, nodes, target="3spin", units=None, *, activation="sigmoid",
                    measure="sphere", scale=1.0, seed=0, c_law=None, y_law=None):
    """Single-layer network (4.9)–(4.10), y = (a, b) in R^{d+1}, 3-spin or teacher target."""
    kernel = SigmoidUnit(d, activation)
    t_rng, x_rng = problem_rngs(seed)
    f, tinfo = _draw_target(_check_target({"kind": target, "units": units}, "sigmoid"),
                            kernel, d, t_rng)
    if measure == "sphere":
        mu = SphereUniform(d, nodes, x_rng)
    elif measure == "gaussian":
        mu = _gaussian_measure(d, nodes, scale, x_rng)
    else:
        raise C.ConfigError(
            f"problem.measure={measure!r} is not allowed; use 'sphere' or 'gaussian'"
        )
    return Problem(
        kind="sigmoid",
        kernel=kernel,
        measure=mu,
        target=f,
        y_law=y_law or YNormal(d + 1),
        c_law=c_law or CLaw("normal"),
        info={**tinfo, "measure": measure, "kernel_form": "none (data form only)",
              "seed": int(seed), "seed_rule": SEED_RULE},
    )


# -- config builders ------------------------------------------------------------------
def _target_entry():
    return C.table(TARGET_SCHEMA, required=("kind",))


def _build_rbf(cfg, c_law, y_cfg):
    cfg = C.check_section(
        cfg,
        {
            "kind": C.choice("rbf"),
            "d": C.integer(lo=1),
            "sigma": C.number(lo=0, lo_open=True),
            "scale": C.number(lo=0, lo_open=True),
            "nodes": C.integer(lo=1),
            "seed": C.integer(lo=0),
            "target": _target_entry(),
        },
        "problem",
        required=("kind", "d", "sigma", "nodes", "target"),
    )
    d = cfg["d"]
    t = _check_target(cfg["target"], "rbf", ("teacher",))
    return rbf_problem(d, cfg["sigma"], cfg["nodes"], t["units"], scale=cfg.get("scale", 1.0),
                       seed=cfg.get("seed", 0), c_law=c_law,
                       y_law=problems.y_law_normal(d, y_cfg))


def _build_sphere(cfg, c_law, y_cfg):
    cfg = C.check_section(
        cfg,
        {
            "kind": C.choice("sphere"),
            "d": C.integer(lo=2),
            "alpha": C.number(lo=0, lo_open=True),
            "nodes": C.integer(lo=1),
            "energy": C.choice("interpolation", "data"),
            "seed": C.integer(lo=0),
            "target": _target_entry(),
        },
        "problem",
        required=("kind", "d", "alpha", "nodes", "energy", "target"),
    )
    if y_cfg is not None and (y_cfg["law"] != "uniform_sphere" or set(y_cfg) != {"law"}):
        raise C.ConfigError(
            f"init.y={y_cfg!r} does not fit the sphere problem; use y = {{ law = "
            "'uniform_sphere' }} (no other keys) or leave init.y out"
        )
    t = _check_target(cfg["target"], "sphere")
    return sphere_problem(cfg["d"], cfg["alpha"], cfg["nodes"], cfg["energy"], t["kind"],
                          t.get("units"), seed=cfg.get("seed", 0), c_law=c_law)


def _build_sigmoid(cfg, c_law, y_cfg):
    cfg = C.check_section(
        cfg,
        {
            "kind": C.choice("sigmoid"),
            "d": C.integer(lo=1),
            "activation": C.choice("sigmoid", "tanh"),
            "measure": C.choice("sphere", "gaussian"),
            "scale": C.number(lo=0, lo_open=True),
            "nodes": C.integer(lo=1),
            "seed": C.integer(lo=0),
            "target": _target_entry(),
        },
        "problem",
        required=("kind", "d", "nodes", "target"),
    )
    d = cfg["d"]
    measure = cfg.get("measure", "sphere")
    if "scale" in cfg and measure != "gaussian":
        raise C.ConfigError(
            "problem.scale applies to measure = 'gaussian' only (the sphere has radius √d); "
            "drop it or set measure = 'gaussian'"
        )
    t = _check_target(cfg["target"], "sigmoid")
    return sigmoid_problem(d, cfg["nodes"], t["kind"], t.get("units"),
                           activation=cfg.get("activation", "sigmoid"), measure=measure,
                           scale=cfg.get("scale", 1.0), seed=cfg.get("seed", 0), c_law=c_law,
                           y_law=problems.y_law_normal(d + 1, y_cfg))


problems.BUILDERS.update({"rbf": _build_rbf, "sphere": _build_sphere, "sigmoid": _build_sigmoid})
