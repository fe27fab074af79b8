"""Marginal standard deviations and covariances of a stored Hessian or
Gauss–Newton matrix, out of core (`_factor`): the drivers behind
`Result.marginal_std` and `Result.covariance`."""

from __future__ import annotations

import math
import time
import uuid
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from diffops_core.internal import BlockPlan, InputValueError, check_damping, not_positive_definite

from ._analysis import require_square_complete
from ._factor import (
    DEFAULT_TILE,
    LOWER,
    FactorTask,
    NotPositiveDefiniteTile,
    check_done,
    factor_identity,
    factorise,
    open_or_create,
    read_variance,
    remove_factor,
    run_tasks,
    stored_identity,
    variances_intact,
)
from ._fingerprint import sha256_json
from ._store import (
    RECORD_FIELDS,
    ResultStore,
    RunLock,
    StoreError,
    check_free,
    describe_foreign,
    factor_disk_bytes,
    inspect,
    normalise_location,
    overlapping,
    read_meta,
)

if TYPE_CHECKING:  # pragma: no cover
    from ._result import Result

__all__ = ["covariance", "factor", "marginal_std"]

#: Matrices up to this size are diagnosed exactly (assembled, all eigenvalues)
#: when they are not positive definite; larger ones by Lanczos.
_EXACT_DIAGNOSIS_BYTES = 512 * 2**20


def _memory_limit(client: Any) -> int:
    """The memory one task may count on: the smallest worker limit, or what this
    machine has available."""
    if client is not None:
        limits = [
            int(w.get("memory_limit") or 0)
            for w in client.scheduler_info().get("workers", {}).values()
        ]
        limits = [lim for lim in limits if lim > 0]
        if limits:
            return min(limits)
    return int(psutil.virtual_memory().available)


def _tile(result: Result, tile: Any, damping: float, client: Any) -> int:
    """The tile: as given; else the stored factor's (same matrix and damping);
    else `DEFAULT_TILE`, smaller when six float64 tiles would not fit in half a
    task's memory."""
    n = result.shape[0]
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise InputValueError(f"tile must be a positive int, got {tile!r}")
        return int(min(int(tile), n))
    ident = stored_identity(result._store.group)
    if ident and ident == factor_identity(result, damping, int(ident.get("tile") or 0)):
        return int(ident["tile"])
    fits = int(math.sqrt(_memory_limit(client) / 2 / 6 / 8))
    return max(1, min(n, DEFAULT_TILE, fits))


def _diagnosis(result: Result, damping: float, err: NotPositiveDefiniteTile, progress: bool) -> str:
    """The in-memory diagnostics (smallest eigenvalue, how many are not positive,
    the worst's relative size) for a matrix that failed to factorise."""
    name = (
        f"the matrix at {result.location!r} (its Cholesky factorisation broke down in columns "
        f"{err.start}:{err.stop})"
    )
    if result.nbytes <= _EXACT_DIAGNOSIS_BYTES:
        a = np.asarray(result.assemble(), np.float64)
        a[np.diag_indices_from(a)] += damping
        return not_positive_definite(a, name)
    from ._analysis import streamed_extremes

    n = result.shape[0]
    k = min(6, n - 1)
    spec = streamed_extremes(result, k, "both", None, progress)
    if not spec["smallest"] or not spec["largest"]:
        return (
            f"{name} is not positive definite (Lanczos could not resolve its smallest "
            f"eigenvalues in {spec['matvecs']} products). Nothing was regularised: pass "
            "damping= (added to the diagonal) to do so explicitly"
        )
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
    )


def factor(
    result: Result,
    *,
    damping: Any = 0.0,
    tile: Any = None,
    client: Any = None,
    progress: bool = True,
    verify: bool = False,
) -> FactorTask:
    """Factorise ``result``'s matrix (plus ``damping``) into its ``factor/`` group,
    resuming what is recorded; the `FactorTask` of a complete factor.

    Stored tiles are checked against their records whenever work is left (and
    with ``verify``, always: the covariance reads every tile of ``W``); a
    complete factor's variances are checked when they are read.

    **Raises:** `ValueError` (the in-memory diagnostics) when it is not positive
    definite; nothing of the failed factorisation is left in the store.
    """
    damping = check_damping(damping)
    require_square_complete(result, "the marginal standard deviations")
    identity = factor_identity(result, damping, _tile(result, tile, damping, client))
    with RunLock(result.location):
        new = stored_identity(result._store.group) != identity
        if new:  # room for all of it, and a matrix that matches its records, before any write
            need = factor_disk_bytes(identity["n"], identity["tile"])
            check_free(result.location, need, f"the Cholesky factor (tile {identity['tile']})")
            _require_verified(result)
        task = open_or_create(result, identity)
        records = check_done(task, tiles=verify or not variances_intact(task))
        if not new and np.tril(records[LOWER] == 0).any():
            _require_verified(result)  # tiles of L are still to be read from the matrix
        tiles = task.tiles
        bar = _bar(progress, tiles * (tiles + 1) // 2 + tiles, "diffops factor (tiles)")
        try:
            factorise(task, records, client, bar)
        except NotPositiveDefiniteTile as err:
            remove_factor(result.location)
            bar.close()  # before the diagnosis prints its own progress
            raise InputValueError(_diagnosis(result, damping, err, progress)) from None
        finally:
            bar.close()
    return task


def _require_verified(result: Result) -> None:
    """Refuse to factorise a matrix whose blocks no longer match their records:
    a factor of a damaged matrix would outlive its repair."""
    bad = result.verify()
    if bad:
        raise StoreError(
            f"blocks {bad[:8]}{' ...' if len(bad) > 8 else ''} of {result.location!r} no longer "
            "match their checksums, so no factor is made from them; run diffops verify "
            "--repair on the store, then try again"
        )


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(progress: bool, total: int, desc: str, unit: str = "tile") -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, mininterval=0.5)


def marginal_std(
    result: Result,
    x: Any = None,
    *,
    damping: Any = 0.0,
    tile: Any = None,
    client: Any = None,
    progress: bool = True,
) -> Any:
    """``sqrt(diag((M + damping I)⁻¹))`` as a pytree of float64 numpy arrays."""
    task = factor(result, damping=damping, tile=tile, client=client, progress=progress)
    std = np.sqrt(read_variance(task))
    _rows, cols = result.layouts(x)
    return cols.unflatten_list([std[leaf.slice].reshape(leaf.shape) for leaf in cols.leaves])


# -- the covariance as a stored result ------------------------------------------------


def _covariance_meta(result: Result, task: FactorTask, identity: dict) -> dict:
    source = result.meta
    parts = dict(source.get("fingerprint_parts") or {})
    fingerprint_parts = {
        "function": f"covariance of ({parts.get('function')})",
        "source": source["fingerprint"],
        "matrix": identity["blocks"],
        "options": {"damping": task.damping, "tile": task.tile},
        "versions": parts.get("versions") or {},
    }
    n = task.n
    return {
        "operation": "covariance",
        "op": "cholesky",
        "mode": None,
        "shape": [n, n],
        "dtype": "float64",
        "axis": 1,
        "output_shape": [list(s) for s in source.get("output_shape") or []],
        "plan": BlockPlan(n, task.tile).to_json(),
        "in_layout": source["in_layout"],
        "out_layout": source["in_layout"],
        "fingerprint": sha256_json(fingerprint_parts),
        "fingerprint_parts": fingerprint_parts,
        "options": fingerprint_parts["options"],
        "compressor": None,
        "source": str(result.location),
    }


def _may_write(location: Any, fingerprint: str | None, overwrite: bool) -> bool:
    """Whether the covariance store at ``location`` is this covariance (resume
    it). Refuses what is not ours, and another result without ``overwrite``,
    before anything is computed or written."""
    state = inspect(location)
    if state == "foreign":
        raise StoreError(describe_foreign(location))
    if state == "ours":
        stored = read_meta(location)
        if stored.get("ready") and stored.get("fingerprint") == fingerprint:
            return True
        if not overwrite:
            raise StoreError(
                f"the store {location!r} holds another result ({stored.get('operation')}); "
                "pass overwrite=True to replace it, or choose another store"
            )
    return False


def _covariance_store(location: Any, meta: dict, overwrite: bool) -> ResultStore:
    """The covariance store at ``location`` (under its lock): ours of this
    covariance, resumed, or a new one."""
    if _may_write(location, meta["fingerprint"], overwrite):
        return ResultStore.open(location, mode="r+")
    return ResultStore.create(
        location, meta=meta, shape=meta["shape"], dtype="float64", axis=1,
        block_size=meta["plan"]["block_size"],
    )  # fmt: skip


def _covariance_block(task: FactorTask, location: Any, run: int, b: int) -> None:
    """Column slab ``b`` of ``C = Wᵀ W``, written tile by tile (rows in order, so
    the checksum of the slab's C-order bytes accumulates as it goes), then its
    record: the same record a computed block gets."""
    import zarr

    t0 = time.perf_counter()
    arrays = task.arrays()
    matrix = zarr.open_array(location, path="matrix", mode="r+")
    crc, nonfinite = 0, 0
    cols = task.span(b)
    for a in range(task.tiles):
        values = task.covariance_tile(arrays, a, b)
        matrix[task.span(a), cols] = values
        crc = zlib.crc32(np.ascontiguousarray(values).data, crc)
        nonfinite += int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    record = np.zeros(len(RECORD_FIELDS), np.int64)
    record[:] = [1, crc & 0xFFFFFFFF, int(1000 * (time.perf_counter() - t0)), run, nonfinite]
    zarr.open_array(location, path="blocks", mode="r+")[b, :] = record


def _stored_tile(location: Any, result: Result, damping: float) -> int | None:
    """The tile of a covariance of this matrix and damping already at ``location``."""
    try:
        if inspect(location) != "ours":
            return None
        parts = read_meta(location).get("fingerprint_parts") or {}
    except (StoreError, OSError, ValueError):
        return None
    options = parts.get("options") or {}
    if parts.get("source") == result.meta["fingerprint"] and options.get("damping") == damping:
        return int(options["tile"])
    return None


def covariance(
    result: Result,
    store: Any,
    *,
    damping: Any = 0.0,
    tile: Any = None,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Result:
    """``(M + damping I)⁻¹`` as a stored result (operation ``covariance``)."""
    from ._result import Result

    location = normalise_location(store)
    if overlapping(location, result.location):
        raise InputValueError(
            f"the covariance needs its own store: {location!r} is (or is inside, or holds) the "
            f"matrix's store {result.location!r}; choose another directory"
        )
    damping = check_damping(damping)
    require_square_complete(result, "the covariance")
    if tile is None:
        tile = _stored_tile(location, result, damping)
    tile = _tile(result, tile, damping, client)
    identity = factor_identity(result, damping, tile)
    meta = _covariance_meta(
        result, FactorTask(result.location, identity["n"], tile, damping), identity
    )
    _may_write(location, meta["fingerprint"], overwrite)  # refuse before computing anything
    task = factor(
        result, damping=damping, tile=tile, client=client, progress=progress, verify=True
    )  # every tile of W is read: all checked against their records
    with RunLock(location):
        target = _covariance_store(location, meta, overwrite)
        todo = target.todo()
        if todo:
            run = target.start_run(len(todo))
            t0 = time.perf_counter()
            status = "failed"
            try:
                args = [(task, target.location, run, b) for b in todo]
                bar = _bar(progress, len(todo), "diffops covariance (blocks)", "block")
                try:
                    run_tasks(client, _covariance_block, args, bar)
                finally:
                    bar.close()
                status = "complete"
            finally:
                target.end_run(
                    run, status=status, seconds=round(time.perf_counter() - t0, 3),
                    blocks_done=int(np.sum(target.done_mask())), token=uuid.uuid4().hex,
                )  # fmt: skip
    return Result(ResultStore.open(location))
