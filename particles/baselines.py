r"""Monte-Carlo units: the paper's own baseline (§1, around (1.3)).

Let G solve (2.46), :math:`\int K(y, y')G(y')\,dy' = F(y)`, so that
:math:`f = \int\varphi(\cdot, y)G(y)\,dy`. Units drawn :math:`y_i\sim\bar\rho` (the y law of
the problem, the y-marginal of :math:`\rho_{in}`) with charges

.. math:: c_i = h(y_i) = G(y_i)/\bar\rho(y_i)

give :math:`f_n = \frac1n\sum_i c_i\varphi(\cdot, y_i)`, an unbiased Monte-Carlo estimate
of f: :math:`E f_n = f` and, with no training,

.. math::
    E\,\tfrac12\|f_n - f\|^2_\mu = \frac1{2n}\int \mathrm{Var}_{y\sim\bar\rho}
    \big(h(y)\varphi(x, y)\big)\,\mu(dx),

the rate :math:`n^{-1}` of the loss by construction.

G is computed two ways (:func:`solve_G`, its ``method`` says which):

* **exact** on the circle with a Fourier target: the convolution operator K acts on
  :math:`e^{iky}` by :math:`2\pi\hat g_k^2` and F has coefficients :math:`\hat g_k a_k`
  (:func:`particles.closed_forms.circle_K`, :func:`~particles.closed_forms.circle_fourier_F`;
  :math:`\hat g_k = e^{-\kappa}I_k(\kappa)`), so G's Fourier coefficients are F's divided
  by K's: :math:`G(y) = \sum_k (a_k\cos ky + b_k\sin ky)/(2\pi\hat g_k)`.
* **regularised** otherwise (a Tikhonov solve on the nodes): with T the map
  :math:`h \mapsto \int\varphi(\cdot, y)h(y)\bar\rho(dy)` from :math:`L^2(\bar\rho)` to
  :math:`L^2(\mu)`, :math:`h_\lambda = T^*(TT^* + \lambda)^{-1}f` minimises
  :math:`\|Th - f\|^2_\mu + \lambda\|h\|^2_{\bar\rho}`. :math:`TT^*` is the integral
  operator of :math:`K_x(x, x') = \int\varphi(x, y)\varphi(x', y)\bar\rho(dy)` (the
  :math:`\varphi\varphi` part of (2.38) at :math:`\rho_{in}`), computed with the y law's
  tensor rule on the problem's x nodes; :math:`h_\lambda(y) = \sum_q w_q\varphi(x_q, y)
  \beta_q` is then defined at every y. It represents :math:`f_\lambda = Th_\lambda`, not
  f: the residual :math:`\|f_\lambda - f\|_\mu` is returned and the expected loss carries
  its bias :math:`\tfrac12\|f_\lambda - f\|^2_\mu`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["GSolution", "solve_G", "monte_carlo_units", "monte_carlo_expected_loss",
           "monte_carlo_variance", "monte_carlo_refusal", "baseline_ensembles", "BASELINES",
           "REG", "NY", "MAX_NODES"]

#: The baseline ensembles ``[particles] baselines`` may name.
BASELINES = ("monte_carlo", "random_features")

#: Relative Tikhonov parameter of the regularised solve: λ = REG · (largest eigenvalue
#: of TT*). Smooth kernels give TT* eigenvalues decaying geometrically; 1e-10 keeps the
#: solve's round-off amplification (eps/REG ~ 2e-6) far below the represented parts.
REG = 1e-10
#: Default y nodes per dimension of the y law's tensor rule (solve and variance).
NY = 256
#: Largest number of x nodes of the regularised solve (a Q × Q eigen-decomposition).
MAX_NODES = 4096


@dataclass(frozen=True)
class GSolution:
    r"""A solution of (2.46) and the Monte-Carlo charge it gives.

    Attributes
    ----------
    G : callable
        :math:`G(y)`, y (..., N) -> (...).
    h : callable
        :math:`h = G/\bar\rho`, the charge of a unit at y, y (..., N) -> (...).
    method : str
        ``"exact"`` or ``"regularised"``, with how it was computed in ``description``.
    description : str
    residual : float
        :math:`\|\int\varphi(\cdot, y)G(y)dy - f\|_\mu / \|f\|_\mu` on the nodes (0 up to
        quadrature for the exact G).
    """

    G: Callable
    h: Callable
    method: str
    description: str
    residual: float


def _circle_exact(problem):
    """The exact G on the circle with a Fourier target and y uniform, or None."""
    k, m, t, yl = problem.kernel, problem.measure, problem.target, problem.y_law
    if not (k.name == "circle" and m.name == "circle" and t.name == "fourier"
            and getattr(yl, "domain", None) == "circle" and yl.name == "uniform"):
        return None
    ghat = k.fourier_coefficients(max(len(t.k) - 1, 0))  # e^{-κ} I_k(κ)
    ga, gb = t.a / (2 * np.pi * ghat), t.b / (2 * np.pi * ghat)

    def G(y):
        ky = np.asarray(y, float)[..., 0, None] * t.k
        return np.cos(ky) @ ga + np.sin(ky) @ gb

    def h(y):
        return 2 * np.pi * G(y)  # ρ̄ = 1/(2π)

    return G, h


def _yrule(problem, ny):
    quad = getattr(problem.y_law, "quadrature", None)
    try:
        return quad(ny)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"Monte-Carlo units need G of (2.46), solved on the y law's tensor rule, which "
            f"the y law {problem.y_law.name!r} has not ({e}); use y uniform on the circle, "
            "uniform on a box or normal") from None


def solve_G(problem, *, ny: int = NY, reg: float = REG) -> GSolution:
    r"""G of (2.46), :math:`KG = F`: exact on the circle with a Fourier target, else the
    regularised solve of the module doc.

    Parameters
    ----------
    problem : particles.problem.Problem
    ny : int
        Nodes per y dimension of the y law's rule (regularised solve; residual).
    reg : float
        Relative Tikhonov parameter (regularised solve), λ = reg · λ_max(TT*).

    Returns
    -------
    GSolution
    """
    x, w, f = problem.x, problem.w, problem.f_x
    fnorm = float(np.sqrt(np.sum(w * f**2)))
    exact = _circle_exact(problem)
    yn, yw = _yrule(problem, ny)
    P = problem.kernel.phi(x, problem.kernel.retract(yn[None]))[0]  # (J, Q)
    if exact is not None:
        G, h = exact
        fG = (yw * h(yn)) @ P
        res = float(np.sqrt(np.sum(w * (fG - f) ** 2))) / max(fnorm, 1e-300)
        return GSolution(G, h, "exact", "exact: G's Fourier coefficients are F's divided by "
                         "K's (circle kernel, Fourier target, y uniform)", res)
    Q = x.shape[0]
    if Q > MAX_NODES:
        raise ValueError(
            f"the regularised solve of (2.46) is a {Q} x {Q} eigen-decomposition on the "
            f"problem's {Q} x nodes, over the limit {MAX_NODES}; use fewer nodes")
    s = np.sqrt(w)
    A = (np.sqrt(yw)[:, None] * P) * s[None, :]  # (J, Q): W^{1/2} K_x W^{1/2} = A^T A
    S = A.T @ A
    lam, V = np.linalg.eigh(0.5 * (S + S.T))
    lam = np.clip(lam, 0.0, None)
    lmb = reg * float(lam[-1])
    beta = (V @ ((V.T @ (s * f)) / (lam + lmb))) / s  # (K_x W + λ)^{-1} f on the nodes
    wb = w * beta
    kernel = problem.kernel

    def h(y):
        y = np.asarray(y, float)
        shp = y.shape[:-1]
        yy = kernel.retract(y.reshape(1, -1, y.shape[-1]))
        return (kernel.phi(x, yy)[0] @ wb).reshape(shp)

    pdf = problem.y_law.pdf

    def G(y):
        return h(y) * pdf(np.asarray(y, float))

    fG = (yw * h(yn)) @ P
    res = float(np.sqrt(np.sum(w * (fG - f) ** 2))) / max(fnorm, 1e-300)
    desc = (f"regularised: Tikhonov solve of (2.46) on the {Q} x nodes and the y law's rule "
            f"({len(yw)} nodes), lambda = {reg:g} x the largest eigenvalue; it represents f "
            f"to a relative residual {res:.2e}")
    return GSolution(G, h, "regularised", desc, res)


def monte_carlo_refusal(problem) -> str | None:
    """Why :func:`solve_G` cannot serve this problem (checked before any work), or None."""
    if _circle_exact(problem) is not None:
        return None
    try:
        problem.y_law.quadrature(2)
    except (TypeError, ValueError, AttributeError):
        return (f"Monte-Carlo units need G of (2.46), solved on the y law's tensor rule, "
                f"which the y law {problem.y_law.name!r} has not; use y uniform on the "
                "circle, uniform on a box or normal, or drop 'monte_carlo'")
    Q = problem.x.shape[0]
    if Q > MAX_NODES:
        return (f"Monte-Carlo units: the regularised solve of (2.46) is a {Q} x {Q} "
                f"eigen-decomposition, over the limit of {MAX_NODES} x nodes; use fewer "
                "nodes or drop 'monte_carlo'")
    return None


def monte_carlo_units(problem, rng, n, sol: GSolution | None = None):
    r"""``n`` Monte-Carlo units: y (n, N) from :meth:`Problem.sample_init` (the draw of y a
    trained member with the same generator makes first), c = h(y) (n,).

    The generator is consumed as by ``sample_init`` (y, then the c law's draw, unused), so
    a member (n, seed) has the y of the trained member (n, seed)."""
    sol = solve_G(problem) if sol is None else sol
    y, _ = problem.sample_init(rng, n)
    return y, np.asarray(sol.h(y), float)


def monte_carlo_variance(problem, sol: GSolution | None = None, *, ny: int = NY):
    r""":math:`\int\mathrm{Var}_{y\sim\bar\rho}(h(y)\varphi(x, y))\mu(dx)` and the bias
    :math:`\|E f_n - f\|^2_\mu` on the nodes, both through the y law's rule (``ny`` nodes
    per dimension; spectral on the circle)."""
    sol = solve_G(problem) if sol is None else sol
    yn, yw = _yrule(problem, ny)
    P = problem.kernel.phi(problem.x, problem.kernel.retract(yn[None]))[0]  # (J, Q)
    hP = sol.h(yn)[:, None] * P
    mean = yw @ hP
    second = yw @ hP**2
    w = problem.w
    return float(np.sum(w * (second - mean**2))), float(np.sum(w * (mean - problem.f_x) ** 2))


def monte_carlo_expected_loss(problem, n, sol: GSolution | None = None, *, ny: int = NY):
    r"""Expected loss (1.2) of n Monte-Carlo units on the nodes:

    .. math::
        E\,\tfrac12\|f_n - f\|^2_\mu = \frac1{2n}\int\mathrm{Var}_{y\sim\bar\rho}
        \big(G(y)\varphi(x, y)/\bar\rho(y)\big)\,\mu(dx) + \tfrac12\|E f_n - f\|^2_\mu,

    the bias 0 for the exact G (up to the rule's error). ``n`` scalar or array."""
    var, bias = monte_carlo_variance(problem, sol, ny=ny)
    return 0.5 * var / np.asarray(n, float) + 0.5 * bias


def baseline_ensembles(problem, n, seeds, dynamics, save_times, baselines, *,
                       root_seed=0, n_index=None, init=None, realisation=0):
    r"""The baseline ensembles beside a trained one, over the same n and seeds.

    Member (i_n, seed) of each baseline draws its y exactly as the trained member does
    (the generator :func:`particles.simulate.member_rng` of the same spawn key, or the
    same rows of ``init``):

    * ``"monte_carlo"``: c = G(y)/ρ̄(y) (:func:`monte_carlo_units`), no training:
      ``f_n_monte_carlo(n, seed, x)``, ``loss_monte_carlo(n, seed)``;
    * ``"random_features"``: the same dynamics with ``train = ("c",)``:
      ``f_n_random_features(n, seed, t, x)``, ``loss_random_features(n, seed, t)``.

    Returns
    -------
    xarray.Dataset
        Those variables, to be merged into the trained ensemble's Dataset;
        ``attrs["baselines"]`` names them and ``attrs["monte_carlo_G"]`` says how G was
        computed.
    """
    import dataclasses

    import xarray as xr

    from particles.simulate import member_rng, simulate

    ns = [int(n)] if np.isscalar(n) else [int(v) for v in n]
    seed_ids = list(range(int(seeds))) if np.isscalar(seeds) else [int(s) for s in seeds]
    n_index = list(range(len(ns))) if n_index is None else [int(i) for i in n_index]
    parts, attrs = [], {"baselines": ",".join(baselines)}
    if "monte_carlo" in baselines:
        sol = solve_G(problem)
        Q = problem.x.shape[0]
        f = np.full((len(ns), len(seed_ids), Q), np.nan)
        for k, nk in enumerate(ns):
            if init is not None:
                y = np.asarray(init[0], float)
                y = y[..., None] if y.ndim == 2 else y
                c = sol.h(y)
            else:
                units = [monte_carlo_units(problem, member_rng(root_seed, n_index[k], s,
                                                               realisation), nk, sol)
                         for s in seed_ids]
                y = np.stack([u[0] for u in units])
                c = np.stack([u[1] for u in units])
            f[k] = problem.network(y, c / nk)
        parts.append(xr.Dataset({"f_n_monte_carlo": (("n", "seed", "x"), f),
                                 "loss_monte_carlo": (("n", "seed"), problem.loss(f))}))
        attrs["monte_carlo_G"] = sol.description
    if "random_features" in baselines:
        rf = simulate(problem, ns, seed_ids, dataclasses.replace(dynamics, train=("c",)),
                      save_times, root_seed=root_seed, n_index=n_index, init=init,
                      save_state=False, progress=False, realisation=realisation)
        parts.append(xr.Dataset({"f_n_random_features": (rf.f_n.dims, rf.f_n.values),
                                 "loss_random_features": (rf.loss.dims, rf.loss.values)}))
    ds = xr.merge(parts) if parts else xr.Dataset()
    ds.attrs.update(attrs)
    return ds
