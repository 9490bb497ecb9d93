"""Finite-n particle systems: problems and the dynamics of f_n = (1/n) Σ c_i φ(x, y_i).

The ground floor of mfpc (paper Sec. 1–3; ``../shared/THEORY.md`` §1–2). Nothing here
imports :mod:`meanfield` or :mod:`analysis`.
"""
from particles.dynamics import INTEGRATORS, Dynamics, State, step
from particles.problem import KernelForm, Problem
from particles.engine.loop import NumericalFailure, run
from particles.simulate import member_rng, simulate
from particles.steppers import ParticleState, ParticleStepper

__all__ = [
    "Dynamics",
    "INTEGRATORS",
    "KernelForm",
    "NumericalFailure",
    "ParticleState",
    "ParticleStepper",
    "Problem",
    "State",
    "member_rng",
    "run",
    "simulate",
    "step",
]
