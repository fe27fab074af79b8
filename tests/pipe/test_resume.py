"""A run killed with SIGKILL part-way resumes without recomputing finished blocks."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

import pipeline
from helpers import mixed_loss, mixed_x
from pipeline._store import RUN, ResultStore

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = """
import pipeline, helpers
pipeline.hessian_to_zarr(helpers.mixed_loss, helpers.mixed_x(), {store!r}, block_size=2,
                         threads=1, progress=False)
"""


def start_driver(store, faults):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
           "DIFFOPS_FAULTS": json.dumps(faults)}
    return subprocess.Popen([sys.executable, "-c", DRIVER.format(store=store)], env=env)


def wait_for_blocks(store, count, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the driver ended before it could be killed"
        if ResultStore.exists(store):
            try:
                done = int(ResultStore.open(store).done_mask().sum())
            except Exception:  # noqa: BLE001 - the store is being created
                done = 0
            if done >= count:
                return done
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} blocks completed in {timeout} s")


def test_sigkill_then_resume(tmp_path):
    clean = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), str(tmp_path / "clean.zarr"),
                                     block_size=2, progress=False).assemble()
    store = str(tmp_path / "h.zarr")
    # every block takes a second, so the kill lands while blocks are still to do
    proc = start_driver(store, [{"block": i, "kind": "sleep", "seconds": 1.0} for i in range(8)])
    try:
        wait_for_blocks(store, 3, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = ResultStore.open(store).read_records()
    finished = np.flatnonzero(before[:, 0] == 1)
    assert 3 <= finished.size < 8
    result = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=2, progress=False)
    assert result.run_summary["blocks_computed"] == 8 - finished.size
    after = ResultStore.open(store).read_records()
    # finished blocks were not recomputed: same record, written by run 1
    np.testing.assert_array_equal(after[finished], before[finished])
    assert set(after[:, RUN]) == {1, 2}
    np.testing.assert_array_equal(result.assemble(), clean)
    runs = result.meta["runs"]
    assert [r["status"] for r in runs] == ["interrupted", "complete"]
    assert not os.path.exists(os.path.join(store, "diffops.lock"))
