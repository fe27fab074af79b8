import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from diffops_core.internal import Layout
from helpers import mixed_x


def test_layout_matches_ravel_pytree():
    x = mixed_x()
    layout = Layout.from_pytree(x)
    flat, _ = ravel_pytree(x)
    assert layout.n == flat.size == 1 + 5 + 6 + 1 + 3
    assert [s.path for s in layout.leaves] == [
        "['nested'][0]",
        "['nested'][1][0]",
        "['nested'][1][1]",
        "['scalar']",
        "['vec']",
    ]
    for spec, leaf in zip(
        layout.leaves, [x["nested"][0], x["nested"][1][0], x["nested"][1][1], x["scalar"], x["vec"]]
    ):
        np.testing.assert_array_equal(
            np.asarray(flat[spec.slice]).reshape(spec.shape), np.asarray(leaf, np.float32)
        )


def test_layout_json_roundtrip_rebuilds_plain_containers():
    x = mixed_x()
    layout = Layout.from_pytree(x)
    again = Layout.from_json(layout.to_json())
    assert again == layout
    rebuilt = again.unflatten_list(list(range(len(layout.leaves))))
    assert rebuilt == {"nested": [0, (1, 2)], "scalar": 3, "vec": 4}


def test_layout_of_custom_node_keys_by_path():
    class Box:
        def __init__(self, v):
            self.v = v

    import jax

    jax.tree_util.register_pytree_with_keys(
        Box, lambda b: (((jax.tree_util.GetAttrKey("v"), b.v),), None), lambda _, c: Box(*c)
    )
    layout = Layout.from_json(Layout.from_pytree({"b": Box(jnp.ones(2)), "c": 1.0}).to_json())
    assert layout.structure is None
    assert layout.unflatten_list(["B", "C"]) == {"['b'].v": "B", "['c']": "C"}


@pytest.mark.parametrize(
    "leaf,kind",
    [
        (jnp.arange(3), "int32"),
        (np.array([True]), "bool"),
        (3, "int32"),
        (jnp.ones(2, jnp.complex64), "complex64"),
    ],
)
def test_non_float_leaves_are_refused(leaf, kind):
    with pytest.raises(TypeError, match=rf"x\['bad'\] has dtype {kind}.*Cast it to float"):
        Layout.from_pytree({"ok": jnp.ones(2), "bad": leaf})


def test_empty_tree_is_refused():
    with pytest.raises(ValueError, match="x has no array leaves"):
        Layout.from_pytree({"a": None})


def test_non_array_leaf_is_refused():
    with pytest.raises(TypeError, match=r"x\['s'\] is a str"):
        Layout.from_pytree({"s": "hello"})
