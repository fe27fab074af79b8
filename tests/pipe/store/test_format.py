"""A store written by the previous release (format 2, before the pipeline was
split into rooms) opens, verifies, resumes and factorises with this one.

``tests/data/hessian_format2`` was written by main at 1a0af06 (the flat
``pipeline/``) with the model below: ``hessian_to_zarr(f, x, store,
block_size=4)``, n = 10 in 3 blocks; ``hessian_format2.expected.npy`` is the
matrix it assembled. Whether a resume is the same computation is decided by
the fingerprint, which names the library versions and what JAX traced (both
may differ where these tests run); the resume test therefore stamps the
copied store with this process's fingerprint of the same model first, and
tests what the layout must give: the records, chunks and metadata of the old
store read, resume and verify as they are.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pipeline
import pipeline.internal

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "data")
FIXTURE = os.path.join(DATA, "hessian_format2")


def _model():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((10, 10)).astype(np.float32)
    P = (A @ A.T + 10 * np.eye(10)).astype(np.float32)

    def f(p):
        v = jnp.concatenate([p["a"], p["b"].ravel()])
        return 0.5 * v @ jnp.asarray(P) @ v + jnp.sum(jnp.sin(v))

    x = {
        "a": jnp.linspace(0.1, 0.4, 4, dtype=jnp.float32),
        "b": jnp.linspace(-0.3, 0.2, 6, dtype=jnp.float32).reshape(2, 3),
    }
    return f, x


@pytest.fixture
def old_store(tmp_path):
    target = str(tmp_path / "old.zarr")
    shutil.copytree(FIXTURE, target)
    return target


def _stamp_with_this_fingerprint(location, f, x):
    plan = pipeline.internal.plan(
        "hessian", f, x, location, limits=pipeline.internal.Limits(0, 0, 1, "test"), block_size=4
    )
    path = os.path.join(location, "zarr.json")
    with open(path) as fh:
        group = json.load(fh)
    meta = group["attributes"]["diffops"]
    meta["fingerprint"], meta["fingerprint_parts"] = plan.fingerprint, plan.fingerprint_parts
    with open(path, "w") as fh:
        json.dump(group, fh)


def test_an_old_store_opens_and_verifies(old_store):
    expected = np.load(os.path.join(DATA, "hessian_format2.expected.npy"))
    result = pipeline.open_result(old_store)
    assert result.status()["complete"] and result.status()["blocks_total"] == 3
    assert result.verify() == []
    np.testing.assert_array_equal(result.assemble(), expected)
    tree = result.to_pytree()
    np.testing.assert_array_equal(np.asarray(tree["a"]["b"]), expected[:4, 4:].reshape(4, 2, 3))
    assert result.summary().complete


def test_an_old_store_is_the_hessian_of_its_model(old_store):
    f, x = _model()
    with jax.default_device(jax.devices("cpu")[0]):
        dense = jax.hessian(lambda v: f(jax.flatten_util.ravel_pytree(x)[1](v)))(
            jax.flatten_util.ravel_pytree(x)[0]
        )
    np.testing.assert_allclose(
        pipeline.open_result(old_store).assemble(), np.asarray(dense), rtol=1e-5, atol=1e-5
    )


def test_an_old_store_resumes_only_its_missing_block(old_store):
    f, x = _model()
    _stamp_with_this_fingerprint(old_store, f, x)
    expected = pipeline.open_result(old_store).assemble()
    store = pipeline.internal.ResultStore.open(old_store, mode="r+")
    store.clear_record(1)  # the block a killed run would have left
    result = pipeline.hessian_to_zarr(f, x, old_store, block_size=4, progress=False)
    assert result.run_summary.blocks_computed == 1
    assert result.run_summary.reason.startswith("the same computation: resumed")
    assert result.verify() == [] and result.status()["complete"]
    np.testing.assert_allclose(result.assemble(), expected, rtol=1e-6, atol=1e-6)
    again = pipeline.hessian_to_zarr(f, x, old_store, block_size=4, progress=False)
    assert again.run_summary.blocks_computed == 0


def test_an_old_store_factorises(old_store):
    expected = np.load(os.path.join(DATA, "hessian_format2.expected.npy")).astype(np.float64)
    std = pipeline.open_result(old_store).marginal_std(progress=False)
    sigma = np.sqrt(np.diag(np.linalg.inv((expected + expected.T) / 2)))
    np.testing.assert_allclose(std["a"], sigma[:4], rtol=1e-4)
    np.testing.assert_allclose(std["b"].ravel(), sigma[4:], rtol=1e-4)
