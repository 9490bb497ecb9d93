r"""What a run will cost before it starts: memory and steps, refused when they cannot fit.

Each section's largest arrays are counted from the resolved config (float64, 8 bytes an
entry) with the working copies its solver holds at once; the estimate is an upper bound of
the arrays, not of Python's overhead, and is compared with the memory the machine has
available now (``MemAvailable`` of ``/proc/meminfo``). What exceeds it is refused before any
work with how much is needed and what to lower. Steps are counted the same way: a run
whose step count cannot finish in any reasonable time (more than :data:`MAX_STEPS`) is
refused with the key to change.
"""
from __future__ import annotations

import math
import os

__all__ = ["available_memory", "MAX_STEPS", "Need", "format_bytes", "problem_need", "steps_check",
           "particles_need", "meanfield_need", "fluctuations_need"]

#: More steps than this in one section is refused (the paper's runs take 2e6 steps).
MAX_STEPS = 10**9


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (``MemAvailable``), or the
    physical memory when that is not known."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2**63 - 1


def format_bytes(b: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("kiB", 2**10)):
        if b >= size:
            return f"{b / size:.3g} {unit}"
    return f"{int(b)} B"


class Need:
    """A running tally of what one section needs: ``add(bytes, what, lower)``.

    ``what`` names the array and ``lower`` the config keys that shrink it, so that the
    refusal can say what to change.
    """

    def __init__(self, section: str):
        self.section = section
        self.items: list[tuple[float, str, str]] = []

    def add(self, entries: float, what: str, lower: str, *, bytes_per_entry: int = 8):
        self.items.append((float(entries) * bytes_per_entry, what, lower))
        return self

    @property
    def total(self) -> float:
        return sum(b for b, _, _ in self.items)

    def message(self, available: float) -> str:
        big = max(self.items, key=lambda it: it[0])
        return (f"[{self.section}] needs about {format_bytes(self.total)} of memory, more "
                f"than the {format_bytes(available)} available; the largest part is "
                f"{big[1]} ({format_bytes(big[0])}): lower {big[2]}")

    def check(self, available: float | None = None):
        """``None`` when it fits, else the message (see :meth:`message`)."""
        available = available_memory() if available is None else available
        if not math.isfinite(self.total) or self.total > available:
            return self.message(available)
        return None


# -- what each part of a config needs --------------------------------------------------
def _int(v):
    """``v`` as an int when it is one (a config value not yet checked), else None."""
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def problem_need(problem_cfg) -> Need:
    r"""What building ``[problem]`` allocates, from the raw (not yet checked) table.

    The data nodes ``Q`` (``quadrature`` of the circle, ``nodes`` of the presets and of
    ``[problem.measure]``, ``nodes^d`` for ``lebesgue``) each hold their coordinates, weight,
    target value and one residual (``Q (d + 3)`` entries, two working copies), the 3-spin
    target ``4 d^3`` (its coefficients, their symmetrised sum and copies) and a teacher ``units (N + 1)``. Values of the wrong type
    count as 0 (the schemas refuse them next).
    """
    need = Need("problem")
    if not isinstance(problem_cfg, dict):
        return need
    measure = problem_cfg.get("measure")
    measure = measure if isinstance(measure, dict) else {}
    target = problem_cfg.get("target")
    target = target if isinstance(target, dict) else {}
    d = _int(problem_cfg.get("d")) or 1
    low = measure.get("low")
    if isinstance(low, list) and low:
        d = len(low)
    for key, Q in (("problem.quadrature", _int(problem_cfg.get("quadrature"))),
                   ("problem.nodes", _int(problem_cfg.get("nodes"))),
                   ("problem.measure.nodes", _int(measure.get("nodes")))):
        if Q is not None:
            if key == "problem.measure.nodes" and measure.get("kind") == "lebesgue":
                try:
                    Q = float(Q) ** d
                except OverflowError:  # nodes^d beyond any float: beyond any memory
                    Q = math.inf
            need.add(2.0 * Q * (d + 3), "the data nodes, weights and target values", key)
    if target.get("kind") == "3spin":
        # a, its symmetrised sum (4.6), the temporary of the sum and a contiguous copy
        need.add(4.0 * float(d) ** 3, "the 3-spin coefficients a_pqr (d^3)", "problem.d")
    units = _int(target.get("units"))
    if units is not None:
        need.add(2.0 * units * (d + 2), "the teacher's units", "problem.target.units")
    return need


def _steps(t, dt):
    return math.inf if dt <= 0 else t / dt


def steps_check(t_last, dynamics, mf=None, fl=None):
    """The first step count above :data:`MAX_STEPS`, as a message naming the keys, or None.

    Fixed-step solvers take ``t_last / dt`` steps (``t_last`` the last save time): the
    particles (``dynamics.dt``), the characteristics (``meanfield.characteristics.dt``), the
    influence method (``fluctuations.dt``) and the grid with a fixed ``meanfield.grid.dt``.
    """
    rows = [("dynamics.dt", dynamics.dt, "[particles] and the defaults of [meanfield] and "
                                         "[fluctuations]")]
    if mf is not None:
        if "characteristics" in mf["solvers"]:
            rows.append(("meanfield.characteristics.dt", mf["characteristics"]["dt"],
                         "the characteristics"))
        if "grid" in mf["solvers"] and mf["grid"].get("dt") is not None:
            rows.append(("meanfield.grid.dt", mf["grid"]["dt"], "the grid"))
    if fl is not None and fl["method"] == "influence":
        rows.append(("fluctuations.dt", fl["dt"], "the influence method"))
    for key, dt, who in rows:
        n = _steps(t_last, dt)
        if n > MAX_STEPS:
            return (f"{key}={dt:g} with the last save time {t_last:g} (dynamics.save_times, "
                    f"within dynamics.t_end) means {n:.3g} steps for {who}, more than the "
                    f"{MAX_STEPS:.0e} that can finish; raise {key} or lower "
                    "dynamics.save_times and dynamics.t_end")
    return None


#: elements of the work buffers a fused step keeps per thread (tiles of the pull-backs,
#: ``particles.engine.parallel.KEEP`` plus its tiles, with room), and threads counted
FUSED_WORK, FUSED_THREADS = 2**22, 2


def _fused(kernel) -> bool:
    """Whether the kernel's pull-back is a fused, blocked one (bounded memory) rather than
    the generic one of :class:`particles.kernels.Kernel`, which builds (B, n, Q, N) arrays."""
    from particles.kernels import Kernel

    return type(kernel).pullback is not Kernel.pullback


def particles_need(problem, dynamics, parts, T) -> Need:
    """``[particles]``: outputs and saved units (of every target realisation: the merged
    file holds them all), the state with its integrator stages, and the step's work: a
    fused pull-back holds per-member sums and bounded work buffers whatever n, Q and P;
    the generic one of a user's kernel the ``(seeds, n, Q, N + 1)`` arrays (data form),
    the (F, K) form without a fused sum the ``(seeds, n, n, N + 1)`` interactions; all
    seeds of one ``n`` run at once."""
    from particles.dynamics import DRAW_BUDGET

    ns, S = parts["n"], parts["seeds"]
    R = float(parts.get("realisations", 1))
    nmax, L = float(max(ns)), len(ns)
    Q, N = problem.x.shape[0], problem.N
    need = Need("particles")
    many = f"particles.realisations (= {R:.0f}), " if R > 1 else ""
    need.add(R * L * S * T * (Q + 1), "the outputs f_n(n, seed, t, x)" + (
             f" of {R:.0f} target realisations" if R > 1 else ""),
             f"{many}particles.seeds, the number of particles.n or of dynamics.save_times")
    if parts.get("save_state", True):
        need.add(R * L * S * T * nmax * (N + 1), "the saved units y, c (n, seed, t, "
                 "particle)" + (f" of {R:.0f} target realisations" if R > 1 else ""),
                 f"{many}particles.n or particles.seeds, or set particles.save_state = false")
    stages = 6 if dynamics.integrator == "rk4" else 3
    need.add(stages * S * nmax * (N + 1), "the state and its integrator stages",
             "particles.n or particles.seeds")
    buffers = FUSED_WORK * FUSED_THREADS
    if dynamics.form == "kernel":
        kf = problem.kernel_form
        if kf is not None and getattr(kf, "fused", None) is not None:
            need.add(3.0 * S * nmax * (N + 2) + buffers, "the fused (F, K) sums and their "
                     "tiles", "particles.n or particles.seeds")
        else:
            need.add(3.0 * S * nmax * nmax * (N + 1), "the (F, K) form's (seeds, n, n, N+1) "
                     "interactions", "particles.n or particles.seeds (or dynamics.form = "
                     "'data')")
    elif _fused(problem.kernel):
        need.add(3.0 * S * (nmax + Q) * (N + 2) + buffers, "the fused pull-back's sums and "
                 "work buffers", "particles.n or particles.seeds (or the data nodes)")
    else:
        need.add(3.0 * S * nmax * Q * (N + 1), "the pull-back's (seeds, n, Q, N+1) arrays",
                 "particles.n or particles.seeds (or the data nodes: problem.quadrature or "
                 "nodes)")
    if dynamics.scheme == "sgd":  # each step draws P points per member
        P = _largest_batch(dynamics.batch, nmax)
        d = problem.x.shape[1]
        if _fused(problem.kernel):
            need.add(3.0 * S * P * (d + 2) + DRAW_BUDGET, "the SGD batches (seeds, P, d), "
                     "their residuals and the batches drawn ahead", "dynamics.batch")
        else:
            need.add(3.0 * S * nmax * P * (N + 1) + P * (d + 2),
                     "the SGD batch's (seeds, n, P, N+1) arrays", "dynamics.batch")
    return need


def _largest_batch(batch, nmax):
    """The largest SGD batch size P of ``dynamics.batch`` at n = ``nmax`` (a number, the
    scaling of :func:`particles.dynamics.scaled_batch`, or a schedule of either);
    ``inf`` for a scaling beyond the floats."""
    from particles.dynamics import scaled_batch

    if isinstance(batch, dict):
        try:
            return scaled_batch(batch, nmax)
        except (OverflowError, ValueError):  # P0 n^(2 alpha) is inf or nan
            return math.inf
    if isinstance(batch, list):
        return max(_largest_batch(v, nmax) for _, v in batch)
    return float(batch)


def _grid_cells(problem, g):
    ny = float(g["y"]) ** problem.N
    return ny, ny * float(g["c"])


def meanfield_need(problem, mf, T) -> Need:
    """``[meanfield]``: the grid's ~14 cell arrays (state, SSP-RK3 stages, fluxes, slopes),
    ``Phi`` and its y gradient (Q x N_y (N + 1)), the saved densities; the characteristics'
    nodes as one member of the particle stepper."""
    Q, N = problem.x.shape[0], problem.N
    need = Need("meanfield")
    if "grid" in mf["solvers"]:
        ny, cells = _grid_cells(problem, mf["grid"])
        need.add(14 * cells, "the grid's cell arrays", "meanfield.grid.y or meanfield.grid.c")
        need.add(Q * ny * (N + 1), "Phi and its y gradient (Q x N_y)",
                 "meanfield.grid.y (or the data nodes)")
        need.add(T * cells, "the saved densities rho_0(t, y, c)",
                 "meanfield.grid.y, meanfield.grid.c or dynamics.save_times")
    if "characteristics" in mf["solvers"]:
        ch = mf["characteristics"]
        J = float(ch["y"]) ** N * ch["c"]
        need.add(J * (N + 1) * (6 + T), "the characteristics' nodes, stages and saved nodes",
                 "meanfield.characteristics.y or meanfield.characteristics.c")
        need.add(3 * J * Q * (N + 1), "the characteristics' pull-back (nodes, Q, N+1)",
                 "meanfield.characteristics.y or meanfield.characteristics.c")
    return need


def fluctuations_need(problem, fl, mf, T, t_last) -> Need:
    """``[fluctuations]``: the influence method's recorded forward states (every step),
    its cotangents (up to Q per save time) and D (T, Q, J); the ensemble's members x cells
    perturbations with their stages and the grid it linearises; the covariance (T, Q, Q)."""
    Q, N = problem.x.shape[0], problem.N
    need = Need("fluctuations")
    need.add(2.0 * T * Q * Q, "the covariance clt_cov(t, x, x_)",
             "dynamics.save_times (or the data nodes)")
    if fl["method"] == "influence":
        J = float(fl["y"]) ** N * fl["c"]
        need.add(_steps(t_last, fl["dt"]) * J * (N + 1), "the influence method's recorded "
                 "forward states (steps x nodes)", "fluctuations.y or fluctuations.c, or "
                 "raise fluctuations.dt")
        need.add(8.0 * T * Q * J * (N + 1), "the influence method's cotangents and D "
                 "(t, x, nodes)", "fluctuations.y or fluctuations.c")
        need.add(3 * J * Q * (N + 1), "the pull-back (nodes, Q, N+1)",
                 "fluctuations.y or fluctuations.c")
    elif mf is not None and "grid" in mf["solvers"]:  # else the preflight refuses it
        ny, cells = _grid_cells(problem, mf["grid"])
        need.add(3.0 * fl["members"] * cells, "the ensemble's members x cells "
                 "perturbations and stages", "fluctuations.members, meanfield.grid.y or "
                 "meanfield.grid.c")
        need.add(14 * cells + Q * ny * (N + 1), "the linearised grid",
                 "meanfield.grid.y or meanfield.grid.c")
        need.add(float(T) * fl["members"] * Q, "the members' f_1/2(t, x)",
                 "fluctuations.members")
    return need
