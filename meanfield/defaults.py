"""Default resolutions and steps of the mean-field solvers: the one place they are set.

The solvers' keyword defaults and the config defaults of ``[meanfield]`` and
``[fluctuations]`` (``analysis.run.experiment``) all read these dictionaries.
"""
GRID = {"ny": 256, "nc": 256, "c_min": -5.0, "c_max": 5.0, "cfl": 0.9, "potential": "auto",
        "allow_truncation": False, "phi_tol": 1e-3}
CHARACTERISTICS = {"ny": 128, "nc": 24, "integrator": "rk4"}
INFLUENCE = {"ny": 64, "nc": 12, "rank_tol": 1e-13}
ENSEMBLE = {"members": 256}
