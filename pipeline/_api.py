"""`hessian_to_zarr`, `jacobian_to_zarr` and `gauss_newton_to_zarr`: resumable,
out-of-core results.

A run is: check the arguments -> `plan` (pure: trace, size, fingerprint, memory)
-> decide what the store is (`admit`: create, resume, replace or refuse) and
open or create it under its lock -> `dispatch` the blocks to an `Executor` ->
the `Result`.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, Unpack

import jax
import jax.flatten_util
import numpy as np

from diffops_core.internal import (
    BlockPlan,
    InputTypeError,
    InputValueError,
    check_flag,
    check_sparse,
    whitened_residuals,
)

from ._errors import StoreError
from ._result import Result
from .run import (
    Callback,
    Executor,
    ProgressBar,
    RunPlan,
    RunStart,
    RunSummary,
    default_executor,
    dispatch,
    machine_limits,
    noise_digest,
    plan,
    stage,
)
from .store import (
    FORMAT,
    ResultStore,
    RunLock,
    admit,
    check_free,
    difference,
    invalidate,
    local_path,
    normalise_location,
    pattern_bytes,
    peek,
    probes_of,
    same_computation,
    store_disk_bytes,
)

__all__ = ["RunOptions", "gauss_newton_to_zarr", "hessian_to_zarr", "jacobian_to_zarr"]


class RunOptions(TypedDict, total=False):
    """The keyword arguments every ``*_to_zarr`` call takes (see `hessian_to_zarr`)."""

    nbatches: int | None
    block_size: int | None
    memory_budget: int | str | None
    inner_width: int | None
    checkpoint: bool
    client: Any
    overwrite: bool
    progress: bool
    threads: int
    compressor: str | None
    break_lock: bool
    single_writer: bool
    executor: Executor | None
    callbacks: Sequence[Callback]
    sparsity: Any
    max_dense: int | str | None


_NOTHING = "complete: nothing to do"


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


def _check_names(call: str, options: Any) -> None:
    unknown = sorted(set(options) - set(RunOptions.__annotations__))
    if unknown:
        raise InputTypeError(
            f"{call}() got unknown keyword argument(s) {', '.join(unknown)}; it takes "
            f"{', '.join(RunOptions.__annotations__)}"
        )


def executor_limits(executor: Any):
    """What a block task may use where ``executor`` runs it (an executor of your
    own without `limits`: this machine, one task at a time)."""
    limits = getattr(executor, "limits", None)
    return limits() if limits is not None else machine_limits(1)


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
    single_writer: bool = False,
    redo: Sequence[int] = (),
    executor: Executor | None = None,
    callbacks: Sequence[Callback] = (),
    before_write: Callable[[], None] | None = None,
    after: Callable[[Result], None] | None = None,
    **options: Any,
) -> Result:
    """Check the arguments -> `plan` -> `_run` under the store's lock and lease
    (``options``: `plan`'s). ``before_write()`` runs before the store changes
    (a workflow withdraws what it derived from it), ``after(result)`` once
    the run is over (see `_finish`)."""
    flags = {"overwrite": overwrite, "progress": progress, "break_lock": break_lock,
             "single_writer": single_writer}  # fmt: skip
    flags = _check_args(store, threads, options.get("compressor"), flags)
    options["checkpoint"] = check_flag("checkpoint", options.get("checkpoint", False))
    location = _resolved(store)
    executor = executor or default_executor(client, threads)
    limits = executor_limits(executor)
    run_plan, stored = _planned(operation, f, x, location, limits, options)
    reason = _reason(run_plan, redo, stored)  # before anything is replaced: what is there now
    existing = _existing(run_plan, flags["overwrite"])
    left = existing.todo() if existing is not None else range(run_plan.blocks.n_blocks)
    if existing is not None and not redo and not left and after is None and existing.checked:
        return Result(existing, RunSummary(reason=_NOTHING))  # complete: touch nothing
    _check_room(run_plan, limits, left, redo, new=existing is None)
    listeners = [*callbacks, ProgressBar()] if flags["progress"] else list(callbacks)
    locks = {k: flags[k] for k in ("break_lock", "single_writer")}
    with RunLock(location, **locks) as lock:
        with stage("blocks"):
            result, computed = _run(run_plan, executor, listeners, flags["overwrite"], redo,
                                    before_write)  # fmt: skip
        result.run_summary = dataclasses.replace(
            result.run_summary, reason=reason if computed else _NOTHING
        )
        _finish(run_plan, result, executor, lock, after)
    return result


def _planned(operation: str, f: Callable, x: Any, location: Any, limits: Any,
             options: dict) -> tuple[RunPlan, dict]:  # fmt: skip
    """(the `plan`, the metadata stored at ``location`` now: {} when none)."""
    stored = peek(location) or {}
    with stage("plan"):  # trace, detection (or the store's pattern), colouring, sizing
        run_plan = plan(
            operation, f, x, location, limits=limits,
            stored=stored if _resumable(stored) else None, **options,
        )  # fmt: skip
    return run_plan, stored


def _check_room(run_plan: RunPlan, limits: Any, left: Sequence[int], redo: Sequence[int],
                new: bool) -> None:  # fmt: skip
    """Before the lock, when blocks are left: memory for a block task (its
    kernel compiled for XLA's footprint), and disk for what is left."""
    if len(left) or redo:
        run_plan.check_memory(limits)
    _check_disk(run_plan, left, new=new)


def _resolved(store: Any) -> Any:
    """The store's location; a local path made absolute here, on the driver
    (workers run elsewhere: a relative path would be theirs)."""
    location = normalise_location(store)
    return os.path.abspath(location) if local_path(location) is not None else location


def _finish(
    run_plan: RunPlan,
    result: Result,
    executor: Executor,
    lock: RunLock,
    after: Callable[[Result], None] | None,
) -> None:
    """Under the lock, once blocks are done: a complete sparse store checked
    before it is reported; nothing reported by a run that lost its lease to
    another run; then ``after(result)``, against the state this run leaves."""
    try:
        _check_sparse(run_plan, result.store, executor)
        lock.check()
        if after is not None:
            after(result)
    finally:  # the workers drop what the self-check kept for the steps after it
        forget = getattr(executor, "forget_checked", None)
        if forget is not None:
            forget(run_plan.location)


def _run(
    run_plan: RunPlan,
    executor: Executor,
    callbacks: Sequence[Callback],
    overwrite: bool,
    redo: Sequence[int],
    before_write: Callable[[], None] | None,
) -> tuple[Result, bool]:
    """Under the lock: open or create the store, compute what is left, and record
    the run. **Returns:** the result, and whether blocks were computed (none
    left: complete, perhaps by another run since we looked)."""
    store, todo = _open_or_create(run_plan, overwrite, redo, before_write)
    run_plan = _stored_probes(run_plan, store)
    if not todo:
        return Result(store, RunSummary()), False
    run = store.start_run(len(todo))
    planned = run_plan.for_run(run, f"{run_plan.fingerprint[:16]}-{run}-{uuid.uuid4().hex}")
    start = RunStart(planned, todo, run_plan.blocks.n_blocks - len(todo), executor.where())
    summary = dispatch(
        store, run, start, lambda listeners: executor.run(planned, todo, listeners),
        callbacks, executor.name,
    )  # fmt: skip
    return Result(store, summary.summary()), True


def _stored_probes(run_plan: RunPlan, store: ResultStore) -> RunPlan:
    """The plan with the probe vectors of the store it computes into (drawn when
    the store was made): every block's probe products are of the same vectors,
    whichever run computed them."""
    mine, stored = run_plan.sparsity_info, store.sparsity_meta
    if mine is None or not stored or mine.get("probes") == stored.get("probes"):
        return run_plan
    return dataclasses.replace(run_plan, sparsity_info={**mine, "probes": stored.get("probes")})


def _check_sparse(run_plan: RunPlan, store: ResultStore, executor: Executor) -> None:
    """A complete sparse store not checked for the blocks it holds, recovered
    and checked against products of random vectors (row by row; their
    products are stored after the colours', computed in the same calls, except
    for a row colouring's) before it is reported; on a worker when
    ``executor`` runs on a cluster (its ``self_check``: the driver never holds
    the recovered matrix). The outcome is recorded with the state of the
    blocks it was made from (a repair or a resume redoes it).

    **Raises:** `ValueError` on a mismatch: the store stays, marked failed, and
    no reader returns its matrix."""
    if store.checked or not store.status()["complete"]:
        return
    with stage("self-check"):
        _self_check(run_plan, store, executor)


def _self_check(run_plan: RunPlan, store: ResultStore, executor: Executor) -> None:
    t0 = time.perf_counter()
    blocks, info = store.records_digest(), store.sparsity_meta
    assert info is not None
    remote = getattr(executor, "self_check", None)
    try:
        if remote is not None:
            there, found = remote(run_plan, run_plan.operation)
            if there != blocks:
                raise StoreError(
                    f"the blocks of {run_plan.location!r} changed while they were checked "
                    "(another writer?); run the computation again"
                )
        else:
            matrix, found = _check_here(run_plan, store, info)
    except InputValueError as err:
        info["check"] = {"passed": False, "blocks": blocks, "error": str(err)}
        store.save_meta()
        raise
    info["check"] = {"error": float(found["error"]), "tolerance": float(found["tolerance"]),
                     "ratio": float(found["ratio"]), "row": int(found["row"]),
                     "eps": float(found["eps"]), "seed": found["seed"],
                     "passed": True, "blocks": blocks, "where": found.get("where", "driver"),
                     "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    store.save_meta()
    if remote is None:
        store.keep_checked(matrix)  # what this run reports next reads it (σ, checks, finalize)


def _check_here(run_plan: RunPlan, store: ResultStore, info: dict) -> tuple[Any, dict]:
    """The self-check in this process: (the recovered matrix, the check's figures)."""
    matrix, products = store.unchecked()  # the probes' products rode with the colours'
    seed = probes_of(info)[1] if products is not None else None
    x_flat = jax.flatten_util.ravel_pytree(run_plan.x)[0]  # the plan's trace, not another
    return matrix, check_sparse(run_plan.operation, matrix, run_plan.kernels, x_flat, seed,
                                products)  # fmt: skip


def _resumable(meta: dict) -> bool:
    """Whether stored metadata is of a ready store with a readable block plan (a
    store begun with a default block resumes with its block)."""
    try:
        return bool(meta.get("ready")) and BlockPlan.from_json(meta["plan"]) is not None
    except (KeyError, TypeError, ValueError):
        return False


def _same(run_plan: RunPlan) -> Callable[[dict], bool]:
    return lambda meta: same_computation(meta.get("fingerprint"), run_plan.fingerprint_parts)


def _reason(run_plan: RunPlan, redo: Sequence[int], meta: dict) -> str:
    """In words, why a run computes what it does (for logs of nightly runs), from
    the metadata stored there before (empty: none)."""
    if redo:
        return f"repair: blocks {sorted(int(i) for i in redo)[:8]} recomputed"
    if not meta:
        return "a new store"
    if meta.get("format") == FORMAT and _same(run_plan)(meta):
        return "the same computation: resumed where blocks are not complete"
    _keys, words = difference(meta, run_plan.fingerprint_parts, run_plan.noise)
    return f"replaced (overwrite): {words}"


def _existing(run_plan: RunPlan, overwrite: bool) -> ResultStore | None:
    """The store's result if it is this computation, else None (see `admit`)."""

    def refusal(meta: dict) -> str:
        keys, words = difference(meta, run_plan.fingerprint_parts, run_plan.noise)
        return (
            f"the store {run_plan.location!r} holds a result of a different computation "
            f"(differs in: {', '.join(keys)}): {words}. Pass overwrite=True (diffops run "
            "--overwrite) to recompute it, or choose another store"
        )

    read = None if run_plan.sparsity_read is None else (run_plan.sparsity_read, run_plan.sparsity)
    return admit(run_plan.location, _same(run_plan), overwrite, refusal, read)


def _open_or_create(
    run_plan: RunPlan,
    overwrite: bool,
    redo: Sequence[int],
    before_write: Callable[[], None] | None = None,
) -> tuple[ResultStore, tuple[int, ...]]:
    """The store and the blocks to compute, under the lock: what is there if it is
    this computation (another run may have finished it since we looked), with
    the records of the blocks ``redo`` cleared (a repair: only now, everything
    ready to recompute them) and the factor tiles made from them; else a new
    store, all of it to do. ``before_write()`` runs before anything of the
    store changes (a replacement's deletions included), when something will."""
    store = _existing(run_plan, overwrite)
    left = tuple(store.todo()) if store is not None else ()
    if before_write is not None and (store is None or redo or left):
        before_write()  # what was derived from the store goes before it changes
    if store is not None:
        store.remove_partial_files()
        for index in redo:
            store.clear_record(int(index))
        if redo:  # the factor made from those blocks goes with them
            blocks = [store.plan.block(int(i)) for i in redo]
            invalidate(store.location, [slice(b.start, b.stop) for b in blocks])
        return store, tuple(store.todo()) if redo else left
    spec = run_plan.spec
    store = ResultStore.create(
        run_plan.location, meta=run_plan.store_meta(), shape=run_plan.stored_shape,
        dtype=spec.dtype, axis=spec.axis, block_size=run_plan.blocks.block_size,
        compressor=run_plan.compressor, sparsity=run_plan.sparsity,
    )  # fmt: skip
    return store, tuple(range(run_plan.blocks.n_blocks))


def _check_disk(run_plan: RunPlan, todo: Sequence[int], new: bool) -> None:
    """Refuse, with the numbers, a local store whose disk cannot hold what is left
    (chunks at full size in whole pages, records, and a new store's metadata and
    coordinate arrays)."""
    spec = run_plan.spec
    need = store_disk_bytes(
        run_plan.stored_shape, spec.axis, run_plan.blocks.block_size,
        np.dtype(spec.dtype).itemsize, list(todo), run_plan.blocks.n_blocks, new,
    )  # fmt: skip
    what = "uncompressed; zstd may need less" if run_plan.compressor else "uncompressed"
    if run_plan.sparsity_info is not None:
        info = run_plan.sparsity_info
        need += pattern_bytes(info) if new else 0  # the pattern and colours
        what = f"compressed products of {info['ncolors']} colours, {what}"
    check_free(run_plan.location, need, f"the {spec.m}x{spec.n} {spec.dtype} result ({what})")


def hessian_to_zarr(f: Callable, x: Any, store: Any, **options: Unpack[RunOptions]) -> Result:
    """Compute the Hessian of scalar ``f`` at ``x`` into a Zarr store, block by block.

    One task per block of columns writes its own column slab (whole chunks no
    other task touches), then a completion record with a checksum. Calling again
    with the same inputs computes only the blocks not yet complete; a complete
    store is left untouched.

    **Arguments:** `f`, `x` as for `diffops_core.hessian` (``f`` importable, or
    picklable by cloudpickle, when a cluster runs it); `store`: a local path, or
    any URL/store zarr v3 accepts. Keywords (`RunOptions`):

    - `nbatches`, `block_size`, `memory_budget`, `inner_width`: the blocking, as
      in `diffops_core.hessian` (at most one of the first three). Default: about
      16 blocks with slabs of at most 256 MiB. `checkpoint`: `jax.checkpoint` f.
    - `client`: a `distributed.Client` (default: the active one, else a
      thread pool here); `threads`: tasks at once on the embedded default;
      `executor`: an `Executor` of your choice instead.
    - `overwrite`: replace a store of ours holding a different result (the same
      computation still resumes); what is not a diffops store is never touched.
    - `progress`: a progress bar on stderr; `callbacks`: more `Callback`s (e.g.
      `Timings`); `compressor`: ``None`` (default) or ``"zstd"``; `break_lock`:
      take over the lock and lease of a run that is gone but whose host still
      holds them; `single_writer`: write to a backend with no atomic create
      (where no run lease can exclude a second writer), on your word that
      only one run writes there. Every other backend (local and network
      filesystems, S3) has a run lease: one writer per store.
    - `sparsity`: ``None`` (default: the dense matrix), ``"auto"`` (detect the
      global pattern, colour it, and compute and store one product per colour:
      `Result.sparse`; a dense pattern stores the dense matrix) or a
      `diffops_core.Sparsity` to reuse or give (`Sparsity.from_pattern`). The
      pattern and the colouring are part of the fingerprint; a complete sparse
      store is checked against products of six random vectors (row by row)
      before it is returned. `max_dense`: the dense result ``"auto"`` may fall
      back to when it finds no structure to use (default 1 GiB; bytes or
      ``"40GB"``); above it the run is refused, saying why.

    **Returns:** a `Result`. **Raises:** `StoreError` (not ours; another result,
    saying what differs; locked; a disk too small); `NotEnoughMemoryError` when
    one task cannot fit a worker; `BlockError` naming a failed block; the
    in-memory API's errors for bad input; `TypeError` for an unknown keyword.
    """
    _check_names("hessian_to_zarr", options)
    return _to_zarr("hessian", f, x, store, **options)


def jacobian_to_zarr(
    f: Callable, x: Any, store: Any, *, mode: str = "auto", **options: Unpack[RunOptions]
) -> Result:
    """Compute the Jacobian of ``f`` at ``x`` into a Zarr store, block by block.

    As `hessian_to_zarr`; ``mode`` is ``"fwd"`` (column slabs of JVPs), ``"rev"``
    (row slabs of VJPs) or ``"auto"`` (fewer products). The stored matrix is the
    flat ``(m, n)`` Jacobian; `Result.to_pytree` gives the pytree view.
    """
    _check_names("jacobian_to_zarr", options)
    return _to_zarr("jacobian", f, x, store, mode=mode, **options)


def gauss_newton_to_zarr(
    residuals: Callable,
    x: Any,
    store: Any,
    *,
    std: Any = None,
    cov: Any = None,
    inv_cov: Any = None,
    **options: Unpack[RunOptions],
) -> Result:
    """The Gauss–Newton (Fisher) matrix ``Jᵀ W J`` of ``residuals`` at ``x`` into a
    Zarr store, block by block: the noise model as `diffops_core.gauss_newton`
    (``std``, ``cov`` or ``inv_cov``), everything else as `hessian_to_zarr`
    (resume, records, refusals). The noise is part of the fingerprint: other
    noise is another computation."""
    _check_names("gauss_newton_to_zarr", options)
    whitened = whitened_residuals(residuals, x, std, cov, inv_cov)
    noise = noise_digest(std, cov, inv_cov)
    return _to_zarr("gauss_newton", whitened, x, store, noise=noise, **options)
