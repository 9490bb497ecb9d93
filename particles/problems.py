r"""Building problems from config sections.

``build_problem(problem_cfg, init_cfg)`` checks the ``[problem]`` and ``[init]``
sections (see ``docs/config.md``) and returns a :class:`~particles.problem.Problem`.
Problem-level randomness (node samples, teacher units, 3-spin coefficients) comes from
``SeedSequence(problem.seed)``, kept apart from the ensemble members' generators.
"""
from __future__ import annotations

import numpy as np
from scipy import special

from . import config as C
from .kernels import CircleKernel
from .laws import CLaw, YNormal, YUniformCircle
from .measures import CircleUniform
from .problem import KernelForm, Problem
from .targets import FourierTarget

__all__ = ["build_problem", "circle_problem", "c_law_from_config", "BUILDERS", "INIT_SCHEMA"]

C_LAW_SCHEMA = {
    "law": C.choice("normal", "uniform", "constant"),
    "mean": C.number(),
    "std": C.number(lo=0, lo_open=True),
    "low": C.number(),
    "high": C.number(),
    "value": C.number(),
}
Y_LAW_SCHEMA = {
    "law": C.choice("uniform", "normal", "uniform_sphere"),
    "mean": C.number(),
    "std": C.number(lo=0, lo_open=True),
}
INIT_SCHEMA = {
    "c": C.table(C_LAW_SCHEMA, required=("law",)),
    "y": C.table(Y_LAW_SCHEMA, required=("law",)),
    "file": C.string(),
}
FOURIER_SCHEMA = {"cos": C.number_list(), "sin": C.number_list()}


def c_law_from_config(cfg):
    cfg = dict(cfg or {"law": "normal"})
    law = cfg.get("law", "normal")
    allowed = {"normal": {"mean", "std"}, "uniform": {"low", "high"}, "constant": {"value"}}
    extra = set(cfg) - {"law"} - allowed[law]
    if extra:
        raise C.ConfigError(
            f"init.c: key(s) {sorted(extra)} do not apply to law={law!r}; "
            f"it takes {sorted(allowed[law])}"
        )
    try:
        return CLaw(**cfg)
    except ValueError as e:
        raise C.ConfigError(str(e)) from None


def circle_fourier_F(kernel, target):
    """Closed-form F(y) and ∇F(y) of THEORY §7 for a Fourier target."""
    k = target.k
    ik = special.ive(k, kernel.kappa)  # e^{-κ} I_k(κ)

    def F(y):
        ky = y[..., 0, None] * k
        return (np.cos(ky) * ik) @ target.a + (np.sin(ky) * ik) @ target.b

    def grad_F(y):
        ky = y[..., 0, None] * k
        return ((-np.sin(ky) * ik * k) @ target.a + (np.cos(ky) * ik * k) @ target.b)[..., None]

    return F, grad_F


def circle_K(kernel):
    r"""Closed-form :math:`K(y, y') = e^{-2\kappa}I_0(2\kappa|\cos\frac{y-y'}2|)` and ∇₁K."""
    kap = kernel.kappa

    def K(y, y2):
        dy = y[..., :, None, 0] - y2[..., None, :, 0]
        z = 2 * kap * np.abs(np.cos(dy / 2))
        return special.ive(0, z) * np.exp(z - 2 * kap)

    def grad_K(y, y2):
        dy = y[..., :, None, 0] - y2[..., None, :, 0]
        cz = np.cos(dy / 2)
        z = 2 * kap * np.abs(cz)
        dz = -kap * np.sign(cz) * np.sin(dy / 2)
        return (special.ive(1, z) * np.exp(z - 2 * kap) * dz)[..., None]

    return K, grad_K


def circle_problem(kappa=2.0, quadrature=64, cos=(), sin=(), c_law=None, y_law=None):
    """The circle problem of THEORY §7 with a Fourier target."""
    kernel = CircleKernel(kappa)
    target = FourierTarget(cos, sin)
    F, grad_F = circle_fourier_F(kernel, target)
    K, grad_K = circle_K(kernel)
    return Problem(
        kind="circle",
        kernel=kernel,
        measure=CircleUniform(quadrature),
        target=target,
        y_law=y_law or YUniformCircle(),
        c_law=c_law or CLaw("normal"),
        kernel_form=KernelForm(F, grad_F, K, grad_K, "closed forms, uniform mu (THEORY §7)"),
        info={"target": "fourier", "target.cos": list(target.cos), "target.sin": list(target.sin)},
    )


def _build_circle(cfg, c_law, y_cfg):
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
    if y_cfg and y_cfg["law"] != "uniform":
        raise C.ConfigError("init.y: the circle problem takes law = 'uniform' only")
    t = cfg["target"]
    kmax = max(len(t.get("cos", [])), len(t.get("sin", [])))
    if cfg["quadrature"] <= 2 * kmax:
        raise C.ConfigError(
            f"problem.quadrature={cfg['quadrature']} cannot resolve target modes up to "
            f"k={kmax - 1}; use quadrature > {2 * kmax}"
        )
    return circle_problem(cfg["kappa"], cfg["quadrature"], t.get("cos", ()), t.get("sin", ()),
                          c_law=c_law)


#: kind -> builder(problem_cfg, c_law, y_cfg) -> Problem
BUILDERS = {"circle": _build_circle}


def build_problem(problem_cfg, init_cfg=None) -> Problem:
    """Check ``[problem]`` and ``[init]`` and build the problem."""
    if not isinstance(problem_cfg, dict) or "kind" not in problem_cfg:
        raise C.ConfigError(f"problem: missing key 'kind'; use one of {sorted(BUILDERS)}")
    kind = problem_cfg["kind"]
    if kind not in BUILDERS:
        raise C.ConfigError(f"problem.kind={kind!r} is not known; use one of {sorted(BUILDERS)}")
    init = C.check_section(init_cfg or {}, INIT_SCHEMA, "init")
    c_law = c_law_from_config(init.get("c"))
    return BUILDERS[kind](problem_cfg, c_law, init.get("y"))


def y_law_normal(N, y_cfg):
    y_cfg = y_cfg or {"law": "normal"}
    if y_cfg["law"] != "normal":
        raise C.ConfigError(f"init.y.law={y_cfg['law']!r} does not fit this problem; use 'normal'")
    return YNormal(N, y_cfg.get("mean", 0.0), y_cfg.get("std", 1.0))
from . import highdim  # noqa: F401
