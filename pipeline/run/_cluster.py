"""Cluster set-up: a local dask cluster whose worker processes are ready for
JAX, this process's allocator tuned the same way, and the spec's own modules
shipped to workers that cannot import them.

Shipping: a spec names ``module:function`` importable from the spec's directory
(and its ``python_path``). Workers started by hand (``dask worker`` in a SLURM
job, a shared server) do not have that directory on their path, and the
scheduler unpickles task graphs too. So the modules the driver imported from
those directories are pickled **by value** (cloudpickle's
``register_pickle_by_value``): their functions travel with their code and the
globals they read (data a module loaded at import included), and neither the
scheduler nor the workers import them. Modules installed in the environment
(jax, numpy, your packages in site-packages) still travel by reference: the
workers must have them, and `DistributedExecutor` checks that before the first
block.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import dask

__all__ = ["JAX_WORKER_ENV", "by_value", "local_cluster", "local_modules", "tune_malloc"]


#: Set in each worker process before it starts (so before it imports JAX).
JAX_WORKER_ENV = {
    # several workers may share one GPU: take memory as needed, not 75% up front
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    # XLA:CPU allocates a kernel's temporaries on every call; above glibc's mmap
    # threshold (at most 32 MiB by default) each call maps fresh pages and faults
    # them in, about 10 ms per block on the MLP benchmark: keep buffers up to
    # 64 MiB in the heap (the micro-batch width keeps temporaries near 40 MB).
    # Larger, slab-sized ones are mapped and given back when freed: a 1 GiB
    # threshold kept freed slabs resident (worker peak 876 vs 707 MB, n=60,000,
    # block 256).
    "MALLOC_MMAP_THRESHOLD_": str(1 << 26),
    # The chunk-sized copies zarr makes in its own threads each left slack in a
    # per-thread arena: two arenas cut a 1 GB worker's peak from 900 to 807 MB
    # (n=30,000, block 1209) at the same speed.
    "MALLOC_ARENA_MAX": "2",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 31),
}


def tune_malloc() -> bool:
    """Apply `JAX_WORKER_ENV`'s malloc settings to this running process (glibc only).

    The embedded default runs blocks in the calling process, which started
    before anyone could set its environment; ``mallopt`` does the same at run
    time. Returns whether it applied.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return (
        bool(mallopt(m_mmap_threshold, 1 << 26))
        and bool(mallopt(m_trim_threshold, 1 << 31))
        and bool(mallopt(m_arena_max, 2))
    )


def local_cluster(
    n_workers: int = 2,
    *,
    threads_per_worker: int = 1,
    memory_limit: int | str = "auto",
    env: dict | None = None,
    **kwargs: Any,
) -> Any:
    """A `distributed.LocalCluster` of worker processes ready for JAX.

    Worker processes are spawned (never forked from a process with JAX loaded)
    with `JAX_WORKER_ENV` (plus ``env``) in their environment from the start,
    through the nanny's pre-spawn environment. One thread per worker by default:
    XLA already uses every core of a CPU, and a GPU worker overlaps its writes
    through the pipeline's own host copies.

    **Arguments:** `n_workers`, `threads_per_worker`, `memory_limit` (per worker,
    as LocalCluster takes it), `env` (more variables), other LocalCluster keywords.
    The scheduler, workers and dashboard listen on 127.0.0.1 (the dashboard on a
    free port: `distributed.Client.dashboard_link`) unless ``host`` or
    ``dashboard_address`` say otherwise.

    **Returns:** the `LocalCluster`; open a `distributed.Client` on it.
    """
    from distributed import LocalCluster

    environ = {**JAX_WORKER_ENV, **(env or {})}
    # pre-spawn: in the environment from the worker's first instruction (malloc,
    # JAX). Also as the nanny's own argument, which outranks variables the
    # driver's environment already holds (the nanny's lowest-ranked source is
    # its configuration, and it writes pre-spawn values into the driver's
    # environment, so a second cluster would otherwise inherit the first's).
    with dask.config.set(
        {
            "distributed.nanny.pre-spawn-environ": environ,
            "distributed.worker.multiprocessing-method": "spawn",
        }
    ):
        # every listener on this host only, unless the caller says otherwise:
        # whoever reaches a scheduler or a dashboard runs code as this user
        where = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0", **kwargs}
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            memory_limit=memory_limit,
            env=environ,
            **where,
        )


def _inside(path: str, directories: Sequence[str]) -> bool:
    path = os.path.realpath(path)
    return any(os.path.commonpath([path, d]) == d for d in directories)


#: Never shipped by value, wherever they are installed from (an editable install
#: of diffops lives in its source tree, which a spec may sit in): the workers run
#: their own copy, and the block task must be their class.
NEVER = frozenset({"pipeline", "diffops_core", "__main__"})


def local_modules(directories: Sequence[str]) -> list[str]:
    """Top-level names of the imported modules whose files lie under
    ``directories`` (and not in an installed environment's site-packages, and
    never diffops itself)."""
    roots = [os.path.realpath(d) for d in directories if os.path.isdir(d)]
    names = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or "site-packages" in path or "dist-packages" in path:
            continue
        if name.partition(".")[0] in NEVER:
            continue
        if _inside(path, roots):
            names.add(name.partition(".")[0])
    return sorted(names)


@contextlib.contextmanager
def by_value(directories: Sequence[str]) -> Iterator[list[str]]:
    """Pickle the modules imported from ``directories`` by value while inside."""
    import cloudpickle

    names = [n for n in local_modules(directories) if n in sys.modules]
    registered = []
    try:
        for name in names:
            cloudpickle.register_pickle_by_value(sys.modules[name])
            registered.append(name)
        yield registered
    finally:
        for name in registered:
            with contextlib.suppress(ValueError, KeyError):
                cloudpickle.unregister_pickle_by_value(sys.modules[name])
