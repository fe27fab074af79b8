"""What a result was computed from, compared: a stored fingerprint against a
new one, and the difference in words a user can act on.

The function's part is what JAX traces (`diffops_core.Identity`): a digest of
the traced program and a digest of the bytes of every constant it reads, so an
edited function, new data a module loaded, another object's attributes or a new
closure all count as another computation, and nothing rests on a Python
object's name or ``id()``. With it: ``x``'s bytes and layout, the options and
the library versions (`pipeline.run` makes the parts).
"""

from __future__ import annotations

import hashlib

import numpy as np

from ._format import sha256_json

__all__ = ["describe_difference", "difference", "digest", "same_computation"]


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


def difference(meta: dict, parts: dict, noise: str | None = None) -> tuple[list[str], str]:
    """What differs between a stored result (its metadata) and the fingerprint
    ``parts`` of a new one, in words; a changed noise model (its digest
    ``noise``) is named as such (it reaches the trace as data f reads)."""
    keys, words = describe_difference(meta.get("fingerprint_parts") or {}, parts)
    old = meta.get("noise")
    if "data" in keys and old and noise and old != noise:
        keys = ["noise" if k == "data" else k for k in keys]
        words = words.replace(
            _MEANING["data"],
            "the noise model differs (the data f reads changed: its std, cov or inv_cov)",
        )
    return keys, words
