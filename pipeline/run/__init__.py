"""The run room: plan, resources, the block task, executors, callbacks, the
driver, cluster set-up. Imports only `pipeline.store` (and `_errors`).

A run is plan -> executor -> callbacks. `plan` (pure: trace, size,
fingerprint, memory) makes a frozen `RunPlan`; an `Executor`
(`ThreadsExecutor`, the embedded default, one file; `DistributedExecutor`,
another) runs its `BlockTask` on the blocks to do, reporting each
`BlockEvent` to the `Callback` objects (`ProgressBar`, `Timings`, your own);
`dispatch` records the run in the store's history. The same executors run the
linear algebra's tile tasks (`Executor.map`): one task runner for all.

The events, `Callback` and the `Executor` protocol live in `_types`, which
imports nothing of ours, so a callback or an executor of your own depends on
nothing heavy.
"""

from ._callbacks import ProgressBar, StageFigures, Stages, Summary, Timings, stage
from ._cluster import JAX_WORKER_ENV, by_value, local_cluster, local_modules, tune_malloc
from ._distributed import (
    DistributedExecutor,
    active_client,
    default_executor,
    executor_for,
    forget_checked,
    open_checked,
)
from ._driver import dispatch
from ._plan import RunPlan, default_block_size, fingerprint_parts, noise_digest, plan, task_bytes
from ._resources import (
    WORKER_RUNTIME_BYTES,
    Limits,
    cluster_limits,
    device_bytes,
    machine_limits,
    on_device,
    peak_rss,
    smallest_memory_limit,
    vm_bytes,
)
from ._task import BlockTask, environment
from ._threads import ThreadsExecutor
from ._types import BlockEvent, Callback, Callbacks, Executor, RunEnd, RunStart, RunSummary

__all__ = [
    "JAX_WORKER_ENV",
    "WORKER_RUNTIME_BYTES",
    "BlockEvent",
    "BlockTask",
    "Callback",
    "Callbacks",
    "DistributedExecutor",
    "Executor",
    "Limits",
    "ProgressBar",
    "RunEnd",
    "RunPlan",
    "RunStart",
    "RunSummary",
    "StageFigures",
    "Stages",
    "Summary",
    "ThreadsExecutor",
    "Timings",
    "active_client",
    "by_value",
    "cluster_limits",
    "default_block_size",
    "default_executor",
    "device_bytes",
    "dispatch",
    "environment",
    "executor_for",
    "fingerprint_parts",
    "forget_checked",
    "local_cluster",
    "local_modules",
    "machine_limits",
    "noise_digest",
    "on_device",
    "open_checked",
    "peak_rss",
    "plan",
    "smallest_memory_limit",
    "stage",
    "task_bytes",
    "tune_malloc",
    "vm_bytes",
]
