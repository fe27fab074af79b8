"""Indexing primitives: ``gather`` and ``dynamic_slice`` (each output element
a copy of the operand element its index names) and ``scatter`` and its kin
(each output element unites its operand element and every update landing on
it). Indices known without ``x`` give exact patterns; unknown ones, every
element the operation could reach."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._pattern import Pattern, everything, group, indices, shape_of, take, union
from ._structural import copies

__all__ = ["RULES"]


def _int_params(eqn) -> dict:
    """The gather's parameters for an array of element indices, in the mode the
    equation carries: out-of-range starts are clamped in ``CLIP`` mode, and in
    ``PROMISE_IN_BOUNDS`` too (what XLA does with them), so the clamped element
    is a real dependency; only ``FILL_OR_DROP`` reads nothing there (-1). Any
    other mode is read as ``CLIP``, a superset of what it can read."""
    params = dict(eqn.params)
    if eqn.primitive.name == "gather":
        if params.get("mode") == lax.GatherScatterMode.FILL_OR_DROP:
            params["fill_value"] = -1
        else:
            params["mode"] = lax.GatherScatterMode.CLIP
            params["fill_value"] = None
    return params


def _targets(eqn, vals, update_shape, out_shape, mode=None) -> np.ndarray | None:
    """For each element of a scatter's updates, the output element it lands on
    (-1: dropped), from the transpose of the scatter (a gather) applied to the
    output's element indices; None when the indices are not known."""
    where = vals[1]
    if where is None:
        return None
    params = {k: v for k, v in eqn.params.items() if k not in ("update_jaxpr", "update_consts")}
    if mode is not None:  # where the updates would land in that mode
        params["mode"] = mode
    items = tuple(sorted(params.items()))
    try:
        kernel = _landing(items, tuple(out_shape), tuple(update_shape))
    except TypeError:  # a parameter that is not hashable: built for this scatter alone
        kernel = _landing.__wrapped__(items, tuple(out_shape), tuple(update_shape))
    flat = indices(out_shape).astype(np.int64) + 1  # 0: dropped
    high, low = kernel(where, (flat // 4096).astype(np.float32), (flat % 4096).astype(np.float32))
    high, low = (np.rint(np.asarray(part)).astype(np.int64) for part in (high, low))
    return high * 4096 + low - 1


@functools.lru_cache(maxsize=256)
def _landing(params: tuple, out_shape: tuple, update_shape: tuple):
    """The transpose of a scatter-add of these parameters and shapes, compiled once
    (a model's scatters repeat their shapes: SBRYBND's 17 compiled one by one took
    0.6 s): ``(where, high, low) -> (high, low)`` of each update's target, in
    float32 (each part below 4096: exact)."""
    dtype = jnp.float32

    def both(where, high, low):
        def scatter(u):
            zeros = jnp.zeros(out_shape, dtype)
            return lax.scatter_add_p.bind(zeros, where, u, update_jaxpr=None,
                                          update_consts=(), **dict(params))  # fmt: skip

        transpose = jax.linear_transpose(scatter, jax.ShapeDtypeStruct(update_shape, dtype))
        return transpose(high)[0], transpose(low)[0]

    return jax.jit(both)


def _scatter(ctx, eqn, pats, vals, outs):
    """scatter, scatter-add and kin: each output element unites its operand
    element and every update that lands on it (known indices), else every update.
    A ``scatter`` (``.at[].set``) replaces what it lands on: there the operand
    element is gone (asdex's ``x.at[:, 2, :].set(0.0)``: 16 nonzeros, not 24),
    unless an index is out of bounds in a mode that leaves it undefined."""
    operand, updates = pats[0], pats[2]
    target = _targets(eqn, vals, updates.shape, outs[0])
    if target is None:
        return [union(ctx, [operand, everything(ctx, [updates], outs[0])], outs[0])]
    size = int(np.prod(outs[0], dtype=np.int64))
    if eqn.primitive.name == "scatter" and _defined(eqn, vals, updates.shape, outs[0], target):
        replaced = np.zeros(size, bool)
        replaced[target.reshape(-1)[target.reshape(-1) >= 0]] = True
        kept = np.where(replaced, -1, np.arange(size)).reshape(outs[0])
        operand = take(ctx, operand, kept)
    keep = target.reshape(-1) >= 0
    if updates.rows is not None:
        updates = Pattern((int(keep.sum()),), updates.rows[np.flatnonzero(keep)], updates.common)
    else:
        updates = Pattern((int(keep.sum()),), None, updates.common)
    landed = group(ctx, updates, target.reshape(-1)[keep], (size,))
    if updates.common.size:  # only where something landed
        hit = np.zeros(size, bool)
        hit[target.reshape(-1)[keep]] = True
        landed = take(ctx, landed, np.where(hit, np.arange(size), -1))
    landed = Pattern(tuple(outs[0]), landed.rows, landed.common)
    return [union(ctx, [operand, landed], outs[0])]


def _defined(eqn, vals, update_shape, out_shape, target: np.ndarray) -> bool:
    """Whether every update lands where ``target`` says in XLA's semantics: the
    mode clamps (``CLIP``) or drops (``FILL_OR_DROP``) what is out of bounds, or
    nothing is (a promise kept: the targets are those of dropping)."""
    mode = eqn.params.get("mode")
    if mode in (lax.GatherScatterMode.CLIP, lax.GatherScatterMode.FILL_OR_DROP):
        return True
    dropping = _targets(eqn, vals, update_shape, out_shape,
                        mode=lax.GatherScatterMode.FILL_OR_DROP)  # fmt: skip
    return dropping is not None and bool(np.array_equal(dropping, target))


def overwrites(eqn) -> bool:
    """A ``scatter`` (``.at[].set``) not promised unique indices: two updates may
    land on one element, and which wins is the backend's choice."""
    return eqn.primitive.name == "scatter" and not eqn.params.get("unique_indices", False)


def settled(eqn, vals) -> bool:
    """Whether a scatter of known operands writes each output element at most
    once, where XLA defines it: then its value is the same on every backend
    (the JVP of ``.at[].set`` scatters ids to find each element's writer)."""
    out_shape, update_shape = shape_of(eqn.invars[0]), shape_of(eqn.invars[2])
    target = _targets(eqn, vals, update_shape, out_shape)
    if target is None or not _defined(eqn, vals, update_shape, out_shape, target):
        return False
    landed = target.reshape(-1)
    landed = landed[landed >= 0]
    return bool(np.unique(landed).size == landed.size)


def _along(ctx, p: Pattern, dims) -> Pattern:
    """Each element unites every element along ``dims`` with its other
    coordinates (what an unknown index along them could read)."""
    if not dims:
        return p
    keep = [d for d in range(len(p.shape)) if d not in dims]
    reduced = indices([p.shape[d] for d in keep]) if keep else np.zeros((), np.int32)
    index = np.broadcast_to(np.expand_dims(reduced, tuple(dims)), p.shape)
    grouped = group(ctx, p, index, reduced.shape)
    return take(ctx, grouped, index)


def _gather(ctx, eqn, pats, vals, outs):
    """Known indices: each output element the operand element they name (in the
    equation's mode). Unknown ones (a sort's or a top_k's permutation): any
    element along the indexed axes, but only in its own slice of the others
    (batch axes, offsets), never across them."""
    depends = any(q.depends for q in pats[1:])
    unknown = [k for k, v in enumerate(vals[1:], 1) if v is None]
    if not unknown or depends:
        return copies(ctx, eqn, pats, vals, outs, _int_params(eqn))
    if eqn.primitive.name == "gather":
        dims = tuple(eqn.params["dimension_numbers"].start_index_map)
    else:  # dynamic_slice: one start per axis
        dims = tuple(k - 1 for k in unknown)
    zeros = [np.zeros(shape_of(eqn.invars[k]), eqn.invars[k].aval.dtype) if vals[k] is None
             else vals[k] for k in range(1, len(vals))]  # fmt: skip
    spread = _along(ctx, pats[0], dims)
    return copies(ctx, eqn, [spread, *pats[1:]], [vals[0], *zeros], outs, _int_params(eqn))


RULES: dict[str, Callable] = {
    "gather": _gather,
    "dynamic_slice": _gather,
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
    },
}
