"""Block and micro-batch sizing from XLA's compiled memory analysis.

Two questions, both answered by compiling (never running) the block kernel and
reading ``compiled.memory_analysis()``:

- how many products to vmap at once inside a block (the micro-batch width): on
  a CPU, a narrow vmap keeps each micro-batch's temporaries in cache, and the
  best width is the one whose temporaries total about `WIDTH_TARGET_BYTES`;
  on an accelerator, wider is better;
- how large a block fits a memory budget: the largest block whose kernel
  (argument, slab and temporaries) fits, or an error with the numbers.
"""

from __future__ import annotations

import dataclasses

import jax

from .._errors import InputValueError
from ._kernels import Kernels
from ._plan import format_bytes, parse_bytes

__all__ = [
    "Sizing",
    "auto_inner_width",
    "budget_block",
    "kernel_bytes",
    "peak_rss",
    "vm_bytes",
]

#: Temporaries one micro-batch may hold, per platform. Measured on a 2-core CPU
#: (benchmarks/RESULTS.md, inner-width sweep): the best width put 20-40 MB of
#: temporaries in flight on every benchmark problem. Accelerators want width.
WIDTH_TARGET_BYTES = {"cpu": 40e6}
ACCELERATOR_WIDTH_TARGET_BYTES = 2e9
_PROBE = 8  # micro-batch width compiled to measure per-product temporaries


@dataclasses.dataclass(frozen=True)
class Footprint:
    """XLA's compiled memory figures for one kernel, in bytes."""

    argument: int
    output: int
    temp: int
    alias: int

    @property
    def total(self) -> int:
        return self.argument + self.output + self.temp - self.alias


def kernel_bytes(
    kernels: Kernels,
    block_size: int,
    inner_width: int,
    ncolors: int | None = None,
    nprobes: int = 0,
) -> Footprint:
    """XLA's memory figures for ``kernels.compiled_block(block_size, inner_width)``
    (with ``ncolors``, the compressed products' `compiled_seeded_block`, with
    ``nprobes`` probe vectors after the colours): the
    slab kernel compiled (never run) for abstract inputs, whose arguments include
    the linearisation's residuals. The compile is cached and reused by executors."""
    if ncolors is None:
        compiled = kernels.compiled_block(block_size, inner_width)
    else:
        compiled = kernels.compiled_seeded_block(ncolors, block_size, inner_width, nprobes)
    stats = compiled.memory_analysis()
    if stats is None:  # some backends give no analysis: treat as free
        return Footprint(0, 0, 0, 0)
    return Footprint(
        int(stats.argument_size_in_bytes),
        int(stats.output_size_in_bytes),
        int(stats.temp_size_in_bytes),
        int(stats.alias_size_in_bytes),
    )


def _platform() -> str:
    return jax.default_backend()


def _per_product_temp(kernels: Kernels) -> float:
    key = ("per_product_temp",)
    if key not in kernels.memo:
        probe = min(_PROBE, kernels.spec.extent)
        kernels.memo[key] = kernel_bytes(kernels, probe, probe).temp / probe
    return kernels.memo[key]


def auto_inner_width(kernels: Kernels, limit: int) -> int:
    """The micro-batch width the kernels use by default, at most ``limit``.

    On CPU, the largest power of two whose temporaries (XLA's estimate) stay
    within ``WIDTH_TARGET_BYTES``; elsewhere, up to ``limit`` within the
    accelerator target.
    """
    target = WIDTH_TARGET_BYTES.get(_platform(), ACCELERATOR_WIDTH_TARGET_BYTES)
    per = _per_product_temp(kernels)
    width = 1
    while width * 2 <= limit and width * 2 * per <= target:
        width *= 2
    return min(width, limit)


@dataclasses.dataclass(frozen=True)
class Sizing:
    """A block size and micro-batch width, and the kernel's estimated footprint."""

    block_size: int
    inner_width: int | None
    footprint: Footprint | None = None


def budget_block(
    kernels: Kernels, memory_budget, inner_width: int | None = None, host_bytes_per_item: int = 0
) -> Sizing:
    """The largest block whose compiled kernel fits ``memory_budget``.

    **Arguments:**

    - `kernels`: the kernels to size.
    - `memory_budget`: bytes, or a string such as ``"512MB"``.
    - `inner_width`: a micro-batch width to use (default: `auto_inner_width`, capped by the block).
    - `host_bytes_per_item`: bytes a block needs outside the kernel per column
      (row) it holds, counted against the same budget (an executor's host
      copies of the slab).

    **Returns:** a `Sizing`.

    **Raises:** `ValueError` with the numbers when even a block of one product
    does not fit.
    """
    budget = parse_bytes(memory_budget)
    spec = kernels.spec
    host = max(0, int(host_bytes_per_item))
    one = kernel_bytes(kernels, 1, 1)
    if one.total + host > budget:
        extra = f" plus {format_bytes(host)} on the host" if host else ""
        raise InputValueError(
            f"one {'row' if spec.axis == 0 else 'column'} needs {format_bytes(one.total + host)} "
            f"(XLA's compiled estimate for a block of 1{extra}); memory_budget={memory_budget!r} "
            "cannot hold a block. Raise memory_budget, or pass checkpoint=True to trade "
            "compute for memory."
        )
    width = inner_width or auto_inner_width(kernels, spec.extent)
    itemsize = jax.numpy.dtype(spec.dtype).itemsize
    per_slab_col = (spec.m if spec.axis == 1 else spec.n) * itemsize
    per_temp = max(_per_product_temp(kernels), 0.0)

    def estimate(block, w):
        return one.total + (block - 1) * per_slab_col + (w - 1) * per_temp + block * host

    # Largest micro-batch that fits with a block of its own width, then the
    # largest block at that width.
    while width > 1 and estimate(width, width) > budget:
        width //= 2
    block = max(width, int(width + (budget - estimate(width, width)) // (per_slab_col + host)))
    block = min(block, spec.extent)
    width = min(width, block)
    # Check the estimate against the compiled kernel; shrink until it fits.
    for _ in range(6):
        footprint = kernel_bytes(kernels, block, width)
        if footprint.total + block * host <= budget:
            return Sizing(block, width, footprint)
        scale = budget / (footprint.total + block * host)
        block = max(1, int(block * scale * 0.95))
        width = max(1, min(width, block) if scale > 0.5 else width // 2)
        width = min(width, block)
    return Sizing(1, 1, one)


def vm_bytes(field: str = "VmHWM") -> int:
    """A figure of this process from ``/proc/self/status``, in bytes: ``VmHWM``
    (peak resident memory of this process image; unlike ``ru_maxrss`` it does not
    survive exec, so a worker spawned by a large driver reports its own peak) or
    ``VmRSS`` (resident now). 0 where there is no /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM)."""
    return vm_bytes("VmHWM")


def reset_peak() -> bool:
    """Reset this process's peak resident memory to what it holds now (Linux:
    ``5`` written to ``/proc/self/clear_refs``), so that `peak_rss` then
    measures a stage alone. **Returns:** whether it could."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # not Linux, or not allowed
        return False
    return True
