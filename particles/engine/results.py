r"""One builder for every Dataset mfpc returns or writes: CF-1.8 metadata and provenance.

Every solver (particles, grid, characteristics, influence, linearised ensembles) and every
analysis builds its :class:`xarray.Dataset` through :func:`dataset` (or passes a built
one through :func:`finish`), so that every file follows the same rules (checked on every
file ``mfpc run`` and ``mfpc report`` write, ``tests/test_results.py``):

* global attributes ``Conventions = "CF-1.8"``, ``title``, ``history`` (UTC time and the
  command), ``source`` (mfpc and its version), ``references`` (the paper);
* ``long_name`` and ``units`` (``"1"`` where dimensionless) on every variable and
  coordinate, from the one table :mod:`particles.engine.variables` unless the caller
  gives them;
* no ``_FillValue`` on coordinates (their encoding says so);
* integer coordinates and integer variables (counts, indices) stored as 32-bit integers.

Time ``t`` is the paper's training time (dimensionless, ``units = "1"``): with
:math:`E = n\ell` one unit moves O(1) per unit time for every n (THEORY §2).
"""
from __future__ import annotations

import functools
import importlib.metadata as md
import json
import shlex
import sys
from datetime import datetime, timezone

import numpy as np
import xarray as xr

from particles.engine.variables import long_name_units

__all__ = ["REFERENCES", "dataset", "finish", "data_digest", "versions", "history_line",
           "x_coord", "run_status",
           "check_cf"]

REFERENCES = (
    "G. M. Rotskoff and E. Vanden-Eijnden, Neural networks as interacting particle "
    "systems: asymptotic convexity of the loss landscape and universal scaling of the "
    "approximation error, arXiv:1805.00915 (2018)"
)



@functools.lru_cache(maxsize=1)
def _versions() -> tuple:
    return tuple(_version(pkg) for pkg in
                 ("mfpc", "numpy", "scipy", "xarray", "h5netcdf", "h5py"))


def _version(pkg):
    try:
        return pkg, md.version(pkg)
    except md.PackageNotFoundError:
        return pkg, "not installed"


def versions() -> dict:
    """Versions of mfpc and the packages it computes with (looked up once a process)."""
    return dict(_versions())


def x_coord(nodes) -> np.ndarray:
    """The ``x`` coordinate of nodes (Q, d): the node values when d = 1, else an int32
    index (the nodes then go in a variable ``x_nodes(x, x_dim)``)."""
    nodes = np.asarray(nodes)
    return nodes[:, 0] if nodes.shape[1] == 1 else np.arange(nodes.shape[0], dtype=np.int32)


def run_status(failure: str | None = None) -> dict:
    """The attrs every solver's Dataset carries: ``versions`` (JSON), ``complete`` (1, or
    0 for a partial result) and, for a partial result, ``failure`` (the message)."""
    out = {"versions": json.dumps(versions()), "complete": int(failure is None)}
    if failure is not None:
        out["failure"] = failure
    return out


def history_line(command: str | None = None) -> str:
    """``"<UTC time>: <command>"``; the command defaults to this process's argv."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if command is None:
        command = " ".join(shlex.quote(a) for a in sys.argv) or "python"
    return f"{now}: {command}"


def _meta(name, var, meta):
    if "long_name" in var.attrs and "units" in var.attrs:
        return var.attrs["long_name"], var.attrs["units"]
    got = (meta or {}).get(name) or long_name_units(name)
    if got is not None:
        long_name, units = got
        return var.attrs.get("long_name", long_name), var.attrs.get("units", units)
    raise KeyError(
        f"variable {name!r} has no long_name/units: add it to "
        "particles.engine.variables.VARIABLES or pass them in meta"
    )


def finish(ds: xr.Dataset, *, title: str, meta: dict | None = None,
           command: str | None = None) -> xr.Dataset:
    """Give a built Dataset its CF-1.8 metadata in place (module doc) and return it.

    Parameters
    ----------
    ds : xarray.Dataset
    title : str
        What the file holds, in a line.
    meta : dict, optional
        ``{name: (long_name, units)}`` for variables not in
        :data:`particles.engine.variables.VARIABLES`.
    command : str, optional
        The command for ``history`` (default: this process's argv).
    """
    for name in list(ds.variables):
        var = ds.variables[name]
        long_name, units = _meta(name, var, meta)
        var.attrs["long_name"], var.attrs["units"] = long_name, units
        wide = np.issubdtype(var.dtype, np.integer) and var.dtype != np.int32
        if wide or np.issubdtype(var.dtype, np.bool_):
            values = var.values
            if wide and values.size and (values.min() < np.iinfo(np.int32).min
                                         or values.max() > np.iinfo(np.int32).max):
                raise OverflowError(f"{name} does not fit a 32-bit integer")
            ds[name] = var.copy(data=values.astype(np.int32))
            ds.variables[name].attrs.update(long_name=long_name, units=units)
    for name in ds.coords:
        ds[name].encoding["_FillValue"] = None
    old = ds.attrs.get("history")
    line = history_line(command)
    ds.attrs.update({
        "Conventions": "CF-1.8",
        "title": title,
        # newest first, as NCO writes it; the line of the solver that built the data stays
        "history": f"{line}\n{old}" if old and line not in old else (old or line),
        "source": f"mfpc {versions()['mfpc']}",
        "references": REFERENCES,
    })
    ds.attrs["data_sha256"] = data_digest(ds)
    return ds


def data_digest(ds: xr.Dataset) -> str:
    """SHA-256 (hex) of every variable's name, dims and values and of ``attrs["config"]``:
    what a file holds, as written and as read back (NaN of any payload hashed as one NaN;
    strings by their UTF-8 text), so that an edited value or config is found
    (``attrs["data_sha256"]``, checked by :func:`analysis.store.runfolder.read_run`)."""
    import hashlib

    h = hashlib.sha256(str(ds.attrs.get("config", "")).encode())
    for name in sorted(ds.variables, key=str):
        v = ds.variables[name]
        a = np.asarray(v.values)
        h.update(f"\0{name}\0{','.join(map(str, v.dims))}\0{a.shape}\0".encode())
        if a.dtype.kind in "fc":
            a = np.where(np.isnan(a), np.nan, a).astype(a.dtype.newbyteorder("<"))
        if a.dtype.kind in "fciub":
            h.update(a.dtype.newbyteorder("<").str.encode())
            h.update(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).tobytes())
        else:
            h.update("\0".join(str(x) for x in a.ravel()).encode())
    return h.hexdigest()


def dataset(data_vars: dict, coords: dict, attrs: dict | None = None, *, title: str,
            meta: dict | None = None) -> xr.Dataset:
    """Build a Dataset and give it its CF-1.8 metadata (:func:`finish`)."""
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))
    return finish(ds, title=title, meta=meta)


def check_cf(ds: xr.Dataset) -> list[str]:
    """What in ``ds`` breaks the rules of this module (an empty list when nothing)."""
    bad = [f"global attribute {k!r} missing" for k in
           ("Conventions", "title", "history", "source", "references") if k not in ds.attrs]
    if ds.attrs.get("Conventions") not in (None, "CF-1.8"):
        bad.append(f"Conventions = {ds.attrs['Conventions']!r}, expected 'CF-1.8'")
    for name in ds.variables:
        var = ds.variables[name]
        for a in ("long_name", "units"):
            if not var.attrs.get(a):
                bad.append(f"{name}: no {a}")
        if np.issubdtype(var.dtype, np.integer) and var.dtype != np.int32:
            bad.append(f"{name}: integer of dtype {var.dtype}, expected int32")
    for name in ds.coords:
        if "_FillValue" in ds[name].attrs or ds[name].encoding.get("_FillValue") is not None:
            bad.append(f"coordinate {name}: has a _FillValue")
    return bad
