"""Selected inversion: ``diag(S⁻¹)`` of a sparse symmetric positive definite
``S`` from its sparse factorisation, without forming the inverse or solving
against unit vectors (Takahashi, Fagan & Chen 1973; Erisman & Tinney 1975).

``P S Pᵀ = L D Lᵀ`` comes from SuperLU (scipy's `splu`, a fill-reducing
symmetric ordering, no pivoting off the diagonal: an SPD matrix needs none).
``Z = (L D Lᵀ)⁻¹`` is then computed on the pattern of ``L`` only, column by
column from the last: with ``I`` the rows of column ``j`` below the diagonal and
``l = L[I, j]``,

    Z[I, j] = -Z[I, I] l,        Z[j, j] = 1 / d_j - lᵀ Z[I, j],

where every ``Z[a, b]`` needed lies on ``L``'s pattern (the pattern of a
Cholesky factor is closed under its elimination tree). The cost is about
``Σ_j |I_j|²`` operations and the memory one more copy of ``L``: for a band of 7
diagonals or a 5-point grid at n = 10⁶ seconds, where ``n`` solves took hours
(benchmarks/RESULTS.md, sparse σ). The loop is compiled by numba.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

__all__ = ["selected_inverse_diagonal", "takahashi_cost"]


@numba.njit(cache=True, nogil=True)
def _takahashi(indptr, indices, values, d):  # pragma: no cover - compiled
    n = d.size
    z = np.zeros(values.size)  # Z on L's pattern (below the diagonal), CSC like L
    zdiag = np.zeros(n)
    acc = np.zeros(n)
    where = np.full(n, -1, np.int64)  # row -> its place in column j's rows, else -1
    for j in range(n - 1, -1, -1):
        found = 0
        start, stop = indptr[j], indptr[j + 1]
        count = stop - start
        for a in range(count):
            acc[a] = 0.0
            where[indices[start + a]] = a
        last = indices[stop - 1] if count else -1
        for a in range(count):
            k = indices[start + a]
            lk = values[start + a]
            acc[a] += zdiag[k] * lk
            # Z[r, k] for the rows r > k of column j: read from column k of Z
            total = 0.0
            for p in range(indptr[k], indptr[k + 1]):
                r = indices[p]
                if r > last:
                    break
                b = where[r]
                if b >= 0:
                    acc[b] += z[p] * lk
                    total += z[p] * values[start + b]
                    found += 1
            acc[a] += total
        total = 0.0
        for a in range(count):
            z[start + a] = -acc[a]
            total += values[start + a] * acc[a]
            where[indices[start + a]] = -1
        zdiag[j] = 1.0 / d[j] + total
        if found != count * (count - 1) // 2:  # a Z[r, k] needed is not on L's pattern
            return zdiag, False
    return zdiag, True


def _strictly_lower(L) -> sp.csc_array:
    """``L`` without its (unit) diagonal, CSC with sorted rows, int64 indices."""
    L = sp.csc_array(sp.tril(L, k=-1, format="csc"))
    L.sort_indices()
    return L


def takahashi_cost(L) -> float:
    """About how many operations `selected_inverse_diagonal` takes for a factor
    ``L``: ``Σ_j |I_j|²``, ``I_j`` the rows of column ``j`` below the diagonal."""
    counts = np.diff(sp.csc_array(L).indptr).astype(np.float64) - 1  # the diagonal
    return float(np.sum(np.maximum(counts, 0) ** 2))


def selected_inverse_diagonal(lu) -> np.ndarray:
    """``diag(S⁻¹)`` from SuperLU's factorisation ``lu`` of a symmetric positive
    definite ``S`` made with a symmetric ordering and no off-diagonal pivoting
    (``perm_r == perm_c``; ``U = D Lᵀ``), in ``S``'s own order.

    **Raises:** `ValueError` when the factorisation is not of that form, or
    when its pattern lacks an entry the recurrence needs (SuperLU dropped an
    exact zero): checked as it runs, never read as zero."""
    if not np.array_equal(lu.perm_r, lu.perm_c):
        raise ValueError("the factorisation pivoted off the diagonal: not symmetric")
    d = np.asarray(lu.U.diagonal(), np.float64)
    L = _strictly_lower(lu.L)
    zdiag, closed = _takahashi(
        L.indptr.astype(np.int64), L.indices.astype(np.int64), L.data.astype(np.float64), d
    )
    if not closed:
        raise ValueError("the factor's pattern is not closed (an entry was dropped)")
    return zdiag[lu.perm_r]
