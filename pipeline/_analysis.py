"""Analyses of a stored square matrix that never hold it in memory.

`spectrum`: extreme eigenvalues by Lanczos (``scipy.sparse.linalg.eigsh``) on a
`LinearOperator` whose matvec streams the stored matrix one block of columns at
a time: memory is one slab plus a few vectors, whatever ``n``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from diffops_core.internal import InputValueError

from ._store import CURVATURE

if TYPE_CHECKING:  # pragma: no cover
    from ._result import Result

__all__ = ["spectrum", "require_square_complete"]


def require_square_complete(result: Result, what: str) -> None:
    """Refuse, in words, a Jacobian store or an incomplete one."""
    operation = result.meta["operation"]
    if operation not in CURVATURE:
        raise InputValueError(
            f"{what} needs a Hessian or a Gauss-Newton matrix, but {result.location!r} holds a "
            f"{operation}; compute gauss_newton_to_zarr for the Fisher matrix of residuals"
        )
    status = result.status()
    if not status["complete"]:
        raise InputValueError(
            f"{what} needs the whole matrix, but {result.location!r} is incomplete "
            f"({status['blocks_done']}/{status['blocks_total']} blocks); run it again to "
            "finish it first"
        )


class _StreamedMatrix:
    """``v -> M v`` reading the stored matrix block by block (column slabs)."""

    def __init__(self, result: Result, progress: bool):
        self.matrix = result._store.matrix
        self.plan = result._store.plan
        self.axis = result._store.axis
        self.calls = 0
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="diffops spectrum (matvecs)", unit="matvec", mininterval=0.5)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64).reshape(-1)
        out = np.zeros(v.shape[0])
        for block in self.plan:
            span = slice(block.start, block.stop)
            if self.axis == 1:  # column slab (m, b): M v = sum over blocks of M[:, b] v[b]
                out += np.asarray(self.matrix[:, span], np.float64) @ v[span]
            else:  # row slab (b, n)
                out[span] = np.asarray(self.matrix[span, :], np.float64) @ v
        self.calls += 1
        if self.bar is not None:
            self.bar.update(1)
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def extremes(op: Any, k: int, which: str, tol: float = 1e-8, restarts: int = 20) -> list[float]:
    """The ``k`` largest (``which="LA"``, descending) or smallest (``"SA"``,
    ascending) eigenvalues of a symmetric operator by Lanczos, within about
    ``restarts * 20`` products: eigenvalues in a tight cluster (thousands of
    pixels with one noise level) converge slowly, so those not converged by
    then are left out (at least one is returned)."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    ncv = min(op.shape[0], max(2 * k + 1, 20))
    try:
        values = eigsh(op, k, which=which, tol=tol, ncv=ncv, maxiter=restarts,
                       return_eigenvectors=False)  # fmt: skip
    except ArpackNoConvergence as err:
        values = err.eigenvalues
        if len(values) == 0:
            values = eigsh(op, 1, which=which, tol=tol, ncv=ncv, maxiter=10 * restarts,
                           return_eigenvectors=False)  # fmt: skip
    return sorted((float(v) for v in values), reverse=which == "LA")


def spectrum(
    result: Result, k: int = 6, which: str = "both", *, tol: float = 1e-8, progress: bool = True
) -> dict[str, Any]:
    """Extreme eigenvalues and the condition number of a stored symmetric matrix.

    **Returns:** ``{"largest": [...], "smallest": [...], "condition": float,
    "positive_definite": bool, "matvecs": int}`` (``largest`` descending,
    ``smallest`` ascending; only those asked for by ``which``; up to ``k`` each:
    those that converged, see `extremes`). The condition
    number and the verdict need both ends: with ``which="both"`` only.
    """
    from scipy.sparse.linalg import LinearOperator

    require_square_complete(result, "the spectrum")
    if which not in ("both", "largest", "smallest"):
        raise InputValueError(f"which must be 'both', 'largest' or 'smallest', got {which!r}")
    n = result.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise InputValueError(f"k must be an int in [1, {n - 1}] for n={n}, got {k!r}")
    streamed = _StreamedMatrix(result, progress)
    op = LinearOperator((n, n), matvec=streamed, dtype=np.float64)
    out: dict[str, Any] = {}
    try:
        if which in ("both", "largest"):
            out["largest"] = extremes(op, k, "LA", tol)
        if which in ("both", "smallest"):
            out["smallest"] = extremes(op, k, "SA", tol)
    finally:
        streamed.close()
    if which == "both":
        low, high = out["smallest"][0], out["largest"][0]
        out["positive_definite"] = bool(low > 0)
        out["condition"] = float(high / low) if low > 0 else float("inf")
    out["matvecs"] = streamed.calls
    return out
