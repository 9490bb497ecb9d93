"""Fused (F, K) velocities (:mod:`particles.kernelforms`) against the reference.

Every entry of :data:`particles.closed_forms.CLOSED_FORMS` carries ``KernelForm.fused``;
each is held against ``KernelForm.velocity_reference`` (the closed-form ``K``, ``grad_K``
materialised as (B, n, n) and (B, n, n, N) arrays) for several B, n = 0, 1 and many,
d = 1, 3, 5, the default tiles and tiny ``block`` values that force ragged tiles over
members, units and other units.

Tolerance: both sides sum the same O(n + m_teacher) terms of size O(max |K|·|ac|) in
another order, and the fused side forms the exponent as a product
(|y|² + |y'|² − 2y·y' instead of |y − y'|², with |y| = O(1-3) here), so each sum agrees
to a few hundred ulps of its largest term: 1e-12 of the largest entry of each output
(and 1e-12 relative per entry) holds with a wide margin and catches any wrong
coefficient, sign or missing term, which move results by O(1).
"""
import tracemalloc

import numpy as np
import pytest

from particles.closed_forms import CLOSED_FORMS, kernel_form
from particles.dynamics import Dynamics, State, step
from particles.kernels import CircleKernel, GaussianRBF, SphereRBF
from particles.measures import CircleUniform, GaussianMeasure, Lebesgue, SphereUniform
from particles.problem import Problem
from particles.targets import FourierTarget, GaussianMixture, TeacherNetwork, ThreeSpin

RTOL = 1e-12


def _circle(d, rng):
    kernel = CircleKernel(1.7)
    return kernel, CircleUniform(8), FourierTarget([0.2, 1.0, -0.3], [0.0, 0.5, 0.4]), "data"


def _gaussian_line(d, rng):
    kernel = GaussianRBF(d, 0.8, normalised=True)
    target = GaussianMixture([0.7, -1.1], rng.uniform(-1, 1, (2, d)), [0.5, 0.9])
    return kernel, Lebesgue([-3.0] * d, [3.0] * d, 3), target, "data"


def _gaussian_teacher(d, rng, normalised=False):
    kernel = GaussianRBF(d, 0.9, normalised=normalised)
    teacher = TeacherNetwork(kernel, rng.standard_normal((4, d)), rng.standard_normal(4))
    return kernel, GaussianMeasure(d, 5, rng, scale=1.3), teacher, "data"


def _sphere_3spin(d, rng):
    kernel = SphereRBF(d, 5.0 / d)
    return kernel, SphereUniform(d, 5, rng), ThreeSpin.random(d, rng), "interpolation"


def _sphere_teacher(d, rng):
    kernel = SphereRBF(d, 5.0 / d)
    teacher = TeacherNetwork(kernel, kernel.retract(rng.standard_normal((3, d))),
                             rng.standard_normal(3))
    return kernel, SphereUniform(d, 5, rng), teacher, "interpolation"


#: one builder of parts per entry of CLOSED_FORMS (checked below), and the d it allows
CASES = {
    ("circle", "circle", "fourier", "data"): (_circle, [1]),
    ("gaussian", "lebesgue", "gaussian_mixture", "data"): (_gaussian_line, [1, 3, 5]),
    ("gaussian", "gaussian", "teacher", "data"): (_gaussian_teacher, [1, 3, 5]),
    ("sphere", "sphere", "3spin", "interpolation"): (_sphere_3spin, [3, 5]),
    ("sphere", "sphere", "teacher", "interpolation"): (_sphere_teacher, [3, 5]),
}
PARAMS = [(key, d) for key, (_, ds) in CASES.items() for d in ds]
IDS = [f"{key[0]}-{key[1]}-{key[2]}-d{d}" for key, d in PARAMS]


def _form(key, d, seed=0):
    rng = np.random.default_rng([seed, d, len(key[2])])
    kernel, measure, target, energy = CASES[key][0](d, rng)
    form, reason = kernel_form(kernel, measure, target, energy)
    assert form is not None, reason
    assert form.fused is not None
    return kernel, form


def _units(kernel, B, n, rng):
    if kernel.y_domain == "circle":
        y = rng.uniform(-np.pi, 3 * np.pi, (B, n, 1))  # also beyond one period
    else:
        y = kernel.retract(1.2 * rng.standard_normal((B, n, kernel.N)))
    return y, 3.0 * rng.standard_normal((B, n)) / max(n, 1)


def _assert_close(got, ref):
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == np.float64
        scale = np.max(np.abs(r)) if r.size else 0.0
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=RTOL * scale)


def test_every_closed_form_is_covered():
    assert set(CASES) == {(k.name, m.name, t.name, e) for k, m, t, e in CLOSED_FORMS}


@pytest.mark.parametrize("B,n", [(1, 0), (2, 1), (1, 2), (3, 17), (2, 64)])
@pytest.mark.parametrize("key,d", PARAMS, ids=IDS)
def test_fused_velocity_matches_reference(key, d, B, n):
    kernel, form = _form(key, d)
    y, ac = _units(kernel, B, n, np.random.default_rng([B, n, d]))
    _assert_close(form.velocity(y, ac), form.velocity_reference(y, ac))


@pytest.mark.parametrize("block", [1, 5, 13, 64, 10**7])
@pytest.mark.parametrize("key,d", PARAMS, ids=IDS)
def test_tiny_tiles_match_reference(key, d, block):
    """block = 1: one pair per tile; 5, 13: ragged tiles of rows and columns; 64: whole
    rows and several members per tile at n = 11; 10**7: capped at one BLAS thread."""
    kernel, form = _form(key, d)
    y, ac = _units(kernel, 3, 11, np.random.default_rng([block, d]))
    _assert_close(form.fused(y, ac, block=block), form.velocity_reference(y, ac))


def test_gaussian_teacher_normalised_prefactor():
    rng = np.random.default_rng(3)
    kernel, measure, target, _ = _gaussian_teacher(3, rng, normalised=True)
    form, _ = kernel_form(kernel, measure, target)
    y, ac = _units(kernel, 2, 9, rng)
    _assert_close(form.velocity(y, ac), form.velocity_reference(y, ac))


def test_sphere_teacher_of_another_width_uses_its_own_F():
    """A teacher built on a sphere kernel with another alpha cannot join the sum: F is
    the target's own, and the result is still the reference."""
    rng = np.random.default_rng(4)
    kernel = SphereRBF(3, 1.0)
    teacher = TeacherNetwork(SphereRBF(3, 2.0), kernel.retract(rng.standard_normal((3, 3))),
                             rng.standard_normal(3))
    form, _ = kernel_form(kernel, SphereUniform(3, 5, rng), teacher, "interpolation")
    y, ac = _units(kernel, 2, 7, rng)
    _assert_close(form.velocity(y, ac), form.velocity_reference(y, ac))


def test_far_from_origin_line_form():
    """The line form shifts y by the members' mean: units centred at 40 (|y|² ~ 1600
    against |y − y'|² ~ 1) still agree with the reference at 1e-12."""
    kernel, form = _form(("gaussian", "lebesgue", "gaussian_mixture", "data"), 3)
    rng = np.random.default_rng(5)
    y = 40.0 + rng.standard_normal((2, 20, 3))
    ac = rng.standard_normal((2, 20)) / 20
    got, ref = form.velocity(y, ac), form.velocity_reference(y, ac)
    # F is ~0 that far out: compare the interaction parts (vc − F, gy − ∇F)
    F, gF = form.F(y), form.grad_F(y)
    _assert_close((got[0] - F, got[1] - gF), (ref[0] - F, ref[1] - gF))


@pytest.mark.parametrize("key,d", [(k, ds[-1]) for k, (_, ds) in CASES.items()],
                         ids=[k[0] + "-" + k[2] for k in CASES])
def test_no_n_by_n_by_d_array(key, d):
    """n = 600: an (n, n) float64 array is 2.9 MB, an (n, n, d) one d times more; the fused
    velocity's peak traced allocation stays below half of one (n, n) array (its tiles are
    at most SINGLE_GEMM // k pairs, under 1 MiB, plus O(n·d) vectors), while the reference's
    is above the (n, n, d) size, so the check can fail."""
    kernel, form = _form(key, d)
    n = 600
    y, ac = _units(kernel, 1, n, np.random.default_rng(6))
    form.velocity(y, ac)  # grow the reused tile buffer outside the trace
    tracemalloc.start()
    try:
        form.velocity(y, ac)
        fused_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        form.velocity_reference(y, ac)
        ref_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fused_peak < 0.5 * n * n * 8, fused_peak
    assert ref_peak > n * n * kernel.N * 8, ref_peak


def test_problem_velocity_uses_fused_form_and_step_agrees():
    """Problem.velocity(form="kernel") goes through the fused form (a form whose
    reference K is broken still steps correctly), and one Euler step through
    particles.dynamics.step equals the reference step."""
    key = ("sphere", "sphere", "3spin", "interpolation")
    rng = np.random.default_rng(7)
    kernel, measure, target, energy = CASES[key][0](5, rng)
    form, _ = kernel_form(kernel, measure, target, energy)
    law = type("Law", (), {"sample": lambda self, r, n: r.standard_normal((n, 5))})()
    good = Problem(kernel, measure, target, law, law, kernel_form=form)
    broken = good.replace(kernel_form=type(form)(form.F, form.grad_F, None, None,
                                                 "no reference", form.fused))
    y, c = _units(kernel, 2, 30, rng)
    ac_ref = form.velocity_reference(y, c / 30)
    vy, vc = broken.velocity(y, c, 1 / 30, form="kernel")
    _assert_close((vc,), (ac_ref[0],))
    _assert_close((vy,), (kernel.tangent(y, c[..., None] * ac_ref[1]),))
    dyn = Dynamics(scheme="gd", integrator="euler", dt=0.01, form="kernel")
    s1 = step(good, dyn, State(0.0, y, c), 0.01, 1 / 30)
    _assert_close((s1.c, s1.y), (c + 0.01 * vc, kernel.retract(y + 0.01 * vy)))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("key,d", [(k, ds[-1]) for k, (_, ds) in CASES.items()],
                         ids=[k[0] + "-" + k[2] for k in CASES])
def test_threads_over_row_blocks_match_reference(key, d, threads):
    """Threads over row blocks (each its own tile buffer, disjoint rows of the result):
    ragged parts (block = 40 at n = 37: 2 rows per tile, 19 row blocks)."""
    kernel, form = _form(key, d)
    y, ac = _units(kernel, 2, 37, np.random.default_rng([threads, d]))
    ref = form.velocity_reference(y, ac)
    _assert_close(form.fused(y, ac, block=40, threads=threads), ref)
    _assert_close(form.fused(y, ac, threads=threads), ref)


def test_symmetric_sums_are_bitwise_whatever_the_threads():
    """The symmetric pair sums cut their tile pairs into a fixed number of parts, so 1, 2
    and 3 threads (and the MFPC_THREADS default) give the same bits: a sweep's worker on
    one thread reproduces a serial run on two."""
    from particles import pairsums
    from particles.engine import parallel
    from particles.engine.parallel import threads

    rng = np.random.default_rng(7)
    n, k, r = 1024, 6, 4  # n^2 pair terms >= MIN_WORK: the parted path, on the pool
    assert n * n >= parallel.MIN_WORK and parallel.PARTS > 1
    U = rng.normal(size=(1, n, k)) * 0.3
    V = np.swapaxes(U, 1, 2).copy()
    R = rng.normal(size=(1, n, r))
    got = []
    for th in (1, 2, 3):
        with threads(th):
            got.append(pairsums.exp_contract_sym(U, V, R))
        got.append(pairsums.exp_contract_sym(U, V, R, threads=th))
    for g in got[1:]:
        assert np.array_equal(g, got[0])
