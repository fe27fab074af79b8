"""Colourings of a sparsity pattern, and recovering the matrix from the
compressed products (Gebremedhin, Manne & Pothen, "What color is your
Jacobian?", SIAM Review 2005).

- Jacobians: a column colouring (columns of one colour share no row: ``J S``
  gives each nonzero directly) or a row colouring (rows of one colour share no
  column: ``Sᵀ J``), whichever needs fewer; each is at least the densest row
  (column) of the pattern, which decides which one to colour.
- Hessians: a star colouring (a proper colouring in which every path on four
  vertices uses at least three colours), so every nonzero is read directly from
  one compressed product, using the symmetry. The greedy algorithm walks paths
  of length three from each vertex; a dense row would make that quadratic, so
  rows denser than the rest (the globals beside a flat field) take a colour of
  their own each first: no two-coloured path can pass through a colour used
  once, and the rest is coloured without looking through them. Vertices whose
  neighbours are all dense (every pixel of a flat field) then share one
  colour, in one vectorised step; the greedy loop visits only the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numba
import numpy as np
import scipy.sparse as sp

__all__ = [
    "column_coloring",
    "column_plan",
    "dense_vertices",
    "recover",
    "recover_star",
    "row_coloring",
    "row_plan",
    "star_coloring",
    "star_plan",
]  # fmt: skip


#: Steps (a bound on a loop's innermost ones) up to which a compiled loop not
#: yet loaded in this process runs as Python instead: loading it from numba's
#: cache costs a first call 0.1-0.25 s, and Python takes 0.1-0.2 µs a step on
#: small patterns (a band of 600 vertices: 13 ms), so a small problem's first
#: colouring costs milliseconds. The same code either way, the same colours.
_PYTHON_STEPS = 50_000


def _loop(compiled, steps: Callable[[], int]):
    """``compiled`` if loaded in this process already or its ``steps()`` are
    many, else its Python function (`_PYTHON_STEPS`); the bound is counted only
    while the loop is not loaded."""
    return compiled if compiled.signatures or steps() > _PYTHON_STEPS else compiled.py_func


def _distance2_steps(csr: sp.csr_array) -> int:
    """A bound on the distance-2 loops' steps: every row visited once per column in it."""
    lengths = np.diff(csr.indptr).astype(np.int64)
    return int(lengths @ lengths)


def _star_steps(adjacency: sp.csr_array) -> int:
    """A bound on the star colouring loop's steps: its v - w - x - y paths."""
    degree = np.diff(adjacency.indptr).astype(np.int64)
    beyond = sp.csr_array((np.ones(adjacency.indices.size), adjacency.indices,
                           adjacency.indptr), shape=adjacency.shape) @ degree  # fmt: skip
    return int(degree @ beyond)


def _greedy_distance2(pattern: sp.csr_array) -> np.ndarray:
    """Colours of the columns of ``pattern`` such that two columns sharing a row
    differ (1-based), in order of the columns."""
    csc = sp.csc_array(pattern)
    csr = sp.csr_array(pattern)
    return _loop(_distance2, lambda: _distance2_steps(csr))(
        np.asarray(csc.indptr, np.int64), np.asarray(csc.indices, np.int64),
        np.asarray(csr.indptr, np.int64), np.asarray(csr.indices, np.int64), pattern.shape[1],
    )  # fmt: skip


@numba.njit(cache=True, nogil=True)
def _distance2(cptr, cidx, rptr, ridx, n):  # pragma: no cover - compiled
    colors = np.zeros(n, np.int64)
    mark = np.full(n + 2, -1, np.int64)
    for j in range(n):
        for a in range(cptr[j], cptr[j + 1]):
            r = cidx[a]
            for b in range(rptr[r], rptr[r + 1]):
                mark[colors[ridx[b]]] = j
        c = 1
        while mark[c] == j:
            c += 1
        colors[j] = c
    return colors


#: DSATUR keeps each column's neighbours' colours as bits of one word.
_DSATUR_COLOURS = 64


def _dsatur_distance2(pattern: sp.csr_array) -> np.ndarray | None:
    """Colours (1-based) by DSATUR (Brélaz 1979) on the columns' distance-2
    graph: the next column coloured is one whose coloured neighbours (columns
    sharing a row) use the most distinct colours; among those, the one that
    reached that count last (a bucket per count, so each step is O(1)),
    starting from the column with the longest rows. Deterministic. None when
    it would need more than 64 colours."""
    csc = sp.csc_array(pattern)
    csr = sp.csr_array(pattern)
    rptr, ridx = np.asarray(csr.indptr, np.int64), np.asarray(csr.indices, np.int64)
    cptr, cidx = np.asarray(csc.indptr, np.int64), np.asarray(csc.indices, np.int64)
    n = pattern.shape[1]
    weight = np.zeros(n, np.int64)  # the sum of its rows' lengths: its neighbours, about
    nonempty = np.diff(cptr) > 0
    if cidx.size:
        sums = np.add.reduceat(np.diff(rptr)[cidx], cptr[:-1][nonempty])
        weight[nonempty] = sums
    order = np.asarray(np.argsort(-weight, kind="stable"), np.int64)
    colors = _loop(_dsatur, lambda: _distance2_steps(csr))(cptr, cidx, rptr, ridx, n, order)
    return None if n and colors[0] < 0 else colors


@numba.njit(cache=True, nogil=True)
def _dsatur(cptr, cidx, rptr, ridx, n, order):  # pragma: no cover - compiled
    colors = np.zeros(n, np.int64)
    seen = np.zeros(n, np.uint64)  # bit c-1: a neighbour has colour c
    count = np.zeros(n, np.int64)  # distinct colours among the coloured neighbours
    # a stack per count (0..64), grown by doubling; stale entries are skipped
    size, cap = np.zeros(65, np.int64), np.full(65, 16, np.int64)
    stacks = [np.empty(16, np.int64) for _ in range(65)]
    stacks[0], size[0], cap[0] = order[::-1].copy(), n, n  # popped from the end
    top, left = 0, n
    while left > 0:
        while size[top] == 0:
            top -= 1
        size[top] -= 1
        v = stacks[top][size[top]]
        if colors[v] != 0 or count[v] != top:
            continue
        free = ~seen[v]
        if free == 0:
            colors[0] = -1  # more than 64 colours: the caller keeps the greedy one
            return colors
        c = 1
        while not (free >> np.uint64(c - 1)) & np.uint64(1):
            c += 1
        colors[v], left = c, left - 1
        bit = np.uint64(1) << np.uint64(c - 1)
        for a in range(cptr[v], cptr[v + 1]):
            r = cidx[a]
            for b in range(rptr[r], rptr[r + 1]):
                u = ridx[b]
                if colors[u] == 0 and not seen[u] & bit:
                    seen[u] |= bit
                    count[u] += 1
                    level = count[u]
                    if size[level] == cap[level]:
                        grown = np.empty(2 * cap[level], np.int64)
                        grown[: size[level]] = stacks[level][: size[level]]
                        stacks[level], cap[level] = grown, 2 * cap[level]
                    stacks[level][size[level]] = u
                    size[level] += 1
                    top = max(top, level)
    return colors


def _fewest_distance2(pattern: sp.csr_array) -> np.ndarray:
    """The fewer colours (1-based) of the greedy colouring in the columns'
    order and DSATUR's, tried when the greedy one has at most 64 colours and
    more than the densest row (a lower bound): the 5-point stencil's Jacobian
    takes 7 greedily, and 5, the optimum, by DSATUR."""
    greedy = _greedy_distance2(pattern)
    densest = int(np.diff(sp.csr_array(pattern).indptr).max(initial=0))  # a lower bound
    if greedy.size == 0 or greedy.max() > _DSATUR_COLOURS or greedy.max() <= densest:
        return greedy  # (at the bound: optimal already)
    found = _dsatur_distance2(pattern)
    return found if found is not None and found.max() < greedy.max() else greedy


def column_coloring(pattern: sp.csr_array) -> np.ndarray:
    """0-based colours of the columns: no two columns of one colour share a row."""
    return _fewest_distance2(pattern) - 1


def row_coloring(pattern: sp.csr_array) -> np.ndarray:
    """0-based colours of the rows: no two rows of one colour share a column."""
    return _fewest_distance2(sp.csr_array(pattern.T)) - 1


def dense_vertices(adjacency: sp.csr_array) -> np.ndarray:
    """Vertices of more than 10x the median degree (and 16), each of which will
    take a colour of its own; at most sqrt(nnz) of them, the densest (a colour
    each is the price: it stays below the square root of the work it saves; a
    bound on the degree instead missed a small arrowhead's globals, and the
    greedy walk through them was quadratic)."""
    degree = np.diff(adjacency.indptr)
    if degree.size == 0:
        return np.zeros(0, np.int64)
    threshold = max(10 * float(np.median(degree)), 16)
    found = np.flatnonzero(degree > threshold)
    most = int(math.sqrt(max(adjacency.nnz, 1)))
    if found.size > most:  # the densest of them only
        found = np.sort(found[np.argsort(-degree[found], kind="stable")[:most]])
    return found


def _symmetric(pattern) -> sp.csr_array:
    """``pattern`` or its transpose (boolean): a detected Hessian is symmetric as
    a rule, and comparing it with its transpose costs a fifth of the sum
    (at 5·10⁷ nonzeros, 0.6 s against 2.7 s)."""
    a = sp.csr_array(pattern, dtype=bool, copy=True)
    a.sum_duplicates()
    t = sp.csr_array(a.T.tocsr(), dtype=bool)
    t.sum_duplicates()
    if np.array_equal(a.indptr, t.indptr) and np.array_equal(a.indices, t.indices):
        return a
    return sp.csr_array(a + t, dtype=bool)


def star_coloring(pattern: sp.csr_array, symmetric: bool = False) -> np.ndarray:
    """0-based colours of a symmetric pattern's vertices, a star colouring:
    adjacent vertices differ, and every path on four vertices has at least three
    colours (GMP 2005, greedy star colouring), dense vertices one colour each.
    The pattern is made symmetric first, unless the caller knows it is
    (``symmetric``: a ``Jᵀ J``; at n = 10⁶ the sum with the transpose costs
    seconds)."""
    a = sp.csr_array(pattern, dtype=bool, copy=True) if symmetric else _symmetric(pattern)
    a.setdiag(False)
    a.eliminate_zeros()
    n = a.shape[0]
    colors = np.zeros(n, np.int64)  # 0: not coloured yet
    dense = dense_vertices(a)
    colors[dense] = np.arange(1, dense.size + 1)
    base = dense.size
    ptr, idx = a.indptr, a.indices
    if base:  # neighbours only among the dense vertices (a pixel beside its globals):
        # no path through them is two-coloured, so all share the next colour at once
        rest = np.ones(n, bool)
        rest[dense] = False
        # dense neighbours of each vertex: the dense rows' entries (symmetric), counted
        beside = np.concatenate([idx[ptr[d] : ptr[d + 1]] for d in dense])
        others = np.diff(ptr) - np.bincount(beside, minlength=n)  # non-dense neighbours
        colors[rest & (others == 0)] = base + 1
    # largest degree first: a vertex many others see is coloured before them, so
    # they are not forced apart through it while it is uncoloured
    order = np.argsort(-np.diff(ptr), kind="stable")
    order = order[colors[order] == 0]  # the rest: what is coloured already is left alone
    if order.size:  # (a flat field beside its globals is coloured already: numba's
        # compiled loop, loaded from its cache on a first call, is not needed)
        _loop(_star_greedy, lambda: _star_steps(a))(
            np.asarray(ptr, np.int64), np.asarray(idx, np.int64), colors,
            np.asarray(order, np.int64), base,
        )  # fmt: skip
    return colors - 1


@numba.njit(cache=True, nogil=True)
def _star_greedy(ptr, idx, colors, order, base):  # pragma: no cover - compiled
    """The greedy star colouring of ``order``'s vertices, in place (GMP 2005)."""
    forbidden = np.full(colors.size + base + 2, -1, np.int64)
    for v in order:
        for a in range(ptr[v], ptr[v + 1]):
            w = idx[a]
            cw = colors[w]
            if cw:
                forbidden[cw] = v
            if cw and cw <= base:
                continue  # a colour used once: no two-coloured path through w
            for b in range(ptr[w], ptr[w + 1]):
                x = idx[b]
                cx = colors[x]
                if x == v or not cx:
                    continue
                if not cw:
                    forbidden[cx] = v  # v - w - x with w uncoloured: v and x differ
                    continue
                for c in range(ptr[x], ptr[x + 1]):  # v - w - x - y with y coloured as w
                    y = idx[c]
                    if y != w and colors[y] == cw:
                        forbidden[cx] = v
                        break
        c = base + 1
        while forbidden[c] == v:
            c += 1
        colors[v] = c


def seeds(colors: np.ndarray) -> np.ndarray:
    """The (n x colours) 0/1 seed matrix: column k sums the unit vectors of colour k."""
    out = np.zeros((colors.size, int(colors.max()) + 1 if colors.size else 0))
    out[np.arange(colors.size), colors] = 1
    return out


#: Vertices x colours up to which `star_plan` counts in a dense table (int64:
#: 512 MiB at most; 25 colours of 10⁶ vertices take 200 MB).
_DENSE_COUNTS = 2**26


def star_plan(pattern: sp.csr_array, colors: np.ndarray):
    """Where each nonzero of a star-coloured symmetric pattern is read from
    ``B = H S``: ``(indptr, indices, source rows, source columns)`` in CSR order,
    ``H[i, j] = B[i, colour(j)]`` where ``j`` is the only neighbour of ``i``
    (``i`` included) of its colour, else ``B[j, colour(i)]`` (the star colouring
    makes one of them so). Made once per colouring; `recover` applies it.

    **Raises:** `ValueError` when neither is (not a star colouring of it)."""
    sym = sp.csr_array(pattern + pattern.T, dtype=bool)
    sym.sort_indices()
    n = sym.shape[0]
    small = np.int32 if n < 2**31 else np.int64  # half the memory traffic at 10⁷ nonzeros
    rows = np.repeat(np.arange(n, dtype=small), np.diff(sym.indptr))
    cols = sym.indices
    k = int(colors.max()) + 1
    colors = np.asarray(colors, small)
    col_colors, row_colors = colors[cols], colors[rows]
    if n * k <= _DENSE_COUNTS:  # neighbours of each colour per vertex, as a dense table
        flat = rows * small(k)
        flat += col_colors
        tally = np.bincount(flat, minlength=n * k)
        counts = np.minimum(tally, 2).astype(np.uint8).reshape(n, k)  # only "one" matters
        direct = counts[rows, col_colors] == 1
        mirror = counts[cols, row_colors] == 1
    else:  # many colours: the table as a sparse matrix
        onehot = sp.csr_array((np.ones(colors.size), (np.arange(colors.size), colors)),
                              shape=(colors.size, k))  # fmt: skip
        table = sp.csr_array(sym.astype(np.float64) @ onehot)
        direct = np.asarray(table[rows, col_colors]).reshape(-1) == 1
        mirror = np.asarray(table[cols, row_colors]).reshape(-1) == 1
    if not np.all(direct | mirror):
        bad = np.flatnonzero(~(direct | mirror))[:3]
        raise ValueError(
            f"the colouring is not a star colouring of the pattern: entries "
            f"{[(int(rows[b]), int(cols[b])) for b in bad]} cannot be recovered"
        )
    src_r = np.where(direct, rows, cols)
    src_c = np.where(direct, col_colors, row_colors)
    return sym.indptr, cols, src_r, src_c


def column_plan(pattern: sp.csr_array, colors: np.ndarray):
    """As `star_plan`, for a column colouring: ``J[i, j] = B[i, colour(j)]``."""
    csr = sp.csr_array(pattern, dtype=bool)
    csr.sort_indices()
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    return csr.indptr, csr.indices, rows, colors[csr.indices]


def row_plan(pattern: sp.csr_array, colors: np.ndarray):
    """As `star_plan`, for a row colouring of ``B = Sᵀ J``: ``J[i, j] = B[colour(i), j]``."""
    csr = sp.csr_array(pattern, dtype=bool)
    csr.sort_indices()
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    return csr.indptr, csr.indices, colors[rows], csr.indices


def recover(plan, shape, compressed) -> sp.csr_array:
    """The matrix whose nonzeros a plan reads from the compressed products (half
    precision as float32: scipy's sparse arrays have no float16 or bfloat16)."""
    indptr, indices, src_r, src_c = plan
    if src_c is None:  # a flat source (a bidirectional plan: both sides in one buffer)
        values = np.asarray(compressed)[src_r]
    else:
        values = np.asarray(compressed)[src_r, src_c]
    if values.dtype.itemsize < 4:
        values = values.astype(np.float32)
    return sp.csr_array((values, indices, indptr), shape=shape)


def recover_star(pattern: sp.csr_array, colors: np.ndarray, compressed) -> sp.csr_array:
    """``H`` from ``B = H S`` of a star colouring (`star_plan`, then `recover`).

    **Raises:** `ValueError` when it is not a star colouring of the pattern."""
    return recover(star_plan(pattern, colors), pattern.shape, compressed)
