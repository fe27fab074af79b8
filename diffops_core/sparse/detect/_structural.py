"""Structural primitives: output elements are copies of operand elements
(reshape, transpose, slicing, pad, concatenate, stack and unstack, broadcast,
split, tile, dynamic_update_slice, device_put), moved by applying the
primitive itself to arrays of element indices."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from ._pattern import everything, indices, stacked, take, union

__all__ = ["RULES", "copies"]


def copies(ctx, eqn, pats, vals, outs, params=None):
    """Output elements are copies of operand elements: apply the primitive to the
    operand's element indices (the other operands' values must be known;
    ``params``: the equation's, changed for an index array where it must be)."""
    p = pats[0]
    others = vals[1:]
    if any(v is None for v in others) or any(q.depends for q in pats[1:]):
        return [everything(ctx, pats, outs[0])]
    idx = _numpy_structural(eqn, indices(p.shape)) if not others else None
    if idx is None:  # the primitive itself, eagerly (it compiles once per shape)
        params = eqn.params if params is None else params
        idx = eqn.primitive.bind(jnp.asarray(indices(p.shape)), *others, **params)
    return [take(ctx, p, np.asarray(idx))]


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


def _pad(ctx, eqn, pats, vals, outs):
    padded = take(ctx, pats[0], pad_indices(indices(pats[0].shape), eqn.params["padding_config"]))
    return [union(ctx, [padded, pats[1]], outs[0])]  # the padding value's own pattern


def pad_indices(idx: np.ndarray, config) -> np.ndarray:
    """``lax.pad`` of an index array with -1, in numpy: per axis, ``interior``
    -1s between elements, then ``lo`` and ``hi`` at the ends (negative: cut)."""
    for axis, (lo, hi, interior) in enumerate(config):
        at = (slice(None),) * axis
        n = idx.shape[axis]
        if interior and n > 1:
            shape = list(idx.shape)
            shape[axis] = n + (n - 1) * interior
            spread = np.full(shape, -1, idx.dtype)
            spread[at + (slice(None, None, interior + 1),)] = idx
            idx = spread
        widths = [(0, 0)] * idx.ndim
        widths[axis] = (max(lo, 0), max(hi, 0))
        idx = np.pad(idx, widths, constant_values=-1)
        idx = idx[at + (slice(max(-lo, 0), idx.shape[axis] - max(-hi, 0)),)]
    return idx


def _concatenate(ctx, eqn, pats, vals, outs):
    """The operands stacked (`stacked`: what all share stays common), then
    placed as the primitive places them."""
    parts, offset = [], 0
    for p in pats:
        parts.append(indices(p.shape) + offset)
        offset += p.size
    if eqn.primitive.name == "concatenate":
        idx = np.concatenate([np.asarray(a) for a in parts], axis=eqn.params["dimension"])
    else:  # stack, and what else shares this rule
        idx = np.asarray(eqn.primitive.bind(*parts, **eqn.params))
    whole = stacked(ctx, pats)
    return [take(ctx, whole, idx)]


def _broadcast_in_dim(ctx, eqn, pats, vals, outs):
    if len(pats) > 1:  # dynamic shapes: no
        return [everything(ctx, pats, outs[0])]
    dims = tuple(eqn.params["broadcast_dimensions"])
    shape = [1] * len(outs[0])
    for axis, size in zip(dims, pats[0].shape, strict=True):
        shape[axis] = size
    idx = np.broadcast_to(indices(pats[0].shape).reshape(shape), outs[0])
    return [take(ctx, pats[0], idx)]


def _split(ctx, eqn, pats, vals, outs):
    cuts = np.cumsum(eqn.params["sizes"])[:-1]
    pieces = np.split(indices(pats[0].shape), cuts, axis=eqn.params["axis"])
    return [take(ctx, pats[0], piece) for piece in pieces]


def _unstack(ctx, eqn, pats, vals, outs):
    """The gradient of a stack: each output one slice along ``axis``."""
    idx = indices(pats[0].shape)
    axis = eqn.params["axis"]
    return [take(ctx, pats[0], np.take(idx, k, axis=axis)) for k in range(idx.shape[axis])]


def _tile(ctx, eqn, pats, vals, outs):
    return [take(ctx, pats[0], np.tile(indices(pats[0].shape), eqn.params["reps"]))]


def _dynamic_update_slice(ctx, eqn, pats, vals, outs):
    """The operand with a window replaced by the update: with known starts
    (clamped as XLA clamps them), each element one of the two; with unknown
    starts, the operand's element and any update element (a superset)."""
    operand, update = pats[0], pats[1]
    starts = vals[2:]
    if any(v is None for v in starts) or any(q.depends
                                             for q in pats[2:]):  # fmt: skip
        return [union(ctx, [operand, everything(ctx, [update], outs[0])], outs[0])]
    shape, window = operand.shape, update.shape
    corner = [int(np.clip(int(np.asarray(v)), 0, size - w))
              for v, size, w in zip(starts, shape, window, strict=True)]  # fmt: skip
    region = tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True))
    kept = indices(shape).astype(np.int64)
    kept[region] = -1
    placed = np.full(shape, -1, np.int64)
    placed[region] = indices(window)
    return [union(ctx, [take(ctx, operand, kept), take(ctx, update, placed)], outs[0])]


def _each(ctx, eqn, pats, vals, outs):
    """Each output its own operand (``device_put`` and the like)."""
    return list(pats)


def _copies(ctx, eqn, pats, vals, outs):
    return copies(ctx, eqn, pats, vals, outs)


RULES: dict[str, Callable] = {
    **{
        name: _copies
        for name in ("reshape", "transpose", "squeeze", "expand_dims", "rev", "slice", "copy")
    },
    "pad": _pad,
    "split": _split,
    "unstack": _unstack,
    "tile": _tile,
    "dynamic_update_slice": _dynamic_update_slice,
    "device_put": _each,
    "concatenate": _concatenate,
    "stack": _concatenate,
    "broadcast_in_dim": _broadcast_in_dim,
}
