"""Gauss–Newton (Fisher) matrices out of core (issue 11)."""

import numpy as np
import pytest

import diffops_core as dc
import pipeline
from helpers import mixed_out, mixed_x, tol
from pipeline.internal import ResultStore

STD = {"first": 0.5, "second": (np.array([0.1, 2.0], np.float32), 0.25)}


def _cov(m=8, seed=0):
    a = np.random.default_rng(seed).normal(size=(m, m))
    return a @ a.T + m * np.eye(m)


@pytest.mark.parametrize("noise", [{}, {"std": STD}, {"cov": _cov()}, {"inv_cov": _cov(8, 1)}])
@pytest.mark.parametrize("block_size", [3, 16])
def test_the_stored_matrix_equals_the_in_memory_one(tmp_path, noise, block_size):
    x = mixed_x()
    result = pipeline.gauss_newton_to_zarr(
        mixed_out, x, str(tmp_path / "g.zarr"), block_size=block_size, progress=False, **noise
    )
    G, _ = dc.gauss_newton(mixed_out, x, **noise)
    expected = np.asarray(G)
    np.testing.assert_allclose(
        result.assemble(), expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max()
    )
    assert result.meta["operation"] == "gauss_newton" and result.shape == (16, 16)
    rows, cols = result.layouts()
    assert rows == cols  # square over the parameters, like a Hessian
    blocks = result.to_pytree(x)
    np.testing.assert_allclose(
        np.asarray(blocks["vec"]["vec"]),
        np.asarray(dc.hessian_to_pytree(G, x)["vec"]["vec"]),
        **tol(np.float32),
    )


def test_resume_and_other_noise_is_another_computation(tmp_path, inject):
    store = str(tmp_path / "g.zarr")
    x = mixed_x()
    inject([{"block": 2, "kind": "raise"}])
    with pytest.raises(pipeline.BlockError, match="block 2"):
        pipeline.gauss_newton_to_zarr(
            mixed_out, x, store, std=STD, block_size=4, threads=1, progress=False
        )
    inject.clear()
    done = ResultStore.open(store).done_mask()
    assert not done[2]  # the failed block has no record; those that finished keep theirs
    again = pipeline.gauss_newton_to_zarr(
        mixed_out, x, store, std=STD, block_size=4, progress=False
    )
    assert again.run_summary.blocks_computed == 4 - int(done.sum())
    np.testing.assert_allclose(
        again.assemble(),
        np.asarray(dc.gauss_newton(mixed_out, x, std=STD)[0]),
        rtol=2e-4,
        atol=1e-3,
    )
    with pytest.raises(pipeline.StoreError, match="the data f reads changed"):
        pipeline.gauss_newton_to_zarr(mixed_out, x, store, std=1.0, block_size=4, progress=False)
    with pytest.raises(ValueError, match="got std and cov"):
        pipeline.gauss_newton_to_zarr(mixed_out, x, store, std=1.0, cov=_cov(), progress=False)


# -- the spectrum of a stored matrix, streamed ------------------------------------------


def _banded(n=60):
    import jax.numpy as jnp

    def loss(p):
        d = jnp.diff(p)
        return 0.5 * jnp.sum(jnp.arange(1.0, n + 1) * p**2) + 2.0 * jnp.sum(d**2)

    return loss, np.linspace(-1.0, 1.0, n).astype(np.float32)


@pytest.mark.parametrize("block_size", [7, 60])
def test_the_streamed_spectrum_equals_eigvalsh(tmp_path, block_size):
    loss, x = _banded()
    result = pipeline.hessian_to_zarr(
        loss, x, str(tmp_path / "h.zarr"), block_size=block_size, progress=False
    )
    eig = np.linalg.eigvalsh(result.assemble().astype(np.float64))
    s = result.spectrum(k=3, progress=False)
    np.testing.assert_allclose(s["largest"], eig[::-1][:3], rtol=1e-5)
    np.testing.assert_allclose(s["smallest"], eig[:3], rtol=1e-5)
    assert s["condition"] == pytest.approx(eig[-1] / eig[0], rel=1e-5)
    assert s["positive_definite"] and s["matvecs"] > 3


def test_the_spectrum_refuses_a_jacobian_and_an_incomplete_store(tmp_path):
    j = pipeline.jacobian_to_zarr(
        mixed_out, mixed_x(), str(tmp_path / "j.zarr"), block_size=4, progress=False
    )
    with pytest.raises(ValueError, match="needs a Hessian or a Gauss-Newton matrix.*jacobian"):
        j.spectrum(progress=False)
    loss, x = _banded()
    h = pipeline.hessian_to_zarr(loss, x, str(tmp_path / "h.zarr"), block_size=7, progress=False)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 59\]"):
        h.spectrum(k=60)
    ResultStore.open(str(tmp_path / "h.zarr"), "r+").clear_record(3)
    with pytest.raises(ValueError, match=r"is incomplete \(8/9 blocks\)"):
        pipeline.open_result(str(tmp_path / "h.zarr")).spectrum(progress=False)
