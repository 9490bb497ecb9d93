"""Problems from config sections: the public entry points, kept where callers find them.

``build_problem(problem_cfg, init_cfg)`` (:mod:`particles.build`) checks ``[problem]``
and ``[init]`` and returns a :class:`~particles.problem.Problem`: a preset
(:mod:`particles.presets`) or parts. The closed forms live in
:mod:`particles.closed_forms`; this module re-exports the names old callers import.
"""
from __future__ import annotations

from .build import INIT_SCHEMA, build_problem, c_law_from_config
from .closed_forms import (circle_fourier_F, circle_K, interpolation_form, rbf_gaussian_K,
                           teacher_F)
from .presets import (circle_problem, problem_rngs, rbf_problem, sigmoid_problem,
                      sphere_problem, y_law_normal)

__all__ = ["build_problem", "circle_problem", "c_law_from_config", "INIT_SCHEMA",
           "circle_fourier_F", "circle_K", "rbf_gaussian_K", "teacher_F", "interpolation_form",
           "rbf_problem", "sphere_problem", "sigmoid_problem", "problem_rngs", "y_law_normal"]
