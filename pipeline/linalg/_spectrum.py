"""The extreme eigenvalues and the condition number of a stored curvature
matrix, out of core: Lanczos on the streamed matrix for the large end, and
shift-invert on the stored factor for the small end (`_lanczos`)."""

from __future__ import annotations

from typing import Any

from diffops_core.internal import InputValueError

from .._errors import NotPositiveDefiniteError
from ..store import ResultStore
from ._factor import factor, require_square_complete
from ._lanczos import streamed_extremes

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
    those that converged, see `extremes`). The condition number and the verdict
    need both ends: with ``which="both"`` only.
    """
    require_square_complete(store, "the spectrum")
    if which not in ("both", "largest", "smallest"):
        raise InputValueError(f"which must be 'both', 'largest' or 'smallest', got {which!r}")
    n = store.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise InputValueError(f"k must be an int in [1, {n - 1}] for n={n}, got {k!r}")
    task = None
    if which != "largest":
        try:
            task = factor(store, client=client, progress=progress)
        except NotPositiveDefiniteError:
            task = None  # the small end from the matrix itself
    out = streamed_extremes(store, k, which, task, progress, tol)
    if which == "both":
        out.update(verdict(out["largest"], out["smallest"]))
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
