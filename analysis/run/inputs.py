"""Reading what a user gives: the TOML config file and the ``init.file`` of units.

Both are checked before any work: :func:`load_config` refuses a missing, unreadable or
non-UTF-8 file, or invalid TOML; :func:`read_init_file` refuses a netCDF file whose
``y``/``c`` have the wrong dims, no members or particles, or values that are NaN,
infinite or beyond :data:`INIT_MAX`. Each refusal is a
:class:`~particles.engine.config.ConfigError` naming the file (or ``init.file``) and what to do.
"""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np

from particles.engine import config as C
from particles.measures import DATA_MAX

from analysis.store.io import read_dataset

__all__ = ["load_config", "read_init_file", "INIT_MAX"]

ConfigError = C.ConfigError


def load_config(path) -> dict:
    """Read a TOML file (UTF-8); a :class:`ConfigError` naming the file if it is missing,
    unreadable, not UTF-8 text or not valid TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (or is not a file); give the "
                          "path of a TOML config")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as e:  # permission denied, an I/O error, ...
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); check its "
                          "permissions (it must be readable by this user)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {raw[e.start]:#04x} at line {line}, "
            f"offset {e.start}); TOML files must be UTF-8: save it as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`), or remove the character") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None


#: Largest |value| accepted in an init file. The paper's initial laws are O(1); the
#: velocities are O(c^2) and the loss O(c^2 n^0) (f_n averages c phi), so a value of
#: 1e8 already makes the first step's velocity 1e16 times larger than for O(1) units
#: (no dt a config gives is stable for it) while its square (1e16) is still far from
#: overflow (1.8e308); larger values are refused as a file in the wrong units or broken.
#: The same bound as the data files' and the initial laws' (:data:`particles.measures.DATA_MAX`).
INIT_MAX = DATA_MAX


def read_init_file(path, base):
    """``(y (S, n, N), c (S, n))`` of ``init.file``, checked: shapes, sizes and values."""
    p = Path(path)
    if not p.is_absolute():
        p = base / p
    key = f"init.file={str(path)!r}"
    if not p.is_file():
        raise ConfigError(f"{key}: no such file ({p}); give the path of a netCDF file "
                          "(relative paths are relative to the config file)")
    try:
        ds = read_dataset(p)
    except Exception as e:  # noqa: BLE001 - any reading failure is a config error here
        raise ConfigError(f"{key} could not be read as netCDF: {e}") from None
    for v in ("y", "c"):
        if v not in ds:
            raise ConfigError(f"{key} has no variable {v!r}; it needs y(member, particle) "
                              "and c(member, particle)")
    y, c = ds["y"], ds["c"]
    if (c.dims != ("member", "particle") or y.dims[:2] != ("member", "particle")
            or y.ndim not in (2, 3)):
        raise ConfigError(
            f"{key}: y has dims {y.dims} and c {c.dims}; expected y(member, particle[, y_dim]) "
            "and c(member, particle)"
        )
    if y.shape[:2] != c.shape:
        raise ConfigError(f"{key}: y has {y.shape[:2]} (member, particle) entries and c "
                          f"{c.shape}; they must agree")
    S, n = c.shape
    if S == 0 or n == 0:
        raise ConfigError(f"{key} holds {S} member(s) of {n} particle(s); it needs at least "
                          "one member with at least one particle")
    try:
        yv, cv = np.asarray(y.values, float), np.asarray(c.values, float)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: y and c must be numbers ({e})") from None
    for name, v in (("y", yv), ("c", cv)):
        bad = ~np.isfinite(v)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ConfigError(f"{key}: {name} has {int(bad.sum())} value(s) that are NaN or "
                              f"infinite (first at index {where}: {v[where]}); every initial "
                              "unit must be finite")
        if np.abs(v).max() > INIT_MAX:
            where = tuple(int(i) for i in np.unravel_index(np.abs(v).argmax(), v.shape))
            raise ConfigError(f"{key}: {name} has values up to {v[where]:.3g} (index "
                              f"{where}), beyond |{name}| <= {INIT_MAX:g}; initial units are "
                              "O(1): check the file's units")
    return yv, cv
