"""pipeline: out-of-core, resumable Jacobians, Hessians and Fisher matrices as
tasks of `diffops_core` block kernels writing Zarr column slabs, and what
they give: marginal σ, covariances, spectra.

The user API is here: the ``*_to_zarr`` calls and `open_result` (each gives a
`Result`), the workflow spec (`load_spec`, `run_spec`, `repair`), the
executors and callbacks a run takes, the types public methods return and the
errors they raise. `pipeline.internal` is what executors, tests and
benchmarks build on (no stability promise); the ``diffops`` command is
`pipeline.cli`. How the rooms (`store`, `run`, `linalg`, `report`,
`workflow`) fit together: the README's architecture section.
"""

from diffops_core import __version__

from ._api import RunOptions, gauss_newton_to_zarr, hessian_to_zarr, jacobian_to_zarr
from ._errors import (
    BlockError,
    ClusterSetupError,
    MissingDependencyError,
    NotEnoughMemoryError,
    NotPositiveDefiniteError,
    SpecError,
    StoreError,
)
from ._result import Result, open_result
from .linalg import Analysis, LeafStd
from .report import LeafSummary, StoreSummary
from .run import (
    BlockEvent,
    Callback,
    DistributedExecutor,
    Executor,
    ProgressBar,
    RunEnd,
    RunPlan,
    RunStart,
    RunSummary,
    ThreadsExecutor,
    Timings,
    local_cluster,
)
from .workflow import Spec, WorkflowSummary, load_spec, repair, run_spec

__all__ = [
    "Analysis",
    "BlockError",
    "BlockEvent",
    "Callback",
    "ClusterSetupError",
    "DistributedExecutor",
    "Executor",
    "LeafStd",
    "LeafSummary",
    "MissingDependencyError",
    "NotEnoughMemoryError",
    "NotPositiveDefiniteError",
    "ProgressBar",
    "Result",
    "RunEnd",
    "RunOptions",
    "RunPlan",
    "RunStart",
    "RunSummary",
    "Spec",
    "SpecError",
    "StoreError",
    "StoreSummary",
    "ThreadsExecutor",
    "Timings",
    "WorkflowSummary",
    "__version__",
    "gauss_newton_to_zarr",
    "hessian_to_zarr",
    "jacobian_to_zarr",
    "load_spec",
    "local_cluster",
    "open_result",
    "repair",
    "run_spec",
]
