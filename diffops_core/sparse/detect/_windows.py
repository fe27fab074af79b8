"""Windowed primitives: ``conv_general_dilated`` and the ``reduce_window``
family. Each output element unites the operand elements its window reads, as
the primitive computes them: strides, padding (negative too), base (lhs) and
window (rhs) dilation, feature and batch groups, any dimension numbers
(transposed convolutions are lhs-dilated ones). A tap on a hole of a dilated
or padded operand reads nothing, and a tap of a known kernel that is zero
contributes nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._pattern import Pattern, combine, everything, indices, union

__all__ = ["RULES"]

#: Entries of a window relation built at once (the rest in slices of the
#: first output axis): bounds the index arrays' memory.
_CHUNK = 1 << 22


def _taps(size: int, out: int, window: int, stride: int, pad_lo: int, base: int, dilation: int):
    """``(out, window)``: the operand index each tap of each output position
    reads along one axis, -1 on a hole (base dilation) or in the padding."""
    q = np.arange(out)[:, None] * stride + np.arange(window)[None, :] * dilation - pad_lo
    ok = (q >= 0) & (q % base == 0) & (q // base < size)
    return np.where(ok, q // base, -1).astype(np.int64)


def _spatial(taps: list[np.ndarray], sizes) -> np.ndarray:
    """``(out..., window...)``: the flat (row-major over ``sizes``) index the
    taps read over several axes, -1 where any axis reads nothing."""
    d = len(taps)
    lin = np.zeros((1,) * (2 * d), np.int64)
    valid = np.ones((1,) * (2 * d), bool)
    for j, t in enumerate(taps):
        shape = [1] * (2 * d)
        shape[j], shape[d + j] = t.shape
        t = t.reshape(shape)
        lin = lin * int(sizes[j]) + t
        valid = valid & (t >= 0)
    return np.where(valid, lin, -1)


def _window_relation(in_shape, out_shape, params) -> tuple[np.ndarray, np.ndarray]:
    """(output, operand) flat index pairs of a ``reduce_window``: every axis windowed."""
    rank = len(in_shape)
    base = params.get("base_dilation") or (1,) * rank
    dilation = params.get("window_dilation") or (1,) * rank
    taps = [
        _taps(in_shape[j], out_shape[j], params["window_dimensions"][j],
              params["window_strides"][j], params["padding"][j][0], base[j], dilation[j])
        for j in range(rank)
    ]  # fmt: skip
    read = _spatial(taps, in_shape).reshape(int(np.prod(out_shape, dtype=np.int64)), -1)
    out = np.broadcast_to(np.arange(read.shape[0])[:, None], read.shape)
    keep = read >= 0
    return out[keep], read[keep]


def _reduce_window(ctx, eqn, pats, vals, outs):
    """``reduce_window_sum`` / ``_max`` / ``_min`` and the generic one (its
    operands first, then as many init values): each output unites its window."""
    count = len(outs)
    operands, inits = pats[:count], pats[count:]
    parts = []
    for p in operands:
        out_idx, in_idx = _window_relation(p.shape, outs[0], eqn.params)
        parts.append(combine(ctx, p, out_idx, in_idx, outs[0]))
    parts += [everything(ctx, [q], outs[0]) for q in inits if q.depends]
    joined = union(ctx, parts, outs[0])
    return [joined for _ in outs]


def _select_and_gather_add(ctx, eqn, pats, vals, outs):
    """The tangent of a max pool: each output the tangent of one element of its window."""
    out_idx, in_idx = _window_relation(pats[0].shape, outs[0], eqn.params)
    return [combine(ctx, pats[0], out_idx, in_idx, outs[0])]


def _select_and_scatter_add(ctx, eqn, pats, vals, outs):
    """Its transpose: each operand element unites the windows that hold it."""
    source = pats[0]
    out_idx, in_idx = _window_relation(outs[0], source.shape, eqn.params)
    return [combine(ctx, source, in_idx, out_idx, outs[0])]


def _conv_maps(eqn, lhs_shape, rhs_shape, out_shape):
    """Canonical views of a convolution: ``(N, C, S...)``, ``(O, I, K...)`` and
    ``(N', O, S'...)`` arrays of the flat indices of lhs, rhs and output."""
    dn = eqn.params["dimension_numbers"]
    lhs = np.transpose(indices(lhs_shape).astype(np.int64), dn.lhs_spec)
    rhs = np.transpose(indices(rhs_shape).astype(np.int64), dn.rhs_spec)
    out = np.transpose(indices(out_shape).astype(np.int64), dn.out_spec)
    return lhs, rhs, out


def _conv_relation(eqn, lhs, rhs, out, kernel, rows: slice):
    """(output, lhs, rhs) flat index triples of output spatial rows ``rows``
    (of the first spatial axis) and every tap that reads an operand element
    (``kernel``: the known kernel in ``(O, I, K...)`` order, its zeros skipped)."""
    params = eqn.params
    d = lhs.ndim - 2
    groups, batch_groups = params["feature_group_count"], params["batch_group_count"]
    n_out, o_count = out.shape[:2]
    i_count = rhs.shape[1]
    lhs_dil = params.get("lhs_dilation") or (1,) * d
    rhs_dil = params.get("rhs_dilation") or (1,) * d
    taps = []
    for j in range(d):
        stride, (pad_lo, _) = params["window_strides"][j], params["padding"][j]
        t = _taps(lhs.shape[2 + j], out.shape[2 + j], rhs.shape[2 + j], stride, pad_lo,
                  lhs_dil[j], rhs_dil[j])  # fmt: skip
        taps.append(t[rows] if j == 0 else t)
    spatial = _spatial(taps, lhs.shape[2:])  # (S'..., K...)
    shape = (1, 1) + spatial.shape[:d] + (1,) + spatial.shape[d:]
    spatial = spatial.reshape(shape)
    o = np.arange(o_count).reshape((1, o_count) + (1,) * (2 * d + 1))
    nb = np.arange(n_out).reshape((n_out, 1) + (1,) * (2 * d + 1))
    i = np.arange(i_count).reshape((1, 1) + (1,) * d + (i_count,) + (1,) * d)
    n_in = (o // (o_count // batch_groups)) * n_out + nb if batch_groups > 1 else nb
    c = (o // (o_count // groups)) * i_count + i
    valid = spatial >= 0
    if kernel is not None:
        valid = valid & (kernel != 0).reshape((1, o_count) + (1,) * d + kernel.shape[1:])
    flat_lhs = lhs.reshape(lhs.shape[0], lhs.shape[1], -1)
    full = np.broadcast_shapes(valid.shape, nb.shape, o.shape, i.shape)
    valid = np.broadcast_to(valid, full)
    lhs_idx = flat_lhs[np.broadcast_to(n_in, full)[valid], np.broadcast_to(c, full)[valid],
                       np.broadcast_to(spatial, full)[valid]]  # fmt: skip
    out_rows = out[(slice(None), slice(None), rows)]
    out_idx = np.broadcast_to(out_rows.reshape(out_rows.shape + (1,) * (d + 1)), full)[valid]
    k_shape = (1, o_count) + (1,) * d + (i_count,) + tuple(rhs.shape[2:])
    rhs_idx = np.broadcast_to(rhs.reshape(k_shape), full)[valid]
    return out_idx, lhs_idx, rhs_idx


def _conv(ctx, eqn, pats, vals, outs):
    """``conv_general_dilated``: each output element unites the lhs elements its
    taps read (in its feature group and batch group), and, where the kernel
    depends on the tangent, the kernel elements those taps use."""
    lhs_p, rhs_p = pats
    if len(lhs_p.shape) < 3:  # no spatial axis: a contraction, united whole
        return [everything(ctx, pats, outs[0])]
    lhs, rhs, out = _conv_maps(eqn, lhs_p.shape, rhs_p.shape, outs[0])
    kernel_known = vals[1] is not None and not rhs_p.depends
    kernel = np.transpose(np.asarray(vals[1]), eqn.params["dimension_numbers"].rhs_spec) \
        if kernel_known else None  # fmt: skip
    per_row = max(1, int(np.prod(out.shape, dtype=np.int64) // max(1, out.shape[2]))) \
        * int(np.prod(rhs.shape[1:], dtype=np.int64))  # fmt: skip
    step = max(1, _CHUNK // per_row)
    triples = [_conv_relation(eqn, lhs, rhs, out, kernel, slice(a, a + step))
               for a in range(0, out.shape[2], step)]  # fmt: skip
    out_idx, lhs_idx, rhs_idx = (np.concatenate(part) for part in zip(*triples, strict=True))
    parts: list[Pattern] = []
    if lhs_p.depends:
        parts.append(combine(ctx, lhs_p, out_idx, lhs_idx, outs[0]))
    if rhs_p.depends:
        parts.append(combine(ctx, rhs_p, out_idx, rhs_idx, outs[0]))
    return [union(ctx, parts, outs[0])]


RULES: dict[str, Callable] = {
    "conv_general_dilated": _conv,
    **{
        name: _reduce_window
        for name in (
            "reduce_window_sum",
            "reduce_window_max",
            "reduce_window_min",
            "reduce_window",
        )  # fmt: skip
    },
    "select_and_gather_add": _select_and_gather_add,
    "select_and_scatter_add": _select_and_scatter_add,
}
