"""The callbacks we ship (`Callback` and the events are in `_types`):

- `ProgressBar`: tasks done/total with rate and ETA (tqdm, imported only when a
  run starts), and the dashboard link of a distributed client: the one bar of
  every run, block tasks, factor tiles, covariance blocks and Lanczos
  products alike;
- `Summary`: the `RunSummary` a `Result` carries (`Result.run_summary`);
- `Timings`: every block's figures (kernel, device-to-host and write seconds,
  wall-clock kernel intervals) for benchmarks and the device busy fraction;
- `Stages` and `stage`: the seconds and the driver's peak memory of each
  step of a run (plan, blocks, self-check, checks, finalize), for the
  summary of a spec's run.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import sys
import time

from diffops_core.internal import peak_rss, reset_peak

from ._types import BlockEvent, Callback, RunEnd, RunStart, RunSummary

__all__ = ["ProgressBar", "StageFigures", "Stages", "Summary", "Timings", "stage"]


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


@dataclasses.dataclass(frozen=True)
class StageFigures:
    """One step of a run in this process: `name`, `seconds`, and `peak_bytes`,
    this process's peak resident memory (VmHWM) during it when `alone` (the
    peak was reset as it began), else its peak so far."""

    name: str
    seconds: float
    peak_bytes: int
    alone: bool


class Stages:
    """A recorder of the steps (`stage`) run while it is active (``with
    Stages(...) as stages``). With ``reset_peak``, each step resets the
    process's peak as it begins, so its figure is its own: a process that
    records no figure of its own may ask for it (``diffops run`` does); the
    peak over all steps and before stays in `peak_bytes`."""

    _active: contextvars.ContextVar[Stages | None] = contextvars.ContextVar(
        "diffops_stages", default=None
    )

    def __init__(self, reset_peak: bool = False):
        self.reset_peak = reset_peak
        self.figures: list[StageFigures] = []
        self.peak_bytes = 0
        self._token: contextvars.Token[Stages | None] | None = None

    def __enter__(self) -> Stages:
        self._token = self._active.set(self)
        self.peak_bytes = peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        assert self._token is not None
        self._active.reset(self._token)
        self.peak_bytes = max(self.peak_bytes, peak_rss())

    def _begin(self) -> bool:
        self.peak_bytes = max(self.peak_bytes, peak_rss())
        return self.reset_peak and reset_peak()

    def _end(self, name: str, t0: float, alone: bool) -> None:
        peak = peak_rss()
        self.peak_bytes = max(self.peak_bytes, peak)
        self.figures.append(StageFigures(name, time.perf_counter() - t0, peak, alone))


@contextlib.contextmanager
def stage(name: str):
    """Record the step ``name`` in the active `Stages`, if any (one that fails
    is not recorded)."""
    stages = Stages._active.get()
    if stages is None:
        yield
        return
    alone, t0 = stages._begin(), time.perf_counter()
    yield
    stages._end(name, t0, alone)
