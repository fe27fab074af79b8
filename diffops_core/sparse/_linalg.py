"""Marginal standard deviations and covariances of a sparse SPD matrix, exact,
without forming its inverse.

The structured models we fit are a border of dense rows (global parameters)
around a block that is diagonal (a flat field: each pixel couples only to itself
and the globals). For those, the Schur complement on the border is exact and
costs ``O(n k²)`` for ``k`` border rows: with ``S = [[D, B], [Bᵀ, C]]`` (``D``
diagonal), ``M = C - Bᵀ D⁻¹ B`` (``k x k``, dense) and

- ``diag(S⁻¹)`` on the border is ``diag(M⁻¹)``;
- on the rest, ``1/D_ii + ((D⁻¹ B) M⁻¹ (D⁻¹ B)ᵀ)_ii``.

Anything else (a band, a grid, blocks) is factorised by scipy's sparse LU
(SuperLU, a fill-reducing symmetric order, no pivoting off the diagonal: an
SPD matrix needs none) and ``diag(S⁻¹)`` is read off the factor by selected
inversion (`_selinv`), in about ``Σ_j |I_j|²`` operations for the rows ``I_j``
of the factor's columns. Its cost is known once the factor is: what would take
longer than ``max_seconds`` is refused up front, with the estimate. (Solves
against unit vectors, as before, grew as n²: 42 s for a tridiagonal at
n = 4·10⁴, where selected inversion takes milliseconds; benchmarks/RESULTS.md.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .._errors import InputTypeError, InputValueError
from ..curvature import check_damping, diagnose_not_positive_definite
from ._coloring import dense_vertices
from ._selinv import selected_inverse_diagonal, takahashi_cost

__all__ = ["sparse_marginal_variance"]

#: Matrices up to this many entries are diagnosed exactly (all eigenvalues)
#: when they are not positive definite; larger ones by Lanczos.
_EXACT_DIAGNOSIS = 4096**2


def _symmetric(S) -> sp.csr_array:
    S = sp.csr_array(S, dtype=np.float64)
    if S.shape[0] != S.shape[1] or S.shape[0] == 0:
        raise InputValueError(f"S must be a non-empty square matrix, got shape {S.shape}")
    if not np.isfinite(S.data).all():
        raise InputValueError(
            f"S has {int(np.sum(~np.isfinite(S.data)))} non-finite entries; its inverse would "
            "be meaningless. Find where the derivatives are not finite and fix the model"
        )
    return sp.csr_array((S + S.T) / 2)


def _not_positive_definite(S: sp.csr_array, where: str) -> InputValueError:
    name = f"the matrix ({where})"
    n = S.shape[0]
    if n * n <= _EXACT_DIAGNOSIS:
        return InputValueError(diagnose_not_positive_definite(S.toarray(), name)[0])
    advice = (
        "Nothing was regularised: pass damping= (added to the diagonal) to do so explicitly, "
        "or check the model (parameters it does not constrain, or a point that is not a minimum)"
    )
    try:
        low = spla.eigsh(S, k=1, which="SA", return_eigenvectors=False, maxiter=2000)
    except spla.ArpackNoConvergence:
        return InputValueError(f"{name} is not positive definite (Lanczos could not resolve its "
                               f"smallest eigenvalue). {advice}")  # fmt: skip
    return InputValueError(
        f"{name} is not positive definite: its smallest eigenvalue is {low[0]:.3g} (by "
        f"Lanczos). {advice}"
    )


def _schur(S: sp.csr_array, border: np.ndarray) -> np.ndarray | None:
    """``diag(S⁻¹)`` by the Schur complement on ``border`` when the rest is
    diagonal; None when it is not."""
    n = S.shape[0]
    rest = np.setdiff1d(np.arange(n), border)
    inner = S[rest][:, rest]
    if inner.nnz > rest.size or (inner - sp.diags_array(inner.diagonal())).count_nonzero():
        return None
    d = inner.diagonal()
    if (d <= 0).any():
        raise _not_positive_definite(
            S, f"its diagonal entry {int(rest[np.argmin(d)])} is {d.min():.3g}"
        )
    b = S[rest][:, border].toarray()  # (n - k) x k
    c = S[border][:, border].toarray()
    db = b / d[:, None]
    m = c - b.T @ db
    try:
        lower = scipy.linalg.cholesky(m, lower=True)
    except np.linalg.LinAlgError:
        raise _not_positive_definite(S, "its Schur complement on the dense rows") from None
    inv_lower = scipy.linalg.solve_triangular(lower, np.eye(border.size), lower=True)
    m_inv = inv_lower.T @ inv_lower
    out = np.empty(n)
    out[border] = np.diag(m_inv)
    w = db @ inv_lower.T  # (D⁻¹ B) L⁻ᵀ: its row norms squared are the correction
    with np.errstate(over="ignore", divide="ignore"):  # an overflow is refused by the caller
        out[rest] = 1 / d + np.einsum("ij,ij->i", w, w)
    return out


#: Operations of selected inversion a second, measured on this project's
#: 2-core CPU (a 5-point grid at n = 10⁶: 1.6e10 in 42 s); estimates use a
#: slower rate, so a refusal is never optimistic.
_OPS_PER_SECOND = 2e8


def _by_selected_inversion(S: sp.csr_array, max_seconds: float | None) -> np.ndarray:
    try:
        lu = spla.splu(sp.csc_array(S), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                       options={"SymmetricMode": True})  # fmt: skip
    except RuntimeError:
        raise _not_positive_definite(S, "its sparse factorisation failed") from None
    if (lu.U.diagonal() <= 0).any():
        raise _not_positive_definite(S, "a pivot of its factorisation is not positive")
    cost = takahashi_cost(lu.L)
    if max_seconds is not None and cost / _OPS_PER_SECOND > max_seconds:
        raise InputValueError(
            f"the exact variances of this {S.shape[0]}x{S.shape[0]} sparse matrix would take "
            f"about {cost / _OPS_PER_SECOND:.3g} s (selected inversion: {cost:.3g} operations "
            f"on a factor of {lu.L.nnz:,} nonzeros), more than max_seconds={max_seconds:g}; "
            "pass a larger max_seconds (or None) to allow it"
        )
    if not np.array_equal(lu.perm_r, lu.perm_c):
        raise _not_positive_definite(S, "its factorisation pivoted off the diagonal")
    try:
        return selected_inverse_diagonal(lu)
    except ValueError:  # a pattern not closed: the solves against unit vectors, exact
        return _by_solves(lu, S.shape[0])


def _by_solves(lu, n: int, batch: int = 256) -> np.ndarray:
    """``diag(S⁻¹)`` from solves against blocks of unit vectors (``n²`` work: the
    fallback when selected inversion cannot vouch for its pattern)."""
    out = np.empty(n)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        e = np.zeros((n, stop - start))
        e[np.arange(start, stop), np.arange(stop - start)] = 1
        out[start:stop] = lu.solve(e)[np.arange(start, stop), np.arange(stop - start)]
    return out


def sparse_marginal_variance(
    S: Any, damping: Any = 0.0, max_seconds: float | None = 600.0
) -> np.ndarray:
    """``diag((S + damping I)⁻¹)`` of a sparse symmetric positive definite ``S``
    (any `scipy.sparse` matrix), exact, never forming the inverse.

    **Raises:** `ValueError` for a non-square or non-finite ``S``, when it (plus
    the damping) is not positive definite, with the diagnostics the dense path
    gives (smallest eigenvalue, and how to regularise), and, before the work,
    when its estimate exceeds ``max_seconds`` (None: no limit).
    """
    damping = check_damping(damping)
    if max_seconds is not None and (
        isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
    ):
        raise InputTypeError(f"max_seconds must be a number or None, got {max_seconds!r}")
    S = _symmetric(S)
    if damping:
        S = sp.csr_array(S + damping * sp.identity(S.shape[0], format="csr"))
    adjacency = sp.csr_array(S != 0)
    border = dense_vertices(adjacency)
    variance = _schur(S, border)
    if variance is None:
        variance = _by_selected_inversion(S, max_seconds)
    if (variance <= 0).any():
        raise _not_positive_definite(S, "a variance came out not positive")
    if not np.isfinite(variance).all():
        worst = int(np.flatnonzero(~np.isfinite(variance))[0])
        raise InputValueError(
            f"the variance of parameter {worst} overflows float64: the matrix is singular to "
            f"working precision there (its diagonal entry is {S.diagonal()[worst]:.3g}). Pass "
            "damping= (added to the diagonal), or rescale or fix that parameter"
        )
    return variance
