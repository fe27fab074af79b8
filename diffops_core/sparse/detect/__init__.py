"""Sparsity patterns of Jacobians and Hessians, read from the jaxpr.

The rules live one family a module, as SparseConnectivityTracer.jl keeps them:

- `_elementwise`: arithmetic and the other elementwise ops, ``select_n``;
  ``iota``, ``argmax`` and ``argmin`` (no dependency).
- `_structural`: reshape, transpose, squeeze, expand_dims, rev, slice, pad,
  concatenate, stack, unstack, broadcast_in_dim, split, tile,
  dynamic_update_slice, device_put.
- `_indexing`: gather, dynamic_slice (known indices exact, in the equation's
  mode; unknown ones spread along the indexed axes only), scatter and its kin.
- `_reductions`: reduce_*, cumulative ops (by prefix), fft, dot_general,
  triangular_solve; BCOO's bcoo_dot_general (a matrix of known indices times
  an array), bcoo_todense, bcoo_extract, bcoo_transpose and
  bcoo_dot_general_sampled (what differentiating in the data emits).
- `_windows`: conv_general_dilated (every dimension number, stride, padding,
  dilation and group; a known kernel's zeros) and the reduce_window family
  (sum, max, min, generic; select_and_gather_add, select_and_scatter_add).
- `_control`: cond (a known index: its branch), while, scan (a short one step
  after step; else the body vmapped over its steps, where every step's arrays
  fit).

`_pattern` holds the algebra every rule is made of (what every element
depends on is kept once, as a shared set) and `gram`, a Gauss–Newton
matrix's pattern from its Jacobian's; `_interpret` walks the jaxpr
(calls such as ``pjit``, ``custom_jvp_call`` and ``checkpoint`` are walked
into, and what they compute of known values comes back out) and holds the
entry points. A new rule is one function and one entry in its family's
``RULES``; a primitive without one is dense over its operands, logged once,
and named where the result went dense.
"""

from ._interpret import RULES, WARNED, hessian_pattern, jacobian_pattern, tangent_pattern
from ._pattern import Dense, Pattern, gram

__all__ = [
    "RULES",
    "WARNED",
    "Dense",
    "Pattern",
    "gram",
    "hessian_pattern",
    "jacobian_pattern",
    "tangent_pattern",
]
