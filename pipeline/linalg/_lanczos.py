"""Lanczos on a stored square matrix that is never held in memory.

`StreamedMatrix` is ``v -> M v`` streaming the stored matrix one block of
columns at a time; `InverseProduct` is ``v -> (M + d I)⁻¹ v = Wᵀ (W v)``
streaming the stored tiles of ``W = L⁻¹``. Both keep what they read in one
byte-bounded cache (`BoundedCache`), so Lanczos's hundreds of products do not
each re-read the store; `extremes` runs ``scipy.sparse.linalg.eigsh`` on
either.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

from ..run import BlockEvent, Callback, Callbacks, ProgressBar, RunEnd, RunStart
from ..store import ResultStore, read_region
from ._cholesky import FactorTask

__all__ = [
    "BoundedCache",
    "InverseProduct",
    "StreamedMatrix",
    "extremes",
    "lanczos_diagnosis",
    "products",
    "streamed_extremes",
]

#: What the cache of one operator holds at most (or a quarter of what is available).
CACHE_BYTES = 2**30


class BoundedCache:
    """Arrays by key, kept while they fit in `CACHE_BYTES` (or a quarter of the
    memory available when it is made); what does not fit is read every time."""

    def __init__(self, read: Callable[[Any], np.ndarray]):
        self.read = read
        self.cache: dict[Any, np.ndarray] = {}
        self.room = min(CACHE_BYTES, psutil.virtual_memory().available // 4)

    def __call__(self, key) -> np.ndarray:
        found = self.cache.get(key)
        if found is not None:
            return found
        value = self.read(key)
        if value.nbytes <= self.room:
            self.cache[key] = value
            self.room -= value.nbytes
        return value


@contextlib.contextmanager
def products(progress: bool) -> Iterator[Callback]:
    """The callbacks Lanczos products report to (one event per product): the
    progress bar, or none, started and ended around the block."""
    listeners = Callbacks([ProgressBar()] if progress else [])
    listeners.on_run_start(
        RunStart(None, (), 0, label="diffops spectrum (matvecs)", unit="matvec", total=None)
    )
    try:
        yield listeners
    finally:
        listeners.on_run_end(RunEnd("complete", 0.0))


class _Counted:
    """A product that counts its calls and reports each to ``callbacks``."""

    def __init__(self, callbacks: Callback):
        self.callbacks, self.calls, self._events = callbacks, 0, itertools.count()

    def _done(self) -> None:
        self.calls += 1
        self.callbacks.on_block_end(BlockEvent(index=next(self._events), start=0, stop=0))


class StreamedMatrix(_Counted):
    """``v -> M v`` reading the stored matrix block by block (column or row slabs)."""

    def __init__(self, store: ResultStore, callbacks: Callback):
        super().__init__(callbacks)
        self.matrix, self.plan, self.axis = store.matrix, store.plan, store.axis
        self.slab = BoundedCache(self._read)

    def _read(self, index: int) -> np.ndarray:
        block = self.plan.block(index)
        span = slice(block.start, block.stop)
        region = (slice(None), span) if self.axis == 1 else (span, slice(None))
        return read_region(self.matrix, *region)

    def diagonal(self) -> np.ndarray:
        """The matrix's diagonal, from the cached slabs."""
        return np.concatenate(
            [np.diagonal(self.slab(b.index)[b.start : b.stop]) for b in self.plan]
        )

    def __call__(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64).reshape(-1)
        out = np.zeros(v.shape[0])
        for block in self.plan:
            span = slice(block.start, block.stop)
            slab = self.slab(block.index)
            if self.axis == 1:  # column slab (m, b): M v = sum over blocks of M[:, b] v[b]
                out += slab @ v[span]
            else:  # row slab (b, n)
                out[span] = slab @ v
        self._done()
        return out


class InverseProduct(_Counted):
    """``v -> (M + d I)⁻¹ v = Wᵀ (W v)`` streaming the stored tiles of ``W = L⁻¹``."""

    def __init__(self, task: FactorTask, callbacks: Callback):
        super().__init__(callbacks)
        self.task, self.arrays = task, task.arrays()
        self.tile = BoundedCache(lambda ij: self.task.read(self.arrays, "inverse", *ij))

    def __call__(self, v: np.ndarray) -> np.ndarray:
        task, v = self.task, np.asarray(v, np.float64).reshape(-1)
        y, z = np.zeros(task.n), np.zeros(task.n)
        for j in range(task.tiles):  # W is lower triangular in tiles
            for i in range(j, task.tiles):
                y[task.span(i)] += self.tile((i, j)) @ v[task.span(j)]
        for j in range(task.tiles):
            for i in range(j, task.tiles):
                z[task.span(j)] += self.tile((i, j)).T @ y[task.span(i)]
        self._done()
        return z


def operator(product: Callable, n: int) -> LinearOperator:
    return LinearOperator((n, n), matvec=product, dtype=np.float64)


def extremes(op: Any, k: int, which: str, tol: float = 1e-8, restarts: int = 20) -> list[float]:
    """The ``k`` largest (``which="LA"``, descending) or smallest (``"SA"``,
    ascending) eigenvalues of a symmetric operator by Lanczos, within about
    ``restarts * 20`` products: eigenvalues in a tight cluster (thousands of
    pixels with one noise level) converge slowly, so those not converged by
    then are left out; then one is tried for longer, and none may come back
    (an empty list: Lanczos cannot resolve that end)."""

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


def streamed_extremes(
    store: ResultStore,
    k: int,
    which: str,
    task: FactorTask | None,
    progress: bool,
    tol: float = 1e-8,
) -> dict[str, Any]:
    """``largest`` (descending) by Lanczos on ``M`` streamed; ``smallest``
    (ascending) by shift-invert on the factor ``task`` when given (Lanczos on
    ``M⁻¹``, whose largest are the inverses: tens of products where the small
    end of an ill-conditioned ``M`` takes thousands), else by Lanczos on ``M``;
    ``matvecs``: the products."""
    n = store.shape[0]
    out: dict[str, Any] = {}
    with products(progress) as listeners:
        streamed = StreamedMatrix(store, listeners)
        inverse = InverseProduct(task, listeners) if task is not None else None
        if which in ("both", "largest"):
            out["largest"] = extremes(operator(streamed, n), k, "LA", tol)
        if which in ("both", "smallest"):
            out["smallest"] = _smallest(streamed, inverse, n, k, tol)
    out["matvecs"] = streamed.calls + (inverse.calls if inverse is not None else 0)
    return out


def _smallest(streamed, inverse: InverseProduct | None, n: int, k: int, tol: float) -> list:
    if inverse is None:
        return extremes(operator(streamed, n), k, "SA", tol)
    mu = extremes(operator(inverse, n), k, "LA", tol)
    return sorted(1.0 / np.asarray(mu) - inverse.task.damping)


def lanczos_diagnosis(
    store: ResultStore, damping: float, name: str, progress: bool
) -> tuple[str, float | None, int | None]:
    """(the message, the smallest eigenvalue, how many found are <= 0) for a
    matrix too large to assemble that has no Cholesky factor, by Lanczos."""
    n = store.shape[0]
    spec = streamed_extremes(store, min(6, n - 1), "both", None, progress)
    if not spec["smallest"] or not spec["largest"]:
        return (
            f"{name} is not positive definite (Lanczos could not resolve its smallest "
            f"eigenvalues in {spec['matvecs']} products). Nothing was regularised: pass "
            "damping= (added to the diagonal) to do so explicitly"
        ), None, None  # fmt: skip
    low = np.asarray(spec["smallest"]) + damping
    high = float(spec["largest"][0]) + damping
    scale = max(abs(high), abs(float(low[0])))
    bad = int(np.sum(low <= 0))
    least = "at least " if bad == len(low) else ""  # all those found: maybe more
    return (
        f"{name} is not positive definite: its smallest eigenvalue "
        f"is {low[0]:.3g} ({least}{bad} of its {n} eigenvalues <= 0, "
        f"by Lanczos; the most negative is {abs(low[0]) / scale:.2g} of the largest in size). "
        "Nothing was regularised: pass damping= (added to the diagonal) to do so "
        "explicitly, or check the model (parameters it does not constrain, or a point that is "
        "not a minimum)"
    ), float(low[0]), bad  # fmt: skip
