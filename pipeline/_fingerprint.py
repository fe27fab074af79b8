"""What a result was computed from: a fingerprint stable across processes.

The function's part is what JAX traces (`diffops_core.Identity`): a digest of
the traced program and a digest of the bytes of every constant it reads, so an
edited function, new data a module loaded, another object's attributes or a new
closure all count as another computation, and nothing rests on a Python
object's name or ``id()``. With it: ``x``'s bytes and layout, the options and
the library versions.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

__all__ = [
    "describe_difference",
    "digest",
    "noise_digest",
    "fingerprint_parts",
    "same_computation",
    "sha256_json",
]

#: What each fingerprint part means, for a refusal a user can act on.
_MEANING = {
    "function": "f computes something else (its traced program differs)",
    "data": "the data f reads changed (arrays it closes over, globals, object attributes "
    "or files a module loaded)",
    "x": "x has other values",
    "x_layout": "x has another structure",
    "options": "the options differ",
    "versions": "the library versions differ",
}


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data).hexdigest()


def sha256_json(value) -> str:
    """The fingerprint of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def same_computation(stored: str | None, parts: dict) -> bool:
    """Whether a stored fingerprint is the one of ``parts``, including the form
    written before the inner width had one name (``micro`` in the options)."""
    if stored == sha256_json(parts):
        return True
    options = dict(parts.get("options") or {})
    if "inner_width" not in options:
        return False
    options["micro"] = options.pop("inner_width")
    return stored == sha256_json({**parts, "options": options})


def fingerprint_parts(identity, x_flat: np.ndarray, layout_json: dict, options: dict) -> dict:
    """The parts of a result's fingerprint (a JSON-able dict).

    **Arguments:** `identity` (the traced function's `Identity`), the flat ``x``,
    its layout's JSON, and the options that change the stored matrix.
    """
    import jax
    import jaxlib

    from diffops_core import __version__

    return {
        "function": identity.program,
        "data": identity.data,
        "x": digest(x_flat),
        "x_layout": layout_json,
        "options": options,
        "versions": {"diffops": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__},
    }


def noise_digest(std=None, cov=None, inv_cov=None) -> str:
    """A digest of a noise model (which form, and its values): kept beside the
    fingerprint so that a refusal can say the noise changed, not just the data."""
    import jax

    h = hashlib.sha256()
    for name, value in (("std", std), ("cov", cov), ("inv_cov", inv_cov)):
        if value is None:
            continue
        h.update(name.encode())
        for leaf in jax.tree_util.tree_leaves(value):
            array = np.asarray(leaf, np.float64)
            h.update(f"{array.shape};".encode())
            h.update(np.ascontiguousarray(array).view(np.uint8).reshape(-1).data)
    return h.hexdigest()


def _changed(old, new) -> str:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def describe_difference(old: dict, new: dict) -> tuple[list[str], str]:
    """(the parts that differ, a plain-words account of them)."""
    keys = [k for k in new if old.get(k) != new[k]]
    if not keys:
        return ["fingerprint"], "the stored fingerprint differs"
    words = []
    for key in keys:
        text = _MEANING.get(key, key)
        detail = _changed(old.get(key), new[key]) if key in ("options", "versions") else ""
        words.append(f"{text} ({detail})" if detail else text)
    return keys, "; ".join(words)
