"""What a run reports, and the interfaces of who listens and who executes.

Dependency-free: the events (`BlockEvent`, `RunStart`, `RunEnd`), what a call
computed (`RunSummary`), the `Callback` interface and the `Executor` protocol.
Executors report each finished task (a block, a factor tile, a product) to a
`Callback`; the driver reports the run's start and end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ._plan import RunPlan
    from ._resources import Limits

__all__ = [
    "BlockEvent",
    "Callback",
    "Callbacks",
    "Executor",
    "RunEnd",
    "RunStart",
    "RunSummary",
]


@dataclasses.dataclass(frozen=True)
class BlockEvent:
    """One block computed and written, as its task reports it."""

    index: int
    """The block's index in the plan."""
    start: int
    """Its first column (row, for row slabs)."""
    stop: int
    """One past its last column (row)."""
    compile_s: float = 0.0
    """Seconds before its kernel started: tracing, compiling and linearising on a
    worker's first block; after that, on a GPU, waiting for the kernel lock."""
    kernel_s: float = 0.0
    """Seconds in the block kernel."""
    d2h_s: float = 0.0
    """Seconds copying the slab from the device to the host."""
    write_s: float = 0.0
    """Seconds writing the slab into the store."""
    total_s: float = 0.0
    """Seconds in the task, from its start to its record written."""
    nonfinite: int = 0
    """Entries of the block that are NaN or infinite."""
    kernel_interval: tuple[float, float] = (0.0, 0.0)
    """Wall-clock (``time.time``) start and end of its kernel."""
    host: str = ""
    """The host that ran it."""
    pid: int = 0
    """The process that ran it."""
    inner_width: int = 0
    """Products vmapped at once inside the block."""
    lost: bool = False
    """True when the task's report was lost with its worker, but the store's
    record shows the block complete (no figures then)."""


@dataclasses.dataclass(frozen=True)
class RunStart:
    """A run begins. `plan` is the `RunPlan` (None for the tasks of the linear
    algebra: factor tiles, covariance blocks, products); `todo` the tasks it
    runs; `done` those complete before it; `where` the executor (a dashboard
    link for a distributed client, ``None`` for the embedded default); `label`
    and `unit` name the work (``"diffops hessian"``, ``"block"``); `total`: the
    tasks in all (``done + len(todo)``; None when not known in advance, as for
    Lanczos products)."""

    plan: RunPlan | None
    todo: tuple[int, ...]
    done: int
    where: str | None = None
    label: str = ""
    unit: str = "block"
    total: int | None = -1

    def __post_init__(self):
        if self.total == -1:
            object.__setattr__(self, "total", self.done + len(self.todo))
        if not self.label and self.plan is not None:
            object.__setattr__(self, "label", f"diffops {self.plan.operation}")


@dataclasses.dataclass(frozen=True)
class RunEnd:
    """A run ends: `status` (``complete``, ``failed`` or ``interrupted``), wall
    `seconds`, and the `error` that stopped it, if any."""

    status: str
    seconds: float
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What one call computed: `blocks_computed`, wall `seconds`, `columns_per_s`
    (columns or rows), the blocks holding non-finite values, and the
    ``host:pid`` of every process that ran a block."""

    blocks_computed: int = 0
    seconds: float = 0.0
    columns_per_s: float = 0.0
    nonfinite_blocks: tuple[int, ...] = ()
    hosts: tuple[str, ...] = ()
    reason: str = dataclasses.field(default="", compare=False)
    """Why the call computed what it did (a new store, resumed, replaced: what
    differed, a repair), or that the store was complete."""


class Callback:
    """Receives a run's events; override what you need (each does nothing here)."""

    def on_run_start(self, event: RunStart) -> None:
        """Before the first block is submitted."""

    def on_block_end(self, event: BlockEvent) -> None:
        """After each block's record is written (in the driver, in completion order)."""

    def on_run_end(self, event: RunEnd) -> None:
        """After the last block, or when the run stops (also on failure)."""


class Callbacks(Callback):
    """Several callbacks as one, called in order."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = tuple(callbacks)

    def on_run_start(self, event: RunStart) -> None:
        for cb in self.callbacks:
            cb.on_run_start(event)

    def on_block_end(self, event: BlockEvent) -> None:
        for cb in self.callbacks:
            cb.on_block_end(event)

    def on_run_end(self, event: RunEnd) -> None:
        for cb in self.callbacks:
            cb.on_run_end(event)


class Executor(Protocol):
    """Runs tasks where they belong and reports each as it finishes (in the
    calling thread). `run` runs a plan's block tasks (**raises:** `BlockError`);
    `map` runs any task function over argument tuples (the linear algebra's
    tiles and blocks: one task runner for all); `limits` says how much memory
    each task may use there."""

    name: str

    def where(self) -> str | None:
        """Where the tasks run, for the progress display (None: here)."""
        ...

    def limits(self) -> Limits: ...

    def run(self, plan: RunPlan, todo: Sequence[int], callbacks: Callback) -> None: ...

    def map(self, fn: Callable, args: Sequence[tuple], on_done: Callable[[Any], None]) -> None: ...
