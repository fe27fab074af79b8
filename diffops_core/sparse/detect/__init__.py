"""Sparsity patterns of Jacobians and Hessians, read from the jaxpr.

The rules live one family a module, as SparseConnectivityTracer.jl keeps them:

- `_elementwise`: arithmetic and the other elementwise ops, ``select_n``;
  ``iota``, ``argmax`` and ``argmin`` (no dependency).
- `_structural`: reshape, transpose, squeeze, expand_dims, rev, slice, pad,
  concatenate, stack, broadcast_in_dim, split.
- `_indexing`: gather, dynamic_slice, scatter and its kin.
- `_reductions`: reduce_*, cumulative ops, fft, dot_general.
- `_control`: cond, while, scan.

`_pattern` holds the algebra every rule is made of, `_interpret` walks the
jaxpr (calls such as ``pjit``, ``custom_jvp_call`` and ``remat`` are walked
into) and holds the entry points. A new rule is one function and one entry in
its family's ``RULES``.
"""

from ._interpret import RULES, WARNED, hessian_pattern, jacobian_pattern, tangent_pattern
from ._pattern import Dense, Pattern

__all__ = [
    "RULES",
    "WARNED",
    "Dense",
    "Pattern",
    "hessian_pattern",
    "jacobian_pattern",
    "tangent_pattern",
]
