"""The pattern algebra: what each element of an array depends on, and the
moves every rule is made of (take elements, group them, unite operands).

An array's `Pattern` is a sparse boolean matrix (elements x n) plus a set shared
by every element (what an FFT or a reduction spreads over a whole array stays
one set, never n copies of it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
from jax.extend import source_info_util

__all__ = [
    "NONE",
    "Context",
    "Dense",
    "Pattern",
    "aligned",
    "combine",
    "distinct",
    "empty",
    "everything",
    "gram",
    "group",
    "indices",
    "merge",
    "shape_of",
    "sorted_set",
    "stacked",
    "take",
    "union",
    "where",
]


class Dense(Exception):
    """The pattern would be (nearly) dense: detection stops early. Its message,
    once the interpreter has added it, says at which primitive and line."""


class Pattern:
    """What each element of an array depends on: ``rows`` (a boolean CSR matrix,
    elements x n, or None for nothing) and ``common`` (sorted indices every
    element depends on).

    ``rows`` may be held as ``picks``, ``(base, idx)``: element ``k`` depends on
    row ``idx[k]`` of ``base`` (-1: on no row). A few rows copied to many
    elements (the signatures of a Zernike basis over a 10⁶-element pupil) stay
    a few rows through `take` and `union` until a rule reads ``rows``, which
    spells them out then."""

    def __init__(self, shape, rows, common, picks=None):
        self.shape: tuple[int, ...] = tuple(shape)
        self._rows, self.common, self.picks = rows, common, picks

    @property
    def rows(self):
        if self.picks is not None:
            self._rows, self.picks = gather_rows(*self.picks), None
        return self._rows

    @rows.setter
    def rows(self, value) -> None:
        self._rows, self.picks = value, None

    @property
    def depends(self) -> bool:
        """Whether any element may depend on anything (without spelling ``picks`` out)."""
        return self._rows is not None or self.picks is not None or bool(self.common.size)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def matrix(self, n: int, budget: int) -> sp.csr_array:
        """The full (elements x n) boolean pattern, the common set spelled out on
        every row. **Raises:** `Dense` before it is built when it would hold more
        than ``budget`` entries (a common set spread over many rows is what
        made detection take n² memory)."""
        rows = 0 if self.rows is None else self.rows.nnz
        if rows + self.size * self.common.size > budget:
            raise Dense
        if not self.common.size:
            out = self.rows if self.rows is not None else sp.csr_array((self.size, n), dtype=bool)
            return sp.csr_array(out, dtype=bool)
        kind = np.int32 if max(n, rows + self.size * self.common.size) < 2**31 else np.int64
        block = sp.csr_array(
            (np.ones(self.size * self.common.size, bool),
             np.tile(self.common.astype(kind), self.size),
             np.arange(0, self.size * self.common.size + 1, self.common.size, dtype=kind)),
            shape=(self.size, n),
        )  # fmt: skip
        return block if not rows else sp.csr_array(self.rows + block, dtype=bool)


NONE = np.zeros(0, np.int64)


def empty(shape) -> Pattern:
    return Pattern(tuple(shape), None, NONE)


class Context:
    """One detection: ``n`` (the tangent's size), ``budget`` (the entries any one
    array's pattern may hold before the matrix is taken as dense) and ``run``
    (the interpreter, for rules of primitives that hold jaxprs)."""

    def __init__(self, n: int, budget: int, evaluate: Callable):
        self.n, self.budget, self._evaluate = n, budget, evaluate
        self.lost: list[str] = []  # where structure was given up (primitives without a rule)
        #: the constants' fold plans of this detection, by (jaxpr, known variables): a
        #: loop body walked to a fixed point compiles its constants once
        self.folds: dict = {}

    def run(self, jaxpr, consts: Sequence, ins: Sequence[Pattern], known: Sequence):
        """The patterns of ``jaxpr``'s outputs given its inputs' (``known``: their
        values where known without ``x``, else None)."""
        return self._evaluate(self, jaxpr, consts, ins, known)[0]

    def sub(self, n: int) -> Context:
        """A detection of another tangent, of size ``n`` (a linear map's own
        pattern, inside this one), with this one's budget."""
        inner = Context(n, self.budget, self._evaluate)
        inner.folds = self.folds
        return inner

    def evaluate(self, jaxpr, consts: Sequence, ins: Sequence[Pattern], known: Sequence):
        """`run`, and the outputs' values where they are known: ``(patterns, values)``."""
        return self._evaluate(self, jaxpr, consts, ins, known)

    def check(self, p: Pattern) -> Pattern:
        if p.picks is not None:
            return _check_picks(self, p)
        if p.rows is not None:
            if p.rows.nnz == 0:
                p.rows = None
            elif p.size == 1:
                p.common = merge(p.common, sorted_set(p.rows.indices))
                p.rows = None
            else:
                p = _shared(p)
                if p.rows is not None and p.rows.nnz > self.budget:
                    raise Dense
        return p


def _check_picks(ctx: Context, p: Pattern) -> Pattern:
    """`Context.check` of a pattern held as picks, on its few rows: the rows
    picked by every element (one row shared by all: the common set) and the
    budget, from the rows' lengths."""
    base, idx = p.picks
    valid = idx >= 0
    picked = np.flatnonzero(np.bincount(idx[valid], minlength=base.shape[0]))
    lengths = np.diff(base.indptr)
    if picked.size == 0 or not lengths[picked].any():
        return Pattern(p.shape, None, p.common)
    if int(lengths[idx[valid]].sum()) > ctx.budget:
        raise Dense
    if picked.size == 1 and valid.all():  # every element the same row: one shared set
        row = base.indices[base.indptr[picked[0]] : base.indptr[picked[0] + 1]]
        return Pattern(p.shape, None, merge(p.common, sorted_set(row)))
    return p


def _shared(p: Pattern) -> Pattern:
    """``p`` with what every element's row holds moved to the common set: a
    contraction that unites the same flat field into every output (an MFT's
    backward pass) keeps one set, never one copy per element. O(nnz)."""
    rows = p.rows
    if rows.nnz < p.size or np.diff(rows.indptr).min() == 0:
        return p  # some row is empty: nothing is in all of them
    if not rows.has_canonical_format:
        rows.sum_duplicates()
    candidates = rows.indices[rows.indptr[0] : rows.indptr[1]]  # sorted, in every row or not
    hits = np.isin(rows.indices, candidates)
    if int(hits.sum()) < p.size:
        return p
    counts = np.bincount(np.searchsorted(candidates, rows.indices[hits]), minlength=candidates.size)
    shared = candidates[counts == p.size].astype(np.int64)
    if not shared.size:
        return p
    keep = ~np.isin(rows.indices, shared)
    kept = np.concatenate([[0], _count(keep)])[rows.indptr]
    remaining = sp.csr_array((rows.data[keep], rows.indices[keep], kept), shape=rows.shape)
    return Pattern(p.shape, remaining if remaining.nnz else None, merge(p.common, shared))


def _count(mask: np.ndarray) -> np.ndarray:
    """``np.cumsum(mask)`` as int64, by way of bytes (numpy's int64 sum of a
    boolean array converts element by element: ten times slower)."""
    return np.cumsum(mask.view(np.uint8), dtype=np.int64)


def take(ctx: Context, p: Pattern, idx: np.ndarray) -> Pattern:
    """Each output element is the input element ``idx`` (-1: none). Copies of a
    few rows to many elements (more than `SPELL_OUT` entries, four times the
    rows') are kept as picks (`Pattern`)."""
    idx = np.asarray(idx)
    flat = idx.reshape(-1)
    valid = flat >= 0
    padded = not valid.all()
    if p.picks is not None:  # a choice of a choice: still a few rows
        base, inner = p.picks
        common = p.common
        if common.size and padded and p.size * common.size <= ctx.budget // 4:
            base, inner = _spelled_picks(ctx, base, inner, common)  # as below, on the few rows
            common = NONE
        picks = (base, np.where(valid, inner[np.maximum(flat, 0)], -1))
        return ctx.check(Pattern(idx.shape, None, common, picks))
    if p.rows is not None:  # refuse before the product, from what it would hold at most
        entries = int(np.diff(p.rows.indptr)[flat[valid] if padded else flat].sum())
        if entries > ctx.budget:
            raise Dense
    if p.common.size and padded and p.size * p.common.size <= ctx.budget // 4:
        # padding depends on nothing: spell the common part out where that is
        # cheap; else the padding keeps it (a superset, never smaller than the truth)
        p = Pattern(p.shape, p.matrix(ctx.n, ctx.budget), NONE)
        entries = int(np.diff(p.rows.indptr)[flat[valid]].sum())
    if p.rows is None:
        return ctx.check(Pattern(idx.shape, None, p.common))
    if not padded and flat.size == p.size and (flat == np.arange(p.size)).all():
        rows = p.rows  # every element where it was (a concatenation's stacking): no product
    elif entries > max(SPELL_OUT, 4 * p.rows.nnz):
        return ctx.check(Pattern(idx.shape, None, p.common, (p.rows, flat.astype(np.int64))))
    else:
        rows = gather_rows(p.rows, flat)
    return ctx.check(Pattern(idx.shape, rows, p.common))


def _spelled_picks(ctx: Context, base, idx: np.ndarray, common: np.ndarray):
    """``(base, idx)`` picks with ``common`` spelled out on every row, and a row of
    ``common`` alone for the elements that picked none (they hold it too)."""
    rows = Pattern((base.shape[0] + 1,), sp.vstack([base, sp.csr_array((1, ctx.n), dtype=bool)],
                                                    format="csr"), common)  # fmt: skip
    return rows.matrix(ctx.n, ctx.budget), np.where(idx >= 0, idx, base.shape[0])


def gather_rows(rows: sp.csr_array, idx: np.ndarray) -> sp.csr_array:
    """Row ``idx[k]`` of ``rows`` as row ``k`` (-1: an empty row): scipy's row
    indexing, not a selection matrix's product (a pad of a 10⁶-element
    pattern: 1.9 s as a product). Rows taken in order, each once, between empty
    ones (a pad's) share ``rows``' entries: only the row pointers are new."""
    idx = np.asarray(idx, np.int64).reshape(-1)
    valid = idx >= 0
    if not idx.size or not valid.any():
        return sp.csr_array((idx.size, rows.shape[1]), dtype=bool)
    every = bool(valid.all())
    wanted = idx if every else idx[valid]
    first, last = int(wanted[0]), int(wanted[-1])
    lengths = np.zeros(idx.size, rows.indptr.dtype)
    if last - first + 1 == wanted.size and (np.diff(wanted) == 1).all():  # a run, in order
        lengths[valid] = np.diff(rows.indptr[first : last + 2])
        start, stop = rows.indptr[first], rows.indptr[last + 1]
        data, indices = rows.data[start:stop], rows.indices[start:stop]
    else:
        picked = rows[wanted]
        if every:
            return picked
        lengths[valid] = np.diff(picked.indptr)
        data, indices = picked.data, picked.indices
    indptr = np.concatenate([np.zeros(1, lengths.dtype), np.cumsum(lengths)])
    return sp.csr_array((data, indices, indptr.astype(indices.dtype, copy=False)),
                        shape=(idx.size, rows.shape[1]))  # fmt: skip


def combine(ctx: Context, p: Pattern, out_idx: np.ndarray, in_idx: np.ndarray,
            out_shape) -> Pattern:  # fmt: skip
    """Output element ``out_idx[k]`` unites input element ``in_idx[k]`` (flat
    indices, any number per output; a window, a convolution's footprint): the
    relation as a boolean (out x in) matrix times ``p``'s rows. The common set
    goes to every output that reads something (spelled out where cheap, else
    kept for all: a superset)."""
    out_size = int(np.prod(out_shape, dtype=np.int64))
    out_idx, in_idx = np.asarray(out_idx).reshape(-1), np.asarray(in_idx).reshape(-1)
    relation = sp.csr_array(
        (np.ones(out_idx.size, bool), (out_idx, in_idx)), shape=(out_size, p.size)
    )
    relation.sum_duplicates()
    rows = None
    if p.rows is not None:
        rows = _bounded_product(ctx, relation, p.rows)
    out = Pattern(tuple(out_shape), rows, p.common)
    reads = np.diff(relation.indptr) > 0
    if p.common.size and not reads.all() and out_size * p.common.size <= ctx.budget // 4:
        spelled = sp.csr_array(
            (np.ones(int(reads.sum()) * p.common.size, bool),
             np.tile(p.common, int(reads.sum())),
             np.concatenate([[0], np.cumsum(reads * p.common.size)])),
            shape=(out_size, ctx.n),
        )  # fmt: skip
        out = Pattern(tuple(out_shape), spelled if rows is None else rows + spelled, NONE)
    return ctx.check(out)


def _bounded_product(ctx: Context, relation: sp.csr_array, rows: sp.csr_array) -> sp.csr_array:
    """``relation @ rows`` (boolean), in slices of the relation's rows whose
    products hold at most the budget each even counted with repeats (a window
    over rows that overlap unites far fewer distinct entries than it reads),
    refused as soon as the distinct entries pass the budget."""
    counts = np.diff(rows.indptr).astype(np.int64)
    reads = sp.csr_array(relation, dtype=np.int64) @ counts  # per output row, with repeats
    if int(reads.sum()) <= ctx.budget:
        return relation @ rows
    ends = np.searchsorted(np.cumsum(reads), np.arange(1, int(reads.sum()) // ctx.budget + 2)
                           * ctx.budget)  # fmt: skip
    parts, total, start = [], 0, 0
    for end in [*np.unique(np.clip(ends, 1, relation.shape[0])), relation.shape[0]]:
        if end <= start:
            continue
        part = relation[start:end] @ rows
        total += part.nnz
        if total > ctx.budget:
            raise Dense
        parts.append(part)
        start = end
    return sp.csr_array(sp.vstack(parts, format="csr"), dtype=bool)


def group(ctx: Context, p: Pattern, groups: np.ndarray, out_shape) -> Pattern:
    """Output element ``g`` is the union of the input elements ``groups == g``."""
    out = empty(out_shape)
    out.common = p.common
    if p.picks is not None:  # group the picks, then their few rows
        base, idx = p.picks
        flat = np.asarray(groups, np.int64).reshape(-1)
        valid = idx >= 0
        chosen = sp.csr_array((np.ones(int(valid.sum()), bool), (flat[valid], idx[valid])),
                              shape=(out.size, base.shape[0]))  # fmt: skip
        out.rows = sp.csr_array(chosen @ base, dtype=bool)
    elif p.rows is not None:
        flat = np.asarray(groups, np.int64).reshape(-1)
        g = sp.csr_array(
            (np.ones(flat.size, bool), (flat, np.arange(flat.size))), shape=(out.size, p.size)
        )
        out.rows = g @ p.rows
    return ctx.check(out)


def stacked(ctx: Context, parts: Sequence[Pattern]) -> Pattern:
    """``parts`` one after another, flat: what all share stays common, the rest
    of each part's common set is spelled out on its own rows (a gradient's
    parts depend on different sets: a global's on everything, a pixel's on a
    few)."""
    shared = parts[0].common
    for p in parts[1:]:
        shared = np.intersect1d(shared, p.common, assume_unique=True)
    rows = [Pattern(p.shape, p.rows, np.setdiff1d(p.common, shared, assume_unique=True)
                    .astype(np.int64)).matrix(ctx.n, ctx.budget) for p in parts]  # fmt: skip
    total = sum(p.size for p in parts)
    whole = sp.csr_array(sp.vstack(rows, format="csr"), dtype=bool)
    return Pattern((total,), whole, shared.astype(np.int64))


def union(ctx: Context, parts: Sequence[Pattern], shape) -> Pattern:
    shape = tuple(shape)
    common = NONE
    held = []
    for p in parts:
        if (p.picks is not None or p._rows is not None) and tuple(p.shape) != shape:
            # broadcast as numpy does (a scalar, or size-1 axes: JAX's elementwise
            # ops take [12, 1] * [1, 12]); each output element reads its own operand
            # element, never element 0 of a smaller operand
            idx = np.broadcast_to(indices(aligned(p.shape, len(shape))), shape)
            p = take(ctx, p, np.ascontiguousarray(idx, np.int64))
        if p.picks is not None or p._rows is not None:
            held.append(p)
        if p.common.size:
            common = merge(common, p.common)
    if len(held) == 1 and held[0].picks is not None:  # one operand's few rows: still picks
        return ctx.check(Pattern(shape, None, common, held[0].picks))
    rows = None
    for p in held:
        rows = p.rows if rows is None else rows + p.rows
    return ctx.check(Pattern(shape, rows, common))


def distinct(ordered: np.ndarray) -> np.ndarray:
    """A sorted array without its repeats."""
    if ordered.size < 2:
        return ordered
    keep = np.empty(ordered.size, bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def sorted_set(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` as int64, by a sort (numpy's hashing unique is
    several times slower on large index arrays)."""
    return distinct(np.sort(np.asarray(values, np.int64)))


def merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
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
    return distinct(both)


def aligned(shape, rank: int) -> tuple:
    """``shape`` with leading 1s up to ``rank`` (numpy's broadcasting alignment)."""
    return (1,) * (rank - len(shape)) + tuple(shape)


def everything(ctx: Context, parts: Sequence[Pattern], shape) -> Pattern:
    """Every output element depends on every dependency of every operand."""
    common = NONE
    for p in parts:
        if p.picks is not None:  # the rows some element picks, not every copy of them
            base, idx = p.picks
            picked = np.flatnonzero(np.bincount(idx[idx >= 0], minlength=base.shape[0]))
            common = np.union1d(common, base[picked].indices)
        elif p.rows is not None:
            common = np.union1d(common, p.rows.indices)
        common = np.union1d(common, p.common)
    return ctx.check(Pattern(tuple(shape), None, common.astype(np.int64)))


#: The entries up to which a rule spells a shared set out per element (or reads a
#: known factor at least half full) to drop what a known zero removes: small
#: constant matrices (HS86, HS117) are exact, a flat field's shared globals stay
#: one set.
SPELL_OUT = 1 << 16


def indices(shape) -> np.ndarray:
    return np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int32).reshape(shape)


def shape_of(var) -> tuple[int, ...]:
    return tuple(getattr(var.aval, "shape", ()))


def where(eqn) -> str:
    """The line of user code an equation came from."""
    return source_info_util.summarize(eqn.source_info)


#: Columns of a Jacobian's pattern are taken apart in `gram` when at least this
#: share of its rows hold them (the globals every pixel of a model depends on).
_HEAVY = 1 / 16


def gram(jac: sp.csr_array) -> sp.csr_array:
    """The pattern of ``Jᵀ J`` (a Gauss–Newton matrix's) from ``J``'s (boolean, m x n).

    ``Jᵀ J`` by a sparse product costs, per column, its rows times their
    lengths: a few global columns every row holds cost m² between them (2–4 s
    of the 10⁶ flat field's detection). Those heavy columns (`_HEAVY` of the
    rows or more, at most 256) are taken apart: the light part's own product is
    sparse, and the heavy columns meet every column through one dense (m x k)
    indicator in sparse-times-dense products, exact (sums of ones are never
    zero). Row by row, the result holds the light product's columns, then the
    heavy ones (indices unsorted within a row, as a sparse product leaves them).
    """
    m, n = jac.shape
    jac = sp.csr_array(jac, dtype=bool)
    heavy = np.flatnonzero(np.bincount(jac.indices, minlength=n) >= max(2.0, _HEAVY * m))
    if heavy.size == 0 or heavy.size > 256:
        return sp.csr_array(jac.T @ jac, dtype=bool)
    column = np.full(n, -1, np.int32)
    column[heavy] = np.arange(heavy.size, dtype=np.int32)
    light, part = _split_columns(jac, column)
    indicator = part.toarray().astype(np.float32)  # (m x k)
    cross = np.ascontiguousarray((light.T.astype(np.float32) @ indicator != 0).T)  # (k x n)
    meets = indicator.T @ indicator != 0  # (k x k)
    own = sp.csr_array(light.T @ light, dtype=bool)
    own_count, cross_count = np.diff(own.indptr), cross.sum(axis=0)
    counts = own_count + cross_count
    counts[heavy] += cross.sum(axis=1) + meets.sum(axis=1)  # a heavy row: every column it meets
    indptr = np.concatenate([[0], np.cumsum(counts)])
    kind = np.int32 if max(n, int(indptr[-1])) < 2**31 else np.int64  # one index dtype: no copies
    indptr = indptr.astype(kind)
    indices = np.empty(int(indptr[-1]), kind)
    # scatters of one light column's entries at a time: the large temporaries a
    # vectorised placement makes cost more than the loop (page faults)
    indices[np.arange(own.nnz, dtype=kind) + np.repeat(indptr[:-1] - own.indptr[:-1].astype(kind),
                                                       own_count)] = own.indices  # fmt: skip
    at = indptr[:-1] + own_count.astype(kind)  # where each row's heavy columns go
    for j, h in enumerate(heavy):
        rows = np.flatnonzero(cross[j])
        indices[at[rows]] = h
        at[rows] += 1
        # a heavy column: no light product, no cross entry of its own
        start = int(indptr[h])
        indices[start : start + rows.size] = rows
        indices[start + rows.size : indptr[h + 1]] = heavy[meets[j]]
    return sp.csr_array((np.ones(indices.size, bool), indices, indptr), shape=(n, n))


def _split_columns(jac: sp.csr_array, column: np.ndarray) -> tuple[sp.csr_array, sp.csr_array]:
    """``jac`` (m x n) as its light columns (``column`` -1; m x n) and its heavy
    ones (m x k, heavy column ``c`` at ``column[c]``)."""
    m, n = jac.shape
    to = column[jac.indices]
    is_heavy = to >= 0
    lengths = np.diff(jac.indptr)
    per_row = np.zeros(m, np.int64)
    rows = np.flatnonzero(lengths)
    per_row[rows] = np.add.reduceat(is_heavy.view(np.uint8), jac.indptr[rows], dtype=np.int64)
    heavy_indptr = np.concatenate([[0], np.cumsum(per_row)])
    light = sp.csr_array(
        (
            np.ones(jac.nnz - int(heavy_indptr[-1]), bool),
            jac.indices[~is_heavy],
            jac.indptr - heavy_indptr,
        ),
        shape=(m, n),
    )
    part = sp.csr_array(
        (np.ones(int(heavy_indptr[-1]), bool), to[is_heavy], heavy_indptr),
        shape=(m, int(column.max()) + 1),
    )
    return light, part
