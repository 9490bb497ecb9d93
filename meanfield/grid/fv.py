r"""Finite-volume pieces of the Carrillo–Chertock–Huang scheme for the mean-field equation.

The mean-field equation (2.9) is the continuity equation

.. math::
    \partial_t\rho = \nabla_y\cdot(\rho\, c\nabla_y U) + \partial_c(\rho U)
    = -\nabla_z\cdot(\rho\, v), \qquad v = (-c\nabla_y U, -U),

in gradient-flow form :math:`\partial_t\rho = \nabla_z\cdot(\rho\nabla_z\xi)` with
:math:`\xi = cU(y)` (``../shared/THEORY.md`` §3, §8). The semi-discrete scheme of
Carrillo, Chertock and Huang (Commun. Comput. Phys. 17, 2015, arXiv:1402.4252) is, for
each axis in turn (dimension by dimension),

.. math::
    \frac{d\bar\rho_j}{dt} = -\frac{F_{j+1/2} - F_{j-1/2}}{\Delta}, \qquad
    F_{j+1/2} = u^+_{j+1/2}\rho^E_j + u^-_{j+1/2}\rho^W_{j+1}
              - \tau\frac{\bar\rho_{j+1} - \bar\rho_j}{\Delta},

with face velocities :math:`u_{j+1/2} = -(\xi_{j+1} - \xi_j)/\Delta`, point values
:math:`\rho^{E,W}_j = \bar\rho_j \pm h_j` of a piecewise-linear reconstruction and the
optional central diffusive flux of the Langevin equation (Sec. 4.1). The half-slopes are
the generalised minmod with :math:`\theta = 2`,

.. math::
    h_j = \tfrac12\,\mathrm{minmod}\big(\theta D_{j-1/2}, \tfrac12(D_{j-1/2}+D_{j+1/2}),
          \theta D_{j+1/2}\big) = \mathrm{minmod}\big(D_{j-1/2}, D_{j+1/2},
          \tfrac14(D_{j-1/2}+D_{j+1/2})\big),
    \qquad D_{j+1/2} = \bar\rho_{j+1} - \bar\rho_j,

so that :math:`|h_j| \le \min(|D_{j-1/2}|, |D_{j+1/2}|)` and both point values lie between
neighbouring cell averages: they are non-negative whenever the averages are, in floating
point too (the positivity fix of CCH is built into the limiter).

The pieces (:func:`jumps`, :func:`limited_half_slopes`, :func:`face_states`,
:func:`upwind_flux`) are small pure functions on a flat, ghost-padded copy of the state
with the stride ``s`` of the sweep axis, writing into preallocated buffers;
:class:`AxisSweep` composes them over cache-sized blocks. The state may be cell masses
or cell averages (the scheme is linear in that scaling). Boundary conditions per axis:
``"periodic"``, ``"wall"`` (zero flux, zero-gradient ghosts) and ``"outflow"`` (empty
ghost cells: nothing enters, what leaves is recorded). :func:`rhs_reference` is the
slow, obviously correct loop version that the tests hold the fast pieces against.

The scheme is piecewise smooth in the state (the limiter switches): a tangent-linear
version differentiates each piece with the limiter branch (which of ``t``, ``a``,
``b``, 0 :func:`limited_half_slopes` returns) and the upwind side frozen.
"""
from __future__ import annotations

import itertools

import numpy as np

__all__ = [
    "PERIODIC",
    "WALL",
    "OUTFLOW",
    "jumps",
    "limited_half_slopes",
    "face_states",
    "upwind_flux",
    "AxisSweep",
    "minmod3",
    "rhs_reference",
]

PERIODIC, WALL, OUTFLOW = "periodic", "wall", "outflow"


def jumps(P, s, D):
    r"""Jumps across the faces of a flat, ghost-padded array: ``D[i] = P[i+s] - P[i]``.

    ``P`` is a C-ordered array flattened, ``s`` the stride of the sweep axis; face ``i``
    separates cells ``i`` and ``i + s``. Valid for ``i < len(P) - s``.
    """
    L = P.size
    np.subtract(P[s:], P[: L - s], out=D[: L - s])
    return D


def limited_half_slopes(a, b, out, tmp):
    r"""Half-slopes :math:`h = \mathrm{minmod}(a, b, (a + b)/4)` from the two jumps of a cell.

    The generalised minmod limiter with :math:`\theta = 2`, halved (so that the point
    values are :math:`\bar\rho \pm h`), computed in eight passes as
    :math:`h = \min(\max(t, \min(\max(a, b), 0)), \max(\min(a, b), 0))`,
    ``t = (a + b)/4`` (t clipped to ``[0, min(a, b)]`` when both jumps are positive, to
    ``[max(a, b), 0]`` when both are negative, to 0 otherwise).
    ``a`` is the jump below the cell, ``b`` the one above; ``out``, ``tmp`` same shape.
    """
    np.add(a, b, out=tmp)
    tmp *= 0.25
    np.maximum(a, b, out=out)
    np.minimum(out, 0.0, out=out)
    np.maximum(tmp, out, out=tmp)
    np.minimum(a, b, out=out)
    np.maximum(out, 0.0, out=out)
    np.minimum(tmp, out, out=out)
    return out


def face_states(P, h, s, E, W):
    r"""Point values at face ``i`` (between cells ``i``, ``i+s``): ``E`` from below, ``W`` above.

    :math:`E_i = \bar\rho_i + h_i`, :math:`W_i = \bar\rho_{i+s} - h_{i+s}`, for
    ``s <= i < len(P) - 2s`` (where ``h`` is valid on ``[s, len(P) - s)``).
    """
    L = P.size
    np.add(P[s : L - 2 * s], h[s : L - 2 * s], out=E[s : L - 2 * s])
    np.subtract(P[2 * s : L - s], h[2 * s : L - s], out=W[s : L - 2 * s])
    return E, W


def upwind_flux(u_plus, u_minus, E, W, out):
    r"""Upwind flux :math:`F = u^+ E + u^- W`. ``W`` is overwritten (scratch).

    ``u_plus = max(u, 0)`` and ``u_minus = min(u, 0)`` broadcast against ``E``.
    """
    np.multiply(E, u_plus, out=out)
    np.multiply(W, u_minus, out=W)
    out += W
    return out


class AxisSweep:
    r"""One axis of the CCH right-hand side on a state of ``shape`` (cache-blocked).

    The state is copied into an array padded with two ghost layers on each side of the
    sweep axis (periodic images, zero-gradient copies at a wall, zeros at an outflow
    boundary), so every piece of the stencil is a 1-D operation with stride ``s`` on a
    contiguous block of that array. Blocks run along the first axis of the padded array
    (with a two-layer halo when the sweep axis is the first) and are sized to stay in
    cache.

    Parameters
    ----------
    shape : tuple of int
        State shape ``(n_1, ..., n_N, n_c)``.
    axis : int
    bc : {"periodic", "wall", "outflow"}
    block : int
        Target number of elements per block.
    """

    def __init__(self, shape, axis, bc, block=2**15):
        self.shape, self.axis, self.bc = tuple(shape), int(axis), bc
        self.n = shape[axis]
        pshape = list(shape)
        pshape[axis] += 4
        self.pshape = tuple(pshape)
        self.P = np.zeros(pshape)  # outflow ghosts stay zero
        self.s = int(np.prod(shape[axis + 1 :], dtype=np.int64))
        row = int(np.prod(pshape[1:], dtype=np.int64))
        if axis == 0:
            R = max(16, block // row)
            self.blocks = [(r0, min(self.n, r0 + R)) for r0 in range(0, self.n, R)]
            Lmax = (min(R, self.n) + 4) * row
        else:
            R = max(1, block // row)
            self.blocks = [(r0, min(shape[0], r0 + R)) for r0 in range(0, shape[0], R)]
            Lmax = min(R, shape[0]) * row
        self.D, self.h, self.tmp, self.E, self.W = (np.zeros(Lmax) for _ in range(5))
        self._inner = (slice(None),) * axis + (slice(2, self.n + 2),)

    def _along(self, sl):
        return (slice(None),) * self.axis + (sl,)

    def fill(self, m):
        """Copy the state into the padded array and set the ghost layers."""
        P, n = self.P, self.n
        P[self._inner] = m
        if self.bc == PERIODIC:
            P[self._along(slice(0, 2))] = P[self._along(slice(n, n + 2))]
            P[self._along(slice(n + 2, n + 4))] = P[self._along(slice(2, 4))]
        elif self.bc == WALL:
            P[self._along(slice(0, 2))] = P[self._along(slice(2, 3))]
            P[self._along(slice(n + 2, n + 4))] = P[self._along(slice(n + 1, n + 2))]
        return P

    def padded_rows(self, r0, r1):
        """Slice of the first padded axis that block ``(r0, r1)`` reads."""
        return slice(r0, r1 + 4) if self.axis == 0 else slice(r0, r1)

    def __call__(self, m, Y, C, tau_d2, out, first):
        r"""Accumulate :math:`-(F_{i+1/2} - F_{i-1/2})` along the axis into ``out``.

        The face velocity over the cell width is the outer product ``u = Y ⊗ C``:
        ``Y`` has the padded shape without its last axis (for the c axis: the y shape)
        and holds, at position ``p``, the factor of the face between padded cells ``p``
        and ``p + 1`` along the axis; ``C`` has the length of the last padded axis, or
        is ``None`` for 1 (then ``u`` is constant along the last axis).

        Parameters
        ----------
        m : ndarray, shape ``shape``
        Y : ndarray
        C : ndarray or None
        tau_d2 : float
            :math:`\tau/\Delta^2`; the diffusive flux is ``-tau_d2 * D``.
        out : ndarray, shape ``shape``
        first : bool
            Overwrite ``out`` instead of adding.

        Returns
        -------
        float
            Net flux out through the two boundary faces (the outflow rate for an
            ``"outflow"`` axis; zero at walls; meaningless for a periodic axis).
        """
        P = self.fill(m)
        s, n, ax = self.s, self.n, self.axis
        rate = 0.0
        for r0, r1 in self.blocks:
            rows = self.padded_rows(r0, r1)
            Pb = P[rows]
            bshape = Pb.shape
            Pf = Pb.reshape(-1)
            L = Pf.size
            D, h, tmp, E, W = (a[:L] for a in (self.D, self.h, self.tmp, self.E, self.W))
            jumps(Pf, s, D)
            limited_half_slopes(D[: L - 2 * s], D[s : L - s], h[s : L - s], tmp[s : L - s])
            face_states(Pf, h, s, E, W)
            Eb, Wb = E.reshape(bshape), W.reshape(bshape)
            if C is None:
                u = Y[rows][..., None]
                up, um = np.maximum(u, 0.0), np.minimum(u, 0.0)
            else:
                up = tmp.reshape(bshape)
                np.multiply(Y[rows][..., None], C, out=up)
                um = h.reshape(bshape)
                np.minimum(up, 0.0, out=um)
                np.maximum(up, 0.0, out=up)
            F = upwind_flux(up, um, Eb, Wb, Eb)
            if tau_d2:
                np.multiply(D, tau_d2, out=W)
                E -= W
            Ff = E
            if self.bc == WALL:
                lo, hi = (1 - r0, n + 1 - r0) if ax == 0 else (1, n + 1)
                if 0 <= lo < bshape[ax]:
                    F[self._along(lo)] = 0.0
                if 0 <= hi < bshape[ax]:
                    F[self._along(hi)] = 0.0
            ob = out[r0:r1]
            if ax == 0:
                ob = ob.reshape(-1)
                if first:
                    np.subtract(Ff[s : L - 3 * s], Ff[2 * s : L - 2 * s], out=ob)
                else:
                    ob += Ff[s : L - 3 * s]
                    ob -= Ff[2 * s : L - 2 * s]
            else:
                if first:
                    np.subtract(F[self._along(slice(1, n + 1))],
                                F[self._along(slice(2, n + 2))], out=ob)
                else:
                    ob += F[self._along(slice(1, n + 1))]
                    ob -= F[self._along(slice(2, n + 2))]
            if self.bc == OUTFLOW:
                rate += float(F[self._along(n + 1)].sum() - F[self._along(1)].sum())
        return rate


# -- slow reference -----------------------------------------------------------------------
def minmod3(a, b, c):
    """Scalar minmod of three numbers."""
    if a > 0 and b > 0 and c > 0:
        return min(a, b, c)
    if a < 0 and b < 0 and c < 0:
        return max(a, b, c)
    return 0.0


def rhs_reference(m, U, spacings, c, bcs, tau=0.0):
    r"""Slow, loop-by-loop CCH right-hand side for cell masses ``m`` (small grids only).

    For every cell and axis: the two neighbours (ghosts by the boundary condition), the
    generalised-minmod (θ = 2) point values, the face velocity
    :math:`u = -c\,(U_{+} - U)/\Delta_y` across a y face and :math:`u = -U` across a c
    face, the upwind flux and the central diffusive flux.

    Parameters
    ----------
    m : ndarray, shape (n_1, ..., n_N, n_c)
    U : ndarray, shape (n_1, ..., n_N)
    spacings : sequence of float, length N + 1
    c : ndarray, shape (n_c,)
    bcs : sequence of str, length N + 1
    tau : float

    Returns
    -------
    dm : ndarray, shape of ``m``
    outflow_rate : float
        Mass per unit time leaving through the ``"outflow"`` faces.
    """
    m = np.asarray(m, float)
    shape = m.shape
    ndim = m.ndim
    dm = np.zeros(shape)
    outflow = 0.0

    def value(idx, ax):
        """Cell average with ghost rule along axis ax; None marks outside a wall."""
        i = idx[ax]
        n = shape[ax]
        if 0 <= i < n:
            return m[idx]
        if bcs[ax] == PERIODIC:
            j = list(idx)
            j[ax] = i % n
            return m[tuple(j)]
        if bcs[ax] == OUTFLOW:
            return 0.0
        j = list(idx)  # wall: zero-gradient ghost
        j[ax] = min(max(i, 0), n - 1)
        return m[tuple(j)]

    def shifted(idx, ax, s):
        j = list(idx)
        j[ax] += s
        return tuple(j)

    def half_slope(idx, ax):
        i = idx[ax]
        if not 0 <= i < shape[ax]:
            if bcs[ax] == PERIODIC:
                j = list(idx)
                j[ax] = i % shape[ax]
                return half_slope(tuple(j), ax)
            return 0.0
        a = value(idx, ax) - value(shifted(idx, ax, -1), ax)
        b = value(shifted(idx, ax, 1), ax) - value(idx, ax)
        return 0.5 * minmod3(2 * a, 0.5 * (a + b), 2 * b)

    def face_velocity(idx, ax):
        """Velocity at the face between idx and idx + e_ax."""
        if ax == ndim - 1:
            return -U[idx[:-1]]
        yi = idx[:-1]
        i = yi[ax]
        n = shape[ax]
        j = list(yi)
        j[ax] = (i + 1) % n
        if bcs[ax] != PERIODIC and i + 1 >= n:
            return 0.0
        return -c[idx[-1]] * (U[tuple(j)] - U[yi]) / spacings[ax]

    def flux(idx, ax):
        """Flux (mass per unit time per unit cross-section) from idx to idx + e_ax."""
        i = idx[ax]
        n = shape[ax]
        if bcs[ax] == WALL and (i < 0 or i >= n - 1):
            return 0.0
        base = list(idx)
        if bcs[ax] == PERIODIC:
            base[ax] = i % n
        base = tuple(base)
        nxt = shifted(idx, ax, 1)
        u = face_velocity(base, ax)
        left = value(idx, ax) + half_slope(idx, ax)
        right = value(nxt, ax) - half_slope(nxt, ax)
        F = max(u, 0.0) * left + min(u, 0.0) * right
        F -= tau * (value(nxt, ax) - value(idx, ax)) / spacings[ax]
        return F

    for idx in itertools.product(*[range(k) for k in shape]):
        for ax in range(ndim):
            f_hi = flux(idx, ax)
            f_lo = flux(shifted(idx, ax, -1), ax)
            dm[idx] -= (f_hi - f_lo) / spacings[ax]
            if bcs[ax] == OUTFLOW:
                if idx[ax] == shape[ax] - 1:
                    outflow += f_hi / spacings[ax]
                if idx[ax] == 0:
                    outflow -= f_lo / spacings[ax]
    return dm, outflow
