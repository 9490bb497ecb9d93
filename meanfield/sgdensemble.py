r"""The second route to :math:`\Sigma^{SGD}_t`: a tangent-linear grid ensemble forced by
sampled batch noise (the check of :mod:`meanfield.sgdnoise`).

Each member is a perturbation :math:`\delta m` of the cell masses, zero at t = 0, carried
by the tangent-linear of the grid scheme around :math:`\rho_0(t)` (the linearised flow
with its feedback through f, :mod:`meanfield.grid.tangent`), and forced after every step of
size ``h`` by one sampled single-sample noise (Euler–Maruyama):

.. math::
    \delta m \mathrel{+}= \sqrt{h\,\theta(s)/\theta_{ref}}\;
        \big(-\nabla\cdot(\rho_0\,\xi_X)\big),\qquad
    \xi_X = v(\cdot, X; r_0) - \mathbb E_X v = -\big(c\,\nabla_y u_X,\ u_X\big),\quad
    u_X(y) = \varphi(X, y)\,r_0(X) - U_0(y),

with :math:`X` drawn from the quadrature of μ (node ``q`` with probability ``w_q``, as the
covariance of :mod:`meanfield.sgdnoise`) and :math:`-\nabla\cdot(\rho_0\xi_X)` the flux
derivative of the scheme for the potential perturbation :math:`u_X` (face velocities as
in :meth:`meanfield.grid.tangent.Linearisation.apply`, upwind states frozen at the step start).
The displacement per step has covariance :math:`h\,C` (C of THEORY §4b), so
:math:`\mathrm{Cov}(f(t, x), f(t, x'))` over members,
:math:`f = \sum_{jk}c_k\varphi(x, y_j)\delta m_{jk}`, estimates :math:`\Sigma^{SGD}_t`
per unit :math:`\theta_{ref}` directly. Its errors: the grid's discretisation, O(h) of the
Euler–Maruyama forcing, and the sampling error :func:`meanfield.linearised.covariance_stderr`
(the sum over steps of independent forcings is Gaussian to a good approximation).
"""
from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import xarray as xr

from particles.engine.loop import NumericalFailure, check_save_times, run
from particles.engine.results import dataset as cf_dataset
from particles.engine.results import run_status, x_coord

from meanfield.defaults import ENSEMBLE, GRID, PHI_TOL
from meanfield.grid.solve import GridSolver, prepare
from meanfield.linearised import _default_chunk, covariance_stderr, ensemble_grid, f_half
from meanfield.sgdnoise import theta_attrs, theta_ratio
from meanfield.grid.tangent import Linearisation, TangentStepper

__all__ = ["SGD_KEY", "noise_potentials", "noise_forcing", "ForcedState", "ForcedStepper",
           "sgd_covariance_ensemble", "with_sgd_ensemble"]

#: ``spawn_key`` of the forced ensemble's generator (a 1-tuple, unlike members' 2-tuples;
#: not the CLT ensemble's ``2**32 - 1``)
SGD_KEY = 2**32 - 2


def noise_potentials(solver: GridSolver, m, idx):
    r""":math:`u_X(y_j) = \varphi(X, y_j)r_0(X) - U_0(y_j)` for ``X = x_idx``, shape
    ``(M,) + grid.ny``; :math:`U_0 = \Phi^\top W r_0`, so that the mean over X under the
    quadrature weights is zero."""
    d = solver.data
    r = d.f0(solver.charges(m)) - d.f
    U = (d.w * r) @ d.Phi
    u = d.Phi[idx] * r[idx, None] - U[None]
    return u.reshape((len(idx),) + tuple(solver.grid.ny))


def noise_forcing(lin: Linearisation, dU):
    r"""Rate of change :math:`-\nabla\cdot(\rho_0\xi)` of the cell masses for the noise
    potentials ``dU`` (``(M,) + grid.ny``): the ``δu Z`` flux terms of
    :meth:`~meanfield.grid.tangent.Linearisation.apply` alone, shape ``(M,) + grid.shape``."""
    g = lin.grid
    out = np.zeros((dU.shape[0],) + tuple(g.shape))
    for d in lin.axes:
        k, n = d.ax, d.n
        if k < g.N:
            du = lin._dY(dU, k)[..., None] * (lin.solver.c / g.dy[k])
        else:
            du = (-dU / g.dc)[..., None]
        out += lin._divergence(du * d.Z, k, n, lead=1)
    return out


class ForcedState(NamedTuple):
    """Time, the tangent ensemble's state (:class:`meanfield.grid.tangent.EnsembleState`) and
    the generator state of the forcing (a dict of ``bit_generator.state``)."""

    t: float
    ens: object
    rng: dict


class ForcedStepper:
    """:class:`~meanfield.grid.tangent.TangentStepper` plus the sampled noise forcing after every
    step (module doc). The generator state travels in the state."""

    def __init__(self, solver, batches, *, cfl=GRID["cfl"], ratio=None):
        self.inner = TangentStepper(solver, batches, cfl=cfl, name="SGD ensemble")
        self.solver, self.batches = solver, list(batches)
        self.ratio = ratio or (lambda s: 1.0)
        self.name, self.advice = "SGD ensemble", self.inner.advice
        self._p = np.asarray(solver.problem.w, float) / float(np.sum(solver.problem.w))

    def init(self, m, rng: np.random.Generator) -> ForcedState:
        shape = tuple(self.solver.grid.shape)
        dms = [np.zeros((b - a,) + shape) for a, b in self.batches]
        return ForcedState(0.0, self.inner.init(m, dms), rng.bit_generator.state)

    @staticmethod
    def _ens(state):
        return state.ens._replace(t=state.t)

    def propose(self, state, t_start, t_end):
        return self.inner.propose(self._ens(state), t_start, t_end)

    def step(self, state, h):
        new = self.inner.step(self._ens(state), h)
        h_taken, s0 = new.t - state.t, state.t
        lin = Linearisation(self.solver, state.ens.m)
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = state.rng
        scale = np.sqrt(h_taken * self.ratio(s0 + 0.5 * h_taken))
        dms = []
        for (a, b), d in zip(self.batches, new.dm):
            idx = rng.choice(self._p.size, size=b - a, p=self._p)
            dms.append(d + scale * noise_forcing(lin, noise_potentials(self.solver,
                                                                        state.ens.m, idx)))
        return ForcedState(new.t, new._replace(dm=tuple(dms)), rng.bit_generator.state)

    def check(self, state):
        return self.inner.check(self._ens(state))

    def capture(self, state) -> dict:
        return {**self.inner.capture(self._ens(state)), "rng": json.dumps(state.rng)}

    def restore(self, snap) -> ForcedState:
        ens = self.inner.restore(snap)
        return ForcedState(ens.t, ens, json.loads(snap["rng"]))


def sgd_covariance_ensemble(problem, save_times, dynamics=None, *,
                            members: int = ENSEMBLE["members"], grid=None,
                            root_seed: int = 0, phi_tol: float = PHI_TOL,
                            chunk: int | None = None,
                            progress: bool | None = None) -> xr.Dataset:
    r""":math:`\Sigma^{SGD}_t` per unit :math:`\theta_{ref}` from the forced tangent-linear
    grid ensemble (module doc).

    Parameters
    ----------
    problem : particles.problem.Problem
    save_times : sequence of float
    dynamics : particles.Dynamics, optional
        Its batch schedule sets :math:`\theta(s)/\theta_{ref}`; ``None``: constant θ.
    members : int
        Ensemble size M ≥ 2.
    grid, phi_tol, chunk, progress
        As :func:`meanfield.linearised.clt_covariance_ensemble`.
    root_seed : int
        The generator is PCG64 of ``SeedSequence(root_seed, spawn_key=(SGD_KEY,))``.

    Returns
    -------
    xarray.Dataset
        ``sgd_cov(t, x, x_)``, ``sgd_var(t, x)``, ``sgd_cov_stderr(t, x, x_)``,
        ``f_0_grid(t, x)``; attrs ``sgd_method = "ensemble"``, ``members``,
        ``root_seed``, ``resolution``.
    """
    ts = check_save_times(save_times)
    members = int(members)
    if members < 2:
        raise ValueError(f"members={members}: a sample covariance needs at least 2 members")
    g = ensemble_grid(grid)
    cfl = g["cfl"]
    grid, m0, truncated, eps = prepare(problem, g, phi_tol=phi_tol)
    solver = GridSolver(problem, grid, potential=g["potential"])
    cells = int(np.prod(grid.shape))
    chunk = _default_chunk(cells) if chunk is None else max(1, int(chunk))
    batches = [(s, min(members, s + chunk)) for s in range(0, members, chunk)]
    rng = np.random.Generator(np.random.PCG64(
        np.random.SeedSequence(int(root_seed), spawn_key=(SGD_KEY,))))
    T, Q = len(ts), problem.x.shape[0]
    fs = np.full((T, members, Q), np.nan)
    f0 = np.full((T, Q), np.nan)
    hs = []

    def observe(j, st):
        f0[j] = solver.f0(st.ens.m)
        for (a, b), d in zip(batches, st.ens.dm):
            fs[j, a:b] = f_half(solver, d)

    def dataset(failure=None):
        with np.errstate(invalid="ignore"):
            dev = fs - fs.mean(axis=1, keepdims=True)
            cov = np.einsum("tmq,tmp->tqp", dev, dev) / (members - 1)
            cov = 0.5 * (cov + cov.transpose(0, 2, 1))
            se = covariance_stderr(cov, members)
        xc = x_coord(problem.x)
        res = {"ny": list(grid.ny), "nc": grid.nc, "c_min": grid.c_min, "c_max": grid.c_max,
               "cfl": float(cfl), "n_steps": len(hs), "phi_resolution": eps}
        attrs = {"sgd_method": "ensemble",
                 "sgd_method_description": "sample covariance over tangent-linear grid runs "
                                           "forced by sampled single-sample velocity noise "
                                           "(THEORY §4b)",
                 "sgd_theta": theta_attrs(dynamics),
                 "members": members, "root_seed": int(root_seed), "sgd_key": SGD_KEY,
                 "resolution": json.dumps(res), "truncated_mass": float(truncated),
                 **run_status(failure)}
        data = {"sgd_cov": (("t", "x", "x_"), cov),
                "sgd_var": (("t", "x"), np.diagonal(cov, axis1=1, axis2=2).copy()),
                "sgd_cov_stderr": (("t", "x", "x_"), se),
                "f_0_grid": (("t", "x"), f0)}
        return cf_dataset(data, {"t": ts, "x": xc, "x_": xc}, attrs,
                          title="mfpc SGD covariance (forced linearised grid ensemble)")

    ratio = theta_ratio(dynamics) if dynamics is not None else None
    stepper = ForcedStepper(solver, batches, cfl=cfl, ratio=ratio)
    run(stepper, stepper.init(m0, rng), ts, observe,
        after_step=lambda old, new: hs.append(new.t - old.t), progress=progress,
        desc="SGD ensemble", partial=dataset)
    return dataset()


def with_sgd_ensemble(ds, problem, save_times, dynamics, **kwargs) -> xr.Dataset:
    """The CLT ensemble's Dataset ``ds`` with ``sgd_cov``, ``sgd_var``, ``sgd_cov_stderr``
    of :func:`sgd_covariance_ensemble` (same keyword arguments) and its ``sgd_*`` attrs
    (``sgd_resolution``: its resolution). A failure of the forced ensemble keeps ``ds`` as
    the partial result."""
    try:
        s = sgd_covariance_ensemble(problem, save_times, dynamics, **kwargs)
    except NumericalFailure as e:
        raise NumericalFailure(str(e), ds) from e
    ds = ds.assign(sgd_cov=s["sgd_cov"], sgd_var=s["sgd_var"],
                   sgd_cov_stderr=s["sgd_cov_stderr"])
    ds.attrs.update({k: v for k, v in s.attrs.items() if k.startswith("sgd_")})
    ds.attrs["sgd_resolution"] = s.attrs["resolution"]
    return ds
