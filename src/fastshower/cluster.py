"""Dask for the stages that are many independent jobs: simulation productions and preprocessing.

``--scheduler local`` starts a local cluster of single-threaded worker processes; any other
value is the address of a running Dask scheduler (``tcp://host:8786``), e.g. one started by
dask-jobqueue on Slurm or HTCondor, so a production scales out without new code. Outputs must
then go to a file system every worker sees. Every task is retried on failure (a lost worker
included) and is idempotent: a simulation job whose complete file exists is skipped, and files
are complete or absent (temporary name, renamed at the end).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from fastshower.errors import FastShowerError

RETRIES = 2


def connect(scheduler: str, workers: int):
    """A Dask client: a local cluster of ``workers`` processes, or the scheduler at an address."""
    from distributed import Client, LocalCluster

    if scheduler == "local":
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        return Client(cluster)
    try:
        return Client(scheduler, timeout="10s")
    except (OSError, TimeoutError) as err:
        raise FastShowerError(f"cannot reach the Dask scheduler at {scheduler}: {err}") from None


def close(client) -> None:
    cluster = client.cluster
    client.close()
    if cluster is not None:
        cluster.close()


class DaskPool:
    """``imap`` over a Dask cluster with at most ``window`` tasks in flight, results in order
    (memory stays bounded however many tasks there are)."""

    def __init__(self, scheduler: str, workers: int, window: int | None = None):
        self.scheduler, self.workers = scheduler, workers
        self.window = window or 2 * workers

    def __enter__(self) -> DaskPool:
        self.client = connect(self.scheduler, self.workers)
        return self

    def __exit__(self, *exc) -> bool:
        close(self.client)
        return False

    def imap(self, fn: Callable, items: Iterable) -> Iterator:
        return in_order((self.client.submit(fn, item, retries=RETRIES, pure=False)
                         for item in items), lambda future: future.result(), self.window)


def in_order(submitted: Iterator, result: Callable, window: int) -> Iterator:
    """Results of lazily ``submitted`` tasks in submission order, with at most ``window``
    submitted and not yet taken (so memory stays bounded when the consumer is slower)."""
    pending: deque = deque()
    for task in submitted:
        pending.append(task)
        if len(pending) >= window:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())
