"""The pipeline on the embedded default: equality with the in-memory API, views,
resume and idempotence, refusal of mismatched stores, verify, failures."""

import json
import os

import dask.array as da
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc
import pipeline
from helpers import (
    assert_tree_close,
    chunk_files,
    file_snapshot,
    mixed_loss,
    mixed_out,
    mixed_x,
    tol,
)


@pytest.mark.parametrize(
    "blocking", [{"block_size": 5}, {"nbatches": 3}, {"block_size": 16}, {}], ids=str
)
def test_hessian_equals_in_memory(tmp_path, blocking):
    x = mixed_x()
    store = str(tmp_path / "h.zarr")
    result = pipeline.hessian_to_zarr(mixed_loss, x, store, progress=False, **blocking)
    H, _ = dc.hessian(mixed_loss, x, **blocking)
    assert result.shape == (16, 16) and result.dtype == np.float32
    np.testing.assert_allclose(result.assemble(), H, **tol(np.float32))
    status = result.status()
    assert status["complete"] and status["blocks_done"] == status["blocks_total"]
    assert result.verify() == []


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_jacobian_equals_in_memory(tmp_path, mode):
    x = mixed_x()
    result = pipeline.jacobian_to_zarr(
        mixed_out, x, str(tmp_path / "j.zarr"), mode=mode, block_size=3, progress=False
    )
    J, _ = dc.jacobian(mixed_out, x, block_size=3, mode=mode)
    flat = np.concatenate(
        [np.asarray(leaf).reshape(-1, 16) for leaf in jax.tree_util.tree_leaves(J)]
    )
    np.testing.assert_allclose(result.assemble(), flat, **tol(np.float32))
    # the pytree view: outer structure of f(x), inner of x
    view = result.to_pytree(x)
    expected = jax.jacobian(lambda p: mixed_out(p))(x)
    assert_tree_close(
        jax.tree_util.tree_map(lambda a: a.compute(), view), expected, **tol(np.float32)
    )


def test_lazy_views_match_hessian_to_pytree(tmp_path):
    x = mixed_x()
    result = pipeline.hessian_to_zarr(
        mixed_loss, x, str(tmp_path / "h.zarr"), block_size=4, progress=False
    )
    H, _ = dc.hessian(mixed_loss, x, block_size=4)
    expected = dc.hessian_to_pytree(np.asarray(H), x)
    with_x = result.to_pytree(x)
    assert jax.tree_util.tree_structure(with_x) == jax.tree_util.tree_structure(expected)
    for ours, theirs in zip(jax.tree_util.tree_leaves(with_x), jax.tree_util.tree_leaves(expected)):
        assert isinstance(ours, da.Array)
        np.testing.assert_allclose(ours.compute(), theirs, **tol(np.float32))
    # without x: rebuilt from the stored key paths (plain dict/list/tuple here)
    without_x = pipeline.open_result(str(tmp_path / "h.zarr")).to_pytree()
    assert without_x["nested"][1][0]["vec"].shape == (5,)
    for ours, theirs in zip(
        jax.tree_util.tree_leaves(without_x), jax.tree_util.tree_leaves(expected)
    ):
        np.testing.assert_allclose(ours.compute(), theirs, **tol(np.float32))


def test_rerun_of_complete_store_rewrites_nothing(tmp_path):
    x = mixed_x()
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, x, store, block_size=4, progress=False)
    before = file_snapshot(store)
    again = pipeline.hessian_to_zarr(mixed_loss, x, store, block_size=4, progress=False)
    assert again.run_summary.blocks_computed == 0
    assert file_snapshot(store) == before


def test_store_of_another_computation_is_refused(tmp_path):
    x = mixed_x()
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, x, store, block_size=4, progress=False)
    other_x = jax.tree_util.tree_map(lambda v: v * 2.0, x)
    with pytest.raises(pipeline.StoreError, match=r"differs in: x\).*overwrite=True"):
        pipeline.hessian_to_zarr(mixed_loss, other_x, store, block_size=4, progress=False)
    with pytest.raises(pipeline.StoreError, match=r"differs in: function"):
        pipeline.hessian_to_zarr(
            lambda p: mixed_loss(p) * 2.0, x, store, block_size=4, progress=False
        )
    with pytest.raises(pipeline.StoreError, match=r"differs in: options"):
        pipeline.hessian_to_zarr(mixed_loss, x, store, block_size=5, progress=False)
    replaced = pipeline.hessian_to_zarr(
        mixed_loss, other_x, store, block_size=4, overwrite=True, progress=False
    )
    np.testing.assert_allclose(
        replaced.assemble(), dc.hessian(mixed_loss, other_x)[0], **tol(np.float32)
    )


def test_failing_block_is_named_and_finished_blocks_stay(tmp_path, monkeypatch, inject):
    x = mixed_x()
    store = str(tmp_path / "h.zarr")
    inject([{"block": 2, "kind": "raise"}])
    with pytest.raises(
        pipeline.BlockError,
        match=r"block 2 \(columns 4:6\) failed: RuntimeError: "
        r"injected fault in block 2",
    ):
        pipeline.hessian_to_zarr(mixed_loss, x, store, block_size=2, threads=1, progress=False)
    result = pipeline.open_result(store)
    status = result.status()
    assert not status["complete"] and 2 not in np.flatnonzero(result.store.done_mask())
    finished = status["blocks_done"]
    inject.clear()
    done = pipeline.hessian_to_zarr(mixed_loss, x, store, block_size=2, progress=False)
    assert done.run_summary.blocks_computed == 8 - finished
    np.testing.assert_allclose(done.assemble(), dc.hessian(mixed_loss, x)[0], **tol(np.float32))
    runs = done.meta["runs"]
    assert [r["status"] for r in runs] == ["failed", "complete"]
    assert "block 2" in runs[0]["error"]


def test_nan_block_is_reported(tmp_path, monkeypatch, inject):
    inject([{"block": 1, "kind": "nan", "at": "kernel"}])
    result = pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), str(tmp_path / "h.zarr"), block_size=4, progress=False
    )
    assert result.run_summary.nonfinite_blocks == (1,)
    assert result.status()["nonfinite_blocks"] == [1]


def test_verify_detects_a_corrupted_chunk(tmp_path):
    store = str(tmp_path / "h.zarr")
    result = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    chunks = chunk_files(store)
    assert len(chunks) == 4  # one chunk per block of 4 columns
    with open(chunks[2], "r+b") as fh:
        fh.seek(8)
        fh.write(b"\x7f\x7f\x7f\x7f")
    assert result.verify() == [2]
    os.unlink(chunks[3])
    assert result.verify() == [2, 3]


def test_run_lock_refuses_a_second_writer_and_break_lock_takes_over(tmp_path):
    import filelock

    store = tmp_path / "h.zarr"
    store.mkdir()
    held = filelock.FileLock(str(store / "diffops.lock"), timeout=0)
    held.acquire()  # a live run holds it (an OS lock: freed when its process dies)
    try:
        with pytest.raises(pipeline.StoreError, match=r"another run is writing to .*break_lock"):
            pipeline.hessian_to_zarr(
                mixed_loss, mixed_x(), str(store), block_size=4, progress=False
            )
        assert os.listdir(store) == ["diffops.lock"]  # refused before writing anything
        taken = pipeline.hessian_to_zarr(
            mixed_loss, mixed_x(), str(store), block_size=4, progress=False, break_lock=True
        )
        assert taken.status()["complete"]
    finally:
        held.release()


def test_a_malformed_lock_file_is_no_obstacle(tmp_path):
    # issue 8 (8): a lock body that was valid JSON but not an object crashed
    store = tmp_path / "h.zarr"
    store.mkdir()
    (store / "diffops.lock").write_text("[1, 2, 3]")
    result = pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), str(store), block_size=4, progress=False
    )
    assert result.status()["complete"]


def test_stale_lock_and_partial_files_are_cleaned(tmp_path):
    import filelock

    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    from pipeline.internal import ResultStore

    ResultStore.open(store, "r+").clear_record(1)  # as if the run died while writing block 1
    import socket

    with open(os.path.join(store, "diffops.lock"), "w") as fh:  # an old-style lock body
        json.dump({"host": socket.gethostname(), "pid": 2**22 + 12345, "since": "then"}, fh)
    leftover = os.path.join(store, "matrix", "c", "0", "1.0123456789abcdef0123456789abcdef.partial")
    open(leftover, "wb").close()
    not_ours = os.path.join(store, "matrix", "c", "0", "notes.partial")
    open(not_ours, "wb").close()
    again = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    assert again.run_summary.blocks_computed == 1
    assert not os.path.exists(leftover)
    assert os.path.exists(not_ours)  # not a name zarr writes: not ours to delete
    probe = filelock.FileLock(os.path.join(store, "diffops.lock"), timeout=0)
    probe.acquire()  # released when the run ended
    probe.release()


def test_memory_contract_refuses_up_front(tmp_path, monkeypatch):
    import psutil

    class Tiny:
        available = 100
        total = 100

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    store = str(tmp_path / "h.zarr")
    with pytest.raises(
        MemoryError,
        match=r"one block task needs about .* over 80% of this "
        r"machine's available memory",
    ):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    assert not os.path.exists(os.path.join(store, "zarr.json"))


def test_bad_arguments(tmp_path):
    store = str(tmp_path / "h.zarr")
    with pytest.raises(TypeError, match="store must be a path"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), 42)
    with pytest.raises(ValueError, match="compressor must be None or 'zstd'"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, compressor="gzip9")
    with pytest.raises(TypeError, match="threads must be a positive int"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, threads=0)
    with pytest.raises(ValueError, match="hessian needs a scalar-valued f"):
        pipeline.hessian_to_zarr(mixed_out, mixed_x(), store)
    with pytest.raises(pipeline.StoreError, match="no diffops result"):
        pipeline.open_result(str(tmp_path / "nothing.zarr"))


def test_zstd_and_float64(tmp_path):
    with jax.enable_x64(True):
        x = mixed_x(jnp.float64)
        result = pipeline.hessian_to_zarr(
            mixed_loss, x, str(tmp_path / "h.zarr"), block_size=6, compressor="zstd", progress=False
        )
        assert result.dtype == np.float64
        np.testing.assert_allclose(
            result.assemble(), dc.hessian(mixed_loss, x)[0], **tol(np.float64)
        )


def test_overwrite_still_resumes_the_same_computation(tmp_path):
    from pipeline.internal import ResultStore

    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    ResultStore.open(store, "r+").clear_record(2)
    again = pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), store, block_size=4, overwrite=True, progress=False
    )
    assert again.run_summary.blocks_computed == 1
    assert len(again.meta["runs"]) == 2
