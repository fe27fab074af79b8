"""pipeline: out-of-core, resumable Jacobians and Hessians as dask graphs of
`diffops_core` block kernels writing Zarr column slabs.

Public names: `hessian_to_zarr`, `jacobian_to_zarr`, `open_result`, `Result`,
`local_cluster`, the workflow spec (`load_spec`, `run_spec`, `Spec`), and the
errors `StoreError`, `SpecError` and `BlockError`. The ``diffops`` command is
`pipeline.cli`.
"""

from diffops_core import __version__

from ._api import hessian_to_zarr, jacobian_to_zarr
from ._cluster import local_cluster
from ._result import Result, open_result
from ._spec import Spec, SpecError, load_spec
from ._store import StoreError
from ._tasks import BlockError
from ._workflow import run_spec

__all__ = [
    "__version__",
    "hessian_to_zarr",
    "jacobian_to_zarr",
    "open_result",
    "Result",
    "local_cluster",
    "load_spec",
    "run_spec",
    "Spec",
    "StoreError",
    "SpecError",
    "BlockError",
]
