"""The factor group: a store's second format, square tiles with a record each.

``factor/`` beside ``matrix/`` holds the Cholesky factor of a square matrix
(`pipeline.linalg` computes it): ``lower`` (``L``) and ``inverse`` (``W = L⁻¹``),
``(n, n)`` float64 in ``(tile, tile)`` chunks; ``variance`` (``diag(M⁻¹)``);
``records`` ``(3, T, T)`` int64, ``crc32 + 1`` of each tile's data once written
(0: not done). Its identity is the matrix's (fingerprint and block checksums),
the damping and the tile; another one replaces it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from diffops_core.internal import InputValueError

from ._format import CHECKSUM, FACTOR, checksum, sha256_json
from ._group import ResultStore
from ._location import remove_ours

__all__ = [
    "DEFAULT_TILE",
    "INVERSE",
    "LOWER",
    "VARIANCE",
    "Tiles",
    "check_done",
    "factor_identity",
    "invalidate",
    "open_or_create",
    "read_variance",
    "remove_factor",
    "stored_identity",
    "variances_intact",
]

FACTOR_FORMAT = 1
DEFAULT_TILE = 2048
LOWER, INVERSE, VARIANCE = 0, 1, 2
_ARRAYS = ("lower", "inverse", "variance", "records")


def factor_identity(store: ResultStore, damping: float, tile: int) -> dict:
    """What the factor is a factor of: the matrix (fingerprint and the checksums
    of its blocks), the damping and the tile."""
    records = store.read_records()
    return {
        "format": FACTOR_FORMAT,
        "source": store.fingerprint,
        "blocks": sha256_json([int(c) for c in records[:, CHECKSUM]]),
        "damping": float(damping),
        "tile": int(tile),
        "n": int(store.shape[0]),
    }


@dataclasses.dataclass(frozen=True)
class Tiles:
    """The tiles of one factor in the store at `location`: where each is, and
    how it is read and written (data first, then its record). A few numbers and
    a location: a worker opens the store itself."""

    location: Any
    n: int
    tile: int
    damping: float

    @property
    def tiles(self) -> int:
        return math.ceil(self.n / self.tile)

    def span(self, i: int) -> slice:
        return slice(i * self.tile, min(self.n, (i + 1) * self.tile))

    # -- storage ----------------------------------------------------------------

    def group(self, mode: str = "r+") -> zarr.Group:
        root = zarr.open_group(self.location, mode=mode, use_consolidated=False)  # type: ignore[arg-type]
        return root[FACTOR]  # type: ignore[return-value]

    def arrays(self) -> dict[str, zarr.Array]:
        group = self.group()
        return {name: group[name] for name in _ARRAYS}  # type: ignore[misc]

    def read(self, arrays: dict, name: str, i: int, j: int) -> np.ndarray:
        return np.asarray(arrays[name][self.span(i), self.span(j)])

    def write(self, arrays: dict, name: str, i: int, j: int, data: np.ndarray) -> None:
        """The tile's data, then its record (``crc32 + 1``)."""
        stage = LOWER if name == "lower" else INVERSE
        arrays[name][self.span(i), self.span(j)] = data
        arrays["records"][stage, i, j] = checksum(data) + 1

    def source(self, i: int, j: int) -> np.ndarray:
        """``A[i, j]`` (plus the damping on the diagonal) in float64, read from the
        stored matrix one stored chunk column at a time (transient memory: one
        stored chunk and the tile)."""
        matrix = zarr.open_array(self.location, path="matrix", mode="r")
        rows, cols = self.span(i), self.span(j)
        out = np.empty((rows.stop - rows.start, cols.stop - cols.start))
        step = int(matrix.chunks[1])
        start = cols.start
        while start < cols.stop:
            stop = min(cols.stop, (start // step + 1) * step)
            out[:, start - cols.start : stop - cols.start] = matrix[rows, start:stop]
            start = stop
        if i == j and self.damping:
            out[np.diag_indices_from(out)] += self.damping
        return out


def stored_identity(root: zarr.Group) -> dict[str, Any]:
    """The identity of the factor stored in a result's group (empty if none)."""
    group: Any = root.get(FACTOR)
    if group is None:
        return {}
    ident: Any = group.attrs.get("diffops_factor")
    return dict(ident) if isinstance(ident, dict) else {}


def open_or_create(store: ResultStore, identity: dict) -> None:
    """Make the factor group of ``store`` hold ``identity``: the stored one if it
    is of the same matrix, damping and tile, else a new one (replacing ours).

    The caller holds the store's lock."""
    root = zarr.open_group(store.location, mode="r+", use_consolidated=False)
    n, tile = identity["n"], identity["tile"]
    if FACTOR in root:
        group: Any = root[FACTOR]
        if stored_identity(root) == identity and all(name in group for name in _ARRAYS):
            store.remove_partial_files()
            return
        remove_factor(store.location)
        root = zarr.open_group(store.location, mode="r+", use_consolidated=False)
    tiles = math.ceil(n / tile)
    group = root.create_group(FACTOR, attributes={"diffops_factor": {**identity, "ready": False}})
    common: dict[str, Any] = {"compressors": None, "config": {"write_empty_chunks": True}}
    for name in ("lower", "inverse"):
        group.create_array(
            name, shape=(n, n), chunks=(tile, tile), dtype="float64", fill_value=float("nan"),
            **common,
        )  # fmt: skip
    group.create_array(
        "variance", shape=(n,), chunks=(tile,), dtype="float64", fill_value=float("nan"), **common
    )
    group.create_array(
        "records", shape=(3, tiles, tiles), chunks=(1, 1, 1), dtype="int64", fill_value=0, **common
    )
    group.attrs["diffops_factor"] = identity


def remove_factor(location: Any) -> None:
    """Delete the factor group of the result at ``location`` (ours, derived data;
    in a local store only the files zarr wrote for it)."""
    remove_ours(location, [FACTOR])


def invalidate(location: Any, columns: Sequence[slice]) -> int:
    """Clear the records of every factor tile that depends on the matrix columns
    ``columns`` (blocks recomputed by a repair, whose checksums, and so the
    factor's identity, come back unchanged). Left-looking, tile column ``c``
    reads ``A[i, c]`` (``i >= c``), and every later tile of ``L`` depends on it:
    so ``L[:, j]`` for ``j >= c``, ``W[i, :]`` for ``i >= c`` and every variance.

    **Returns:** how many tile records were cleared.
    """
    root = zarr.open_group(location, mode="r+", use_consolidated=False)
    ident = stored_identity(root)
    if not ident or not columns:
        return 0
    tile = int(ident["tile"])
    first = min(span.start for span in columns) // tile
    records: Any = root[FACTOR]["records"]  # type: ignore[index]
    values = np.asarray(records[...])
    cleared = values.copy()
    cleared[LOWER, :, first:] = 0
    cleared[INVERSE, first:, :] = 0
    cleared[VARIANCE] = 0
    changed = np.argwhere(cleared != values)
    for stage, i, j in changed:
        records[int(stage), int(i), int(j)] = 0
    return len(changed)


def variances_intact(task: Tiles) -> bool:
    """Whether every tile column's variances are recorded and match their
    checksums (the factor is complete and its answer readable)."""
    arrays = task.arrays()
    records = np.diagonal(np.asarray(arrays["records"][VARIANCE]))
    if not np.all(records):
        return False
    variance = np.asarray(arrays["variance"][...])
    return all(checksum(variance[task.span(j)]) + 1 == records[j] for j in range(task.tiles))


def check_done(task: Tiles, tiles: bool = True) -> np.ndarray:
    """The records, with those whose data no longer match their checksum (or are
    gone) cleared, so the factorisation computes them again. A bad tile of ``W``
    also clears its column's variances (their task recomputes it). Without
    ``tiles``, only the variances are checked."""
    arrays = task.arrays()
    records = np.asarray(arrays["records"][...])
    for stage, i, j in zip(*np.nonzero(records), strict=True):
        if stage == VARIANCE:
            data = np.asarray(arrays["variance"][task.span(int(j))])
        elif not tiles:
            continue
        else:
            name = "lower" if stage == LOWER else "inverse"
            data = task.read(arrays, name, int(i), int(j))
        if checksum(data) + 1 != records[stage, i, j]:
            for key in [(stage, i, j)] + ([(VARIANCE, j, j)] if stage == INVERSE else []):
                arrays["records"][key] = 0
                records[key] = 0
    return records


def read_variance(task: Tiles) -> np.ndarray:
    """``diag(M⁻¹)``, checked against its records (never a NaN fill read as a value)."""
    arrays = task.arrays()
    records = np.asarray(arrays["records"][VARIANCE])
    variance = np.asarray(arrays["variance"][...])
    for j in range(task.tiles):
        part = variance[task.span(j)]
        if not records[j, j] or checksum(part) + 1 != records[j, j]:
            raise InputValueError(
                f"the stored variances of columns {task.span(j).start}:{task.span(j).stop} "
                "are missing or damaged; call again to recompute them"
            )
    return variance
