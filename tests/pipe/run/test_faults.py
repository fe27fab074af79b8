"""Faults a cluster sees, injected on purpose; after each, no data is lost.

Each test logs what it injected (to $DIFFOPS_FAULT_REPORT, when set) for
benchmarks/fault_report.py.
"""

import json
import os
import random
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

import faults
import pipeline
from helpers import chunk_files, lock_is_free, log_fault, mixed_loss, mixed_x, wait_for_lock_held
from pipeline.cli import main
from pipeline.internal import RUN, ResultStore

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCK = 2  # mixed_x: 16 columns -> 8 blocks


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The undisturbed result, to compare bitwise against."""
    store = str(tmp_path_factory.mktemp("clean") / "h.zarr")
    return pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), store, block_size=BLOCK, progress=False
    ).assemble()


def lost_entries(store, clean):
    return int(np.count_nonzero(np.asarray(ResultStore.open(store).matrix[...]) != clean))


DRIVER = """
import pipeline, helpers
pipeline.hessian_to_zarr(helpers.mixed_loss, helpers.mixed_x(), {store!r}, block_size=2,
                         threads=1, progress=False)
"""


def _driver(store, planned):
    """A driver process with ``planned`` faults installed by the test-side module."""
    return subprocess.Popen(
        faults.command(planned, code=DRIVER.format(store=store)), env=faults.env()
    )


def _done(store):
    try:
        return ResultStore.open(store).read_records()
    except Exception:  # noqa: BLE001 - not created yet
        return None


@pytest.mark.slow
def test_driver_sigkilled_several_times_at_random_points(tmp_path, clean):
    store = str(tmp_path / "h.zarr")
    slow = [{"block": i, "kind": "sleep", "seconds": 0.6} for i in range(8)]
    rng = random.Random(20261126)
    kills = 0
    history = []
    for _ in range(3):
        proc = _driver(store, slow)
        time.sleep(rng.uniform(2.5, 5.0))  # past start-up, somewhere in the blocks
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        records = _done(store)
        if records is not None:
            history.append(records.copy())
    result = pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), store, block_size=BLOCK, progress=False
    )
    final = ResultStore.open(store).read_records()
    # a block completed before a kill keeps the record of the run that computed it
    for before in history:
        done = np.flatnonzero(before[:, 0] == 1)
        np.testing.assert_array_equal(final[done], before[done])
    assert result.status()["complete"]
    lost = lost_entries(store, clean)
    assert lost == 0
    assert final[:, RUN].max() == len(result.meta["runs"])
    log_fault("driver SIGKILL at random points (3 in a row), then resume", kills, True, lost)


def test_driver_sigkill_once(tmp_path, clean):
    store = str(tmp_path / "h.zarr")
    proc = _driver(store, [{"block": i, "kind": "sleep", "seconds": 0.8} for i in range(8)])
    deadline = time.time() + 120
    while time.time() < deadline:
        records = _done(store)
        if records is not None and (records[:, 0] == 1).sum() >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _done(store)
    done = np.flatnonzero(before[:, 0] == 1)
    result = pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), store, block_size=BLOCK, progress=False
    )
    assert result.run_summary.blocks_computed == 8 - done.size
    after = ResultStore.open(store).read_records()
    np.testing.assert_array_equal(after[done], before[done])  # not recomputed
    assert set(after[:, RUN]) == {1, 2}
    assert [r["status"] for r in result.meta["runs"]] == ["interrupted", "complete"]
    assert lock_is_free(store)  # the kernel released the killed driver's lock
    lost = lost_entries(store, clean)
    assert lost == 0
    log_fault("driver SIGKILL mid-run, then resume", 1, True, lost)


def test_truncated_garbage_and_lost_record_then_repair(tmp_path, clean, monkeypatch):
    store = str(tmp_path / "h.zarr")
    spec_dir = tmp_path / "spec"
    spec_dir.mkdir()
    spec = spec_dir / "s.yaml"
    spec.write_text(
        f"operation: hessian\nfunction: helpers:mixed_loss\npoint: helpers:mixed_x\n"
        f"output: {store}\nblocks: {{block_size: {BLOCK}}}\n"
    )
    monkeypatch.syspath_prepend(TESTS)
    runner = CliRunner()
    assert runner.invoke(main, ["run", str(spec), "--no-progress"]).exit_code == 0
    np.testing.assert_array_equal(np.asarray(ResultStore.open(store).matrix[...]), clean)
    chunks = chunk_files(store)
    with open(chunks[1], "r+b") as fh:  # truncated
        fh.truncate(10)
    with open(chunks[4], "r+b") as fh:  # overwritten with garbage of the same size
        size = os.path.getsize(chunks[4])
        fh.write(np.random.default_rng(0).bytes(size))
    ResultStore.open(store, "r+").clear_record(6)  # a completion record lost
    res = runner.invoke(main, ["verify", store])
    assert res.exit_code == 4
    assert "2 bad block(s): [1, 4]; 1 incomplete: [6]" in res.output
    res = runner.invoke(main, ["verify", store, "--repair", "--no-progress"])
    assert res.exit_code == 0, res.output
    lost = lost_entries(store, clean)
    assert lost == 0
    assert pipeline.open_result(store).verify() == []
    log_fault("chunk truncated + chunk overwritten + record lost, verify --repair", 3, True, lost)


def test_f_raising_on_one_block(tmp_path, clean, monkeypatch, inject):
    store = str(tmp_path / "h.zarr")
    inject([{"block": 5, "kind": "raise"}])
    with pytest.raises(pipeline.BlockError, match=r"^block 5 \(columns 10:12\) failed"):
        pipeline.hessian_to_zarr(
            mixed_loss, mixed_x(), store, block_size=BLOCK, threads=1, progress=False
        )
    records = ResultStore.open(store).read_records()
    assert records[5, 0] == 0
    done = np.flatnonzero(records[:, 0] == 1)
    m = np.asarray(ResultStore.open(store).matrix[...])
    for i in done:  # earlier blocks intact
        np.testing.assert_array_equal(
            m[:, i * BLOCK : (i + 1) * BLOCK], clean[:, i * BLOCK : (i + 1) * BLOCK]
        )
    inject.clear()
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=BLOCK, progress=False)
    lost = lost_entries(store, clean)
    assert lost == 0
    log_fault("f raises on one block, then resume", 1, True, lost)


def test_f_returning_nan_on_one_block_is_reported(tmp_path, monkeypatch, inject):
    store = str(tmp_path / "h.zarr")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"operation: hessian\nfunction: helpers:mixed_loss\npoint: helpers:mixed_x\n"
        f"output: {store}\nblocks: {{block_size: {BLOCK}}}\n"
    )
    monkeypatch.syspath_prepend(TESTS)
    inject([{"block": 3, "kind": "nan", "at": "kernel"}])
    res = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert res.exit_code == 0
    assert "non-finite  1 entries in blocks [3]" in res.output
    assert pipeline.open_result(store).status()["nonfinite_blocks"] == [3]
    log_fault("f returns NaN on one block (reported, not hidden)", 1, True, 0)


def test_disk_full_on_one_block(tmp_path, clean, monkeypatch, inject):
    store = str(tmp_path / "h.zarr")
    inject([{"block": 4, "kind": "enospc", "at": "data"}])
    with pytest.raises(pipeline.BlockError, match=r"block 4 .* No space left on device"):
        pipeline.hessian_to_zarr(
            mixed_loss, mixed_x(), store, block_size=BLOCK, threads=1, progress=False
        )
    assert ResultStore.open(store).read_records()[4, 0] == 0
    inject.clear()
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=BLOCK, progress=False)
    lost = lost_entries(store, clean)
    assert lost == 0
    log_fault("disk full while writing one block (patched store), then resume", 1, True, lost)


@pytest.mark.slow
def test_disk_really_full_on_tmpfs(tmp_path, monkeypatch, inject):
    mount = tmp_path / "small"
    mount.mkdir()
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if ok.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {ok.stderr.decode().strip()}")
    try:
        import jax.numpy as jnp

        x = {"w": jnp.linspace(0.0, 1.0, 600)}  # H is 1.4 MB: fits in 2 MB when we start
        f = lambda p: jnp.sum(jnp.sin(p["w"]) ** 2) * jnp.sum(p["w"])
        store = str(mount / "h.zarr")
        # the disk fills up while the run is under way (another program's file)
        inject([{"block": i, "kind": "sleep", "seconds": 0.4, "at": "start"} for i in range(12)])

        def fill_when_a_block_is_recorded():
            deadline = time.time() + 120
            records = os.path.join(store, "blocks", "c")
            while not (os.path.isdir(records) and os.listdir(records)):
                if time.time() > deadline:
                    return
                time.sleep(0.01)
            if os.path.ismount(mount):  # never fill the disk beneath it: 4 MB at most
                subprocess.run(
                    ["dd", "if=/dev/zero", f"of={mount / 'filler'}", "bs=64k", "count=64"],
                    capture_output=True,
                )

        filler = threading.Thread(target=fill_when_a_block_is_recorded)
        filler.start()
        with pytest.raises(pipeline.BlockError, match=r"No space left on device"):
            pipeline.hessian_to_zarr(f, x, store, block_size=50, threads=1, progress=False)
        filler.join()
        result = pipeline.open_result(store)
        assert 0 < result.status()["blocks_done"] < result.status()["blocks_total"]
        assert result.verify() == []  # what was recorded is intact
        log_fault("disk really full mid-run (2 MB tmpfs)", 1, True, 0)
        # issue 8 (11): with the disk full, a run is refused before it writes a byte
        inject.clear()
        with pytest.raises(
            pipeline.StoreError,
            match=r"needs [0-9.]+ [kM]iB more on disk .* "
            r"but only [0-9.]+ (kiB|B) is free",
        ):
            pipeline.hessian_to_zarr(f, x, str(mount / "other.zarr"), block_size=50, progress=False)
        assert not os.path.exists(mount / "other.zarr")
        log_fault("a run larger than the free disk (refused up front)", 1, True, 0)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_two_runs_racing_on_one_store(tmp_path, clean):
    store = str(tmp_path / "h.zarr")
    proc = _driver(store, [{"block": i, "kind": "sleep", "seconds": 0.5} for i in range(8)])
    try:
        wait_for_lock_held(store, proc)
        with pytest.raises(pipeline.StoreError, match="another run"):
            pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=BLOCK, progress=False)
    finally:
        assert proc.wait(timeout=300) == 0
    lost = lost_entries(store, clean)
    assert lost == 0
    log_fault("a second run racing on the same store (refused)", 1, True, lost)


def test_store_of_other_function_or_x(tmp_path, clean):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=BLOCK, progress=False)
    import jax

    with pytest.raises(pipeline.StoreError, match="differs in: function"):
        pipeline.hessian_to_zarr(
            lambda p: 2 * mixed_loss(p), mixed_x(), store, block_size=BLOCK, progress=False
        )
    with pytest.raises(pipeline.StoreError, match="differs in: x"):
        pipeline.hessian_to_zarr(
            mixed_loss,
            jax.tree_util.tree_map(lambda v: v + 1, mixed_x()),
            store,
            block_size=BLOCK,
            progress=False,
        )
    lost = lost_entries(store, clean)
    assert lost == 0
    log_fault("a run pointed at a store of another function / x (refused)", 2, True, lost)


@pytest.mark.slow
def test_nanny_kills_a_worker_mid_task(tmp_path, clean, tmp_path_factory, inject):
    from distributed import Client

    faults_file = str(tmp_path / "faults.json")
    with open(faults_file, "w") as fh:
        json.dump([{"block": i, "kind": "sleep", "seconds": 1.0} for i in range(8)], fh)
    inject(faults_file=faults_file)  # the faulty task travels to the workers
    env = {
        "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
        "JAX_PLATFORMS": "cpu",
    }
    store = str(tmp_path / "h.zarr")
    with (
        pipeline.local_cluster(2, env=env, memory_limit="4GiB") as cluster,
        Client(cluster) as client,
    ):
        outcome = {}

        def run():
            try:
                outcome["result"] = pipeline.hessian_to_zarr(
                    mixed_loss, mixed_x(), store, block_size=BLOCK, client=client, progress=False
                )
            except BaseException as err:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = err

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.time() + 120
        while time.time() < deadline:  # wait until blocks are running, then kill one worker
            processing = client.processing()
            busy = [w for w, keys in processing.items() if any("diffops-block" in k for k in keys)]
            if busy:
                break
            time.sleep(0.05)
        client.restart_workers([busy[0]])  # the nanny kills and restarts that worker
        thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    lost = lost_entries(store, clean)
    assert lost == 0
    log_fault("nanny kills a worker mid-task (2-worker LocalCluster)", 1, True, lost)
