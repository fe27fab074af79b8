"""Marginal standard deviations and covariances of a sparse SPD matrix, exact,
without forming its inverse.

The structured models we fit are a border of dense rows (global parameters)
around a block that is diagonal (a flat field: each pixel couples only to itself
and the globals). For those, the Schur complement on the border is exact and
costs ``O(n k²)`` for ``k`` border rows: with ``S = [[D, B], [Bᵀ, C]]`` (``D``
diagonal), ``M = C - Bᵀ D⁻¹ B`` (``k x k``, dense) and

- ``diag(S⁻¹)`` on the border is ``diag(M⁻¹)``;
- on the rest, ``1/D_ii + ((D⁻¹ B) M⁻¹ (D⁻¹ B)ᵀ)_ii``.

Anything else is factorised by scipy's sparse LU (SuperLU, a fill-reducing
column order, no pivoting off the diagonal: an SPD matrix needs none) and
``diag(S⁻¹)`` is read from solves against blocks of unit vectors. The first
is what a flat field beside a few dozen globals needs at a million parameters;
the second is exact for any sparse SPD matrix of moderate size. Chosen by
measurement: on the PSF demo's arrowhead (n = 4120) the Schur complement takes
milliseconds where the solves take seconds (benchmarks/RESULTS.md, sparse PSF).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .._errors import InputValueError
from ..curvature import check_damping, diagnose_not_positive_definite
from ._coloring import dense_vertices

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


def _by_solves(S: sp.csr_array, batch: int = 256) -> np.ndarray:
    n = S.shape[0]
    try:
        lu = spla.splu(sp.csc_array(S), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                       options={"SymmetricMode": True})  # fmt: skip
    except RuntimeError:
        raise _not_positive_definite(S, "its sparse factorisation failed") from None
    if (lu.U.diagonal() <= 0).any():
        raise _not_positive_definite(S, "a pivot of its factorisation is not positive")
    out = np.empty(n)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        e = np.zeros((n, stop - start))
        e[np.arange(start, stop), np.arange(stop - start)] = 1
        out[start:stop] = lu.solve(e)[np.arange(start, stop), np.arange(stop - start)]
    return out


def sparse_marginal_variance(S: Any, damping: Any = 0.0) -> np.ndarray:
    """``diag((S + damping I)⁻¹)`` of a sparse symmetric positive definite ``S``
    (any `scipy.sparse` matrix), exact, never forming the inverse.

    **Raises:** `ValueError` for a non-square or non-finite ``S``, and when it
    (plus the damping) is not positive definite, with the diagnostics the dense
    path gives (smallest eigenvalue, and how to regularise).
    """
    damping = check_damping(damping)
    S = _symmetric(S)
    if damping:
        S = sp.csr_array(S + damping * sp.identity(S.shape[0], format="csr"))
    adjacency = sp.csr_array(S != 0)
    border = dense_vertices(adjacency)
    variance = _schur(S, border)
    if variance is None:
        variance = _by_solves(S)
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
