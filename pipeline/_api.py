"""`hessian_to_zarr` and `jacobian_to_zarr`: resumable, out-of-core results."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import sys
import time
import uuid

import jax
import numpy as np
import psutil

from diffops_core.internal import (
    auto_micro,
    budget_block,
    check_flag,
    choose_sizing,
    format_bytes,
    get_kernels,
    jacobian_op,
    kernel_bytes,
    plan_blocks,
)

from ._execute import active_client, run_distributed, run_local
from ._cluster import vm_bytes
from ._fingerprint import describe_difference, fingerprint_parts
from ._progress import Progress
from ._result import Result
from ._store import (
    FORMAT,
    ResultStore,
    RunLock,
    StoreError,
    describe_foreign,
    free_disk,
    inspect,
    normalise_location,
    read_meta,
    sha256_json,
)
from ._tasks import BlockContext

__all__ = ["hessian_to_zarr", "jacobian_to_zarr", "default_block_size", "SLAB_TARGET_BYTES",
           "task_bytes", "Limits", "WORKER_RUNTIME_BYTES"]

#: Default block: the matrix in about 16 blocks, each slab at most this large
#: (then shrunk to fit the workers' memory).
SLAB_TARGET_BYTES = 256 * 2**20
_DEFAULT_BLOCKS = 16
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


def default_block_size(extent: int, other: int, itemsize: int) -> int:
    """Blocks for resumability and parallelism (about 16), slabs of at most 256 MiB."""
    by_count = math.ceil(extent / _DEFAULT_BLOCKS)
    by_bytes = max(1, SLAB_TARGET_BYTES // max(1, other * itemsize))
    return max(1, min(extent, by_count, by_bytes))


def _host_tree(x):
    """x with array leaves copied to host numpy (what travels to workers)."""
    return jax.tree_util.tree_map(lambda v: np.asarray(v) if hasattr(v, "dtype") else v, x)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Where block tasks run, as memory: the smallest limit (bytes, 0 for none),
    the baseline a process holds before its first block, tasks at once, and a
    name for messages."""

    limit: int
    baseline: int
    threads: int
    where: str
    floor: int = 0  # what a worker grows to whatever the block (WORKER_RUNTIME_BYTES)
    fraction: float = 0.8  # of the limit a plan may fill

    @property
    def per_task(self) -> float:
        """Bytes one task may use: the usable fraction of the limit, less the
        baseline, per task."""
        return (self.fraction * self.limit - self.baseline) / self.threads

    def peak(self, task: int) -> int:
        """A worker's predicted peak with tasks of ``task`` bytes: its baseline plus
        the tasks at once, or the runtime floor where that is larger."""
        return self.baseline + max(self.threads * task, self.floor)

    def fits(self, task: int) -> bool:
        return not self.limit or self.peak(task) <= self.fraction * self.limit


def _baseline_rss() -> int:
    """A worker's resident memory (VmRSS) once it is ready for its first block:
    jax and the pipeline imported and the backend started, as the first task
    would do anyway."""
    import jax

    from . import _tasks  # noqa: F401 - what a block task imports

    jax.devices()
    return vm_bytes("VmRSS")


def _limits(client, threads: int) -> Limits:
    """The memory block tasks may use: the smallest worker's limit and the largest
    worker's baseline (measured now), or this machine's available memory."""
    if client is None:
        # available memory already excludes what this process holds
        return Limits(int(psutil.virtual_memory().available), 0, threads,
                      "this machine's available memory")
    workers = client.scheduler_info().get("workers", {}).values()
    if not workers:
        raise StoreError("the distributed client has no workers; start some, or pass client=None")
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    positive = [lim for lim in limits if lim > 0]
    try:
        baseline = max(client.run(_baseline_rss).values(), default=0)
    except Exception:  # noqa: BLE001 - a worker that cannot say: assume the measured typical
        baseline = WORKER_BASELINE_BYTES
    return Limits(min(positive) if positive else 0, int(baseline),
                  max(int(w.get("nthreads") or 1) for w in workers), "a worker's memory limit",
                  WORKER_RUNTIME_BYTES, WORKER_FRACTION)


def _slab_bytes(spec, block_size: int) -> int:
    other = spec.m if spec.axis == 1 else spec.n
    return block_size * other * np.dtype(spec.dtype).itemsize


def task_bytes(kernels, block_size: int, micro=None) -> tuple[int, str]:
    """(bytes one block task needs, how that was counted): XLA's compiled
    footprint of the block kernel plus two host copies of the slab."""
    footprint = kernel_bytes(kernels, block_size, micro or auto_micro(kernels, block_size))
    slab = _slab_bytes(kernels.spec, block_size)
    detail = (f"kernel {format_bytes(footprint.total)} from XLA's compiled estimate, plus "
              f"2 x {format_bytes(slab)} slab on the host")
    return footprint.total + 2 * slab, detail


def _memory_error(per_task: int, detail: str, limits: Limits) -> MemoryError:
    tasks = per_task * limits.threads
    if tasks < limits.floor:
        tasks_text = (f"the {format_bytes(limits.floor)} a worker's runtime grows to "
                      f"whatever the block (more than {limits.threads} task(s) need)")
    else:
        tasks_text = f"{format_bytes(tasks)} for {limits.threads} task(s) at once"
    base = f"{format_bytes(limits.baseline)} baseline + " if limits.baseline else ""
    return MemoryError(
        f"one block task needs about {format_bytes(per_task)} ({detail}); {base}{tasks_text} = "
        f"{format_bytes(limits.peak(per_task))}, over {limits.fraction:.0%} of {limits.where} "
        f"({format_bytes(limits.limit)}). Use a smaller block_size or memory_budget, or give "
        "the workers more memory."
    )


def _check_task_memory(kernels, block_size: int, micro, limits: Limits):
    """Refuse, with the numbers, a block task that cannot fit where it will run."""
    per_task, detail = task_bytes(kernels, block_size, micro)
    if not limits.fits(per_task):
        raise _memory_error(per_task, detail, limits)


def _default_block(kernels, limits: Limits) -> int:
    """The default block: about 16 blocks with slabs of at most 256 MiB, shrunk
    until one task fits the smallest worker (or this machine); refused only when
    one column (row) cannot fit."""
    spec = kernels.spec
    itemsize = np.dtype(spec.dtype).itemsize
    other = spec.m if spec.axis == 1 else spec.n
    block = default_block_size(spec.extent, other, itemsize)
    if limits.fits(task_bytes(kernels, block)[0]):
        return block
    if not limits.fits(0):
        raise _memory_error(*task_bytes(kernels, 1), limits)
    try:
        sizing = budget_block(kernels, int(limits.per_task), host_bytes_per_item=2 * other * itemsize)
    except ValueError:
        raise _memory_error(*task_bytes(kernels, 1), limits) from None
    return max(1, min(block, sizing.block_size))


def _check_disk(location, spec, plan, todo: list[int], compressor):
    """Refuse, with the numbers, a local store whose disk cannot hold what is left."""
    free = free_disk(location)
    if free is None:
        return
    itemsize = np.dtype(spec.dtype).itemsize
    other = spec.m if spec.axis == 1 else spec.n
    need = sum(plan.block(i).size for i in todo) * other * itemsize + plan.n_blocks * 64
    if need > free:
        what = "uncompressed; zstd may need less" if compressor else "uncompressed"
        raise StoreError(
            f"the {spec.m}x{spec.n} {spec.dtype} result needs {format_bytes(need)} more on disk "
            f"({what}) at {location!r}, but only {format_bytes(free)} is free there; free "
            "space, or choose an output on a larger disk"
        )


def _check_args(store, threads, compressor, flags: dict) -> dict:
    flags = {name: check_flag(name, value) for name, value in flags.items()}
    if not isinstance(store, (str, os.PathLike)) and not hasattr(store, "get"):
        raise TypeError(f"store must be a path, a URL or a zarr store, got {type(store).__name__}")
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise TypeError(f"threads must be a positive int, got {threads!r}")
    if compressor not in (None, "zstd"):
        raise ValueError(f"compressor must be None or 'zstd', got {compressor!r}")
    return flags


def _to_zarr(op_name, f, x, store, *, mode=None, nbatches=None, block_size=None,
             memory_budget=None, inner_width=None, checkpoint=False, client=None,
             overwrite=False, progress=True, threads=2, compressor=None, break_lock=False,
             redo=()):
    flags = _check_args(store, threads, compressor,
                        {"checkpoint": checkpoint, "overwrite": overwrite, "progress": progress,
                         "break_lock": break_lock})
    checkpoint, overwrite, progress = flags["checkpoint"], flags["overwrite"], flags["progress"]
    location = normalise_location(store)

    x_host = _host_tree(x)
    kernels, x_flat, _ = get_kernels(f, x_host, "hessian" if op_name == "hessian" else "jacfwd",
                                     checkpoint=checkpoint)
    if op_name == "jacobian":
        kernels = kernels.for_op(jacobian_op(mode, kernels.spec.n, kernels.spec.m))
    spec = kernels.spec
    if client is None:
        client = active_client()
    limits = _limits(client, threads)
    if nbatches == 1 and block_size is None and memory_budget is None:
        nbatches = None
    if nbatches is None and block_size is None and memory_budget is None:
        # The default depends on the memory there is now; a store begun with a
        # default block resumes with that block (checked against memory below).
        block_size = _stored_block(location, spec.extent) or _default_block(kernels, limits)
    sizing = choose_sizing(kernels, nbatches=nbatches, block_size=block_size,
                           memory_budget=memory_budget, inner_width=inner_width, auto_width=False)
    plan = plan_blocks(spec.extent, block_size=sizing.block_size)
    fixed_micro = sizing.micro  # None: each worker sizes it for its own device

    x_flat = np.asarray(x_flat)
    identity = kernels.traced.identity()
    options = {"op": spec.op, "block_size": plan.block_size, "checkpoint": checkpoint,
               "dtype": spec.dtype, "x64": bool(jax.config.jax_enable_x64), "micro": fixed_micro}
    parts = fingerprint_parts(identity, x_flat, spec.in_layout.to_json(), options)
    fingerprint = sha256_json(parts)

    result_store = _existing(location, fingerprint, parts, overwrite)
    todo = result_store.todo() if result_store is not None else range(len(plan))
    if result_store is not None and not redo and not todo:
        return Result(result_store, {"blocks_computed": 0, "seconds": 0.0})  # touch nothing

    # Refuse before anything is written: memory, then disk.
    _check_task_memory(kernels, plan.block_size, fixed_micro, limits)
    _check_disk(location, spec, plan, todo, compressor)

    lock = RunLock(location, break_lock=flags["break_lock"], holder=lambda: _holder(location))
    with lock:
        # look again under the lock: another run may have finished in between
        result_store = _existing(location, fingerprint, parts, overwrite)
        if result_store is None:
            meta = {
                "operation": op_name, "op": spec.op, "mode": mode if op_name == "jacobian" else None,
                "shape": [spec.m, spec.n], "dtype": spec.dtype, "axis": spec.axis,
                "output_shape": [list(s.shape) for s in spec.out_layout.leaves],
                "plan": plan.to_json(), "in_layout": spec.in_layout.to_json(),
                "out_layout": spec.out_layout.to_json(), "fingerprint": fingerprint,
                "fingerprint_parts": parts, "options": options, "compressor": compressor,
            }
            result_store = ResultStore.create(
                location, meta=meta, shape=spec.shape, dtype=spec.dtype, axis=spec.axis,
                block_size=plan.block_size, compressor=compressor)
        result_store.remove_partial_files()
        for index in redo:  # a repair: only now, with everything ready to recompute them
            result_store.clear_record(int(index))
        todo = result_store.todo()
        ctx = BlockContext(
            token="", f=f, x=x_host, op=spec.op, checkpoint=checkpoint, program=identity.program,
            data=identity.data, block_size=plan.block_size, micro=fixed_micro, location=location,
            run=0, x64=bool(jax.config.jax_enable_x64), extent=spec.extent, axis=spec.axis)
        summary = _dispatch(result_store, ctx, todo, plan, spec, client, progress, threads,
                            fingerprint)
    return Result(result_store, summary)


def _dispatch(result_store, ctx, todo, plan, spec, client, progress, threads, fingerprint):
    """Run the blocks ``todo`` on the chosen executor, recording the run."""
    run = result_store.start_run(len(todo))
    ctx = dataclasses.replace(ctx, run=run, token=f"{fingerprint[:16]}-{run}-{uuid.uuid4().hex}")
    bar = Progress(plan.n_blocks, plan.n_blocks - len(todo), enabled=progress)
    if progress and client is not None:
        print(f"diffops: {len(todo)} blocks on {client.dashboard_link or client}", file=sys.stderr)
    t0 = time.perf_counter()
    status, error, failure, blocks = "failed", None, None, []
    try:
        if client is not None:
            blocks = run_distributed(ctx, todo, client, bar,
                                     is_done=lambda i: bool(result_store.done_mask()[i]))
        else:
            blocks = run_local(ctx, todo, bar, threads)
        status = "complete"
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        error, failure = f"{type(err).__name__}: {err}", err
        raise
    finally:
        bar.close()
        seconds = time.perf_counter() - t0
        try:
            result_store.end_run(run, status=status, error=error, seconds=round(seconds, 3),
                                 blocks_done=int(result_store.done_mask().sum()),
                                 executor="distributed" if client else "threads")
        except OSError as err:  # e.g. the full disk that failed the run: keep its error
            if failure is None:
                raise
            failure.add_note(f"(the store's run history could not be updated either: {err})")
    return _summarise(blocks, seconds, plan, spec)


def _stored_block(location, extent: int) -> int | None:
    """The block size of a ready store of ours over the same extent, if any."""
    try:
        if inspect(location) != "ours":
            return None
        meta = read_meta(location)
        plan = meta.get("plan") or {}
        if meta.get("ready") and plan.get("total") == extent:
            return int(plan["block_size"])
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


def _existing(location, fingerprint, parts, overwrite) -> ResultStore | None:
    """The store's result if it is this computation; None when there is nothing
    (or only something of ours that may be replaced: a half-made store, or with
    ``overwrite`` another computation or damaged metadata).

    **Raises:** `StoreError` for a location that is not ours (always), another
    computation or damaged metadata (without ``overwrite``).
    """
    state = inspect(location)
    if state in ("absent", "half-made"):
        return None
    if state == "foreign":
        raise StoreError(describe_foreign(location))
    if state == "damaged":
        if overwrite:
            return None
        try:
            read_meta(location)
            reason = "its metadata cannot be read"
        except StoreError as err:
            reason = str(err)
        raise StoreError(f"{location!r} looks like a diffops store, but {reason}; pass "
                         "overwrite=True (diffops run --overwrite) to recompute it")
    meta = read_meta(location)
    if not meta.get("ready", False):
        return None  # its creation was interrupted: no block can have been recorded
    if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
        if overwrite:
            return None
        if meta.get("format") != FORMAT:
            ResultStore.open(location)  # raises, naming the format and the way out
        keys, words = describe_difference(meta.get("fingerprint_parts") or {}, parts)
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


def _summarise(blocks: list[dict], seconds: float, plan, spec) -> dict:
    summary = {"blocks_computed": len(blocks), "seconds": seconds}
    blocks = [b for b in blocks if "kernel_s" in b]  # lost results carry no figures
    if blocks:
        for key in ("kernel_s", "d2h_s", "write_s", "compile_s"):
            summary[key] = float(sum(b[key] for b in blocks))
        summary["columns_per_s"] = sum(
            plan.block(b["index"]).size for b in blocks) / seconds if seconds > 0 else 0.0
        summary["nonfinite_blocks"] = sorted(b["index"] for b in blocks if b["nonfinite"])
        summary["hosts"] = sorted({f"{b['host']}:{b['pid']}" for b in blocks})
        summary["micro"] = blocks[0]["micro"]
        summary["kernel_intervals"] = [tuple(b["kernel_interval"]) for b in blocks]
    return summary


def hessian_to_zarr(f, x, store, *, nbatches=None, block_size=None, memory_budget=None,
                    inner_width=None, checkpoint=False, client=None, overwrite=False,
                    progress=True, threads=2, compressor=None, break_lock=False) -> Result:
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
    - `break_lock`: take over the store's lock from a run that is gone but whose
      host still holds it (a network filesystem); never needed on a local disk.

    **Returns:** a `Result`.

    **Raises:** `StoreError` for a location that is not ours, a store holding
    another result (the message says what differs) or locked by another run, or
    a disk too small for what is left; `MemoryError` when one task cannot fit a
    worker; `BlockError` naming the block when a block fails; the in-memory API's
    errors for bad input.
    """
    return _to_zarr("hessian", f, x, store, mode=None, nbatches=nbatches, block_size=block_size,
                    memory_budget=memory_budget, inner_width=inner_width, checkpoint=checkpoint,
                    client=client, overwrite=overwrite, progress=progress, threads=threads,
                    compressor=compressor, break_lock=break_lock)


def jacobian_to_zarr(f, x, store, *, mode="auto", nbatches=None, block_size=None,
                     memory_budget=None, inner_width=None, checkpoint=False, client=None,
                     overwrite=False, progress=True, threads=2, compressor=None,
                     break_lock=False) -> Result:
    """Compute the Jacobian of ``f`` at ``x`` into a Zarr store, block by block.

    As `hessian_to_zarr`; ``mode`` is ``"fwd"`` (column slabs of JVPs), ``"rev"``
    (row slabs of VJPs) or ``"auto"`` (fewer products). The stored matrix is the
    flat ``(m, n)`` Jacobian; `Result.to_pytree` gives the pytree view.
    """
    return _to_zarr("jacobian", f, x, store, mode=mode, nbatches=nbatches, block_size=block_size,
                    memory_budget=memory_budget, inner_width=inner_width, checkpoint=checkpoint,
                    client=client, overwrite=overwrite, progress=progress, threads=threads,
                    compressor=compressor, break_lock=break_lock)
