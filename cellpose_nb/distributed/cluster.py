"""Which dask cluster to run on: a local one sized from the machine, or any existing one.

:func:`connect` yields a ``distributed.Client``:

- the ``client`` the caller passes (a dask-jobqueue ``SLURMCluster(...)``'s
  ``Client``, a Kubernetes or Coiled cluster's, ...), used as it is and left open;
- else ``Client(scheduler)`` for a scheduler address (``tcp://host:8786``),
  closed afterwards, the cluster left running;
- else a ``LocalCluster`` of :func:`local_cluster_options` workers, closed afterwards.

Nothing here is specific to a scheduler: the same code runs on a laptop and on
a SLURM allocation.
"""

from __future__ import annotations

import contextlib
import os

from cellpose_nb.distributed.io import require

__all__ = ["CONNECT_TIMEOUT", "THREADS_PER_WORKER", "WORKER_MEMORY", "connect", "local_cluster_options"]

#: memory limit of a local worker: a block of BLOCK_SIZE with its halo, the model and torch fit
WORKER_MEMORY = 2 * 2 ** 30
#: dask threads per local worker: blocks run in parallel across workers (processes), not threads
THREADS_PER_WORKER = 1
#: share of the machine's memory that local workers may take together
MEMORY_SHARE = 0.8
#: seconds to wait for a scheduler address to answer before saying it cannot be reached
CONNECT_TIMEOUT = 5


def local_cluster_options(n_workers=None, *, cpu_count=None, memory=None) -> dict:
    """``LocalCluster`` keywords for this machine: one worker per core, as memory allows.

    Examples
    --------
    >>> local_cluster_options(cpu_count=16, memory=8 * 2 ** 30)["n_workers"]
    3
    >>> local_cluster_options(2)["n_workers"]
    2
    """
    if n_workers is None:
        cpus = cpu_count or os.cpu_count() or 1
        if memory is None:
            import psutil

            memory = psutil.virtual_memory().total
        by_memory = int(memory * MEMORY_SHARE // WORKER_MEMORY)
        n_workers = max(1, min(cpus // THREADS_PER_WORKER, by_memory))
    elif not (isinstance(n_workers, int) and n_workers >= 1):
        raise ValueError(f"n_workers must be an integer >= 1; got {n_workers!r}")
    return {"n_workers": n_workers, "threads_per_worker": THREADS_PER_WORKER,
            "memory_limit": WORKER_MEMORY, "processes": True}


@contextlib.contextmanager
def connect(client=None, scheduler=None, *, n_workers=None, dashboard_address=":0"):
    """Yield a ``distributed.Client``: ``client``, or one to ``scheduler``, or a local cluster.

    Parameters
    ----------
    client : distributed.Client, optional
        Used as it is (not closed).
    scheduler : str, optional
        Address of a running scheduler, e.g. ``tcp://10.0.0.5:8786``.
    n_workers : int, optional
        Workers of the local cluster (default: :func:`local_cluster_options`).
    dashboard_address : str or None
        Of the local cluster; ``":0"`` picks a free port, None none.
    """
    distributed = require("distributed")
    if client is not None and scheduler is not None:
        raise ValueError("give a client or a scheduler address, not both")
    if client is not None:
        yield client
        return
    if scheduler is not None:
        try:
            remote = distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT}s")
        except (OSError, TimeoutError) as exc:  # refused, unknown host, or no answer in time
            raise OSError(f"cannot reach the dask scheduler at {scheduler} within "
                          f"{CONNECT_TIMEOUT} s: {' '.join(str(exc).split()) or type(exc).__name__}; "
                          "is it running, and is the address (tcp://HOST:PORT) right?") from None
        with remote:
            yield remote
        return
    options = local_cluster_options(n_workers)
    with distributed.LocalCluster(dashboard_address=dashboard_address, **options) as cluster, \
            distributed.Client(cluster) as local:
        yield local
