"""Elementwise primitives: each output element unites its operands' elements at
the same position (broadcast as numpy does), and primitives whose outputs
depend on nothing (``iota``, ``argmax``...).

An elementwise primitive without an entry here is still recognised by shape
(`ELEMENTWISE` is the list the interpreter falls back on).
"""

from __future__ import annotations

from collections.abc import Callable

from ._pattern import empty, union

__all__ = ["ELEMENTWISE", "RULES"]

ELEMENTWISE = frozenset(
    """abs acos acosh add add_any asin asinh atan atan2 atanh cbrt ceil clamp complex conj copy
    copy_p convert_element_type cos cosh digamma div erf erf_inv erfc exp exp2 expm1 floor imag
    integer_pow is_finite lgamma log log1p logistic max min mul ne neg nextafter pow real rem
    round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh eq lt le gt ge
    and or not xor reduce_precision igamma igammac random_gamma_grad polygamma zeta
    bessel_i0e bessel_i1e""".split()
)


def _unite(ctx, eqn, pats, vals, outs):
    return [union(ctx, pats, shape) for shape in outs]


def _nothing(ctx, eqn, pats, vals, outs):
    return [empty(shape) for shape in outs]


RULES: dict[str, Callable] = {
    "select_n": _unite,
    **{name: _nothing for name in ("iota", "argmax", "argmin", "stop_gradient")},
}
