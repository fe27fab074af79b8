"""diffops_core: dense Jacobians and Hessians of JAX functions in column blocks.

The public, zodiax-compatible API is `jacobian`, `hessian` and
`hessian_to_pytree`. The block planner (`plan_blocks`, `BlockPlan`), the kernel
factory (`get_kernels`, `Kernels`, `KernelSpec`), the sizing helpers and the
flat layout (`Layout`) are the documented internal API that executors (the
in-memory loop here, the dask pipeline) build on.
"""

from ._api import (
    check_flag,
    choose_sizing,
    hessian,
    jacobian,
    jacobian_op,
    split_jacobian,
)
from ._kernels import Kernels, KernelSpec, clear_cache, get_kernels
from ._layout import Layout, LeafSpec
from ._plan import (
    Block,
    BlockPlan,
    format_bytes,
    parse_bytes,
    plan_blocks,
    resolve_block_size,
)
from ._sizing import Footprint, Sizing, auto_micro, budget_block, kernel_bytes
from ._version import __version__
from ._views import hessian_to_pytree, matrix_to_pytree

__all__ = [
    "__version__",
    # the zodiax-compatible API
    "jacobian",
    "hessian",
    "hessian_to_pytree",
    # views
    "matrix_to_pytree",
    # the executor-facing internals
    "Layout",
    "LeafSpec",
    "Block",
    "BlockPlan",
    "plan_blocks",
    "resolve_block_size",
    "parse_bytes",
    "format_bytes",
    "KernelSpec",
    "Kernels",
    "get_kernels",
    "clear_cache",
    "Sizing",
    "Footprint",
    "choose_sizing",
    "auto_micro",
    "budget_block",
    "kernel_bytes",
    "jacobian_op",
    "split_jacobian",
    "check_flag",
]
