"""`Result`: read access to a stored Jacobian or Hessian."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import psutil

from diffops_core import matrix_to_pytree
from diffops_core.internal import Layout, format_bytes

from ._store import CHECKSUM, NONFINITE, ResultStore, checksum

__all__ = ["Result", "open_result"]


class Result:
    """A result in a store. Get one from `open_result` or the ``*_to_zarr`` calls.

    **Attributes:** `shape` ``(m, n)``, `dtype`, `array` (a lazy dask array over
    the Zarr data), `meta` (the stored metadata), `location`.

    Views of an incomplete result (`array`, `to_pytree`, ``diffops plot``, and
    any Zarr or xarray reader) show NaN wherever a block is missing: the matrix's
    fill value is NaN, so a block never written never reads as zeros. `assemble`
    refuses an incomplete result.
    """

    def __init__(self, store: ResultStore, run_summary: dict | None = None):
        self._store = store
        self.location = store.location
        self.meta = store.meta
        self.run_summary = run_summary or {}

    def __repr__(self):
        st = self.status()
        return (f"Result({self.meta['operation']} {self.shape} {self.dtype} at {self.location!r}: "
                f"{st['blocks_done']}/{st['blocks_total']} blocks)")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._store.matrix.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._store.matrix.dtype)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def array(self) -> da.Array:
        return da.from_zarr(self._store.matrix)

    def status(self) -> dict:
        """``blocks_total``, ``blocks_done``, ``complete``, ``runs``, the blocks
        holding non-finite values, and ``missing_data``: blocks recorded complete
        whose data chunks are gone (they count as not done; a run recomputes them).
        A block is done only when its record says so and all its chunks exist."""
        records = self._store.read_records()
        recorded = self._store.recorded_mask(records)
        done = recorded & self._store.data_present()
        return {
            "blocks_total": int(done.size),
            "blocks_done": int(done.sum()),
            "complete": bool(done.all()),
            "runs": len(self.meta.get("runs", [])),
            "nonfinite_blocks": [int(i) for i in np.flatnonzero(done & (records[:, NONFINITE] > 0))],
            "missing_data": [int(i) for i in np.flatnonzero(recorded & ~done)],
        }

    def missing_blocks(self) -> list[int]:
        """Indices of the blocks without a completion record."""
        return self._store.todo()

    def assemble(self) -> np.ndarray:
        """The whole matrix as a numpy array.

        **Raises:** `MemoryError` when it would not fit in available memory;
        `ValueError` when blocks are missing.
        """
        status = self.status()
        if not status["complete"]:
            raise ValueError(
                f"the result at {self.location!r} is incomplete ({status['blocks_done']}/"
                f"{status['blocks_total']} blocks); run it again to finish it first"
            )
        available = psutil.virtual_memory().available
        if self.nbytes > 0.8 * available:
            raise MemoryError(
                f"assembling needs {format_bytes(self.nbytes)} but only {format_bytes(available)} "
                "is available; use .array (lazy, dask) or .to_pytree() to work block by block"
            )
        return np.asarray(self._store.matrix[...])

    def layouts(self, x=None) -> tuple[Layout, Layout]:
        """The (row, column) flat layouts; with ``x``, its structure for the columns.

        **Raises:** `ValueError` when ``x``'s leaf key paths or shapes differ from the
        stored ones.
        """
        cols = self._store.in_layout
        if x is not None:
            given = Layout.from_pytree(x, check_float=False)
            ours = [(s.path, s.shape) for s in cols.leaves]
            theirs = [(s.path, s.shape) for s in given.leaves]
            if theirs != ours:
                raise ValueError(
                    f"x has leaves {_describe(theirs)}, but the stored result was computed for "
                    f"{_describe(ours)}; pass an x with the same key paths and shapes, or none"
                )
            cols = given
        rows = cols if self.meta["operation"] == "hessian" else self._store.out_layout
        return rows, cols

    def to_pytree(self, x=None):
        """A lazy pytree-of-pytrees of dask arrays over the stored matrix.

        With ``x``: exactly the structure `diffops_core.hessian_to_pytree` gives.
        Without: rebuilt from the stored key paths (dict/list/tuple trees), or a
        dict keyed by key path for other containers. For a Jacobian the outer
        structure is the output's, the inner the input's.
        """
        rows, cols = self.layouts(x)
        return matrix_to_pytree(self.array, rows, cols)

    def verify(self, workers: int = 4) -> list[int]:
        """Re-read every block recorded complete and compare its checksum.

        **Returns:** the indices of blocks whose data no longer match their record
        (unreadable blocks and missing chunks count as bad).
        """
        records = self._store.read_records()
        done = np.flatnonzero(self._store.recorded_mask(records))
        present = self._store.data_present()

        def check(index: int) -> int | None:
            if not present[index]:
                return index
            try:
                data = np.asarray(self._store.matrix[self._store.block_region(index)])
            except Exception:  # noqa: BLE001 - a chunk that no longer decodes is bad
                return index
            ok = checksum(data) == int(records[index, CHECKSUM])
            return None if ok else index

        with ThreadPoolExecutor(max_workers=workers) as pool:
            bad = [i for i in pool.map(check, (int(i) for i in done)) if i is not None]
        return sorted(bad)


def _describe(leaves) -> str:
    text = ", ".join(f"{path or '(root)'} {shape}" for path, shape in leaves[:6])
    return f"[{text}{', ...' if len(leaves) > 6 else ''}]"


def open_result(store) -> Result:
    """Open a stored result (a local path or any store/URL zarr v3 accepts).

    **Raises:** `pipeline.StoreError` when there is no result there.
    """
    return Result(ResultStore.open(store))
