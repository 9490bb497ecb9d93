r"""The potential :math:`U(y) = \langle\varphi(\cdot, y), f_0 - f\rangle_\mu` of (2.9) on the grid.

:class:`DataPotential` goes through the data (the network's own forward and backward
pass, O(Q·N_y), any φ); :class:`FFTPotential` serves any translation-invariant circle
kernel (one declaring ``"fourier"``) with the uniform measure on the circle: K from the
kernel's Fourier coefficients, F in closed form for a Fourier target (THEORY §7), else
once through the data. Tests hold them together.
"""
from __future__ import annotations

import numpy as np

from particles.engine.config import CapabilityError

from meanfield.grid.cells import Grid

__all__ = ["DataPotential", "FFTPotential", "fft_available"]


# -- potentials -----------------------------------------------------------------------------
class DataPotential:
    r"""``U`` through the data: :math:`f_0 = \Phi g`, :math:`U = \Phi^T W(f_0 - f)`.

    ``g_j = Σ_k c_k m_{jk}`` is the charge in y cell j (:math:`G(y_j)\Delta y`),
    :math:`\Phi_{qj} = \varphi(x_q, y_j)` and ``W = diag(w)``: the network's forward and
    backward pass, O(Q·N_y) for any φ (THEORY §8; (2.34)).
    """

    name = "data"

    def __init__(self, problem, grid: Grid):
        self.Phi = np.ascontiguousarray(problem.kernel.phi(problem.x, grid.y_points).T)
        self.w = np.asarray(problem.w, float)
        self.f = np.asarray(problem.f_x, float)

    def f0(self, g):
        """:math:`f_0(x_q)`, shape (Q,), from the cell charges ``g`` (N_y,)."""
        return self.Phi @ g

    def __call__(self, g):
        """:math:`U(y_j)`, shape (N_y,)."""
        r = self.Phi @ g
        r -= self.f
        r *= self.w
        return r @ self.Phi


class FFTPotential:
    r"""``U = K g − F`` on the circle by FFT: K translation invariant (THEORY §7).

    With :math:`\varphi(x, y) = g(x - y)`, :math:`g(s) = \sum_k\hat g_{|k|}e^{iks}` and μ
    uniform on the circle, :math:`K(y, y') = \sum_k \hat g_{|k|}^2 e^{ik(y-y')}` and, for
    a Fourier target :math:`f = \sum_k a_k\cos kx + b_k\sin kx`,
    :math:`F(y) = \sum_k \hat g_k(a_k\cos ky + b_k\sin ky)`. Every kernel declaring
    ``"fourier"`` (the circle's coefficients are exact, :math:`e^{-\kappa}I_k(\kappa)`) gives
    the DFT of K as the aliased sum of :math:`\hat g_k^2` (modes :math:`|k| \le n` on n
    cells), and F comes from the series for a Fourier target, else once through the data
    (:math:`F(y_j) = \sum_q w_q\varphi(x_q, y_j)f(x_q)`).
    """

    name = "fft"

    def __init__(self, problem, grid: Grid):
        if not fft_available(problem, grid):
            raise CapabilityError(
                "potential='fft' needs the capability 'fft' on a periodic grid: "
                f"{problem.missing('fft') or 'the grid is not periodic'}; use potential='data'"
            )
        y = grid.y_points
        kern, target = problem.kernel, problem.target
        self.n = len(y)
        # K(y, y') = sum_k ghat_|k|^2 e^{ik(y - y')} sampled on n cells: its DFT is the
        # aliased sum n sum_{k = m mod n} ghat_|k|^2 (modes |k| <= n), no n x n matrix
        gh = np.asarray(kern.fourier_coefficients(self.n), float)
        k = np.arange(-self.n, self.n + 1)
        folded = np.zeros(self.n)
        np.add.at(folded, k % self.n, gh[np.abs(k)] ** 2)
        self.Khat = self.n * folded[: self.n // 2 + 1]
        fourier_target = getattr(target, "name", None) == "fourier"
        if fourier_target:
            gh = np.asarray(kern.fourier_coefficients(len(target.k) - 1), float)
            ky = y[:, 0, None] * target.k
            self.F = (np.cos(ky) * gh) @ target.a + (np.sin(ky) * gh) @ target.b
        else:
            self.F = (kern.phi(problem.x, y) * problem.w) @ problem.f_x

    def __call__(self, g):
        U = np.fft.irfft(self.Khat * np.fft.rfft(g), self.n)
        U -= self.F
        return U


def fft_available(problem, grid: Grid) -> bool:
    """The problem declares ``"fft"`` and the grid is periodic."""
    return "fft" in problem.capabilities() and all(grid.y_periodic)


def _choose_potential(problem, grid, potential):
    """``"auto"``: FFT where available and cheaper by operation count (see methods doc)."""
    if potential == "data":
        return DataPotential(problem, grid)
    if potential == "fft":
        return FFTPotential(problem, grid)
    if potential != "auto":
        raise ValueError(f"potential={potential!r} is not known; use 'auto', 'data' or 'fft'")
    n_y = int(np.prod(grid.ny))
    if fft_available(problem, grid) and problem.x.shape[0] * n_y > FFT_MIN_WORK:
        return FFTPotential(problem, grid)
    return DataPotential(problem, grid)


#: ``auto`` takes the FFT when Q·N_y exceeds this: two (Q, N_y) products cost about
#: 0.13 ns per entry against about 10 µs for the FFT pair at N_y ≤ 1024 (measured;
#: docs/methods_grid.md). Either is small next to the fluxes.
FFT_MIN_WORK = 5e4
