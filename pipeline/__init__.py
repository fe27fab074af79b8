"""pipeline: out-of-core, resumable Jacobians and Hessians as dask graphs of
`diffops_core` block kernels writing Zarr column slabs.

A run is plan -> executor -> callbacks: `hessian_to_zarr`/`jacobian_to_zarr`
check their arguments, make a pure `RunPlan`, open or create the store under its
lock and hand the blocks to an `Executor` (`ThreadsExecutor`, the embedded
default, or `DistributedExecutor`), which reports each block's `BlockEvent` to
the `Callback` objects (`ProgressBar`, `Timings`, your own).

Public names: the calls above, `open_result` and `Result`, `local_cluster`, the
workflow spec (`load_spec`, `run_spec`, `repair`, `Spec`), and the errors
`StoreError`, `SpecError` and `BlockError`. The ``diffops`` command is
`pipeline.cli`.
"""

from diffops_core import __version__

from ._api import gauss_newton_to_zarr, hessian_to_zarr, jacobian_to_zarr
from ._callbacks import (
    BlockEvent,
    Callback,
    ProgressBar,
    RunEnd,
    RunStart,
    RunSummary,
    Timings,
)
from ._cluster import local_cluster
from ._execute import DistributedExecutor, Executor, ThreadsExecutor
from ._plan import NotEnoughMemoryError, RunPlan, plan
from ._result import Result, open_result
from ._spec import Spec, SpecError, load_spec
from ._store import StoreError
from ._tasks import BlockError, BlockTask
from ._workflow import WorkflowSummary, repair, run_spec

__all__ = [
    "BlockError",
    "BlockEvent",
    "BlockTask",
    "Callback",
    "DistributedExecutor",
    "Executor",
    "NotEnoughMemoryError",
    "ProgressBar",
    "Result",
    "RunEnd",
    "RunPlan",
    "RunStart",
    "RunSummary",
    "Spec",
    "SpecError",
    "StoreError",
    "ThreadsExecutor",
    "Timings",
    "WorkflowSummary",
    "__version__",
    "hessian_to_zarr",
    "jacobian_to_zarr",
    "gauss_newton_to_zarr",
    "load_spec",
    "local_cluster",
    "open_result",
    "plan",
    "repair",
    "run_spec",
]
