"""One pass over a stored matrix for the figures people read: per-row sums of
squares, the diagonal, the largest entry and, for a square matrix, the largest
asymmetry per row.

The matrix is read in panels of whole stored chunks along the block axis
(column slabs of a Hessian). When two panels of the whole matrix fit the
memory allowed (`_PANEL_BYTES`, or a quarter of what is available), that is
one panel and one read of the matrix. Otherwise the asymmetry needs pairs of
panels: about ``T / 2`` reads for ``T`` panels, counted by a progress bar.
(Re-chunking to block x block tiles, as before, read each stored chunk once
per tile row: quadratic in the number of blocks.)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import psutil

from .._errors import StoreError
from ..run import BlockEvent, Callback, Callbacks, ProgressBar, RunEnd, RunStart
from ..store import (
    CHECKSUM,
    NONFINITE,
    SQUARE,
    STATE,
    ResultStore,
    checksum,
    read_region,
)

__all__ = ["Scan", "scan"]

#: What two panels may hold at most.
_PANEL_BYTES = 2**30


@dataclasses.dataclass(frozen=True)
class Scan:
    """Figures of a stored matrix: `row_squares` (per row, sum of squares; NaN
    propagates), `diagonal` (square only), `max_abs` (largest finite |entry|),
    `row_asymmetry` (square only: per row, max over columns of
    ``|M[r, c] - M[c, r]|``, non-finite entries read as 0), `reads`
    (panels read)."""

    row_squares: np.ndarray
    diagonal: np.ndarray | None
    max_abs: float
    row_asymmetry: np.ndarray | None
    reads: int


def _panel_width(store: ResultStore, budget: int) -> int:
    m, n = store.matrix.shape
    block = store.plan.block_size
    other = n if store.axis == 0 else m
    extent = m if store.axis == 0 else n
    per_item = other * np.dtype(store.matrix.dtype).itemsize
    if 2 * extent * per_item <= budget:
        return extent
    return max(block, (budget // 2 // per_item) // block * block)


class _Reader:
    """Panels of whole blocks; each block checked against its record's checksum
    the first time it is read (a block damaged since it was written is never
    summarised as numbers)."""

    def __init__(self, store: ResultStore, width: int, callbacks: Callback, records=None):
        self.store, self.width, self.callbacks, self.reads = store, width, callbacks, 0
        self.extent = store.matrix.shape[1 - store.axis]
        self.panels = math.ceil(self.extent / width)
        self.records = store.read_records() if records is None else records
        self.checked: set[int] = set()

    def _check(self, i: int, value: np.ndarray) -> None:
        if i in self.checked:
            return
        self.checked.add(i)
        span, block, axis = self.span(i), self.store.plan.block_size, self.store.axis
        bad = []
        for b in range(span.start // block, math.ceil(span.stop / block)):
            part = slice(b * block - span.start, min(span.stop, (b + 1) * block) - span.start)
            data = value[:, part] if axis == 1 else value[part, :]
            recorded = self.records[b, STATE] == 1  # a missing block is not this check's
            if recorded and checksum(data) != int(self.records[b, CHECKSUM]):
                bad.append(b)
        if bad:
            raise StoreError(
                f"block(s) {bad} of {self.store.location!r} no longer match their checksums "
                "(changed since they were written); run diffops verify --repair"
            )

    def span(self, i: int) -> slice:
        return slice(i * self.width, min(self.extent, (i + 1) * self.width))

    def read(self, i: int) -> np.ndarray:
        """Panel ``i`` as (rows, columns) of the matrix: a column panel of a
        column-slab store, a row panel of a row-slab one."""
        span = self.span(i)
        region = (slice(None), span) if self.store.axis == 1 else (span, slice(None))
        value = read_region(self.store.matrix, *region)
        self._check(i, value)
        self.callbacks.on_block_end(BlockEvent(self.reads, span.start, span.stop))
        self.reads += 1
        return value


def _finite(a: np.ndarray, clean: bool) -> np.ndarray:
    """``a`` with non-finite entries read as 0 (no copy when the records say
    there are none)."""
    return a if clean else np.where(np.isfinite(a), a, 0)


def _max_abs(a: np.ndarray) -> float:
    return float(max(a.max(), -a.min())) if a.size else 0.0


def scan(
    store: ResultStore,
    progress: bool = False,
    budget: int | None = None,
    records: np.ndarray | None = None,
) -> Scan:
    """Read the stored matrix once (see the module docstring) for its `Scan`;
    ``records``: the store's, when the caller has read them."""
    if store.is_sparse:
        return _sparse_scan(store)
    budget = budget or int(min(_PANEL_BYTES, psutil.virtual_memory().available // 4))
    m, n = (int(s) for s in store.matrix.shape)
    square = store.meta["operation"] in SQUARE
    width = _panel_width(store, budget)
    panels = math.ceil((n if store.axis == 1 else m) / width)
    pairs = panels * (panels + 1) // 2 if square else panels
    listeners = Callbacks([ProgressBar()] if progress and panels > 1 else [])
    listeners.on_run_start(RunStart(None, tuple(range(pairs)), 0, label="diffops checks (panels)",
                                    unit="panel"))  # fmt: skip
    records = store.read_records() if records is None else records
    reader = _Reader(store, width, listeners, records)
    clean = not records[:, NONFINITE].any()
    figures = _Figures(m, n, square)
    try:
        for i in range(panels):
            a, span = reader.read(i), reader.span(i)
            finite = figures.add(a, span, store.axis, clean)
            if figures.asym is None:  # not square
                continue
            own = finite[span, :]
            _fold(figures.asym, span.start, span.start, own, own, same=True)
            for j in range(i + 1, panels):
                other = _finite(reader.read(j), clean)
                # finite[J] is M[J, I]; other[I] is M[I, J]
                _fold(figures.asym, reader.span(j).start, span.start, finite[reader.span(j), :],
                      other[span, :], same=False)  # fmt: skip
    finally:
        listeners.on_run_end(RunEnd("complete", 0.0))
    return Scan(figures.rows, figures.diagonal, figures.top, figures.asym, reader.reads)


def _sparse_scan(store: ResultStore) -> Scan:
    """The `Scan` of a sparse result, from its recovered matrix (nnz-sized)."""
    matrix = store.sparse().astype(np.float64)
    rows = np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel()
    finite = matrix.data[np.isfinite(matrix.data)]
    top = float(np.abs(finite).max(initial=0.0))
    if store.meta["operation"] not in SQUARE:
        return Scan(rows, None, top, None, 1)
    diff = abs(matrix - matrix.T).tocsr()
    diff.data[~np.isfinite(diff.data)] = 0.0
    asym = np.asarray(diff.max(axis=1).toarray()).ravel()
    return Scan(rows, matrix.diagonal(), top, asym, 1)


class _Figures:
    """What the panels add up to (see `Scan`)."""

    def __init__(self, m: int, n: int, square: bool):
        self.rows, self.top = np.zeros(m), 0.0
        self.diagonal = np.full(n, np.nan) if square else None
        self.asym = np.zeros(m) if square else None

    def add(self, a: np.ndarray, span: slice, axis: int, clean: bool) -> np.ndarray:
        """Fold panel ``a`` (columns, or rows, ``span``) in; ``a`` with non-finite
        entries read as 0."""
        squares = np.einsum("ij,ij->i", a, a, dtype=np.float64)
        if axis == 1:
            self.rows += squares
        else:
            self.rows[span] = squares
        finite = _finite(a, clean)
        self.top = max(self.top, _max_abs(finite))
        if self.diagonal is not None:
            self.diagonal[span] = np.diagonal(a[span, :])
        return finite


#: Side of the square tiles the asymmetry is compared in: a transposed read of
#: a whole panel strides through memory; tiles of this side stay in cache.
_TILE = 256


def _fold(asym: np.ndarray, r0: int, c0: int, x: np.ndarray, y: np.ndarray, same: bool):
    """Fold ``|x - yᵀ|`` (``x = M[R, C]``, ``y = M[C, R]``, ``R`` from ``r0`` and
    ``C`` from ``c0``) into the per-row maxima of both sets of rows, tile by
    tile; for a diagonal panel (``same``) each pair of tiles once."""
    rows, cols = x.shape
    for r in range(0, rows, _TILE):
        r1 = min(rows, r + _TILE)
        for c in range(r if same else 0, cols, _TILE):
            c1 = min(cols, c + _TILE)
            d = np.abs(x[r:r1, c:c1] - y[c:c1, r:r1].T)
            np.maximum(asym[r0 + r : r0 + r1], d.max(axis=1), out=asym[r0 + r : r0 + r1])
            np.maximum(asym[c0 + c : c0 + c1], d.max(axis=0), out=asym[c0 + c : c0 + c1])
