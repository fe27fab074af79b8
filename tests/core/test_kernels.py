"""The executor-facing kernels: one compile serves every block of the plan."""

import numpy as np
import pytest

import diffops_core as dc
import diffops_core.internal as dci
from helpers import (
    CompileCounter,
    TraceCounter,
    mixed_loss,
    mixed_out,
    mixed_x,
    reference_hessian,
    tol,
)


@pytest.mark.parametrize("block_size,inner_width", [(5, 2), (16, 16), (3, 3), (7, 4)])
def test_block_kernel_covers_the_plan_with_one_trace(block_size, inner_width):
    f = TraceCounter(mixed_loss)
    kernels, x_flat, _ = dci.get_kernels(f, mixed_x(), "hessian")
    block = kernels.block(block_size, inner_width)
    plan = dci.BlockPlan(kernels.spec.extent, block_size)
    before = f.count
    H = np.zeros((16, 16), np.float32)
    for b in plan:
        slab = np.asarray(block(x_flat, b.window))
        assert slab.shape == kernels.spec.slab_shape(block_size)
        H[:, b.start : b.stop] = slab[:, b.keep]
    # f traced once for the jitted kernel (grad + linearise), not once per block
    assert f.count - before <= 2
    np.testing.assert_allclose(H, reference_hessian(mixed_loss, mixed_x()), **tol(np.float32))


def test_two_stage_kernel_equals_one_stage():
    kernels, x_flat, _ = dci.get_kernels(mixed_out, mixed_x(), "jacrev")
    lin = kernels.compiled_prepare()(x_flat)
    compiled = kernels.compiled_block(3, 2)
    one_stage = kernels.block(3, 2)
    for b in dci.BlockPlan(kernels.spec.extent, 3):
        np.testing.assert_allclose(
            np.asarray(compiled(lin, np.int32(b.window), np.int32(0))),
            np.asarray(one_stage(x_flat, b.window)),
            rtol=1e-6,
            atol=1e-6,
        )
    assert kernels.spec.axis == 0 and kernels.spec.slab_shape(3) == (3, 16)


def test_kernel_bytes_reads_xla_memory_analysis():
    kernels, _, _ = dci.get_kernels(mixed_loss, mixed_x(), "hessian")
    small, large = dci.kernel_bytes(kernels, 2, 2), dci.kernel_bytes(kernels, 16, 16)
    assert small.output == 16 * 2 * 4 and large.output == 16 * 16 * 4  # the slab, float32
    assert large.total > small.total > 0


def test_kernels_cache_is_keyed_on_the_traced_program():
    f = TraceCounter(mixed_loss)
    dc.hessian(f, mixed_x())
    with CompileCounter() as compiles:
        dc.hessian(f, mixed_x())
    assert compiles.count == 0  # same program: nothing compiled
    bigger = dict(mixed_x(), vec=np.ones(7, np.float32))
    with CompileCounter() as compiles:
        H, _ = dc.hessian(f, bigger)
    assert compiles.count > 0 and H.shape == (18, 18)  # new shapes: compiled apart


@pytest.mark.parametrize("extent_block_micro", [(16, 7, 2), (16, 10, 3), (16, 12, 4), (16, 5, 5)])
def test_a_ragged_last_block_skips_the_columns_it_does_not_own(extent_block_micro):
    # issue 9: the last block's window starts early; computing it whole cost up to a
    # whole block of columns (PSF, block 1024: 5 blocks computed 5120 columns for 4120)
    _, block_size, inner_width = extent_block_micro
    kernels, x_flat, _ = dci.get_kernels(mixed_loss, mixed_x(), "hessian")
    lin = kernels.compiled_prepare()(x_flat)
    compiled = kernels.compiled_block(block_size, inner_width)
    H = np.full((16, 16), np.nan, np.float32)
    plan = dci.BlockPlan(kernels.spec.extent, block_size)
    for b in plan:
        first = b.first_batch(inner_width)
        slab = np.asarray(compiled(lin, np.int32(b.window), np.int32(first)))
        H[:, b.start : b.stop] = slab[:, b.keep]
        skipped = slab[:, : first * inner_width]
        assert not skipped.any()  # never computed: those columns are another block's
    last = plan.block(plan.n_blocks - 1)
    assert last.first_batch(inner_width) == (last.start - last.window) // inner_width
    np.testing.assert_allclose(H, reference_hessian(mixed_loss, mixed_x()), **tol(np.float32))


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_x_flattened_on_the_host_equals_ravel_pytree(x64):
    # concrete arrays of the flat dtype are flattened on the host (nothing
    # compiled); any other x goes through ravel_pytree: the same vector, dtype
    # and unravel either way
    import jax
    import jax.flatten_util
    import jax.numpy as jnp

    with jax.enable_x64(x64):
        ft = jnp.float64 if x64 else jnp.float32
        cases = [
            {"a": np.arange(6.0, dtype=ft).reshape(2, 3), "b": np.float32(2.5).astype(ft)},
            [jnp.linspace(0.0, 1.0, 5, dtype=ft), np.zeros((0, 2), ft), jnp.ones((2, 2), ft)],
            {"a": np.arange(3.0, dtype=np.float32), "b": 1.5},  # a Python float: ravel_pytree
            (np.arange(3.0, dtype=np.float16), np.arange(2.0, dtype=np.float32)),  # promoted
        ]
        for x in cases:
            want, want_unravel = jax.flatten_util.ravel_pytree(x)
            kernels, x_flat, unravel = dci.get_kernels(lambda t: sum(
                jnp.sum(v**2) for v in jax.tree_util.tree_leaves(t)), x, "hessian")  # fmt: skip
            assert x_flat.dtype == want.dtype and x_flat.shape == want.shape
            np.testing.assert_array_equal(np.asarray(x_flat), np.asarray(want))
            back, again = unravel(x_flat), want_unravel(want)
            assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(again)
            for got, ref in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(again),
                                strict=True):  # fmt: skip
                assert got.dtype == ref.dtype and got.shape == ref.shape
                np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
