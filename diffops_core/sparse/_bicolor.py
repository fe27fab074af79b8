"""Bidirectional colourings of a Jacobian's pattern: JVPs and VJPs together.

A Jacobian with both dense rows and dense columns (an arrowhead: one output
that sees every input, one input that every output sees) needs about n
products in either direction alone: every column shares the dense row, every
row shares the dense column. Split the nonzeros instead: the dense rows are
read from VJPs (``Sᵣᵀ J``, a row colouring of those rows alone), every other
row from JVPs (``J S꜀``, a column colouring of the remaining rows, where the
dense columns take a colour each and the rest share a few). The arrowhead then
takes three products: one VJP and two JVPs. The transposed split (the dense
columns by JVPs, the rest by VJPs) is tried too, and the fewest products win;
it is used only when it beats the one-sided colourings.

The colours are kept as one array: the ``n`` columns' colours, then the ``m``
rows' (offset by the columns' count), ``-1`` for a column or row in no product.
Recovery reads each nonzero from whichever side holds it alone (a column
colour the entry's row sees once, or a row colour the entry's column sees
once), as SparseMatrixColorings.jl's direct bicolouring recovery does; a
nonzero that neither side holds alone is a colouring error, refused.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._coloring import column_coloring, dense_vertices, row_coloring

__all__ = ["bicolor_plan", "bicoloring", "split_colors"]


def _rows_by_vjp(csr: sp.csr_array, by_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(column colours, row colours), 0-based with -1 for none, when the rows
    in ``by_row`` are read from VJPs and the others from JVPs."""
    m, n = csr.shape
    cols = np.full(n, -1, np.int64)
    rest = csr[~by_row]
    if rest.nnz:
        seen = np.zeros(n, bool)
        seen[rest.indices] = True
        cols = np.where(seen, column_coloring(rest), -1)  # a column in no JVP row: no seed
    rows = np.full(m, -1, np.int64)
    if by_row.any():
        rows[by_row] = row_coloring(csr[by_row])
    return cols, rows


def _count(colors: np.ndarray) -> int:
    return int(colors.max(initial=-1)) + 1


def bicoloring(pattern: sp.csr_array) -> tuple[np.ndarray, int] | None:
    """``(colors, ncolors)`` of a bidirectional colouring of a Jacobian's
    pattern (the columns' colours, then the rows' offset by the columns'
    count; -1 for none), or None when the pattern has no dense rows or no
    dense columns (a one-sided colouring then gives each dense line a colour
    of its own already, and cannot be beaten this way)."""
    csr = sp.csr_array(pattern, dtype=bool)
    csr.sort_indices()
    csc_t = sp.csr_array(csr.T)  # the columns as rows
    dense_rows, dense_cols = dense_vertices(csr), dense_vertices(csc_t)
    if dense_rows.size == 0 or dense_cols.size == 0:
        return None
    best = None
    for transposed, matrix, dense in ((False, csr, dense_rows), (True, csc_t, dense_cols)):
        by_row = np.zeros(matrix.shape[0], bool)
        by_row[dense] = True
        cols, rows = _rows_by_vjp(matrix, by_row)
        if transposed:  # the dense columns by JVPs, the rest by VJPs
            cols, rows = rows, cols
        count = _count(cols) + _count(rows)
        if best is None or count < best[1]:
            best = (cols, rows), count
    assert best is not None
    (cols, rows), count = best
    offset = _count(cols)
    return np.concatenate([cols, np.where(rows >= 0, rows + offset, -1)]), count


def split_colors(colors: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(column colours, row colours), each 0-based with -1 for none, of a
    bidirectional colouring's one array."""
    m, n = shape
    cols = np.asarray(colors[:n], np.int64)
    rows = np.asarray(colors[n : n + m], np.int64)
    offset = _count(cols)
    return cols, np.where(rows >= 0, rows - offset, -1)


def _alone(keys: np.ndarray) -> np.ndarray:
    """Whether each key occurs once among ``keys``."""
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return counts[inverse] == 1


def bicolor_plan(pattern: sp.csr_array, colors: np.ndarray):
    """Where each nonzero is read from ``concat(ravel(J S꜀), ravel(Sᵣᵀ J))``:
    ``(indptr, indices, flat source, None)`` in CSR order (`recover` reads a
    plan whose last element is None from the flat buffer).

    **Raises:** `ValueError` for a nonzero neither side holds alone."""
    csr = sp.csr_array(pattern, dtype=bool)
    csr.sort_indices()
    m, n = csr.shape
    cols, rows = split_colors(colors, (m, n))
    kc = _count(cols)
    i = np.repeat(np.arange(m, dtype=np.int64), np.diff(csr.indptr))
    j = csr.indices.astype(np.int64)
    ci, rj = cols[j], rows[i]
    by_col = ci >= 0
    by_col[by_col] = _alone(i[by_col] * kc + ci[by_col])  # the row sees this colour once
    by_row = rj >= 0
    by_row[by_row] = _alone(j[by_row] * max(_count(rows), 1) + rj[by_row])
    if not np.all(by_col | by_row):
        bad = np.flatnonzero(~(by_col | by_row))[:3]
        raise ValueError(
            f"the colouring is not a bidirectional colouring of the pattern: entries "
            f"{[(int(i[b]), int(j[b])) for b in bad]} cannot be recovered"
        )
    source = np.where(by_col, i * kc + np.maximum(ci, 0), m * kc + np.maximum(rj, 0) * n + j)
    return csr.indptr, csr.indices, source, None
