"""The block planner: pure chunk arithmetic, no JAX.

A matrix with ``total`` columns (or rows) is cut into blocks of ``block_size``.
Every block but possibly the last is full; the last one is *clamped* rather than
padded: its kernel window is shifted left so that it ends exactly at ``total``,
and only the columns that no earlier block owns are kept. Every column computed
is therefore a real column (no zero padding to trim), and a fixed-width kernel
compiled once serves every block.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re

from .._errors import InputTypeError, InputValueError

__all__ = [
    "Block",
    "BlockPlan",
    "format_bytes",
    "format_iec",
    "parse_bytes",
    "plan_blocks",
    "resolve_block_size",
]


@dataclasses.dataclass(frozen=True)
class Block:
    """One block of a plan.

    **Attributes:**

    - `index`: position of the block in the plan (0-based).
    - `start`, `stop`: the half-open range of columns this block owns and writes.
    - `window`: where the fixed-width kernel window starts (``window <= start``;
      ``window + block_size >= stop``). Columns ``window .. start`` are recomputed
      duplicates owned by the previous block and are dropped on write.
    """

    index: int
    start: int
    stop: int
    window: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def first_batch(self, inner_width: int) -> int:
        """The first micro-batch of ``inner_width`` columns (counted from `window`) that
        holds a column of this block's own: the ones before it need not run."""
        return (self.start - self.window) // inner_width

    @property
    def keep(self) -> slice:
        """Slice of the kernel's slab (along the block axis) that this block owns."""
        return slice(self.start - self.window, self.stop - self.window)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """A partition of ``range(extent)`` into ``n_blocks`` blocks of ``block_size``."""

    extent: int
    block_size: int

    def __post_init__(self):
        if self.extent < 1:
            raise InputValueError(f"extent must be >= 1, got {self.extent}")
        if not 1 <= self.block_size <= self.extent:
            raise InputValueError(
                f"block_size must be in [1, {self.extent}], got {self.block_size}"
            )

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.extent / self.block_size)

    def block(self, index: int) -> Block:
        if not 0 <= index < self.n_blocks:
            raise IndexError(f"block index {index} out of range [0, {self.n_blocks})")
        start = index * self.block_size
        stop = min(start + self.block_size, self.extent)
        window = min(start, self.extent - self.block_size)
        return Block(index, start, stop, window)

    def __iter__(self):
        return (self.block(i) for i in range(self.n_blocks))

    def __len__(self) -> int:
        return self.n_blocks

    def to_json(self) -> dict:
        return {"extent": self.extent, "block_size": self.block_size, "n_blocks": self.n_blocks}

    @classmethod
    def from_json(cls, data: dict) -> BlockPlan:
        """The plan `to_json` wrote (also the older form, whose extent was ``total``)."""
        return cls(
            int(data["extent"] if "extent" in data else data["total"]), int(data["block_size"])
        )


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(
            f"{name} must be a positive int, got {value!r} of type {type(value).__name__}"
        )
    if value < 1:
        raise InputValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def resolve_block_size(n: int, *, nbatches=None, block_size=None) -> int | None:
    """Turn zodiax's ``nbatches`` or an explicit ``block_size`` into a block size.

    **Arguments:**

    - `n`: number of columns to cover.
    - `nbatches`: zodiax's knob: block size ``ceil(n / nbatches)``. ``None`` or 1
      means "not given".
    - `block_size`: the block size itself.

    **Returns:** the block size, or ``None`` when neither was given (the caller
    then uses all ``n`` columns, or a memory budget).

    **Raises:** `TypeError` for a non-int or bool; `ValueError` for a value < 1,
    ``nbatches > n``, or both given.
    """
    if nbatches is not None:
        nbatches = _positive_int("nbatches", nbatches)
        if nbatches > n:
            raise InputValueError(
                f"nbatches={nbatches} is too large for n={n} parameters. "
                "Choose nbatches <= n, or set nbatches=1 for no batching."
            )
        if nbatches == 1:
            nbatches = None
    if block_size is not None:
        block_size = _positive_int("block_size", block_size)
    if nbatches is not None and block_size is not None:
        raise InputValueError(
            f"give at most one of nbatches={nbatches} and block_size={block_size}"
        )
    if nbatches is not None:
        return math.ceil(n / nbatches)
    if block_size is not None:
        return min(block_size, n)
    return None


def plan_blocks(n: int, *, nbatches=None, block_size=None) -> BlockPlan:
    """The block plan for ``n`` columns (all in one block when nothing is given)."""
    size = resolve_block_size(n, nbatches=nbatches, block_size=block_size)
    return BlockPlan(n, size if size is not None else n)


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
}
_BYTES_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value, name: str = "memory_budget") -> int:
    """Parse a byte count: an int, or a string such as ``"512MB"`` or ``"2GiB"``.

    **Raises:** `TypeError` for other types, `ValueError` for an unparseable or
    non-positive value.
    """
    if isinstance(value, bool):
        raise InputTypeError(f"{name} must be bytes (int) or a string like '512MB', got {value!r}")
    if isinstance(value, numbers.Integral):
        nbytes = int(value)
    elif isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise InputValueError(f"{name} must be a finite number of bytes, got {value!r}")
        nbytes = int(float(value))
    elif isinstance(value, str):
        match = _BYTES_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise InputValueError(
                f"{name}={value!r} is not a size: use bytes or a number with a unit "
                "such as '512MB', '2GiB' (units: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            )
        number = float(match.group(1)) * _UNITS[unit]
        if not math.isfinite(number):
            raise InputValueError(f"{name}={value!r} is not a finite number of bytes")
        nbytes = int(number)
    else:
        raise InputTypeError(
            f"{name} must be bytes (int) or a string like '512MB', "
            f"got {value!r} of type {type(value).__name__}"
        )
    if nbytes < 1:
        raise InputValueError(f"{name} must be positive, got {value!r}")
    return nbytes


def format_bytes(nbytes: float, binary: bool = False) -> str:
    """Human-readable size: decimal units (``"38.2 MB"``), or with ``binary`` the
    powers of 1024 that dask and distributed print (``"36.43 MiB"``)."""
    if binary:
        for prefix, power in (("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("ki", 10)):
            if nbytes >= 0.9 * 2**power:
                return f"{nbytes / 2**power:.2f} {prefix}B"
        return f"{int(nbytes)} B"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{int(nbytes)} B"


def format_iec(nbytes: float) -> str:
    """`format_bytes` in powers of 1024 (``"36.43 MiB"``), as dask and distributed
    print sizes: what the pipeline's messages use beside theirs."""
    return format_bytes(nbytes, binary=True)
