"""The callbacks we ship (`Callback` and the events are in `_types`):

- `ProgressBar`: tasks done/total with rate and ETA (tqdm, imported only when a
  run starts), and the dashboard link of a distributed client: the one bar of
  every run, block tasks, factor tiles, covariance blocks and Lanczos
  products alike;
- `Summary`: the `RunSummary` a `Result` carries (`Result.run_summary`);
- `Timings`: every block's figures (kernel, device-to-host and write seconds,
  wall-clock kernel intervals) for benchmarks and the device busy fraction.
"""

from __future__ import annotations

import sys

from ._types import BlockEvent, Callback, RunEnd, RunStart, RunSummary

__all__ = ["ProgressBar", "Summary", "Timings"]


class ProgressBar(Callback):
    """A tqdm bar of tasks (rate and ETA) on standard error; on a distributed
    client it first prints the dashboard link."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None

    def on_run_start(self, event: RunStart) -> None:
        from tqdm.auto import tqdm

        if event.where:
            print(f"diffops: {len(event.todo)} {event.unit}s on {event.where}", file=self.stream)
        self.bar = tqdm(
            total=event.total,
            initial=event.done,
            unit=event.unit,
            file=self.stream,
            desc=event.label or "diffops",
            dynamic_ncols=True,
            mininterval=0.2,
        )

    def on_block_end(self, event) -> None:
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
