"""Issue 25, part B: clusters that fail. Every worker gone (every SLURM job past
its walltime) or the scheduler killed: the driver waited forever, or ended in
a 100-line traceback naming the wrong cause. Now: one line, within a bounded
time, naming the cause, how many blocks are done and how to resume; the run
recorded as failed with that cause. Each case on a cluster started by hand,
bound to 127.0.0.1, every process stopped by the test."""

import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

import faults
import pipeline
from helpers import log_fault, scheduler_address
from pipeline import ClusterSetupError, DistributedExecutor

# each starts and kills a scheduler and a worker: with the slow set (CI runs it too)
pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
X = jnp.linspace(0.1, 1.0, 12)


# a lambda: cloudpickle sends it by value (the workers cannot import this module)
f = lambda x: jnp.sum(jnp.sin(x) ** 2 * jnp.roll(x, 1))


@pytest.fixture
def cluster(tmp_path):
    """(scheduler address, {"scheduler": proc, "worker": proc}): a scheduler and
    one worker without a nanny (a killed worker stays dead, as a job past its
    walltime), the tests directory on the worker's path (the faulty task)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "PYTHONPATH": os.pathsep.join([faults.TESTS, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    scheduler_file = str(tmp_path / "scheduler.json")
    procs = {}

    def start(name, *args):
        procs[name] = subprocess.Popen(
            [os.path.join(BIN, "dask"), *args], cwd=tmp_path, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0",
              "--dashboard-address", "127.0.0.1:0", "--scheduler-file", scheduler_file)  # fmt: skip
        address = scheduler_address(scheduler_file, procs["scheduler"])
        start("worker", "worker", address, "--host", "127.0.0.1", "--dashboard-address",
              "127.0.0.1:0", "--nthreads", "1", "--no-nanny")  # fmt: skip
        yield address, procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_scheduler_address_waits_for_the_file_s_content(tmp_path):
    # the scheduler creates its file before it writes it: a fixture that read it
    # as soon as it existed got "" (a JSONDecodeError in the slow run)
    path = tmp_path / "scheduler.json"
    path.write_text("")

    class Scheduler:  # still running; it writes its address while we wait
        def poll(self):
            path.write_text('{"address": "tcp://127.0.0.1:8786"}')

    assert scheduler_address(str(path), Scheduler()) == "tcp://127.0.0.1:8786"


def _run_until_blocked(address, store, tmp_path, inject, kill):
    """Run with block 2 waiting on an event; once it runs, ``kill()``; the
    run's error (it must end on its own)."""
    from distributed import Client

    started = str(tmp_path / "started")
    inject([{"block": 2, "kind": "wait", "file": str(tmp_path / "never"), "signal": started}])
    with Client(address, timeout=60) as client:
        client.wait_for_workers(1, timeout=120)
        executor = DistributedExecutor(client, no_workers_timeout=3.0)

        import threading

        outcome = {}

        def run():
            try:
                pipeline.hessian_to_zarr(f, X, store, block_size=3, executor=executor,
                                         progress=False)  # fmt: skip
            except BaseException as err:  # noqa: BLE001 - asserted below
                outcome["error"] = err

        thread = threading.Thread(target=run)
        thread.start()
        while not os.path.exists(started):
            assert thread.is_alive(), outcome
            time.sleep(0.02)
        kill()
        thread.join(timeout=300)
        assert not thread.is_alive(), "the driver still waits"
    return outcome.get("error")


def _killed(cluster, tmp_path, inject, name):
    """Kill ``name`` (the worker or the scheduler) mid-run: the store, the
    run's one-line error and its last history entry."""
    address, procs = cluster
    store = str(tmp_path / "h.zarr")
    err = _run_until_blocked(address, store, tmp_path, inject,
                             lambda: os.killpg(procs[name].pid, signal.SIGKILL))  # fmt: skip
    assert isinstance(err, ClusterSetupError), repr(err)
    assert "\n" not in str(err)
    return store, str(err), pipeline.open_result(store).runs()[-1]


def test_every_worker_gone_fails_in_one_line_saying_how_to_resume(cluster, tmp_path, inject):
    _store, message, run = _killed(cluster, tmp_path, inject, "worker")
    assert "no worker was left in the cluster for 3 s" in message
    assert "of 4 blocks are complete" in message and "run the same command again" in message
    assert run["status"] == "failed" and "no worker was left" in run["error"]
    log_fault(
        "every worker killed mid-run (one line within the timeout, recorded failed)", 1, True, 0
    )


def test_the_scheduler_killed_names_the_cause_in_one_line(cluster, tmp_path, inject):
    store, message, run = _killed(cluster, tmp_path, inject, "scheduler")
    assert "the scheduler stopped answering" in message and "ClosedClientError" not in message
    assert run["status"] == "failed" and "scheduler stopped answering" in run["error"]
    # what was done stays done: a rerun here resumes
    inject.clear()
    result = pipeline.hessian_to_zarr(f, X, store, block_size=3, progress=False)
    assert result.run_summary.reason.startswith("the same computation")
    import jax

    np.testing.assert_allclose(np.asarray(result.store.matrix[...]), np.asarray(jax.hessian(f)(X)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    log_fault("the scheduler killed mid-run (one line naming it, then resume)", 1, True, 0)
