"""`hessian_to_zarr` and `jacobian_to_zarr`: resumable, out-of-core results.

A run is: check the arguments -> `plan` (pure: trace, size, fingerprint, memory)
-> open or create the store under its lock -> `Executor.run` -> the `Result`.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import psutil

from diffops_core.internal import (
    BlockPlan,
    InputTypeError,
    InputValueError,
    check_flag,
    whitened_residuals,
)

from ._callbacks import Callback, Callbacks, ProgressBar, RunEnd, RunStart, RunSummary, Summary
from ._cluster import vm_bytes
from ._execute import DistributedExecutor, Executor, default_executor
from ._factor import invalidate
from ._fingerprint import describe_difference, noise_digest, same_computation
from ._plan import Limits, RunPlan, plan
from ._result import Result
from ._store import (
    FORMAT,
    ResultStore,
    RunLock,
    StoreError,
    check_free,
    describe_foreign,
    inspect,
    normalise_location,
    read_meta,
    store_disk_bytes,
)

__all__ = ["WORKER_RUNTIME_BYTES", "hessian_to_zarr", "jacobian_to_zarr"]

#: A worker's resident memory before its first block, with jax, dask and the
#: pipeline imported (measured 230 MB: benchmarks/RESULTS.md, worker memory);
#: used when a worker cannot report its own.
WORKER_BASELINE_BYTES = 250 * 10**6
#: What a worker's resident memory grows to above its baseline once blocks run,
#: however small they are: XLA's runtime and compile buffers, zarr's and
#: distributed's I/O buffers, allocator slack (the malloc thresholds keep freed
#: slabs in the heap). Measured 265-415 MB with 30 MB slabs, n=30,000
#: (benchmarks/RESULTS.md, worker memory); a floor under the per-task estimate.
WORKER_RUNTIME_BYTES = 300 * 10**6
#: The share of a worker's memory limit a plan may fill. distributed pauses a
#: worker at 80% and its nanny kills it at 95%; the predicted peak is within
#: about 25% of the measured one, and a worker's allocator keeps more slack than
#: one process does (threads allocate from arenas of their own): an n=60,000
#: Hessian planned to 80% of a 1 GB limit was killed at 95%.
WORKER_FRACTION = 0.7


def _baseline_rss() -> int:
    """A worker's resident memory (VmRSS) once it is ready for its first block:
    jax and the pipeline imported and the backend started, as the first task
    would do anyway."""
    import jax

    from . import _tasks  # noqa: F401 - what a block task imports

    jax.devices()
    return vm_bytes("VmRSS")


def _limits(executor: Executor) -> Limits:
    """The memory block tasks may use: the smallest worker's limit and the largest
    worker's baseline (measured now), or this machine's available memory."""
    if not isinstance(executor, DistributedExecutor):
        # available memory already excludes what this process holds
        return Limits(
            int(psutil.virtual_memory().available),
            0,
            int(getattr(executor, "threads", 1)),
            "this machine's available memory",
        )
    client = executor.client
    workers = client.scheduler_info().get("workers", {}).values()
    if not workers:
        raise StoreError("the distributed client has no workers; start some, or pass client=None")
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    positive = [lim for lim in limits if lim > 0]
    try:
        baseline = max(client.run(_baseline_rss).values(), default=0)
    except Exception:  # noqa: BLE001 - a worker that cannot say: assume the measured typical
        baseline = WORKER_BASELINE_BYTES
    return Limits(
        min(positive) if positive else 0,
        int(baseline),
        max(int(w.get("nthreads") or 1) for w in workers),
        "a worker's memory limit",
        WORKER_RUNTIME_BYTES,
        WORKER_FRACTION,
    )


def _check_disk(run_plan: RunPlan, todo: Sequence[int], new: bool) -> None:
    """Refuse, with the numbers, a local store whose disk cannot hold what is left
    (chunks at full size in whole pages, records, and a new store's metadata and
    coordinate arrays)."""
    spec = run_plan.spec
    need = store_disk_bytes(
        spec.shape, spec.axis, run_plan.blocks.block_size, np.dtype(spec.dtype).itemsize,
        list(todo), run_plan.blocks.n_blocks, new,
    )  # fmt: skip
    what = "uncompressed; zstd may need less" if run_plan.compressor else "uncompressed"
    check_free(run_plan.location, need, f"the {spec.m}x{spec.n} {spec.dtype} result ({what})")


def _check_args(store: Any, threads: Any, compressor: Any, flags: dict) -> dict:
    flags = {name: check_flag(name, value) for name, value in flags.items()}
    if not isinstance(store, (str, os.PathLike)) and not hasattr(store, "get"):
        raise InputTypeError(
            f"store must be a path, a URL or a zarr store, got {type(store).__name__}"
        )
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise InputTypeError(f"threads must be a positive int, got {threads!r}")
    if compressor not in (None, "zstd"):
        raise InputValueError(f"compressor must be None or 'zstd', got {compressor!r}")
    return flags


def _to_zarr(
    operation: str,
    f: Callable,
    x: Any,
    store: Any,
    *,
    client: Any = None,
    threads: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    break_lock: bool = False,
    redo: Sequence[int] = (),
    executor: Executor | None = None,
    callbacks: Sequence[Callback] = (),
    before_write: Callable[[], None] | None = None,
    after: Callable[[Result], None] | None = None,
    **options: Any,
) -> Result:
    """Check the arguments -> `plan` -> open or create the store under its lock ->
    `Executor.run`. ``options`` are `plan`'s (mode, the blocking, checkpoint,
    compressor).

    Under the lock: ``before_write()`` just before blocks are computed (a
    workflow withdraws the files it derived from the store), and
    ``after(result)`` once the run is over, complete store included (a
    workflow's checks and finalize files, made from the state this lock
    holder leaves)."""
    flags = {"overwrite": overwrite, "progress": progress, "break_lock": break_lock}
    flags = _check_args(store, threads, options.get("compressor"), flags)
    options["checkpoint"] = check_flag("checkpoint", options.get("checkpoint", False))
    location = normalise_location(store)
    executor = executor or default_executor(client, threads)
    run_plan = plan(
        operation,
        f,
        x,
        location,
        limits=_limits(executor),
        stored=_stored_plan(location),
        **options,
    )
    reason = _reason(run_plan, redo)  # before anything is replaced: what is there now
    existing = _existing(run_plan, flags["overwrite"])
    left = existing.todo() if existing is not None else range(run_plan.blocks.n_blocks)
    if existing is not None and not redo and not left and after is None:
        return Result(existing, RunSummary(reason=_NOTHING))  # complete: touch nothing
    _check_disk(run_plan, left, new=existing is None)
    callbacks = [*callbacks, ProgressBar()] if flags["progress"] else list(callbacks)
    with RunLock(location, break_lock=flags["break_lock"], holder=lambda: _holder(location)):
        result_store, todo = _open_or_create(run_plan, flags["overwrite"], redo)
        summary = RunSummary()
        if todo:
            if before_write is not None:
                before_write()  # what was derived from the store goes before it changes
            summary = _dispatch(result_store, todo, run_plan, executor, callbacks).summary()
        # no todo: complete, perhaps by another run since we looked
        summary = dataclasses.replace(summary, reason=reason if todo else _NOTHING)
        result = Result(result_store, summary)
        if after is not None:
            after(result)  # under the lock: against the state this run leaves
    return result


_NOTHING = "complete: nothing to do"


def _reason(run_plan: RunPlan, redo: Sequence[int]) -> str:
    """In words, why a run computes what it does (for logs of nightly runs)."""
    location = run_plan.location
    if redo:
        return f"repair: blocks {sorted(int(i) for i in redo)[:8]} recomputed"
    try:
        if inspect(location) != "ours":
            return "a new store"
        meta = read_meta(location)
    except (StoreError, OSError):
        return "a new store"
    if meta.get("format") == FORMAT and same_computation(
        meta.get("fingerprint"), run_plan.fingerprint_parts
    ):
        return "the same computation: resumed where blocks are not complete"
    _keys, words = _difference(meta, run_plan)
    return f"replaced (overwrite): {words}"


def _difference(meta: dict, run_plan: RunPlan) -> tuple[list[str], str]:
    """What differs between a stored result and this plan, in words; a changed
    noise model is named as such (it reaches the trace as data f reads)."""
    keys, words = describe_difference(
        meta.get("fingerprint_parts") or {}, run_plan.fingerprint_parts
    )
    old, new = meta.get("noise"), run_plan.noise
    if "data" in keys and old and new and old != new:
        keys = ["noise" if k == "data" else k for k in keys]
        words = words.replace(
            describe_difference({"data": 0}, {"data": 1})[1],
            "the noise model differs (the data f reads changed: its std, cov or inv_cov)",
        )
    return keys, words


def _open_or_create(
    run_plan: RunPlan, overwrite: bool, redo: Sequence[int]
) -> tuple[ResultStore, tuple[int, ...]]:
    """The store and the blocks to compute, under the lock: what is there if it is
    this computation (another run may have finished it since we looked), with
    the records of the blocks ``redo`` cleared (a repair: only now, everything
    ready to recompute them); else a new store, all of it to do."""
    result_store = _existing(run_plan, overwrite)
    if result_store is not None:
        result_store.remove_partial_files()
        for index in redo:
            result_store.clear_record(int(index))
        if redo:  # the factor made from those blocks goes with them
            plan = result_store.plan
            invalidate(
                result_store.location,
                [slice(plan.block(i).start, plan.block(i).stop) for i in redo],
            )
        return result_store, tuple(result_store.todo())
    result_store = ResultStore.create(
        run_plan.location,
        meta=run_plan.store_meta(),
        shape=run_plan.spec.shape,
        dtype=run_plan.spec.dtype,
        axis=run_plan.spec.axis,
        block_size=run_plan.blocks.block_size,
        compressor=run_plan.compressor,
    )
    return result_store, tuple(range(run_plan.blocks.n_blocks))


def _dispatch(
    result_store: ResultStore,
    todo: tuple[int, ...],
    run_plan: RunPlan,
    executor: Executor,
    callbacks: Sequence[Callback],
) -> Summary:
    """Run the blocks ``todo`` on ``executor``, recording the run."""
    import time

    run = result_store.start_run(len(todo))
    run_plan = run_plan.for_run(run, f"{run_plan.fingerprint[:16]}-{run}-{uuid.uuid4().hex}")
    summary = Summary()
    listeners = Callbacks([summary, *callbacks])
    listeners.on_run_start(
        RunStart(run_plan, todo, run_plan.blocks.n_blocks - len(todo), executor.where())
    )
    t0 = time.perf_counter()
    status, error, failure = "failed", None, None
    try:
        executor.run(run_plan, todo, listeners)
        left = sorted(set(todo) & set(result_store.todo()))
        if left:  # the executor said done; the store is the truth
            raise StoreError(
                f"blocks {left[:8]}{' ...' if len(left) > 8 else ''} were computed but are not "
                f"complete in {result_store.location!r}; run again to recompute them"
            )
        status = "complete"
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        error, failure = f"{type(err).__name__}: {err}", err
        raise
    finally:
        seconds = time.perf_counter() - t0
        listeners.on_run_end(RunEnd(status, seconds, error))
        done = run_plan.blocks.n_blocks - len(todo) + len(summary.events)
        _end_run(
            result_store,
            run,
            failure,
            blocks_done=done,
            status=status,
            error=error,
            seconds=round(seconds, 3),
            executor=executor.name,
        )
    return summary


def _end_run(result_store: ResultStore, run: int, failure, **fields) -> None:
    try:
        result_store.end_run(run, **fields)
    except OSError as err:  # e.g. the full disk that failed the run: keep its error
        if failure is None:
            raise
        failure.add_note(f"(the store's run history could not be updated either: {err})")


def _stored_plan(location) -> BlockPlan | None:
    """The block plan of a ready store of ours, if any (a store begun with a
    default block resumes with its block)."""
    try:
        if inspect(location) != "ours":
            return None
        meta = read_meta(location)
        if meta.get("ready"):
            return BlockPlan.from_json(meta["plan"])
    except (StoreError, OSError, KeyError, TypeError, ValueError):
        return None
    return None


def _holder(location) -> str | None:
    """Who holds the lock, from the store's run history (for the refusal)."""
    try:
        runs = read_meta(location).get("runs") or []
    except Exception:  # noqa: BLE001 - no history to read: say nothing
        return None
    running = [r for r in runs if isinstance(r, dict) and r.get("status") == "running"]
    if not running:
        return None
    r = running[-1]
    return f"run {r.get('run')}, pid {r.get('pid')} on {r.get('host')} since {r.get('start')}"


def _existing(run_plan: RunPlan, overwrite: bool) -> ResultStore | None:
    """The store's result if it is this computation; None when there is nothing
    (or, with ``overwrite``, a store of ours holding another computation or
    damaged array metadata).

    **Raises:** `StoreError` for a location that is not ours (always: our own
    group metadata says diffops), another computation or damaged array
    metadata (without ``overwrite``).
    """
    location = run_plan.location
    state = inspect(location)
    if state == "absent":
        return None
    if state == "foreign":
        raise StoreError(describe_foreign(location))
    meta = read_meta(location)
    if not meta.get("ready", False):
        return None  # its creation was interrupted: no block can have been recorded
    same = meta.get("format") == FORMAT and same_computation(
        meta.get("fingerprint"), run_plan.fingerprint_parts
    )
    if not same:
        if overwrite:
            return None
        if meta.get("format") != FORMAT:
            ResultStore.open(location)  # raises, naming the format and the way out
        keys, words = _difference(meta, run_plan)
        raise StoreError(
            f"the store {location!r} holds a result of a different computation (differs in: "
            f"{', '.join(keys)}): {words}. Pass overwrite=True (diffops run --overwrite) to "
            "recompute it, or choose another store"
        )
    try:
        return ResultStore.open(location, mode="r+")
    except StoreError:
        if overwrite:
            return None
        raise


def hessian_to_zarr(
    f: Callable,
    x: Any,
    store: Any,
    *,
    nbatches: int | None = None,
    block_size: int | None = None,
    memory_budget: int | str | None = None,
    inner_width: int | None = None,
    checkpoint: bool = False,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    threads: int = 2,
    compressor: str | None = None,
    break_lock: bool = False,
    executor: Executor | None = None,
    callbacks: Sequence[Callback] = (),
) -> Result:
    """Compute the Hessian of scalar ``f`` at ``x`` into a Zarr store, block by block.

    One dask task per block of columns; each writes its own column slab (whole
    chunks no other task touches) and then a completion record with a checksum.
    Calling again with the same inputs computes only the blocks not yet complete;
    a complete store is left untouched.

    **Arguments:**

    - `f`, `x`: as for `diffops_core.hessian` (``f`` must be importable or
      picklable by cloudpickle when a cluster runs it).
    - `store`: a local path, or any URL/store zarr v3 accepts.
    - `nbatches`, `block_size`, `memory_budget`, `inner_width`: the blocking, as in
      `diffops_core.hessian` (at most one of the first three). Default: about 16
      blocks with slabs of at most 256 MiB.
    - `checkpoint`: wrap ``f`` in `jax.checkpoint`.
    - `client`: a `distributed.Client`; default: the active one, else the embedded
      default (dask's threaded scheduler in this process).
    - `overwrite`: replace a store of ours that holds a different result (the same
      computation is still resumed, never restarted). A non-empty directory that
      is not a diffops store is refused even so, and nothing in it is touched.
    - `progress`: print a progress bar (blocks done/total, ETA) to stderr.
    - `threads`: tasks at once on the embedded default.
    - `compressor`: ``None`` (default: Hessians compress poorly) or ``"zstd"``.
    - `executor`: where the blocks run (`ThreadsExecutor`, `DistributedExecutor`
      or your own `Executor`); default: from ``client`` and ``threads``.
    - `callbacks`: more `Callback` objects to receive the run's events (e.g.
      `Timings` for per-block figures).
    - `break_lock`: take over the store's lock from a run that is gone but whose
      host still holds it (a network filesystem); never needed on a local disk.

    **Returns:** a `Result`.

    **Raises:** `StoreError` for a location that is not ours, a store holding
    another result (the message says what differs) or locked by another run, or
    a disk too small for what is left; `MemoryError` (`NotEnoughMemoryError`) when one
    task cannot fit a worker; `BlockError` naming the block when a block fails; the in-memory API's
    errors for bad input.
    """
    return _to_zarr(
        "hessian",
        f,
        x,
        store,
        mode=None,
        nbatches=nbatches,
        block_size=block_size,
        memory_budget=memory_budget,
        inner_width=inner_width,
        checkpoint=checkpoint,
        client=client,
        overwrite=overwrite,
        progress=progress,
        threads=threads,
        compressor=compressor,
        break_lock=break_lock,
        executor=executor,
        callbacks=callbacks,
    )


def jacobian_to_zarr(
    f: Callable,
    x: Any,
    store: Any,
    *,
    mode: str = "auto",
    nbatches: int | None = None,
    block_size: int | None = None,
    memory_budget: int | str | None = None,
    inner_width: int | None = None,
    checkpoint: bool = False,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    threads: int = 2,
    compressor: str | None = None,
    break_lock: bool = False,
    executor: Executor | None = None,
    callbacks: Sequence[Callback] = (),
) -> Result:
    """Compute the Jacobian of ``f`` at ``x`` into a Zarr store, block by block.

    As `hessian_to_zarr`; ``mode`` is ``"fwd"`` (column slabs of JVPs), ``"rev"``
    (row slabs of VJPs) or ``"auto"`` (fewer products). The stored matrix is the
    flat ``(m, n)`` Jacobian; `Result.to_pytree` gives the pytree view.
    """
    return _to_zarr(
        "jacobian",
        f,
        x,
        store,
        mode=mode,
        nbatches=nbatches,
        block_size=block_size,
        memory_budget=memory_budget,
        inner_width=inner_width,
        checkpoint=checkpoint,
        client=client,
        overwrite=overwrite,
        progress=progress,
        threads=threads,
        compressor=compressor,
        break_lock=break_lock,
        executor=executor,
        callbacks=callbacks,
    )


def gauss_newton_to_zarr(
    residuals: Callable,
    x: Any,
    store: Any,
    *,
    std: Any = None,
    cov: Any = None,
    inv_cov: Any = None,
    nbatches: int | None = None,
    block_size: int | None = None,
    memory_budget: int | str | None = None,
    inner_width: int | None = None,
    checkpoint: bool = False,
    client: Any = None,
    overwrite: bool = False,
    progress: bool = True,
    threads: int = 2,
    compressor: str | None = None,
    break_lock: bool = False,
    executor: Executor | None = None,
    callbacks: Sequence[Callback] = (),
) -> Result:
    """The Gauss–Newton (Fisher) matrix ``Jᵀ W J`` of ``residuals`` at ``x`` into a
    Zarr store, block by block: the noise model as `diffops_core.gauss_newton`
    (``std``, ``cov`` or ``inv_cov``), everything else as `hessian_to_zarr`
    (resume, records, refusals). The noise is part of the fingerprint: other
    noise is another computation."""
    whitened = whitened_residuals(residuals, x, std, cov, inv_cov)
    return _to_zarr(
        "gauss_newton",
        whitened,
        x,
        store,
        noise=noise_digest(std, cov, inv_cov),
        nbatches=nbatches,
        block_size=block_size,
        memory_budget=memory_budget,
        inner_width=inner_width,
        checkpoint=checkpoint,
        client=client,
        overwrite=overwrite,
        progress=progress,
        threads=threads,
        compressor=compressor,
        break_lock=break_lock,
        executor=executor,
        callbacks=callbacks,
    )
