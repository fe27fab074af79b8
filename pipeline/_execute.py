"""Executors: run the block tasks on the embedded default or a dask cluster.

- Embedded default (no client): dask's threaded scheduler in this process. The
  block kernel runs in XLA, which already uses every core and releases the GIL,
  so a second thread only overlaps one block's host copy and Zarr write with the
  next block's kernel (benchmarks/RESULTS.md, pipeline overhead).
- A `distributed.Client`: the context is one task that each worker fetches once
  as a dependency, then one future per block; progress via ``as_completed``.

Either way a failing block stops the run with a `BlockError` naming it; blocks
that finished stay complete.
"""

from __future__ import annotations

import dask
from dask.callbacks import Callback

from ._cluster import tune_malloc
from ._progress import Progress
from ._tasks import BlockContext, BlockError, hold, run_block

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
    tune_malloc()
    prefix = f"diffops-block-{ctx.token}-"
    context = dask.delayed(ctx, traverse=False, name=f"diffops-context-{ctx.token}")
    tasks = [dask.delayed(run_block, pure=False)(context, i, dask_key_name=f"{prefix}{i}")
             for i in todo]
    with _Tick(progress, prefix):
        return list(dask.compute(*tasks, scheduler="threads", num_workers=threads))


def run_distributed(ctx: BlockContext, todo: list[int], client, progress: Progress,
                    is_done=None, max_resubmits: int = 3) -> list[dict]:
    """Run the blocks ``todo`` as futures on ``client``'s cluster.

    The store is the truth: a block whose future is lost (its worker died after
    the block finished) counts as done when its completion record says so, and is
    submitted again otherwise (at most ``max_resubmits`` times).
    """
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    from diffops_core.internal import BlockPlan

    plan = BlockPlan(ctx.extent, ctx.block_size)
    # The context is a task (not scattered data), so the scheduler can rebuild it
    # if every worker holding it dies; each worker fetches it once, as a dependency.
    context = client.submit(hold, ctx, key=f"diffops-context-{ctx.token}", pure=False)
    pending, index_of, tries = {}, {}, {}

    def submit(i):
        tries[i] = tries.get(i, -1) + 1
        key = f"diffops-block-{ctx.token}-{i}" + (f"-again{tries[i]}" if tries[i] else "")
        future = client.submit(run_block, context, i, key=key, pure=False)
        pending[key], index_of[key] = future, i
        return future

    queue = as_completed([submit(i) for i in todo])
    results = []
    try:
        for future in queue:
            i = index_of[future.key]
            try:
                value = future.result()
            except BlockError:
                raise
            except (FutureCancelledError, KeyError) as err:
                if is_done is not None and is_done(i):
                    value = {"index": i, "lost_result": True}
                elif tries[i] < max_resubmits:
                    pending.pop(future.key)
                    queue.add(submit(i))
                    continue
                else:
                    block = plan.block(i)
                    raise BlockError(i, block.start, block.stop, ctx.axis,
                                     f"lost {tries[i] + 1} times: {err}") from err
            except Exception as err:  # e.g. KilledWorker: the block kept killing workers
                block = plan.block(i)
                raise BlockError(i, block.start, block.stop, ctx.axis,
                                 f"{type(err).__name__}: {err}") from err
            results.append(value)
            # Forget the result at once, so a worker that dies later does not make
            # the scheduler recompute a block that is already written.
            pending.pop(future.key).release()
            progress.update()
    finally:
        client.cancel(list(pending.values()))
        context.release()
    return results
