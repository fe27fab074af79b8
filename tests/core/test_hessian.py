import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc
import diffops_core.internal as dci
from helpers import CompileCounter, TraceCounter, flat, mixed_loss, mixed_x, reference_hessian, tol

N = 16  # mixed_x flattens to 16 parameters

BLOCKINGS = [
    {},
    {"nbatches": 2},
    {"nbatches": 3},
    {"nbatches": N},
    {"block_size": 1},
    {"block_size": 5},
    {"block_size": 100},
    {"memory_budget": "1GB"},
    {"nbatches": 3, "inner_width": 2},
    {"inner_width": 7},
]


@pytest.mark.parametrize("blocking", BLOCKINGS, ids=str)
@pytest.mark.parametrize("jit", [True, False])
def test_matches_jax_hessian(blocking, jit):
    x = mixed_x()
    H, unflatten = dc.hessian(mixed_loss, x, jit=jit, **blocking)
    assert H.shape == (N, N)
    np.testing.assert_allclose(H, reference_hessian(mixed_loss, x), **tol(np.float32))
    flat_x, _ = jax.flatten_util.ravel_pytree(x)
    rebuilt = unflatten(flat_x)
    assert jax.tree_util.tree_structure(rebuilt) == jax.tree_util.tree_structure(x)


@pytest.mark.parametrize("checkpoint", [True, False])
@pytest.mark.parametrize("nbatches", [1, 4])
def test_checkpoint(checkpoint, nbatches):
    x = mixed_x()
    H, _ = dc.hessian(mixed_loss, x, nbatches, True, checkpoint)
    np.testing.assert_allclose(H, reference_hessian(mixed_loss, x), **tol(np.float32))


@pytest.mark.parametrize(
    "blocking", [{}, {"nbatches": 5}, {"block_size": 3, "inner_width": 2}], ids=str
)
def test_float64(blocking):
    with jax.enable_x64(True):
        x = mixed_x(jnp.float64)
        H, _ = dc.hessian(mixed_loss, x, **blocking)
        assert H.dtype == jnp.float64
        np.testing.assert_allclose(H, reference_hessian(mixed_loss, x), **tol(np.float64))


@pytest.mark.parametrize("nbatches", [1, 2, 4, 16])
def test_matches_zodiax(nbatches):
    zodiax = pytest.importorskip("zodiax")
    # zodiax is correct on array leaves; Python-float leaves are exercised elsewhere
    x = {"a": jnp.linspace(0.1, 1.0, 7), "b": jnp.ones((3, 3)) * 0.3}
    f = lambda p: jnp.sum(jnp.sin(p["a"]) ** 2) * jnp.sum(p["b"] ** 3) + jnp.prod(p["a"][:4])
    H, unflatten = dc.hessian(f, x, nbatches)
    Hz, unflatten_z = zodiax.diffops.hessian(f, x, nbatches)
    np.testing.assert_allclose(H, Hz, rtol=1e-5, atol=1e-6)
    z = jnp.arange(16.0)
    jax.tree_util.tree_map(np.testing.assert_array_equal, unflatten(z), unflatten_z(z))


def test_pytree_and_array_x_agree():
    a = jnp.linspace(-1, 1, 9)
    f = lambda v: jnp.sum(jnp.exp(v) * v[::-1])
    H, unflatten = dc.hessian(f, a, 3)
    np.testing.assert_allclose(H, jax.hessian(f)(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(unflatten(a), a)


@pytest.mark.parametrize("blocking", [{}, {"nbatches": 4}], ids=str)
def test_inside_jit(blocking):
    x = mixed_x()
    H = jax.jit(lambda p: dc.hessian(mixed_loss, p, **blocking)[0])(x)
    np.testing.assert_allclose(H, reference_hessian(mixed_loss, x), **tol(np.float32))


def test_grad_through_hessian():
    x = {"a": jnp.linspace(0.1, 1.0, 5), "b": jnp.asarray(0.4)}
    f = lambda p: jnp.sum(jnp.sin(p["a"]) ** 3) * p["b"] + p["b"] ** 4
    g, x_flat = flat(f, x)

    def ours(p):
        return jnp.sum(dc.hessian(f, p, 2)[0] ** 2)

    def reference(z):
        return jnp.sum(jax.hessian(g)(z) ** 2)

    ours_grad = jax.flatten_util.ravel_pytree(jax.grad(ours)(x))[0]
    np.testing.assert_allclose(ours_grad, jax.grad(reference)(x_flat), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("blocking", [{}, {"nbatches": 4}, {"memory_budget": "64MB"}], ids=str)
def test_repeated_calls_trace_once_and_compile_nothing(blocking):
    f = TraceCounter(mixed_loss)
    x = mixed_x()
    dc.hessian(f, x, **blocking)
    traced = f.count
    assert traced >= 1
    x2 = jax.tree_util.tree_map(lambda v: v * 1.1, x)
    with CompileCounter() as compiles:
        H2, _ = dc.hessian(f, x2, **blocking)
    # f is traced once per call (its identity is what JAX traces), never recompiled
    assert f.count == traced + 1
    assert compiles.count == 0, "a second call with the same program compiled again"
    np.testing.assert_allclose(H2, reference_hessian(mixed_loss, x2), **tol(np.float32))


def test_memory_budget_picks_a_fitting_block():
    x = {"w": jnp.linspace(0.0, 1.0, 300)}
    f = lambda p: jnp.sum(jnp.outer(jnp.sin(p["w"]), jnp.cos(p["w"])) ** 2)
    kernels, _, _ = dci.get_kernels(f, x, "hessian")
    one = dci.kernel_bytes(kernels, 1, 1).total
    budget = one + 40 * 300 * 4  # room for about 40 more float32 columns of 300
    sizing = dci.budget_block(kernels, budget)
    assert 10 <= sizing.block_size < 300
    assert sizing.footprint.total <= budget
    # a bigger budget allows a bigger block
    assert dci.budget_block(kernels, one + 80 * 300 * 4).block_size > sizing.block_size
    H, _ = dc.hessian(f, x, memory_budget=budget)
    np.testing.assert_allclose(H, reference_hessian(f, x), rtol=1e-4, atol=1e-4)


def test_memory_budget_too_small_says_what_one_column_needs():
    x = {"w": jnp.ones(1000)}
    f = lambda p: jnp.sum(jnp.outer(p["w"], p["w"]) ** 2)
    with pytest.raises(
        ValueError,
        match=r"one column needs [0-9.]+ [kMG]?B .*memory_budget='10kB' "
        r"cannot hold a block",
    ):
        dc.hessian(f, x, memory_budget="10kB")
