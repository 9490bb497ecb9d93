r"""Presets: ``[problem] kind = "circle" | "rbf" | "sphere" | "sigmoid"`` expanded to parts.

Each preset checks its ``[problem]`` section (``docs/config_problems.md``) and composes
a :class:`~particles.problem.Problem` from a kernel, a measure, a target and the initial
laws; its (F, K) form comes from :func:`particles.closed_forms.kernel_form`. The presets
give the numbers they gave before problems were composed from parts
(``tests/test_regression.py``).

Problem-level randomness: the target (teacher units, 3-spin coefficients) is drawn from
``Generator(PCG64(SeedSequence(seed)))`` and the fixed node sample of the data measure
(when there is one) from ``Generator(PCG64(SeedSequence(seed, spawn_key=(0,))))`` (the
first child of the same sequence), so changing ``nodes`` never changes the target. The
members' generators have spawn keys of length two (``particles.simulate.member_rng``)
and never coincide with these.

* ``circle``: :math:`\varphi = e^{\kappa(\cos(x-y)-1)}`, μ uniform on the circle, a
  Fourier target (THEORY §7), closed F and K.
* ``rbf``: Gaussian RBF :math:`\varphi(x, y) = e^{-|x-y|^2/(2\sigma^2)}` on :math:`R^d`,
  :math:`\mu = N(0, s^2 I_d)`, a teacher target; closed F and K (THEORY §7).
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

from particles.engine import config as C
from particles.closed_forms import check_circle_quadrature, kernel_form
from particles.kernels import CircleKernel, GaussianRBF, SigmoidUnit, SphereRBF
from particles.laws import CLaw, YNormal, YUniformCircle, YUniformSphere
from particles.measures import CircleUniform, GaussianMeasure, SphereUniform
from particles.problem import Problem
from particles.targets import FourierTarget, TeacherNetwork, ThreeSpin

__all__ = ["PRESETS", "preset_problem", "circle_problem", "rbf_problem", "sphere_problem",
           "sigmoid_problem", "problem_rngs", "gaussian_measure", "draw_target", "y_law_normal",
           "SEED_RULE"]

TARGET_SCHEMA = {"kind": C.choice("teacher", "3spin"), "units": C.integer(lo=1),
                 "seed": C.integer(lo=0)}
FOURIER_SCHEMA = {"cos": C.number_list(), "sin": C.number_list()}
SEED_RULE = (
    "target from Generator(PCG64(SeedSequence(target.seed or seed))); node sample from "
    "Generator(PCG64(SeedSequence(seed, spawn_key=(0,))))"
)


def problem_rngs(seed):
    """Generators ``(target_rng, nodes_rng)`` of the problem-level randomness (module doc)."""
    target_rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed))))
    nodes_rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(0,)))
    )
    return target_rng, nodes_rng


def _problem(name, kernel, measure, target, y_law, c_law, info, energy="data"):
    form, reason = kernel_form(kernel, measure, target, energy)
    return Problem(kernel=kernel, measure=measure, target=target, y_law=y_law, c_law=c_law,
                   kernel_form=form, name=name, info=info, kernel_form_reason=reason)


# -- shared pieces --------------------------------------------------------------------
def check_target(t, kind, allowed=("teacher", "3spin")):
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


def draw_target(t, kernel, d, rng):
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


def gaussian_measure(d, nodes, scale, rng, where="problem.nodes"):
    """N(0, scale² I) with a Gauss–Hermite product rule (d ≤ 2) or a node sample."""
    if d <= 2:
        m = int(round(nodes ** (1.0 / d)))
        m -= m**d > nodes
        if m**d != nodes:
            raise C.ConfigError(
                f"{where}={nodes}: with d={d} the Gauss–Hermite product rule has m^{d} "
                f"nodes; use a perfect power such as {m ** d} or {(m + 1) ** d}"
            )
    return GaussianMeasure(d, nodes, rng=rng, scale=scale)


def y_law_normal(N, y_cfg):
    y_cfg = y_cfg or {"law": "normal"}
    if y_cfg["law"] != "normal":
        raise C.ConfigError(f"init.y.law={y_cfg['law']!r} does not fit this problem; use 'normal'")
    if set(y_cfg) - {"law", "mean", "std"}:
        raise C.ConfigError(f"init.y: key(s) {sorted(set(y_cfg) - {'law', 'mean', 'std'})} do "
                            "not apply to law='normal'; it takes mean, std")
    return YNormal(N, y_cfg.get("mean", 0.0), y_cfg.get("std", 1.0))




def check_circle_width(kappa, Q, key, cos=(), sin=()):
    """Refuse ``Q`` trapezoid nodes where their error in F or K of the circle kernel
    matters (:func:`particles.closed_forms.check_circle_quadrature`)."""
    check_circle_quadrature(kappa, Q, key, cos, sin,
                            "problem.kappa" if key == "problem.quadrature"
                            else "problem.kernel.kappa")


def _plain(v):
    """numpy scalars and arrays as Python numbers and lists (for the config's checks)."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# -- problems (callable from Python) --------------------------------------------------
def circle_problem(kappa=2.0, quadrature=64, cos=(), sin=(), c_law=None, y_law=None):
    """The circle problem of THEORY §7 with a Fourier target.

    Raises
    ------
    ConfigError
        The config's refusals (``problem.kappa``, ``problem.quadrature``, target modes the
        quadrature cannot resolve): one rule for the config and for Python. A config is
        also refused a kernel too narrow for its quadrature (:func:`check_circle_width`);
        Python may choose a coarse rule on purpose.
    """
    kappa = C.number(lo=0, lo_open=True)(_plain(kappa), "problem.kappa")
    quadrature = C.integer(lo=4)(_plain(quadrature), "problem.quadrature")
    cos, sin = (C.number_list()(list(_plain(v)), f"problem.target.{k}")
                for k, v in (("cos", cos), ("sin", sin)))
    kmax = max(len(cos), len(sin))
    if quadrature <= 2 * kmax:
        raise C.ConfigError(
            f"problem.quadrature={quadrature} cannot resolve target modes up to "
            f"k={kmax - 1}; use quadrature > {2 * kmax}"
        )
    target = FourierTarget(cos, sin)
    return _problem("circle", CircleKernel(kappa), CircleUniform(quadrature), target,
                    y_law or YUniformCircle(), c_law or CLaw("normal"),
                    {"target": "fourier", "target.cos": list(target.cos),
                     "target.sin": list(target.sin)})


def _rngs(seed, target_seed):
    """(target_rng, nodes_rng): the target from ``target_seed`` when given (a target
    realisation), the nodes always from ``seed``."""
    t_rng, x_rng = problem_rngs(seed)
    if target_seed is not None:
        t_rng = problem_rngs(target_seed)[0]
    return t_rng, x_rng


def rbf_problem(d, sigma, nodes, units, *, scale=1.0, seed=0, c_law=None, y_law=None,
                target_seed=None):
    """Gaussian RBF in R^d, data N(0, scale² I), a teacher target of ``units`` units
    (drawn from ``target_seed`` when given, else from ``seed``)."""
    kernel = GaussianRBF(d, sigma)
    t_rng, x_rng = _rngs(seed, target_seed)
    t = check_target({"kind": "teacher", "units": units}, "rbf", ("teacher",))
    target, tinfo = draw_target(t, kernel, d, t_rng)
    measure = gaussian_measure(d, nodes, scale, x_rng)
    form, reason = kernel_form(kernel, measure, target)
    return Problem(kernel=kernel, measure=measure, target=target, y_law=y_law or YNormal(d),
                   c_law=c_law or CLaw("normal"), kernel_form=form, name="rbf",
                   info={**tinfo, "kernel_form": reason, "seed": int(seed),
                         "seed_rule": SEED_RULE}, kernel_form_reason=reason)


def sphere_problem(d, alpha, nodes, energy, target="3spin", units=None, *, seed=0,
                   c_law=None, target_seed=None):
    """Sphere RBF (4.2)–(4.5), uniform data on |x| = √d, 3-spin or teacher target
    (drawn from ``target_seed`` when given, else from ``seed``)."""
    if energy not in ("interpolation", "data"):
        raise C.ConfigError(
            f"problem.energy={energy!r} is not allowed; use 'interpolation' or 'data'"
        )
    kernel = SphereRBF(d, alpha)
    t_rng, x_rng = _rngs(seed, target_seed)
    f, tinfo = draw_target(check_target({"kind": target, "units": units}, "sphere"),
                           kernel, d, t_rng)
    measure = SphereUniform(d, nodes, x_rng)
    if energy == "interpolation":
        meaning = ("interpolation energy (4.5) -sum_i c_i f(y_i) + (1/2n) sum_ij c_i c_j "
                   "phi(y_i, y_j): run it with dynamics.form = 'kernel'; the nodes only "
                   "evaluate the loss (4.8)")
    else:
        meaning = "loss (1.2) on the node sample: dynamics.form = 'data' (or sgd)"
    p = _problem("sphere", kernel, measure, f, YUniformSphere(d), c_law or CLaw("normal"),
                 {**tinfo, "energy": energy, "energy.meaning": meaning}, energy)
    p.info.update({"kernel_form": (p.kernel_form.description if p.kernel_form
                                   else "none (data form only)"),
                   "seed": int(seed), "seed_rule": SEED_RULE})
    return p


def sigmoid_problem(d, nodes, target="3spin", units=None, *, activation="sigmoid",
                    measure="sphere", scale=1.0, seed=0, c_law=None, y_law=None,
                    target_seed=None):
    """Single-layer network (4.9)–(4.10), y = (a, b) in R^{d+1}, 3-spin or teacher target
    (drawn from ``target_seed`` when given, else from ``seed``)."""
    kernel = SigmoidUnit(d, activation)
    t_rng, x_rng = _rngs(seed, target_seed)
    f, tinfo = draw_target(check_target({"kind": target, "units": units}, "sigmoid"),
                           kernel, d, t_rng)
    if measure == "sphere":
        mu = SphereUniform(d, nodes, x_rng)
    elif measure == "gaussian":
        mu = gaussian_measure(d, nodes, scale, x_rng)
    else:
        raise C.ConfigError(
            f"problem.measure={measure!r} is not allowed; use 'sphere' or 'gaussian'"
        )
    return _problem("sigmoid", kernel, mu, f, y_law or YNormal(d + 1), c_law or CLaw("normal"),
                    {**tinfo, "measure": measure, "kernel_form": "none (data form only)",
                     "seed": int(seed), "seed_rule": SEED_RULE})


# -- config presets ---------------------------------------------------------------------
def _target_entry():
    return C.table(TARGET_SCHEMA, required=("kind",))


def _circle(cfg, c_law, y_cfg):
    cfg = C.check_section(
        cfg,
        {
            "kind": C.choice("circle"),
            "kappa": C.number(lo=0, lo_open=True),
            "quadrature": C.integer(lo=4),
            "target": C.table(FOURIER_SCHEMA),
        },
        "problem",
        required=("kind", "kappa", "quadrature", "target"),
    )
    if y_cfg and (y_cfg["law"] != "uniform" or set(y_cfg) != {"law"}):
        raise C.ConfigError("init.y: the circle problem takes y = { law = 'uniform' } only "
                            "(the whole circle)")
    t = cfg["target"]  # the values are checked by circle_problem (one rule for both)
    problem = circle_problem(cfg["kappa"], cfg["quadrature"], t.get("cos", ()),
                             t.get("sin", ()), c_law=c_law)
    check_circle_width(cfg["kappa"], cfg["quadrature"], "problem.quadrature",
                       t.get("cos", ()), t.get("sin", ()))
    return problem


def _rbf(cfg, c_law, y_cfg):
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
    t = check_target(cfg["target"], "rbf", ("teacher",))
    return rbf_problem(d, cfg["sigma"], cfg["nodes"], t["units"], scale=cfg.get("scale", 1.0),
                       seed=cfg.get("seed", 0), c_law=c_law, y_law=y_law_normal(d, y_cfg),
                       target_seed=t.get("seed"))


def _sphere(cfg, c_law, y_cfg):
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
    t = check_target(cfg["target"], "sphere")
    return sphere_problem(cfg["d"], cfg["alpha"], cfg["nodes"], cfg["energy"], t["kind"],
                          t.get("units"), seed=cfg.get("seed", 0), c_law=c_law,
                          target_seed=t.get("seed"))


def _sigmoid(cfg, c_law, y_cfg):
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
    t = check_target(cfg["target"], "sigmoid")
    return sigmoid_problem(d, cfg["nodes"], t["kind"], t.get("units"),
                           activation=cfg.get("activation", "sigmoid"), measure=measure,
                           scale=cfg.get("scale", 1.0), seed=cfg.get("seed", 0), c_law=c_law,
                           y_law=y_law_normal(d + 1, y_cfg), target_seed=t.get("seed"))


#: kind -> preset(problem_cfg, c_law, y_cfg) -> Problem (a static table).
PRESETS = {"circle": _circle, "rbf": _rbf, "sphere": _sphere, "sigmoid": _sigmoid}


def preset_problem(problem_cfg, c_law, y_cfg):
    """Expand ``[problem] kind = ...`` (checked name) to a problem."""
    return PRESETS[problem_cfg["kind"]](problem_cfg, c_law, y_cfg)
