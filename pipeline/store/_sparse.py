"""The compressed format of a sparse result: what the store keeps of a matrix
computed from the products of a colouring.

A sparse store holds, in place of ``matrix``:

- ``compressed``: the products, ``(m, colours + probes)`` (a column or star
  colouring: ``M S``, one column per colour, then ``M v`` of the self-check's
  probe vectors, which ride in the same compiled calls) or ``(colours, n)`` (a
  row colouring: ``Sᵀ M``; its check computes JVPs apart), fill value NaN,
  blocked over those columns exactly as a dense store's ``matrix`` is over its
  columns (rows): one task per block, its own chunks, its own completion
  record in ``blocks``;
- ``pattern_indptr``, ``pattern_indices``: the global pattern, CSR over the
  flat parameters (rows of the output for a Jacobian);
- ``colors``: the colour of each column (each row, for a row colouring).

The metadata's ``sparsity`` says the mode, the number of colours, nnz, the
compressed shape, the probes (``{"count", "seed"}``: the vectors of
`diffops_core.internal.probe_vectors`, the seed drawn when the store was
made), and digests of the pattern and of the colours, which are part of the
fingerprint (another pattern or colouring is another computation) and are
checked whenever the arrays are read: a damaged pattern is refused, never
used. Its ``digest`` covers everything recovery and the check read of the
metadata (mode, colours, nnz, the shapes, dtype, the probes and the two
digests), so an edited mode, shape or seed is refused too. The matrix is
recovered from the products by `diffops_core.internal.recover` (every
nonzero read from one product).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import scipy.sparse as sp
import zarr

from diffops_core import Sparsity
from diffops_core.internal import recover

from .._errors import StoreError
from ._format import SPARSE_ARRAYS, digest, sha256_json

__all__ = [
    "COLORS",
    "COMPRESSED",
    "INDICES",
    "INDPTR",
    "compressed_shape",
    "pattern_arrays",
    "pattern_bytes",
    "probes_of",
    "read_sparsity",
    "recover_matrix",
    "sparsity_meta",
]

COMPRESSED, INDPTR, INDICES, COLORS = SPARSE_ARRAYS


def _parts(sparsity: Sparsity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored arrays of a pattern and its colouring (sorted CSR, int64/int32)."""
    csr = sp.csr_array(sparsity.pattern, dtype=bool)
    csr.sort_indices()
    return (
        np.asarray(csr.indptr, np.int64),
        np.asarray(csr.indices, np.int64 if csr.shape[1] > 2**31 - 1 else np.int32),
        np.asarray(sparsity.colors, np.int32),
    )


def _pattern_digest(indptr: np.ndarray, indices: np.ndarray) -> str:
    return hashlib.sha256((digest(indptr) + digest(indices)).encode()).hexdigest()


def compressed_shape(mode: str, shape, ncolors: int, nprobes: int = 0) -> tuple[int, int]:
    """The shape of the stored products: ``(m, colours + probes)``, or
    ``(colours, n)`` for a row colouring."""
    m, n = (int(v) for v in shape)
    return (int(ncolors), n) if mode == "row" else (m, int(ncolors) + int(nprobes))


def pattern_bytes(info: dict) -> int:
    """Bytes of the stored pattern and colours of a sparse result's ``sparsity``
    metadata (`_parts`' dtypes)."""
    m, n = (int(s) for s in info["shape"])
    index = 4 if n <= 2**31 - 1 else 8
    return index * int(info["nnz"]) + 8 * (m + 1) + 4 * (m if info["mode"] == "row" else n)


#: What recovery reads of the metadata: covered by its ``digest``.
_RECOVERY_KEYS = (
    "mode",
    "ncolors",
    "nnz",
    "shape",
    "compressed_shape",
    "dtype",
    "pattern",
    "colors",
)


def _meta_digest(info: dict) -> str:
    covered = {key: info.get(key) for key in _RECOVERY_KEYS}
    if "probes" in info:  # the check's probes (stores with none keep their digest)
        covered["probes"] = info["probes"]
    return sha256_json(covered)


def probes_of(info: dict) -> tuple[int, int | None]:
    """(count, seed) of the probe vectors whose products a sparse result stores
    after its colours' (``(0, None)``: none; its check computes them)."""
    probes = info.get("probes") or {}
    return int(probes.get("count", 0)), probes.get("seed")


def sparsity_meta(sparsity: Sparsity, probes: dict | None = None) -> dict:
    """What the metadata (and the fingerprint) say of a pattern and its colouring,
    and of the ``probes`` (``{"count", "seed"}``) that ride with its products,
    with the ``digest`` of everything recovery and the check read of it."""
    indptr, indices, colors = _parts(sparsity)
    nprobes = 0 if probes is None else int(probes["count"])
    info = {
        "mode": sparsity.mode,
        "ncolors": int(sparsity.ncolors),
        "nnz": int(indices.size),
        "shape": [int(s) for s in sparsity.shape],
        "compressed_shape": list(
            compressed_shape(sparsity.mode, sparsity.shape, sparsity.ncolors, nprobes)
        ),  # fmt: skip
        "dtype": sparsity.dtype,
        "pattern": _pattern_digest(indptr, indices),
        "colors": digest(colors),
        # what detection and colouring cost when they ran (not part of the fingerprint)
        "seconds": {k: round(float(v), 3) for k, v in sparsity.seconds.items()},
    }
    if nprobes:
        info["probes"] = {"count": nprobes, "seed": int(probes["seed"])}  # type: ignore[index]
    return {**info, "digest": _meta_digest(info)}


def pattern_arrays(sparsity: Sparsity) -> list[tuple[str, str, np.ndarray, str]]:
    """(name, dimension, values, description) of the arrays that keep the pattern
    and the colouring (written as the coordinate arrays are)."""
    indptr, indices, colors = _parts(sparsity)
    along = "row" if sparsity.mode == "row" else "column"
    return [
        (INDPTR, "pattern_row", indptr, "CSR row pointers of the sparsity pattern"),
        (INDICES, "nonzero", indices, "CSR column indices of the sparsity pattern"),
        (COLORS, along, colors, f"the colour of each {along} (its product in 'compressed')"),
    ]


def read_sparsity(group: zarr.Group, meta: dict, where: Any) -> Sparsity:
    """The stored pattern and colouring, checked against the digests of the
    metadata. **Raises:** `StoreError` naming the array when one is unreadable
    or is not what the result was computed with."""
    info = meta.get("sparsity")
    if not isinstance(info, dict) or info.get("digest") != _meta_digest(info):
        raise StoreError(
            f"the sparsity metadata at {where} ({', '.join(_RECOVERY_KEYS)}) is not what the "
            "result was written with (its digest differs, or it has none: a store of an older "
            "diffops): the store is damaged; recompute the result (overwrite=True)"
        )
    values = {}
    for name in (INDPTR, INDICES, COLORS):
        try:
            values[name] = np.asarray(group[name][...])  # type: ignore[index]
        except Exception as err:  # noqa: BLE001 - a missing or undecodable array
            raise StoreError(
                f"cannot read {where}/{name} ({type(err).__name__}: {err}): the stored "
                "sparsity pattern is damaged; recompute the result (overwrite=True)"
            ) from None
    indptr, indices, colors = values[INDPTR], values[INDICES], values[COLORS]
    damaged = [
        name
        for name, ok in (
            ("pattern", _pattern_digest(indptr, indices) == info["pattern"]),
            ("colors", digest(colors) == info["colors"]),
        )
        if not ok
    ]
    if damaged:
        raise StoreError(
            f"the {' and '.join(damaged)} stored at {where} differ from those the result was "
            "computed with (their digests in the metadata): the store is damaged; recompute "
            "the result (overwrite=True)"
        )
    m, n = (int(s) for s in info["shape"])
    shape = (m, n)
    ones = np.ones(indices.size, dtype=bool)
    if indices.dtype == np.int32 and indices.size < 2**31:  # one index dtype: no copy of
        indptr = indptr.astype(np.int32)  # the indices to int64 (scipy unifies them)
    pattern = sp.csr_array((ones, indices, indptr), shape=shape)
    return Sparsity(shape, pattern, colors, int(info["ncolors"]), info["mode"], info["dtype"])


def recover_matrix(sparsity: Sparsity, compressed: np.ndarray) -> sp.csr_array:
    """The matrix from its stored products: each nonzero read from one of them."""
    return recover(sparsity.plan, sparsity.shape, compressed)
