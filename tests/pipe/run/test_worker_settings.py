"""A worker whose module-level arrays were built under other JAX settings is
refused with what differs and how to start it (issue 16, item 15)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core.internal as dci
import pipeline

DRIVER_DATA = np.arange(1.0, 4.0)  # float64: what the driver's module built with x64 on
WORKER_DATA = np.arange(1.0, 4.0, dtype=np.float32)  # a worker that imported it with x64 off


def driver_loss(x):
    return jnp.sum(jnp.asarray(DRIVER_DATA) * x**2)


def worker_loss(x):
    return jnp.sum(jnp.asarray(WORKER_DATA) * x**2)


def test_a_worker_with_x64_off_names_the_constants_and_the_variable(tmp_path):
    x = np.ones(3)
    store = str(tmp_path / "h.zarr")
    with jax.enable_x64(True):
        good = pipeline.hessian_to_zarr(driver_loss, x, store, block_size=1, progress=False)
        traced = dci.get_kernels(driver_loss, x, "hessian")[0].traced
    identity = traced.identity()
    from pipeline.internal import BlockTask as Task
    from pipeline.internal import constant_avals as _const_avals

    task = Task(
        token="t-x64", f=worker_loss, x=x, op="hessian", checkpoint=False,
        program=identity.program, data=identity.data, block_size=1, inner_width=None,
        location=store, run=9, x64=True, extent=3, axis=good.meta["axis"],
        consts=_const_avals(traced),
    )  # fmt: skip
    with pytest.raises(pipeline.BlockError) as err:
        task(0)
    text = str(err.value)
    assert "constant 0 is float32[3] here, float64[3] on the driver" in text
    assert "jax_enable_x64=False" in text and "JAX_ENABLE_X64=1" in text
    assert "install what it imports" not in text


def test_the_workflow_cluster_binds_to_loopback(monkeypatch):
    seen = {}
    from pipeline.internal import workflow_module as workflow

    class Stop(Exception):
        pass

    def fake_cluster(n, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(workflow, "local_cluster", fake_cluster)
    spec = pipeline.Spec.model_construct(
        cluster=pipeline.Spec.model_fields["cluster"].default.model_copy(update={"workers": 2}),
        env={}, dtype="float32", python_path=(), path="x.yaml",
    )  # fmt: skip
    with pytest.raises(Stop), workflow._client_for(spec, None, None):
        pass
    assert seen["host"] == "127.0.0.1" and seen["dashboard_address"] == "127.0.0.1:0"
