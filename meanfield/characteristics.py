r"""The Lagrangian mean-field solver: weighted quadrature nodes of ρ_in along characteristics.

:math:`\rho_0(t)` solves the pure transport equation (2.9), so it is the push-forward of
:math:`\rho_{in}` by the self-consistent flow (THEORY §3). Take a tensor quadrature
:math:`\{(y_j, c_j), w_j\}` of :math:`\rho_{in}` (trapezoid in periodic y, Gauss rules in y
for a normal law, Gauss rules in c matched to the c law) and move the nodes with the
particles' own dynamics, the weights :math:`w_j` in place of :math:`1/n`:

.. math::
    f_0(t, x) \approx \sum_j w_j C_j(t) \varphi(x, Y_j(t)), \qquad
    \dot C_j = -U(t, Y_j), \quad \dot Y_j = -C_j\nabla_y U(t, Y_j),

with :math:`U = \langle\varphi(\cdot, y), f_0 - f\rangle_\mu` (2.34). There is no
numerical diffusion; for smooth problems the error decays geometrically in the node
counts (spectral quadrature of a smooth flow map), so this is the accuracy reference for
the grid solver. The dynamics code is :func:`particles.dynamics.step`, not a copy.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr

from particles import Dynamics
from particles.engine.loop import check_save_times, run
from particles.engine.results import dataset as cf_dataset
from particles.engine.results import run_status, x_coord
from particles.steppers import ParticleStepper

from meanfield.defaults import CHARACTERISTICS, CHARACTERISTICS_INTEGRATOR, options
from meanfield.nodes import c_rule, characteristic_nodes  # noqa: F401 - re-exported

__all__ = ["characteristic_nodes", "c_rule", "solve_characteristics"]


def solve_characteristics(problem, save_times, *, grid=None,
                          integrator: str = CHARACTERISTICS_INTEGRATOR,
                          save_nodes: bool = False, progress: bool | None = None,
                          checkpoint=None, train=("y", "c")) -> xr.Dataset:
    r"""Mean-field :math:`f_0(t, x)` along characteristics of (2.9).

    Parameters
    ----------
    problem : particles.problem.Problem
    save_times : sequence of float
    grid : dict, optional
        The keys of ``[meanfield] characteristics`` over
        :data:`meanfield.defaults.CHARACTERISTICS`: ``y`` (nodes per y dimension), ``c``
        (nodes in c) and ``dt`` (the step of ``integrator``; RK4 by default: time error
        negligible).
    save_nodes : bool
        Also return the nodes ``y_nodes(t, node, y_dim)``, ``c_nodes(t, node)`` and
        ``weight(node)``.
    progress : bool or None
        Progress bar; ``None`` shows it only on a terminal.
    checkpoint : particles.engine.checkpoint.Checkpoint, optional
        Checkpoints inside the run (:mod:`particles.engine.checkpoint`): a run resumed from it is
        bitwise one that never stopped.
    train : tuple of str
        ``("c",)``: random features, the nodes keep their y (the dynamics' ``train``).

    Returns
    -------
    xarray.Dataset
        ``f_0_characteristics(t, x)``, ``loss_0_characteristics(t)``.

    Raises
    ------
    particles.engine.loop.NumericalFailure
        A non-finite node state; ``.partial`` is the Dataset of the save times reached
        (``attrs["complete"] = 0``).
    """
    ts = check_save_times(save_times)
    g = options(grid, CHARACTERISTICS, "grid")
    ny, nc, dt = g["y"], g["c"], g["dt"]
    y, c, w = characteristic_nodes(problem, ny, nc)
    dyn = Dynamics("gd", integrator, dt, train=tuple(train))
    T, Q, J = len(ts), problem.x.shape[0], len(w)
    f0 = np.full((T, Q), np.nan)
    ys = np.full((T, J, problem.N), np.nan)
    cs = np.full((T, J), np.nan)

    def observe(j, st):
        f0[j] = problem.network(st.y, w * st.c)[0]
        ys[j], cs[j] = problem.kernel.wrap(st.y[0]), st.c[0]

    def dataset(failure=None):
        coords = {"t": ts}
        coords["x"] = x_coord(problem.x)
        data = {
            "f_0_characteristics": (("t", "x"), f0),
            "loss_0_characteristics": (("t",), problem.loss(f0)),
        }
        if save_nodes:
            data.update({"y_nodes": (("t", "node", "y_dim"), ys),
                         "c_nodes": (("t", "node"), cs), "weight": (("node",), w)})
        attrs = {
            "characteristics_scheme": "tensor quadrature of rho_in moved by "
                                      f"particles.dynamics.step ({integrator})",
            "characteristics_nodes": json.dumps({"y": ny, "c": nc, "total": J}),
            "characteristics_dt": dt,
            **({} if "y" in dyn.train else {"characteristics_train": "c (y frozen)"}),
            **run_status(failure),
        }
        return cf_dataset(data, coords, attrs, title="mfpc mean-field limit (characteristics)")

    stepper = ParticleStepper(problem, dyn, w[None], name="characteristics", labels=["nodes"],
                              advice=f"lower the characteristics' dt={dt}")
    if checkpoint is not None:
        checkpoint.track(f0=f0, ys=ys, cs=cs)
    run(stepper, stepper.init(y[None], c[None]), ts, observe, progress=progress,
        partial=dataset, checkpoint=checkpoint)
    return dataset()
