"""What a result was computed from: a stable fingerprint across processes.

The fingerprint hashes (function identity, x's bytes and layout, options, library
versions). The function's identity is its qualified name plus a hash of its code
and of what it closes over (arrays by their bytes), so that an edited function or
new data refuses to resume an old store. Nothing here uses ``id()`` or pickles.
"""

from __future__ import annotations

import functools
import hashlib
import types

import numpy as np

__all__ = ["function_identity", "fingerprint_parts", "digest"]


def _feed(h, value, depth=0):
    if depth > 6:
        h.update(b"<deep>")
        return
    if isinstance(value, types.CodeType):
        h.update(value.co_code)
        h.update(repr(value.co_names).encode())
        for const in value.co_consts:
            _feed(h, const, depth + 1)
        return
    if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)):
        h.update(function_identity(value, depth + 1).encode())
        return
    if isinstance(value, types.ModuleType):
        h.update(f"<module {value.__name__}>".encode())
        return
    if isinstance(value, (str, bytes, int, float, complex, bool, type(None))):
        h.update(repr(value).encode())
        return
    if isinstance(value, (tuple, list)):
        h.update(b"(")
        for item in value:
            _feed(h, item, depth + 1)
        h.update(b")")
        return
    if isinstance(value, dict):
        for key in sorted(value, key=repr):
            _feed(h, key, depth + 1)
            _feed(h, value[key], depth + 1)
        return
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            arr = np.asarray(value)
            if arr.dtype.hasobject:
                raise TypeError("object array")
        except Exception:  # noqa: BLE001 - a tracer or anything we cannot read as bytes
            h.update(f"{type(value).__name__}{getattr(value, 'shape', '')}".encode())
            return
        h.update(f"{arr.shape}{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).view(np.uint8).reshape(-1).tobytes())
        return
    h.update(f"<{type(value).__module__}.{type(value).__qualname__}>".encode())


def function_identity(f, depth: int = 0) -> str:
    """``module:qualname#hash`` of a callable: its code, defaults and closure."""
    if isinstance(f, functools.partial):
        h = hashlib.sha256()
        _feed(h, f.args, depth)
        _feed(h, f.keywords, depth)
        return f"partial({function_identity(f.func, depth + 1)})#{h.hexdigest()[:16]}"
    target = getattr(f, "__func__", f)  # bound methods: the function
    module = getattr(target, "__module__", None) or type(target).__module__
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    h = hashlib.sha256()
    code = getattr(target, "__code__", None)
    if code is None:  # a callable object: hash its type's __call__
        call = type(target).__call__ if callable(target) else None
        code = getattr(call, "__code__", None)
    if code is not None:
        _feed(h, code, depth)
    _feed(h, getattr(target, "__defaults__", None), depth)
    for cell in getattr(target, "__closure__", None) or ():
        try:
            _feed(h, cell.cell_contents, depth)
        except ValueError:  # an empty cell
            h.update(b"<empty>")
    return f"{module}:{name}#{h.hexdigest()[:16]}"


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1)).hexdigest()


def fingerprint_parts(f, x_flat: np.ndarray, layout_json: dict, options: dict) -> dict:
    import jax
    import jaxlib

    from diffops_core import __version__

    return {
        "function": function_identity(f),
        "x": digest(x_flat),
        "x_layout": layout_json,
        "options": options,
        "versions": {"diffops": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__},
    }
