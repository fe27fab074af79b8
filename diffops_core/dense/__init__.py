"""The dense machinery: what every matrix is computed with, sparse or not.

- `_trace`: ``f`` traced once to a jaxpr and its constants (`TracedFunction`),
  and its `Identity` (what JAX traced, never the Python object).
- `_layout`: the flat layout of a pytree (`Layout`, `LeafSpec`).
- `_plan`: the pure block planner (`BlockPlan`, `Block`) and byte sizes.
- `_kernels`: the per-block kernels (HVP and JVP columns, VJP rows, their
  compressed products), compiled once with the block offset traced.
- `_sizing`: block and micro-batch sizes from XLA's memory analysis, and this
  process's memory.
- `_blocking`: the blocking knobs resolved (`choose_sizing`) and the dense
  in-memory matrices (`square_matrix`, `jacobian_matrix`).

Imports nothing of the other rooms.
"""

from ._blocking import (
    check_flag,
    choose_sizing,
    jacobian_matrix,
    jacobian_op,
    split_jacobian,
    square_matrix,
)
from ._kernels import OPS, Kernels, KernelSpec, clear_cache, get_kernels, ravel_output
from ._layout import Layout, LeafSpec
from ._plan import (
    Block,
    BlockPlan,
    format_bytes,
    format_iec,
    parse_bytes,
    plan_blocks,
    resolve_block_size,
)
from ._sizing import (
    Footprint,
    Sizing,
    auto_inner_width,
    budget_block,
    kernel_bytes,
    peak_rss,
    reset_peak,
    vm_bytes,
)
from ._trace import Identity, TracedFunction, trace

__all__ = [
    "OPS",
    "Block",
    "BlockPlan",
    "Footprint",
    "Identity",
    "KernelSpec",
    "Kernels",
    "Layout",
    "LeafSpec",
    "Sizing",
    "TracedFunction",
    "auto_inner_width",
    "budget_block",
    "check_flag",
    "choose_sizing",
    "clear_cache",
    "format_bytes",
    "format_iec",
    "get_kernels",
    "jacobian_matrix",
    "jacobian_op",
    "kernel_bytes",
    "parse_bytes",
    "peak_rss",
    "plan_blocks",
    "ravel_output",
    "reset_peak",
    "resolve_block_size",
    "split_jacobian",
    "square_matrix",
    "trace",
    "vm_bytes",
]
