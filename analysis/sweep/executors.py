"""Where the tasks of a sweep run: one protocol, a serial and a local-process backend.

Every backend (:class:`SerialExecutor`, :class:`ProcessExecutor`, and the Dask executor of
:mod:`analysis.sweep.daskexec`) follows :class:`Executor`:

* ``ex.workers`` -- how many tasks run at once (int);
* ``ex.submit(fn, *args) -> future`` -- schedule ``fn(*args)``; the future has
  ``.result()`` (returns the value or raises the task's exception) and ``.cancel()``;
* ``ex.as_completed(futures) -> iterator`` -- the futures as they finish;
* ``ex.close()``, and ``with ex:`` closes on leaving.

Task functions are top-level functions of plain data (:func:`analysis.sweep.tasks.run_task`), so
that any backend can ship them to another process or machine. :func:`make_executor` turns
the options of ``mfpc run`` (``--workers``, ``--dask-local``, ``--scheduler``) into one.
"""
from __future__ import annotations

import concurrent.futures as cf
import importlib
import multiprocessing
import os
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

from particles.engine import parallel
from particles.engine.config import ConfigError

__all__ = ["Executor", "SerialExecutor", "ProcessExecutor", "make_executor", "check_options",
           "ONE_THREAD"]

#: environment of every worker process (processes and Dask), :data:`particles.engine.parallel.
#: ONE_THREAD`: numpy/BLAS and mfpc's block threads on one thread each
ONE_THREAD = parallel.ONE_THREAD


@runtime_checkable
class Executor(Protocol):
    """What a sweep needs of a backend (module doc)."""

    workers: int

    def submit(self, fn: Callable, *args) -> Any: ...

    def as_completed(self, futures: Iterable) -> Iterator: ...

    def close(self) -> None: ...


class _Closing:
    """``with ex:`` closes ``ex`` on leaving."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class SerialFuture:
    """A task of :class:`SerialExecutor`: run in this process when its result is asked for
    (or when :meth:`SerialExecutor.as_completed` reaches it), at most once."""

    def __init__(self, fn, args):
        self._fn, self._args = fn, args
        self._state, self._value = "pending", None

    def _run(self):
        if self._state == "pending":
            try:
                self._value, self._state = self._fn(*self._args), "done"
            except Exception as e:  # noqa: BLE001 - handed to whoever asks for the result
                self._value, self._state = e, "error"
            self._fn = self._args = None

    def cancel(self) -> bool:
        """Never run it (if it has not run yet)."""
        if self._state == "pending":
            self._state, self._fn, self._args = "cancelled", None, None
        return self._state == "cancelled"

    def cancelled(self) -> bool:
        return self._state == "cancelled"

    def done(self) -> bool:
        return self._state != "pending"

    def result(self):
        if self._state == "cancelled":
            raise cf.CancelledError()
        self._run()
        if self._state == "error":
            raise self._value
        return self._value


class SerialExecutor(_Closing):
    """Every task in this process, one after the other, in the order submitted (the
    default of ``mfpc run``: the numbers and the order of work of a plain loop)."""

    workers = 1

    def submit(self, fn, *args) -> SerialFuture:
        return SerialFuture(fn, args)

    def as_completed(self, futures):
        for f in list(futures):
            f._run()
            yield f

    def close(self):
        pass


def _worker_init(env, preload):
    """Initializer of every worker process: the environment (already in place: set before
    the process started, so numpy read it at import) and the modules to import at start,
    so that no task pays for importing them."""
    os.environ.update(env)
    for name in preload:
        importlib.import_module(name)


#: what a worker imports at start: the task function's module and the netCDF/xarray
#: machinery its first task would otherwise import (names, not imports: no cycle)
PRELOAD = ("analysis.run.experiment", "xarray.backends.h5netcdf_", "h5netcdf")


def _ready():
    return os.getpid()


class ProcessExecutor(_Closing):
    """``n`` local worker processes (``mfpc run --workers N``).

    The workers are started at once (``spawn``: a fresh interpreter each, with
    :data:`ONE_THREAD` in its environment before numpy is imported, so that ``n`` workers
    use ``n`` cores) and live until :meth:`close`: a task pays only for pickling its few
    arguments and its result, not for starting a process or importing numpy again.

    Parameters
    ----------
    n : int
        Number of worker processes (>= 1).
    preload : sequence of str
        Modules every worker imports when it starts (default: :data:`PRELOAD`).
    """

    def __init__(self, n: int, preload=None):
        n = int(n)
        if n < 1:
            raise ConfigError(f"--workers {n}: give at least 1 worker process")
        self.workers = n
        saved = {k: os.environ.get(k) for k in ONE_THREAD}
        os.environ.update(ONE_THREAD)
        try:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init,
                initargs=(dict(ONE_THREAD), tuple(PRELOAD if preload is None else preload)))
            # start every worker now, while the environment holds ONE_THREAD
            for f in [self._pool.submit(_ready) for _ in range(n)]:
                f.result()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def as_completed(self, futures):
        return cf.as_completed(list(futures))

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


def check_options(workers=None, dask_local=None, scheduler=None, retries=2,
                  checkpoint_every=None) -> list:
    """Refuse options of ``mfpc run`` that cannot work, before any work.

    Returns
    -------
    list of str
        The executor options given (at most one).

    Raises
    ------
    ConfigError
        More than one executor option, a count below 1, negative retries, or a
        checkpoint interval below 0.
    """
    given = [name for name, v in (("--workers", workers), ("--dask-local", dask_local),
                                  ("--scheduler", scheduler)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} exclude each other: one executor runs a "
                          "sweep; give one of --workers N, --dask-local N, --scheduler ADDRESS")
    for name, v in (("--workers", workers), ("--dask-local", dask_local)):
        if v is not None and int(v) < 1:
            raise ConfigError(f"{name} {v}: give at least 1 worker")
    if scheduler is not None and not str(scheduler).strip():
        raise ConfigError('--scheduler "" names no scheduler; give its address, e.g. '
                          "--scheduler tcp://host:8786")
    if int(retries) < 0:
        raise ConfigError(f"--retries {retries}: give 0 or more")
    if checkpoint_every is not None and not float(checkpoint_every) >= 0:
        raise ConfigError(f"--checkpoint-every {checkpoint_every}: give a number of seconds "
                          ">= 0 (0: after every step)")
    return given


def make_executor(workers=None, dask_local=None, scheduler=None) -> Executor:
    """The executor of ``mfpc run``'s options (at most one of them).

    Parameters
    ----------
    workers : int, optional
        ``--workers N``: :class:`ProcessExecutor` of N processes (1: serial).
    dask_local : int, optional
        ``--dask-local N``: a ``distributed.LocalCluster`` of N workers
        (:func:`analysis.sweep.daskexec.dask_executor`).
    scheduler : str, optional
        ``--scheduler ADDRESS``: join a running Dask scheduler.

    Returns
    -------
    Executor
        :class:`SerialExecutor` when no option is given.

    Raises
    ------
    ConfigError
        More than one option, a count below 1, or Dask options without the Dask extra.
    """
    given = check_options(workers, dask_local, scheduler)
    if dask_local is not None or scheduler is not None:
        try:
            from analysis.sweep.daskexec import dask_executor
        except ModuleNotFoundError as e:
            if e.name != "analysis.sweep.daskexec":
                raise
            raise ConfigError(f"{given[0]} needs analysis.sweep.daskexec (the Dask executor), which "
                              "this build of mfpc does not have; use --workers N") from None
        return dask_executor(dask_local=dask_local, scheduler=scheduler)
    if workers is None or int(workers) == 1:
        return SerialExecutor()
    return ProcessExecutor(workers)  # refuses workers < 1
