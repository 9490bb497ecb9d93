"""CircleKernel.pullback (blocked angle-addition fast path) against pullback_reference."""
import threading

import numpy as np
import pytest

from particles.engine import parallel
from particles.kernels import CircleKernel, pullback_reference


def _case(rng, B, n, Q, batched):
    y = rng.uniform(0, 2 * np.pi, (B, n, 1))
    a = rng.standard_normal((B, n)) / n
    if batched:  # an SGD batch: nodes, weights and target per member
        x = rng.uniform(0, 2 * np.pi, (B, Q, 1))
        w = np.full((B, Q), 1.0 / Q)
        f_x = np.cos(x[..., 0]) + 0.3 * np.sin(2 * x[..., 0])
    else:
        x = (2 * np.pi * np.arange(Q) / Q)[:, None]
        w = rng.uniform(0.5, 1.5, Q) / Q
        f_x = np.cos(x[:, 0]) + 0.3 * np.sin(2 * x[:, 0])
    return y, a, x, w, f_x


def _assert_matches(kernel, args):
    got = kernel.pullback(*args)
    ref = pullback_reference(kernel, *args)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-14)
    return got


@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,1)", "x(B,P,1)"])
@pytest.mark.parametrize("Q", [16, 33])
@pytest.mark.parametrize("n", [1, 7, 50])
@pytest.mark.parametrize("B", [1, 3])
def test_matches_reference(B, n, Q, batched):
    rng = np.random.default_rng([B, n, Q, batched])
    _assert_matches(CircleKernel(2.0), _case(rng, B, n, Q, batched))


@pytest.mark.parametrize("kappa", [0.5, 8.0])
@pytest.mark.parametrize("block,keep", [(16, 0), (64, 0), (64, 200), (200, 64), (100, 10**6)])
@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,1)", "x(B,P,1)"])
def test_many_blocks_match_reference(monkeypatch, kappa, block, keep, batched):
    """Small blocks force ragged blocks, rebuilt in pass 2 unless kept."""
    monkeypatch.setattr(parallel, "TILE", block)
    monkeypatch.setattr(parallel, "KEEP", keep)
    rng = np.random.default_rng(block + keep)
    _assert_matches(CircleKernel(kappa), _case(rng, 3, 50, 16, batched))


def test_buffer_reuse_across_shapes_does_not_alias_results(monkeypatch):
    monkeypatch.setattr(parallel, "TILE", 64)
    monkeypatch.setattr(parallel, "KEEP", 200)
    kernel = CircleKernel(2.0)
    rng = np.random.default_rng(1)
    big = _case(rng, 2, 50, 33, False)
    small = _case(rng, 3, 7, 16, True)
    first = kernel.pullback(*big)
    kept = [o.copy() for o in first]
    _assert_matches(kernel, small)  # reuses (a view of) the same work buffer
    _assert_matches(kernel, big)
    for o, k in zip(first, kept):
        np.testing.assert_array_equal(o, k)


def test_threads_do_not_share_the_buffer(monkeypatch):
    monkeypatch.setattr(parallel, "TILE", 64)  # many blocks: long use of the buffer
    monkeypatch.setattr(parallel, "KEEP", 200)
    kernel = CircleKernel(2.0)
    rng = np.random.default_rng(2)
    cases = [_case(rng, 2, 40 + 10 * i, 16 + 17 * (i % 2), bool(i % 2)) for i in range(4)]
    expected = [kernel.pullback(*c) for c in cases]
    errors = []

    def work(i):
        for _ in range(50):
            got = kernel.pullback(*cases[i])
            for g, e in zip(got, expected[i]):
                if not np.array_equal(g, e):
                    errors.append(i)
                    return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_default_blocks_on_a_benchmark_shape():
    """n·Q above the kept budget with the shipped block sizes (B = 2, Q = 256)."""
    rng = np.random.default_rng(3)
    n = parallel.KEEP // 256 + 700
    _assert_matches(CircleKernel(2.0), _case(rng, 2, n, 256, False))


@pytest.mark.parametrize(
    "layout", ["x(1,Q,1)", "scalar w, f_x(B,Q)", "n=0"]
)
def test_broadcast_and_empty_inputs(layout):
    rng = np.random.default_rng(4)
    B, n, Q = 3, 9, 17
    y, a, x, w, f_x = _case(rng, B, n, Q, False)
    if layout == "x(1,Q,1)":
        x, f_x = x[None], f_x[None]
    elif layout == "scalar w, f_x(B,Q)":
        w, f_x = 1.0 / Q, np.stack([f_x, 2 * f_x, -f_x])
    else:
        y, a = y[:, :0], a[:, :0]
    _assert_matches(CircleKernel(2.0), (y, a, x, w, f_x))


@pytest.mark.parametrize("kappa", [0.5, 2.0, 8.0])
@pytest.mark.parametrize("Q", [80, 128])
@pytest.mark.parametrize("batched", [False, True], ids=["x(Q,1)", "x(B,P,1)"])
@pytest.mark.parametrize("B, n, block", [(1, 1, 2**17), (3, 50, 2**17), (2, 37, 256)])
def test_series_path_matches_reference(monkeypatch, kappa, Q, batched, B, n, block):
    """2K + 1 < Q: the forward pass by the Jacobi–Anger series, one exp pass."""
    kernel = CircleKernel(kappa)
    assert 2 * kernel._modes() + 1 < Q  # the series path is the one taken ...
    monkeypatch.setattr(parallel, "KEEP", 0)  # ... when E does not fit the buffer
    monkeypatch.setattr(parallel, "TILE", block)  # ragged blocks when small
    rng = np.random.default_rng([B, n, Q, int(batched), int(10 * kappa)])
    _assert_matches(kernel, _case(rng, B, n, Q, batched))


def test_two_pass_path_at_the_benchmark_shape(monkeypatch):
    """The two-pass path, forced where the series would be taken (Q = 256)."""
    monkeypatch.setattr(CircleKernel, "_modes", lambda self: 10**6)
    rng = np.random.default_rng(4)
    n = parallel.KEEP // 256 + 700
    _assert_matches(CircleKernel(2.0), _case(rng, 2, n, 256, False))
