"""The store as other tools see it (issue 10): xarray opens it without a
warning, with dimensions, coordinates and plain attributes naming the leaves."""

import warnings

import numpy as np
import pytest

import diffops_core as dc
import pipeline
from helpers import mixed_loss, mixed_out, mixed_x, tol

xr = pytest.importorskip("xarray")  # in the test extra: installed wherever the tests run


def _open(store):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "consolidated metadata" and any other warning fail
        return xr.open_zarr(store)


def test_xarray_opens_a_hessian_with_leaf_coordinates(tmp_path):
    store = str(tmp_path / "h.zarr")
    x = mixed_x()
    pipeline.hessian_to_zarr(mixed_loss, x, store, block_size=5, progress=False)
    ds = _open(store)
    assert ds.matrix.dims == ("row", "column") and ds.matrix.shape == (16, 16)
    for name in ("row", "column", "row_leaf", "row_index", "column_leaf", "column_index"):
        assert name in ds.coords, name
    names = ds.matrix.attrs["row_leaves"]
    assert names == [
        "['nested'][0]",
        "['nested'][1][0]",
        "['nested'][1][1]",
        "['scalar']",
        "['vec']",
    ]
    assert ds.matrix.attrs["column_leaves"] == names and ds.matrix.attrs["operation"] == "hessian"
    blocks = dc.hessian_to_pytree(dc.hessian(mixed_loss, x)[0], x)
    vec, nested0 = names.index("['vec']"), names.index("['nested'][0]")
    # a leaf by its coordinates: rows of 'vec' against columns of nested[0]
    sub = ds.matrix.sel(
        row=ds.row[(ds.row_leaf == vec).compute()],
        column=ds.column[(ds.column_leaf == nested0).compute()],
    )
    expected = np.asarray(blocks["vec"]["nested"][0]).reshape(5, 6)
    np.testing.assert_allclose(sub.values, expected, **tol(np.float32))
    # or with an index on the leaf coordinate
    rows = ds.matrix.set_xindex("row_leaf").sel(row_leaf=vec)
    assert rows.shape == (5, 16)
    np.testing.assert_array_equal(ds.row_index.values[ds.row_leaf.values == vec], np.arange(5))


def test_xarray_opens_a_jacobian_with_output_rows(tmp_path):
    store = str(tmp_path / "j.zarr")
    pipeline.jacobian_to_zarr(mixed_out, mixed_x(), store, mode="rev", block_size=4, progress=False)
    ds = _open(store)
    assert ds.matrix.attrs["row_leaves"] == ["['first']", "['second'][0]", "['second'][1]"]
    assert ds.matrix.attrs["row_leaf_shapes"] == [[5], [2], []]
    assert ds.sizes["row"] == 8 and ds.sizes["column"] == 16


def test_consolidated_metadata_follows_the_run_history(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=5, progress=False)
    ds = _open(store)
    assert ds.attrs["diffops"]["runs"][-1]["status"] == "complete"  # not the stale 'running'
