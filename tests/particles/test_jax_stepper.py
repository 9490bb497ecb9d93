"""The JAX particle stepper against the numpy one: GD to round-off, SGD and Langevin in
law, capture/restore bitwise, the failure contract."""
import dataclasses

import numpy as np
import pytest

pytest.importorskip("jax")

from particles import Dynamics, simulate  # noqa: E402
from particles.engine.loop import NumericalFailure  # noqa: E402
from particles.jax.stepper import JaxParticleStepper  # noqa: E402
from particles.simulate import member_rng  # noqa: E402
from tests.particles.jaxcases import CASES  # noqa: E402

#: GD float64, numpy against JAX after K = 100 steps. Both evaluate the same sums in
#: another order (XLA fuses and reassociates; autodiff against the hand-written
#: pull-back): one velocity differs by about (Q + n) eps ~ 50 * 1.1e-16 ~ 6e-15 of its
#: terms' size. Through K steps of a flow whose step map has Lipschitz constant
#: 1 + hL, the differences add to at most K * 6e-15 * exp(K h L); with K h = 5 and
#: L <= 1 for these problems (|c| <= 3, kernels of unit size) that is 6e-13 * e^5 ~ 1e-10.
#: Measured: at most 5e-16 (every kernel, both integrators).
GD_TOL = 1e-10
#: GD float32 against numpy float64: the state is rounded to float32 at every step
#: (eps32 = 6e-8 relative), and each velocity carries a random round-off of about
#: sqrt(Q + n) eps32 ~ 4e-7 of its terms, scaled by h = 0.05 per step and added over 100
#: steps like a random walk: 10 * 0.05 * 4e-7 = 2e-7 on top of the storage round-off.
#: 1e-5 leaves a margin of 50 (measured: 1.3e-7); float64 round-off (1e-16) is far below
#: the lower bound 1e-9, so the run is float32 indeed.
F32_TOL = 1e-5
TS = [0.0, 2.5, 5.0]


def _pair(problem, dyn, n=12, seeds=2, **kw):
    a = simulate(problem, [n], seeds, dyn, TS, progress=False, root_seed=4, **kw)
    b = simulate(problem, [n], seeds, dataclasses.replace(dyn, backend="jax"), TS,
                 progress=False, root_seed=4, **kw)
    return a, b


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(a))))


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
@pytest.mark.parametrize("case", list(CASES))
def test_gd_agrees_to_round_off(case, integrator):
    a, b = _pair(CASES[case](), Dynamics("gd", integrator, 0.05))
    assert b.attrs["backend"] == "jax" and b.attrs["device"].startswith("cpu")
    for v in ("f_n", "c", "y", "loss"):
        assert _rel(a[v].values, b[v].values) <= GD_TOL, v
    assert float(a["loss"][0, 0, -1]) < float(a["loss"][0, 0, 0])  # it trained


def test_gd_float32():
    dyn = Dynamics("gd", "euler", 0.05)
    a = simulate(CASES["circle"](), [12], 2, dyn, TS, progress=False)
    b = simulate(CASES["circle"](), [12], 2,
                 dataclasses.replace(dyn, backend="jax", dtype="float32"), TS, progress=False)
    assert b.attrs["dtype"] == "float32"
    err = _rel(a["f_n"].values, b["f_n"].values)
    assert 1e-9 < err <= F32_TOL  # float32 round-off, not float64's


def _spread(ds, n):
    """n · E|f_n − mean f_n|²_μ over the seeds at the last time and its standard error."""
    f = ds["f_n"].values[0, :, -1]  # (S, Q)
    w = ds["x_weight"].values
    S = f.shape[0]
    D = np.sum(w * (f - f.mean(axis=0)) ** 2, axis=-1) * S / (S - 1)
    return n * D.mean(), n * D.std(ddof=1) / np.sqrt(S)


@pytest.mark.parametrize("dyn", [
    Dynamics("sgd", "euler", 0.1, batch=[[0.0, 4], [1.0, {"P0": 0.5, "alpha": 0.5}]]),
    Dynamics("langevin", "euler", 0.1, temperature=0.02)], ids=["sgd-quench", "langevin"])
def test_noisy_schemes_agree_in_law(dyn):
    """n·Var(f_n) over 256 seeds from one initial network: only the noise spreads them,
    so a wrong batch, temperature or key would show; within 3 standard errors."""
    n, S = 8, 256
    problem = CASES["circle"]()
    y0, c0 = problem.sample_init(np.random.default_rng(0), n)
    init = (np.broadcast_to(y0, (S,) + y0.shape), np.broadcast_to(c0, (S, n)))
    ts = [0.0, 2.0]
    a = simulate(problem, [n], S, dyn, ts, progress=False, init=init, save_state=False)
    b = simulate(problem, [n], S, dataclasses.replace(dyn, backend="jax"), ts,
                 progress=False, init=init, save_state=False)
    (va, sa), (vb, sb) = _spread(a, n), _spread(b, n)
    assert va > 10 * sa  # the noise spreads the members measurably
    assert abs(va - vb) <= 3 * np.hypot(sa, sb), (va, vb, sa, sb)


def _stepper(problem, dyn, n, S):
    st = JaxParticleStepper(problem, dyn, 1.0 / n, labels=[f"seed {s}" for s in range(S)])
    rngs = [member_rng(0, 0, s) for s in range(S)]
    d = [problem.sample_init(r, n) for r in rngs]
    return st, st.init(np.stack([v[0] for v in d]), np.stack([v[1] for v in d]), rngs)


@pytest.mark.parametrize("dyn", [
    Dynamics("sgd", "euler", 0.1, batch=5, backend="jax"),
    Dynamics("langevin", "euler", 0.1, temperature=0.05, backend="jax", dtype="float32")],
    ids=["sgd", "langevin-f32"])
def test_capture_restore_and_chunks_bitwise(dyn):
    problem = CASES["sphere"]()
    st, s0 = _stepper(problem, dyn, 6, 3)
    st.propose(s0, 0.0, 3.0)
    whole, k = st.advance(s0, 3.0, 30)
    assert k == 30 and whole.steps == 30
    part, _ = st.advance(s0, 3.0, 11)
    snap = st.capture(part)
    fresh, _ = _stepper(problem, dyn, 6, 3)
    fresh.propose(s0, 0.0, 3.0)
    rest = fresh.restore({k: (v.copy() if isinstance(v, np.ndarray) else v)
                          for k, v in snap.items()})
    for _ in range(19):  # step by step after the restore: the same numbers
        rest = fresh.step(rest, fresh._h)
    for u, v in ((whole.y, rest.y), (whole.c, rest.c)):
        assert np.array_equal(np.asarray(u), np.asarray(v))
    assert np.asarray(whole.y).dtype == np.dtype(dyn.dtype)
    # on the sphere: the constraint holds after the steps
    r = np.linalg.norm(np.asarray(whole.y, float), axis=-1)
    eps = np.finfo(dyn.dtype).eps
    assert np.max(np.abs(r - np.sqrt(3))) <= 8 * eps * np.sqrt(3)


def test_member_alone_draws_the_same_numbers():
    dyn = Dynamics("langevin", "euler", 0.1, temperature=0.05, backend="jax")
    problem = CASES["circle"]()
    both = simulate(problem, [8], 3, dyn, [0.0, 1.0], progress=False)
    alone = simulate(problem, [8], [2], dyn, [0.0, 1.0], progress=False)
    # the same noise; the compiled shapes differ (3 members against 1), so the numbers
    # agree to round-off (10 steps of ~1e-15 each)
    np.testing.assert_allclose(alone["c"].values[0, 0], both["c"].values[0, 2], rtol=0,
                               atol=1e-12)


def test_nan_keeps_the_partial_result():
    problem = CASES["sigmoid"]()
    dyn = Dynamics("gd", "euler", 40.0, backend="jax")  # far beyond 2/L: overflows
    ts = [0.0, 40.0, 4000.0]
    with pytest.raises(NumericalFailure) as e:
        simulate(problem, [8], 2, dyn, ts, progress=False)
    ds = e.value.partial
    assert ds.attrs["complete"] == 0 and "particles: " in ds.attrs["failure"]
    assert np.all(np.isfinite(ds["f_n"].values[0, :, 0]))
    assert np.all(np.isnan(ds["f_n"].values[0, :, -1]))
    # the replay names the step where it failed: the numpy backend fails at the same t
    with pytest.raises(NumericalFailure) as ref:
        simulate(problem, [8], 2, dataclasses.replace(dyn, backend="numpy"), ts,
                 progress=False)
    t_of = lambda m: m.split(" at t=")[1].split(" ")[0]  # noqa: E731
    assert t_of(str(e.value)) == t_of(str(ref.value))


@pytest.mark.parametrize("kill_at", [5, 12])
def test_killed_run_resumes_bitwise(tmp_path, kill_at):
    from particles.engine.checkpoint import Checkpoint
    from tests.particles.test_checkpoint import Clock, Killed, assert_same

    problem = CASES["circle"]()
    dyn = Dynamics("sgd", "euler", 0.05, batch=4, backend="jax")
    ts = [0.0, 0.3, 1.0, 1.6]

    def run(ck=None):
        return simulate(problem, [4, 8], 2, dyn, ts, root_seed=3, progress=False,
                        checkpoint=ck)

    ref = run()
    path = tmp_path / "task.npz"
    first = Checkpoint(path, 0, key="k", clock=Clock(kill_at))  # a checkpoint every call
    with pytest.raises(Killed):
        run(first)
    assert first.writes > 0
    assert_same(run(Checkpoint(path, 1e9, key="k")), ref)


def test_node_blocks_give_the_same_gradient(monkeypatch):
    """Nodes cut into blocks (a small PAIR_BUDGET) sum to the one-block gradient."""
    import particles.jax.stepper as js

    dyn = Dynamics("gd", "euler", 0.05, backend="jax")
    one = simulate(CASES["gaussian"](), [12], 2, dyn, TS, progress=False)
    monkeypatch.setattr(js, "PAIR_BUDGET", 2 * 12 * 8)  # 8 nodes a block: 5 blocks of 36
    blocks = simulate(CASES["gaussian"](), [12], 2, dyn, TS, progress=False)
    # the same sums in blocks of 8 nodes: round-off of the node sums (~36 eps) per step
    np.testing.assert_allclose(blocks["f_n"].values, one["f_n"].values, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_sweep_on_two_jax_workers_equals_serial(tmp_path):
    """Tasks of one seed each: every task compiles the same shapes in its own process,
    so 2 spawned workers give bitwise the serial sweep."""
    from tests.analysis.test_runs import config, run
    from tests.analysis.test_sweep import assert_same_run, load

    cfg = config("particles")
    cfg["particles"]["seeds_per_task"] = 1
    cfg["dynamics"]["backend"] = "jax"
    assert run(tmp_path, cfg, tmp_path / "serial") == 0
    assert run(tmp_path, cfg, tmp_path / "two", "--workers", "2") == 0
    a, b = load(tmp_path / "serial" / "particles.nc"), load(tmp_path / "two" / "particles.nc")
    assert a.attrs["backend"] == "jax"
    assert_same_run(b, a)


def test_finite_divergence_is_stopped_with_where_and_when():
    """GD with a step far beyond 2/L stays finite for many steps while the loss grows
    (tests/particles/test_divergence.py: circle, Euler dt = 50 reaches 1e10): the watch
    inside the compiled loop stops it at the step whose loss rose, as the numpy stepper."""
    problem = CASES["circle"]()
    dyn = Dynamics("gd", "euler", 50.0, backend="jax")
    ts = [0.0, 50.0, 100.0, 500.0]
    with pytest.raises(NumericalFailure) as e:
        simulate(problem, [16], 2, dyn, ts, progress=False)
    with pytest.raises(NumericalFailure) as ref:
        simulate(problem, [16], 2, dataclasses.replace(dyn, backend="numpy"), ts,
                 progress=False)
    assert "diverging at t=" in str(e.value) and "gradient descent may not raise" in str(e.value)
    t_of = lambda m: m.split(" at t=")[1].split(" ")[0]  # noqa: E731
    assert t_of(str(e.value)) == t_of(str(ref.value))
    assert e.value.partial.attrs["complete"] == 0


@pytest.mark.parametrize("integrator", ["euler", "rk4"])
def test_interpolation_energy_kernel_form_agrees(integrator):
    """The kernel (F, K) form of the interpolation energy (4.5) on the sphere (Fig. 1):
    autodiff of the energy with K = φ against the fused numpy sums; 100 steps, the
    tolerance of GD_TOL (the same derivation: a sum of n + d terms per velocity)."""
    from particles.presets import sphere_problem

    problem = sphere_problem(5, 1.0, 200, "interpolation", "3spin", seed=0)
    dyn = Dynamics("gd", integrator, 0.002, form="kernel")
    ts = [0.0, 0.1, 0.2]
    a = simulate(problem, [16], 2, dyn, ts, progress=False)
    b = simulate(problem, [16], 2, dataclasses.replace(dyn, backend="jax"), ts,
                 progress=False)
    for v in ("f_n", "c", "y"):
        assert _rel(a[v].values, b[v].values) <= GD_TOL, v
    assert float(a["loss"][0, 0, -1]) < float(a["loss"][0, 0, 0])


class _HostOnly:
    """A target the JAX backend knows no formula of: evaluated by a host callback."""

    capabilities = frozenset({"evaluate", "grad"})
    name = "host-only"

    def __init__(self, target):
        self.target = target

    def params(self):
        return {}

    def __call__(self, x):
        return self.target(x)

    def grad(self, x):
        return self.target.grad(x)


@pytest.mark.parametrize("case", ["sgd", "kernel-form"])
def test_targets_on_device_equal_the_host_callback(case):
    """The built-in targets in jax.numpy (particles/jax/targets.py) against the same
    target through a host callback: the same keys, the same batches, round-off apart."""
    from particles.presets import sphere_problem

    if case == "sgd":
        problem = CASES["circle"]()
        dyn = Dynamics("sgd", "euler", 0.1, batch=6, backend="jax")
    else:
        problem = sphere_problem(5, 1.0, 200, "interpolation", "3spin", seed=0)
        dyn = Dynamics("gd", "euler", 0.002, form="kernel", backend="jax")
    host = problem.replace(target=_HostOnly(problem.target),
                           kernel_form=problem.kernel_form)
    ts = [0.0, 10 * dyn.dt, 40 * dyn.dt]
    a = simulate(problem, [8], 2, dyn, ts, progress=False)
    b = simulate(host, [8], 2, dyn, ts, progress=False)
    # 40 steps of velocities whose target values differ by round-off (~1e-16 of f)
    assert _rel(a["c"].values, b["c"].values) <= GD_TOL
    assert _rel(a["y"].values, b["y"].values) <= GD_TOL
