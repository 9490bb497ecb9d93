"""Writing and reading datasets: netCDF through h5netcdf, atomically, never clobbering."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import xarray as xr

__all__ = ["atomic_path", "write_dataset", "read_dataset"]


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Whatever is written to the temporary path appears under the final name at once (a
    rename), with the usual permissions; on failure the temporary file is removed, so an
    interrupted write never leaves a truncated file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_dataset(ds: xr.Dataset, path, *, overwrite: bool = False) -> Path:
    """Write ``ds`` to ``path`` atomically (temporary file in the same folder, then rename).

    An interrupted write never leaves a truncated file under the final name.
    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force (overwrite=True) to replace it")
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return path


def read_dataset(path) -> xr.Dataset:
    """Read a dataset written by :func:`write_dataset` fully into memory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run `mfpc run CONFIG --out DIR` first")
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()
