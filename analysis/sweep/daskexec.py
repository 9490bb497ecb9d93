"""The Dask executor of a sweep: ``mfpc run --dask-local N`` and ``--scheduler ADDRESS``.

It follows the executor protocol of :mod:`analysis.sweep.executors` (``workers``,
``submit(fn, *args) -> future`` with ``.result()`` and ``.cancel()``,
``as_completed(futures)``, ``close()``, ``with ex:``):

* ``dask_local=N`` starts a :class:`distributed.LocalCluster` of ``N`` worker processes of
  one thread each (``processes=True``; every worker starts with :data:`ONE_THREAD` in its
  environment, numpy/BLAS on one thread, so ``N`` workers use ``N`` cores) and closes it
  on :meth:`DaskExecutor.close`;
* ``scheduler=ADDRESS`` joins a running ``dask scheduler`` (workers started with
  ``dask worker ADDRESS --nthreads 1``) and leaves it, and its workers, running on close.

Tasks are submitted with ``pure=False``: a retried task runs again instead of returning the
failed result Dask keeps under the same key. A task's numbers do not depend on where it
runs (every member draws from its own ``SeedSequence``), so Dask gives bitwise the results
of a serial run.

Dask is the optional extra ``dask``; without it :func:`dask_executor` raises a
:class:`particles.engine.config.ConfigError` that names it. This module imports without Dask.
"""
from __future__ import annotations

import logging

from particles.engine.config import ConfigError
from particles.engine.parallel import ONE_THREAD

__all__ = ["DaskExecutor", "dask_executor", "INSTALL", "CONNECT_TIMEOUT", "ONE_THREAD"]

log = logging.getLogger(__name__)

#: How to install the extra, quoted in the error raised without Dask.
INSTALL = 'pip install -e ".[dask]"'
#: Seconds to reach a scheduler and to wait for its first worker.
CONNECT_TIMEOUT = 10.0


class DaskExecutor:
    """A :class:`distributed.Client` as a sweep executor (module doc).

    Parameters
    ----------
    client : distributed.Client
    cluster : distributed.LocalCluster, optional
        The cluster this executor started (closed with it); ``None`` for an external
        scheduler (left running).
    """

    def __init__(self, client, cluster=None):
        self.client, self.cluster = client, cluster
        #: tasks that run at once: the worker threads known to the scheduler
        self.workers = max(1, sum(client.nthreads().values()))

    def __repr__(self):
        where = "LocalCluster" if self.cluster is not None else "scheduler"
        return f"DaskExecutor({where} {self.client.scheduler.address}, workers={self.workers})"

    def submit(self, fn, *args):
        """Schedule ``fn(*args)`` on a worker; a :class:`distributed.Future`."""
        return self.client.submit(fn, *args, pure=False)

    def as_completed(self, futures):
        """The futures in the order they finish (:class:`distributed.as_completed`)."""
        from distributed import as_completed

        return as_completed(list(futures))

    def close(self):
        """Close the client, and the LocalCluster if this executor started it."""
        try:
            self.client.close()
        finally:
            if self.cluster is not None:
                self.cluster.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _distributed(option):
    try:
        import distributed
    except ImportError as e:
        raise ConfigError(f"{option} needs Dask, the optional extra 'dask', which is not "
                          f"installed ({e}); install it with {INSTALL}") from None
    return distributed


def dask_executor(dask_local=None, scheduler=None, *, timeout=CONNECT_TIMEOUT) -> DaskExecutor:
    """A :class:`DaskExecutor` on a new LocalCluster or on a running scheduler.

    Parameters
    ----------
    dask_local : int, optional
        Start a LocalCluster of this many single-threaded worker processes.
    scheduler : str, optional
        The address of a running scheduler (``tcp://host:8786``).
    timeout : float
        Seconds to reach the scheduler and for at least one worker to be there.

    Raises
    ------
    ConfigError
        Dask not installed (names the extra), neither or both options, a count below 1,
        a scheduler that cannot be reached or has no worker within ``timeout`` (names the
        address).
    """
    if (dask_local is None) == (scheduler is None):
        raise ConfigError("give one of --dask-local N (a local Dask cluster) or "
                          "--scheduler ADDRESS (a running Dask scheduler)")
    option = "--dask-local" if dask_local is not None else "--scheduler"
    distributed = _distributed(option)
    if dask_local is not None:
        n = int(dask_local)
        if n < 1:
            raise ConfigError(f"--dask-local {dask_local}: give at least 1 worker")
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, env=dict(ONE_THREAD))
        try:
            client = distributed.Client(cluster)
        except BaseException:
            cluster.close()
            raise
        log.info("Dask LocalCluster %s with %d worker processes", cluster.scheduler_address, n)
        return DaskExecutor(client, cluster)
    address = str(scheduler).strip()
    if not address:
        raise ConfigError('--scheduler "" names no scheduler; give its address, e.g. '
                          "--scheduler tcp://host:8786")
    try:
        client = distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(f"--scheduler {address}: no Dask scheduler could be reached there "
                          f"within {timeout:g} s ({type(e).__name__}: {e}); start one with "
                          "`dask scheduler` and give the address it prints") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError) as e:
        client.close()
        raise ConfigError(f"--scheduler {address}: the scheduler has no worker after "
                          f"{timeout:g} s ({type(e).__name__}); start one with "
                          f"`dask worker {address} --nthreads 1`") from None
    log.info("joined the Dask scheduler %s (%d worker threads)", address,
             sum(client.nthreads().values()))
    return DaskExecutor(client)
