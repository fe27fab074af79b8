"""What a spec loads and where it writes, checked: the model's modules imported
from the spec's directories, the point (a callable or an ``.npz``), the noise
files, and targets that can be written. Every error names the file and the field."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from .._errors import SpecError

if TYPE_CHECKING:  # pragma: no cover - the models call in here
    from ._spec import Spec

__all__ = [
    "check_float_leaves",
    "check_scheme",
    "check_writable",
    "import_attr",
    "load_npz",
    "nest",
]


def check_scheme(spec: Spec) -> None:
    """An ``output`` URL whose filesystem package is installed (fsspec names it)."""
    scheme = spec.output.split("://", 1)[0]
    if scheme in ("file", "memory"):
        return
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except ImportError as err:
        raise SpecError(
            f"{spec.path}: output: {scheme}:// stores need a package that is not installed "
            f"({str(err).splitlines()[0]})"
        ) from None
    except ValueError:
        raise SpecError(f"{spec.path}: output: no filesystem knows {scheme}://") from None


def check_writable(spec: Spec, field: str, target: str) -> None:
    if os.path.exists(target):
        parent = target if os.path.isdir(target) else os.path.dirname(target) or "."
    else:
        parent = os.path.dirname(os.path.abspath(target))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise SpecError(
            f"{spec.path}: {field}: cannot write {target!r}: {parent!r} is a file, "
            "not a directory; choose another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpecError(
            f"{spec.path}: {field}: cannot write {target!r}: the directory "
            f"{parent!r} is not writable by this user; choose another path"
        )


def check_float_leaves(spec: Spec, x: Any) -> None:
    """Every leaf of the point is floating point, whatever ``dtype`` the spec asks:
    a silently cast integer is a different point than the one written."""
    import jax.numpy as jnp
    import numpy as np

    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
        dtype = np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else np.dtype(leaf.dtype)
        if isinstance(leaf, float) or jnp.issubdtype(dtype, jnp.floating):  # bfloat16 too
            continue
        raise SpecError(
            f"{spec.path}: point: leaf {jax.tree_util.keystr(path) or '(root)'} has dtype "
            f"{dtype.name}, not a float; write it as floats (1.0, not 1) or cast it where "
            f"{spec.point} makes it"
        )


def nest(flat: dict) -> dict:
    """``{"shape/rho": a}`` -> ``{"shape": {"rho": a}}``: an .npz's keys with ``/``
    are paths into a nested point."""
    tree: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {key!r} runs through a leaf")
        if leaf in node:
            raise ValueError(f"key {key!r} is both a leaf and a group")
        node[leaf] = value
    return tree


def load_npz(spec: Spec) -> dict:

    if not os.path.exists(spec.point):
        raise SpecError(f"{spec.path}: point: no such file {spec.point!r}")
    try:
        with np.load(spec.point) as data:
            return nest({key: data[key] for key in data.files})
    except Exception as err:  # noqa: BLE001 - any unreadable file is a spec error
        raise SpecError(f"{spec.path}: point: cannot read {spec.point!r}: {err}") from None


def import_attr(spec: Spec, field: str, target: str, call: bool):
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - report any import failure as the spec's
        raise SpecError(
            f"{spec.path}: {field}: cannot import module {module_name!r} ({type(err).__name__}: "
            f"{err}); it must be importable from {spec.base} or python_path"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(
                f"{spec.path}: {field}: module {module_name!r} has no attribute {attr!r}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{spec.path}: {field}: {target!r} is not callable")
    if not call:
        return obj
    try:
        return obj()
    except Exception as err:  # noqa: BLE001 - a failing point function is a spec error
        raise SpecError(
            f"{spec.path}: {field}: {target}() raised {type(err).__name__}: {err}"
        ) from None
