"""The flat <-> pytree layout of a parameter pytree.

A `Layout` records, for every leaf of ``x`` in JAX's flattening order, its key
path, shape, dtype and offset in the flat vector, plus (where the containers are
plain dict/list/tuple/None) a JSON description of the container structure, so
that a pytree can be rebuilt from a store without the original ``x``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputTypeError, InputValueError

__all__ = ["Layout", "LeafSpec"]


@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """One leaf: its key path (``"['a'][0]"``), shape, dtype name and flat offset."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


def _leaf_dtype(leaf):
    # Python scalars follow JAX's rules (float -> default float dtype).
    if isinstance(leaf, (bool, int, float, complex)):
        return jnp.asarray(leaf).dtype
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
        return np.asarray(leaf).dtype
    return np.dtype(dtype)


def _check_leaf(path: str, leaf, name: str):
    try:
        dtype = _leaf_dtype(leaf)
    except Exception:  # noqa: BLE001 - anything unconvertible is a type error for the user
        dtype = None
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        return dtype  # bfloat16 and the other ml_dtypes floats included (their kind is "V")
    if dtype is None or dtype.kind in "OSUV":
        raise InputTypeError(
            f"{name}{path} is a {type(leaf).__name__}, not an array: every leaf of {name} "
            "must be a float array or a Python float"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        kind = "bool" if dtype == np.bool_ else dtype.name
        raise InputTypeError(
            f"{name}{path} has dtype {kind}; derivatives are taken with respect to "
            f"floating-point leaves only. Cast it to float (e.g. jnp.asarray(v, float)) "
            f"or close over it in f instead of passing it in {name}."
        )
    return dtype


def _describe(node, counter: list[int]):
    """JSON description of plain containers, or None if any node is not plain."""
    if node is None:
        return {"none": None}
    if type(node) is dict:
        if not all(isinstance(k, str) for k in node):
            return None
        items = []
        for key in sorted(node):
            child = _describe(node[key], counter)
            if child is None:
                return None
            items.append([key, child])
        return {"dict": items}
    if type(node) in (list, tuple):
        children = []
        for item in node:
            child = _describe(item, counter)
            if child is None:
                return None
            children.append(child)
        return {type(node).__name__: children}
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(node)):
        counter[0] += 1
        return {"leaf": counter[0] - 1}
    return None


def _rebuild(desc, values):
    ((kind, body),) = desc.items()
    if kind == "leaf":
        return values[body]
    if kind == "none":
        return None
    if kind == "dict":
        return {key: _rebuild(child, values) for key, child in body}
    children = [_rebuild(child, values) for child in body]
    return tuple(children) if kind == "tuple" else children


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each leaf of a pytree sits in the flat vector.

    **Attributes:**

    - `leaves`: one `LeafSpec` per leaf, in JAX flattening order.
    - `dtype`: dtype name of the flat vector (the promotion of all leaf dtypes).
    - `structure`: JSON description of the containers, or ``None`` when the tree
      holds other node types (then `unflatten_list` without a treedef keys by path).
    - `treedef`: the live treedef when built from a pytree (not serialised).
    """

    leaves: tuple[LeafSpec, ...]
    dtype: str
    structure: dict | None
    treedef: object = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def n(self) -> int:
        return sum(leaf.size for leaf in self.leaves)

    @classmethod
    def from_pytree(cls, tree, name: str = "x", check_float: bool = True) -> Layout:
        """Layout of ``tree``.

        **Raises:** `TypeError` naming the leaf when ``check_float`` and a leaf is
        not floating point; `ValueError` when the tree has no leaves.
        """
        with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
        if not with_path:
            raise InputValueError(
                f"{name} has no array leaves (got {tree!r}); pass a float array or a pytree of them"
            )
        specs, dtypes, offset = [], [], 0
        for path, leaf in with_path:
            key = jax.tree_util.keystr(path)
            dtype = _check_leaf(key, leaf, name) if check_float else _leaf_dtype(leaf)
            shape = tuple(int(s) for s in np.shape(leaf))
            specs.append(LeafSpec(key, shape, np.dtype(dtype).name, offset))
            dtypes.append(dtype)
            offset += math.prod(shape)
        counter = [0]
        structure = _describe(tree, counter)
        if counter[0] != len(specs):
            structure = None
        flat_dtype = jnp.result_type(*dtypes)
        return cls(tuple(specs), np.dtype(flat_dtype).name, structure, treedef)

    def unflatten_list(self, values: list):
        """Build a pytree like the original from one value per leaf."""
        if len(values) != len(self.leaves):
            raise InputValueError(f"expected {len(self.leaves)} leaf values, got {len(values)}")
        if self.treedef is not None:
            return jax.tree_util.tree_unflatten(self.treedef, values)
        if self.structure is not None:
            return _rebuild(self.structure, values)
        return {leaf.path: value for leaf, value in zip(self.leaves, values, strict=True)}

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "dtype": self.dtype,
            "leaves": [
                {"path": s.path, "shape": list(s.shape), "dtype": s.dtype, "offset": s.offset}
                for s in self.leaves
            ],
            "structure": self.structure,
        }

    @classmethod
    def from_json(cls, data: dict) -> Layout:
        leaves = tuple(
            LeafSpec(d["path"], tuple(d["shape"]), d["dtype"], int(d["offset"]))
            for d in data["leaves"]
        )
        return cls(leaves, data["dtype"], data.get("structure"))
