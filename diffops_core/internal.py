"""The executor-facing API of `diffops_core`: what `pipeline` (and any other
executor) builds on. Stable within a minor version, but not the user API, which
is the top level of `diffops_core`.

- Layout: `Layout`, `LeafSpec` (the flat layout of a pytree).
- Blocks: `BlockPlan`, `Block`, `plan_blocks`, `resolve_block_size`.
- Kernels: `get_kernels`, `Kernels`, `KernelSpec`, `clear_cache`,
  `jacobian_op`, `split_jacobian`.
- Sizing: `choose_sizing`, `Sizing`, `Footprint`, `auto_inner_width`,
  `budget_block`, `kernel_bytes`.
- Input checks and errors: `check_flag`, `parse_bytes`, `format_bytes`,
  `InputError`, `InputValueError`, `InputTypeError`.
- Identity: `Identity`, `TracedFunction` (what JAX traced: the jaxpr and its
  constants, never the Python object).
"""

from ._api import check_flag, choose_sizing, jacobian_op, split_jacobian
from ._errors import InputError, InputTypeError, InputValueError
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
from ._trace import Identity, TracedFunction

#: The block's inner width chosen for a device (``auto_micro`` is the old name).
auto_inner_width = auto_micro

__all__ = [
    "Block",
    "BlockPlan",
    "Footprint",
    "Identity",
    "InputError",
    "InputTypeError",
    "InputValueError",
    "KernelSpec",
    "Kernels",
    "Layout",
    "LeafSpec",
    "Sizing",
    "TracedFunction",
    "auto_inner_width",
    "auto_micro",
    "budget_block",
    "check_flag",
    "choose_sizing",
    "clear_cache",
    "format_bytes",
    "get_kernels",
    "jacobian_op",
    "kernel_bytes",
    "parse_bytes",
    "plan_blocks",
    "resolve_block_size",
    "split_jacobian",
]
