"""What a run reports, and who listens.

Executors report each finished block as a `BlockEvent`; the run reports its
start (`RunStart`) and end (`RunEnd`). A `Callback` receives them:

- `ProgressBar`: blocks done/total with rate and ETA (tqdm), and the dashboard
  link of a distributed client;
- `Summary`: the `RunSummary` a `Result` carries (`Result.run_summary`);
- `Timings`: every block's figures (kernel, device-to-host and write seconds,
  wall-clock kernel intervals) for benchmarks and the device busy fraction.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ._plan import RunPlan

__all__ = [
    "BlockEvent",
    "Callback",
    "Callbacks",
    "ProgressBar",
    "RunEnd",
    "RunStart",
    "RunSummary",
    "Summary",
    "Timings",
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
    worker's first block, waiting for the kernel lock after that."""
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
    """A run begins. `plan` is the `RunPlan`; `todo` the blocks it computes;
    `done` the blocks complete before it; `where` the executor (a dashboard link
    for a distributed client, ``None`` for the embedded default)."""

    plan: RunPlan
    todo: tuple[int, ...]
    done: int
    where: str | None = None


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


class ProgressBar(Callback):
    """A tqdm bar of blocks (rate and ETA) on standard error; on a distributed
    client it first prints the dashboard link."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None

    def on_run_start(self, event: RunStart) -> None:
        from tqdm.auto import tqdm

        if event.where:
            print(f"diffops: {len(event.todo)} blocks on {event.where}", file=self.stream)
        total = event.plan.blocks.n_blocks
        self.bar = tqdm(
            total=total,
            initial=event.done,
            unit="block",
            file=self.stream,
            desc=f"diffops {event.plan.operation}",
            dynamic_ncols=True,
            mininterval=0.2,
        )

    def on_block_end(self, event: BlockEvent) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_run_end(self, event: RunEnd) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Summary(Callback):
    """Collects the `RunSummary` of a run."""

    def __init__(self):
        self.events: list[BlockEvent] = []
        self.seconds = 0.0

    def on_block_end(self, event: BlockEvent) -> None:
        self.events.append(event)

    def on_run_end(self, event: RunEnd) -> None:
        self.seconds = event.seconds

    def summary(self) -> RunSummary:
        measured = [e for e in self.events if not e.lost]
        columns = sum(e.stop - e.start for e in measured)
        return RunSummary(
            blocks_computed=len(self.events),
            seconds=self.seconds,
            columns_per_s=columns / self.seconds if self.seconds > 0 else 0.0,
            nonfinite_blocks=tuple(sorted(e.index for e in measured if e.nonfinite)),
            hosts=tuple(sorted({f"{e.host}:{e.pid}" for e in measured})),
        )


class Timings(Callback):
    """Every block's `BlockEvent`, for benchmarks: sums of kernel, device-to-host
    and write seconds, and the fraction of the run the device was busy."""

    def __init__(self):
        self.events: list[BlockEvent] = []
        self.seconds = 0.0

    def on_run_start(self, event: RunStart) -> None:
        self.events, self.seconds = [], 0.0

    def on_block_end(self, event: BlockEvent) -> None:
        if not event.lost:
            self.events.append(event)

    def on_run_end(self, event: RunEnd) -> None:
        self.seconds = event.seconds

    def total(self, field: str) -> float:
        """The sum of a `BlockEvent` field over the blocks (e.g. ``"kernel_s"``)."""
        return float(sum(getattr(e, field) for e in self.events))

    def busy_seconds(self) -> float:
        """Seconds during which at least one kernel ran (the union of intervals)."""
        busy, end = 0.0, float("-inf")
        for a, b in sorted(e.kernel_interval for e in self.events):
            if b <= end:
                continue
            busy += b - max(a, end)
            end = b
        return busy

    def busy_fraction(self) -> float:
        return self.busy_seconds() / self.seconds if self.seconds > 0 else 0.0
