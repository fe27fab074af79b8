"""`ResultStore`: one result group, read and written."""

from __future__ import annotations

import contextlib
import math
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psutil
import zarr
from zarr.core.sync import sync

from diffops_core.internal import BlockPlan, InputValueError, Layout, format_iec

from .._errors import NotEnoughMemoryError, StoreError
from ._chunks import plain_bytes, read_json, read_region, write_json, write_plain_array
from ._format import (
    CHECKSUM,
    FACTOR,
    FORMAT,
    NONFINITE,
    RECORD_FIELDS,
    RUNS_KEPT,
    SQUARE,
    STATE,
    checksum,
    chunk_shape,
    layouts,
    now,
)
from ._location import (
    PARTIAL,
    Files,
    local_path,
    normalise_location,
    read_group_json,
    remove_ours,
)
from ._lock import lease_alive, lock_is_free
from ._sparse import COMPRESSED, pattern_arrays, probes_of, read_sparsity, recover_matrix

__all__ = ["ResultStore"]

_OVERWRITE_HINT = "pass overwrite=True (diffops run --overwrite) to recompute it"


class ResultStore:
    """Read and write one result group. Create with `create` or `open`."""

    def __init__(self, group: zarr.Group, location):
        self.group = group
        self.location = location
        self.meta: dict[str, Any] = dict(group.attrs.get("diffops", {}))  # type: ignore[arg-type]
        where = local_path(location) or location
        if not self.meta:
            raise StoreError(f"{location!r} is a Zarr group but holds no diffops result")
        if self.meta.get("format") != FORMAT:
            raise StoreError(
                f"{location!r} was written in diffops store format {self.meta.get('format')}; "
                f"this version reads format {FORMAT}: {_OVERWRITE_HINT}"
            )
        if not self.meta.get("ready", False):
            raise StoreError(
                f"{location!r} is a diffops store whose creation was interrupted; "
                "run the computation again to recreate it"
            )
        self.plan = BlockPlan.from_json(self.meta["plan"])
        #: The sparse result's pattern and compressed format (None: dense).
        self.sparsity_meta: dict | None = self.meta.get("sparsity")
        self._sparse: Any = None
        self._sparsity: Any = None
        data = COMPRESSED if self.sparsity_meta else "matrix"
        arrays = {}
        for name in (data, "blocks"):
            try:
                arrays[name] = group[name]
            except Exception as err:  # noqa: BLE001 - missing or unreadable array metadata
                raise StoreError(
                    f"cannot read {where}/{name}/zarr.json ({type(err).__name__}: {err}); the "
                    f"store's metadata is damaged: {_OVERWRITE_HINT}"
                ) from None
        #: The blocked array: the matrix, or a sparse result's compressed products.
        self.data: zarr.Array = arrays[data]  # type: ignore[assignment]
        self.records: zarr.Array = arrays["blocks"]  # type: ignore[assignment]
        self._check_arrays(where)

    @property
    def matrix(self) -> zarr.Array:
        """The stored ``(m, n)`` matrix of a dense result.

        **Raises:** `StoreError` for a sparse result, which holds no dense matrix
        (read it with `sparse` or `assemble`)."""
        if self.sparsity_meta:
            raise StoreError(
                f"{self.location!r} holds a sparse result (compressed products of a "
                "colouring), not a dense matrix: read it with Result.sparse(), or the dense "
                "views (Result.array, assemble, to_pytree)"
            )
        return self.data

    @property
    def is_sparse(self) -> bool:
        return bool(self.sparsity_meta)

    def _check_arrays(self, where) -> None:
        """The arrays' own metadata agrees with the store's: shape, dtype, chunk
        edges on block edges, one record per block. **Raises:** `StoreError`."""
        meta, plan, data = self.meta, self.plan, self.data
        shape = tuple(int(v) for v in meta.get("shape") or ())
        if self.sparsity_meta:
            shape = tuple(int(v) for v in self.sparsity_meta.get("compressed_shape") or ())
        axis = int(meta.get("axis", 1))
        name = data.basename
        found = [] if len(shape) == 2 else [f"shape {shape} is not two numbers"]
        if tuple(data.shape) != shape:
            found.append(f"{name} shape {tuple(data.shape)}, not {shape}")
        if np.dtype(data.dtype).name != meta.get("dtype"):
            found.append(f"{name} dtype {np.dtype(data.dtype).name}, not {meta.get('dtype')}")
        off_plan = len(shape) == 2 and plan.extent != shape[axis]
        if int(data.chunks[axis]) != plan.block_size or off_plan:
            found.append(f"{name} chunks {tuple(data.chunks)} off the block plan")
        if tuple(self.records.shape) != (plan.n_blocks, len(RECORD_FIELDS)):
            found.append(f"records shape {tuple(self.records.shape)}, not ({plan.n_blocks}, 5)")
        if found:
            raise StoreError(
                f"the arrays of {where} disagree with its metadata ({'; '.join(found)}): the "
                f"store's metadata is damaged: {_OVERWRITE_HINT}"
            )

    # -- construction -------------------------------------------------------------

    @classmethod
    def open(cls, location, mode: str = "r") -> ResultStore:
        """Open an existing result.

        **Raises:** `StoreError` when there is none, or it cannot be read (the
        message names the file).
        """
        location = normalise_location(location)
        path = local_path(location)
        if path is not None:
            if not os.path.exists(os.path.join(path, "zarr.json")):
                raise StoreError(f"no diffops result at {location!r} (no zarr.json there)")
            read_group_json(path)  # one line naming the file when it is damaged
        try:
            # our own metadata, never a consolidated copy of it
            group = zarr.open_group(location, mode=mode, use_consolidated=False)  # type: ignore[arg-type]
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise StoreError(f"no diffops result at {location!r}: {err}") from None
        return cls(group, location)

    @classmethod
    def create(
        cls,
        location,
        *,
        meta: dict,
        shape,
        dtype,
        axis: int,
        block_size: int,
        compressor: str | None = None,
        sparsity: Any = None,
    ) -> ResultStore:
        """Create a new result group where `inspect` found nothing, or ours.

        The caller holds the lock and has decided that what is there may go.
        The group and its metadata (``ready: false``) are written at once; the
        arrays follow; ``ready`` turns true last. ``sparsity`` (a
        `diffops_core.Sparsity`, with ``meta["sparsity"]``): a sparse result,
        whose compressed products take the matrix's place (`_sparse`).
        """
        location = normalise_location(location)
        path = local_path(location)
        attrs: dict[str, Any] = {
            "diffops": {
                **meta,
                "format": FORMAT,
                "record_fields": list(RECORD_FIELDS),
                "runs": [],
                "ready": False,
            }
        }
        remove_ours(location)  # only what we wrote: a user's files beside it stay
        if path is None:
            group = zarr.open_group(location, mode="a", attributes=attrs, use_consolidated=False)
        else:
            os.makedirs(path, exist_ok=True)
            group = zarr.open_group(path, mode="a", attributes=attrs, use_consolidated=False)
        _create_arrays(group, meta, tuple(shape), dtype, axis, block_size, compressor)
        ready = {**attrs["diffops"], "ready": True}
        extra = pattern_arrays(sparsity) if sparsity is not None else []
        if path is None:
            _write_coordinates(group, meta, extra)
            group.attrs["diffops"] = ready
        else:
            _finish_local(path, meta, ready, extra)
            group = zarr.open_group(path, mode="r+", use_consolidated=False)
        return cls(group, location)

    # -- metadata -----------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def axis(self) -> int:
        return int(self.meta["axis"])

    @property
    def in_layout(self) -> Layout:
        return Layout.from_json(self.meta["in_layout"])

    @property
    def out_layout(self) -> Layout:
        return Layout.from_json(self.meta["out_layout"])

    def save_meta(self, consolidate: bool = True):
        """Write the metadata; with ``consolidate``, also the consolidated copy other
        readers (xarray) use. A run consolidates when it ends: a store killed
        mid-run reads fine without it, only more slowly."""
        path = local_path(self.location)
        if path is None:
            self.group.attrs["diffops"] = self.meta
            if consolidate:
                _consolidate(self.location)
            return
        # the group's own document, rewritten whole (zarr would drop the
        # consolidated metadata it holds, and cost a few ms more)
        name = os.path.join(path, "zarr.json")
        doc = read_json(name)
        doc["attributes"] = {**doc.get("attributes", {}), "diffops": self.meta}
        write_json(name, doc)
        listed = (doc.get("consolidated_metadata") or {}).get("metadata") or {}
        stale = not listed or (os.path.isdir(os.path.join(path, FACTOR)) and FACTOR not in listed)
        if consolidate and stale:
            _consolidate(self.location)

    def start_run(self, blocks_todo: int) -> int:
        """Append a run to the history (status ``running``); its 1-based number.

        The history keeps the last `RUNS_KEPT` runs; ``runs_total`` counts them all.
        """
        runs = self.meta.setdefault("runs", [])
        for run in runs:  # a run still 'running' was killed before it could say so
            if run.get("status") == "running":
                run["status"] = "interrupted"
        number = self.runs_total + 1
        runs.append(
            {
                "run": number,
                "start": now(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "blocks_todo": blocks_todo,
                "status": "running",
            }
        )
        del runs[:-RUNS_KEPT]
        self.meta["runs_total"] = number
        self.save_meta(consolidate=False)
        return number

    def runs(self) -> list[dict]:
        """The run history; a run still marked running was killed before it
        could say so, and reads ``interrupted``, when no live run lease is on the
        store (any backend, any host), or, on a local store, when it ran on this
        host and nobody holds the lock."""
        runs = [dict(r) for r in self.meta.get("runs") or [] if isinstance(r, dict)]
        here = socket.gethostname()
        running = [r for r in runs if r.get("status") == "running"]
        if not running:
            return runs
        if lease_alive(self.location) is False:  # no live lease, on any backend: all gone
            dead = running
        else:
            mine = [r for r in running if r.get("host") == here]
            dead = mine if mine and lock_is_free(self.location) else []
        if dead:
            for run in dead:
                run["status"] = "interrupted"
                run.setdefault("error", "the process ended without recording an end")
        return runs

    @property
    def runs_total(self) -> int:
        """How many runs this store has seen (the history keeps the last few)."""
        runs = self.meta.get("runs") or []
        last = max((int(r.get("run", 0)) for r in runs if isinstance(r, dict)), default=0)
        return max(int(self.meta.get("runs_total", 0)), last)

    def end_run(self, run: int, **fields):
        for entry in self.meta.get("runs") or []:
            if entry.get("run") == run:
                entry.update(fields, end=now())
        self.save_meta()

    # -- records and data ---------------------------------------------------------

    def read_records(self) -> np.ndarray:
        return read_region(self.records, slice(None), slice(None))

    def _block_chunk_keys(self, index: int) -> list[str]:
        grid = self.data._chunk_grid_shape
        other = grid[1 - self.axis]
        coords = [(i, index) if self.axis == 1 else (index, i) for i in range(other)]
        return [f"{self.data.path}/{self.data.metadata.encode_chunk_key(c)}" for c in coords]

    def _present_keys(self) -> set[str]:
        """The matrix's chunk keys that hold a chunk: where chunks are stored
        uncompressed, only those of a whole chunk's size (a truncated chunk is
        missing), on every backend; compressed, any non-empty one."""
        prefix = f"{self.data.path}/"
        size = math.prod(self.data.chunks) * self.data.dtype.itemsize
        exact = plain_bytes(self.data)
        listing = Files(self.location).listing(self.data.path)
        return {
            key
            for key, got in listing.items()
            if key.startswith(prefix) and ((got == size) if exact else got > 0)
        }

    def data_present(self) -> np.ndarray:
        """Per block: whether every data chunk of it exists in the store (at its
        full size, where chunks are stored uncompressed)."""
        present = self._present_keys()
        return np.array(
            [
                all(k in present for k in self._block_chunk_keys(i))
                for i in range(self.plan.n_blocks)
            ],
            dtype=bool,
        )

    def recorded_mask(self, records: np.ndarray | None = None) -> np.ndarray:
        """Per block: whether its completion record says complete."""
        records = self.read_records() if records is None else records
        return records[:, STATE] == 1

    def done_mask(self, records: np.ndarray | None = None) -> np.ndarray:
        """Per block: complete, i.e. recorded complete and every data chunk present."""
        return self.recorded_mask(records) & self.data_present()

    def todo(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.done_mask())]

    def status(self) -> dict:
        """``blocks_total``, ``blocks_done``, ``complete``, ``runs``, the blocks
        holding non-finite values, and ``missing_data``: blocks recorded complete
        whose data chunks are gone (they count as not done; a run recomputes them).
        A block is done only when its record says so and all its chunks exist."""
        records = self.read_records()
        recorded = self.recorded_mask(records)
        done = recorded & self.data_present()
        return {
            "blocks_total": int(done.size),
            "blocks_done": int(done.sum()),
            "complete": bool(done.all()),
            "runs": self.runs_total,
            "nonfinite_blocks": [
                int(i) for i in np.flatnonzero(done & (records[:, NONFINITE] > 0))
            ],
            "missing_data": [int(i) for i in np.flatnonzero(recorded & ~done)],
        }

    def verify(self, workers: int = 4) -> list[int]:
        """Re-read every block recorded complete and compare its checksum.

        **Returns:** the indices of blocks whose data no longer match their record
        (unreadable blocks and missing chunks count as bad). **Raises:**
        `StoreError` for a sparse result whose stored pattern or colours are not
        those it was computed with (no block repair mends them).
        """
        records = self.read_records()
        done = np.flatnonzero(self.recorded_mask(records))
        present = self.data_present()

        def check(index: int) -> int | None:
            if not present[index]:
                return index
            try:
                data = read_region(self.data, *self.block_region(index))
            except Exception:  # noqa: BLE001 - a chunk that no longer decodes is bad
                return index
            return None if checksum(data) == int(records[index, CHECKSUM]) else index

        with ThreadPoolExecutor(max_workers=workers) as pool:
            bad = [i for i in pool.map(check, (int(i) for i in done)) if i is not None]
        if self.sparsity_meta:  # the pattern and colours, against their digests (raises)
            read_sparsity(self.group, self.meta, local_path(self.location) or self.location)
        return sorted(bad)

    @property
    def shape(self) -> tuple[int, int]:
        """The matrix's ``(m, n)`` (a sparse result's too: not its compressed products')."""
        if self.sparsity_meta:
            m, n = self.sparsity_meta["shape"]
        else:
            m, n = self.data.shape
        return int(m), int(n)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the dense ``(m, n)`` matrix."""
        return math.prod(self.shape) * self.dtype.itemsize

    def records_digest(self) -> str:
        """A digest of every block's record (state and checksum): the state of the data."""
        import hashlib

        records = np.ascontiguousarray(self.read_records()[:, [STATE, CHECKSUM]])
        return hashlib.sha256(records.astype("<i8").tobytes()).hexdigest()

    @property
    def checked(self) -> bool:
        """Whether the data needs no check before it is read: dense, or sparse
        and checked against products of random vectors for exactly the blocks stored
        now."""
        return not self.sparsity_meta or self._passed(self.records_digest())

    def _passed(self, state: str) -> bool:
        """Whether a sparse result's check passed for the block records ``state``."""
        check = (self.sparsity_meta or {}).get("check") or {}
        return bool(check.get("passed")) and check.get("blocks") == state

    def sparsity(self, read: tuple[str, Any] | None = None):
        """A sparse result's pattern and colouring (a `diffops_core.Sparsity`),
        checked against the digests it was computed with. ``read``: (the
        sparsity metadata's ``digest``, the pattern) this process read and
        checked against it a moment ago, taken while the digest is the same.

        **Raises:** `StoreError` for a dense result or a damaged pattern."""
        if not self.sparsity_meta:
            raise StoreError(f"{self.location!r} holds a dense result: it has no sparsity pattern")
        if self._sparsity is None and read is not None and read[0] == self.sparsity_meta["digest"]:
            self._sparsity = read[1]
        if self._sparsity is None:  # written once, at creation: read once (its plan kept)
            where = local_path(self.location) or self.location
            self._sparsity = read_sparsity(self.group, self.meta, where)
        return self._sparsity

    def keep_checked(self, matrix) -> None:
        """Keep ``matrix``, just checked for the blocks stored now, for `sparse`."""
        self._sparse = (self.records_digest(), matrix)

    def sparse(self, checked: bool = True):
        """The whole matrix as a `scipy.sparse.csr_array` (a dense result's too),
        read once and kept: for a sparse result, recovered from its products,
        only once every block is complete and the result has passed its check
        against products of random vectors for exactly the blocks stored now (without
        ``checked``: for the check itself, see `unchecked`).

        **Raises:** `ValueError` when blocks are missing or the check has not
        passed; `StoreError` for a damaged pattern; `NotEnoughMemoryError` for a
        dense result that would not fit."""
        import scipy.sparse as sp

        state = self.records_digest()
        if self._sparse is not None and self._sparse[0] == state:
            return self._sparse[1]
        self._require_complete()
        if not self.sparsity_meta:
            return sp.csr_array(self.assemble())
        if checked and not self._passed(state):
            raise InputValueError(
                f"the sparse result at {self.location!r} has not passed its check against "
                "products of random vectors for the blocks stored now; run the computation "
                "again (it checks a complete store before it reports it)"
            )
        matrix = self._recovered()[0]
        if checked:
            self._sparse = (state, matrix)
        return matrix

    def unchecked(self):
        """A complete sparse result, for its check: the matrix recovered from its
        products (each block compared with its checksum), and the stored
        products of the check's probe vectors, ``(count, m)`` (None: the store
        keeps none, a row colouring's; see `_sparse.probes_of`).

        **Raises:** as `sparse`."""
        self._require_complete()
        return self._recovered()

    def _recovered(self):
        """`unchecked`, the store known to be complete."""
        sparsity = self.sparsity()
        compressed = self._verified_products()
        matrix = recover_matrix(sparsity, compressed)
        count, _seed = probes_of(self.sparsity_meta or {})
        if not count:
            return matrix, None
        ncolors = sparsity.ncolors
        return matrix, np.ascontiguousarray(compressed[:, ncolors : ncolors + count].T)

    def _verified_products(self) -> np.ndarray:
        """A sparse result's compressed products, block by block, each compared
        with its record's checksum as the dense readers do: a block rewritten
        since, or whose chunk no longer decodes, is refused, never read.

        **Raises:** `StoreError` naming the blocks and the way out."""
        records = self.read_records()
        out = np.empty(self.data.shape, np.dtype(self.data.dtype))
        bad = []
        for index in range(self.plan.n_blocks):
            region = self.block_region(index)
            try:
                data = read_region(self.data, *region)
            except Exception:  # noqa: BLE001 - a chunk that no longer decodes is bad
                bad.append(index)
                continue
            if checksum(data) != int(records[index, CHECKSUM]):
                bad.append(index)
                continue
            out[region] = data
        if bad:
            raise StoreError(
                f"blocks {bad[:8]}{' ...' if len(bad) > 8 else ''} of {self.location!r} no "
                "longer match their checksums (or no longer decode), so the sparse matrix is "
                "not recovered from them; run diffops verify --repair on the store, then try "
                "again"
            )
        return out

    def _require_complete(self) -> None:
        status = self.status()
        if not status["complete"]:
            raise InputValueError(
                f"the result at {self.location!r} is incomplete ({status['blocks_done']}/"
                f"{status['blocks_total']} blocks); run it again to finish it first"
            )

    def assemble(self) -> np.ndarray:
        """The whole matrix in memory.

        **Raises:** `NotEnoughMemoryError` when it would not fit in available
        memory; `ValueError` when blocks are missing.
        """
        self._require_complete()
        available = psutil.virtual_memory().available
        if self.nbytes > 0.8 * available:
            raise NotEnoughMemoryError(
                f"assembling needs {format_iec(self.nbytes)} but only {format_iec(available)} "
                "is available; use .array (lazy, dask) or .to_pytree() to work block by block"
            )
        if self.sparsity_meta:
            return self.sparse().toarray()
        return np.asarray(self.data[...])

    def layouts(self, x=None) -> tuple[Layout, Layout]:
        """The (row, column) flat layouts; with ``x``, its structure for the columns.

        **Raises:** `ValueError` when ``x``'s leaf key paths or shapes differ from the
        stored ones.
        """
        rows, cols = layouts(self.meta)
        if x is None:
            return rows, cols
        given = Layout.from_pytree(x, check_float=False)
        ours = [(s.path, s.shape) for s in cols.leaves]
        theirs = [(s.path, s.shape) for s in given.leaves]
        if theirs != ours:
            raise InputValueError(
                f"x has leaves {_describe(theirs)}, but the stored result was computed for "
                f"{_describe(ours)}; pass an x with the same key paths and shapes, or none"
            )
        return (given if self.meta["operation"] in SQUARE else rows), given

    def coordinates(self) -> list[tuple[str, str, np.ndarray, str]]:
        """(name, dimension, values, description) of the coordinate arrays of
        the ``(m, n)`` matrix (those stored beside it, for readers without us)."""
        return _coordinate_arrays(self.meta)

    def matrix_attrs(self) -> dict:
        """The plain attributes of the ``(m, n)`` matrix (leaf names and shapes)."""
        return _matrix_attrs({**self.meta, "sparsity": None})

    def block_region(self, index: int):
        block = self.plan.block(index)
        cols = slice(block.start, block.stop)
        return (slice(None), cols) if self.axis == 1 else (cols, slice(None))

    def clear_record(self, index: int):
        self.records[index, :] = 0

    # -- housekeeping -------------------------------------------------------------

    def remove_partial_files(self) -> int:
        """Delete the temporary files a killed writer leaves in our arrays (local stores)."""
        path = local_path(self.location)
        if path is None:
            return 0
        found = [
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.startswith("zarr.") and PARTIAL.search(name)
        ]
        for array in ("matrix", COMPRESSED, "blocks", "factor"):  # factor: `pipeline.linalg`
            for root, _dirs, files in os.walk(os.path.join(path, array)):
                found += [os.path.join(root, name) for name in files if PARTIAL.search(name)]
        for name in found:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        return len(found)


def _create_arrays(
    group: zarr.Group,
    meta: dict,
    shape: tuple,
    dtype,
    axis: int,
    block_size: int,
    compressor: str | None,
) -> None:
    """The matrix (fill value NaN; a sparse result's compressed products in its
    place) and the completion records of a new store."""
    n_blocks = meta["plan"]["n_blocks"]
    sparse = meta.get("sparsity")
    chunks = chunk_shape(tuple(shape), axis, block_size, np.dtype(dtype).itemsize)
    compressors: Any = None
    if compressor:
        compressors = (
            [{"name": "zstd", "configuration": {"level": 3, "checksum": False}}]
            if compressor == "zstd"
            else compressor
        )
    if sparse:
        dims = ("color", "column") if sparse["mode"] == "row" else ("row", "color")
    else:
        dims = ("row", "column")
    group.create_array(
        COMPRESSED if sparse else "matrix",
        shape=tuple(shape),
        chunks=chunks,
        dtype=dtype,
        fill_value=float("nan"),
        compressors=compressors,
        config={"write_empty_chunks": True},
        dimension_names=dims,
        attributes=_matrix_attrs(meta),
    )
    group.create_array(
        "blocks",
        shape=(n_blocks, len(RECORD_FIELDS)),
        chunks=(1, len(RECORD_FIELDS)),
        dtype="int64",
        fill_value=0,
        compressors=None,
        dimension_names=("block", "field"),
        config={"write_empty_chunks": True},
    )


def _matrix_attrs(meta: dict) -> dict:
    """Plain attributes of ``matrix`` (beside the group's diffops metadata)."""
    rows, cols = layouts(meta)
    what = {
        "hessian": "Hessian of f",
        "gauss_newton": "Gauss-Newton matrix (J^T W J) of f",
        "covariance": "covariance (inverse) of a stored matrix",
    }.get(meta["operation"], "Jacobian of f")
    sparse = meta.get("sparsity")
    if sparse:
        what = (
            f"compressed products ({sparse['mode']} colouring, {sparse['ncolors']} colours) of "
            f"the {what}; recover it with diffops (Result.sparse)"
        )
    return {
        "long_name": f"{what}, {meta['op']} blocks of the flat parameters",
        "operation": meta["operation"],
        "row_leaves": [leaf.path or "(root)" for leaf in rows.leaves],
        "row_leaf_shapes": [list(leaf.shape) for leaf in rows.leaves],
        "column_leaves": [leaf.path or "(root)" for leaf in cols.leaves],
        "column_leaf_shapes": [list(leaf.shape) for leaf in cols.leaves],
        "coordinates": "row_leaf row_index column_leaf column_index",
        "missing": "NaN where a block has not been computed",
    }


def _leaf_coordinates(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    sizes = [leaf.size for leaf in layout.leaves]
    leaf = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
    index = np.concatenate([np.arange(s, dtype=np.int64) for s in sizes])
    return leaf, index


def _coordinate_arrays(meta: dict) -> list[tuple[str, str, np.ndarray, str]]:
    """(name, dimension, values, description) of each coordinate array."""
    rows, cols = layouts(meta)
    arrays = []
    for axis, layout in (("row", rows), ("column", cols)):
        leaf, index = _leaf_coordinates(layout)
        arrays += [
            (axis, axis, np.arange(layout.n, dtype=np.int64), f"{axis} of the matrix"),
            (
                f"{axis}_leaf",
                axis,
                leaf,
                f"leaf of each {axis}: an index into matrix.{axis}_leaves",
            ),
            (f"{axis}_index", axis, index, f"flat (C-order) index of each {axis} within its leaf"),
        ]
    return arrays


def _write_coordinates(group: zarr.Group, meta: dict, extra: list) -> None:
    """The coordinate arrays (and ``extra`` ones: a sparse result's pattern) of a
    store that is not local, created and written concurrently (one event loop
    round instead of twelve sequential metadata and chunk writes)."""
    import asyncio

    arrays = _coordinate_arrays(meta) + list(extra)

    async def one(name, axis, values, description):
        array = await group._async_group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=values.shape,
            dimension_names=(axis,),
            attributes={"description": description},
            compressors=None,
        )
        await array.setitem(Ellipsis, values)

    async def all_of_them():
        await asyncio.gather(*(one(*spec) for spec in arrays))

    sync(all_of_them())


def _finish_local(path: str, meta: dict, ready: dict, extra: list) -> None:
    """A new local store's coordinate arrays (and ``extra`` ones), then its group
    document in one write: ``ready``, with the consolidated metadata of every
    array."""
    children = _write_local_coordinates(path, meta, extra)
    for name in (COMPRESSED if meta.get("sparsity") else "matrix", "blocks"):
        children[name] = read_json(os.path.join(path, name, "zarr.json"))
    doc = read_json(os.path.join(path, "zarr.json"))
    doc["attributes"] = {**doc.get("attributes", {}), "diffops": ready}
    doc["consolidated_metadata"] = {"kind": "inline", "must_understand": False,
                                    "metadata": children}  # fmt: skip
    write_json(os.path.join(path, "zarr.json"), doc)


def _write_local_coordinates(path: str, meta: dict, extra: list) -> dict[str, dict]:
    """The coordinate arrays (and ``extra`` ones) of a new local store, written
    as their files; their metadata documents by name."""
    return {
        name: write_plain_array(path, name, values, {"description": text}, axis)
        for name, axis, values, text in _coordinate_arrays(meta) + list(extra)
    }


def _consolidate(location) -> None:
    """Consolidated metadata for readers such as xarray (we read our own, never it)."""
    import warnings

    with warnings.catch_warnings():
        # the run lock and lease, and a user's files, live beside the arrays: zarr
        # notes that they are not arrays
        warnings.filterwarnings("ignore", message=r"Object at .* is not recognized as a comp")
        # zarr's notice that consolidated metadata is not (yet) in the v3 spec:
        # xarray and other readers use it, and nothing of ours depends on it
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(location)


def _describe(leaves) -> str:
    text = ", ".join(f"{path or '(root)'} {shape}" for path, shape in leaves[:6])
    return f"[{text}{', ...' if len(leaves) > 6 else ''}]"
