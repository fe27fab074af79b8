"""The embedded default: tasks on a pool of threads in this process.

The block kernel runs in XLA, which already uses every core and releases the
GIL, so a second thread overlaps one block's host copy and Zarr write with the
next block's kernel (benchmarks/RESULTS.md, pipeline overhead). The pool is
the standard library's: dask's threaded scheduler cost about 0.3 ms per task
more (23 ms against 5 ms for 65 small tasks, measured side by side), which
shows when blocks take tens of milliseconds. Tile tasks of the linear algebra
run one at a time (``threads=1``): numpy's BLAS already uses every core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor as _Pool
from concurrent.futures import as_completed
from typing import Any

from ._cluster import tune_malloc
from ._plan import RunPlan
from ._resources import Limits, machine_limits
from ._task import BlockTask
from ._types import Callback

__all__ = ["ThreadsExecutor"]


class ThreadsExecutor:
    """``threads`` tasks at once in this process."""

    name = "threads"

    def __init__(self, threads: int = 2):
        self.threads = threads

    def task(self, plan: RunPlan) -> BlockTask:
        """The block task of ``plan``, with the plan's traced kernels (tests wrap
        it to inject faults)."""
        return BlockTask.from_plan(plan, local=True)

    def where(self) -> str | None:
        return None

    def limits(self) -> Limits:
        return machine_limits(self.threads)

    def run(self, plan: RunPlan, todo: Sequence[int], callbacks: Callback) -> None:
        tune_malloc()
        self.map(self.task(plan), [(i,) for i in todo], callbacks.on_block_end)

    def map(self, fn: Callable, args: Sequence[tuple], on_done: Callable[[Any], None]) -> None:
        """``fn(*a)`` for each ``a``, ``on_done(result)`` (in this thread) as each
        finishes. A task that fails does not stop the others (each block is
        whole on its own, so what finishes is kept for the next run); the first
        error is raised once they are done. An interrupt cancels what has not
        started and waits for what runs (whole writes)."""
        if self.threads == 1 or len(args) <= 1:
            for a in args:
                on_done(fn(*a))
            return
        pool = _Pool(self.threads, thread_name_prefix="diffops-task")
        failure: BaseException | None = None
        try:
            for future in as_completed([pool.submit(fn, *a) for a in args]):
                error = future.exception()
                if error is None:
                    on_done(future.result())
                elif failure is None:
                    failure = error
        finally:  # interrupted: nothing more starts; what runs finishes
            pool.shutdown(wait=True, cancel_futures=True)
        if failure is not None:
            raise failure
