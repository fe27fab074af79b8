"""The executor-facing API of `diffops_core`: what `pipeline` (and any other
executor) builds on. Stable within a minor version, but not the user API, which
is the top level of `diffops_core`.

- Layout: `Layout`, `LeafSpec` (the flat layout of a pytree).
- Blocks: `BlockPlan`, `Block`, `plan_blocks`, `resolve_block_size`.
- Kernels: `get_kernels`, `Kernels`, `KernelSpec`, `clear_cache`,
  `jacobian_op`, `split_jacobian`.
- Sizing: `choose_sizing`, `Sizing`, `Footprint`, `auto_inner_width`,
  `budget_block`, `kernel_bytes`; this process's memory from /proc
  (`vm_bytes`, `peak_rss`: VmHWM, which unlike ru_maxrss does not survive exec).
- Input checks and errors: `check_flag`, `parse_bytes`, `format_bytes` (and
  `format_iec`, in powers of 1024),
  `InputError`, `InputValueError`, `InputTypeError`.
- Curvature: `check_damping`, `not_positive_definite` and
  `diagnose_not_positive_definite` (the diagnostics of a matrix without a
  Cholesky factor, as words and as numbers).
- Noise: `whitened_residuals` (``x -> A r(x)`` with ``AᵀA = W``: its
  ``"gauss_newton"`` kernels give ``Jᵀ W J``).
- Sparsity: `hessian_pattern`, `jacobian_pattern` (global patterns read
  from the jaxpr of the products); `detect_sparsity` (a `Sparsity` for an
  executor), `recover` (a matrix from its compressed products and a plan),
  `check_sparse` (a recovered matrix against products of random vectors),
  `sparse_marginal_variance` (exact ``diag(S⁻¹)`` of a sparse SPD matrix).
- Identity: `Identity`, `TracedFunction` (what JAX traced: the jaxpr and its
  constants, never the Python object).

Names, one per concept: `n` is the size of the flat ``x`` (the matrix's
columns), `m` the size of the flat ``f(x)`` (its rows; ``m == n`` for a
Hessian), `extent` the axis the blocks split (``n``, or ``m`` for VJP rows),
`block_size` the columns (rows) of one block, and `inner_width` the products
vmapped at once inside a block.
"""

from ._errors import InputError, InputTypeError, InputValueError
from .curvature import (
    check_damping,
    diagnose_not_positive_definite,
    not_positive_definite,
    whitened_residuals,
)
from .dense import (
    Block,
    BlockPlan,
    Footprint,
    Identity,
    Kernels,
    KernelSpec,
    Layout,
    LeafSpec,
    Sizing,
    TracedFunction,
    auto_inner_width,
    budget_block,
    check_flag,
    choose_sizing,
    clear_cache,
    format_bytes,
    format_iec,
    get_kernels,
    jacobian_op,
    kernel_bytes,
    parse_bytes,
    peak_rss,
    plan_blocks,
    reset_peak,
    resolve_block_size,
    split_jacobian,
    vm_bytes,
)
from .sparse import (
    PROBES,
    check_sparse,
    hessian_pattern,
    jacobian_pattern,
    probe_vectors,
    recover,
    sparse_marginal_variance,
)
from .sparse import detect as detect_sparsity

__all__ = [
    "PROBES",
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
    "budget_block",
    "check_damping",
    "check_flag",
    "check_sparse",
    "choose_sizing",
    "clear_cache",
    "detect_sparsity",
    "diagnose_not_positive_definite",
    "format_bytes",
    "format_iec",
    "get_kernels",
    "hessian_pattern",
    "jacobian_op",
    "jacobian_pattern",
    "kernel_bytes",
    "not_positive_definite",
    "parse_bytes",
    "peak_rss",
    "plan_blocks",
    "probe_vectors",
    "recover",
    "reset_peak",
    "resolve_block_size",
    "sparse_marginal_variance",
    "split_jacobian",
    "vm_bytes",
    "whitened_residuals",
]
