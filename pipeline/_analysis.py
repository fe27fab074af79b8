"""Analyses of a stored square matrix that never hold it in memory.

`spectrum`: extreme eigenvalues by Lanczos (``scipy.sparse.linalg.eigsh``) on a
`LinearOperator` whose matvec streams the stored matrix one block of columns at
a time: memory is one slab plus a few vectors, whatever ``n``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np

from diffops_core.internal import InputValueError

from ._store import CURVATURE, NONFINITE

if TYPE_CHECKING:  # pragma: no cover
    from ._factor import FactorTask
    from ._result import Result

__all__ = ["InverseProduct", "extremes", "require_square_complete", "spectrum", "streamed_extremes"]

#: Tiles of ``W`` kept in memory across Lanczos products (at most).
_TILE_CACHE_BYTES = 2**30


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
    if status["nonfinite_blocks"]:
        records = result._store.read_records()
        count = int(records[:, NONFINITE].sum())
        blocks = status["nonfinite_blocks"]
        raise InputValueError(
            f"{what} needs a finite matrix, but {result.location!r} holds {count} NaN or "
            f"infinite entries (in blocks {blocks[:8]}{' ...' if len(blocks) > 8 else ''}); "
            "f gives non-finite derivatives at this point: fix the model or the point and "
            "compute it again"
        )


class _StreamedMatrix:
    """``v -> M v`` reading the stored matrix block by block (column slabs);
    slabs are kept in memory up to `_TILE_CACHE_BYTES` (or a quarter of what is
    available), so Lanczos's hundreds of products do not each re-read them."""

    def __init__(self, result: Result, progress: bool):
        import psutil

        self.matrix = result._store.matrix
        self.plan = result._store.plan
        self.axis = result._store.axis
        self.calls = 0
        self.cache: dict[int, np.ndarray] = {}
        self.room = min(_TILE_CACHE_BYTES, psutil.virtual_memory().available // 4)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="diffops spectrum (matvecs)", unit="matvec", mininterval=0.5)

    def slab(self, index: int, span: slice) -> np.ndarray:
        found = self.cache.get(index)
        if found is not None:
            return found
        region = (slice(None), span) if self.axis == 1 else (span, slice(None))
        value = np.asarray(self.matrix[region])
        if value.nbytes <= self.room:
            self.cache[index] = value
            self.room -= value.nbytes
        return value

    def __call__(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64).reshape(-1)
        out = np.zeros(v.shape[0])
        for block in self.plan:
            span = slice(block.start, block.stop)
            slab = self.slab(block.index, span)
            if self.axis == 1:  # column slab (m, b): M v = sum over blocks of M[:, b] v[b]
                out += slab @ v[span]
            else:  # row slab (b, n)
                out[span] = slab @ v
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
    then are left out; then one is tried for longer, and none may come back
    (an empty list: Lanczos cannot resolve that end)."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    ncv = min(op.shape[0], max(2 * k + 1, 20))
    values: Any = []
    try:
        values = eigsh(op, k, which=which, tol=tol, ncv=ncv, maxiter=restarts,
                       return_eigenvectors=False)  # fmt: skip
    except ArpackNoConvergence as err:
        values = err.eigenvalues
        if len(values) == 0:
            with contextlib.suppress(ArpackNoConvergence):
                values = eigsh(op, 1, which=which, tol=tol, ncv=ncv, maxiter=5 * restarts,
                               return_eigenvectors=False)  # fmt: skip
    return sorted((float(v) for v in values), reverse=which == "LA")


class InverseProduct:
    """``v -> (M + d I)⁻¹ v = Wᵀ (W v)`` streaming the stored tiles of ``W = L⁻¹``
    (`_factor`); tiles are kept in memory up to `_TILE_CACHE_BYTES` (or a
    quarter of what is available), so the hundreds of products Lanczos takes
    do not each re-read the store."""

    def __init__(self, task: FactorTask, bar: Any = None):
        import psutil

        self.task, self.arrays, self.calls, self.bar = task, task.arrays(), 0, bar
        self.cache: dict[tuple[int, int], np.ndarray] = {}
        self.room = min(_TILE_CACHE_BYTES, psutil.virtual_memory().available // 4)

    def tile(self, i: int, j: int) -> np.ndarray:
        found = self.cache.get((i, j))
        if found is not None:
            return found
        value = self.task.read(self.arrays, "inverse", i, j)
        if value.nbytes <= self.room:
            self.cache[i, j] = value
            self.room -= value.nbytes
        return value

    def __call__(self, v: np.ndarray) -> np.ndarray:
        task, v = self.task, np.asarray(v, np.float64).reshape(-1)
        y, z = np.zeros(task.n), np.zeros(task.n)
        for j in range(task.tiles):  # W is lower triangular in tiles
            for i in range(j, task.tiles):
                y[task.span(i)] += self.tile(i, j) @ v[task.span(j)]
        for j in range(task.tiles):
            for i in range(j, task.tiles):
                z[task.span(j)] += self.tile(i, j).T @ y[task.span(i)]
        self.calls += 1
        if self.bar is not None:
            self.bar.update(1)
        return z


def streamed_extremes(
    result: Result, k: int, which: str, task: FactorTask | None, progress: bool, tol: float = 1e-8
) -> dict[str, Any]:
    """``largest`` (descending) by Lanczos on ``M`` streamed; ``smallest``
    (ascending) by shift-invert on the factor ``task`` when given (Lanczos on
    ``M⁻¹``, whose largest are the inverses: tens of products where the small
    end of an ill-conditioned ``M`` takes thousands), else by Lanczos on ``M``;
    ``matvecs``: the products."""
    from scipy.sparse.linalg import LinearOperator

    n = result.shape[0]
    streamed = _StreamedMatrix(result, progress)
    out: dict[str, Any] = {"matvecs": 0}
    try:
        op = LinearOperator((n, n), matvec=streamed, dtype=np.float64)
        if which in ("both", "largest"):
            out["largest"] = extremes(op, k, "LA", tol)
        if which in ("both", "smallest") and task is None:
            out["smallest"] = extremes(op, k, "SA", tol)
        elif which in ("both", "smallest"):
            inverse = InverseProduct(task, streamed.bar)  # type: ignore[arg-type]
            op = LinearOperator((n, n), matvec=inverse, dtype=np.float64)
            mu = extremes(op, k, "LA", tol)
            out["smallest"] = sorted(1.0 / np.asarray(mu) - task.damping)  # type: ignore[union-attr]
            out["matvecs"] += inverse.calls
    finally:
        streamed.close()
    out["matvecs"] += streamed.calls
    return out


def spectrum(
    result: Result,
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
    require_square_complete(result, "the spectrum")
    if which not in ("both", "largest", "smallest"):
        raise InputValueError(f"which must be 'both', 'largest' or 'smallest', got {which!r}")
    n = result.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise InputValueError(f"k must be an int in [1, {n - 1}] for n={n}, got {k!r}")
    task = None
    if which != "largest":
        from ._uncertainty import factor

        try:
            task = factor(result, client=client, progress=progress)
        except InputValueError as err:
            if "not positive definite" not in str(err):
                raise
    out = streamed_extremes(result, k, which, task, progress, tol)
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
