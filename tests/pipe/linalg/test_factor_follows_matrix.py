"""The stored factor follows the matrix: made only from blocks that verify,
invalidated by a repair, never from non-finite entries; a covariance never
overwrites its source (issue 16, items 3, 7 and 12)."""

import os

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.internal import ResultStore

N = 60


def _spd(seed=0):
    a = np.random.default_rng(seed).normal(size=(N, N))
    return a @ a.T / N + 0.5 * np.eye(N)


def _store(tmp_path, f=None, name="h.zarr"):
    import jax
    import jax.numpy as jnp

    P = _spd()

    def quad(x):
        return 0.5 * x @ jnp.asarray(P) @ x

    with jax.enable_x64(True):
        return pipeline.hessian_to_zarr(
            f or quad, np.zeros(N), str(tmp_path / name), block_size=20, progress=False
        ), P


def _scale_tile(location, factor=3.0):
    matrix = zarr.open_array(str(location), path="matrix", mode="r+")
    matrix[:20, 20:40] = np.asarray(matrix[:20, 20:40]) * factor


def _sigma(P):
    return np.sqrt(np.diag(np.linalg.inv(P)))


def test_a_corrupted_matrix_is_not_factorised(tmp_path):
    result, _P = _store(tmp_path)
    _scale_tile(result.location)
    assert result.verify() == [1]
    with pytest.raises(
        pipeline.StoreError, match=r"blocks \[1\] .* no longer match .*verify --repair"
    ):
        result.marginal_std(progress=False)
    with pytest.raises(pipeline.StoreError, match="no longer match"):
        result.analyze(progress=False)
    assert "factor" not in os.listdir(result.location)  # nothing begun from damaged blocks


def test_a_repair_invalidates_the_factor_tiles_that_depend_on_it(tmp_path):
    result, P = _store(tmp_path)
    std = result.marginal_std(tile=20, progress=False)
    np.testing.assert_allclose(std, _sigma(P), rtol=1e-10)
    # a factor made (by an older version) from a damaged matrix: the repair must drop it
    from pipeline.internal import invalidate

    root = zarr.open_group(result.location, mode="r+", use_consolidated=False)
    records = np.asarray(root["factor"]["records"][...])
    cleared = invalidate(result.location, [slice(20, 40)])
    after = np.asarray(root["factor"]["records"][...])
    assert cleared > 0
    assert np.all(after[0, :, 1:] == 0) and np.all(after[0, :, 0] == records[0, :, 0])
    assert np.all(after[2] == 0)
    # a wrong factor tile whose record still matches, as if made from damaged data
    lower = root["factor"]["lower"]
    bad = np.asarray(lower[40:60, 40:60]) * 1.5
    lower[40:60, 40:60] = bad
    import zlib

    root["factor"]["records"][0, 2, 2] = (
        zlib.crc32(np.ascontiguousarray(bad).data) & 0xFFFFFFFF
    ) + 1
    _scale_tile(result.location)
    report = pipeline.repair(result.location, _spec(tmp_path, result), progress=False)
    assert report["bad"] == [1] and report["still_bad"] == []
    again = pipeline.open_result(result.location).marginal_std(progress=False)
    np.testing.assert_allclose(again, _sigma(P), rtol=1e-10)


def _spec(tmp_path, result):
    import textwrap

    np.save(tmp_path / "P.npy", _spd())
    (tmp_path / "qmodel.py").write_text(
        textwrap.dedent(
            """
            import os
            import jax.numpy as jnp
            import numpy as np
            P = np.load(os.path.join(os.path.dirname(__file__), "P.npy"))
            def quad(x):
                return 0.5 * x @ jnp.asarray(P) @ x
            def point():
                return np.zeros(P.shape[0])
            """
        )
    )
    (tmp_path / "q.yaml").write_text(
        f"operation: hessian\nfunction: qmodel:quad\npoint: qmodel:point\noutput: {result.location}\n"
        "blocks: {block_size: 20}\ndtype: float64\n"
    )
    return pipeline.load_spec(str(tmp_path / "q.yaml"))


def test_non_finite_entries_are_refused_before_any_factor(tmp_path):
    import jax.numpy as jnp

    def f(x):
        return jnp.sum(jnp.log(-x) * x**2)

    result = pipeline.hessian_to_zarr(
        f, np.ones(8, np.float32), str(tmp_path / "nan.zarr"), block_size=4, progress=False
    )
    assert result.status()["complete"]
    for call in (
        lambda: result.marginal_std(progress=False),
        lambda: result.spectrum(k=2, progress=False),
        lambda: result.covariance(str(tmp_path / "c.zarr"), progress=False),
        lambda: result.analyze(progress=False),
    ):
        with pytest.raises(ValueError, match=r"64 NaN or infinite entries \(in blocks \[0, 1\]\)"):
            call()
    assert "factor" not in os.listdir(result.location)
    assert not (tmp_path / "c.zarr").exists()


@pytest.mark.parametrize("spelling", ["{}/", "{}/.", "{}/../h.zarr", "{}/factor", "link"])
def test_a_covariance_over_its_source_is_refused(tmp_path, spelling):
    result, _P = _store(tmp_path)
    if spelling == "link":
        os.symlink(result.location, tmp_path / "alias.zarr")
        target = str(tmp_path / "alias.zarr")
    else:
        target = spelling.format(result.location)
    with pytest.raises(ValueError, match="needs its own store") as err:
        result.covariance(target, overwrite=True, progress=False)
    assert "overwrite" not in str(err.value)
    again = ResultStore.open(result.location)
    assert (
        again.meta["operation"] == "hessian"
        and pipeline.open_result(result.location).status()["complete"]
    )
