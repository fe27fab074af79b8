"""What is ours: a group whose own metadata says diffops, and inside it only the
files zarr writes for us (issue 16, items 6-8). Nothing else is deleted."""

import os

import numpy as np
import pytest
import zarr

import diffops_core as dc
import pipeline
from helpers import file_snapshot, log_fault, mixed_loss, mixed_x, tol


def _run(store, **kw):
    return pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), str(store), block_size=4, progress=False, **kw
    )


def test_a_plain_zarr_group_with_an_unwritten_matrix_array_is_not_replaced(tmp_path):
    target = tmp_path / "plain.zarr"
    group = zarr.open_group(str(target), mode="w")
    group.create_array("matrix", shape=(4, 4), dtype="float32")
    before = file_snapshot(str(target))
    for overwrite in (False, True):
        with pytest.raises(pipeline.StoreError, match="not a diffops store"):
            _run(target, overwrite=overwrite)
    assert file_snapshot(str(target)) == before


def test_a_plain_zarr_group_with_chunks_is_refused_even_with_overwrite(tmp_path):
    target = tmp_path / "plain.zarr"
    group = zarr.open_group(str(target), mode="w")
    group.create_array("matrix", shape=(4, 4), dtype="float32")[...] = np.ones((4, 4))
    before = file_snapshot(str(target))
    for overwrite in (False, True):
        with pytest.raises(pipeline.StoreError, match="not a diffops store") as err:
            _run(target, overwrite=overwrite)
        assert "overwrite=True" not in str(err.value).split("even with")[0]
    assert file_snapshot(str(target)) == before
    np.testing.assert_array_equal(zarr.open_array(str(target / "matrix"))[...], 1)


def test_a_directory_holding_only_matrix_notes_keeps_them(tmp_path):
    target = tmp_path / "out.zarr"
    (target / "matrix").mkdir(parents=True)
    (target / "matrix" / "notes.txt").write_text("mine")
    with pytest.raises(pipeline.StoreError, match="not a diffops store"):
        _run(target)
    assert (target / "matrix" / "notes.txt").read_text() == "mine"


def test_overwrite_deletes_only_the_files_zarr_wrote_for_us(tmp_path):
    store = tmp_path / "h.zarr"
    _run(store)
    (store / "blocks" / "c" / "important.csv").write_text("a,b")
    (store / "row" / "r.txt").write_text("row notes")
    (store / "matrix" / "c" / "0" / "mine.txt").write_text("x")

    def other(p):
        return 2 * mixed_loss(p)

    done = pipeline.hessian_to_zarr(
        other, mixed_x(), str(store), block_size=4, overwrite=True, progress=False
    )
    np.testing.assert_allclose(done.assemble(), dc.hessian(other, mixed_x())[0], **tol(np.float32))
    assert (store / "blocks" / "c" / "important.csv").read_text() == "a,b"
    assert (store / "row" / "r.txt").read_text() == "row notes"
    assert (store / "matrix" / "c" / "0" / "mine.txt").read_text() == "x"
    log_fault("user files inside a store of ours survive --overwrite", 3, True, 0)


def test_remove_ours_keeps_links_and_their_targets(tmp_path):
    from pipeline.internal import remove_ours

    outside = tmp_path / "outside"
    (outside / "c").mkdir(parents=True)
    (outside / "c" / "0").write_text("precious")
    store = tmp_path / "s"
    store.mkdir()
    os.symlink(outside, store / "matrix")
    (store / "zarr.json").write_text("{}")
    remove_ours(str(store))
    assert (outside / "c" / "0").read_text() == "precious"
    assert not (store / "zarr.json").exists()


def test_remove_ours_of_no_names_removes_nothing(tmp_path):
    from pipeline.internal import remove_ours

    store = tmp_path / "h.zarr"
    _run(store)
    before = file_snapshot(str(store))
    assert remove_ours(str(store), []) == []
    assert file_snapshot(str(store)) == before
