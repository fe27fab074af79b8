"""The embedded default: tasks on dask's threaded scheduler in this process.

The block kernel runs in XLA, which already uses every core and releases the
GIL, so a second thread overlaps one block's host copy and Zarr write with the
next block's kernel (benchmarks/RESULTS.md, pipeline overhead). Tile tasks of
the linear algebra run one at a time (``threads=1``): numpy's BLAS already
uses every core.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask
from dask.callbacks import Callback as DaskCallback

from ._cluster import tune_malloc
from ._plan import RunPlan
from ._resources import Limits, machine_limits
from ._task import BlockTask
from ._types import Callback

__all__ = ["ThreadsExecutor"]


class _OnDone(DaskCallback):
    def __init__(self, on_done: Callable[[Any], None], prefix: str):
        super().__init__()
        self.on_done, self.prefix = on_done, prefix

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(key, str) and key.startswith(self.prefix):
            self.on_done(result)


def _apply(fn: Callable, args: tuple) -> Any:
    return fn(*args)


class ThreadsExecutor:
    """``threads`` tasks at once in this process."""

    name = "threads"

    def __init__(self, threads: int = 2):
        self.threads = threads

    def task(self, plan: RunPlan) -> BlockTask:
        """The block task of ``plan`` (tests wrap it to inject faults)."""
        return BlockTask.from_plan(plan)

    def where(self) -> str | None:
        return None

    def limits(self) -> Limits:
        return machine_limits(self.threads)

    def run(self, plan: RunPlan, todo: Sequence[int], callbacks: Callback) -> None:
        tune_malloc()
        self.map(self.task(plan), [(i,) for i in todo], callbacks.on_block_end)

    def map(self, fn: Callable, args: Sequence[tuple], on_done: Callable[[Any], None]) -> None:
        """``fn(*a)`` for each ``a``, ``on_done(result)`` (in this thread) as each
        finishes; the first error stops the rest and is raised."""
        if self.threads == 1 or len(args) <= 1:
            for a in args:
                on_done(fn(*a))
            return
        token = uuid.uuid4().hex
        prefix = f"diffops-task-{token}-"
        held = dask.delayed(fn, traverse=False, name=f"diffops-fn-{token}")
        tasks = [
            dask.delayed(_apply, pure=False)(held, a, dask_key_name=f"{prefix}{k}")
            for k, a in enumerate(args)
        ]
        with _OnDone(on_done, prefix):
            dask.compute(*tasks, scheduler="threads", num_workers=self.threads)
