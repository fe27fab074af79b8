"""The plan of a run: pure, with no dask and no zarr.

`plan` traces ``f`` at ``x``, picks the block size and inner width, and
fingerprints the computation; the frozen `RunPlan` it returns holds everything
a run needs: the kernels, the block plan, the fingerprint, the store metadata
to write, and the template of the block task. Memory that a block task cannot
fit is refused here, with the numbers, before any store is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from diffops_core.internal import (
    PROBES,
    BlockPlan,
    InputTypeError,
    InputValueError,
    Kernels,
    KernelSpec,
    Sizing,
    auto_inner_width,
    budget_block,
    choose_sizing,
    detect_sparsity,
    format_iec,
    get_kernels,
    jacobian_op,
    kernel_bytes,
    parse_bytes,
)

from .._errors import NotEnoughMemoryError
from ..store import ResultStore, digest, probes_of, sha256_json, sparsity_meta, store_meta
from ._resources import Limits

__all__ = [
    "SLAB_TARGET_BYTES",
    "RunPlan",
    "default_block_size",
    "fingerprint_parts",
    "noise_digest",
    "plan",
    "task_bytes",
]


#: Default block: the matrix in about 16 blocks, each slab at most this large
#: (then shrunk to fit the workers' memory).
SLAB_TARGET_BYTES = 256 * 2**20


#: Matrix dtypes Zarr v3 stores (it has no bfloat16).
_STORABLE = ("float16", "float32", "float64")


_DEFAULT_BLOCKS = 16


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything one run needs, decided before anything is written.

    **Attributes:**

    - `operation`: ``"hessian"``, ``"jacobian"`` or ``"gauss_newton"``; `mode`: the Jacobian's mode
      as asked (``None`` for a Hessian).
    - `kernels`: the traced function's block kernels (`diffops_core.internal.Kernels`).
    - `f`, `x`: the function and the point (array leaves on the host), as tasks
      receive them.
    - `blocks`: the `BlockPlan` over the columns (rows, in rev mode).
    - `inner_width`: products vmapped at once inside a block; ``None`` lets each
      worker choose for its own device.
    - `checkpoint`, `x64`: how ``f`` is differentiated and in which precision.
    - `location`: the store; `compressor`: ``None`` or ``"zstd"``.
    - `fingerprint`, `fingerprint_parts`, `options`: the identity of the result.
    - `env`: environment variables each block task sets before it traces ``f``
      (a spec's ``env``, for workers started without it).
    - `run`, `token`: set by `for_run` once the store has recorded the run.
    - `sparsity`: a sparse result's pattern and colouring (`diffops_core.Sparsity`;
      the blocks then run over its colours, each product that of a colour's
      seed); None for a dense one. `sparsity_read`: the ``digest`` of the
      store's sparsity metadata when the pattern was read from the store at
      `location` (and checked against it) while planning; None: detected.
    """

    operation: str
    mode: str | None
    kernels: Kernels
    f: Callable
    x: Any
    blocks: BlockPlan
    inner_width: int | None
    checkpoint: bool
    x64: bool
    location: Any
    compressor: str | None
    fingerprint: str
    fingerprint_parts: dict
    options: dict
    env: tuple[tuple[str, str], ...] = ()
    noise: str | None = None
    run: int = 0
    token: str = ""
    sparsity: Any = None
    sparsity_info: dict | None = None
    sparsity_read: str | None = None

    @property
    def spec(self) -> KernelSpec:
        return self.kernels.spec

    @property
    def stored_shape(self) -> tuple[int, int]:
        """The blocked array's shape: the matrix's, or its compressed products'."""
        if self.sparsity_info is None:
            return self.spec.shape
        m, c = self.sparsity_info["compressed_shape"]
        return int(m), int(c)

    def store_meta(self) -> dict:
        """The metadata a new store of this result starts with."""
        spec = self.spec
        more = {} if self.sparsity_info is None else {"sparsity": self.sparsity_info}
        return store_meta(
            operation=self.operation,
            op=spec.op,
            mode=self.mode,
            shape=(spec.m, spec.n),
            dtype=spec.dtype,
            axis=spec.axis,
            output_shape=[s.shape for s in spec.out_layout.leaves],
            block_plan=self.blocks.to_json(),
            in_layout=spec.in_layout.to_json(),
            out_layout=spec.out_layout.to_json(),
            fingerprint_parts=self.fingerprint_parts,
            options=self.options,
            compressor=self.compressor,
            noise=self.noise,
            **more,
        )

    def slab_bytes(self, size: int | None = None) -> int:
        """Bytes of one block's slab (``size`` columns or rows; default a full block)."""
        spec = self.spec
        other = spec.m if spec.axis == 1 else spec.n
        return (size or self.blocks.block_size) * other * np.dtype(spec.dtype).itemsize

    def for_run(self, run: int, token: str) -> RunPlan:
        return dataclasses.replace(self, run=run, token=token)

    def check_memory(self, limits: Limits) -> None:
        """Before blocks are computed (a run with nothing to do skips the block
        kernel's compile): one block task fits ``limits``, by XLA's compiled
        footprint. **Raises:** `NotEnoughMemoryError`."""
        ncolors = None if self.sparsity is None else self.sparsity.ncolors
        nprobes = probes_of(self.sparsity_info)[0] if self.sparsity_info else 0
        per_task, detail = task_bytes(
            self.kernels, self.blocks.block_size, self.inner_width, ncolors, nprobes
        )
        if not limits.fits(per_task):
            raise _memory_error(per_task, detail, limits)


def default_block_size(extent: int, other: int, itemsize: int) -> int:
    """Blocks for resumability and parallelism (about 16), slabs of at most 256 MiB."""
    by_count = math.ceil(extent / _DEFAULT_BLOCKS)
    by_bytes = max(1, SLAB_TARGET_BYTES // max(1, other * itemsize))
    return max(1, min(extent, by_count, by_bytes))


def task_bytes(
    kernels: Kernels,
    block_size: int,
    inner_width: int | None = None,
    ncolors: int | None = None,
    nprobes: int = 0,
) -> tuple[int, str]:
    """(bytes one block task needs, how that was counted): XLA's compiled
    footprint of the block kernel (of ``ncolors`` colours' compressed products
    and ``nprobes`` probes') plus two host copies of the slab."""
    width = inner_width or auto_inner_width(kernels, block_size)
    footprint = kernel_bytes(kernels, block_size, width, ncolors, nprobes)
    spec = kernels.spec
    other = spec.m if spec.axis == 1 else spec.n
    slab = block_size * other * np.dtype(spec.dtype).itemsize
    detail = (
        f"kernel {format_iec(footprint.total)} from XLA's compiled estimate, plus "
        f"2 x {format_iec(slab)} slab on the host"
    )
    return footprint.total + 2 * slab, detail


def _memory_error(per_task: int, detail: str, limits: Limits) -> NotEnoughMemoryError:
    tasks = per_task * limits.threads
    if tasks < limits.floor:
        tasks_text = (
            f"the {format_iec(limits.floor)} a worker's runtime grows to "
            f"whatever the block (more than {limits.threads} task(s) need)"
        )
    else:
        tasks_text = f"{format_iec(tasks)} for {limits.threads} task(s) at once"
    base = f"{format_iec(limits.baseline)} baseline + " if limits.baseline else ""
    return NotEnoughMemoryError(
        f"one block task needs about {format_iec(per_task)} ({detail}); {base}{tasks_text} = "
        f"{format_iec(limits.peak(per_task))}, over {limits.fraction:.0%} of {limits.where} "
        f"({format_iec(limits.limit)}). Use a smaller block_size or memory_budget, or give "
        "the workers more memory."
    )


def default_block(kernels: Kernels, limits: Limits) -> int:
    """About 16 blocks with slabs of at most 256 MiB, shrunk until one task fits
    the smallest worker (or this machine); refused only when one column (row)
    cannot fit."""
    spec = kernels.spec
    itemsize = np.dtype(spec.dtype).itemsize
    other = spec.m if spec.axis == 1 else spec.n
    block = default_block_size(spec.extent, other, itemsize)
    if limits.fits(task_bytes(kernels, block)[0]):
        return block
    if not limits.fits(0):
        raise _memory_error(*task_bytes(kernels, 1), limits)
    try:
        sizing = budget_block(
            kernels, int(limits.per_task), host_bytes_per_item=2 * other * itemsize
        )
    except ValueError:
        raise _memory_error(*task_bytes(kernels, 1), limits) from None
    return max(1, min(block, sizing.block_size))


def _host_tree(x):
    """x with array leaves copied to host numpy (what travels to workers)."""
    return jax.tree_util.tree_map(lambda v: np.asarray(v) if hasattr(v, "dtype") else v, x)


def _sizing(
    kernels: Kernels,
    limits: Limits,
    stored: BlockPlan | None,
    nbatches: int | None = None,
    block_size: int | None = None,
    memory_budget: int | str | None = None,
    inner_width: int | None = None,
) -> Sizing:
    """The blocking asked for; by default about 16 blocks that fit ``limits`` (a
    store begun with a default block resumes with that block: the default
    depends on the memory there is now)."""
    if nbatches == 1 and block_size is None and memory_budget is None:
        nbatches = None
    if nbatches is None and block_size is None and memory_budget is None:
        if stored is not None and stored.extent == kernels.spec.extent:
            block_size = stored.block_size
        else:
            block_size = default_block(kernels, limits)
    return choose_sizing(
        kernels,
        nbatches=nbatches,
        block_size=block_size,
        memory_budget=memory_budget,
        inner_width=inner_width,
        auto_width=False,
    )


def _sparse_sizing(kernels: Kernels, ncolors: int, nprobes: int, limits: Limits,
                   stored: BlockPlan | None, nbatches=None, block_size=None,
                   memory_budget=None, inner_width=None) -> Sizing:  # fmt: skip
    """The blocking of a sparse result's products, over its colours and the
    check's ``nprobes`` probes after them: as asked (`choose_sizing` over
    them; more ``nbatches`` than products is one product a block), else half
    of them a block (two, for two workers), at most 64 and a 256 MiB slab,
    shrunk until one task fits ``limits``; the products of a block all at once
    (``inner_width`` may narrow that)."""
    spec = kernels.spec
    extent = ncolors + nprobes
    other = spec.m if spec.axis == 1 else spec.n
    itemsize = np.dtype(spec.dtype).itemsize
    batched = nbatches is not None and (nbatches != 1 or isinstance(nbatches, bool))
    if batched or block_size is not None or memory_budget is not None:
        if isinstance(nbatches, int) and not isinstance(nbatches, bool) and nbatches > extent:
            nbatches = extent  # more batches than products: one product a block
        size = choose_sizing(kernels, nbatches=nbatches, block_size=block_size,
                             memory_budget=memory_budget, inner_width=inner_width,
                             auto_width=False, extent=extent).block_size  # fmt: skip
    elif stored is not None and stored.extent == extent:
        size = stored.block_size
    else:
        by_bytes = max(1, SLAB_TARGET_BYTES // max(1, other * itemsize))
        size = max(1, min(math.ceil(extent / 2), 64, by_bytes))
        while size > 1 and not limits.fits(
            task_bytes(kernels, size, inner_width or size, ncolors, nprobes)[0]
        ):
            size = max(1, size // 2)
    # a block's colours at once unless asked (they are few; no probe compile to size them)
    return Sizing(size, size if inner_width is None else min(inner_width, size))


def _stored_sparsity(operation: str, kernels: Kernels, x_flat: Any, sparsity: Any,
                     stored: dict | None, location: Any, checkpoint: bool):  # fmt: skip
    """The pattern and colouring a store at ``location`` holds for this very
    computation (what JAX traced, x, its layout, the op, dtype and versions all
    as stored), read back (digests checked) instead of detecting and colouring
    again: a resume or a run with nothing to do, as (the digest of the store's
    sparsity metadata, the pattern). None when the store is of another
    computation, has no sparsity, or cannot give it."""
    if not (isinstance(sparsity, str) and sparsity == "auto") or not stored:
        return None
    parts, info = stored.get("fingerprint_parts") or {}, stored.get("sparsity")
    if not info or stored.get("operation") != operation:
        return None
    identity = kernels.traced.identity()
    same = {"function": identity.program, "data": identity.data, "x": digest(np.asarray(x_flat)),
            "x_layout": kernels.spec.in_layout.to_json()}  # fmt: skip
    if any(parts.get(k) != v for k, v in same.items()):
        return None
    was = parts.get("options") or {}
    options = {"checkpoint": checkpoint, "dtype": kernels.spec.dtype,
               "x64": bool(jax.config.read("jax_enable_x64"))}  # fmt: skip
    if any(was.get(k) != v for k, v in options.items()):
        return None
    if parts.get("versions") != fingerprint_parts(identity, np.asarray(x_flat), {}, {})["versions"]:
        return None
    try:
        store = ResultStore.open(location)
        found = store.sparsity()  # raises for a dense store: then its meta has none
        return (store.sparsity_meta or {})["digest"], found
    except Exception:  # noqa: BLE001 - damaged or unreadable: detect, and let admission decide
        return None


#: The dense result ``sparsity="auto"`` may fall back to without being asked
#: (``max_dense`` raises it; ``sparsity=None`` asks for the dense result).
MAX_DENSE = 1 << 30


def _detected(operation: str, kernels: Kernels, x_flat: Any, sparsity: Any, reuse=None,
              max_dense: Any = None):  # fmt: skip
    """(the kernels, the Sparsity) of a sparse result, from the plan's trace (or
    ``reuse``: the store's, for the same computation); None for a dense pattern
    (nothing to save: the dense result is computed, as the same computation,
    up to ``max_dense`` bytes), or without ``sparsity``.

    **Raises:** `ValueError` when the dense fallback would be larger."""
    if sparsity is None:
        return kernels, None
    limit = MAX_DENSE if max_dense is None else parse_bytes(max_dense, "max_dense")  # up front
    found = reuse if reuse is not None else detect_sparsity(operation, kernels, x_flat, sparsity)
    if found.mode == "bidirectional":  # a store holds one kind of product: JVPs or VJPs
        found = _one_sided(kernels, found, limit)
    if found.dense:
        _refuse_dense(kernels, found, limit)
        return kernels, None
    if operation == "jacobian":  # the colouring chooses JVPs (columns) or VJPs (rows)
        kernels = kernels.for_op("jacrev" if found.mode == "row" else "jacfwd")
    return kernels, found


def _one_sided(kernels: Kernels, found: Any, limit: int) -> Any:
    """A bidirectional colouring's one-sided equivalent (a store holds JVPs or
    VJPs, not both), refused when its products would exceed ``limit`` bytes."""
    one = found.one_sided()
    spec = kernels.spec
    extent = spec.n if one.mode == "row" else spec.m  # each product's length
    nbytes = one.ncolors * extent * np.dtype(spec.dtype).itemsize
    if nbytes > limit:
        raise InputValueError(
            f"this {spec.m}x{spec.n} Jacobian takes {found.ncolors} products with JVPs and VJPs "
            f"together, but a store holds one kind: {one.ncolors} {one.mode} products, "
            f"{format_iec(nbytes)}, above max_dense={format_iec(limit)}. Compute it in memory "
            "(diffops_core.sparse_jacobian), or raise max_dense"
        )
    return one


def _refuse_dense(kernels: Kernels, found: Any, limit: int) -> None:
    """Refuse a dense fallback of ``sparsity="auto"`` larger than ``limit`` bytes,
    saying why detection went dense and the ways on."""
    spec = kernels.spec
    nbytes = spec.m * spec.n * np.dtype(spec.dtype).itemsize
    if nbytes <= limit:
        return
    raise InputValueError(
        f"sparsity='auto' found no structure to use ({found.why or 'a dense pattern'}): the "
        f"dense {spec.m}x{spec.n} {spec.dtype} result would be {format_iec(nbytes)}, "
        f"{spec.extent} products, above max_dense={format_iec(limit)}. Give the pattern "
        "(sparsity: {pattern: file.npz}, or a diffops_core.Sparsity.from_pattern), raise "
        "max_dense, or ask for the dense result with sparsity none"
    )


def _traced(operation: str, f: Callable, x: Any, mode: str | None, checkpoint: bool):
    """(kernels, flat x) of ``f`` at ``x`` for ``operation``, refusing a matrix
    dtype a store cannot hold."""
    kernels, x_flat, _ = get_kernels(
        f,
        x,
        operation if operation in ("hessian", "gauss_newton") else "jacfwd",
        checkpoint=checkpoint,
    )
    if operation == "jacobian":
        kernels = kernels.for_op(jacobian_op(mode or "auto", kernels.spec.n, kernels.spec.m))
    if kernels.spec.dtype not in _STORABLE:
        raise InputTypeError(
            f"the matrix would be {kernels.spec.dtype}, which a Zarr store cannot hold; cast x "
            "(and f's output) to float32 or float64 for a stored result (the in-memory API "
            f"takes {kernels.spec.dtype})"
        )
    return kernels, x_flat


def plan(
    operation: str,
    f: Callable,
    x: Any,
    location: Any,
    *,
    limits: Limits,
    mode: str | None = None,
    checkpoint: bool = False,
    compressor: str | None = None,
    stored: dict | None = None,
    env: dict[str, str] | None = None,
    noise: str | None = None,
    sparsity: Any = None,
    max_dense: Any = None,
    **blocking: Any,
) -> RunPlan:
    """Plan a run: trace, size, fingerprint, and check memory. **Arguments:** as
    `pipeline.hessian_to_zarr` (``blocking``: `nbatches`, `block_size`,
    `memory_budget`, `inner_width`); `limits`: where the tasks run; `stored`:
    the metadata of a resumable store at ``location`` (its block resumes as
    is); `sparsity`: ``None``, ``"auto"`` or a `diffops_core.Sparsity`
    (detected and coloured, or the store's for this very computation: part of
    the plan and of the fingerprint; a dense fallback of ``"auto"`` is refused
    above ``max_dense`` bytes). **Raises:** the in-memory API's errors
    for bad input; `NotEnoughMemoryError` when no block size it may choose
    fits `limits` (a given or stored block is checked by `RunPlan.check_memory`
    once blocks are left to compute).
    """
    x_host = _host_tree(x)
    kernels, x_flat = _traced(operation, f, x_host, mode, checkpoint)
    x64 = bool(jax.config.read("jax_enable_x64"))
    reuse = _stored_sparsity(operation, kernels, x_flat, sparsity, stored, location, checkpoint)
    kernels, found = _detected(operation, kernels, x_flat, sparsity, reuse and reuse[1], max_dense)
    sizing, blocks, info = _blocking(kernels, found, limits, stored, blocking)
    options = _options(kernels, blocks, checkpoint, x64, sizing.inner_width, info)
    parts = fingerprint_parts(
        kernels.traced.identity(), np.asarray(x_flat), kernels.spec.in_layout.to_json(), options
    )
    return RunPlan(
        operation=operation, mode=mode if operation == "jacobian" else None, kernels=kernels,
        f=f, x=x_host, blocks=blocks, inner_width=sizing.inner_width, checkpoint=checkpoint,
        x64=x64, location=location, compressor=compressor, fingerprint=sha256_json(parts),
        fingerprint_parts=parts, options=options, env=tuple(sorted((env or {}).items())),
        noise=noise, sparsity=found, sparsity_info=info,
        sparsity_read=None if reuse is None or found is not reuse[1] else reuse[0],
    )  # fmt: skip


def _blocking(kernels: Kernels, found: Any, limits: Limits, stored: dict | None,
              blocking: dict) -> tuple[Sizing, BlockPlan, dict | None]:  # fmt: skip
    """(sizing, block plan, sparsity metadata) of a run: over the columns (rows),
    or over a sparse result's colours and, for a column or star colouring, the
    check's probes after them (their seed the store's when it has one: a
    resume computes the same vectors). **Raises:** `NotEnoughMemoryError`."""
    was = BlockPlan.from_json(stored["plan"]) if stored else None
    if found is None:
        sizing = _sizing(kernels, limits, was, **blocking)
        blocks, ncolors, nprobes = BlockPlan(kernels.spec.extent, sizing.block_size), None, 0
    else:
        ncolors, nprobes = found.ncolors, 0 if found.mode == "row" else PROBES
        sizing = _sparse_sizing(kernels, ncolors, nprobes, limits, was, **blocking)
        blocks = BlockPlan(ncolors + nprobes, sizing.block_size)
    if found is None:
        return sizing, blocks, None
    count, seed = probes_of((stored or {}).get("sparsity") or {})
    if count != nprobes or seed is None:
        seed = secrets.randbits(32)
    probes = {"count": nprobes, "seed": seed} if nprobes else None
    return sizing, blocks, sparsity_meta(found, probes)


def _options(kernels: Kernels, blocks: BlockPlan, checkpoint: bool, x64: bool,
             inner_width: int | None, sparsity: dict | None) -> dict:  # fmt: skip
    """The options that change the stored result (part of its fingerprint)."""
    options = {
        "op": kernels.spec.op,
        "block_size": blocks.block_size,
        "checkpoint": checkpoint,
        "dtype": kernels.spec.dtype,
        "x64": x64,
        "inner_width": inner_width,
    }
    if sparsity is not None:  # another pattern or colouring is another computation
        # and the probes' products stored after the colours' (their seed is not
        # the computation's: a resume keeps the store's)
        options["sparsity"] = {
            **{k: sparsity[k] for k in ("mode", "ncolors", "pattern", "colors")},
            "probes": probes_of(sparsity)[0],
        }
    return options


def fingerprint_parts(identity, x_flat: np.ndarray, layout_json: dict, options: dict) -> dict:
    """The parts of a result's fingerprint (a JSON-able dict).

    **Arguments:** `identity` (the traced function's `Identity`), the flat ``x``,
    its layout's JSON, and the options that change the stored matrix.
    """
    import jax
    import jaxlib

    from diffops_core import __version__

    return {
        "function": identity.program,
        "data": identity.data,
        "x": digest(x_flat),
        "x_layout": layout_json,
        "options": options,
        "versions": {"diffops": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__},
    }


def noise_digest(std=None, cov=None, inv_cov=None) -> str:
    """A digest of a noise model (which form, and its values): kept beside the
    fingerprint so that a refusal can say the noise changed, not just the data."""
    import jax

    h = hashlib.sha256()
    for name, value in (("std", std), ("cov", cov), ("inv_cov", inv_cov)):
        if value is None:
            continue
        h.update(name.encode())
        for leaf in jax.tree_util.tree_leaves(value):
            array = np.asarray(leaf, np.float64)
            h.update(f"{array.shape};".encode())
            h.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    return h.hexdigest()
