"""Host callbacks (`jax.pure_callback`, `io_callback`): the jaxpr prints only a
callback's name, so its identity is the callable itself (issue 16, item 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import io_callback

import diffops_core as dc
import diffops_core.internal as dci
import pipeline


class Model:
    """Residuals that read their data through a host callback."""

    def __init__(self, data):
        self.data = np.asarray(data, np.float32)

    def load(self):
        return self.data

    def r(self, x):
        d = jax.pure_callback(self.load, jax.ShapeDtypeStruct((3,), jnp.float32))
        return d * x

    def loss(self, x):
        return 0.5 * jnp.sum(self.r(x) ** 2)


def test_two_callback_objects_give_their_own_gauss_newton():
    x = jnp.ones(3)
    g1, _ = dc.gauss_newton(Model([1, 1, 1]).r, x)
    g2, _ = dc.gauss_newton(Model([2, 3, 4]).r, x)
    np.testing.assert_allclose(np.diag(g1), [1, 1, 1])
    np.testing.assert_allclose(np.diag(g2), [4, 9, 16])  # the stale answer was 1, 1, 1


def test_closures_from_a_factory_give_their_own_hessian():
    def make(scale):
        data = np.full(3, scale, np.float32)

        def loss(x):
            d = jax.pure_callback(lambda: data, jax.ShapeDtypeStruct((3,), jnp.float32))
            return jnp.sum(d * x**2)

        return loss

    x = jnp.ones(3)
    for scale in (1.0, 5.0, 7.0):
        H, _ = dc.hessian(make(scale), x)
        np.testing.assert_allclose(np.diag(H), 2 * scale)


def test_the_same_callable_reads_its_current_data_and_compiles_once():
    from helpers import CompileCounter

    model, x = Model([1, 2, 3]), jnp.ones(3)
    dc.hessian(model.loss, x)
    model.data = np.asarray([4, 5, 6], np.float32)
    with CompileCounter() as compiles:
        H, _ = dc.hessian(model.loss, x)
    np.testing.assert_allclose(np.diag(H), [16, 25, 36])
    assert compiles.count == 0


def test_io_callback_is_keyed_too():
    def make(v):
        def f(x):
            d = io_callback(
                lambda: np.full(2, v, np.float32), jax.ShapeDtypeStruct((2,), jnp.float32)
            )
            return jnp.sum(d * x**2)

        return f

    x = jnp.ones(2)
    assert float(dc.hessian(make(1.0), x)[0][0, 0]) == 2.0
    assert float(dc.hessian(make(3.0), x)[0][0, 0]) == 6.0


def test_a_debug_print_is_not_a_callback_of_the_result():
    def f(x):
        jax.debug.print("x {}", x)
        return jnp.sum(x**2)

    traced = dci.get_kernels(f, jnp.ones(2), "hessian")[0].traced
    assert traced.callbacks == ()
    traced.identity()  # no refusal


@pytest.mark.parametrize("operation", ["hessian", "gauss_newton"])
def test_a_store_refuses_callbacks_and_creates_nothing(tmp_path, operation):
    model, x = Model([1, 2, 3]), jnp.ones(3)
    store = tmp_path / "cb.zarr"
    call = (
        (lambda: pipeline.hessian_to_zarr(model.loss, x, store, progress=False))
        if operation == "hessian"
        else (lambda: pipeline.gauss_newton_to_zarr(model.r, x, store, progress=False))
    )
    with pytest.raises(TypeError, match="host code through pure_callback of .*Model.load"):
        call()
    assert not store.exists()
