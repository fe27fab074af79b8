import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc
import diffops_core.internal as dci
from helpers import (
    CompileCounter,
    TraceCounter,
    assert_tree_close,
    mixed_out,
    mixed_x,
    reference_jacobian,
    tol,
)

N = 16


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto"])
@pytest.mark.parametrize(
    "blocking",
    [
        {},
        {"nbatches": 2},
        {"nbatches": 3},
        {"block_size": 1},
        {"memory_budget": "1GB"},
        {"block_size": 4, "inner_width": 3},
    ],
    ids=str,
)
def test_pytree_output_matches_jax(mode, blocking):
    x = mixed_x()
    J, _ = dc.jacobian(mixed_out, x, mode=mode, **blocking)
    assert_tree_close(J, reference_jacobian(mixed_out, x), **tol(np.float32))


@pytest.mark.parametrize("mode", ["fwd", "rev"])
@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("checkpoint", [True, False])
def test_array_output_shape(mode, jit, checkpoint):
    x = mixed_x()
    f = lambda p: jnp.outer(p["vec"], p["nested"][1][1]) * p["scalar"]
    J, _ = dc.jacobian(f, x, 2, jit, checkpoint, mode=mode)
    assert J.shape == (5, 3, N)
    np.testing.assert_allclose(J, reference_jacobian(f, x), **tol(np.float32))


def test_scalar_output():
    x = mixed_x()
    from helpers import mixed_loss

    J, _ = dc.jacobian(mixed_loss, x, 4)
    assert J.shape == (N,)
    np.testing.assert_allclose(J, reference_jacobian(mixed_loss, x), **tol(np.float32))


def test_auto_picks_fewer_products():
    kernels, _, _ = dci.get_kernels(lambda v: v[:2] * 3, jnp.ones(50), "jacfwd")
    assert dci.jacobian_op("auto", kernels.spec.n, kernels.spec.m) == "jacrev"
    assert dci.jacobian_op("auto", 3, 50) == "jacfwd"


def test_wide_jacobian_rev_blocks():
    A = jax.random.normal(jax.random.PRNGKey(3), (12, 400))
    f = lambda v: jnp.tanh(A @ v)
    v = jnp.linspace(-1, 1, 400)
    J, _ = dc.jacobian(f, v, 4)  # auto -> rev, 4 blocks of 3 rows
    np.testing.assert_allclose(J, jax.jacrev(f)(v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("nbatches", [1, 4])
def test_matches_zodiax_array_output(nbatches):
    zodiax = pytest.importorskip("zodiax")
    x = {"a": jnp.linspace(0.1, 1.0, 7), "b": jnp.ones((3, 3)) * 0.3}
    f = lambda p: jnp.concatenate([jnp.sin(p["a"]) * jnp.sum(p["b"]), p["b"].ravel() ** 2])
    J, _ = dc.jacobian(f, x, nbatches)
    Jz, _ = zodiax.diffops.jacobian(f, x, nbatches)
    np.testing.assert_allclose(J, Jz, rtol=1e-5, atol=1e-6)


def test_float64_rev():
    with jax.enable_x64(True):
        x = mixed_x(jnp.float64)
        J, _ = dc.jacobian(mixed_out, x, 3, mode="rev")
        assert_tree_close(J, reference_jacobian(mixed_out, x), **tol(np.float64))


def test_repeated_calls_trace_once_and_compile_nothing():
    f = TraceCounter(mixed_out)
    x = mixed_x()
    dc.jacobian(f, x, 2, mode="rev")
    traced = f.count
    x2 = jax.tree_util.tree_map(lambda v: v * 2.0, x)
    with CompileCounter() as compiles:
        J2, _ = dc.jacobian(f, x2, 2, mode="rev")
    assert f.count == traced + 1 and compiles.count == 0
    assert_tree_close(J2, reference_jacobian(mixed_out, x2), **tol(np.float32))


def test_nbatches_bounds_products_in_flight_in_rev_mode_too():
    # issue 8 (12): nbatches=16 on a wide Jacobian meant 16 row blocks of 4 rows;
    # it means at most ceil(n / 16) products in flight, so all 4 rows go at once.
    f = lambda v: jnp.tanh(v[:4] * jnp.sum(v))
    x = jnp.linspace(0.1, 1.0, 200)
    kernels = dci.get_kernels(f, x, "jacrev")[0]
    assert dci.choose_sizing(kernels, nbatches=16).block_size == 4
    assert dci.choose_sizing(kernels, nbatches=100).block_size == 2  # ceil(200 / 100)
    J, _ = dc.jacobian(f, x, 16, mode="rev")
    np.testing.assert_allclose(J, reference_jacobian(f, x), rtol=1e-5, atol=1e-6)
