"""Executors: run the block tasks on the embedded default or a dask cluster.

- Embedded default (no client): dask's threaded scheduler in this process. The
  block kernel runs in XLA, which already uses every core and releases the GIL,
  so a second thread only overlaps one block's host copy and Zarr write with the
  next block's kernel (benchmarks/RESULTS.md, pipeline overhead).
- A `distributed.Client`: the context is scattered once to every worker
  (broadcast), then one future per block; progress via ``as_completed``.

Either way a failing block stops the run with a `BlockError` naming it; blocks
that finished stay complete.
"""

from __future__ import annotations

import dask
from dask.callbacks import Callback

from ._progress import Progress
from ._tasks import BlockContext, BlockError, run_block

__all__ = ["run_local", "run_distributed", "active_client"]


def active_client():
    """The current distributed client, if one is active in this process."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


class _Tick(Callback):
    def __init__(self, progress: Progress, prefix: str):
        super().__init__()
        self.progress, self.prefix = progress, prefix

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(key, str) and key.startswith(self.prefix):
            self.progress.update()


def run_local(ctx: BlockContext, todo: list[int], progress: Progress, threads: int) -> list[dict]:
    """Run the blocks ``todo`` with dask's threaded scheduler in this process."""
    prefix = f"diffops-block-{ctx.token[:12]}-"
    context = dask.delayed(ctx, traverse=False, name=f"diffops-context-{ctx.token[:12]}")
    tasks = [dask.delayed(run_block, pure=False)(context, i, dask_key_name=f"{prefix}{i}")
             for i in todo]
    with _Tick(progress, prefix):
        return list(dask.compute(*tasks, scheduler="threads", num_workers=threads))


def run_distributed(ctx: BlockContext, todo: list[int], client, progress: Progress) -> list[dict]:
    """Run the blocks ``todo`` as futures on ``client``'s cluster."""
    from distributed import as_completed

    scattered = client.scatter(ctx, broadcast=True, hash=False)
    keys = [f"diffops-block-{ctx.token[:12]}-r{ctx.run}-{i}" for i in todo]
    futures = client.map(run_block, [scattered] * len(todo), todo, key=keys, pure=False)
    index_of = {future.key: i for future, i in zip(futures, todo)}
    results = []
    try:
        for future in as_completed(futures):
            if future.status != "finished":
                err = future.exception()
                if isinstance(err, BlockError):
                    raise err
                index = index_of[future.key]
                from diffops_core import BlockPlan

                block = BlockPlan(ctx.extent, ctx.block_size).block(index)
                raise BlockError(index, block.start, block.stop, ctx.axis,
                                 f"{type(err).__name__}: {err}") from err
            results.append(future.result())
            progress.update()
    finally:
        client.cancel([f for f in futures if not f.done()])
        del scattered
    return results
