"""Sparsity patterns of Jacobians and Hessians, read from the jaxpr.

The pattern is *global*: it holds for every ``x`` of that shape and dtype. It
comes from the linear map itself: the Jacobian's pattern is how the tangent
output of ``jax.jvp(f, (x,), (t,))`` depends on ``t``, the Hessian's how that
of ``jax.jvp(grad f, (x,), (t,))`` (a Hessian-vector product) does. Tracing
the product, not ``f``, follows the derivative rules differentiation really
uses (``custom_jvp``, ``custom_vjp``) and leaves out what depends only on ``x``
(it is a constant of the linear map). The Hessian is the Jacobian of the
gradient: one set of first-order rules serves both, where a second-order
propagation would need a second rule per primitive, and the structure of the
gradient is exactly what the Hessian's columns can be.

Each array of the traced program carries, for each of its elements, the set of
``t``'s entries it depends on: a sparse boolean matrix (elements x n) plus a set
shared by every element (what an FFT or a reduction spreads over a whole
array stays one set, never n copies of it). One rule per primitive:
elementwise ops unite; structural ones (reshape, transpose, slicing, pad,
concatenate, broadcast, gather with known indices) move rows, computed by
applying the primitive itself to arrays of element indices; reductions,
contractions and FFTs unite over the axes they reduce or transform. Control
flow (``cond``, ``while``, ``scan``) unites its branches and iterates its
carry to a fixed point. A primitive without a rule is dense over its operands
(always safe, never smaller than the truth) and logged once, naming it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from jax.extend import core as jcore

__all__ = ["Dense", "Pattern", "hessian_pattern", "jacobian_pattern", "tangent_pattern"]

_log = logging.getLogger("diffops")
_WARNED: set[str] = set()


class Dense(Exception):
    """The pattern would be (nearly) dense: detection stops early."""


@dataclasses.dataclass
class Pattern:
    """What each element of an array depends on: ``rows`` (a boolean CSR matrix,
    elements x n, or None for nothing) and ``common`` (sorted indices every
    element depends on)."""

    shape: tuple[int, ...]
    rows: Any
    common: np.ndarray

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def matrix(self, n: int) -> sp.csr_array:
        """The full (elements x n) boolean pattern."""
        out = self.rows if self.rows is not None else sp.csr_array((self.size, n), dtype=bool)
        if self.common.size:
            block = sp.csr_array(
                (np.ones(self.size * self.common.size, bool),
                 np.tile(self.common, self.size),
                 np.arange(0, self.size * self.common.size + 1, self.common.size)),
                shape=(self.size, n),
            )  # fmt: skip
            out = out + block
        return sp.csr_array(out, dtype=bool)


_NONE = np.zeros(0, np.int64)


def _empty(shape) -> Pattern:
    return Pattern(tuple(shape), None, _NONE)


class _Context:
    def __init__(self, n: int, budget: int):
        self.n, self.budget = n, budget

    def check(self, p: Pattern) -> Pattern:
        if p.rows is not None:
            if p.rows.nnz == 0:
                p.rows = None
            elif p.size == 1:
                p.common = _merge(p.common, _sorted_set(p.rows.indices))
                p.rows = None
            elif p.rows.nnz > self.budget:
                raise Dense
        return p


def _selection(idx: np.ndarray, in_size: int) -> sp.csr_array:
    """(out x in) matrix with a one at (o, idx[o]) where idx[o] >= 0."""
    flat = np.asarray(idx, np.int64).reshape(-1)
    valid = flat >= 0
    rows = np.flatnonzero(valid)
    return sp.csr_array((np.ones(rows.size, bool), (rows, flat[valid])), shape=(flat.size, in_size))


def _take(ctx: _Context, p: Pattern, idx: np.ndarray) -> Pattern:
    """Each output element is the input element ``idx`` (-1: none)."""
    idx = np.asarray(idx)
    if p.rows is not None:  # refuse before the product, from what it would hold at most
        valid = idx.reshape(-1)
        valid = valid[valid >= 0]
        if int(np.diff(p.rows.indptr)[valid].sum()) > ctx.budget:
            raise Dense
    if p.common.size and (idx < 0).any() and p.size * p.common.size <= ctx.budget // 4:
        # padding depends on nothing: spell the common part out where that is
        # cheap; else the padding keeps it (a superset, never smaller than the truth)
        p = Pattern(p.shape, p.matrix(ctx.n), _NONE)
    rows = None if p.rows is None else _selection(idx, p.size) @ p.rows
    return ctx.check(Pattern(idx.shape, rows, p.common))


def _group(ctx: _Context, p: Pattern, groups: np.ndarray, out_shape) -> Pattern:
    """Output element ``g`` is the union of the input elements ``groups == g``."""
    out = _empty(out_shape)
    out.common = p.common
    if p.rows is not None:
        flat = np.asarray(groups, np.int64).reshape(-1)
        g = sp.csr_array(
            (np.ones(flat.size, bool), (flat, np.arange(flat.size))), shape=(out.size, p.size)
        )
        out.rows = g @ p.rows
    return ctx.check(out)


def _union(ctx: _Context, parts: Sequence[Pattern], shape) -> Pattern:
    shape = tuple(shape)
    rows, common = None, _NONE
    for p in parts:
        if p.rows is not None and tuple(p.shape) != shape:
            # broadcast as numpy does (a scalar, or size-1 axes: JAX's elementwise
            # ops take [12, 1] * [1, 12]); each output element reads its own operand
            # element, never element 0 of a smaller operand
            idx = np.broadcast_to(_indices(_aligned(p.shape, len(shape))), shape)
            p = _take(ctx, p, np.ascontiguousarray(idx, np.int64))
        if p.rows is not None:
            rows = p.rows if rows is None else rows + p.rows
        if p.common.size:
            common = _merge(common, p.common)
    return ctx.check(Pattern(shape, rows, common))


def _distinct(ordered: np.ndarray) -> np.ndarray:
    """A sorted array without its repeats."""
    if ordered.size < 2:
        return ordered
    keep = np.empty(ordered.size, bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _sorted_set(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` as int64, by a sort (numpy's hashing unique is
    several times slower on large index arrays)."""
    return _distinct(np.sort(np.asarray(values, np.int64)))


def _merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The union of two sorted sets of indices (int64, each without repeats),
    sorted: a merge of two sorted runs, not the hashing ``np.union1d`` (many
    elementwise ops unite the same large common set: the flat field's pixels
    behind a scalar)."""
    if a.size == 0 or a is b:
        return b
    if b.size == 0 or (a.size == b.size and np.array_equal(a, b)):
        return a
    both = np.concatenate([a, b])
    both.sort(kind="stable")  # two sorted runs: a merge
    return _distinct(both)


def _aligned(shape, rank: int) -> tuple:
    """``shape`` with leading 1s up to ``rank`` (numpy's broadcasting alignment)."""
    return (1,) * (rank - len(shape)) + tuple(shape)


def _everything(ctx: _Context, parts: Sequence[Pattern], shape) -> Pattern:
    """Every output element depends on every dependency of every operand."""
    common = _NONE
    for p in parts:
        if p.rows is not None:
            common = np.union1d(common, p.rows.indices)
        common = np.union1d(common, p.common)
    return ctx.check(Pattern(tuple(shape), None, common.astype(np.int64)))


def _indices(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int32).reshape(shape)


# -- the interpreter ------------------------------------------------------------------


def _shape(var) -> tuple[int, ...]:
    return tuple(getattr(var.aval, "shape", ()))


class _Env:
    """Per variable: its pattern, and its value when known without x or t."""

    def __init__(self):
        self.patterns: dict[Any, Pattern] = {}
        self.values: dict[Any, Any] = {}

    def pattern(self, var) -> Pattern:
        if isinstance(var, jcore.Literal):
            return _empty(np.shape(var.val))
        return self.patterns.get(var) or _empty(_shape(var))

    def value(self, var):
        if isinstance(var, jcore.Literal):
            return var.val
        return self.values.get(var)


def _run(ctx: _Context, jaxpr, consts: Sequence, ins: Sequence[Pattern], known: Sequence):
    """The patterns of ``jaxpr``'s outputs given those of its inputs (``known``:
    their values where known, else None)."""
    env = _Env()
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env.values[var] = value
    for var, p, value in zip(jaxpr.invars, ins, known, strict=True):
        env.patterns[var] = p
        if value is not None:
            env.values[var] = value
    for eqn in jaxpr.eqns:
        pats = [env.pattern(v) for v in eqn.invars]
        vals = [env.value(v) for v in eqn.invars]
        depends = any(p.rows is not None or p.common.size for p in pats)
        if not depends and all(v is not None for v in vals) and _foldable(eqn):
            outs = eqn.primitive.bind(*vals, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            for var, value in zip(eqn.outvars, outs, strict=True):
                env.values[var] = value
            continue
        if not depends:
            continue  # a function of x alone: a constant of the linear map
        outs = _rule(ctx, eqn, pats, vals)
        for var, p in zip(eqn.outvars, outs, strict=True):
            env.patterns[var] = p
    return [env.pattern(v) for v in jaxpr.outvars]


_CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin")  # fmt: skip


def _foldable(eqn) -> bool:
    """Whether to evaluate an equation whose inputs are all known: what indices
    and shapes are made of (small), not calls or loops (which may be large)."""
    name = eqn.primitive.name
    if name in _CALLS or name in ("while", "scan", "cond") or "callback" in name:
        return False
    size = sum(int(np.prod(_shape(v), dtype=np.int64)) for v in eqn.outvars)
    return size <= 1 << 24


def _sub_jaxpr(params: dict):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in params:
            value = params[key]
            if hasattr(value, "eqns"):
                return value, ()
            return value.jaxpr, value.consts
    return None, ()


def _rule(ctx: _Context, eqn, pats: list[Pattern], vals: list) -> list[Pattern]:
    name = eqn.primitive.name
    outs = [_shape(v) for v in eqn.outvars]
    rule = _RULES.get(name)
    if rule is not None:
        return rule(ctx, eqn, pats, vals, outs)
    if name in _CALLS:
        jaxpr, consts = _sub_jaxpr(eqn.params)
        if jaxpr is not None:
            ins = pats[-len(jaxpr.invars) :] if len(pats) > len(jaxpr.invars) else pats
            known = vals[-len(jaxpr.invars) :] if len(vals) > len(jaxpr.invars) else vals
            return _run(ctx, jaxpr, consts, ins, known)
    if name in _ELEMENTWISE or _all_same_shape(eqn):
        return [_union(ctx, pats, shape) for shape in outs]
    if name not in _WARNED:
        _WARNED.add(name)
        _log.warning(
            "sparsity: no rule for the primitive %r; its outputs are taken to depend on "
            "everything its operands depend on (safe, possibly denser than the truth)",
            name,
        )
    return [_everything(ctx, pats, shape) for shape in outs]


def _all_same_shape(eqn) -> bool:
    """An elementwise op by shape: one output, every operand its shape or a scalar."""
    if len(eqn.outvars) != 1:
        return False
    shape = _shape(eqn.outvars[0])
    return eqn.primitive.name in _ELEMENTWISE and all(_shape(v) in (shape, ()) for v in eqn.invars)


_ELEMENTWISE = frozenset(
    """abs acos acosh add add_any asin asinh atan atan2 atanh cbrt ceil clamp complex conj copy
    copy_p convert_element_type cos cosh digamma div erf erf_inv erfc exp exp2 expm1 floor imag
    integer_pow is_finite lgamma log log1p logistic max min mul ne neg nextafter pow real rem
    round rsqrt select_n sign sin sinh sqrt square stop_gradient sub tan tanh eq lt le gt ge
    and or not xor reduce_precision igamma igammac random_gamma_grad polygamma zeta
    bessel_i0e bessel_i1e""".split()
)


def _structural(ctx, eqn, pats, vals, outs):
    """Output elements are copies of operand elements: apply the primitive to the
    operand's element indices (the other operands' values must be known)."""
    p = pats[0]
    others = vals[1:]
    if any(v is None for v in others) or any(q.rows is not None or q.common.size for q in pats[1:]):
        return [_everything(ctx, pats, outs[0])]
    idx = _numpy_structural(eqn, _indices(p.shape)) if not others else None
    if idx is None:  # the primitive itself, eagerly (it compiles once per shape)
        idx = eqn.primitive.bind(jnp.asarray(_indices(p.shape)), *others, **_int_params(eqn))
    return [_take(ctx, p, np.asarray(idx))]


def _numpy_structural(eqn, idx: np.ndarray) -> np.ndarray | None:
    """The common structural primitives on an index array in numpy (an eager jax
    op compiles for every new shape: tens of milliseconds each); None for others."""
    name, params = eqn.primitive.name, eqn.params
    if name == "reshape" and params.get("dimensions") is None:
        return idx.reshape(params["new_sizes"])
    if name == "transpose":
        return np.transpose(idx, params["permutation"])
    if name == "squeeze":
        return np.squeeze(idx, axis=tuple(params["dimensions"]))
    if name == "expand_dims":
        return np.expand_dims(idx, tuple(params["dimensions"]))
    if name == "rev":
        return np.flip(idx, axis=tuple(params["dimensions"]))
    if name == "slice":
        strides = params.get("strides") or (1,) * idx.ndim
        bounds = zip(params["start_indices"], params["limit_indices"], strides, strict=True)
        return idx[tuple(slice(a, b, c) for a, b, c in bounds)]
    return None


def _int_params(eqn) -> dict:
    params = dict(eqn.params)
    if eqn.primitive.name == "gather":
        params["fill_value"] = -1
        params["mode"] = lax.GatherScatterMode.FILL_OR_DROP
    return params


def _pad(ctx, eqn, pats, vals, outs):
    idx = lax.pad(jnp.asarray(_indices(pats[0].shape)), np.int32(-1), eqn.params["padding_config"])
    padded = _take(ctx, pats[0], np.asarray(idx))
    return [_union(ctx, [padded, pats[1]], outs[0])]  # the padding value's own pattern


def _concatenate(ctx, eqn, pats, vals, outs):
    """The operands stacked; what all share stays common, the rest of each
    operand's common part is spelled out on its own rows (a gradient's parts
    depend on different sets: a global's on everything, a pixel's on a few)."""
    stacked, offset = [], 0
    for p in pats:
        stacked.append(_indices(p.shape) + offset)
        offset += p.size
    if eqn.primitive.name == "concatenate":
        idx = np.concatenate([np.asarray(a) for a in stacked], axis=eqn.params["dimension"])
    else:  # stack, and what else shares this rule
        idx = np.asarray(eqn.primitive.bind(*stacked, **eqn.params))
    shared = pats[0].common
    for p in pats[1:]:
        shared = np.intersect1d(shared, p.common, assume_unique=True)
    rows = []
    for p in pats:
        own = np.setdiff1d(p.common, shared, assume_unique=True)
        rows.append(Pattern(p.shape, p.rows, own.astype(np.int64)).matrix(ctx.n))
    whole = Pattern((offset,), sp.csr_array(sp.vstack(rows, format="csr"), dtype=bool), shared)
    return [_take(ctx, whole, idx)]


def _reduce(ctx, eqn, pats, vals, outs):
    """Reductions over ``axes``: each output element unites the elements it reduces."""
    axes = tuple(eqn.params["axes"])
    p = pats[0]
    keep = [d for d in range(len(p.shape)) if d not in axes]
    groups = _indices([p.shape[d] for d in keep]) if keep else np.zeros((), np.int64)
    index = np.broadcast_to(np.expand_dims(groups, axes), p.shape) if keep else np.zeros(p.shape)
    return [_group(ctx, p, index, outs[0]) for _ in outs]


def _cumulative(ctx, eqn, pats, vals, outs):
    """cumsum and its kin: along the axis, each element unites the whole axis
    (a superset of its prefix)."""
    p, axis = pats[0], eqn.params["axis"]
    others = [d for d in range(len(p.shape)) if d != axis]
    reduced = _indices([p.shape[d] for d in others]) if others else np.zeros((), np.int64)
    index = np.broadcast_to(np.expand_dims(reduced, axis), p.shape)
    grouped = _group(ctx, p, index, reduced.shape)
    back = np.broadcast_to(np.expand_dims(_indices(reduced.shape), axis), p.shape)
    return [_take(ctx, grouped, back)]


def _fft(ctx, eqn, pats, vals, outs):
    """Linear: each output element depends on every input element along the
    transformed (last) axes, and on nothing else."""
    p, k = pats[0], len(eqn.params["fft_lengths"])
    lead = p.shape[: len(p.shape) - k]
    groups = np.broadcast_to(_indices(lead).reshape(lead + (1,) * k), p.shape)
    grouped = _group(ctx, p, groups, lead)
    shape = outs[0]
    back = np.broadcast_to(_indices(lead).reshape(lead + (1,) * k), shape)
    return [_take(ctx, grouped, back)]


def _dot_general(ctx, eqn, pats, vals, outs):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    out_shape = outs[0]
    parts = []
    for p, contract, batch, side in ((pats[0], lc, lb, "lhs"), (pats[1], rc, rb, "rhs")):
        if p.rows is None and not p.common.size:
            continue
        free = [d for d in range(len(p.shape)) if d not in contract and d not in batch]
        kept = list(batch) + free
        reduced = _indices([p.shape[d] for d in kept]) if kept else np.zeros((), np.int64)
        perm = np.argsort(kept + list(contract))
        expanded = reduced.reshape(reduced.shape + (1,) * len(contract))
        index = np.broadcast_to(expanded, reduced.shape + tuple(p.shape[d] for d in contract))
        grouped = _group(ctx, p, np.transpose(index, perm), reduced.shape)
        # out = batch..., lhs free..., rhs free...
        nb = len(batch)
        lhs_free = len(pats[0].shape) - len(lc) - len(lb)
        out_idx = _indices(reduced.shape)
        if side == "lhs":
            shape = out_idx.shape + (1,) * (len(out_shape) - out_idx.ndim)
        else:
            shape = out_idx.shape[:nb] + (1,) * lhs_free + out_idx.shape[nb:]
        parts.append(_take(ctx, grouped, np.broadcast_to(out_idx.reshape(shape), out_shape)))
    return [_union(ctx, parts, out_shape)]


def _broadcast_in_dim(ctx, eqn, pats, vals, outs):
    if len(pats) > 1:  # dynamic shapes: no
        return [_everything(ctx, pats, outs[0])]
    dims = tuple(eqn.params["broadcast_dimensions"])
    shape = [1] * len(outs[0])
    for axis, size in zip(dims, pats[0].shape, strict=True):
        shape[axis] = size
    idx = np.broadcast_to(_indices(pats[0].shape).reshape(shape), outs[0])
    return [_take(ctx, pats[0], idx)]


def _select_n(ctx, eqn, pats, vals, outs):
    return [_union(ctx, pats, outs[0])]


def _cond(ctx, eqn, pats, vals, outs):
    branches = eqn.params["branches"]
    results = [_run(ctx, b.jaxpr, b.consts, pats[1:], vals[1:]) for b in branches]
    return [_union(ctx, [r[i] for r in results] + [_everything(ctx, [pats[0]], outs[i])], outs[i])
            for i in range(len(outs))]  # fmt: skip


def _while(ctx, eqn, pats, vals, outs):
    body = eqn.params["body_jaxpr"]  # the condition only decides how often: any number
    nb, nc = eqn.params["body_nconsts"], eqn.params["cond_nconsts"]
    consts, carry = pats[nc : nc + nb], list(pats[nc + nb :])
    known = [None] * len(carry)
    for _ in range(64):
        new = _run(ctx, body.jaxpr, body.consts, consts + carry, vals[nc : nc + nb] + known)
        merged = [_union(ctx, [a, b], a.shape) for a, b in zip(carry, new, strict=True)]
        if all(_same(a, b) for a, b in zip(carry, merged, strict=True)):
            return merged
        carry = merged
    return [_everything(ctx, pats, o) for o in outs]


def _scan(ctx, eqn, pats, vals, outs):
    jaxpr = eqn.params["jaxpr"]
    nconsts, ncarry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry = pats[:nconsts], list(pats[nconsts : nconsts + ncarry])
    xs = pats[nconsts + ncarry :]
    # every iteration may see any slice: unite each xs over the scanned axis
    sliced = []
    for p in xs:
        inner = p.shape[1:]
        groups = np.broadcast_to(_indices(inner), p.shape)
        sliced.append(_group(ctx, p, groups, inner))
    known = vals[:nconsts] + [None] * (ncarry + len(xs))
    ys = []
    for _ in range(64):
        new = _run(ctx, jaxpr.jaxpr, jaxpr.consts, consts + carry + sliced, known)
        merged = [_union(ctx, [a, b], a.shape) for a, b in zip(carry, new[:ncarry], strict=True)]
        ys = new[ncarry:]
        if all(_same(a, b) for a, b in zip(carry, merged, strict=True)):
            break
        carry = merged
    else:
        return [_everything(ctx, pats, o) for o in outs]
    stacked = []
    for p, shape in zip(ys, outs[ncarry:], strict=True):
        stacked.append(_take(ctx, p, np.broadcast_to(_indices(p.shape), shape)))
    return merged + stacked


def _same(a: Pattern, b: Pattern) -> bool:
    if not np.array_equal(a.common, b.common):
        return False
    if (a.rows is None) != (b.rows is None):
        return False
    return a.rows is None or (a.rows != b.rows).nnz == 0


def _split(ctx, eqn, pats, vals, outs):
    cuts = np.cumsum(eqn.params["sizes"])[:-1]
    pieces = np.split(_indices(pats[0].shape), cuts, axis=eqn.params["axis"])
    return [_take(ctx, pats[0], piece) for piece in pieces]


def _targets(eqn, vals, update_shape, out_shape) -> np.ndarray | None:
    """For each element of a scatter's updates, the output element it lands on
    (-1: dropped), from the transpose of the scatter (a gather) applied to the
    output's element indices; None when the indices are not known."""
    indices = vals[1]
    if indices is None:
        return None
    params = {k: v for k, v in eqn.params.items() if k not in ("update_jaxpr", "update_consts")}
    dtype = jnp.float32

    def scatter(u):
        zeros = jnp.zeros(out_shape, dtype)
        return lax.scatter_add_p.bind(zeros, indices, u, update_jaxpr=None, update_consts=(),
                                      **{k: v for k, v in params.items()})  # fmt: skip

    transpose = jax.linear_transpose(scatter, jax.ShapeDtypeStruct(update_shape, dtype))
    flat = _indices(out_shape).astype(np.int64) + 1  # 0: dropped
    high, low = flat // 4096, flat % 4096  # each exact in float32
    (h,) = transpose(jnp.asarray(high, dtype))
    (lo,) = transpose(jnp.asarray(low, dtype))
    return (
        np.rint(np.asarray(h)).astype(np.int64) * 4096 + np.rint(np.asarray(lo)).astype(np.int64)
    ) - 1


def _scatter(ctx, eqn, pats, vals, outs):
    """scatter, scatter-add and kin: each output element unites its operand
    element and every update that lands on it (known indices), else every update."""
    operand, updates = pats[0], pats[2]
    target = _targets(eqn, vals, updates.shape, outs[0])
    if target is None:
        return [_union(ctx, [operand, _everything(ctx, [updates], outs[0])], outs[0])]
    keep = target.reshape(-1) >= 0
    if updates.rows is not None:
        updates = Pattern((int(keep.sum()),), updates.rows[np.flatnonzero(keep)], updates.common)
    else:
        updates = Pattern((int(keep.sum()),), None, updates.common)
    size = int(np.prod(outs[0], dtype=np.int64))
    landed = _group(ctx, updates, target.reshape(-1)[keep], (size,))
    if updates.common.size:  # only where something landed
        hit = np.zeros(size, bool)
        hit[target.reshape(-1)[keep]] = True
        landed = _take(ctx, landed, np.where(hit, np.arange(size), -1))
    landed = Pattern(tuple(outs[0]), landed.rows, landed.common)
    return [_union(ctx, [operand, landed], outs[0])]


def _nothing(ctx, eqn, pats, vals, outs):
    return [_empty(shape) for shape in outs]


_RULES: dict[str, Callable] = {
    **{
        name: _structural
        for name in (
            "reshape",
            "transpose",
            "squeeze",
            "expand_dims",
            "rev",
            "slice",
            "dynamic_slice",
            "gather",
            "copy",
        )
    },  # fmt: skip
    "pad": _pad,
    "split": _split,
    **{
        name: _scatter
        for name in (
            "scatter",
            "scatter-add",
            "scatter_add",
            "scatter-mul",
            "scatter_mul",
            "scatter-min",
            "scatter_min",
            "scatter-max",
            "scatter_max",
        )
    },  # fmt: skip
    "concatenate": _concatenate,
    "stack": _concatenate,
    "broadcast_in_dim": _broadcast_in_dim,
    **{
        name: _reduce
        for name in (
            "reduce_sum",
            "reduce_max",
            "reduce_min",
            "reduce_prod",
            "reduce_and",
            "reduce_or",
        )
    },  # fmt: skip
    **{name: _cumulative for name in ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")},
    "fft": _fft,
    "dot_general": _dot_general,
    "select_n": _select_n,
    "cond": _cond,
    "while": _while,
    "scan": _scan,
    **{name: _nothing for name in ("iota", "argmax", "argmin", "stop_gradient")},
}


# -- the entry points -----------------------------------------------------------------


def tangent_pattern(product: Callable, x_flat, budget: int | None = None) -> sp.csr_array:
    """The (m x n) pattern of the linear map ``t -> product(x, t)`` (flat arrays),
    valid for every ``x`` of ``x_flat``'s shape and dtype.

    **Raises:** `Dense` when the pattern is found (nearly) dense on the way.
    """
    n = int(np.size(x_flat))
    aval = jax.ShapeDtypeStruct(np.shape(x_flat), jnp.result_type(x_flat))
    closed = jax.make_jaxpr(product)(aval, aval)
    # what any one array's pattern may hold before the matrix is taken as dense
    ctx = _Context(n, budget if budget is not None else 64 * n + (1 << 20))
    eye = sp.csr_array(sp.identity(n, dtype=bool, format="csr"))
    ins = [_empty(np.shape(x_flat)), Pattern((n,), eye, _NONE)]
    (out,) = _run(ctx, closed.jaxpr, closed.consts, ins, [None, None])
    return out.matrix(n)


def jacobian_pattern(f_flat: Callable, x_flat, budget: int | None = None) -> sp.csr_array:
    """The pattern of the Jacobian of ``f_flat`` (flat in, flat out)."""
    return tangent_pattern(lambda x, t: jax.jvp(f_flat, (x,), (t,))[1], x_flat, budget)


def hessian_pattern(f_flat: Callable, x_flat, budget: int | None = None) -> sp.csr_array:
    """The pattern of the Hessian of scalar ``f_flat``: the Jacobian's of its gradient."""
    grad = jax.grad(f_flat)
    return tangent_pattern(lambda x, t: jax.jvp(grad, (x,), (t,))[1], x_flat, budget)
