"""Mean-field steppers under the one time loop: capture/restore bitwise, failure contract,
CF-1.8 datasets (characteristics, influence forward and adjoint, grid, tangent ensemble)."""

import numpy as np
import pytest
import xarray as xr

from meanfield.characteristics import solve_characteristics
from meanfield.grid.solve import GridSolver, GridStepper, prepare, solve_grid
from meanfield.influence import AdjointStepper, clt_covariance_influence
from meanfield.linearised import clt_covariance_ensemble, fluctuation_rng, sample_perturbations
from meanfield.nodes import characteristic_nodes
from meanfield.grid.tangent import TangentStepper
from particles import Dynamics, NumericalFailure, ParticleStepper, run
from particles.laws import CLaw
from particles.presets import circle_problem
from particles.engine.results import check_cf
from tests.stepping import advance, roundtrip


@pytest.fixture(scope="module")
def circle():
    return circle_problem(2.0, 16, cos=[0.0, 0.0, 0.5], sin=[0.0, 1.0, 0.0, -0.3],
                          c_law=CLaw("uniform", low=-1.5, high=1.5))




def resume_equals_whole(make, init, t0, t1, k, tmp_path):
    """Run [t0, t1] whole, and k steps + capture + savez + restore (fresh stepper) + rest."""
    stepper = make()
    whole = advance(stepper, init(stepper), t0, t1)
    stepper = make()
    part = advance(stepper, init(stepper), t0, t1, steps=k)
    assert part.t != t1, "the capture must fall inside the interval"
    snap = roundtrip(stepper.capture(part), tmp_path)
    again = make()
    return advance(again, again.restore(snap), t0, t1), whole


def test_characteristics_capture_restore(circle, tmp_path):
    y, c, w = characteristic_nodes(circle, 16, 4)

    def make():
        return ParticleStepper(circle, Dynamics("gd", "rk4", 0.05), w[None])

    got, whole = resume_equals_whole(make, lambda s: s.init(y[None], c[None]), 0.0, 0.5, 4,
                                     tmp_path)
    np.testing.assert_array_equal(got.y, whole.y)
    np.testing.assert_array_equal(got.c, whole.c)


def test_grid_capture_restore(circle, tmp_path):
    grid, m0, _, _ = prepare(circle, grid={"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5})

    def make():
        return GridStepper(GridSolver(circle, grid), cfl=0.9)

    got, whole = resume_equals_whole(make, lambda s: s.init(m0), 0.0, 0.5, 3, tmp_path)
    np.testing.assert_array_equal(got.m, whole.m)
    assert got.outflow == whole.outflow


def test_tangent_ensemble_capture_restore(circle, tmp_path):
    grid, m0, _, _ = prepare(circle, grid={"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5})
    batches = [(0, 2), (2, 3)]
    dms = [sample_perturbations(m0, b - a, fluctuation_rng(3)) for a, b in batches]

    def make():
        return TangentStepper(GridSolver(circle, grid), batches, cfl=0.9)

    got, whole = resume_equals_whole(make, lambda s: s.init(m0, [d.copy() for d in dms]),
                                     0.0, 0.3, 2, tmp_path)
    np.testing.assert_array_equal(got.m, whole.m)
    for a, b in zip(got.dm, whole.dm):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.dout, whole.dout)


def test_influence_forward_and_adjoint_capture_restore(circle, tmp_path, rng):
    y, c, w = characteristic_nodes(circle, 16, 4)
    fwd = ParticleStepper(circle, Dynamics("gd", "rk4", 0.1), w[None])
    starts, hs = [], []
    run(fwd, fwd.init(y[None], c[None]), [0.0, 1.0], lambda j, s: None,
        before_step=lambda s, h: (starts.append((s.t, s.y[0], s.c[0])), hs.append(h)))
    J, N = len(w), circle.N
    lam = (rng.standard_normal((2, J, N)), rng.standard_normal((2, J)),
           rng.standard_normal((2, J)))

    def make():
        return AdjointStepper(circle, w, starts, hs)

    def init(s):
        return s.inject(s.init(1.0), *lam)

    got, whole = resume_equals_whole(make, init, -1.0, 0.0, 4, tmp_path)
    assert whole.k == 0 and got.k == 0
    for name in ("gw", "lam_Y", "lam_C"):
        np.testing.assert_array_equal(getattr(got, name), getattr(whole, name))
    assert np.abs(whole.gw).max() > 0


# -- the failure contract ------------------------------------------------------------------
def assert_partial(err, solver, kept):
    """The partial Dataset: complete = 0, the message in attrs, CF rules, ``kept`` finite."""
    msg = str(err.value)
    # a blow-up is stopped as diverging or, if it overflows first, non-finite
    assert msg.startswith((f"{solver}: non-finite state at t=", f"{solver}: diverging at t="))
    assert "lower" in msg
    part = err.value.partial
    assert isinstance(part, xr.Dataset)
    assert part.attrs["complete"] == 0 and part.attrs["failure"] == msg
    assert check_cf(part) == []
    assert np.isfinite(kept(part)).all()
    return part


def test_characteristics_failure_keeps_partial(circle):
    # RK4 at dt = 50 overflows before t = 1e4 (and not before t = 1)
    with pytest.raises(NumericalFailure) as e:
        solve_characteristics(circle, [0.0, 1.0, 1e4], grid={"y": 16, "c": 4, "dt": 50.0})
    part = assert_partial(e, "characteristics",
                          lambda p: p["f_0_characteristics"].isel(t=[0, 1]).values)
    assert np.isnan(part["f_0_characteristics"].isel(t=-1).values).all()


def test_influence_forward_failure_keeps_partial(circle):
    with pytest.raises(NumericalFailure) as e:
        clt_covariance_influence(circle, [0.0, 1.0, 1e4], grid={"y": 16, "c": 4, "dt": 50.0})
    part = assert_partial(e, "influence (forward)",
                          lambda p: p["f_0_influence"].isel(t=[0, 1]).values)
    assert np.isnan(part["clt_cov"].values).all()


def test_influence_adjoint_failure_keeps_partial(circle, monkeypatch):
    import meanfield.influence as inf

    real = inf._rk4_vjp

    def poisoned(*args):
        gY, gC, gw = real(*args)
        return gY, gC, gw * np.nan

    monkeypatch.setattr(inf, "_rk4_vjp", poisoned)
    with pytest.raises(NumericalFailure) as e:
        clt_covariance_influence(circle, [0.0, 0.5], grid={"y": 16, "c": 4, "dt": 0.1})
    # the forward run is complete: f_0 at every save time is kept
    assert_partial(e, "influence (adjoint)", lambda p: p["f_0_influence"].values)


def _poison_after(monkeypatch, cls, method, calls, out_index=None):
    """Make ``cls.method`` return NaN from its ``calls``-th call on."""
    real = getattr(cls, method)
    count = {"n": 0}

    def wrapped(self, *args, **kw):
        count["n"] += 1
        res = real(self, *args, **kw)
        if count["n"] >= calls:
            if out_index is None:  # GridSolver.evaluate writes into its out argument
                args[1][...] = np.nan
            else:
                res = tuple(r * np.nan if i == out_index else r for i, r in enumerate(res))
        return res

    monkeypatch.setattr(cls, method, wrapped)


def test_grid_failure_keeps_partial(circle, monkeypatch):
    # 40 right-hand sides reach past t = 0.1 (>= 3 per step, cfl-bounded steps ~ 0.02)
    _poison_after(monkeypatch, GridSolver, "evaluate", 40)
    with pytest.raises(NumericalFailure) as e:
        solve_grid(circle, [0.0, 0.1, 5.0], grid={"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5},
                   progress=False)
    part = assert_partial(e, "grid", lambda p: p["f_0"].isel(t=[0, 1]).values)
    assert np.isnan(part["f_0"].isel(t=-1).values).all()
    assert np.isfinite(part["rho_0"].isel(t=1).values).all()


def test_ensemble_failure_keeps_partial(circle, monkeypatch):
    from meanfield.grid.tangent import Linearisation

    _poison_after(monkeypatch, Linearisation, "apply", 40, out_index=0)
    with pytest.raises(NumericalFailure) as e:
        clt_covariance_ensemble(circle, [0.0, 0.05, 5.0], members=4,
                                grid={"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5}, progress=False)
    part = assert_partial(e, "ensemble", lambda p: p["clt_cov"].isel(t=[0, 1]).values)
    assert np.isnan(part["clt_cov"].isel(t=-1).values).all()


def test_every_solver_dataset_follows_cf(circle):
    ts = [0.0, 0.2]
    for ds in (solve_grid(circle, ts,
                          grid={"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5}, progress=False),
               solve_characteristics(circle, ts, grid={"y": 16, "c": 4}, save_nodes=True),
               clt_covariance_influence(circle, ts, grid={"y": 16, "c": 4}),
               clt_covariance_ensemble(circle, ts, members=3,
                                       grid={"y": 64, "c": 24, "c_min": -2.5, "c_max": 2.5}, progress=False)):
        assert check_cf(ds) == [], ds.attrs["title"]
        assert ds.attrs["complete"] == 1
