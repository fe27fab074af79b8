"""The extreme eigenvalues and the condition number of a stored curvature
matrix, out of core: Lanczos on the streamed matrix for the large end, and
shift-invert on the stored factor for the small end (`_lanczos`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from diffops_core.internal import InputValueError, sparse_marginal_variance

from .._errors import NotPositiveDefiniteError
from ..store import ResultStore
from ._factor import factor, require_square_complete
from ._lanczos import extremes, streamed_extremes

__all__ = ["spectrum", "verdict"]


def spectrum(
    store: ResultStore,
    k: int = 6,
    which: str = "both",
    *,
    tol: float = 1e-8,
    client: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Extreme eigenvalues and the condition number of a stored symmetric matrix.

    The small end comes from the matrix's Cholesky factor (`Result.marginal_std`
    computes and keeps it; shift-invert) when it is positive definite, else from
    Lanczos on the matrix itself.

    **Returns:** ``{"largest": [...], "smallest": [...], "condition": float,
    "positive_definite": bool, "matvecs": int}`` (``largest`` descending,
    ``smallest`` ascending; only those asked for by ``which``; up to ``k`` each:
    those that converged, see `extremes`), ``asked`` (``k``) and, when an end
    has fewer than ``k``, ``unconverged`` (``{"smallest": 1}``: how many are
    missing). The condition number and the verdict need both ends: with
    ``which="both"`` only.
    """
    require_square_complete(store, "the spectrum", sparse_ok=True)
    if which not in ("both", "largest", "smallest"):
        raise InputValueError(f"which must be 'both', 'largest' or 'smallest', got {which!r}")
    n = store.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise InputValueError(f"k must be an int in [1, {n - 1}] for n={n}, got {k!r}")
    if store.is_sparse:
        out = _sparse_extremes(store, k, which, tol)
    else:
        task = None
        if which != "largest":
            try:
                task = factor(store, client=client, progress=progress)
            except NotPositiveDefiniteError:
                task = None  # the small end from the matrix itself
        out = streamed_extremes(store, k, which, task, progress, tol)
    if which == "both":
        out.update(verdict(out["largest"], out["smallest"]))
    return _say_what_is_missing(out, k)


def _say_what_is_missing(out: dict[str, Any], k: int) -> dict[str, Any]:
    """``asked`` (k), and ``unconverged``: how many of the ``k`` asked for at each
    end Lanczos did not resolve (absent when none), so a shorter list is never
    taken for the whole answer."""
    missing = {end: k - len(out[end]) for end in ("largest", "smallest")
               if end in out and len(out[end]) < k}  # fmt: skip
    out["asked"] = k
    if missing:
        out["unconverged"] = missing
    return out


def _sparse_extremes(store: ResultStore, k: int, which: str, tol: float) -> dict[str, Any]:
    """`streamed_extremes` of a sparse result, in memory (nnz-sized): Lanczos on
    the recovered matrix for the large end; for the small end shift-invert on
    its sparse LU when it is positive definite (as the sparse σ finds it),
    else Lanczos on the matrix."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import LinearOperator, splu

    matrix = store.sparse().astype(np.float64)
    matrix = sp.csr_array((matrix + matrix.T) * 0.5)
    n, calls = matrix.shape[0], [0]

    def counted(apply):
        def matvec(v):
            calls[0] += 1
            return apply(np.asarray(v, np.float64).reshape(-1))

        return LinearOperator((n, n), matvec=matvec, dtype=np.float64)

    out: dict[str, Any] = {}
    op = counted(lambda v: matrix @ v)
    if which in ("both", "largest"):
        out["largest"] = extremes(op, k, "LA", tol)
    if which in ("both", "smallest"):
        try:
            sparse_marginal_variance(matrix)  # positive definite, or it says why
            lu = splu(sp.csc_array(matrix))
        except (ValueError, RuntimeError):  # not positive definite (or singular)
            out["smallest"] = extremes(op, k, "SA", tol)
        else:
            mu = extremes(counted(lu.solve), k, "LA", tol)
            out["smallest"] = sorted(float(v) for v in 1.0 / np.asarray(mu))
    out["matvecs"] = calls[0]
    return out


def verdict(largest: list[float], smallest: list[float]) -> dict[str, Any]:
    """``positive_definite`` and ``condition`` from the two ends (None and NaN
    when an end was not found)."""
    if not largest or not smallest:
        return {"positive_definite": None, "condition": float("nan")}
    low, high = smallest[0], largest[0]
    return {
        "positive_definite": bool(low > 0),
        "condition": float(high / low) if low > 0 else float("inf"),
    }
