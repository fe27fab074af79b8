"""A block counts as complete only when its data is really there: all-NaN blocks,
truncated chunks, edited array metadata, dead runs, disk needs (issue 16, items
9, 11, 13 and 14)."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc
import pipeline
from helpers import chunk_files, log_fault, mixed_loss, mixed_x, tol
from pipeline.internal import ResultStore


def nan_loss(x):
    return jnp.sum(jnp.log(-x) * x**2)  # NaN everywhere for x > 0


@pytest.mark.parametrize("compressor", [None, "zstd"])
def test_all_nan_blocks_complete_and_a_rerun_computes_nothing(tmp_path, compressor):
    store = str(tmp_path / "nan.zarr")
    x = jnp.ones(10)  # block 3: a ragged last block of 1 column
    first = pipeline.hessian_to_zarr(
        nan_loss, x, store, block_size=3, compressor=compressor, progress=False
    )
    status = first.status()
    assert status["complete"] and status["blocks_done"] == 4
    assert status["nonfinite_blocks"] == [0, 1, 2, 3]
    assert first.runs()[-1]["status"] == "complete"
    again = pipeline.hessian_to_zarr(
        nan_loss, x, store, block_size=3, compressor=compressor, progress=False
    )
    assert again.run_summary.blocks_computed == 0
    assert np.isnan(again.assemble()).all()
    log_fault(f"all-NaN blocks ({compressor or 'uncompressed'}) complete", 1, True, 0)


def test_a_write_that_leaves_no_chunk_fails_the_block_and_the_run(tmp_path, monkeypatch):
    from pipeline.internal import SlabWriter

    monkeypatch.setattr(SlabWriter, "write", lambda self, rows, cols, data: None)
    store = str(tmp_path / "h.zarr")
    with pytest.raises(pipeline.BlockError, match="not in the store after writing"):
        pipeline.hessian_to_zarr(
            mixed_loss, mixed_x(), store, block_size=4, threads=1, progress=False
        )
    result = pipeline.open_result(store)
    assert result.status()["blocks_done"] == 0
    assert result.runs()[-1]["status"] == "failed"


def test_a_truncated_chunk_is_missing_and_recomputed(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    victim = chunk_files(store)[1]
    with open(victim, "r+b") as fh:
        fh.truncate(os.path.getsize(victim) // 2)
    status = pipeline.open_result(store).status()
    assert not status["complete"] and status["missing_data"] == [1]
    with pytest.raises(ValueError, match="incomplete"):
        pipeline.open_result(store).assemble()
    again = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    assert again.run_summary.blocks_computed == 1
    np.testing.assert_allclose(
        again.assemble(), dc.hessian(mixed_loss, mixed_x())[0], **tol(np.float32)
    )
    log_fault("a truncated chunk (missing; recomputed)", 1, True, 0)


def test_edited_array_metadata_is_damaged_and_overwrite_recovers(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    name = os.path.join(store, "matrix", "zarr.json")
    meta = json.load(open(name))
    n = meta["shape"][0]
    meta["shape"] = [n, n // 2]
    json.dump(meta, open(name, "w"))
    with pytest.raises(
        pipeline.StoreError, match=r"disagree with its metadata \(matrix shape .*overwrite=True"
    ):
        pipeline.open_result(store)
    with pytest.raises(pipeline.StoreError, match="disagree with its metadata"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    done = pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), store, block_size=4, overwrite=True, progress=False
    )
    assert done.shape == (n, n) and done.status()["complete"]


def test_a_bfloat16_matrix_is_refused_before_a_store_exists(tmp_path):
    x = {"a": jnp.ones(5, jnp.bfloat16)}
    store = tmp_path / "b.zarr"
    with pytest.raises(TypeError, match="bfloat16, which a Zarr store cannot hold; cast x"):
        pipeline.hessian_to_zarr(lambda p: jnp.sum(p["a"] ** 3), x, str(store), progress=False)
    assert not store.exists()


def test_a_run_that_died_reads_interrupted_not_running(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    ResultStore.open(store, "r+").start_run(3)  # as a killed run leaves it: no end, no lock
    result = pipeline.open_result(store)
    assert result.runs()[-1]["status"] == "interrupted"
    from pipeline.internal import RunLock

    with RunLock(store):  # a live holder: still running
        assert pipeline.open_result(store).runs()[-1]["status"] == "running"

    # telling never takes the lock (a run starting at that instant would refuse)
    def no_probe(self):
        raise AssertionError("status took the run lock")

    real = RunLock.acquire
    RunLock.acquire = no_probe
    try:
        assert pipeline.open_result(store).runs()[-1]["status"] == "interrupted"
    finally:
        RunLock.acquire = real


def test_the_disk_check_covers_what_a_run_writes(tmp_path):
    from pipeline.internal import store_disk_bytes

    store = tmp_path / "h.zarr"
    done = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), str(store), block_size=4, progress=False)
    used = sum(
        os.stat(os.path.join(base, name)).st_blocks * 512
        for base, _dirs, files in os.walk(store)
        for name in files
    )
    plan = done.store.plan
    need = store_disk_bytes(
        done.shape, 1, plan.block_size, 4, list(range(plan.n_blocks)), plan.n_blocks, True
    )
    assert used <= need <= 4 * used + 2**20


def test_the_factor_disk_is_checked_before_it_is_made(tmp_path, monkeypatch):
    from pipeline.internal import location_module as store_module

    store = str(tmp_path / "h.zarr")
    P = np.eye(12) * 2
    result = pipeline.hessian_to_zarr(
        lambda v: 0.5 * v @ jnp.asarray(P, jnp.float32) @ v,
        jnp.zeros(12),
        store,
        block_size=4,
        progress=False,
    )
    monkeypatch.setattr(store_module, "free_disk", lambda location: 1000)
    with pytest.raises(
        pipeline.StoreError, match=r"the Cholesky factor \(tile 12\) needs .* more on disk"
    ):
        result.marginal_std(progress=False)
    assert "factor" not in os.listdir(store)
