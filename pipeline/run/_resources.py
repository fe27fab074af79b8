"""Memory, as a contract: what a task may use where it runs (`Limits`), what a
worker holds, and this process's figures from ``/proc/self/status``."""

from __future__ import annotations

import dataclasses
from typing import Any

import psutil

from diffops_core.internal import peak_rss, vm_bytes

from .._errors import StoreError

__all__ = [
    "WORKER_RUNTIME_BYTES",
    "Limits",
    "cluster_limits",
    "device_bytes",
    "machine_limits",
    "on_device",
    "peak_rss",
    "smallest_memory_limit",
    "vm_bytes",
]


#: A worker's resident memory before its first block, with jax, dask and the
#: pipeline imported (measured 230 MB: benchmarks/RESULTS.md, worker memory);
#: used when a worker cannot report its own.
WORKER_BASELINE_BYTES = 250 * 10**6


#: What a worker's resident memory grows to above its baseline once blocks run,
#: however small they are: XLA's runtime and compile buffers, zarr's and
#: distributed's I/O buffers, allocator slack (the malloc thresholds keep freed
#: slabs in the heap). Measured 265-415 MB with 30 MB slabs, n=30,000
#: (benchmarks/RESULTS.md, worker memory); a floor under the per-task estimate.
WORKER_RUNTIME_BYTES = 300 * 10**6


#: The share of a worker's memory limit a plan may fill. distributed pauses a
#: worker at 80% and its nanny kills it at 95%; the predicted peak is within
#: about 25% of the measured one, and a worker's allocator keeps more slack than
#: one process does (threads allocate from arenas of their own): an n=60,000
#: Hessian planned to 80% of a 1 GB limit was killed at 95%.
WORKER_FRACTION = 0.7


@dataclasses.dataclass(frozen=True)
class Limits:
    """Where block tasks run, as memory.

    **Attributes:** `limit` (the smallest memory limit in bytes, 0 for none),
    `baseline` (what a process holds before its first block), `threads` (tasks at
    once), `where` (a name for messages), `floor` (what a worker grows to
    whatever the block), `fraction` (of the limit a plan may fill).
    """

    limit: int
    baseline: int
    threads: int
    where: str
    floor: int = 0
    fraction: float = 0.8

    @property
    def per_task(self) -> float:
        """Bytes one task may use: the usable fraction of the limit, less the
        baseline, per task."""
        return (self.fraction * self.limit - self.baseline) / self.threads

    def peak(self, task: int) -> int:
        """A worker's predicted peak with tasks of ``task`` bytes: its baseline plus
        the tasks at once, or the runtime floor where that is larger."""
        return self.baseline + max(self.threads * task, self.floor)

    def fits(self, task: int) -> bool:
        return not self.limit or self.peak(task) <= self.fraction * self.limit


def _baseline_rss() -> int:
    """A worker's resident memory (VmRSS) once it is ready for its first block:
    jax and the pipeline imported and the backend started, as the first task
    would do anyway."""
    import jax  # a worker unpickling this has imported the pipeline, as a task would

    jax.devices()
    return vm_bytes("VmRSS")


def device_bytes() -> int:
    """The memory XLA may use on this process's first accelerator (its
    ``memory_stats()["bytes_limit"]``); 0 on a CPU, or where it cannot say."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return 0
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without statistics: the host's limit only
        return 0
    return int(stats.get("bytes_limit") or 0)


def on_device(limits: Limits, device: int) -> Limits:
    """``limits`` with an accelerator's memory where it is the smaller: a block's
    kernel (counted in each task's bytes) runs there, so a plan must fit the
    device as well as the host."""
    if device <= 0 or (limits.limit and limits.limit <= device):
        return limits
    where = f"the device's memory ({device / 2**30:.1f} GiB, smaller than {limits.where})"
    return dataclasses.replace(limits, limit=int(device), where=where)


def machine_limits(threads: int) -> Limits:
    """``threads`` tasks at once in this process: this machine's available memory
    (which already excludes what this process holds), or its accelerator's
    where that is smaller."""
    host = Limits(
        int(psutil.virtual_memory().available), 0, int(threads), "this machine's available memory"
    )
    return on_device(host, device_bytes())


def _worker_limits(client: Any) -> list[int]:
    workers = client.scheduler_info().get("workers", {}).values()
    return [int(w.get("memory_limit") or 0) for w in workers]


def smallest_memory_limit(client: Any) -> int:
    """The memory one task may count on: the smallest worker limit of ``client``'s
    cluster, or what this machine has available (no client, or no limits)."""
    positive = [lim for lim in _worker_limits(client) if lim > 0] if client is not None else []
    return min(positive) if positive else int(psutil.virtual_memory().available)


def cluster_limits(client: Any) -> Limits:
    """The memory block tasks may use on ``client``'s cluster: the smallest
    worker's limit and the largest worker's baseline (measured now).

    **Raises:** `StoreError` when the cluster has no workers."""
    workers = client.scheduler_info().get("workers", {}).values()
    if not workers:
        raise StoreError("the distributed client has no workers; start some, or pass client=None")
    positive = [lim for lim in _worker_limits(client) if lim > 0]
    try:
        baseline = max(client.run(_baseline_rss).values(), default=0)
    except Exception:  # noqa: BLE001 - a worker that cannot say: assume the measured typical
        baseline = WORKER_BASELINE_BYTES
    try:  # the smallest accelerator of any worker (0: CPU workers)
        devices = [b for b in client.run(device_bytes).values() if b > 0]
    except Exception:  # noqa: BLE001 - a worker that cannot say: the hosts' limits only
        devices = []
    host = Limits(
        min(positive) if positive else 0,
        int(baseline),
        max(int(w.get("nthreads") or 1) for w in workers),
        "a worker's memory limit",
        WORKER_RUNTIME_BYTES,
        WORKER_FRACTION,
    )
    return on_device(host, min(devices, default=0))
