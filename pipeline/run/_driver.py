"""Run bookkeeping, one home for every run that writes blocks into a store (a
computed matrix, a covariance): the run's entry in the store's history, the
events to the callbacks, and the store, not the executor, as the judge of
what is complete."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .._errors import StoreError
from ..store import ResultStore
from ._callbacks import Summary
from ._types import Callback, Callbacks, RunEnd, RunStart

__all__ = ["dispatch"]


def dispatch(
    store: ResultStore,
    run: int,
    start: RunStart,
    work: Callable[[Callback], None],
    callbacks: Sequence[Callback],
    executor: str,
) -> Summary:
    """Run ``work(listeners)``, which computes the blocks ``start.todo`` of run
    ``run`` (already in ``store``'s history: `ResultStore.start_run`) and reports
    each block to ``listeners``; then record how the run ended.

    **Returns:** the run's `Summary`. **Raises:** what ``work`` raises (the run
    recorded as failed, or interrupted), or `StoreError` when blocks it computed
    are not complete in the store.
    """
    todo = start.todo
    summary = Summary()
    listeners = Callbacks([summary, *callbacks])
    listeners.on_run_start(start)
    t0 = time.perf_counter()
    status, error, failure = "failed", None, None
    try:
        work(listeners)
        left = sorted(set(todo) & set(store.todo()))
        if left:  # the executor said done; the store is the truth
            raise StoreError(
                f"blocks {left[:8]}{' ...' if len(left) > 8 else ''} were computed but are not "
                f"complete in {store.location!r}; run again to recompute them"
            )
        status = "complete"
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        error, failure = f"{type(err).__name__}: {err}", err
        raise
    finally:
        seconds = time.perf_counter() - t0
        listeners.on_run_end(RunEnd(status, seconds, error))
        fields = {"status": status, "error": error, "seconds": round(seconds, 3)}
        done = store.plan.n_blocks - len(todo) + len(summary.events)
        _end_run(store, run, failure, blocks_done=done, executor=executor, **fields)
    return summary


def _end_run(store: ResultStore, run: int, failure, **fields) -> None:
    try:
        store.end_run(run, **fields)
    except OSError as err:  # e.g. the full disk that failed the run: keep its error
        if failure is None:
            raise
        failure.add_note(f"(the store's run history could not be updated either: {err})")
