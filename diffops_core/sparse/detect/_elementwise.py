"""Elementwise primitives: each output element unites its operands' elements at
the same position (broadcast as numpy does), and primitives whose outputs
depend on nothing (``iota``, ``argmax``...).

An elementwise primitive without an entry here is still recognised by shape
(`ELEMENTWISE` is the list the interpreter falls back on).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._pattern import SPELL_OUT, empty, indices, take, union

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


def _mul(ctx, eqn, pats, vals, outs):
    """A product with a known factor (a constant of the linear map) depends on
    nothing where that factor is zero: HS117's ``a * x[:, None]`` with a
    constant ``a`` of zeros, ELATTAR's ``x[1] * t`` with ``t[0] = 0``. A set
    common to every element is spelled out per element for that only when the
    result is small (2¹⁶ entries): a pupil mask times a phase of a flat
    field's globals keeps its one shared set, which the MFT's contractions
    need to stay within the budget."""
    (shape,) = outs
    out = union(ctx, pats, shape)
    depends = [p.depends for p in pats]
    if depends[0] == depends[1] or out.size * out.common.size > SPELL_OUT:
        return [out]
    known = vals[1] if depends[0] else vals[0]
    if known is None:
        return [out]
    nonzero = np.broadcast_to(np.asarray(known) != 0, shape)
    if nonzero.all():
        return [out]
    return [take(ctx, out, np.where(nonzero, indices(shape), -1))]


def _select(ctx, eqn, pats, vals, outs):
    """``select_n(which, *cases)`` with ``which`` known (a mask, ``jnp.where`` on
    constants; the JVP of a ``.at[].set`` picks the winning update so): each
    element depends on the case it picks alone. Else on every case."""
    (shape,) = outs
    which = vals[0]
    if which is None or pats[0].depends:
        return [union(ctx, pats, shape)]
    which = np.broadcast_to(np.asarray(which).astype(np.int64), shape)
    here = indices(shape)
    picked = [take(ctx, p if p.shape == shape else union(ctx, [p], shape),
                   np.where(which == k, here, -1)) for k, p in enumerate(pats[1:])]  # fmt: skip
    return [union(ctx, picked, shape)]


def _nothing(ctx, eqn, pats, vals, outs):
    return [empty(shape) for shape in outs]


RULES: dict[str, Callable] = {
    "select_n": _select,
    "mul": _mul,
    **{name: _nothing for name in ("iota", "argmax", "argmin", "stop_gradient")},
}
