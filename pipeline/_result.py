"""`Result`: the facade of a stored result. It keeps the data views (`array`,
`assemble`, `to_pytree`, `status`, `verify`, `layouts`) and forwards
everything else, in one line each, to `pipeline.linalg` and `pipeline.report`,
which take the `ResultStore` underneath."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from diffops_core import matrix_to_pytree
from diffops_core.internal import Layout

from ._errors import MissingDependencyError
from .linalg import Analysis, analyze, covariance, marginal_std, spectrum
from .report import StoreSummary, plot, plot_analysis, summarise
from .run import RunSummary
from .store import ResultStore

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

    def __init__(self, store: ResultStore, run_summary: RunSummary | None = None):
        self._store = store
        self.location = store.location
        self.meta = store.meta
        #: What the call that returned this result computed (`RunSummary`).
        self.run_summary = run_summary or RunSummary()

    def __repr__(self):
        st = self.status()
        return (
            f"Result({self.meta['operation']} {self.shape} {self.dtype} at {self.location!r}: "
            f"{st['blocks_done']}/{st['blocks_total']} blocks)"
        )

    @property
    def store(self) -> ResultStore:
        """The `ResultStore` underneath (`pipeline.internal`: what the linear algebra
        and the reports take)."""
        return self._store

    @property
    def shape(self) -> tuple[int, int]:
        return self._store.shape

    @property
    def dtype(self) -> np.dtype:
        return self._store.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the dense ``(m, n)`` matrix (a sparse result's too)."""
        return self._store.nbytes

    @property
    def is_sparse(self) -> bool:
        """Whether the store keeps the compressed products of a colouring."""
        return self._store.is_sparse

    @property
    def array(self) -> da.Array:
        """A lazy dask array of the ``(m, n)`` matrix. For a sparse result, each
        chunk is decompressed when it is computed (from `sparse`, read once),
        never the whole dense matrix unless it is asked for."""
        if not self._store.is_sparse:
            return da.from_zarr(self._store.matrix)
        return _dense_view(self._store)

    def to_xarray(self):
        """The ``(m, n)`` matrix as a lazy `xarray.DataArray` (dims ``row`` and
        ``column``, the leaf coordinates ``row_leaf``, ``row_index``,
        ``column_leaf``, ``column_index``, the leaves named in its attributes),
        over `array`: a sparse result's dense view, decompressed a chunk at a
        time. (``xarray.open_zarr`` of the store reads what is stored: a sparse
        result's compressed products.)

        **Raises:** `MissingDependencyError` without xarray."""
        try:
            import xarray as xr
        except ImportError:
            raise MissingDependencyError("to_xarray needs xarray: pip install xarray") from None
        coords = {name: (dim, values, {"description": text})
                  for name, dim, values, text in self._store.coordinates()}  # fmt: skip
        return xr.DataArray(self.array, dims=("row", "column"), coords=coords,
                            attrs=self._store.matrix_attrs(), name="matrix")  # fmt: skip

    def sparse(self):
        """The matrix as a `scipy.sparse.csr_array`: a sparse result recovered
        from its compressed products (every nonzero read from one of them),
        once complete and checked against products of random vectors (row by row); a
        dense result converted (when it fits).

        **Raises:** `ValueError` for an incomplete or unchecked result;
        `StoreError` for a damaged pattern."""
        return self._store.sparse()

    def status(self) -> dict:
        """``blocks_total``, ``blocks_done``, ``complete``, ``runs``, the blocks
        holding non-finite values, and ``missing_data``: blocks recorded complete
        whose data chunks are gone (they count as not done; a run recomputes them).
        A block is done only when its record says so and all its chunks exist."""
        return self._store.status()

    def runs(self) -> list[dict]:
        """The store's run history (the last few runs); a run killed before it
        could record its end reads ``interrupted``."""
        return self._store.runs()

    def missing_blocks(self) -> list[int]:
        """Indices of the blocks without a completion record."""
        return self._store.todo()

    def assemble(self) -> np.ndarray:
        """The whole matrix as a numpy array.

        **Raises:** `MemoryError` when it would not fit in available memory;
        `ValueError` when blocks are missing.
        """
        return self._store.assemble()

    def layouts(self, x=None) -> tuple[Layout, Layout]:
        """The (row, column) flat layouts; with ``x``, its structure for the columns.

        **Raises:** `ValueError` when ``x``'s leaf key paths or shapes differ from the
        stored ones.
        """
        return self._store.layouts(x)

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
        return self._store.verify(workers)

    def summary(self) -> StoreSummary:
        """What the store holds: metadata, progress, and for a complete result the
        per-leaf figures (row-block norm; for a Hessian the diagonal's range and
        the largest asymmetry), read lazily, block by block."""
        return summarise(self._store)

    def plot(
        self,
        output: str,
        *,
        pixels: int = 800,
        leaves: list[str] | None = None,
        min_cells: int | None = None,
    ) -> dict:
        """Write a heat map of log10|M| to ``output`` (PNG); see `diffops plot`.

        **Arguments:** `pixels` (cells along the longer side), `leaves` (labels such
        as ``flux`` or ``shape/rho``: draw only those rows and columns), `min_cells`
        (the fewest cells a leaf gets; default 3% of ``pixels``).

        **Returns:** what was drawn (``cells``, ``leaves``, ``missing_blocks``,
        ``sparse``: a spy plot of a sparse result).
        **Raises:** `InputError` (an `ImportError`) without matplotlib; a
        `ValueError` naming the leaves for an unknown leaf.
        """
        return plot(self._store, output, pixels=pixels, leaves=leaves, min_cells=min_cells)

    def spectrum(
        self,
        k: int = 6,
        which: str = "both",
        *,
        tol: float = 1e-8,
        client: Any = None,
        progress: bool = True,
    ) -> dict:
        """Extreme eigenvalues (Lanczos, `scipy.sparse.linalg.eigsh`) and the condition
        number of a stored Hessian or Gauss–Newton matrix, streaming one block of
        columns per matvec: memory is one slab, never the matrix. The small end
        comes by shift-invert from the Cholesky factor (computed and kept as
        `marginal_std` does) when the matrix is positive definite: Lanczos on the
        small end of an ill-conditioned matrix does not converge.

        A sparse result's come from its recovered matrix in memory (nnz-sized):
        Lanczos, and shift-invert on its sparse LU when it is positive definite.

        **Returns:** ``largest``, ``smallest`` (``k`` each, as ``which`` asks,
        or fewer where Lanczos did not converge: then ``unconverged`` says how
        many are missing at which end), ``asked``, ``condition``,
        ``positive_definite``, ``matvecs``.
        **Raises:** `ValueError` for a Jacobian or an incomplete store.
        """
        return spectrum(self._store, k, which, tol=tol, client=client, progress=progress)

    def marginal_std(
        self,
        x: Any = None,
        *,
        damping: float = 0.0,
        tile: int | None = None,
        client: Any = None,
        progress: bool = True,
    ) -> Any:
        """Each parameter's standard deviation, the others marginalised:
        ``sqrt(diag((M + damping I)⁻¹))`` of a stored Hessian or Gauss–Newton
        matrix, as a pytree of float64 numpy arrays (like ``x``; without it, the
        stored structure, as `to_pytree`).

        Out of core: a blocked Cholesky factorisation in square tiles of ``tile``
        (default 2048, smaller when a task's memory is short), one tile per task
        (on ``client``'s cluster when given), never holding the matrix. The factor
        is kept in the store's ``factor/`` group: a second call reads the
        variances, a killed factorisation resumes tile by tile, and a different
        ``damping`` or matrix replaces it.

        **Raises:** `ValueError` for a Jacobian or an incomplete store, and when
        the matrix (plus damping) is not positive definite: its smallest
        eigenvalue, how many are not positive and the worst's relative size (as
        `diffops_core.marginal_std`); nothing of the failed factorisation is kept.
        """
        return marginal_std(
            self._store, x, damping=damping, tile=tile, client=client, progress=progress
        )

    def covariance(
        self,
        store: Any,
        *,
        damping: float = 0.0,
        tile: int | None = None,
        client: Any = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> Result:
        """``(M + damping I)⁻¹`` as another stored result (operation
        ``covariance``, float64, column blocks of ``tile``), with the same
        completion records and checksums as a computed one (``verify`` and
        ``status`` work on it; a killed run resumes). Factorises as
        `marginal_std` (sharing its stored factor).

        **Raises:** as `marginal_std`; `StoreError` when ``store`` holds something
        else (another result only goes with ``overwrite``; what is not ours never).
        """
        return Result(covariance(
            self._store, store, damping=damping, tile=tile, client=client,
            overwrite=overwrite, progress=progress,
        ))  # fmt: skip

    def analyze(
        self,
        *,
        damping: float = 0.0,
        k: int = 6,
        plot: str | None = None,
        pixels: int = 400,
        client: Any = None,
        progress: bool = True,
    ) -> Analysis:
        """What a stored Hessian or Gauss–Newton matrix says about the parameters
        (``diffops analyze``): marginal σ per leaf (min, median, max), the ``k``
        largest and smallest eigenvalues (Lanczos; the small end by shift-invert
        on the stored factor), the condition number and whether it is positive
        definite. ``plot``: a PNG of the correlation matrix (at most ``pixels``
        parameters, evenly spaced per leaf) beside the eigenvalue spectrum.

        **Returns:** an `Analysis` (``lines()``, ``to_json()``). A matrix that is
        not positive definite gives no σ: ``error`` holds the diagnostics.
        **Raises:** `ValueError` for a Jacobian or an incomplete store.
        """
        store = self._store
        analysis, task = analyze(store, damping=damping, k=k, client=client, progress=progress)
        if plot is not None:
            plot_analysis(store, analysis, task, plot, pixels)
        return analysis


#: Edge of the chunks of a sparse result's dense view.
_VIEW_CHUNK = 4096


def _dense_view(store: ResultStore) -> da.Array:
    """The dense ``(m, n)`` view of a sparse result: a dask array whose every
    chunk is a slice of `ResultStore.sparse` made dense when it is computed."""
    m, n = store.shape
    chunks = da.core.normalize_chunks((_VIEW_CHUNK, _VIEW_CHUNK), (m, n))
    dtype = store.dtype

    def block(block_info=None):
        (r0, r1), (c0, c1) = block_info[None]["array-location"]
        return store.sparse()[r0:r1, c0:c1].toarray().astype(dtype, copy=False)

    return da.map_blocks(block, chunks=chunks, dtype=dtype, meta=np.empty((0, 0), dtype))


def open_result(store: Any) -> Result:
    """Open a stored result (a local path or any store/URL zarr v3 accepts).

    **Raises:** `pipeline.StoreError` when there is no result there.
    """
    return Result(ResultStore.open(store))
