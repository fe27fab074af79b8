"""Out-of-core Cholesky of a stored symmetric matrix, for marginal σ and covariances.

``M + damping I = L Lᵀ`` is factorised in square tiles of ``tile`` rows and
columns, never holding more than a few tiles, and kept in the result's own
group (``factor/``) so a second call is cheap and a killed factorisation
resumes tile by tile:

- ``factor/lower``: the tiles of ``L`` (lower triangle; fill value NaN);
- ``factor/inverse``: the tiles of ``W = L⁻¹`` (so ``M⁻¹ = Wᵀ W`` and
  ``diag(M⁻¹)`` is the column sums of ``W²``);
- ``factor/variance``: ``diag(M⁻¹)``, one chunk per tile column;
- ``factor/records``: ``(3, T, T)`` int64, one chunk per tile and stage
  (lower, inverse, variance on the diagonal), ``crc32 + 1`` of the tile's data
  once it is written (0: not done). Data first, then the record.

The factor's identity is the matrix's (its fingerprint and the checksums of
its blocks), the damping and the tile: another one replaces it (it is derived
data in a group of ours). Tiles are read from the matrix as stored (column
slabs, one stored chunk at a time), so no square-chunked copy is made.

Left-looking, one tile per task: ``L[i,j] = (A[i,j] - Σ_{k<j} L[i,k] L[j,k]ᵀ)
L[j,j]⁻ᵀ`` after ``L[j,j] = chol(A[j,j] - Σ_{k<j} L[j,k] L[j,k]ᵀ)``; a tile
column's off-diagonal tiles are independent (they run in parallel on a
cluster). Then one task per tile column of ``W`` walks down it:
``W[i,j] = -L[i,i]⁻¹ Σ_{j<=k<i} L[i,k] W[k,j]``. Each task holds at most about
five tiles (default tile 2048: 32 MiB each in float64). Everything is float64.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from diffops_core.internal import InputValueError

from ._fingerprint import sha256_json
from ._store import CHECKSUM, local_path, remove_ours

if TYPE_CHECKING:  # pragma: no cover
    from ._result import Result

__all__ = ["FACTOR", "DEFAULT_TILE", "FactorTask", "NotPositiveDefiniteTile", "factor_identity"]

FACTOR = "factor"
FACTOR_FORMAT = 1
DEFAULT_TILE = 2048
LOWER, INVERSE, VARIANCE = 0, 1, 2
_ARRAYS = ("lower", "inverse", "variance", "records")


class NotPositiveDefiniteTile(ArithmeticError):
    """The diagonal tile at ``columns`` has no Cholesky factor: ``M`` (plus the
    damping) is not positive definite. The driver turns it into the diagnostics."""

    def __init__(self, start: int, stop: int):
        super().__init__(start, stop)
        self.start, self.stop = start, stop


def _crc(values: np.ndarray) -> int:
    data = np.ascontiguousarray(values).view(np.uint8).reshape(-1).data
    return zlib.crc32(data) & 0xFFFFFFFF


def factor_identity(result: Result, damping: float, tile: int) -> dict:
    """What the factor is a factor of: the matrix (fingerprint and the checksums
    of its blocks), the damping and the tile."""
    records = result._store.read_records()
    return {
        "format": FACTOR_FORMAT,
        "source": result._store.fingerprint,
        "blocks": sha256_json([int(c) for c in records[:, CHECKSUM]]),
        "damping": float(damping),
        "tile": int(tile),
        "n": int(result.shape[0]),
    }


@dataclasses.dataclass(frozen=True)
class FactorTask:
    """The tile computations, runnable wherever the store can be read (a worker
    opens the store itself: the task is a few numbers and a location)."""

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
        arrays["records"][stage, i, j] = _crc(data) + 1

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

    # -- the tasks ----------------------------------------------------------------

    def lower_tile(self, i: int, j: int) -> None:
        """Compute and store ``L[i, j]`` (``i >= j``; ``L[j, k]`` for ``k <= j`` done)."""
        import scipy.linalg  # a dependency of jax

        arrays = self.arrays()
        acc = self.source(i, j)
        for k in range(j):
            left = self.read(arrays, "lower", i, k)
            right = left if i == j else self.read(arrays, "lower", j, k)
            acc -= left @ right.T
            del left, right
        if i == j:
            try:
                value = np.linalg.cholesky(acc)
            except np.linalg.LinAlgError:
                span = self.span(j)
                raise NotPositiveDefiniteTile(span.start, span.stop) from None
        else:
            diag = self.read(arrays, "lower", j, j)
            # X L[j,j]^T = acc  <=>  L[j,j] X^T = acc^T
            value = scipy.linalg.solve_triangular(diag, acc.T, lower=True).T
        self.write(arrays, "lower", i, j, np.ascontiguousarray(value))

    def inverse_column(self, j: int) -> None:
        """Compute (or re-read) tile column ``j`` of ``W = L⁻¹`` and store
        ``diag(M⁻¹)`` of its columns: the column sums of ``W[:, j]²``."""
        import scipy.linalg

        arrays = self.arrays()
        records = np.asarray(arrays["records"][INVERSE, :, j])
        width = self.span(j).stop - self.span(j).start
        squares = np.zeros(width)
        for i in range(j, self.tiles):
            value = None
            if records[i]:
                value = self.read(arrays, "inverse", i, j)
                if _crc(value) + 1 != records[i]:
                    value = None  # damaged since: compute it again
            if value is None:
                diag = self.read(arrays, "lower", i, i)
                if i == j:
                    rhs = np.eye(width)
                else:
                    rhs = np.zeros((diag.shape[0], width))
                    for k in range(j, i):
                        rhs -= self.read(arrays, "lower", i, k) @ self.read(arrays, "inverse", k, j)
                value = np.ascontiguousarray(scipy.linalg.solve_triangular(diag, rhs, lower=True))
                self.write(arrays, "inverse", i, j, value)
            squares += np.einsum("ij,ij->j", value, value)
        arrays["variance"][self.span(j)] = squares
        arrays["records"][VARIANCE, j, j] = _crc(squares) + 1

    def covariance_tile(self, arrays: dict, a: int, b: int) -> np.ndarray:
        """``C[a, b] = Σ_{k >= max(a, b)} W[k, a]ᵀ W[k, b]`` (``M⁻¹ = Wᵀ W``)."""
        rows = self.span(a).stop - self.span(a).start
        cols = self.span(b).stop - self.span(b).start
        out = np.zeros((rows, cols))
        for k in range(max(a, b), self.tiles):
            out += self.read(arrays, "inverse", k, a).T @ self.read(arrays, "inverse", k, b)
        return out


# -- the driver ---------------------------------------------------------------------


def run_tasks(client: Any, fn: Callable, args: Sequence[tuple], bar: Any = None) -> None:
    """Run ``fn(*a)`` for each ``a``: on the client's cluster when there is one
    (in parallel), else here, one after the other (numpy's BLAS already uses
    every core); ``bar`` (tqdm) counts the tasks as they finish."""
    if not args:
        return
    if client is None:
        for a in args:
            fn(*a)
            if bar is not None:
                bar.update(1)
        return
    from distributed import as_completed

    futures = client.map(fn, *zip(*args, strict=True), pure=False)
    for future in as_completed(futures):
        future.result()  # raises the task's error
        if bar is not None:
            bar.update(1)


def stored_identity(root: zarr.Group) -> dict[str, Any]:
    """The identity of the factor stored in a result's group (empty if none)."""
    group: Any = root.get(FACTOR)
    if group is None:
        return {}
    ident: Any = group.attrs.get("diffops_factor")
    return dict(ident) if isinstance(ident, dict) else {}


def open_or_create(result: Result, identity: dict) -> FactorTask:
    """The factor group of ``result`` for ``identity``: the stored one if it is of
    the same matrix, damping and tile, else a new one (replacing ours).

    The caller holds the store's lock."""
    root = zarr.open_group(result.location, mode="r+", use_consolidated=False)
    n, tile = identity["n"], identity["tile"]
    task = FactorTask(result.location, n, tile, identity["damping"])
    if FACTOR in root:
        group: Any = root[FACTOR]
        if stored_identity(root) == identity and all(name in group for name in _ARRAYS):
            result._store.remove_partial_files()
            return task
        remove_factor(result.location)
        root = zarr.open_group(result.location, mode="r+", use_consolidated=False)
    tiles = task.tiles
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
    return task


def remove_factor(location: Any) -> None:
    """Delete the factor group of the result at ``location`` (ours, derived data;
    in a local store only the files zarr wrote for it)."""
    path = local_path(location)
    if path is not None:
        remove_ours(path, [FACTOR])
        return
    root = zarr.open_group(location, mode="r+", use_consolidated=False)
    if FACTOR in root:
        del root[FACTOR]


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


def variances_intact(task: FactorTask) -> bool:
    """Whether every tile column's variances are recorded and match their
    checksums (the factor is complete and its answer readable)."""
    arrays = task.arrays()
    records = np.diagonal(np.asarray(arrays["records"][VARIANCE]))
    if not np.all(records):
        return False
    variance = np.asarray(arrays["variance"][...])
    return all(_crc(variance[task.span(j)]) + 1 == records[j] for j in range(task.tiles))


def check_done(task: FactorTask, tiles: bool = True) -> np.ndarray:
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
        if _crc(data) + 1 != records[stage, i, j]:
            for key in [(stage, i, j)] + ([(VARIANCE, j, j)] if stage == INVERSE else []):
                arrays["records"][key] = 0
                records[key] = 0
    return records


def factorise(task: FactorTask, records: np.ndarray, client: Any, bar: Any) -> None:
    """Compute every tile not recorded: ``L`` column by column, then ``W`` and the
    variances. **Raises:** `NotPositiveDefiniteTile`."""
    tiles = task.tiles
    for j in range(tiles):
        if not records[LOWER, j, j]:
            run_tasks(client, task.lower_tile, [(j, j)])
        below = [(i, j) for i in range(j + 1, tiles) if not records[LOWER, i, j]]
        run_tasks(client, task.lower_tile, below)
        bar.update(tiles - j)
    columns = [(j,) for j in range(tiles) if not records[VARIANCE, j, j]]
    bar.update(tiles - len(columns))
    run_tasks(client, task.inverse_column, columns, bar)


def read_variance(task: FactorTask) -> np.ndarray:
    """``diag(M⁻¹)``, checked against its records (never a NaN fill read as a value)."""
    arrays = task.arrays()
    records = np.asarray(arrays["records"][VARIANCE])
    variance = np.asarray(arrays["variance"][...])
    for j in range(task.tiles):
        part = variance[task.span(j)]
        if not records[j, j] or _crc(part) + 1 != records[j, j]:
            raise InputValueError(
                f"the stored variances of columns {task.span(j).start}:{task.span(j).stop} "
                "are missing or damaged; call again to recompute them"
            )
    return variance
