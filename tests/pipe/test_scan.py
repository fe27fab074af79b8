"""The checks and the summary read the stored matrix about once (issue 16, item
10): one panel when the matrix fits, pairs of panels otherwise; figures equal
numpy's."""

import jax.numpy as jnp
import numpy as np
import pytest

import pipeline
from pipeline._report import checks
from pipeline._scan import scan


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
    result._store.matrix[3:4, 30:31] = H[3:4, 30:31]
    return result, H


@pytest.mark.parametrize("budget", [None, 40 * 4 * 8 * 2])
def test_scan_figures_equal_numpy_with_one_or_many_panels(tmp_path, budget):
    result, H = _asym_store(tmp_path)
    found = scan(result._store, budget=budget)
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
    reads = []
    real = type(result._store.matrix).__getitem__

    def counting(self, key):
        reads.append(key)
        return real(self, key)

    monkeypatch.setattr(type(result._store.matrix), "__getitem__", counting)
    out = checks(result)
    assert (
        len([k for k in reads if k is not Ellipsis]) == 1
    )  # was a read per tile: 60 x 60 (records: ...)
    assert out["symmetry_error"] == pytest.approx(np.abs(H - H.T).max() / np.abs(H).max(), rel=1e-6)
    summary = result.summary()
    assert summary.leaves[0].asymmetry == pytest.approx(np.abs(H - H.T).max(), rel=1e-6)
