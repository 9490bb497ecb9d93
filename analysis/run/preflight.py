"""Preflight: what each solver cannot do for this problem, refused before any work.

:func:`analysis.run.experiment.resolve` checks every section's keys and values; this module
then asks, one function per section, whether the solvers the config names can serve this
problem: the capabilities they need (declared by the problem's parts, never discovered by
``isinstance``), the laws they can represent and the grids they can build. Every refusal
is a :class:`~particles.engine.config.ConfigError` (a :class:`~particles.engine.config.CapabilityError`
when a capability is missing) that names the config key and what to change; ``mfpc run``
then exits 2 and writes nothing.

The capabilities a solver needs (docs/config.md, "Refused before any work"):

========================================  ===============
config                                    capability
========================================  ===============
``dynamics.form = "kernel"``              ``kernel_form``
``dynamics.scheme = "sgd"``               ``sample``
``meanfield.grid.potential = "fft"``      ``fft``
``fluctuations.method = "influence"``     ``hessian_y``
========================================  ===============
"""
from __future__ import annotations

import numpy as np

from particles.engine import config as C

from analysis.run import budget

__all__ = ["capabilities", "check_parts", "check_dynamics", "check_meanfield", "check_fluctuations",
           "preflight"]

ConfigError = C.ConfigError


def capabilities(problem) -> frozenset:
    """What ``problem`` declares it can do (:meth:`particles.problem.Problem.capabilities`:
    its kernel's capabilities, ``"kernel_form"``, ``"sample"``, ``"fft"``)."""
    return frozenset(problem.capabilities())


def _require(caps, capability, key, what, problem):
    if capability not in caps:
        name = getattr(problem, "kind", type(problem).__name__)
        raise C.CapabilityError(
            f"{key}: {what} needs the capability {capability!r}, which problem {name!r} "
            f"does not declare (it declares {sorted(caps)}); {_ALTERNATIVE[capability]}"
        )


_ALTERNATIVE = {
    "kernel_form": "use dynamics.form = 'data'",
    "sample": "use scheme = 'gd' (or a data measure that can draw batches)",
    "fft": "use meanfield.grid.potential = 'data' or 'auto'",
    "hessian_y": "use fluctuations.method = 'ensemble' (with the grid), or a kernel "
                 "that declares its Hessian in y",
}


def check_dynamics(problem, dynamics) -> None:
    """``[dynamics]``: the (F, K) form and SGD batches need the problem's parts."""
    caps = capabilities(problem)
    if dynamics.form == "kernel":
        _require(caps, "kernel_form", "dynamics.form", "the (F, K) form of (2.1)", problem)
    if dynamics.scheme == "sgd":
        _require(caps, "sample", "dynamics.scheme", "SGD (3.1) draws batches of mu and",
                 problem)
    if (getattr(problem, "info", None) or {}).get("energy") == "interpolation" and (
        dynamics.form != "kernel" or dynamics.scheme == "sgd"
    ):
        raise ConfigError(
            "problem.energy='interpolation' defines the dynamics (4.5) through f and phi; "
            "it needs dynamics.form = 'kernel' and scheme 'gd' or 'langevin' "
            "(use energy = 'data' for SGD or the data form)"
        )


def _part(problem, which):
    """``problem.kernel kind='sphere'``: a part named as in a config."""
    part = getattr(problem, which, None)
    return f"problem.{which} kind={getattr(part, 'name', type(part).__name__)!r}"


def check_parts(problem) -> None:
    """The parts agree on the domain and the dimension of x: a sphere kernel needs data on
    the sphere |x| = sqrt(d) (its velocity and its closed forms assume it), a Fourier
    target on the circle needs more nodes than twice its highest mode (or it aliases to a
    lower one); the refusal names both parts."""
    kernel, measure, target = (getattr(problem, k, None) for k in ("kernel", "measure",
                                                                     "target"))
    if getattr(kernel, "y_domain", None) == "sphere" and getattr(measure, "domain",
                                                                   None) != "sphere":
        raise ConfigError(
            f"{_part(problem, 'kernel')} works on data on the sphere |x| = sqrt(d), and "
            f"{_part(problem, 'measure')} puts x {'on the circle' if getattr(measure, 'domain', None) == 'circle' else 'in R^d'} "
            f"(node norms up to {float(np.linalg.norm(measure.nodes, axis=-1).max()):.3g}, "
            f"not sqrt(d) = {np.sqrt(measure.nodes.shape[-1]):.3g}); use measure kind = "
            "'sphere', or a kernel of x in R^d (gaussian, sigmoid, relu, tanh)")
    if getattr(target, "name", None) == "fourier" and getattr(measure, "name", None) == "circle":
        k = int(max(len(np.atleast_1d(target.cos)), len(np.atleast_1d(target.sin)))) - 1
        Q = len(measure.nodes)
        if k >= 0 and Q <= 2 * k:
            raise ConfigError(
                f"{_part(problem, 'target')} has modes up to k = {k}, and "
                f"{_part(problem, 'measure')} has {Q} nodes: on {Q} nodes mode {k} aliases "
                f"to mode {abs((k + Q // 2) % Q - Q // 2)} (the trapezoid rule resolves "
                f"modes below Q/2); use problem.measure.nodes > {2 * k}")


def _characteristic_rule(problem, key):
    """The characteristics' tensor rule must exist for the initial law (cheap: one node)."""
    from meanfield.nodes import _y_rule, c_rule

    try:
        _y_rule(problem.y_law, 1)
        c_rule(problem.c_law, 1)
    except (ValueError, NotImplementedError) as e:
        raise ConfigError(f"{key}: {e}") from None


def check_meanfield(problem, dynamics, mf, T=None) -> None:
    """``[meanfield]``: the grid and the characteristics can represent this problem.

    Refuses a Dirac c law, Langevin dynamics along characteristics (no diffusion), a
    temperature schedule on the grid, the FFT potential without ``"fft"``, and whatever
    :func:`meanfield.grid.solve.prepare` refuses (c range, y resolution, a y law the grid cannot
    hold), or a fixed grid step above the initial CFL bound.
    """
    if problem.c_law.law == "constant":
        raise ConfigError("meanfield: a constant c law is a Dirac in c, which no grid "
                          "represents; use init.c law 'uniform' or 'normal'")
    if dynamics.scheme == "langevin" and "characteristics" in mf["solvers"]:
        raise ConfigError("meanfield.solvers: characteristics carry no diffusion; with "
                          "scheme = 'langevin' use solvers = ['grid']")
    if dynamics.scheme == "langevin" and not np.isscalar(dynamics.temperature):
        raise ConfigError("meanfield: the grid solver takes a constant temperature; "
                          "a temperature schedule is not supported there")
    if "characteristics" in mf["solvers"]:
        _characteristic_rule(problem, "meanfield.solvers = ['characteristics']")
    if "grid" in mf["solvers"]:
        _check_y_box(problem, mf["grid"])
        if max(abs(mf["grid"]["c_min"]), abs(mf["grid"]["c_max"])) > BOX_MAX:
            raise ConfigError(
                f"meanfield.grid.c_min={mf['grid']['c_min']:g}, c_max={mf['grid']['c_max']:g}: "
                f"the c range must lie in |c| <= {BOX_MAX:g}; give the range the weights "
                "reach (or drop c_min/c_max for the default that follows the c law)")
        try:  # the grid's box and shape (no arrays yet)
            from meanfield.grid.solve import make_grid

            g = mf["grid"]
            make_grid(problem, g["y"], g["c"], g["c_min"], g["c_max"], y_range(g))
        except (ValueError, NotImplementedError) as e:
            raise ConfigError(f"meanfield.grid: {e}") from None
    if T is not None:
        _budget(budget.meanfield_need(problem, mf, T))
    if "grid" in mf["solvers"]:
        _check_grid(problem, mf["grid"])


def y_range(g):
    """``[(low, high)]`` per y coordinate from meanfield.grid y_low/y_high, or None."""
    from meanfield.grid.solve import grid_options, y_box

    try:
        return y_box(grid_options(g, "meanfield.grid"))
    except ValueError as e:
        raise ConfigError(str(e)) from None


#: Largest |y_low|, |y_high|, |c_min|, |c_max| of the grid: the initial laws are O(1)
#: (init.file refuses |values| > 1e8 for the same reason), and the grid's fluxes carry
#: products of the box's coordinates (c times dU/dy), which overflow long before 1e300.
BOX_MAX = 1e8


def _check_y_box(problem, g):
    """``y_low``/``y_high``: one pair per y coordinate, low < high, not on the circle."""
    if "y_low" not in g and "y_high" not in g:
        return
    from meanfield.grid.cells import _is_circle

    if _is_circle(problem):
        raise ConfigError("meanfield.grid.y_low/y_high: the circle's y grid is the whole "
                          "periodic [0, 2 pi); drop y_low and y_high")
    box = y_range(g)
    if any(abs(v) > BOX_MAX for pair in box for v in pair):
        raise ConfigError(
            f"meanfield.grid.y_low={g['y_low']}, y_high={g['y_high']}: the y box must lie in "
            f"|y| <= {BOX_MAX:g} (units start O(1) and the solver's fluxes scale with the "
            "box); give the box where the units go, e.g. drop y_low/y_high for the y law's "
            "default box")
    if len(box) != problem.N or any(not hi > lo for lo, hi in box):
        raise ConfigError(
            f"meanfield.grid.y_low={g['y_low']} and y_high={g['y_high']}: give {problem.N} "
            "number(s) each (one per y coordinate) with y_low < y_high in every coordinate")


def _check_grid(problem, g):
    from meanfield.grid.solve import GridSolver, prepare

    try:
        grid, m0, _, _ = prepare(problem, g, where="meanfield.grid", phi_tol_hint=False)
    except (ValueError, NotImplementedError) as e:
        raise ConfigError(f"meanfield.grid: {e}") from None
    if g["potential"] == "fft":
        _require(capabilities(problem), "fft", "meanfield.grid.potential",
                 "the FFT potential (a translation-invariant kernel on a periodic grid)",
                 problem)
    if g.get("dt") is not None:
        bound = GridSolver(problem, grid, potential=g["potential"]).cfl_bound(m0)
        if g["dt"] > bound:
            raise ConfigError(
                f"meanfield.grid.dt={g['dt']} exceeds the CFL (positivity) bound "
                f"{bound:.4g} of the initial density on this grid; use dt <= "
                f"{g['cfl'] * bound:.3g} (cfl times the bound), or drop dt for the adaptive "
                "step"
            )


def check_fluctuations(problem, dynamics, fl, mf) -> None:
    """``[fluctuations]``: the influence method needs ``"hessian_y"`` and the tensor rule
    of the characteristics; the ensemble method linearises the grid of ``[meanfield]``.
    ``sgd`` uses the same machinery and needs nothing more; its covariance
    enters the memory budget (:func:`preflight`)."""
    if dynamics.scheme == "langevin":
        raise ConfigError("fluctuations: the CLT prediction is for gd/sgd without "
                          "thermal noise; remove [fluctuations] or use scheme = 'gd'")
    if fl.get("sgd") and dynamics.scheme != "sgd":
        raise ConfigError(
            f"fluctuations.sgd = true predicts the fluctuations of SGD's batches (3.23), and "
            f"dynamics.scheme = {dynamics.scheme!r} draws none (no dynamics.batch): drop "
            "fluctuations.sgd, or use scheme = 'sgd' with a batch")
    if fl["method"] == "influence":
        _require(capabilities(problem), "hessian_y", "fluctuations.method",
                 "the influence method (the adjoint of (2.24) along characteristics)",
                 problem)
        _characteristic_rule(problem, "fluctuations.method = 'influence'")
    elif mf is None or "grid" not in mf["solvers"]:
        raise ConfigError("fluctuations.method = 'ensemble' linearises the grid solver: "
                          "add [meanfield] with solvers including 'grid'")


def _budget(need):
    """Refuse a section whose arrays cannot fit in the available memory."""
    msg = need.check()
    if msg:
        raise ConfigError(msg)


def preflight(problem, dynamics, mf=None, fl=None, *, save_times=None, parts=None) -> None:
    """Every section's check, in the order the sections run; raises on the first refusal.

    With ``save_times``, also the budget (:mod:`analysis.run.budget`): step counts first, then
    each section's memory before its preflight allocates anything (the grid's cells).
    """
    check_parts(problem)
    check_dynamics(problem, dynamics)
    if save_times is not None:
        T, t_last = len(save_times), float(save_times[-1])
        msg = budget.steps_check(t_last, dynamics, mf, fl)
        if msg:
            raise ConfigError(msg)
        if parts is not None:
            _budget(budget.particles_need(problem, dynamics, parts, T))
    if mf is not None:
        check_meanfield(problem, dynamics, mf, T=None if save_times is None else T)
    if fl is not None:
        check_fluctuations(problem, dynamics, fl, mf)
        if save_times is not None:
            need = budget.fluctuations_need(problem, fl, mf, T, t_last)
            if fl.get("sgd"):  # sgd_cov beside clt_cov
                Q = problem.x.shape[0]
                need.add(2.0 * T * Q * Q, "the SGD covariance sgd_cov(t, x, x_)",
                         "dynamics.save_times, or set fluctuations.sgd = false")
            _budget(need)
