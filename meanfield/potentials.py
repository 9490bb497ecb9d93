r"""The potential :math:`U(y) = \langle\varphi(\cdot, y), f_0 - f\rangle_\mu` of (2.9) on the grid.

:class:`DataPotential` goes through the data (the network's own forward and backward
pass, O(Q·N_y), any φ); :class:`FFTPotential` uses the translation-invariant closed forms
of the circle (THEORY §7). Tests hold them together.
"""
from __future__ import annotations

import numpy as np

from particles.kernels import CircleKernel
from particles.measures import CircleUniform
from particles.problems import circle_fourier_F, circle_K
from particles.targets import FourierTarget

from .cells import Grid

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

    :math:`K(y, y') = e^{-2\kappa}I_0(2\kappa|\cos\frac{y-y'}2|)`, and F in closed form
    (:func:`particles.problems.circle_fourier_F`) for a Fourier target and uniform μ.
    """

    name = "fft"

    def __init__(self, problem, grid: Grid):
        if not fft_available(problem, grid):
            raise ValueError(
                "potential='fft' needs the circle problem (CircleKernel, uniform mu, Fourier "
                "target) on a periodic grid; use potential='data'"
            )
        y = grid.y_points
        K, _ = circle_K(problem.kernel)
        self.n = len(y)
        self.Khat = np.fft.rfft(K(y[:1], y)[0])
        self.F = circle_fourier_F(problem.kernel, problem.target)[0](y)

    def __call__(self, g):
        U = np.fft.irfft(self.Khat * np.fft.rfft(g), self.n)
        U -= self.F
        return U


def fft_available(problem, grid: Grid) -> bool:
    return (isinstance(problem.kernel, CircleKernel) and isinstance(problem.measure, CircleUniform)
            and isinstance(problem.target, FourierTarget) and all(grid.y_periodic))


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
