r"""The f-level closure (2.50) of the fluctuations, propagated and compared.

The paper's self-healing argument rests on the closed linear equation
:math:`\partial_t f_\xi = -M[\rho_0] f_\xi` (2.50) for the fluctuation of the network
output. Linearising the exact identity :math:`\partial_t f_n = -M[\rho_n](f_n - f)` gives
instead

.. math::
    \partial_t f_{1/2} = -M[\rho_0]\,f_{1/2} - M[\rho_{1/2}]\,r_0, \qquad r_0 = f_0 - f,

so (2.50) drops a term of order :math:`\|r_0\|_\mu` beside a fluctuation of size
:math:`\sqrt{\mathrm{tr}_\mu\Sigma_t}`: the closure's regime is measured by
:func:`closure_regime`, :math:`\|r_0\|_\mu/\sqrt{\mathrm{tr}_\mu\Sigma_t}`.

For the covariance :math:`\Sigma_t` of :math:`\sqrt n(f_n - f_0)` the closure reads
:math:`d\Sigma/dt = -(M\Sigma + \Sigma M)` on :math:`L^2(\mu)`, where :math:`M` acts as
:math:`r\mapsto\int M(\cdot, x')r(x')\,d\mu(x')`, i.e. as the matrix :math:`MW`
(:math:`W = \mathrm{diag}(w)`, the quadrature weights of μ). With :math:`M` frozen at
:math:`\rho_0(t)` the solution over a horizon h is

.. math:: \Sigma_{t+h} = e^{-hMW}\,\Sigma_t\,e^{-hWM},

computed exactly (no time-stepping error) from the eigen-decomposition
:math:`W^{1/2}MW^{1/2} = V\Lambda V^\top`: :math:`e^{-hMW} = W^{-1/2}Ve^{-h\Lambda}V^\top
W^{1/2}` (:func:`propagate_covariance`). Equations and discretisation:
``docs/methods_fluctuations.md``, "The f-level closure".
"""
from __future__ import annotations

import numpy as np

from meanfield.mkernel import MOperator

__all__ = ["propagate_covariance", "closure_error", "closure_regime", "l2_frobenius",
           "trace_mu", "halving_time_measured", "halving_time_predicted", "rk4_propagation_gap",
           "closure_tolerance",
           "ENERGY_FRACTION"]

#: fraction of tr_μ Σ_T whose eigen-directions of M[ρ_0(T)] set the predicted decay
#: (:func:`halving_time_predicted`)
ENERGY_FRACTION = 0.5


def propagate_covariance(M, w, Sigma, h):
    r""":math:`e^{-hMW}\,\Sigma\,e^{-hWM}`: the closure (2.50) over a horizon ``h``.

    Parameters
    ----------
    M : ndarray, shape (Q, Q)
        The kernel :math:`M[\rho_0(t)](x_q, x_p)` (:func:`meanfield.mkernel.m_kernel`),
        symmetric positive semi-definite.
    w : ndarray, shape (Q,)
        Quadrature weights of μ (positive).
    Sigma : ndarray, shape (Q, Q) or (K, Q, Q)
        Covariance kernel(s) :math:`\Sigma_t(x_q, x_p)`.
    h : float or ndarray, shape (K,)
        Horizon(s) (≥ 0).

    Returns
    -------
    ndarray, shape of ``Sigma``
        The propagated kernel :math:`\Sigma_{t+h}(x_q, x_p)`, exact for frozen M.

    Notes
    -----
    With :math:`B = W^{1/2}MW^{1/2} = V\Lambda V^\top` and :math:`\tilde\Sigma =
    W^{1/2}\Sigma W^{1/2}`, :math:`W^{1/2}\Sigma_{t+h}W^{1/2} = E\tilde\Sigma E` with
    :math:`E = Ve^{-h\Lambda}V^\top`. Eigenvalues of B below 0 (round-off of a PSD
    matrix) are clipped to 0, so E is a contraction.
    """
    op = MOperator(M, w)
    s = op.s
    Sig = np.asarray(Sigma, float)
    one = Sig.ndim == 2
    Sig = Sig[None] if one else Sig
    hs = np.broadcast_to(np.asarray(h, float), (Sig.shape[0],))
    if np.any(hs < 0):
        raise ValueError("closure: the horizon h must be >= 0")
    out = np.empty_like(Sig)
    for k in range(Sig.shape[0]):  # a few save times, each a Q x Q product
        E = op.propagator(hs[k])
        P = E @ op.to_l2(Sig[k]) @ E
        out[k] = 0.5 * (P + P.T) / (s[:, None] * s[None, :])
    return out[0] if one else out


def l2_frobenius(Sigma, w):
    r"""Frobenius (Hilbert–Schmidt) norm of a covariance on :math:`L^2(\mu)`:
    :math:`\|W^{1/2}\Sigma W^{1/2}\|_F`."""
    s = np.sqrt(np.asarray(w, float))
    return float(np.linalg.norm(s[:, None] * np.asarray(Sigma, float) * s[None, :]))


def trace_mu(Sigma, w):
    r""":math:`\mathrm{tr}_\mu\Sigma = \sum_q w_q\Sigma(x_q, x_q)`."""
    return float(np.sum(np.asarray(w, float) * np.diagonal(np.asarray(Sigma, float))))


def closure_error(M, w, Sigma_t, Sigma_th, h):
    r"""Relative error of the closure over ``h`` against the reference :math:`\Sigma_{t+h}`.

    .. math:: \frac{\|W^{1/2}(e^{-hMW}\Sigma_t e^{-hWM} - \Sigma_{t+h})W^{1/2}\|_F}
              {\|W^{1/2}\Sigma_{t+h}W^{1/2}\|_F}

    (Frobenius norm on :math:`L^2(\mu)`, :func:`l2_frobenius`), with ``Sigma_th`` the
    influence :math:`\Sigma` at :math:`t + h`.

    Returns
    -------
    error : float
    propagated : ndarray, shape (Q, Q)
    """
    P = propagate_covariance(M, w, Sigma_t, h)
    ref = l2_frobenius(Sigma_th, w)
    err = l2_frobenius(P - np.asarray(Sigma_th, float), w) / ref if ref > 0 else np.nan
    return float(err), P


def closure_regime(r0_norm, trace_sigma):
    r"""The closure's regime ratio :math:`\|r_0\|_\mu/\sqrt{\mathrm{tr}_\mu\Sigma_t}`.

    The term (2.50) drops, :math:`M[\rho_{1/2}]\,r_0`, is of order :math:`\|r_0\|_\mu`
    (:math:`\rho_{1/2}` is of the order of :math:`\rho_0` in :math:`\sqrt n` units) against
    :math:`M[\rho_0]f_{1/2}` of order :math:`\sqrt{\mathrm{tr}_\mu\Sigma_t}`: the closure
    holds as this ratio tends to 0. Works elementwise on arrays.
    """
    r0 = np.asarray(r0_norm, float)
    tr = np.asarray(trace_sigma, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(tr > 0, r0 / np.sqrt(np.where(tr > 0, tr, 1.0)), np.nan)
    return out if out.ndim else float(out)


def halving_time_measured(ts, trace):
    r"""Time for :math:`\mathrm{tr}_\mu\Sigma_t` to halve from its peak, as measured.

    From the peak :math:`t_p` (largest trace over the save times), the first save time
    where the trace is at most half the peak; the crossing time is interpolated linearly
    in :math:`\log\mathrm{tr}` between that save time and the one before it (exact for an
    exponential decay). NaN when the trace never halves within the save times.

    Returns
    -------
    float
        :math:`t_{1/2} - t_p`.
    """
    ts = np.asarray(ts, float)
    tr = np.asarray(trace, float)
    ok = np.isfinite(tr) & (tr > 0)
    if ok.sum() < 2:
        return float("nan")
    ts, tr = ts[ok], tr[ok]
    p = int(np.argmax(tr))
    half = 0.5 * tr[p]
    below = np.flatnonzero(tr[p:] <= half)
    if not len(below):
        return float("nan")
    k = p + int(below[0])
    a, b = np.log(tr[k - 1]), np.log(tr[k])
    frac = (a - np.log(half)) / (a - b) if a != b else 1.0
    return float(ts[k - 1] + frac * (ts[k] - ts[k - 1]) - ts[p])


def halving_time_predicted(M, w, Sigma, *, fraction=ENERGY_FRACTION):
    r"""Time for :math:`\mathrm{tr}_\mu\Sigma` to halve under the closure with M frozen.

    M is compact on :math:`L^2(\mu)`: its eigenvalues accumulate at 0, and the directions
    of the smallest ones barely decay at all, so no single rate describes the decay.
    It is read from the spectrum and from where :math:`\Sigma` puts its trace: with
    :math:`W^{1/2}MW^{1/2} = V\Lambda V^\top` and
    :math:`\sigma_k = (V^\top\tilde\Sigma V)_{kk}` (the share of
    :math:`\mathrm{tr}_\mu\Sigma = \sum_k\sigma_k` in eigen-direction k),

    .. math:: \mathrm{tr}_\mu\Sigma_{t+h} = \sum_k \sigma_k e^{-2h\lambda_k}

    exactly under the closure. Returned: the root :math:`t_{1/2}` of
    :math:`\sum_k\sigma_k e^{-2h\lambda_k} = \frac12\sum_k\sigma_k` (bisection on a
    decreasing function), infinite when the directions with :math:`\lambda_k = 0` carry
    half the trace or more; and the rate :math:`\lambda_{frac}`, the smallest eigenvalue
    among the directions that carry ``fraction`` of the trace (from the largest
    eigenvalue down), which bounds the decay of that part: those directions decay at
    least as :math:`e^{-2h\lambda_{frac}}`.

    Returns
    -------
    t_half : float
    rate : float
        :math:`\lambda_{frac}`.
    """
    op = MOperator(M, w)
    lam, V = op.lam, op.V
    sig = np.clip(np.einsum("qk,qp,pk->k", V, op.to_l2(Sigma), V), 0.0, None)
    total = sig.sum()
    if total <= 0:
        return float("nan"), float("nan")
    order = np.argsort(lam)[::-1]
    cum = np.cumsum(sig[order]) / total
    k = int(np.searchsorted(cum, fraction))
    rate = float(lam[order][min(k, len(lam) - 1)])

    def g(h):
        return float(np.sum(sig * np.exp(-2.0 * h * lam))) - 0.5 * total

    if sig[lam <= 0].sum() >= 0.5 * total:
        return float("inf"), rate
    hi = 1.0 / max(lam.max(), 1e-300)
    while g(hi) > 0:
        hi *= 2.0
        if hi > 1e300:
            return float("inf"), rate
    lo = 0.0
    for _ in range(200):  # bisection to round-off of the bracket
        mid = 0.5 * (lo + hi)
        if g(mid) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return float(0.5 * (lo + hi)), rate


def rk4_propagation_gap(lam, h, dt):
    r"""Largest :math:`|R(-\Delta t\lambda)^m - e^{-h\lambda}|` over the spectrum ``lam``.

    The influence :math:`\Sigma` follows the RK4 flow of the nodes with step
    :math:`\Delta t` (``fluctuations.dt``): for M frozen its propagator over
    :math:`m = h/\Delta t` steps is :math:`R(-\Delta t MW)^m`, with
    :math:`R(z) = 1 + z + z^2/2 + z^3/6 + z^4/24`; the closure uses the exact
    exponential. Both act on the same eigen-directions.
    """
    lam = np.clip(np.asarray(lam, float), 0.0, None)
    m = max(1, int(round(h / dt)))
    z = -(h / m) * lam
    R = 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24
    return float(np.max(np.abs(R**m - np.exp(-h * lam)))) if lam.size else 0.0


def closure_tolerance(regime, gap, sigma_t_norm, sigma_th_norm, m_gap=0.0):
    r"""Tolerance of the closure error where the regime ratio is small.

    ``2·regime + regime²`` (the dropped term, of relative size at most the regime ratio
    δ, changes the covariance by at most :math:`2\delta + \delta^2` relative), plus the
    time discretisation ``2·gap·‖Σ_t‖/‖Σ_{t+h}‖`` (:func:`rk4_propagation_gap`, both
    sides of :math:`E\Sigma E`), plus ``m_gap``, the discretisation of M (the spread
    between M from two sources, when both exist). ``docs/propositions.md``.
    """
    d = np.asarray(regime, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        time = 2.0 * gap * sigma_t_norm / sigma_th_norm
    return 2.0 * d + d**2 + time + m_gap
