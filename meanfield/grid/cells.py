r"""The (y, c) grid of the mean-field solver: cells, exact initial masses, checks.

* :class:`Grid` and :func:`make_grid`: uniform cells; y periodic on the circle
  :math:`[0, 2\pi)`, otherwise a box with zero-flux walls; c in ``[c_min, c_max]``.
* :func:`initial_masses`: exact cell masses of :math:`\rho_{in} = \rho_y\otimes\rho_c`
  and the truncated mass; :func:`phi_resolution`: how well the y cells resolve φ.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from meanfield.defaults import GRID

__all__ = ["Grid", "make_grid", "initial_masses", "phi_resolution"]


# -- grid -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Grid:
    """Uniform tensor grid of ``n_1 × ... × n_N`` y cells times ``nc`` c cells.

    Parameters
    ----------
    y_low, y_high : tuple of float, length N
        The y box (``(0,)``, ``(2π,)`` on the circle).
    ny : tuple of int, length N
    y_periodic : tuple of bool, length N
    c_min, c_max : float
    nc : int
    """

    y_low: tuple
    y_high: tuple
    ny: tuple
    y_periodic: tuple
    c_min: float
    c_max: float
    nc: int

    @property
    def N(self) -> int:
        return len(self.ny)

    @property
    def shape(self) -> tuple:
        return tuple(self.ny) + (self.nc,)

    @property
    def dy(self) -> tuple:
        return tuple((h - lo) / n for lo, h, n in zip(self.y_low, self.y_high, self.ny))

    @property
    def dc(self) -> float:
        return (self.c_max - self.c_min) / self.nc

    @property
    def cell_volume(self) -> float:
        return float(np.prod(self.dy)) * self.dc

    def y_edges(self, k: int) -> np.ndarray:
        return np.linspace(self.y_low[k], self.y_high[k], self.ny[k] + 1)

    @property
    def c_edges(self) -> np.ndarray:
        return np.linspace(self.c_min, self.c_max, self.nc + 1)

    @property
    def y_centres(self) -> tuple:
        return tuple(lo + (np.arange(n) + 0.5) * d
                     for lo, n, d in zip(self.y_low, self.ny, self.dy))

    @property
    def c_centres(self) -> np.ndarray:
        return self.c_min + (np.arange(self.nc) + 0.5) * self.dc

    @property
    def y_points(self) -> np.ndarray:
        """Cell centres of the y grid, shape (prod(ny), N), in C order of the state."""
        mesh = np.meshgrid(*self.y_centres, indexing="ij")
        return np.stack([g.ravel() for g in mesh], axis=-1)

    @property
    def y_dims(self) -> tuple:
        """Dataset dims: ``("y",)`` for N = 1, else ``("y_0", ..., "y_{N-1}")``."""
        return ("y",) if self.N == 1 else tuple(f"y_{k}" for k in range(self.N))

    @property
    def dims(self) -> tuple:
        return self.y_dims + ("c",)

    def coords(self) -> dict:
        out = dict(zip(self.y_dims, self.y_centres))
        out["c"] = self.c_centres
        return out

    def params(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_params(cls, p: dict) -> "Grid":
        return cls(tuple(p["y_low"]), tuple(p["y_high"]), tuple(p["ny"]),
                   tuple(p["y_periodic"]), p["c_min"], p["c_max"], p["nc"])


def _is_circle(problem) -> bool:
    """y periodic: the kernel or the y law declares the circle as its y domain."""
    return (getattr(problem.kernel, "y_domain", None) == "circle"
            or getattr(problem.y_law, "domain", None) == "circle")


def make_grid(problem, ny=GRID["y"], nc=GRID["c"], c_min=GRID["c_min"], c_max=GRID["c_max"],
              y_range=None) -> Grid:
    """The grid of a problem: the circle ``[0, 2π)`` (periodic), else a y box with walls.

    Parameters
    ----------
    ny : int or sequence of int
        Cells per y coordinate.
    nc : int
    c_min, c_max : float
    y_range : sequence of (low, high), optional
        The y box for non-periodic problems; default ``problem.y_law.default_box()``
        (mean ± 6 std of a normal law, a uniform box widened by its margin).
    """
    N = problem.N
    ny = (int(ny),) * N if np.isscalar(ny) else tuple(int(v) for v in ny)
    if len(ny) != N:
        raise ValueError(f"ny={ny} must give one cell count per y coordinate (N={N})")
    if min(ny) < 4 or int(nc) < 4:
        raise ValueError(f"ny={ny}, nc={nc}: use at least 4 cells per axis")
    if not c_max > c_min:
        raise ValueError(f"c_min={c_min} must be < c_max={c_max}")
    if _is_circle(problem):
        if N != 1:
            raise ValueError("a periodic (circle) y grid needs N = 1")
        return Grid((0.0,), (2 * np.pi,), ny, (True,), float(c_min), float(c_max), int(nc))
    if y_range is None:
        y_range = problem.y_law.default_box()
    y_range = np.asarray(y_range, float).reshape(-1, 2)
    if len(y_range) == 1 and N > 1:
        y_range = np.repeat(y_range, N, axis=0)
    if y_range.shape != (N, 2) or np.any(y_range[:, 1] <= y_range[:, 0]):
        raise ValueError(f"y_range={y_range.tolist()} must be {N} pairs (low, high), low < high")
    return Grid(tuple(y_range[:, 0].tolist()), tuple(y_range[:, 1].tolist()), ny,
                (False,) * N, float(c_min), float(c_max), int(nc))


# -- initial data and checks --------------------------------------------------------------
def initial_masses(problem, grid: Grid):
    r"""Exact cell masses of :math:`\rho_{in} = \rho_y\otimes\rho_c` and the mass outside.

    The c factor is the difference of ``c_law.cdf`` at the cell edges; the y factor is
    ``problem.y_law.cell_masses`` of the y edges (exact, from the distribution function:
    ``1/n`` per cell on the circle).

    Returns
    -------
    m : ndarray, shape grid.shape
        Cell masses.
    truncated : float
        :math:`1 - \sum m`, the initial mass outside the grid.
    """
    law = problem.c_law
    if getattr(law, "law", None) == "constant":
        raise ValueError(
            f"the c law is a Dirac at c={law.params()['value']}, which a (y, c) grid cannot "
            "represent; use a 'normal' or 'uniform' c law (or the Lagrangian solver)"
        )
    pc = np.clip(np.diff(law.cdf(grid.c_edges)), 0.0, None)
    ylaw = problem.y_law
    if all(grid.y_periodic) and getattr(ylaw, "domain", None) != "circle":
        raise ValueError(f"periodic y grid: y law must be uniform on the circle, got "
                         f"{ylaw.params()}")
    py = ylaw.cell_masses([grid.y_edges(k) for k in range(grid.N)])
    m = np.multiply.outer(py, pc)
    truncated = max(0.0, 1.0 - float(py.sum()) * float(pc.sum()))
    return m, truncated


def phi_resolution(problem, grid: Grid) -> float:
    r"""How well the y cells resolve φ: the largest relative cell-centre error.

    .. math::
        \epsilon = \max_{q, j}\,\Big|\varphi(x_q, y_j) - \frac{1}{|C_j|}\int_{C_j}
        \varphi(x_q, y)\,dy\Big| \Big/ \max_{q, j}|\varphi(x_q, y_j)|

    (cell averages by a 3-point Gauss–Legendre rule per y coordinate). The midpoint
    rule behind :math:`f_0 = \Phi G\Delta y` (2.34) and ``U`` makes this error,
    :math:`\approx \Delta y^2|\partial_y^2\varphi|/24`; for the circle
    (:math:`\partial_y^2\varphi \sim \kappa\varphi`) ``ε ≤ 1e-3`` means
    :math:`\Delta y \lesssim 0.15/\sqrt\kappa`.
    """
    t, wt = np.polynomial.legendre.leggauss(3)
    offs = np.stack([g.ravel() for g in np.meshgrid(*([t] * grid.N), indexing="ij")], -1)
    wts = np.prod(np.stack([g.ravel() for g in np.meshgrid(*([wt / 2] * grid.N),
                                                            indexing="ij")], -1), -1)
    half = 0.5 * np.asarray(grid.dy)
    yc = grid.y_points
    x = problem.x
    err, scale = 0.0, 0.0
    chunk = max(1, 2**21 // (len(wts) * x.shape[0]))
    for s in range(0, len(yc), chunk):
        yb = yc[s:s + chunk]
        centre = problem.kernel.phi(x, yb)  # (n, Q)
        pts = (yb[:, None, :] + offs[None] * half).reshape(-1, grid.N)
        avg = np.einsum("npq,p->nq", problem.kernel.phi(x, pts).reshape(len(yb), len(wts), -1),
                        wts)
        err = max(err, float(np.max(np.abs(centre - avg))))
        scale = max(scale, float(np.max(np.abs(centre))))
    return err / scale if scale > 0 else 0.0
