"""A local dask cluster whose worker processes are set up for JAX."""

from __future__ import annotations

from typing import Any

import dask

__all__ = ["JAX_WORKER_ENV", "local_cluster", "peak_rss", "tune_malloc", "vm_bytes"]

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


def vm_bytes(field: str = "VmHWM") -> int:
    """A figure of this process from ``/proc/self/status``, in bytes: ``VmHWM``
    (peak resident memory of this process image; unlike ``ru_maxrss`` it does not
    survive exec, so a worker spawned by a large driver reports its own peak) or
    ``VmRSS`` (resident now). 0 where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM)."""
    return vm_bytes("VmHWM")


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
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            memory_limit=memory_limit,
            env=environ,
            **kwargs,
        )
