"""`DistributedExecutor`: tasks as futures on a `distributed.Client`'s cluster.

The block task travels once, as a task each worker fetches as a dependency;
then one future per block. A failing block stops the run with a `BlockError`
naming it; blocks that finished stay complete.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from diffops_core.internal import check_sparse

from .._errors import BlockError, ClusterSetupError, IdentityMismatch
from ..store import ResultStore, probes_of
from ._plan import RunPlan
from ._resources import Limits, cluster_limits
from ._task import BlockTask
from ._threads import ThreadsExecutor
from ._types import BlockEvent, Callback

__all__ = [
    "DistributedExecutor",
    "active_client",
    "default_executor",
    "executor_for",
    "forget_checked",
    "open_checked",
]


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

    try:  # a failure as words: an exception of the model's may not travel back
        task = cloudpickle.loads(payload)
        with jax.enable_x64(task.x64):
            task.kernels()
    except IdentityMismatch:
        raise  # ours: it travels, and says what differs
    except Exception as err:  # noqa: BLE001 - reported to the driver, in one line
        return f"{_CANNOT}{type(err).__name__}: {_first_line(err)[:300]}"
    try:  # the store, as a block would open it: a path, credentials, an endpoint
        zarr.open_group(task.location, mode="r+", use_consolidated=False)
    except Exception as err:  # noqa: BLE001 - reported to the driver, in one line
        return f"{_UNREACHABLE}{type(err).__name__}: {_first_line(err)}"
    return "ok"


#: On a worker: the matrix its last self-check recovered and passed, under
#: (location, the block records' digest, the sparsity metadata's digest), for
#: the checks and σ tasks of the same run, which the driver sends to the same
#: worker (`open_checked`); forgotten once the run is over (`forget_checked`).
_CHECKED: dict[tuple, Any] = {}
_CHECKED_LOCK = threading.Lock()
#: How often `open_checked` found the matrix here (for tests).
_HITS = [0]
#: On the driver: the worker whose self-check recovered a store's matrix.
_CHECKED_ON: dict[str, str] = {}


def _checked_key(store: ResultStore, blocks: str) -> tuple:
    return (str(store.location), blocks, (store.sparsity_meta or {}).get("digest"))


def open_checked(location: Any) -> ResultStore:
    """The store at ``location``, opened on a worker, with the matrix this
    worker's self-check recovered for exactly its blocks and pattern when the
    check passed for them (else it is read again, as any reader does)."""
    store = ResultStore.open(location)
    if store.sparsity_meta:
        with _CHECKED_LOCK:
            matrix = _CHECKED.get(_checked_key(store, store.records_digest()))
        if matrix is not None and store.checked:
            store.keep_checked(matrix)
            _HITS[0] += 1
    return store


def forget_checked() -> int:
    """Drop the matrix kept by `_self_check` (on a worker). **Returns:** the
    hits it had (`open_checked`)."""
    with _CHECKED_LOCK:
        _CHECKED.clear()
    return _HITS[0]


def _self_check(payload: bytes, operation: str) -> tuple[str, dict]:
    """`DistributedExecutor.self_check`, on the worker: ``f`` traced here (and
    checked to be the driver's computation), the store's matrix recovered from
    its products and checked against the products of its probe vectors."""
    import cloudpickle
    import jax
    import jax.flatten_util

    task = cloudpickle.loads(payload)
    with jax.enable_x64(task.x64):
        kernels = task.kernels()
        store = ResultStore.open(task.location)
        blocks = store.records_digest()
        matrix, products = store.unchecked()
        seed = probes_of(store.sparsity_meta or {})[1] if products is not None else None
        x_flat = jax.flatten_util.ravel_pytree(task.x)[0]
        found = check_sparse(operation, matrix, kernels, x_flat, seed, products)
    with _CHECKED_LOCK:  # passed: the checks and σ that follow here read it
        _CHECKED.clear()
        _CHECKED[_checked_key(store, blocks)] = matrix
    figures = {k: v.item() if hasattr(v, "item") else v for k, v in found.items()}  # plain numbers
    from distributed import get_worker

    where = f"{socket.gethostname()}:{os.getpid()}"
    return blocks, {**figures, "where": where, "worker": get_worker().address}


_UNREACHABLE = "store unreachable: "
_CANNOT = "cannot run f: "


def _call(task: BlockTask, index: int) -> BlockEvent:
    return task(index)


class DistributedExecutor:
    """Block tasks as futures on ``client``'s cluster.

    The store is the truth: a block whose future is lost (its worker died after
    the block finished) counts as done when its completion record says so, and is
    submitted again otherwise (at most ``max_resubmits`` times).
    """

    name = "distributed"

    def __init__(self, client: Any, max_resubmits: int = 3, no_workers_timeout: float = 120.0):
        self.client, self.max_resubmits = client, max_resubmits
        #: how long a run waits with no worker at all (every job past its
        #: walltime) before it fails, saying how to resume
        self.no_workers_timeout = no_workers_timeout

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

    def call(self, fn: Callable, *args: Any, near: Any = None) -> Any:
        """``fn(*args)`` as one task on the cluster, for a step too heavy for
        the driver; its result. Bytes arguments (a pickled task) travel
        scattered, outside the graph. ``near``: a store whose self-check ran
        on a worker; the task goes there if it still can (`open_checked` then
        finds the matrix it recovered). With no worker left for
        `no_workers_timeout` seconds it stops waiting.

        **Raises:** the task's own error; `ClusterSetupError` when no worker
        is left."""
        from distributed import wait

        scattered = {i: self.client.scatter(a, hash=False) for i, a in enumerate(args)
                     if isinstance(a, bytes)}  # fmt: skip
        sent = [scattered.get(i, a) for i, a in enumerate(args)]
        worker = _CHECKED_ON.get(str(near)) if near is not None else None
        where = {"workers": [worker], "allow_other_workers": True} if worker else {}
        future = self.client.submit(fn, *sent, pure=False, **where)
        since = None
        try:
            while future.status == "pending":
                with contextlib.suppress(TimeoutError):
                    wait(future, timeout=min(5.0, self.no_workers_timeout))
                if future.status != "pending" or self.client.run_on_scheduler(_worker_count):
                    since = None
                    continue
                since = time.monotonic() if since is None else since
                if time.monotonic() - since >= self.no_workers_timeout:
                    raise ClusterSetupError(
                        f"no worker was left in the cluster for {self.no_workers_timeout:.0f} s "
                        f"while it ran {getattr(fn, '__name__', fn)}; start workers and run the "
                        "same command again"
                    )
            return future.result()
        finally:
            with contextlib.suppress(Exception):  # a closed client: the cause is raised
                self.client.cancel([future, *scattered.values()])

    def self_check(self, plan: RunPlan, operation: str) -> tuple[str, dict]:
        """A complete sparse store's check against products of random vectors
        (`diffops_core`'s ``check_sparse``), on a worker: the driver never holds
        the recovered matrix. **Returns:** (the records' digest of the blocks
        checked, the check's figures). **Raises:** its `ValueError` on a
        mismatch."""
        blocks, found = self.call(_self_check, _payload(self.task(plan)), operation)
        _CHECKED_ON[str(plan.location)] = found.pop("worker")
        return blocks, found

    def forget_checked(self, location: Any) -> None:
        """Once a run is over: the workers drop the matrix their self-check
        kept (`open_checked`)."""
        if _CHECKED_ON.pop(str(location), None) is not None:
            with contextlib.suppress(Exception):  # a closed cluster keeps nothing
                self.client.run(forget_checked)

    def run(self, plan: RunPlan, todo: Sequence[int], callbacks: Callback) -> None:
        from distributed import as_completed

        payload = _payload(self.task(plan))
        _check_cluster(self.client, payload, plan.location)
        run = _DistributedRun(self, plan, payload)
        watch = run.watch = _Watch(self.client, self.no_workers_timeout, run)
        try:
            queue = as_completed([run.submit(i) for i in todo])
            for future in queue:
                watch.check()
                event = run.outcome(future, queue)
                if event is not None:
                    # forget the result at once, so a worker that dies later does
                    # not make the scheduler recompute a block already written
                    run.pending.pop(future.key).release()
                    callbacks.on_block_end(event)
            watch.check()
        except Exception:
            watch.check(probe=True)  # the cluster's failure is the cause, not what it broke
            raise
        finally:
            watch.stop()
            with contextlib.suppress(Exception):  # a closed client: the cause is raised above
                self.client.cancel(list(run.pending.values()))
                run.held.release()
                run.sent.release()


def _round_trip(task: BlockTask) -> tuple[bytes, BaseException | None]:
    import cloudpickle

    try:
        payload = cloudpickle.dumps(task)
        cloudpickle.loads(payload)  # what every worker will do, tried here first
    except Exception as err:  # noqa: BLE001 - said in one line by the caller
        return b"", err
    return payload, None


def _payload(task: BlockTask) -> bytes:
    """The block task pickled for the workers, tried on the driver first. The
    modules beside a spec travel by value; objects that do not survive that
    (a dLux model: a ``__getattr__`` that recurses while it is rebuilt) travel
    by reference instead, for workers that can import their module (the probe
    then checks that they can).

    **Raises:** `ClusterSetupError` saying what could not be sent and the way out."""
    import cloudpickle

    payload, err = _round_trip(task)
    if err is None:
        return payload
    names = sorted(cloudpickle.list_registry_pickle_by_value())
    if names:
        modules = [sys.modules[n] for n in names if n in sys.modules]
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)
        try:
            payload, again = _round_trip(task)
        finally:
            for module in modules:
                cloudpickle.register_pickle_by_value(module)
        if again is None:
            return payload
    raise ClusterSetupError(
        f"f and x cannot be sent to the workers: they do not survive pickling "
        f"({type(err).__name__}: {_first_line(err)[:200]}); build the model in a module the "
        "workers can import (put its directory on their PYTHONPATH, e.g. the spec's "
        "python_path), so that it travels by reference"
    )


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
        if isinstance(outcome, str) and outcome.startswith(_CANNOT):
            raise ClusterSetupError(
                f"worker {worker} cannot run f ({outcome[len(_CANNOT) :]}); {fix}"
            )
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

    def __init__(self, executor: DistributedExecutor, plan: RunPlan, payload: bytes):
        self.executor, self.plan, self.payload = executor, plan, payload
        self.pending: dict[str, Any] = {}
        self.index_of: dict[str, int] = {}
        self.tries: dict[int, int] = {}
        self.sends = 0
        self.watch: _Watch | None = None
        self._send()

    def _send(self) -> None:
        """The pickled task to every worker, once, outside the graph (which would
        carry f's constants to the scheduler: "Sending large graph of 69 MiB"),
        and the task unpacked from it, which every block refers to."""
        client = self.executor.client
        self.sent = client.scatter(self.payload, broadcast=True, hash=False)
        key = f"diffops-task-{self.plan.token}" + (f"-{self.sends}" if self.sends else "")
        self.held = client.submit(_unpack, self.sent, key=key, pure=False)
        self.sends += 1

    def _resend_if_lost(self) -> None:
        """Every worker holding the task gone (scattered data is not rebuilt):
        wait for a worker (as long as the watch allows), then send it again."""
        if self.sent.status == "finished":
            return
        client = self.executor.client
        try:
            client.wait_for_workers(1, timeout=self.executor.no_workers_timeout)
        except TimeoutError:
            if self.watch is not None:
                self.watch.cause = self.watch.no_workers()
                self.watch.check()
            raise
        self._send()

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
                self._resend_if_lost()
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


class _Watch:
    """A thread that watches the cluster while a run waits on it: with no
    worker at all for ``timeout`` seconds, or a scheduler that stops
    answering, it cancels the run's futures (so the wait ends) and `check`
    raises `ClusterSetupError` in one line: the cause, how many blocks are
    done, and how to resume."""

    def __init__(self, client: Any, timeout: float, run: _DistributedRun):
        self.client, self.timeout, self.run = client, timeout, run
        self.cause: str | None = None
        self.since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="diffops-watch", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout / 4)):
            cause = self._probe()
            if cause is not None:
                self._fail(cause)
                return

    def _probe(self) -> str | None:
        """Why the run can no longer finish, or None."""
        status = str(getattr(self.client, "status", "running"))
        if status not in ("running", "newly-created"):
            return f"the scheduler stopped answering (the client is {status})"
        try:
            workers = self.client.run_on_scheduler(_worker_count)
        except Exception as err:  # noqa: BLE001 - the scheduler is gone or unreachable
            return f"the scheduler stopped answering ({type(err).__name__}: {err})"
        if workers:
            self.since = None
            return None
        self.since = time.monotonic() if self.since is None else self.since
        if time.monotonic() - self.since >= self.timeout:
            return self.no_workers()
        return None

    def no_workers(self) -> str:
        return f"no worker was left in the cluster for {self.timeout:.0f} s"

    def _fail(self, cause: str) -> None:
        self.cause = cause
        with contextlib.suppress(Exception):
            self.client.cancel(list(self.run.pending.values()), force=True)

    def check(self, probe: bool = False) -> None:
        """**Raises:** `ClusterSetupError` once the cluster failed; with
        ``probe``, asks it now (a task's communication error may be the first
        sign of a dead scheduler: the cause is named, not what it broke)."""
        if self.cause is None and probe:
            found = self._probe()
            if found is not None and found != self.no_workers():
                self.cause = found  # (no workers for a while is the watch's to judge)
        if self.cause is None:
            return
        plan = self.run.plan
        done = int(ResultStore.open(plan.location).done_mask().sum())
        raise ClusterSetupError(
            f"{self.cause}: {done} of {plan.blocks.n_blocks} blocks are complete in "
            f"{plan.location!r}; start workers (or give jobs a longer walltime) and run the "
            "same command again to resume"
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _worker_count(dask_scheduler=None) -> int:
    return len(dask_scheduler.workers) if dask_scheduler is not None else 0
