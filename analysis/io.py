"""Writing and reading datasets: netCDF through h5netcdf, atomically, never clobbering."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import xarray as xr

__all__ = ["write_dataset", "read_dataset"]


def write_dataset(ds: xr.Dataset, path, *, overwrite: bool = False) -> Path:
    """Write ``ds`` to ``path`` atomically (temporary file in the same folder, then rename).

    An interrupted write never leaves a truncated file under the final name.
    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force (overwrite=True) to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_dataset(path) -> xr.Dataset:
    """Read a dataset written by :func:`write_dataset` fully into memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `mfpc run CONFIG --out DIR` first")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()
