"""Fused pull-backs of the RBF kernels against ``pullback_reference``.

``GaussianRBF.pullback`` and ``SphereRBF.pullback`` evaluate φ through a thin matrix
product and one ``exp`` (:mod:`particles.kernels.expblocks`); the reference loops over
members and particles with ``phi`` / ``phi_grad``. Both compute the same sums in another
order, and the exponent of the Gaussian comes from |x|² + |y|² − 2x·y of centred points
instead of |x − y|²: the difference is round-off of O(1) numbers, about 1e-15 relative
(measured: at most 2e-15 on these cases). Tolerance: rtol 1e-12 elementwise, and
atol 1e-13 of each array's largest entry, for entries near zero that are differences of
O(1) terms (g_y = E(w r x) − y E(w r)); a wrong factor, sign or index is off by O(1).
"""
import numpy as np
import pytest

from particles.engine import parallel
from particles.kernels import GaussianRBF, Kernel, SphereRBF, pullback_reference

KERNELS = {
    "gaussian": lambda: GaussianRBF(3, 0.8),
    "gaussian-normalised": lambda: GaussianRBF(3, 0.6, normalised=True),
    "gaussian-d1": lambda: GaussianRBF(1, 0.7071067811865476, normalised=True),
    "sphere": lambda: SphereRBF(3, 1.3),
    "sphere-d5": lambda: SphereRBF(5, 1.0),
}


def _points(kernel, rng, shape, offset=0.0):
    z = rng.standard_normal(shape + (kernel.d,))
    if isinstance(kernel, SphereRBF):
        return kernel.retract(z)
    return offset + 1.5 * z


def _case(kernel, rng, B, n, Q, batched, offset=0.0):
    y = _points(kernel, rng, (B, n), offset)
    a = rng.standard_normal((B, n)) / max(n, 1)
    xs = (B, Q) if batched else (Q,)
    x = _points(kernel, rng, xs, offset)
    w = rng.uniform(0.5, 1.5, xs) / max(Q, 1)
    f_x = rng.standard_normal(xs)
    return y, a, x, w, f_x


def _assert_matches(kernel, args):
    got = kernel.pullback(*args)
    ref = pullback_reference(kernel, *args)
    B, n, N = args[0].shape
    Q = args[2].shape[-2]
    for g, r, shape in zip(got, ref, [(B, Q), (B, n), (B, n, N)]):
        assert g.shape == shape
        assert g.dtype == np.float64
        scale = np.max(np.abs(r), initial=0.0)
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-13 * scale)
    return got


@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,d)", "x(B,P,d)"])
@pytest.mark.parametrize("n", [0, 1, 7, 40])
@pytest.mark.parametrize("name", list(KERNELS))
def test_rbf_matches_reference(name, n, batched):
    kernel = KERNELS[name]()
    rng = np.random.default_rng([n, batched, len(name)])
    _assert_matches(kernel, _case(kernel, rng, 3, n, 23, batched))


@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,d)", "x(B,P,d)"])
@pytest.mark.parametrize("block,keep,qmin", [(8, 0, 1), (16, 40, 4), (50, 200, 3),
                                             (64, 10**6, 32), (10**6, 10**6, 32)])
@pytest.mark.parametrize("name", ["gaussian-normalised", "sphere"])
def test_rbf_blocked_matches_unblocked(monkeypatch, name, block, keep, qmin, batched):
    """Tiny budgets force ragged node blocks and particle tiles, rebuilt ones among them
    (keep < n·Qb): the blocked pass against the reference and the one-block pass."""
    kernel = KERNELS[name]()
    rng = np.random.default_rng(block + keep + qmin)
    args = _case(kernel, rng, 2, 37, 29, batched)
    whole = kernel.pullback(*args)  # default budget: one block here
    monkeypatch.setattr(parallel, "TILE", block)
    monkeypatch.setattr(parallel, "KEEP", keep)
    monkeypatch.setattr(parallel, "QMIN", qmin)
    got = _assert_matches(kernel, args)
    for g, h in zip(got, whole):
        np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-13 * np.max(np.abs(h)))


def test_gaussian_far_from_origin_keeps_round_off():
    """Data and units centred at 40 (|x|² ~ 5000): the exponent from norms would lose
    ~eps·s·|x|² ~ 1e-12 relative; centring on the mean node keeps round-off."""
    kernel = GaussianRBF(3, 0.5)
    rng = np.random.default_rng(5)
    for batched in (False, True):
        _assert_matches(kernel, _case(kernel, rng, 2, 30, 25, batched, offset=40.0))


@pytest.mark.parametrize("name", list(KERNELS))
def test_rbf_fused_agrees_with_generic(name):
    """The fused pass and the generic one (``phi_grad`` materialised) agree."""
    kernel = KERNELS[name]()
    args = _case(kernel, np.random.default_rng(7), 2, 25, 31, False)
    for g, h in zip(kernel.pullback(*args), Kernel.pullback(kernel, *args)):
        np.testing.assert_allclose(g, h, rtol=1e-12, atol=1e-13 * np.max(np.abs(h)))


def test_rbf_results_do_not_alias_the_work_buffer(monkeypatch):
    """The per-thread buffer is reused across calls and shapes: earlier results stand."""
    monkeypatch.setattr(parallel, "TILE", 16)
    monkeypatch.setattr(parallel, "KEEP", 64)
    monkeypatch.setattr(parallel, "QMIN", 4)
    rng = np.random.default_rng(3)
    g, s = GaussianRBF(3, 0.8), SphereRBF(3, 1.3)
    big = _case(g, rng, 2, 30, 20, False)
    small = _case(s, rng, 3, 7, 9, True)
    first = [v.copy() for v in g.pullback(*big)]
    out = g.pullback(*big)
    s.pullback(*small)
    for u, v in zip(out, first):
        np.testing.assert_array_equal(u, v)


def test_sphere_pullback_is_not_projected():
    """The pull-back returns α E(w r x) unprojected; the problem applies ``tangent``."""
    kernel = SphereRBF(3, 1.3)
    args = _case(kernel, np.random.default_rng(11), 1, 5, 17, False)
    g_y = kernel.pullback(*args)[2]
    assert np.max(np.abs(np.sum(g_y * args[0], axis=-1))) > 1e-3
