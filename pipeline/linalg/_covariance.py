"""The covariance ``(M + damping I)⁻¹`` of a stored curvature matrix as a
stored result of its own (operation ``covariance``): the same completion
records, checksums, admission and run bookkeeping as a computed matrix, its
blocks computed from the stored factor (`_factor`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import zarr

from diffops_core.internal import BlockPlan, InputValueError, check_damping

from ..run import BlockEvent, RunStart, dispatch, executor_for
from ..store import (
    ResultStore,
    RunLock,
    admit,
    checksum,
    factor_identity,
    normalise_location,
    overlapping,
    peek,
    record,
    store_meta,
)
from ._cholesky import FactorTask
from ._factor import bars, choose_tile, factor, require_square_complete

__all__ = ["covariance"]


def _covariance_meta(source: ResultStore, task: FactorTask, identity: dict) -> dict:
    meta = source.meta
    parts = dict(meta.get("fingerprint_parts") or {})
    fingerprint_parts = {
        "function": f"covariance of ({parts.get('function')})",
        "source": meta["fingerprint"],
        "matrix": identity["blocks"],
        "options": {"damping": task.damping, "tile": task.tile},
        "versions": parts.get("versions") or {},
    }
    n = task.n
    return store_meta(
        operation="covariance", op="cholesky", shape=(n, n), dtype="float64", axis=1,
        block_plan=BlockPlan(n, task.tile).to_json(), in_layout=meta["in_layout"],
        out_layout=meta["in_layout"], output_shape=meta.get("output_shape") or [],
        fingerprint_parts=fingerprint_parts, options=fingerprint_parts["options"],
        source=str(source.location),
    )  # fmt: skip


def _admit(location: Any, meta: dict, overwrite: bool) -> ResultStore | None:
    """The covariance store at ``location`` if it is this covariance (resume it),
    None for a new one; refuses what is not ours, and another result without
    ``overwrite``."""
    return admit(
        location,
        lambda stored: stored.get("fingerprint") == meta["fingerprint"],
        overwrite,
        lambda stored: (
            f"the store {location!r} holds another result ({stored.get('operation')}); "
            "pass overwrite=True to replace it, or choose another store"
        ),
    )


def _covariance_block(task: FactorTask, location: Any, run: int, b: int) -> BlockEvent:
    """Column slab ``b`` of ``C = Wᵀ W``, written tile by tile (rows in order, so
    the checksum of the slab's C-order bytes accumulates as it goes), then its
    record: the same record a computed block gets."""
    t0 = time.perf_counter()
    arrays = task.arrays()
    matrix = zarr.open_array(location, path="matrix", mode="r+")
    crc, nonfinite = 0, 0
    cols = task.span(b)
    for a in range(task.tiles):
        values = task.covariance_tile(arrays, a, b)
        matrix[task.span(a), cols] = values
        crc = checksum(values, crc)
        nonfinite += int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    seconds = time.perf_counter() - t0
    done = record(crc, int(1000 * seconds), run, nonfinite)
    zarr.open_array(location, path="blocks", mode="r+")[b, :] = done
    return BlockEvent(b, cols.start, cols.stop, total_s=seconds, nonfinite=nonfinite)


def _stored_tile(location: Any, source: ResultStore, damping: float) -> int | None:
    """The tile of a covariance of this matrix and damping already at ``location``."""
    parts = (peek(location) or {}).get("fingerprint_parts") or {}
    options = parts.get("options") or {}
    if parts.get("source") == source.meta["fingerprint"] and options.get("damping") == damping:
        return int(options["tile"])
    return None


def covariance(
    source: ResultStore,
    location: Any,
    *,
    damping: Any = 0.0,
    tile: Any = None,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ResultStore:
    """``(M + damping I)⁻¹`` of the matrix in ``source`` as a stored result at
    ``location`` (see `Result.covariance`); the store, complete."""
    location = normalise_location(location)
    if overlapping(location, source.location):
        raise InputValueError(
            f"the covariance needs its own store: {location!r} is (or is inside, or holds) the "
            f"matrix's store {source.location!r}; choose another directory"
        )
    damping = check_damping(damping)
    require_square_complete(source, "the covariance")
    if tile is None:
        tile = _stored_tile(location, source, damping)
    tile = choose_tile(source, tile, damping, client)
    identity = factor_identity(source, damping, tile)
    meta = _covariance_meta(source, FactorTask(source.location, identity["n"], tile, damping),
                            identity)  # fmt: skip
    _admit(location, meta, overwrite)  # refuse before computing anything
    task = factor(
        source, damping=damping, tile=tile, client=client, progress=progress, verify=True
    )  # every tile of W is read: all checked against their records
    with RunLock(location):
        target = _admit(location, meta, overwrite) or ResultStore.create(
            location, meta=meta, shape=meta["shape"], dtype="float64", axis=1,
            block_size=meta["plan"]["block_size"],
        )  # fmt: skip
        todo = tuple(target.todo())
        if todo:
            _compute(target, task, todo, client, progress)
    return ResultStore.open(location)


def _compute(target: ResultStore, task: FactorTask, todo: tuple, client: Any, progress: bool):
    """The blocks ``todo`` of the covariance, as a recorded run."""
    executor = executor_for(client)
    run = target.start_run(len(todo))
    args = [(task, target.location, run, b) for b in todo]
    start = RunStart(None, todo, target.plan.n_blocks - len(todo), executor.where(),
                     label="diffops covariance (blocks)")  # fmt: skip
    dispatch(
        target, run, start,
        lambda listeners: executor.map(_covariance_block, args, listeners.on_block_end),
        bars(progress), executor.name,
    )  # fmt: skip
