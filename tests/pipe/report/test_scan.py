"""The checks and the summary read the stored matrix about once (issue 16, item
10): one panel when the matrix fits, pairs of panels otherwise; figures equal
numpy's."""

import jax.numpy as jnp
import numpy as np
import pytest

import pipeline
from pipeline.internal import CHECKSUM, checks, checksum, read_region, scan


def _asym_store(tmp_path, n=40, block=1):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(n, n)).astype(np.float32)

    def f(x):  # a Hessian that is exactly A + A^T: symmetric
        return 0.5 * x @ (jnp.asarray(A) + jnp.asarray(A).T) @ x

    result = pipeline.hessian_to_zarr(
        f, jnp.zeros(n), str(tmp_path / "s.zarr"), block_size=block, progress=False
    )
    # make it asymmetric by hand, as a faulty model could
    H = np.asarray(result.assemble()).copy()
    H[3, 30] += 1.5
    store = result.store
    store.matrix[3:4, 30:31] = H[3:4, 30:31]
    # with its record's checksum, as the faulty model's own block would have
    # (a block changed behind its record is damage, which the scan refuses)
    block = 30 // block
    store.records[block, CHECKSUM] = checksum(read_region(store.matrix, *store.block_region(block)))
    return result, H


@pytest.mark.parametrize("budget", [None, 40 * 4 * 8 * 2])
def test_scan_figures_equal_numpy_with_one_or_many_panels(tmp_path, budget):
    result, H = _asym_store(tmp_path)
    found = scan(result.store, budget=budget)
    expected = np.abs(H - H.T).max(axis=1)
    np.testing.assert_allclose(found.row_asymmetry, expected, rtol=1e-6)
    np.testing.assert_allclose(
        found.row_squares, (H.astype(np.float64) ** 2).sum(axis=1), rtol=1e-5
    )
    np.testing.assert_allclose(found.diagonal, np.diag(H))
    panels = 1 if budget is None else 5  # 8 columns a panel
    assert found.reads == panels * (panels + 1) // 2


def test_checks_read_the_matrix_once_whatever_the_blocks(tmp_path, monkeypatch):
    result, H = _asym_store(tmp_path, n=60, block=1)  # 60 blocks of one column
    from pipeline.internal import scan_module

    reads = []
    real = scan_module.read_region

    def counting(array, rows, cols):
        reads.append((rows, cols))
        return real(array, rows, cols)

    monkeypatch.setattr(scan_module, "read_region", counting)
    out = checks(result.store)
    assert (
        len([k for k in reads if k is not Ellipsis]) == 1
    )  # was a read per tile: 60 x 60 (records: ...)
    assert out["symmetry_error"] == pytest.approx(np.abs(H - H.T).max() / np.abs(H).max(), rel=1e-6)
    summary = result.summary()
    assert summary.leaves[0].asymmetry == pytest.approx(np.abs(H - H.T).max(), rel=1e-6)


def test_raw_reads_equal_zarr_and_a_missing_chunk_reads_nan(tmp_path):
    import os

    from pipeline.internal import read_region

    result, _H = _asym_store(tmp_path, n=41, block=4)  # a ragged edge chunk
    matrix = result.store.matrix
    for rows, cols in [
        (slice(None), slice(None)),
        (slice(3, 30), slice(5, 41)),
        (slice(40, 41), slice(0, 9)),
    ]:
        np.testing.assert_array_equal(
            read_region(matrix, rows, cols), np.asarray(matrix[rows, cols])
        )
    os.unlink(os.path.join(result.location, "matrix", "c", "0", "2"))  # columns 8:12
    got = read_region(matrix, slice(None), slice(None))
    assert np.isnan(got[:, 8:12]).all() and not np.isnan(got[:, :8]).any()
    np.testing.assert_array_equal(
        result.store.read_records(), np.asarray(result.store.records[...])
    )
