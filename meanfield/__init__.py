"""The mean-field limit of :mod:`particles` and its fluctuations (paper Sec. 2).

Two independent solvers of (2.9): finite volumes on a (y, c) grid
(:func:`solve_grid`) and weighted quadrature nodes along characteristics
(:func:`solve_characteristics`); the CLT covariance of (2.24) by the influence method
(:func:`clt_covariance_influence`) and by an ensemble of tangent-linear grid runs
(:func:`clt_covariance_ensemble`). Every solver is a stepper driven by the one time loop
:func:`particles.engine.loop.run` (``docs/engine.md``): :class:`~meanfield.grid.stepper.GridStepper`,
:class:`~meanfield.grid.tangent.TangentStepper`, :class:`~meanfield.influence.AdjointStepper`,
and :class:`particles.steppers.ParticleStepper` for the characteristics.
"""
from meanfield.characteristics import solve_characteristics
from meanfield.grid.solve import GridSolver, project_particles, solve_grid
from meanfield.influence import clt_covariance_influence
from meanfield.linearised import clt_covariance_ensemble

__all__ = ["GridSolver", "clt_covariance_ensemble", "clt_covariance_influence",
           "project_particles", "solve_characteristics", "solve_grid"]
