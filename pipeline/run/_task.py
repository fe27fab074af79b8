"""What runs on a worker: one block = kernel, device-to-host, write, record.

A `BlockTask` (function, x, options, store location, the driver's identity of
``f``) travels to each worker once; the worker traces ``f``, checks that it is
the driver's computation, and reuses the compiled block kernel (cached by
`diffops_core` on what JAX traced) for every block it runs. Calling the task
on a block index computes the block, writes its slab, then its completion
record, and returns a `BlockEvent`.

The steps (`compute`, `write_data`, `write_record`) are methods, so a test can
wrap them (fault injection lives in the tests, never here).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.flatten_util
import numpy as np
import zarr

from diffops_core.internal import BlockPlan, auto_inner_width, get_kernels, probe_vectors

from .._errors import BlockError, IdentityMismatch
from ..store import COLORS, COMPRESSED, SlabWriter, checksum, digest, probes_of, record
from ._types import BlockEvent

if TYPE_CHECKING:  # pragma: no cover
    from diffops_core.internal import Block

    from ._plan import RunPlan

__all__ = ["BlockTask"]


@dataclasses.dataclass
class _WorkerState:
    """What a process keeps for one run: the compiled kernel, the linearisation
    (computed once), the open arrays, and the kernel lock (`kernel_lock`)."""

    kernel: Callable
    lin: Any
    writer: SlabWriter
    records: SlabWriter
    inner_width: int
    kernel_lock: Any = dataclasses.field(default_factory=contextlib.nullcontext)
    seeds: tuple | None = None
    """A sparse result: the colouring and the check's probe vectors, on the device."""


def kernel_lock(platform: str) -> Any:
    """What a block holds while its kernel runs. On a GPU, a lock: one kernel at
    a time (they share one stream anyway, and the plan counts one kernel's
    device temporaries). On a CPU, nothing: two blocks' kernels at once keep
    both cores busier than one kernel's own threads do (the PSF demo at block
    64: 0.87x the in-memory call without the lock, 1.13x with it; the MLP the
    same either way: benchmarks/RESULTS.md, pipeline overhead); the memory
    plan counts every task's kernel already (`Limits.threads`)."""
    return contextlib.nullcontext() if platform == "cpu" else threading.Lock()


_STATES: dict[str, _WorkerState] = {}


_STATES_LOCK = threading.RLock()


def constant_avals(traced) -> tuple[str, ...]:
    return tuple(f"{np.dtype(c.dtype).name}{list(np.shape(c))}" for c in traced.consts)


def _global_x64() -> bool:
    """This process's own jax_enable_x64 (not a thread's `jax.enable_x64` context):
    the setting module-level arrays were built under at import."""
    try:
        from jax._src import config  # no public reader of the global value

        return bool(config.enable_x64.get_global())
    except (ImportError, AttributeError):  # pragma: no cover - another jax
        return os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true")


def _width(aval: str) -> str:
    return "".join(ch for ch in aval.split("[")[0] if ch.isdigit())


def _nonfinite(data: np.ndarray) -> int:
    """How many entries are NaN or infinite. A finite sum means none are (a NaN
    or an infinity anywhere makes the sum non-finite), and costs no temporary."""
    if np.isfinite(np.sum(data)):
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


@dataclasses.dataclass(frozen=True)
class BlockTask:
    """Everything a worker needs to run any block of one run.

    `program` and `data` are the driver's identity of ``f``: a worker traces
    ``f`` itself and refuses to write when its trace differs (a worker that
    imports another version of the model, or reads other data).
    """

    token: str
    f: Callable
    x: Any
    op: str
    checkpoint: bool
    program: str
    data: str
    block_size: int
    inner_width: int | None
    location: Any
    run: int
    x64: bool
    extent: int
    axis: int
    env: tuple[tuple[str, str], ...] = ()
    consts: tuple[str, ...] = ()
    """The driver's constants of ``f``, as ``dtype[shape]`` (for a mismatch message)."""
    ncolors: int | None = None
    """A sparse result: its colours (the blocks' extent); None for a dense one."""
    colors: str = ""
    """A sparse result: the digest of its colouring, which a worker reads from
    the store and checks before it computes a product."""
    probes: tuple[int, int | None] = (0, None)
    """A sparse result: (count, seed) of the check's probe vectors, whose
    products follow the colours' (`diffops_core.internal.probe_vectors`)."""
    local: Any = dataclasses.field(default=None, compare=False, repr=False)
    """The driver's own traced kernels, for a task run in the driver's process
    (the embedded default: tracing ``f`` again would find what the plan found).
    Never pickled: a worker elsewhere traces ``f`` itself and checks it."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "local"}

    @classmethod
    def from_plan(cls, plan: RunPlan, local: bool = False) -> BlockTask:
        """The task of ``plan``; ``local``: it runs in this process (`local`)."""
        identity = plan.kernels.traced.identity()
        return cls(
            token=plan.token,
            f=plan.f,
            x=plan.x,
            op=plan.spec.op,
            checkpoint=plan.checkpoint,
            program=identity.program,
            data=identity.data,
            block_size=plan.blocks.block_size,
            inner_width=plan.inner_width,
            location=plan.location,
            run=plan.run,
            x64=plan.x64,
            extent=plan.blocks.extent,
            axis=plan.spec.axis,
            env=plan.env,
            consts=constant_avals(plan.kernels.traced),
            ncolors=None if plan.sparsity_info is None else plan.sparsity_info["ncolors"],
            colors="" if plan.sparsity_info is None else plan.sparsity_info["colors"],
            probes=(0, None) if plan.sparsity_info is None else probes_of(plan.sparsity_info),
            local=plan.kernels if local else None,
        )

    def __call__(self, index: int) -> BlockEvent:
        """Compute block ``index`` and write it and its record into the store.

        **Raises:** `BlockError` naming the block, whatever went wrong.
        """
        block = BlockPlan(self.extent, self.block_size).block(index)
        # x64 is thread-local configuration here: never flip it for the whole process
        with jax.enable_x64(self.x64):
            try:
                return self.run_block(block)
            except Exception as err:
                raise BlockError(
                    index, block.start, block.stop, self.axis, f"{type(err).__name__}: {err}"
                ) from err

    def run_block(self, block: Block) -> BlockEvent:
        t0 = time.perf_counter()
        state = self.state()
        with state.kernel_lock:
            t_start, wall_start = time.perf_counter(), time.time()
            slab = self.compute(state, block)
            t_kernel, wall_kernel = time.perf_counter(), time.time()
        data = self.to_host(slab, block)
        t_host = time.perf_counter()
        self.write_data(state, block, data)
        missing = state.writer.missing(*self.region(block))
        if missing:  # never record a block whose data is not there
            raise OSError(f"the slab's chunks {missing[:3]} are not in the store after writing")
        t_write = time.perf_counter()
        nonfinite = _nonfinite(data)
        millis = int((time.perf_counter() - t0) * 1000)
        done = record(checksum(data), millis, self.run, nonfinite)
        self.write_record(state, block, done)
        return BlockEvent(
            index=block.index,
            start=block.start,
            stop=block.stop,
            compile_s=t_start - t0,
            kernel_s=t_kernel - t_start,
            d2h_s=t_host - t_kernel,
            write_s=t_write - t_host,
            total_s=time.perf_counter() - t0,
            nonfinite=nonfinite,
            kernel_interval=(wall_start, wall_kernel),
            host=socket.gethostname(),
            pid=os.getpid(),
            inner_width=state.inner_width,
        )

    # -- the steps ------------------------------------------------------------------

    def state(self) -> _WorkerState:
        """This process's state for the run (built on its first block)."""
        with _STATES_LOCK:
            state = _STATES.get(self.token)
            if state is None:
                _STATES.clear()  # one run at a time per process: free the last one
                with environment(dict(self.env)):  # compiles trace under it too
                    state = self._build_state()
                _STATES[self.token] = state
            return state

    def kernels(self):
        """``f`` traced in this process, with the run's environment set, and checked
        to be the driver's computation. **Raises:** `IdentityMismatch`."""
        if self.local is not None:  # this process traced it for the plan
            return self.local
        # traced here, from the function as this process sees it, with the run's
        # environment set only while it is traced (the next run on this worker
        # sees the worker's own); compiled kernels are shared with every
        # earlier run of the same program
        with environment(dict(self.env)):
            kernels = get_kernels(self.f, self.x, self.op, checkpoint=self.checkpoint)[0]
            self._check_identity(kernels.traced)
        return kernels

    def _build_state(self) -> _WorkerState:
        kernels = self.kernels()
        x_flat = jax.flatten_util.ravel_pytree(self.x)[0]
        width = self.inner_width or auto_inner_width(kernels, self.block_size)
        group = zarr.open_group(self.location, mode="r+", use_consolidated=False)
        seeds = None
        if self.ncolors is None:
            kernel = kernels.compiled_block(self.block_size, width)
        else:
            count = self.probes[0]
            kernel = kernels.compiled_seeded_block(self.ncolors, self.block_size, width, count)
            seeds = (self._colors(group), self._probes(kernels, group))
        return _WorkerState(
            kernel=kernel,
            # linearise once per run: every block reuses the residuals
            lin=kernels.compiled_prepare()(jax.device_put(x_flat)),
            writer=SlabWriter(group[COMPRESSED if seeds is not None else "matrix"]),  # type: ignore[arg-type]
            records=SlabWriter(group["blocks"]),  # type: ignore[arg-type]
            inner_width=width,
            kernel_lock=kernel_lock(jax.default_backend()),
            seeds=seeds,
        )

    def _colors(self, group) -> Any:
        """The run's colouring, read from the store and checked against the
        driver's digest of it (never a product of another colouring)."""
        colors = np.asarray(group[COLORS][...], np.int32)
        if digest(colors) != self.colors:
            raise IdentityMismatch(
                "the colouring stored in the store differs from the driver's (the store was "
                "replaced or damaged during the run); run it again"
            )
        return jax.device_put(colors)

    def _probes(self, kernels, group) -> Any:
        """The check's probe vectors (``(count, extent)``; one row of zeros when
        there are none), of the input's dtype, on the device: of the store's
        seed, checked (a block of other vectors would lift the check's own
        noise estimate, its linearity defect, and hide a wrong product)."""
        count, seed = self.probes
        stored = probes_of((group.attrs.get("diffops") or {}).get("sparsity") or {})
        if stored != (count, seed):
            raise IdentityMismatch(
                f"the check's probe vectors stored in the store ({stored[0]}, seed "
                f"{stored[1]}) differ from the driver's ({count}, seed {seed}): the store was "
                "replaced or damaged during the run; run it again"
            )
        extent = kernels.spec.extent
        vectors = np.zeros((1, extent))
        if count and seed is not None:
            vectors = probe_vectors(extent, seed)
        return jax.device_put(vectors.astype(kernels.seed_dtype))

    def _check_identity(self, traced) -> None:
        identity = traced.identity()
        if (identity.program, identity.data) == (self.program, self.data):
            return
        here = socket.gethostname() + ":" + str(os.getpid())
        raise IdentityMismatch(f"on worker {here}, {self._difference(traced, identity)}")

    def _difference(self, traced, identity) -> str:
        """What differs between this process's trace of ``f`` and the driver's,
        as specifically as can be said: constants' dtypes and shapes (with the
        JAX setting that explains a dtype), then the program, then the data."""
        mine = constant_avals(traced)
        if self.consts and mine != self.consts:
            pairs = [
                (i, a, b) for i, (a, b) in enumerate(zip(mine, self.consts, strict=False)) if a != b
            ]
            if len(mine) != len(self.consts):
                what = f"f reads {len(mine)} constant arrays here, {len(self.consts)} on the driver"
            else:
                what = "; ".join(
                    f"constant {i} is {a} here, {b} on the driver" for i, a, b in pairs[:3]
                )
            x64 = _global_x64()  # what modules imported here were built under
            if x64 != self.x64 and any(_width(a) != _width(b) for _, a, b in pairs):
                what += (
                    f" (this worker imported f's module with jax_enable_x64={x64}, the driver "
                    f"runs with {self.x64}: start the workers with JAX_ENABLE_X64="
                    f"{int(self.x64)} in their environment)"
                )
            return what + "; its blocks would belong to another computation"
        if identity.program != self.program:
            return (
                "f's traced program differs from the driver's (another version of the model "
                "code, or other JAX settings); give the workers the driver's model code"
            )
        return (
            "the data f reads (arrays it closes over, globals, files a module loaded) differs "
            "from the driver's; give the workers the same data files and environment"
        )

    def compute(self, state: _WorkerState, block: Block):
        """Run the block kernel; the slab on the device, finished."""
        first = block.first_batch(state.inner_width)
        if state.seeds is not None:
            slab = state.kernel(state.lin, *state.seeds, np.int32(block.window), np.int32(first))
        else:
            slab = state.kernel(state.lin, np.int32(block.window), np.int32(first))
        slab.block_until_ready()
        return slab

    def to_host(self, slab, block: Block) -> np.ndarray:
        """The block's own columns (rows) of the slab, C-contiguous on the host."""
        host = np.asarray(slab)
        keep = host[:, block.keep] if self.axis == 1 else host[block.keep, :]
        return keep if keep.flags.c_contiguous else np.ascontiguousarray(keep)

    def region(self, block: Block) -> tuple[slice, slice]:
        if self.axis == 1:
            return (slice(None), slice(block.start, block.stop))
        return (slice(block.start, block.stop), slice(None))

    def write_data(self, state: _WorkerState, block: Block, data: np.ndarray) -> None:
        """Write the slab: whole chunks no other task touches."""
        state.writer.write(*self.region(block), data)

    def write_record(self, state: _WorkerState, block: Block, record: np.ndarray) -> None:
        """Write the completion record, after the data."""
        state.records.write(slice(block.index, block.index + 1), slice(None), record[None, :])


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """``os.environ`` with ``values`` set, restored after (what ``f`` reads
    while it is traced, it reads here); ``FSSPEC_<PROTOCOL>`` values (a
    spec's storage options) also in fsspec's configuration meanwhile (it
    reads the environment only at import), so a store opened inside uses them."""
    was = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    storage = {k: v for k, v in values.items() if k.startswith("FSSPEC_")}
    conf = None
    if storage:
        import copy

        import fsspec.config

        conf = copy.deepcopy(fsspec.config.conf)
        fsspec.config.set_conf_env(fsspec.config.conf, storage)
    try:
        yield
    finally:
        if conf is not None:
            import fsspec.config

            fsspec.config.conf.clear()
            fsspec.config.conf.update(conf)
        for key, value in was.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
