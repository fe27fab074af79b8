"""What runs on a worker: one block = kernel, device-to-host, write, record.

The `BlockContext` (function, x, options, store location, the driver's identity
of ``f``) travels to each worker once; the worker traces ``f``, checks that it
is the driver's computation, and reuses the compiled block kernel (cached by
`diffops_core` on what JAX traced) for every block it runs.

Fault injection for tests: ``DIFFOPS_FAULTS`` (or the file named by
``DIFFOPS_FAULTS_FILE``, read at each block) holds a JSON list of faults, each
``{"block": i, "kind": "raise"|"exit"|"nan"|"sleep"|"enospc", "at": "start"|"kernel"|"data"|"write",
"seconds": s, "once": "/dir"}``. ``at="start"`` fires before the kernel, ``"kernel"``
after it (where ``nan`` poisons the slab), ``"data"`` just before the data is
written, ``"write"`` after the data is written but before the record. With ``once`` the
fault fires only the first time (a marker file in that directory).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time

import numpy as np

from ._store import CHECKSUM, MILLIS, NONFINITE, RUN, STATE, checksum

__all__ = ["BlockContext", "BlockError", "run_block"]


class BlockError(RuntimeError):
    """A block failed; finished blocks stay complete and a rerun resumes."""

    def __init__(self, index: int, start: int, stop: int, axis: int, cause: str):
        self.index, self.start, self.stop = index, start, stop
        what = "columns" if axis == 1 else "rows"
        super().__init__(f"block {index} ({what} {start}:{stop}) failed: {cause}")

    def __reduce__(self):  # travels back from workers intact
        return (_rebuild_block_error, (self.index, self.start, self.stop, str(self)))


def _rebuild_block_error(index, start, stop, message):
    err = BlockError.__new__(BlockError)
    err.index, err.start, err.stop = index, start, stop
    RuntimeError.__init__(err, message)
    return err


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """Everything a worker needs to run any block of one result.

    `program` and `data` are the driver's `diffops_core.Identity` of ``f``: a
    worker traces ``f`` itself and refuses to write when its trace differs (a
    worker that imports another version of the model, or reads other data).
    """

    token: str
    f: object
    x: object
    op: str
    checkpoint: bool
    program: str
    data: str
    block_size: int
    micro: int | None
    location: object
    run: int
    x64: bool
    extent: int
    axis: int


class IdentityMismatch(RuntimeError):
    """``f`` traces to another computation on a worker than on the driver."""


def hold(ctx: BlockContext) -> BlockContext:
    """The context as a task result (rebuildable by the scheduler if lost)."""
    return ctx


def _check_identity(ctx: BlockContext, identity):
    if (identity.program, identity.data) == (ctx.program, ctx.data):
        return
    import socket

    what = ("f's traced program" if identity.program != ctx.program
            else "the data f reads (arrays it closes over, globals, files a module loaded)")
    raise IdentityMismatch(
        f"on worker {socket.gethostname()}:{os.getpid()}, {what} differs from the driver's, so "
        "its blocks would belong to another computation; give the workers the same model code, "
        "data files and environment as the driver"
    )


class _WorkerState:
    def __init__(self, ctx: BlockContext):
        import jax
        import jax.flatten_util
        import zarr

        from diffops_core.internal import auto_micro, get_kernels

        # Traced here, from the function as this process sees it; compiled
        # kernels are shared with every earlier run of the same program.
        kernels = get_kernels(ctx.f, ctx.x, ctx.op, checkpoint=ctx.checkpoint)[0]
        _check_identity(ctx, kernels.traced.identity())
        x_flat = jax.flatten_util.ravel_pytree(ctx.x)[0]
        micro = ctx.micro or auto_micro(kernels, ctx.block_size)
        self.spec = kernels.spec
        self.kernel = kernels.compiled_block(ctx.block_size, micro)
        # linearise once per run: every block reuses the residuals
        self.lin = kernels.compiled_prepare()(jax.device_put(x_flat))
        group = zarr.open_group(ctx.location, mode="r+")
        self.matrix = group["matrix"]
        self.records = group["blocks"]
        self.micro = micro
        # One kernel at a time per process: XLA already uses every core (or the
        # GPU) for one, so a second thread only overlaps its copy and write.
        self.kernel_lock = threading.Lock()


_STATES: dict[str, _WorkerState] = {}
_STATES_LOCK = threading.RLock()


def _state(ctx: BlockContext) -> _WorkerState:
    with _STATES_LOCK:
        state = _STATES.get(ctx.token)
        if state is None:
            _STATES.clear()  # one result at a time per process: free the last one
            state = _WorkerState(ctx)
            _STATES[ctx.token] = state
        return state


def _faults(index: int, at: str):
    spec = os.environ.get("DIFFOPS_FAULTS")
    path = os.environ.get("DIFFOPS_FAULTS_FILE")
    if not spec and path and os.path.exists(path):
        with open(path) as fh:
            spec = fh.read()
    if not spec:
        return []
    fired = []
    for fault in json.loads(spec):
        if fault.get("block") != index or fault.get("at", "start") != at:
            continue
        once = fault.get("once")
        if once:
            marker = os.path.join(once, f"fault-{index}-{fault['kind']}-{at}")
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
        fired.append(fault)
    return fired


def _inject(index: int, at: str, slab=None):
    """Fire the faults planned for (block, stage); returns the (maybe poisoned) slab."""
    for fault in _faults(index, at):
        kind = fault["kind"]
        if kind == "raise":
            raise RuntimeError(f"injected fault in block {index}")
        if kind == "exit":
            os._exit(17)
        if kind == "sleep":
            time.sleep(float(fault.get("seconds", 1.0)))
        if kind == "enospc":  # a full disk: the write fails part-way
            import errno

            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        if kind == "nan" and slab is not None:
            slab = np.array(slab)  # device-backed host arrays are read-only
            slab.reshape(-1)[0] = np.nan
    return slab


def run_block(ctx: BlockContext, index: int) -> dict:
    """Compute block ``index`` and write it and its record into the store.

    **Returns:** per-block figures (seconds of kernel, device-to-host, write;
    non-finite count; host and pid).

    **Raises:** `BlockError` naming the block, whatever went wrong.
    """
    import jax

    # x64 is thread-local configuration here: never flip it for the whole process
    with jax.enable_x64(ctx.x64):
        return _run_block(ctx, index)


def _run_block(ctx: BlockContext, index: int) -> dict:
    t0 = time.perf_counter()
    from diffops_core.internal import BlockPlan

    block = BlockPlan(ctx.extent, ctx.block_size).block(index)
    try:
        state = _state(ctx)
        _inject(index, "start")
        with state.kernel_lock:
            t_start, wall_start = time.perf_counter(), time.time()
            device_slab = state.kernel(state.lin, np.int32(block.window))
            device_slab.block_until_ready()
            t_kernel, wall_kernel = time.perf_counter(), time.time()
        slab = np.asarray(device_slab)
        del device_slab
        t_host = time.perf_counter()
        keep = slab[:, block.keep] if ctx.axis == 1 else slab[block.keep, :]
        if not keep.flags.c_contiguous:
            keep = np.ascontiguousarray(keep)
        keep = _inject(index, "kernel", keep)
        region = (slice(None), slice(block.start, block.stop)) if ctx.axis == 1 \
            else (slice(block.start, block.stop), slice(None))
        _inject(index, "data")
        state.matrix[region] = keep
        t_write = time.perf_counter()
        nonfinite = int(keep.size - np.count_nonzero(np.isfinite(keep)))
        crc = checksum(keep)
        _inject(index, "write")
        record = np.zeros(5, dtype=np.int64)
        record[[STATE, CHECKSUM, MILLIS, RUN, NONFINITE]] = [
            1, crc, int((time.perf_counter() - t0) * 1000), ctx.run, nonfinite]
        state.records[index, :] = record
    except Exception as err:  # noqa: BLE001 - every failure is reported as this block's
        raise BlockError(index, block.start, block.stop, ctx.axis,
                         f"{type(err).__name__}: {err}") from err
    return {
        "index": index,
        "compile_s": t_start - t0,
        "kernel_s": t_kernel - t_start,
        "d2h_s": t_host - t_kernel,
        "write_s": t_write - t_host,
        "total_s": time.perf_counter() - t0,
        "nonfinite": nonfinite,
        # wall-clock interval of the kernel, for device busy fractions across threads
        "kernel_interval": (wall_start, wall_kernel),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "micro": state.micro,
    }

