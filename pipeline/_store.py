"""The store: one Zarr v3 group per result, and only ever ours.

Layout of the group:

- ``matrix``: the ``(m, n)`` array, fill value NaN: a chunk never written reads
  as NaN, never as zeros. Chunks are ``(rows, block_size)`` for column slabs
  (``(block_size, cols)`` for row slabs), so chunk edges along the block axis
  fall exactly on block edges: each task writes whole chunks that no other task
  touches.
- ``blocks``: the completion records, ``(n_blocks, 5)`` int64 with one chunk per
  block: ``[state, crc32 of the data written, milliseconds, run, non-finite count]``.
  A record is written only after the block's data. A block counts as complete
  when its ``state`` is 1 *and* every data chunk of it exists (Zarr skips
  all-zero chunks unless told otherwise, so chunk presence alone is no record;
  a record alone does not survive a deleted chunk).
- group attributes, key ``diffops``: JSON metadata (operation, shapes, dtype,
  block plan, flat layouts of x and f(x), fingerprint, run history), with
  ``ready: false`` from the moment the group exists until both arrays do. The
  group and its attributes are written in one atomic write, so a store killed
  while being created is recognisably ours.

What we create in a store's directory: `OUR_NAMES`. Nothing else there is ever
deleted; a non-empty directory that is not recognisably ours is refused, even
with ``overwrite``. No pickles are stored.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import shutil
import socket
import sys
import threading
import zlib
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from diffops_core.internal import BlockPlan, InputError, Layout

__all__ = [
    "OUR_NAMES",
    "RECORD_FIELDS",
    "ResultStore",
    "RunLock",
    "StoreError",
    "checksum",
    "inspect",
    "local_path",
    "normalise_location",
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
#: Everything a store's directory may hold that we made (and so may remove).
#: Coordinate arrays, for tools that read the store without diffops (xarray):
#: ``row``/``column`` (positions), ``*_leaf`` (the leaf of each row/column, an
#: index into the ``row_leaves``/``column_leaves`` attributes of ``matrix``) and
#: ``*_index`` (the flat index within that leaf).
COORDINATES = ("row", "column", "row_leaf", "row_index", "column_leaf", "column_index")
#: ``factor``: the Cholesky factor of a square matrix (`pipeline._factor`).
OUR_NAMES = frozenset({"zarr.json", "matrix", "blocks", LOCK_NAME, "factor", *COORDINATES})
_OVERWRITE_HINT = "pass overwrite=True (diffops run --overwrite) to recompute it"
# zarr's local store writes through "<name>.<uuid hex>.partial" and renames
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


class StoreError(InputError, ValueError):
    """The store cannot be used as asked (wrong contents, locked, unreadable)."""


def checksum(values: np.ndarray) -> int:
    """CRC-32 of an array's C-order bytes."""
    data = np.ascontiguousarray(values).view(np.uint8).reshape(-1).data
    return zlib.crc32(data) & 0xFFFFFFFF


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def normalise_location(store):
    """A local store as a plain path (``file://`` URLs included); others unchanged."""
    if isinstance(store, os.PathLike):
        return os.fspath(store)
    if isinstance(store, str) and store.startswith("file://"):
        return store[len("file://") :] or "/"
    return store


def local_path(store) -> str | None:
    """The filesystem path of a local store, else None."""
    store = normalise_location(store)
    if isinstance(store, str):
        return None if "://" in store else store
    if isinstance(store, zarr.storage.LocalStore):
        return str(store.root)
    return None


def overlapping(a, b) -> bool:
    """Whether two store locations are one, or one lies inside the other (local
    paths resolved: ``x.zarr/``, ``./x.zarr`` and links are the same place)."""
    pa, pb = local_path(a), local_path(b)
    if pa is None or pb is None:
        na, nb = str(normalise_location(a)).rstrip("/"), str(normalise_location(b)).rstrip("/")
        return na == nb or na.startswith(nb + "/") or nb.startswith(na + "/")
    ra, rb = os.path.realpath(pa), os.path.realpath(pb)
    return ra == rb or ra.startswith(rb + os.sep) or rb.startswith(ra + os.sep)


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


# -- what is at a location ------------------------------------------------------------


def _read_group_json(path: str) -> dict:
    """The group's zarr.json. **Raises:** `StoreError` naming the file."""
    name = os.path.join(path, "zarr.json")
    try:
        with open(name) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise StoreError(f"cannot read {name}: {err}") from None
    if not isinstance(data, dict):
        raise StoreError(f"cannot read {name}: not a JSON object")
    return data


def _is_ours(attrs) -> bool:
    """Whether a group's attributes say diffops wrote it: a ``diffops`` object
    carrying a store format number."""
    meta = attrs.get("diffops") if isinstance(attrs, dict) else None
    return isinstance(meta, dict) and isinstance(meta.get("format"), int)


def inspect(location) -> str:
    """What is at ``location``, before we touch it.

    **Returns:** one of

    - ``"absent"``: nothing there (or an empty directory, or only our lock
      file): free to create;
    - ``"ours"``: a group whose own metadata says diffops, with a store format
      number (possibly not ready, or of another format);
    - ``"foreign"``: anything else, a group whose metadata cannot be read
      included; never written to or deleted. (A creation of ours writes the
      group and its diffops metadata in one write, before anything else, so
      nothing of ours is ever without them.)
    """
    path = local_path(location)
    if path is None:
        try:
            group = zarr.open_group(location, mode="r", use_consolidated=False)
        except Exception:  # noqa: BLE001 - nothing readable there: zarr's "w-" guards the rest
            return "absent"
        return "ours" if _is_ours(group.attrs.asdict()) else "foreign"
    if not os.path.lexists(path):
        return "absent"
    if not os.path.isdir(path) or os.path.islink(path):
        return "foreign"
    names = {
        name
        for name in os.listdir(path)
        if not _PARTIAL.search(name) or not name.startswith("zarr.")
    }
    if not names - {LOCK_NAME}:
        return "absent"
    if "zarr.json" not in names:
        return "foreign"
    try:
        attrs = _read_group_json(path).get("attributes") or {}
    except StoreError:
        return "foreign"
    return "ours" if _is_ours(attrs) else "foreign"


def read_meta(location) -> dict:
    """The diffops metadata of a store `inspect` calls ours, without opening its arrays."""
    path = local_path(location)
    if path is not None:
        attrs = _read_group_json(path).get("attributes") or {}
    else:
        attrs = zarr.open_group(location, mode="r", use_consolidated=False).attrs.asdict()
    meta = attrs.get("diffops") if isinstance(attrs, dict) else None
    if not isinstance(meta, dict):
        raise StoreError(f"{location!r}: the diffops metadata is not a JSON object")
    return meta


def describe_foreign(location) -> str:
    path = local_path(location)
    what = ""
    if path is not None and os.path.isdir(path):
        names = sorted(os.listdir(path))
        what = f" (it holds {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        if "zarr.json" in names:
            try:
                _read_group_json(path)
                what += "; its zarr.json has no diffops metadata"
            except StoreError as err:
                what += f"; {err}, so nothing says diffops made it (delete it yourself if so)"
    elif path is not None:
        what = " (it is a file)"
    return (
        f"{location!r} is not empty and is not a diffops store{what}; diffops never writes "
        "into or deletes what it did not create, even with overwrite. Choose a new or "
        "empty directory for the output"
    )


def _written_by_zarr(relative: str) -> bool:
    """Whether a file inside one of our top-level names is one zarr writes for
    us: node metadata, a chunk key (``c/0/3``), or a killed write's temporary."""
    parts = relative.split(os.sep)
    if parts[-1] == "zarr.json" or _PARTIAL.search(parts[-1]):
        return True
    return "c" in parts[:-1] and all(p.isdigit() for p in parts[parts.index("c") + 1 :])


def remove_ours(path: str, names=None) -> list[str]:
    """Delete what we write in a store directory: node metadata and chunk files
    under our own names (never the lock), then the folders left empty. Any
    other file (a user's notes inside ``matrix/``) and its folders stay.

    **Returns:** the files left in place, relative to ``path``.
    """
    kept: list[str] = []
    for name in sorted(OUR_NAMES - {LOCK_NAME} if names is None else names):
        full = os.path.join(path, name)
        if os.path.islink(full):
            continue  # never follow a link out of the store
        if not os.path.isdir(full):
            if name == "zarr.json" and os.path.isfile(full):
                os.unlink(full)
            continue
        for root, _dirs, files in os.walk(full, topdown=False):  # links not followed
            for file in files:
                relative = os.path.relpath(os.path.join(root, file), full)
                if _written_by_zarr(relative):
                    os.unlink(os.path.join(root, file))
                else:
                    kept.append(os.path.join(name, relative))
            with contextlib.suppress(OSError):
                os.rmdir(root)  # only when empty
    return kept


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
        arrays = {}
        for name in ("matrix", "blocks"):
            try:
                arrays[name] = group[name]
            except Exception as err:  # noqa: BLE001 - missing or unreadable array metadata
                raise StoreError(
                    f"cannot read {where}/{name}/zarr.json ({type(err).__name__}: {err}); the "
                    f"store's metadata is damaged: {_OVERWRITE_HINT}"
                ) from None
        self.matrix: zarr.Array = arrays["matrix"]  # type: ignore[assignment]
        self.records: zarr.Array = arrays["blocks"]  # type: ignore[assignment]
        self._check_arrays(where)

    def _check_arrays(self, where) -> None:
        """The arrays' own metadata agrees with the store's: shape, dtype, chunk
        edges on block edges, one record per block. **Raises:** `StoreError`."""
        meta, plan = self.meta, self.plan
        shape = tuple(int(v) for v in meta.get("shape") or ())
        axis = int(meta.get("axis", 1))
        found = [] if len(shape) == 2 else [f"shape {shape} is not two numbers"]
        if tuple(self.matrix.shape) != shape:
            found.append(f"matrix shape {tuple(self.matrix.shape)}, not {shape}")
        if np.dtype(self.matrix.dtype).name != meta.get("dtype"):
            found.append(
                f"matrix dtype {np.dtype(self.matrix.dtype).name}, not {meta.get('dtype')}"
            )
        off_plan = len(shape) == 2 and plan.extent != shape[axis]
        if int(self.matrix.chunks[axis]) != plan.block_size or off_plan:
            found.append(f"matrix chunks {tuple(self.matrix.chunks)} off the block plan")
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
            _read_group_json(path)  # one line naming the file when it is damaged
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
    ) -> ResultStore:
        """Create a new result group where `inspect` found nothing, or ours.

        The caller holds the lock and has decided that what is there may go.
        The group and its metadata (``ready: false``) are written at once; the
        arrays follow; ``ready`` turns true last.
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
        if path is None:
            mode: Any = "w" if inspect(location) == "ours" else "w-"
            group = zarr.open_group(location, mode=mode, attributes=attrs, use_consolidated=False)
        else:
            remove_ours(path)
            os.makedirs(path, exist_ok=True)
            group = zarr.open_group(path, mode="a", attributes=attrs, use_consolidated=False)
        _create_arrays(group, meta, tuple(shape), dtype, axis, block_size, compressor)
        _write_coordinates(group, meta)
        group.attrs["diffops"] = {**attrs["diffops"], "ready": True}
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
        self.group.attrs["diffops"] = self.meta
        if consolidate:
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
        """The run history; a run of this host still marked running whose lock
        nobody holds was killed before it could say so: it reads ``interrupted``."""
        runs = [dict(r) for r in self.meta.get("runs") or [] if isinstance(r, dict)]
        here = socket.gethostname()
        dead = [r for r in runs if r.get("status") == "running" and r.get("host") == here]
        if dead and lock_is_free(self.location):
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
        grid = self.matrix._chunk_grid_shape
        other = grid[1 - self.axis]
        coords = [(i, index) if self.axis == 1 else (index, i) for i in range(other)]
        return [f"{self.matrix.path}/{self.matrix.metadata.encode_chunk_key(c)}" for c in coords]

    def _present_keys(self) -> set[str]:
        """The matrix's chunk keys that hold a chunk: for an uncompressed local
        store, only files of a whole chunk's size (a truncated chunk is missing)."""
        path = local_path(self.location)
        prefix = f"{self.matrix.path}/"
        if path is None:
            store = self.matrix.store

            async def listing():
                return {key async for key in store.list_prefix(prefix)}

            return sync(listing())
        size = math.prod(self.matrix.chunks) * self.matrix.dtype.itemsize
        exact = _plain_bytes(self.matrix)
        root = os.path.join(path, self.matrix.path)
        found = set()
        for base, _dirs, files in os.walk(root):
            for name in files:
                full = os.path.join(base, name)
                try:
                    got = os.stat(full).st_size
                except FileNotFoundError:
                    continue
                if (got == size) if exact else got > 0:
                    found.add(prefix + os.path.relpath(full, root).replace(os.sep, "/"))
        return found

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
            if name.startswith("zarr.") and _PARTIAL.search(name)
        ]
        for array in ("matrix", "blocks", "factor"):  # factor: `pipeline._factor`
            for root, _dirs, files in os.walk(os.path.join(path, array)):
                found += [os.path.join(root, name) for name in files if _PARTIAL.search(name)]
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
    """The matrix (fill value NaN) and the completion records of a new store."""
    n_blocks = meta["plan"]["n_blocks"]
    chunks = chunk_shape(tuple(shape), axis, block_size, np.dtype(dtype).itemsize)
    compressors: Any = None
    if compressor:
        compressors = (
            [{"name": "zstd", "configuration": {"level": 3, "checksum": False}}]
            if compressor == "zstd"
            else compressor
        )
    group.create_array(
        "matrix",
        shape=tuple(shape),
        chunks=chunks,
        dtype=dtype,
        fill_value=float("nan"),
        compressors=compressors,
        config={"write_empty_chunks": True},
        dimension_names=("row", "column"),
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


def _layouts(meta: dict) -> tuple[Layout, Layout]:
    """(rows, columns) of the stored matrix, from its metadata."""
    cols = Layout.from_json(meta["in_layout"])
    rows = cols if meta["operation"] in SQUARE else Layout.from_json(meta["out_layout"])
    return rows, cols


def _matrix_attrs(meta: dict) -> dict:
    """Plain attributes of ``matrix`` (beside the group's diffops metadata)."""
    rows, cols = _layouts(meta)
    what = {
        "hessian": "Hessian of f",
        "gauss_newton": "Gauss-Newton matrix (J^T W J) of f",
        "covariance": "covariance (inverse) of a stored matrix",
    }.get(meta["operation"], "Jacobian of f")
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


def _write_coordinates(group: zarr.Group, meta: dict) -> None:
    """The coordinate arrays, created and written concurrently (one event loop
    round instead of twelve sequential metadata and chunk writes)."""
    import asyncio

    rows, cols = _layouts(meta)
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


def _consolidate(location) -> None:
    """Consolidated metadata for readers such as xarray (we read our own, never it)."""
    import warnings

    with warnings.catch_warnings():
        # the run lock lives beside the arrays; zarr notes that it is not one of them
        warnings.filterwarnings("ignore", message=rf"Object at {LOCK_NAME} is not recognized")
        # zarr's notice that consolidated metadata is not (yet) in the v3 spec:
        # xarray and other readers use it, and nothing of ours depends on it
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(location)


def _plain_bytes(matrix: zarr.Array) -> bool:
    """Whether a chunk of ``matrix`` is stored as its values' C-order bytes: the
    only codec is the bytes codec, little-endian, on a little-endian machine."""
    from zarr.codecs import BytesCodec
    from zarr.codecs.bytes import Endian

    codecs = tuple(matrix.metadata.codecs)  # type: ignore[union-attr]
    return (
        sys.byteorder == "little"
        and len(codecs) == 1
        and isinstance(codecs[0], BytesCodec)
        and codecs[0].endian in (None, Endian.little)
    )


def read_region(array: zarr.Array, rows: slice, cols: slice) -> np.ndarray:
    """``array[rows, cols]`` of a 2-d array. In a local store whose chunks are
    their values' C-order bytes (`_plain_bytes`), each chunk file is read as
    those bytes, as `SlabWriter` writes them (zarr stores edge chunks padded to
    the full chunk shape); zarr's array machinery cost several times the file
    reads (a few hundred small chunks: benchmarks/RESULTS.md, checks). A chunk
    not there, or not of a whole chunk's size, is read through zarr: the fill
    value (NaN for a matrix, never zeros), or zarr's own error."""
    from zarr.storage import LocalStore

    store = array.store
    if not isinstance(store, LocalStore) or not _plain_bytes(array):
        return np.asarray(array[rows, cols])
    (m, n), (cr, cc) = array.shape, array.chunks
    r0, r1 = rows.indices(m)[:2]
    c0, c1 = cols.indices(n)[:2]
    dtype = np.dtype(array.dtype)
    out = np.empty((r1 - r0, c1 - c0), dtype)
    base = os.path.join(str(store.root), *array.path.split("/"))
    encode = array.metadata.encode_chunk_key
    for i in range(r0 // cr, math.ceil(r1 / cr)):
        rs = slice(max(i * cr, r0), min((i + 1) * cr, r1))
        for j in range(c0 // cc, math.ceil(c1 / cc)):
            cs = slice(max(j * cc, c0), min((j + 1) * cc, c1))
            try:
                raw = np.fromfile(os.path.join(base, *encode((i, j)).split("/")), dtype=dtype)
            except FileNotFoundError:
                raw = None
            target = (slice(rs.start - r0, rs.stop - r0), slice(cs.start - c0, cs.stop - c0))
            if raw is None or raw.size != cr * cc:
                out[target] = array[rs, cs]
            else:
                out[target] = raw.reshape(cr, cc)[
                    rs.start - i * cr : rs.stop - i * cr, cs.start - j * cc : cs.stop - j * cc
                ]
    return out


class SlabWriter:
    """Writes a block's slab into the matrix, chunk by chunk.

    A whole chunk of an uncompressed array is written as its encoded bytes (the
    bytes codec's encoding is the values' C-order bytes) through the store, in
    one atomic write as zarr's own; zarr's array machinery (selection, merging
    with the fill value, encoding) cost about as much again as the file write
    (benchmarks/RESULTS.md, pipeline overhead). Edge chunks, which zarr pads to
    the full chunk shape, and compressed arrays go through zarr.
    """

    def __init__(self, matrix: zarr.Array):
        from zarr.storage import LocalStore

        # ``write_empty_chunks`` does not persist: an array opened again skips a
        # chunk equal to the fill value (an all-NaN block), which would never
        # count as written
        self.matrix = matrix.with_config({"write_empty_chunks": True})
        self.raw = _plain_bytes(matrix)
        store = matrix.store
        self.root = str(store.root) if isinstance(store, LocalStore) else None
        self._dirs: set[str] = set()

    def write(self, rows: slice, cols: slice, data: np.ndarray) -> None:
        matrix = self.matrix
        if not self.raw or data.dtype != matrix.dtype or not data.dtype.isnative:
            matrix[rows, cols] = data
            return
        (m, n), (cr, cc) = matrix.shape, matrix.chunks
        r0, r1 = rows.indices(m)[:2]
        c0, c1 = cols.indices(n)[:2]
        for i in range(r0 // cr, math.ceil(r1 / cr)):
            for j in range(c0 // cc, math.ceil(c1 / cc)):
                rs, cs = slice(i * cr, (i + 1) * cr), slice(j * cc, (j + 1) * cc)
                part = data[rs.start - r0 : rs.stop - r0, cs.start - c0 : cs.stop - c0]
                whole = (
                    rs.stop <= min(m, r1)
                    and cs.stop <= min(n, c1)
                    and rs.start >= r0
                    and cs.start >= c0
                )
                if whole:
                    self._put((i, j), np.ascontiguousarray(part))
                else:
                    matrix[rs.start : min(rs.stop, r1), cs.start : min(cs.stop, c1)] = part

    def missing(self, rows: slice, cols: slice) -> list[str]:
        """The chunk keys of a written region that are not in the store (or, stored
        uncompressed, not of a whole chunk's size): what a write failed to leave."""
        matrix = self.matrix
        (m, n), (cr, cc) = matrix.shape, matrix.chunks
        r0, r1 = rows.indices(m)[:2]
        c0, c1 = cols.indices(n)[:2]
        size = cr * cc * matrix.dtype.itemsize
        out = []
        for i in range(r0 // cr, math.ceil(r1 / cr)):
            for j in range(c0 // cc, math.ceil(c1 / cc)):
                key = f"{matrix.path}/{matrix.metadata.encode_chunk_key((i, j))}"
                if self.root is not None:
                    try:
                        got = os.stat(os.path.join(self.root, *key.split("/"))).st_size
                    except FileNotFoundError:
                        got = -1
                    ok = got == size if self.raw else got > 0
                else:
                    ok = bool(sync(matrix.store.exists(key)))
                if not ok:
                    out.append(key)
        return out

    def _put(self, coords: tuple[int, int], chunk: np.ndarray) -> None:
        from zarr.core.buffer import default_buffer_prototype

        key = f"{self.matrix.path}/{self.matrix.metadata.encode_chunk_key(coords)}"
        data = chunk.reshape(-1).view(np.uint8)
        if self.root is not None:
            self._put_file(os.path.join(self.root, *key.split("/")), data)
            return
        buf = default_buffer_prototype().buffer.from_array_like(data)
        sync(self.matrix.store.set(key, buf))

    def _put_file(self, path: str, data: np.ndarray) -> None:
        """Write a local chunk as zarr's local store does: a ``.partial`` file
        beside it (removed by `ResultStore.remove_partial_files` if a crash leaves
        it), renamed into place, so a reader sees the old chunk or the new one."""
        import uuid

        directory = os.path.dirname(path)
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        try:
            with open(partial, "wb") as fh:
                fh.write(data.data)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise


#: A filesystem's allocation unit: every file takes a whole number of them.
PAGE = 4096
#: Group, array and consolidated metadata of a new store (a few kB; generous).
METADATA_BYTES = 256 * 2**10


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


def check_free(location, need: int, what: str) -> None:
    """Refuse, with the numbers, a local store whose disk cannot take ``need``
    more bytes. **Raises:** `StoreError`."""
    from dask.utils import format_bytes

    free = free_disk(location)
    if free is not None and need > free:
        raise StoreError(
            f"{what} needs {format_bytes(need)} more on disk at {location!r}, but only "
            f"{format_bytes(free)} is free there; free space, or choose a store on a larger disk"
        )


def free_disk(location) -> int | None:
    """Free bytes on the filesystem that would hold a local store; None for others."""
    path = local_path(location)
    if path is None:
        return None
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def _kernel_locks() -> set[tuple[int, int, int]] | None:
    """(major, minor, inode) of every file this kernel holds a lock on, from
    ``/proc/locks``; None where there is no such table."""
    try:
        with open("/proc/locks") as fh:
            text = fh.read()
    except OSError:
        return None
    found = set()
    for line in text.splitlines():
        for field in line.split():
            parts = field.split(":")
            if len(parts) == 3 and all(parts):
                with contextlib.suppress(ValueError):
                    found.add((int(parts[0], 16), int(parts[1], 16), int(parts[2])))
                break
    return found


def lock_is_free(location) -> bool:
    """Whether no process on this host holds the lock of a local store, read
    from the kernel's lock table without taking the lock (a probe that took it,
    however briefly, could make a run starting then refuse). False where it
    cannot be told: a remote store, no lock table. A lock taken on another host
    of a network filesystem is not in this host's table: ask only about runs
    of this host."""
    path = local_path(location)
    if path is None:
        return False
    name = os.path.join(path, LOCK_NAME)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    held = _kernel_locks()
    if held is None:
        return False
    return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) not in held


class RunLock:
    """An exclusive OS lock (`filelock`) on ``diffops.lock`` in a local store.

    The kernel releases it when the holding process dies, however it dies, so
    there is no stale lock to guess about on a local filesystem. On a network
    filesystem the lock is only as good as the filesystem's own locking (NFSv4
    leases expire a while after a node dies); ``break_lock=True`` takes over a
    lock that a vanished host still holds: it replaces the lock file, so the
    old holder, if it is in fact alive, no longer excludes anyone. Object
    stores have no lock: run one writer per store there.
    """

    NAME = LOCK_NAME
    #: Locks this process holds, by path: (holding thread, depth, the lock). A
    #: thread that holds a store's lock may take it again (a run's finalize
    #: factorises under the lock the run holds); another thread may not.
    _held: dict[str, tuple[int, int, Any]] = {}
    _held_lock = threading.Lock()

    def __init__(self, location, *, break_lock: bool = False, holder=None):
        path = local_path(location)
        self.directory = path
        # one key per directory, however it is spelt (the reentrant hold is by path)
        self.path = os.path.join(os.path.realpath(path), self.NAME) if path is not None else None
        self.break_lock = break_lock
        self.holder = holder  # a callable describing who holds it, for the message
        self._lock = None

    def acquire(self):
        if self.path is None:  # remote stores: no lock (documented)
            return self
        import filelock

        me = threading.get_ident()
        with RunLock._held_lock:
            held = RunLock._held.get(self.path)
            if held is not None and held[0] == me:
                RunLock._held[self.path] = (me, held[1] + 1, held[2])
                self._lock = held[2]
                return self
        os.makedirs(self.directory, exist_ok=True)
        if self.break_lock:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        lock = filelock.FileLock(self.path, timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            who = self.holder() if self.holder else None
            raise StoreError(
                f"another run{f' ({who})' if who else ''} is writing to {self.directory!r}; "
                "wait for it to finish. If that run is gone but its host still holds the lock "
                "(a network filesystem after a node failed), pass break_lock=True "
                "(diffops run --break-lock)"
            ) from None
        self._lock = lock
        with RunLock._held_lock:
            RunLock._held[self.path] = (me, 1, lock)
        return self

    def release(self):
        if self._lock is None:
            return
        with RunLock._held_lock:
            _thread, depth, lock = RunLock._held[self.path]
            if depth > 1:
                RunLock._held[self.path] = (_thread, depth - 1, lock)
            else:
                del RunLock._held[self.path]
                lock.release()
        self._lock = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
