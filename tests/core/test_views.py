import dask.array as da
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc
from helpers import mixed_loss, mixed_x


def _expected_blocks(H, x):
    leaves = jax.tree_util.tree_leaves(x)
    shapes = [np.shape(leaf) for leaf in leaves]
    offsets = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    return [
        [
            np.asarray(H)[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]].reshape(
                shapes[i] + shapes[j]
            )
            for j in range(len(shapes))
        ]
        for i in range(len(shapes))
    ]


@pytest.mark.parametrize("kind", ["jax", "numpy", "dask"])
def test_views_every_array_type(kind):
    x = mixed_x()  # holds a Python float leaf
    H, _ = dc.hessian(mixed_loss, x)
    M = {"jax": H, "numpy": np.asarray(H), "dask": da.from_array(np.asarray(H), chunks=5)}[kind]
    tree = dc.hessian_to_pytree(M, x)
    treedef = jax.tree_util.tree_structure(x)
    rows = treedef.flatten_up_to(tree)
    expected = _expected_blocks(H, x)
    for i, row in enumerate(rows):
        for j, block in enumerate(treedef.flatten_up_to(row)):
            if kind == "dask":
                assert isinstance(block, da.Array)  # lazy: nothing computed yet
                block = block.compute()
            assert block.shape == expected[i][j].shape
            np.testing.assert_array_equal(np.asarray(block), expected[i][j])


def test_block_shapes_like_zodiax():
    zodiax = pytest.importorskip("zodiax")
    x = {"a": jnp.ones((2, 3)), "b": jnp.ones(4), "c": jnp.asarray(2.0)}
    H = jnp.arange(11.0 * 11).reshape(11, 11)
    ours, theirs = dc.hessian_to_pytree(H, x), zodiax.diffops.hessian_to_pytree(H, x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, ours, theirs)
    assert ours["a"]["b"].shape == (2, 3, 4)


def test_dask_view_is_lazy():
    x = {"a": jnp.ones(3), "b": jnp.ones(2)}
    computed = []

    def load(block):
        computed.append(block.shape)
        return block

    M = da.from_array(np.eye(5), chunks=2).map_blocks(load, meta=np.empty((0, 0)))
    tree = dc.hessian_to_pytree(M, x)
    assert computed == []
    np.testing.assert_array_equal(tree["b"]["b"].compute(), np.eye(2))
    assert computed  # and computing a block does load data


def test_wrong_shape_says_what_to_pass():
    x = {"a": jnp.ones(3), "b": 1.0}
    with pytest.raises(ValueError, match=r"H has shape \(5, 5\), but x flattens to 4 elements"):
        dc.hessian_to_pytree(np.zeros((5, 5)), x)
    with pytest.raises(ValueError, match=r"H has shape \(4,\)"):
        dc.hessian_to_pytree(np.zeros(4), x)
