"""`DistributedExecutor`: tasks as futures on a `distributed.Client`'s cluster.

The block task travels once, as a task each worker fetches as a dependency;
then one future per block. A failing block stops the run with a `BlockError`
naming it; blocks that finished stay complete.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .._errors import BlockError, ClusterSetupError, IdentityMismatch
from ..store import ResultStore
from ._plan import RunPlan
from ._resources import Limits, cluster_limits
from ._task import BlockTask
from ._threads import ThreadsExecutor
from ._types import BlockEvent, Callback

__all__ = ["DistributedExecutor", "active_client", "default_executor", "executor_for"]


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


def _unpack(payload: bytes) -> BlockTask:
    """The block task, unpickled on a worker. It travels to the cluster as bytes
    pickled by cloudpickle, so the scheduler (which unpickles task graphs) never
    has to import the function, and modules pickled by value need not exist on
    the workers."""
    import cloudpickle

    return cloudpickle.loads(payload)


def _probe(payload: bytes) -> str:
    """Unpickle the block task, trace ``f`` and open the store as a block
    would, on a worker: ``"ok"``, or what it could not reach."""
    import cloudpickle
    import jax
    import zarr

    task = cloudpickle.loads(payload)
    with jax.enable_x64(task.x64):
        task.kernels()
    try:  # the store, as a block would open it: a path, credentials, an endpoint
        zarr.open_group(task.location, mode="r+", use_consolidated=False)
    except Exception as err:  # noqa: BLE001 - reported to the driver, in one line
        return f"{_UNREACHABLE}{type(err).__name__}: {_first_line(err)}"
    return "ok"


_UNREACHABLE = "store unreachable: "


def _call(task: BlockTask, index: int) -> BlockEvent:
    return task(index)


class DistributedExecutor:
    """Block tasks as futures on ``client``'s cluster.

    The store is the truth: a block whose future is lost (its worker died after
    the block finished) counts as done when its completion record says so, and is
    submitted again otherwise (at most ``max_resubmits`` times).
    """

    name = "distributed"

    def __init__(self, client: Any, max_resubmits: int = 3):
        self.client, self.max_resubmits = client, max_resubmits

    def task(self, plan: RunPlan) -> BlockTask:
        return BlockTask.from_plan(plan)

    def where(self) -> str | None:
        return str(self.client.dashboard_link or self.client)

    def limits(self) -> Limits:
        return cluster_limits(self.client)

    def map(self, fn: Callable, args: Sequence[tuple], on_done: Callable[[Any], None]) -> None:
        """``fn(*a)`` for each ``a`` on the cluster, in parallel; ``on_done(result)``
        as each finishes; the first error is raised."""
        from distributed import as_completed

        if not args:
            return
        futures = self.client.map(fn, *zip(*args, strict=True), pure=False)
        try:
            for future in as_completed(futures):
                on_done(future.result())  # raises the task's error
        finally:
            self.client.cancel(futures)

    def run(self, plan: RunPlan, todo: Sequence[int], callbacks: Callback) -> None:
        import cloudpickle
        from distributed import as_completed

        payload = cloudpickle.dumps(self.task(plan))
        _check_cluster(self.client, payload, plan.location)
        # the task is a task (not scattered data), so the scheduler can rebuild it
        # if every worker holding it dies; each worker fetches it once
        held = self.client.submit(_unpack, payload, key=f"diffops-task-{plan.token}", pure=False)
        run = _DistributedRun(self, plan, held)
        try:
            queue = as_completed([run.submit(i) for i in todo])
            for future in queue:
                event = run.outcome(future, queue)
                if event is not None:
                    # forget the result at once, so a worker that dies later does
                    # not make the scheduler recompute a block already written
                    run.pending.pop(future.key).release()
                    callbacks.on_block_end(event)
        finally:
            self.client.cancel(list(run.pending.values()))
            held.release()


def _check_cluster(client: Any, payload: bytes, location: Any) -> None:
    """Before the first block: every worker can unpickle the block task (pickled
    as ``payload``), trace ``f`` to the driver's computation and open the store
    at ``location``. (The scheduler
    only ever sees the bytes.)

    **Raises:** `ClusterSetupError` naming the worker, its error and the fix.
    """
    fix = (
        "install what it imports where the workers run (modules beside a spec travel "
        "with it), or start the workers where they can import them"
    )
    outcomes = client.run(_probe, payload, on_error="return")
    for worker, outcome in sorted(outcomes.items()):
        if isinstance(outcome, str) and outcome.startswith(_UNREACHABLE):
            raise ClusterSetupError(
                f"worker {worker} cannot reach the store {location!r} "
                f"({outcome[len(_UNREACHABLE) :]}): every "
                "worker must open it as the driver does: a path on a filesystem the workers "
                "mount, or an object store with its credentials and endpoint in the workers' "
                "environment (a memory:// store lives in one process and cannot be shared)"
            )
        if isinstance(outcome, IdentityMismatch):  # it says what differs and what to do
            raise ClusterSetupError(f"worker {worker}: {_first_line(outcome)}")
        if isinstance(outcome, BaseException):
            raise ClusterSetupError(
                f"worker {worker} cannot run f ({type(outcome).__name__}: "
                f"{_first_line(outcome)}); {fix}"
            )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else ""


class _DistributedRun:
    """The futures of one distributed run and what each block has cost."""

    def __init__(self, executor: DistributedExecutor, plan: RunPlan, held):
        self.executor, self.plan, self.held = executor, plan, held
        self.pending: dict[str, Any] = {}
        self.index_of: dict[str, int] = {}
        self.tries: dict[int, int] = {}

    def submit(self, i: int):
        self.tries[i] = self.tries.get(i, -1) + 1
        key = f"diffops-block-{self.plan.token}-{i}" + (
            f"-again{self.tries[i]}" if self.tries[i] else ""
        )
        future = self.executor.client.submit(_call, self.held, i, key=key, pure=False)
        self.pending[key], self.index_of[key] = future, i
        return future

    def outcome(self, future, queue) -> BlockEvent | None:
        """The block's event; None when it was resubmitted. **Raises:** `BlockError`."""
        from distributed.client import FutureCancelledError

        i = self.index_of[future.key]
        block = self.plan.blocks.block(i)
        try:
            return future.result()
        except BlockError:
            raise
        except (FutureCancelledError, KeyError) as err:
            if self.held.status == "error":  # the task itself never loaded: say why
                cause = self.held.exception()
                raise BlockError(
                    i,
                    block.start,
                    block.stop,
                    self.plan.spec.axis,
                    f"the block task could not be loaded on the cluster: "
                    f"{type(cause).__name__}: {cause}",
                ) from err
            if self._recorded(i):
                return BlockEvent(index=i, start=block.start, stop=block.stop, lost=True)
            if self.tries[i] < self.executor.max_resubmits:
                self.pending.pop(future.key)
                queue.add(self.submit(i))
                return None
            raise BlockError(
                i,
                block.start,
                block.stop,
                self.plan.spec.axis,
                f"lost {self.tries[i] + 1} times: {err}",
            ) from err
        except Exception as err:  # e.g. KilledWorker: the block kept killing workers
            raise BlockError(
                i, block.start, block.stop, self.plan.spec.axis, f"{type(err).__name__}: {err}"
            ) from err

    def _recorded(self, i: int) -> bool:
        return bool(ResultStore.open(self.plan.location).done_mask()[i])


def default_executor(client: Any = None, threads: int = 2) -> ThreadsExecutor | DistributedExecutor:
    """The executor for ``client`` (default: the active one), else the embedded default."""
    client = client if client is not None else active_client()
    if client is not None:
        return DistributedExecutor(client)
    return ThreadsExecutor(threads)


def executor_for(client: Any = None) -> ThreadsExecutor | DistributedExecutor:
    """Where the linear algebra's tasks run: ``client``'s cluster when given, else
    here, one task at a time (numpy's BLAS already uses every core)."""
    return DistributedExecutor(client) if client is not None else ThreadsExecutor(1)
