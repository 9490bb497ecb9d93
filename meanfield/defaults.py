"""Default resolutions and steps of the mean-field solvers: the one place they are set.

Each dictionary has the keys of the config table it stands for (``[meanfield] grid``,
``[meanfield] characteristics``, the nodes of ``[fluctuations]``), and the solvers take a
dictionary of the same keys (``solve_grid(problem, ts, grid={"y": 64, "c": 32})``): the
Python arguments and the config keys are one set of names. The config defaults
(``analysis.run.experiment``) read these dictionaries too.
"""
#: ``[meanfield] grid``: cells per y coordinate and in c, the c range, the step rule
#: (``dt`` None: adaptive, ``cfl`` times the positivity bound), the potential, and whether
#: initial mass outside the grid is accepted; ``y_low``/``y_high`` (one number per y
#: coordinate) give the y box of non-periodic problems.
GRID = {"y": 256, "c": 256, "c_min": -5.0, "c_max": 5.0, "cfl": 0.9, "potential": "auto",
        "allow_truncation": False, "dt": None}
#: keys of a grid table that may be given but have no default
GRID_OPTIONAL = ("y_low", "y_high")
#: largest accepted difference between φ's cell-centre values and cell averages
PHI_TOL = 1e-3
#: ``[meanfield] characteristics``: nodes per y coordinate and in c, the RK4 step
CHARACTERISTICS = {"y": 128, "c": 24, "dt": 0.05}
CHARACTERISTICS_INTEGRATOR = "rk4"
#: the nodes and step of the influence method (``[fluctuations]`` y, c, dt)
INFLUENCE = {"y": 64, "c": 12, "dt": 0.05}
#: relative rank cut of the influence matrices
RANK_TOL = 1e-13
ENSEMBLE = {"members": 256}


def options(table, defaults, where, optional=()):
    """``table`` over ``defaults``: the solver's options, with its keys checked.

    Raises ValueError naming ``where`` and the keys that are not options (a misspelt key
    would otherwise be ignored).
    """
    table = {} if table is None else dict(table)
    unknown = sorted(set(table) - set(defaults) - set(optional))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; the keys are "
                         f"{sorted(set(defaults) | set(optional))}")
    return {**defaults, **table}
