"""The factor of a stored curvature matrix, and what it gives at once: the
marginal standard deviations. The driver behind `Result.marginal_std`; the
covariance, the spectrum and the analysis read the same stored factor."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from diffops_core.internal import (
    InputValueError,
    check_damping,
    diagnose_not_positive_definite,
    sparse_marginal_variance,
)

from .._errors import NotPositiveDefiniteError, NotPositiveDefiniteTile, StoreError
from ..run import (
    Callbacks,
    DistributedExecutor,
    ProgressBar,
    RunEnd,
    RunStart,
    executor_for,
    open_checked,
    smallest_memory_limit,
)
from ..store import (
    CURVATURE,
    DEFAULT_TILE,
    LOWER,
    NONFINITE,
    VARIANCE,
    ResultStore,
    RunLock,
    check_done,
    check_free,
    factor_disk_bytes,
    factor_identity,
    open_or_create,
    read_variance,
    remove_factor,
    stored_identity,
    variances_intact,
)
from ._cholesky import FactorTask, factorise
from ._lanczos import lanczos_diagnosis

__all__ = ["bars", "factor", "marginal_std", "require_square_complete"]

#: Matrices up to this size are diagnosed exactly (assembled, all eigenvalues)
#: when they are not positive definite; larger ones by Lanczos.
EXACT_DIAGNOSIS_BYTES = 512 * 2**20


def bars(progress: bool) -> list:
    """The callbacks a linear-algebra run reports to: the progress bar, or none."""
    return [ProgressBar()] if progress else []


def require_square_complete(store: ResultStore, what: str, sparse_ok: bool = False) -> None:
    """Refuse, in words, a Jacobian store, an incomplete one or one holding
    non-finite entries (from the records), and, unless ``sparse_ok``, a sparse
    result (the tiled factor reads a dense matrix)."""
    if store.is_sparse and not sparse_ok:
        raise InputValueError(
            f"{what} reads a dense stored matrix, but {store.location!r} holds a sparse result "
            "(compressed products): Result.marginal_std() and Result.spectrum() take it, and "
            "Result.sparse() gives the scipy matrix for the rest (diffops_core.covariance "
            "of it, when it fits)"
        )
    operation = store.meta["operation"]
    if operation not in CURVATURE:
        raise InputValueError(
            f"{what} needs a Hessian or a Gauss-Newton matrix, but {store.location!r} holds a "
            f"{operation}; compute gauss_newton_to_zarr for the Fisher matrix of residuals"
        )
    status = store.status()
    if not status["complete"]:
        raise InputValueError(
            f"{what} needs the whole matrix, but {store.location!r} is incomplete "
            f"({status['blocks_done']}/{status['blocks_total']} blocks); run it again to "
            "finish it first"
        )
    if status["nonfinite_blocks"]:
        count = int(store.read_records()[:, NONFINITE].sum())
        blocks = status["nonfinite_blocks"]
        raise InputValueError(
            f"{what} needs a finite matrix, but {store.location!r} holds {count} NaN or "
            f"infinite entries (in blocks {blocks[:8]}{' ...' if len(blocks) > 8 else ''}); "
            "f gives non-finite derivatives at this point: fix the model or the point and "
            "compute it again"
        )


def choose_tile(store: ResultStore, tile: Any, damping: float, client: Any) -> int:
    """The tile: as given; else the stored factor's (same matrix and damping);
    else `DEFAULT_TILE`, smaller when six float64 tiles would not fit in half a
    task's memory."""
    n = store.shape[0]
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise InputValueError(f"tile must be a positive int, got {tile!r}")
        return int(min(int(tile), n))
    ident = stored_identity(store.group)
    if ident and ident == factor_identity(store, damping, int(ident.get("tile") or 0)):
        return int(ident["tile"])
    fits = int(math.sqrt(smallest_memory_limit(client) / 2 / 6 / 8))
    return max(1, min(n, DEFAULT_TILE, fits))


def _diagnosis(
    store: ResultStore, damping: float, err: NotPositiveDefiniteTile, progress: bool
) -> NotPositiveDefiniteError:
    """The error for a matrix that failed to factorise, with the in-memory
    diagnostics (smallest eigenvalue, how many are not positive, the worst's
    relative size): exact for a matrix small enough to assemble, else by Lanczos."""
    name = (
        f"the matrix at {store.location!r} (its Cholesky factorisation broke down in columns "
        f"{err.start}:{err.stop})"
    )
    where = {"location": store.location, "columns": (err.start, err.stop), "damping": damping}
    if store.nbytes <= EXACT_DIAGNOSIS_BYTES:
        a = np.asarray(store.assemble(), np.float64)
        a[np.diag_indices_from(a)] += damping
        message, smallest, bad = diagnose_not_positive_definite(a, name)
        return NotPositiveDefiniteError(message, smallest=smallest, nonpositive=bad, **where)
    message, smallest, bad = lanczos_diagnosis(store, damping, name, progress)
    return NotPositiveDefiniteError(message, smallest=smallest, nonpositive=bad, **where)


def factor(
    store: ResultStore,
    *,
    damping: Any = 0.0,
    tile: Any = None,
    client: Any = None,
    progress: bool = True,
    verify: bool = False,
) -> FactorTask:
    """Factorise ``store``'s matrix (plus ``damping``) into its ``factor/`` group,
    resuming what is recorded; the `FactorTask` of a complete factor.

    Stored tiles are checked against their records whenever work is left (and
    with ``verify``, always: the covariance reads every tile of ``W``); a
    complete factor's variances are checked when they are read.

    **Raises:** `NotPositiveDefiniteError` (the in-memory diagnostics) when it is
    not positive definite; nothing of the failed factorisation is left.
    """
    damping = check_damping(damping)
    require_square_complete(store, "the marginal standard deviations")
    identity = factor_identity(store, damping, choose_tile(store, tile, damping, client))
    task = FactorTask(store.location, identity["n"], identity["tile"], damping)
    with RunLock(store.location):
        records = _prepare(store, task, identity, verify)
        tiles = task.tiles
        todo = int(np.sum(np.tril(records[LOWER] == 0))) + int(
            np.sum(np.diagonal(records[VARIANCE]) == 0)
        )
        listeners = Callbacks(bars(progress))
        total = tiles * (tiles + 1) // 2 + tiles
        listeners.on_run_start(RunStart(None, tuple(range(todo)), total - todo,
                                        label="diffops factor (tiles)", unit="tile"))  # fmt: skip
        status, failure = "failed", None
        try:
            factorise(task, records, executor_for(client), listeners)
            status = "complete"
        except NotPositiveDefiniteTile as err:
            failure = err
        finally:  # the bar closes before the diagnosis prints its own progress
            listeners.on_run_end(RunEnd(status, 0.0))
        if failure is not None:
            remove_factor(store.location)
            raise _diagnosis(store, damping, failure, progress) from None
    return task


def _prepare(store: ResultStore, task: FactorTask, identity: dict, verify: bool) -> np.ndarray:
    """The factor group ready for ``identity`` (room on disk and a matrix that
    matches its records before a new one is written), and its records with
    those whose tiles no longer match cleared."""
    new = stored_identity(store.group) != identity
    if new:
        need = factor_disk_bytes(identity["n"], identity["tile"])
        check_free(store.location, need, f"the Cholesky factor (tile {identity['tile']})")
        _require_verified(store)
    open_or_create(store, identity)
    records = check_done(task, tiles=verify or not variances_intact(task))
    if not new and np.tril(records[LOWER] == 0).any():
        _require_verified(store)  # tiles of L are still to be read from the matrix
    return records


def _require_verified(store: ResultStore) -> None:
    """Refuse to factorise a matrix whose blocks no longer match their records:
    a factor of a damaged matrix would outlive its repair."""
    bad = store.verify()
    if bad:
        raise StoreError(
            f"blocks {bad[:8]}{' ...' if len(bad) > 8 else ''} of {store.location!r} no longer "
            "match their checksums, so no factor is made from them; run diffops verify "
            "--repair on the store, then try again"
        )


def _sparse_variance(store: ResultStore | Any, damping: float) -> np.ndarray:
    """The marginal variances of a sparse result (a store, or its location: as
    a task on a worker, which opens it there)."""
    if not isinstance(store, ResultStore):  # on a worker: its self-check's matrix, if kept
        store = open_checked(store)
    return sparse_marginal_variance(store.sparse(), damping)


def marginal_std(store: ResultStore, x: Any = None, **options: Any) -> Any:
    """``sqrt(diag((M + damping I)⁻¹))`` as a pytree of float64 numpy arrays;
    ``options`` as `factor`'s. A sparse result's variances come from its
    recovered matrix in memory (nnz-sized, `diffops_core`'s sparse path: a
    Schur complement on its dense rows, or a sparse factorisation), in one task
    on ``client``'s cluster when given (else here); ``tile`` is then not used,
    and nothing is stored.

    **Raises:** as `factor`; for a sparse result, `ValueError` with the same
    diagnostics when it is not positive definite."""
    if store.is_sparse:
        require_square_complete(store, "marginal_std", sparse_ok=True)
        damping, client = options.get("damping", 0.0), options.get("client")
        if client is not None:  # on a worker: the driver never holds the matrix
            variance = DistributedExecutor(client).call(
                _sparse_variance, store.location, damping, near=store.location
            )
        else:
            variance = _sparse_variance(store, damping)
        std = np.sqrt(variance)
    else:
        std = np.sqrt(read_variance(factor(store, **options)))
    _rows, cols = store.layouts(x)
    return cols.unflatten_list([std[leaf.slice].reshape(leaf.shape) for leaf in cols.leaves])
