"""`hessian_to_zarr` and `jacobian_to_zarr`: resumable, out-of-core results."""

from __future__ import annotations

import math
import numbers
import os
import sys
import time
import uuid

import jax
import numpy as np
import psutil

from diffops_core import (
    auto_micro,
    check_flag,
    choose_sizing,
    format_bytes,
    get_kernels,
    jacobian_op,
    kernel_bytes,
    plan_blocks,
)

from ._execute import active_client, run_distributed, run_local
from ._fingerprint import fingerprint_parts
from ._progress import Progress
from ._result import Result
from ._store import ResultStore, RunLock, StoreError, sha256_json
from ._tasks import BlockContext

__all__ = ["hessian_to_zarr", "jacobian_to_zarr", "default_block_size", "SLAB_TARGET_BYTES"]

#: Default block: the matrix in about 16 blocks, each slab at most this large.
SLAB_TARGET_BYTES = 256 * 2**20
_DEFAULT_BLOCKS = 16


def default_block_size(extent: int, other: int, itemsize: int) -> int:
    """Blocks for resumability and parallelism (about 16), slabs of at most 256 MiB."""
    by_count = math.ceil(extent / _DEFAULT_BLOCKS)
    by_bytes = max(1, SLAB_TARGET_BYTES // max(1, other * itemsize))
    return max(1, min(extent, by_count, by_bytes))


def _host_tree(x):
    """x with array leaves copied to host numpy (what travels to workers)."""
    return jax.tree_util.tree_map(lambda v: np.asarray(v) if hasattr(v, "dtype") else v, x)


def _worker_limits(client) -> tuple[int, int]:
    """(smallest worker memory limit in bytes or 0 for none, most threads per worker)."""
    workers = client.scheduler_info().get("workers", {}).values()
    limits = [int(w.get("memory_limit") or 0) for w in workers]
    threads = [int(w.get("nthreads") or 1) for w in workers]
    if not workers:
        raise StoreError("the distributed client has no workers; start some, or pass client=None")
    positive = [lim for lim in limits if lim > 0]
    return (min(positive) if positive else 0), max(threads)


def _check_task_memory(kernels, block_size: int, micro, client, threads: int):
    """Refuse, with the numbers, a block task that cannot fit where it will run:
    XLA's compiled footprint of the block kernel plus two host copies of the slab,
    times the tasks a worker runs at once, against 80% of its memory limit (or of
    this machine's available memory on the embedded default)."""
    spec = kernels.spec
    footprint = kernel_bytes(kernels, block_size, micro or auto_micro(kernels, block_size))
    slab = block_size * (spec.m if spec.axis == 1 else spec.n) * np.dtype(spec.dtype).itemsize
    per_task = footprint.total + 2 * slab
    detail = (f"kernel {format_bytes(footprint.total)} from XLA's compiled estimate, plus "
              f"2 x {format_bytes(slab)} slab on the host")
    if client is not None:
        limit, worker_threads = _worker_limits(client)
        _check_memory(per_task, worker_threads, limit, "a worker's memory limit", detail)
    else:
        _check_memory(per_task, threads, psutil.virtual_memory().available,
                      "this machine's available memory", detail)


def _check_memory(per_task: int, threads: int, limit: int, where: str, detail: str):
    need = per_task * threads
    if limit and need > 0.8 * limit:
        raise MemoryError(
            f"one block task needs about {format_bytes(per_task)} ({detail}); with {threads} "
            f"task(s) at once that is {format_bytes(need)}, over 80% of {where} "
            f"({format_bytes(limit)}). Use a smaller block_size or memory_budget, or give the "
            "workers more memory."
        )


def _to_zarr(op_name, f, x, store, *, mode, nbatches, block_size, memory_budget, inner_width,
             checkpoint, client, overwrite, progress, threads, compressor):
    checkpoint = check_flag("checkpoint", checkpoint)
    overwrite = check_flag("overwrite", overwrite)
    progress = check_flag("progress", progress)
    if not isinstance(store, (str, os.PathLike)) and not hasattr(store, "get"):
        raise TypeError(f"store must be a path, a URL or a zarr store, got {type(store).__name__}")
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise TypeError(f"threads must be a positive int, got {threads!r}")
    if compressor not in (None, "zstd"):
        raise ValueError(f"compressor must be None or 'zstd', got {compressor!r}")

    x_host = _host_tree(x)
    kernels, x_flat, _ = get_kernels(f, x_host, "hessian" if op_name == "hessian" else "jacfwd",
                                     checkpoint=checkpoint)
    if op_name == "jacobian":
        kernels = kernels.for_op(jacobian_op(mode, kernels.spec.n, kernels.spec.m))
    spec = kernels.spec
    itemsize = np.dtype(spec.dtype).itemsize
    other = spec.m if spec.axis == 1 else spec.n
    if nbatches == 1 and block_size is None and memory_budget is None:
        nbatches = None
    if nbatches is None and block_size is None and memory_budget is None:
        block_size = default_block_size(spec.extent, other, itemsize)
    sizing = choose_sizing(kernels, nbatches=nbatches, block_size=block_size,
                           memory_budget=memory_budget, inner_width=inner_width, auto_width=False)
    plan = plan_blocks(spec.extent, block_size=sizing.block_size)
    fixed_micro = sizing.micro  # None: each worker sizes it for its own device

    x_flat = np.asarray(x_flat)
    options = {"op": spec.op, "block_size": plan.block_size, "checkpoint": checkpoint,
               "dtype": spec.dtype, "x64": bool(jax.config.jax_enable_x64), "micro": fixed_micro}
    parts = fingerprint_parts(f, x_flat, spec.in_layout.to_json(), options)
    fingerprint = sha256_json(parts)
    # what the compiled kernel depends on (not x's values): workers reuse kernels across runs
    compile_key = sha256_json({k: v for k, v in parts.items() if k != "x"})

    if client is None:
        client = active_client()

    lock = RunLock(store)
    lock.check_free()  # a run in progress: refuse before reading its half-made store
    result_store = _existing(store, fingerprint, parts, overwrite)
    if result_store is not None and not result_store.todo():  # complete: touch nothing
        return Result(result_store, {"blocks_computed": 0, "seconds": 0.0})

    # Memory is a contract: refuse before computing anything.
    _check_task_memory(kernels, plan.block_size, fixed_micro, client, threads)

    with lock:
        # look again under the lock: another run may have finished in between
        result_store = _existing(store, fingerprint, parts, overwrite)
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
                store, meta=meta, shape=spec.shape, dtype=spec.dtype, axis=spec.axis,
                block_size=plan.block_size, compressor=compressor, overwrite=True)
        result_store.remove_partial_files()
        todo = result_store.todo()

        run = result_store.start_run(len(todo))
        ctx = BlockContext(
            token=f"{fingerprint[:16]}-{run}-{uuid.uuid4().hex}", compile_key=compile_key, f=f, x=x_host, op=spec.op, checkpoint=checkpoint,
            block_size=plan.block_size, micro=fixed_micro, location=store, run=run,
            x64=bool(jax.config.jax_enable_x64), extent=spec.extent, axis=spec.axis)
        bar = Progress(plan.n_blocks, plan.n_blocks - len(todo), enabled=progress)
        if progress and client is not None:
            print(f"diffops: {len(todo)} blocks on {client.dashboard_link or client}",
                  file=sys.stderr)
        t0 = time.perf_counter()
        status, error, blocks = "failed", None, []
        try:
            if client is not None:
                blocks = run_distributed(ctx, todo, client, bar,
                                         is_done=lambda i: bool(result_store.done_mask()[i]))
            else:
                blocks = run_local(ctx, todo, bar, threads)
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException as err:
            error = f"{type(err).__name__}: {err}"
            raise
        finally:
            bar.close()
            seconds = time.perf_counter() - t0
            done_now = int(result_store.done_mask().sum())
            result_store.end_run(run, status=status, error=error, seconds=round(seconds, 3),
                                 blocks_done=done_now, executor="distributed" if client else "threads")
    summary = _summarise(blocks, seconds, plan, spec)
    return Result(result_store, summary)


def _existing(store, fingerprint, parts, overwrite) -> ResultStore | None:
    """The store's result if it is this computation; None if there is none (or,
    with ``overwrite``, another). The same computation is resumed (or, complete,
    left untouched) even with ``overwrite``; only another one is replaced.

    **Raises:** `StoreError` for another computation without ``overwrite``.
    """
    if not ResultStore.exists(store):
        return None
    try:
        result_store = ResultStore.open(store, mode="r+")
    except StoreError:
        if overwrite:
            return None
        raise
    if result_store.fingerprint == fingerprint:
        return result_store
    if overwrite:
        return None
    old = result_store.meta.get("fingerprint_parts", {})
    differs = [k for k in parts if old.get(k) != parts[k]] or ["fingerprint"]
    raise StoreError(
        f"the store {store!r} holds a result of a different computation (differs in: "
        f"{', '.join(differs)}); pass overwrite=True to replace it, or choose another store"
    )


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
                    progress=True, threads=2, compressor=None) -> Result:
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
    - `overwrite`: replace a store that holds a different result (the same
      computation is still resumed, never restarted).
    - `progress`: print a progress bar (blocks done/total, ETA) to stderr.
    - `threads`: tasks at once on the embedded default.
    - `compressor`: ``None`` (default: Hessians compress poorly) or ``"zstd"``.

    **Returns:** a `Result`.

    **Raises:** `StoreError` for a store holding another result or locked by
    another run; `MemoryError` when one task cannot fit a worker; `BlockError`
    naming the block when a block fails; the in-memory API's errors for bad input.
    """
    return _to_zarr("hessian", f, x, store, mode=None, nbatches=nbatches, block_size=block_size,
                    memory_budget=memory_budget, inner_width=inner_width, checkpoint=checkpoint,
                    client=client, overwrite=overwrite, progress=progress, threads=threads,
                    compressor=compressor)


def jacobian_to_zarr(f, x, store, *, mode="auto", nbatches=None, block_size=None,
                     memory_budget=None, inner_width=None, checkpoint=False, client=None,
                     overwrite=False, progress=True, threads=2, compressor=None) -> Result:
    """Compute the Jacobian of ``f`` at ``x`` into a Zarr store, block by block.

    As `hessian_to_zarr`; ``mode`` is ``"fwd"`` (column slabs of JVPs), ``"rev"``
    (row slabs of VJPs) or ``"auto"`` (fewer products). The stored matrix is the
    flat ``(m, n)`` Jacobian; `Result.to_pytree` gives the pytree view.
    """
    return _to_zarr("jacobian", f, x, store, mode=mode, nbatches=nbatches, block_size=block_size,
                    memory_budget=memory_budget, inner_width=inner_width, checkpoint=checkpoint,
                    client=client, overwrite=overwrite, progress=progress, threads=threads,
                    compressor=compressor)
