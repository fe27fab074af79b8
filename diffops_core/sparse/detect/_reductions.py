"""Reductions and contractions: reductions, cumulative ops, FFTs and
``dot_general`` unite, for each output element, the input elements it reduces,
accumulates, transforms or contracts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from ._pattern import (
    NONE,
    Dense,
    Pattern,
    combine,
    empty,
    everything,
    group,
    indices,
    shape_of,
    take,
    union,
)

__all__ = ["RULES", "VALUED"]


def _reduce(ctx, eqn, pats, vals, outs):
    """Reductions over ``axes``: each output element unites the elements it reduces."""
    axes = tuple(eqn.params["axes"])
    p = pats[0]
    keep = [d for d in range(len(p.shape)) if d not in axes]
    groups = indices([p.shape[d] for d in keep]) if keep else np.zeros((), np.int64)
    index = np.broadcast_to(np.expand_dims(groups, axes), p.shape) if keep else np.zeros(p.shape)
    return [group(ctx, p, index, outs[0]) for _ in outs]


def _prefix(ctx, p, axis: int, reverse: bool):
    """Along ``axis``, each element unites its prefix (its suffix when
    ``reverse``), spelled out where the budget allows (L²/2 per line); else the
    whole axis, one shared set per line (a superset)."""
    length = p.shape[axis]
    lines = p.size // max(1, length)
    if lines * length * (length + 1) // 2 <= ctx.budget // 4:
        position = np.moveaxis(indices(p.shape), axis, -1).reshape(lines, length).astype(np.int64)
        a, b = np.tril_indices(length)  # output a reads input b <= a
        if reverse:
            a, b = length - 1 - a, length - 1 - b
        return combine(ctx, p, position[:, a].reshape(-1), position[:, b].reshape(-1), p.shape)
    others = [d for d in range(len(p.shape)) if d != axis]
    reduced = indices([p.shape[d] for d in others]) if others else np.zeros((), np.int64)
    index = np.broadcast_to(np.expand_dims(reduced, axis), p.shape)
    grouped = group(ctx, p, index, reduced.shape)
    back = np.broadcast_to(np.expand_dims(indices(reduced.shape), axis), p.shape)
    return take(ctx, grouped, back)


def _cumulative(ctx, eqn, pats, vals, outs):
    """cumsum and its kin: each element unites its prefix along the axis."""
    return [_prefix(ctx, pats[0], eqn.params["axis"], bool(eqn.params.get("reverse")))]


def _triangular_solve(ctx, eqn, pats, vals, outs):
    """``op(a) x = b`` (or ``x op(a) = b``) with a triangular ``a`` that does not
    depend on the tangent: ``x`` unites, along the solved axis, the prefix or
    the suffix of ``b`` the inverse's triangle reaches (a's own zeros not
    used: a superset). An ``a`` that depends on it: everything."""
    a, b = pats
    if a.depends:
        return [everything(ctx, pats, outs[0])]
    params = eqn.params
    lower = bool(params["lower"]) != bool(params["transpose_a"])  # op(a)'s triangle
    if params["left_side"]:  # x = op(a)⁻¹ b: row i reads rows j <= i (lower)
        return [_prefix(ctx, b, len(b.shape) - 2, reverse=not lower)]
    return [_prefix(ctx, b, len(b.shape) - 1, reverse=lower)]  # x = b op(a)⁻¹


def _fft(ctx, eqn, pats, vals, outs):
    """Linear: each output element depends on every input element along the
    transformed (last) axes, and on nothing else."""
    p, k = pats[0], len(eqn.params["fft_lengths"])
    lead = p.shape[: len(p.shape) - k]
    groups = np.broadcast_to(indices(lead).reshape(lead + (1,) * k), p.shape)
    grouped = group(ctx, p, groups, lead)
    shape = outs[0]
    back = np.broadcast_to(indices(lead).reshape(lead + (1,) * k), shape)
    return [take(ctx, grouped, back)]


def _linear_solve(ctx, eqn, pats, vals, outs):
    """``custom_linear_solve``: ``x = A⁻¹ b``. A's pattern is read from its
    ``matvec`` (a detection over b's elements); ``A⁻¹``'s lies within its
    transitive closure (every path of the graph), so each element of ``x``
    unites the elements of ``b`` it reaches. A matrix that depends on the
    tangent, or a closure past the budget: every dependency of every operand."""
    lengths = eqn.params["const_lengths"]
    nconsts = sum(lengths)
    matvec = eqn.params["jaxprs"].matvec
    b = pats[nconsts:]
    if any(p.depends for p in pats[:nconsts]) or matvec is None:
        return [everything(ctx, pats, o) for o in outs]
    sizes = [p.size for p in b]
    total = int(sum(sizes))
    inner = ctx.sub(total)
    eye = sp.csr_array(sp.identity(total, dtype=bool, format="csr"))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ins = [Pattern(p.shape, eye[offsets[k] : offsets[k + 1]], NONE) for k, p in enumerate(b)]
    consts = [empty(shape_of(v)) for v in eqn.invars[: lengths.matvec]]
    known = list(vals[: lengths.matvec]) + [None] * len(b)
    try:
        found = inner.run(matvec.jaxpr, matvec.consts, consts + ins, known)
        A = sp.csr_array(sp.vstack([p.matrix(total, ctx.budget) for p in found]), dtype=bool)
        reach = sp.csr_array(A + eye, dtype=bool)
        while True:  # the closure, by squaring: log2(diameter) products
            more = sp.csr_array(reach @ reach, dtype=bool)
            if more.nnz > ctx.budget:
                raise Dense
            if more.nnz == reach.nnz:
                break
            reach = more
        rows = sp.vstack([p.matrix(ctx.n, ctx.budget) for p in b])
    except Dense:
        return [everything(ctx, pats, o) for o in outs]
    flat = ctx.check(Pattern((total,), sp.csr_array(rows, dtype=bool), NONE))
    coo = reach.tocoo()
    x = combine(ctx, flat, coo.row, coo.col, (total,))
    return [take(ctx, x, np.arange(offsets[k], offsets[k + 1]).reshape(o))
            for k, o in enumerate(outs)]  # fmt: skip


def _by_known_zeros(ctx, eqn, pats, vals, out_shape):
    """A contraction of one operand that depends on the tangent with a known
    one that has zeros (a constant sparse matrix, a basis on an aperture):
    each output element reads only the terms whose known factor is nonzero.
    Output elements whose known factors have the same zeros (a signature)
    read the same terms: each signature is united once, then copied to its
    elements (a Zernike basis over a 1024² pupil has two: 17 million terms
    read one by one took 6 s). None when that does not apply (a known factor
    without zeros: the grouping is exact) or would spell out more than the
    budget. Any zero counts: HS86's constraints are a constant 10x5 matrix
    with 13 zeros (37 nonzeros, as asdex finds)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    depends = [p.depends for p in pats]
    if depends[0] == depends[1]:
        return None
    side = 0 if depends[0] else 1
    known = vals[1 - side]
    if known is None:
        return None
    p = pats[side]
    mine = ((lc, lb), (rc, rb))[side]
    theirs = ((lc, lb), (rc, rb))[1 - side]
    k_arr = np.asarray(known) != 0
    if k_arr.all():
        return None

    def canonical(shape, contract, batch):
        free = [d for d in range(len(shape)) if d not in contract and d not in batch]
        return list(batch) + list(contract) + free, [shape[d] for d in free]

    p_order, p_free = canonical(p.shape, mine[0], mine[1])
    k_order, k_free = canonical(k_arr.shape, theirs[0], theirs[1])
    nb = int(np.prod([p.shape[d] for d in mine[1]], dtype=np.int64))
    nc = int(np.prod([p.shape[d] for d in mine[0]], dtype=np.int64))
    fp, fk = int(np.prod(p_free, dtype=np.int64)), int(np.prod(k_free, dtype=np.int64))
    full = np.transpose(k_arr, k_order).reshape(nb, nc, fk)
    first, inverse = _signatures(full)  # per (batch, known free element)
    bu, ju = np.divmod(first, fk)
    uu, cc = np.nonzero(full[bu, :, ju])
    if uu.size * fp > ctx.budget:
        return None
    p_idx = np.transpose(indices(p.shape), p_order).reshape(nb, nc, fp).astype(np.int64)
    each = np.arange(fp, dtype=np.int64)
    united = combine(ctx, p, (uu[:, None] * fp + each).reshape(-1),
                     p_idx[bu[uu], cc, :].reshape(-1), (first.size * fp,))  # fmt: skip
    src = inverse.reshape(nb, 1, fk) * fp + each.reshape(1, fp, 1)  # (batch, p free, k free)
    out = indices(out_shape).astype(np.int64).reshape((nb, fp, fk) if side == 0 else (nb, fk, fp))
    out = out if side == 0 else np.transpose(out, (0, 2, 1))
    idx = np.empty(int(np.prod(out_shape, dtype=np.int64)), np.int64)
    idx[out.reshape(-1)] = src.reshape(-1)
    if united.rows is not None and int(np.diff(united.rows.indptr)[idx].sum()) > ctx.budget:
        return None
    return take(ctx, united, idx.reshape(out_shape))


def _signatures(full: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``full`` (batch, contracted, free) of booleans, the distinct
    (batch, nonzeros along the contracted axis) of each (batch, free) element:
    the flat (batch * free) index of each one's first element, and each
    element's one."""
    nb, nc, fk = full.shape
    bits = np.packbits(np.moveaxis(full, 1, 2), axis=2)  # (batch, free, bytes)
    keys = np.concatenate(
        [np.broadcast_to(np.arange(nb, dtype=">i8").view(np.uint8).reshape(nb, 1, 8),
                         (nb, fk, 8)), bits], axis=2)  # fmt: skip
    keys = np.ascontiguousarray(keys.reshape(nb * fk, -1))
    keys = keys.view(np.dtype((np.void, keys.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return first.astype(np.int64), inverse.reshape(-1).astype(np.int64)


def _dot_general(ctx, eqn, pats, vals, outs):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    out_shape = outs[0]
    exact = _by_known_zeros(ctx, eqn, pats, vals, out_shape)
    if exact is not None:
        return [exact]
    parts = []
    for p, contract, batch, side in ((pats[0], lc, lb, "lhs"), (pats[1], rc, rb, "rhs")):
        if not p.depends:
            continue
        free = [d for d in range(len(p.shape)) if d not in contract and d not in batch]
        kept = list(batch) + free
        reduced = indices([p.shape[d] for d in kept]) if kept else np.zeros((), np.int64)
        perm = np.argsort(kept + list(contract))
        expanded = reduced.reshape(reduced.shape + (1,) * len(contract))
        index = np.broadcast_to(expanded, reduced.shape + tuple(p.shape[d] for d in contract))
        grouped = group(ctx, p, np.transpose(index, perm), reduced.shape)
        # out = batch..., lhs free..., rhs free...
        nb = len(batch)
        lhs_free = len(pats[0].shape) - len(lc) - len(lb)
        out_idx = indices(reduced.shape)
        if side == "lhs":
            shape = out_idx.shape + (1,) * (len(out_shape) - out_idx.ndim)
        else:
            shape = out_idx.shape[:nb] + (1,) * lhs_free + out_idx.shape[nb:]
        parts.append(take(ctx, grouped, np.broadcast_to(out_idx.reshape(shape), out_shape)))
    return [union(ctx, parts, out_shape)]


def _bcoo_dot_general(ctx, eqn, pats, vals, outs):
    """``jax.experimental.sparse``'s product of a BCOO matrix (``data``,
    ``indices``) and a dense array: for a 2-D matrix of known indices, all in
    bounds, with no batch or dense dimensions and one contracted axis, each
    output element unites the elements of the dense operand that its row's
    stored entries read (an entry of known zero data reads nothing), and those
    entries' data where the data depend on the tangent. Else everything (a
    superset)."""
    data_p, index_p, rhs_p = pats
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    shape = tuple(eqn.params["lhs_spinfo"].shape)
    index = None if vals[1] is None else np.asarray(vals[1], np.int64)
    if (index is None or index_p.depends or len(shape) != 2 or lb or rb or len(lc) != 1
            or index.ndim != 2 or index.shape[1] != 2 or data_p.shape != index.shape[:1]
            or not ((index >= 0) & (index < np.asarray(shape))).all()):  # fmt: skip
        return [everything(ctx, pats, outs[0])]
    contracted, (axis,) = int(lc[0]), rc
    rhs = np.moveaxis(indices(rhs_p.shape), axis, 0)
    rhs = rhs.reshape(rhs.shape[0], -1).astype(np.int64)  # (contracted, rhs free)
    width = rhs.shape[1]
    if tuple(outs[0]) != (shape[1 - contracted],) + tuple(np.delete(rhs_p.shape, axis)):
        return [everything(ctx, pats, outs[0])]
    entries = np.arange(index.shape[0])
    if not data_p.depends and vals[0] is not None:
        entries = entries[np.asarray(vals[0]).reshape(-1) != 0]
    row, col = index[entries, 1 - contracted], index[entries, contracted]
    out_idx = (row[:, None] * width + np.arange(width)).reshape(-1)
    parts = [combine(ctx, rhs_p, out_idx, rhs[col].reshape(-1), outs[0])]
    if data_p.depends:
        parts.append(combine(ctx, data_p, out_idx, np.repeat(entries, width), outs[0]))
    return [union(ctx, parts, outs[0])]


def _coo(vals, index_p, shape) -> np.ndarray | None:
    """A BCOO matrix's flat element index of each stored entry: its indices
    known, all in bounds, with no batch or dense dimensions; else None."""
    index = None if vals is None or index_p.depends else np.asarray(vals, np.int64)
    if index is None or index.ndim != 2 or index.shape[1] != len(shape):
        return None
    if not ((index >= 0) & (index < np.asarray(shape, np.int64))).all():
        return None
    return np.ravel_multi_index(tuple(index.T), shape) if len(shape) else None


def _bcoo_todense(ctx, eqn, pats, vals, outs):
    """A BCOO matrix made dense: each element unites the stored entries at it
    (``.at[].add``); known in-bounds indices, else everything."""
    data_p, index_p = pats
    flat = _coo(vals[1], index_p, outs[0])
    if flat is None or data_p.shape != flat.shape:
        return [everything(ctx, pats, outs[0])]
    size = int(np.prod(outs[0], dtype=np.int64))
    landed = group(ctx, data_p, flat, (size,))
    if data_p.common.size:  # only where an entry is stored
        hit = np.zeros(size, bool)
        hit[flat] = True
        landed = take(ctx, landed, np.where(hit, np.arange(size), -1))
    return [Pattern(tuple(outs[0]), landed.rows, landed.common)]


def _bcoo_extract(ctx, eqn, pats, vals, outs):
    """A dense array's elements at a BCOO matrix's indices (its new data): each
    entry is the element it names (or nothing, a duplicate zeroed)."""
    index_p, arr_p = pats
    flat = _coo(vals[0], index_p, arr_p.shape)
    if flat is None or tuple(outs[0]) != flat.shape:
        return [everything(ctx, pats, outs[0])]
    return [take(ctx, arr_p, flat)]


def _bcoo_transpose(ctx, eqn, pats, vals, outs) -> tuple[list, list]:
    """A BCOO matrix transposed: ``(patterns, values)`` of its data, which move
    as the permutation of its batch and dense dimensions says, and of its
    indices, whose columns the sparse dimensions' permutation reorders (their
    value, known where the indices are: the product that follows stays exact)."""
    data_p, index_p = pats
    n_batch, n_sparse = len(index_p.shape) - 2, index_p.shape[-1]
    perm = tuple(eqn.params["permutation"])
    dense = [d - n_batch - n_sparse for d in perm[n_batch + n_sparse :]]
    order = (*perm[:n_batch], n_batch, *(d + n_batch + 1 for d in dense))
    moved = np.transpose(indices(data_p.shape), order)
    index_order = (*perm[:n_batch], n_batch, n_batch + 1)
    if tuple(moved.shape) != tuple(outs[0]) or index_p.depends:
        return [everything(ctx, pats, o) for o in outs], [None, None]
    known = None
    if vals[1] is not None:
        sparse = [d - n_batch for d in perm[n_batch : n_batch + n_sparse]]
        known = np.transpose(np.asarray(vals[1])[..., sparse], index_order)
    return [take(ctx, data_p, moved), empty(outs[1])], [None, known]


def _bcoo_dot_general_sampled(ctx, eqn, pats, vals, outs):
    """The product of two dense arrays at a BCOO matrix's indices (the
    transpose of a BCOO product in its data): each entry is the element of
    the dense product it names, its pattern `_dot_general`'s there."""
    lhs_p, rhs_p, index_p = pats
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    kept = lambda p, c, b: [d for d in range(len(p.shape)) if d not in c and d not in b]
    dense_shape = (*(lhs_p.shape[d] for d in lb), *(lhs_p.shape[d] for d in kept(lhs_p, lc, lb)),
                   *(rhs_p.shape[d] for d in kept(rhs_p, rc, rb)))  # fmt: skip
    flat = _coo(vals[2], index_p, dense_shape)
    if flat is None or lb or rb or tuple(outs[0]) != flat.shape:
        return [everything(ctx, pats, outs[0])]
    (product,) = _dot_general(ctx, eqn, [lhs_p, rhs_p], vals[:2], [dense_shape])
    return [take(ctx, product, flat)]


RULES: dict[str, Callable] = {
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
    },
    **{name: _cumulative for name in ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")},
    "fft": _fft,
    "triangular_solve": _triangular_solve,
    "custom_linear_solve": _linear_solve,
    "dot_general": _dot_general,
    "bcoo_dot_general": _bcoo_dot_general,
    "bcoo_todense": _bcoo_todense,
    "bcoo_extract": _bcoo_extract,
    "bcoo_dot_general_sampled": _bcoo_dot_general_sampled,
}


#: Rules that give their outputs' values too, where known without x or t:
#: ``(patterns, values)`` (the walk reads them as a call's).
VALUED: dict[str, Callable] = {"bcoo_transpose": _bcoo_transpose}
