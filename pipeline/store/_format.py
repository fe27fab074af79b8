"""What a store holds and how it is named: the format number, our names, the
completion record, the chunking, the metadata a new store starts with, the
disk a store or a factor takes, and what a result was computed from (its
fingerprint), compared. Pure: numpy only.

Fingerprints: a stored one is compared with a new one, and the difference
told in words a user can act on. The function's part is what JAX traces
(`diffops_core.Identity`): a digest of the traced program and a digest of
the bytes of every constant it reads, so an edited function, new data a
module loaded, another object's attributes or a new closure all count as
another computation, and nothing rests on a Python object's name or
``id()``. With it: ``x``'s bytes and layout, the options and the library
versions (`pipeline.run` makes the parts); for a sparse result, its pattern
and colouring.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import zlib

import numpy as np

from diffops_core.internal import Layout

__all__ = [
    "CHECKSUM",
    "COORDINATES",
    "CURVATURE",
    "FACTOR",
    "FORMAT",
    "LOCK_NAME",
    "MILLIS",
    "NONFINITE",
    "OUR_NAMES",
    "RECORD_FIELDS",
    "RUN",
    "RUNS_KEPT",
    "SQUARE",
    "STATE",
    "checksum",
    "chunk_shape",
    "describe_difference",
    "difference",
    "digest",
    "factor_disk_bytes",
    "layouts",
    "leaf_label",
    "record",
    "same_computation",
    "sha256_json",
    "store_disk_bytes",
    "store_meta",
]

FORMAT = 2
RECORD_FIELDS = ("state", "checksum", "millis", "run", "nonfinite")
STATE, CHECKSUM, MILLIS, RUN, NONFINITE = range(5)
_CHUNK_TARGET_BYTES = 64 * 2**20
LOCK_NAME = "diffops.lock"
#: Operations whose matrix is square and symmetric over the parameters (rows and
#: columns are both x's layout).
SQUARE = ("hessian", "gauss_newton", "covariance")
#: Operations whose matrix is a curvature (what a covariance is the inverse of).
CURVATURE = ("hessian", "gauss_newton")
#: Runs the history keeps (with a count of all): bounded metadata, fast appends.
RUNS_KEPT = 20
#: Coordinate arrays, for tools that read the store without diffops (xarray):
#: ``row``/``column`` (positions), ``*_leaf`` (the leaf of each row/column, an
#: index into the ``row_leaves``/``column_leaves`` attributes of ``matrix``) and
#: ``*_index`` (the flat index within that leaf).
COORDINATES = ("row", "column", "row_leaf", "row_index", "column_leaf", "column_index")
#: The Cholesky factor of a square matrix (`pipeline.store._tiles`).
FACTOR = "factor"
#: Everything a store's directory may hold that we made (and so may remove).
#: A sparse result's arrays in place of ``matrix`` (`_sparse`).
SPARSE_ARRAYS = ("compressed", "pattern_indptr", "pattern_indices", "colors")
OUR_NAMES = frozenset(
    {"zarr.json", "matrix", "blocks", LOCK_NAME, FACTOR, *COORDINATES, *SPARSE_ARRAYS}
)
#: A filesystem's allocation unit: every file takes a whole number of them.
PAGE = 4096
#: Group, array and consolidated metadata of a new store (a few kB; generous).
METADATA_BYTES = 256 * 2**10


def checksum(values: np.ndarray, crc: int = 0) -> int:
    """CRC-32 of an array's C-order bytes; ``crc``: the checksum of the bytes
    before them (a slab checksummed tile row by tile row)."""
    data = np.ascontiguousarray(values).view(np.uint8).reshape(-1).data
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def record(crc: int, millis: int, run: int, nonfinite: int) -> np.ndarray:
    """A block's completion record (`RECORD_FIELDS`): complete, with the checksum
    of its data, the milliseconds it took, the run that wrote it and how many of
    its entries are NaN or infinite."""
    out = np.zeros(len(RECORD_FIELDS), dtype=np.int64)
    out[[STATE, CHECKSUM, MILLIS, RUN, NONFINITE]] = [1, crc, millis, run, nonfinite]
    return out


def sha256_json(value) -> str:
    """The fingerprint of a JSON-able value (keys sorted)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def store_meta(
    *, operation: str, op: str, shape, dtype: str, axis: int, block_plan: dict,
    in_layout: dict, out_layout: dict, output_shape, fingerprint_parts: dict, options: dict,
    mode: str | None = None, compressor: str | None = None, **more,
) -> dict:  # fmt: skip
    """The metadata a new store starts with (the store adds its format, record
    fields and run history); its fingerprint is that of ``fingerprint_parts``."""
    return {
        "operation": operation,
        "op": op,
        "mode": mode,
        "shape": [int(s) for s in shape],
        "dtype": dtype,
        "axis": int(axis),
        "output_shape": [list(s) for s in output_shape],
        "plan": block_plan,
        "in_layout": in_layout,
        "out_layout": out_layout,
        "fingerprint": sha256_json(fingerprint_parts),
        "fingerprint_parts": fingerprint_parts,
        "options": options,
        "compressor": compressor,
        **more,
    }


def layouts(meta: dict) -> tuple[Layout, Layout]:
    """(rows, columns) of the stored matrix, from its metadata."""
    cols = Layout.from_json(meta["in_layout"])
    rows = cols if meta["operation"] in SQUARE else Layout.from_json(meta["out_layout"])
    return rows, cols


def leaf_label(path: str) -> str:
    """A leaf's key path as a short label: ``['shape']['rho']`` -> ``shape/rho``."""
    parts = re.findall(r"\[(?:'([^']*)'|\"([^\"]*)\"|([^\]]*))\]|\.(\w+)", path or "")
    names = ["".join(p) for p in parts]
    return "/".join(names) if names else (path or "x")


def chunk_shape(
    shape: tuple[int, int], axis: int, block_size: int, itemsize: int
) -> tuple[int, int]:
    """Chunks with edges on block edges along ``axis``, at most about 64 MiB each.

    Across the block axis the extent is split evenly: zarr stores edge chunks at
    full size, so a ragged split would write padding (up to a chunk per block).
    """
    other = shape[1 - axis]
    target = max(1, min(other, _CHUNK_TARGET_BYTES // max(1, block_size * itemsize)))
    pieces = math.ceil(other / target)
    across = math.ceil(other / pieces)
    return (across, block_size) if axis == 1 else (block_size, across)


def pages(nbytes: int) -> int:
    """Bytes a file of ``nbytes`` takes on disk (whole pages)."""
    return -(-int(nbytes) // PAGE) * PAGE


def store_disk_bytes(
    shape: tuple[int, int], axis: int, block_size: int, itemsize: int, blocks: list[int],
    n_blocks: int, new: bool,
) -> int:  # fmt: skip
    """Bytes a run writes for the blocks ``blocks`` (uncompressed): every chunk at
    its full size (zarr stores edge chunks padded) in whole pages, the records,
    and for a new store its metadata and coordinate arrays."""
    chunks = chunk_shape((int(shape[0]), int(shape[1])), axis, block_size, itemsize)
    other = shape[1 - axis]
    per_block = math.ceil(other / chunks[1 - axis]) * pages(chunks[0] * chunks[1] * itemsize)
    need = len(blocks) * (per_block + pages(len(RECORD_FIELDS) * 8))
    if new:
        m, n = shape
        need += METADATA_BYTES + sum(pages(k * 8) + pages(k * 4) + pages(k * 8) for k in (m, n))
    return need


def factor_disk_bytes(n: int, tile: int) -> int:
    """Bytes a whole factor takes: the lower triangle of tiles of ``L`` and of
    ``W`` in float64 (full tiles: edge chunks are stored padded), the variances
    and a record per tile and stage."""
    t = math.ceil(n / tile)
    return (
        2 * (t * (t + 1) // 2) * pages(tile * tile * 8)
        + t * pages(tile * 8)
        + 3 * t * t * pages(8)
        + METADATA_BYTES
    )


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
