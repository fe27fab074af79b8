"""The store: one Zarr v3 group per result.

Layout of the group:

- ``matrix``: the ``(m, n)`` array. Chunks are ``(rows, block_size)`` for column
  slabs (``(block_size, cols)`` for row slabs), so chunk edges along the block axis
  fall exactly on block edges: each task writes whole chunks that no other task
  touches.
- ``blocks``: the completion records, ``(n_blocks, 5)`` int64 with one chunk per
  block: ``[state, crc32 of the data written, milliseconds, run, non-finite count]``.
  A block is complete when its ``state`` is 1; a record is written only after the
  block's data, so a block with a record always has its data. (Zarr skips
  all-zero chunks, so the presence of a data chunk is no record.)
- group attributes, key ``diffops``: JSON metadata (operation, shapes, dtype,
  block plan, flat layouts of x and f(x), fingerprint, run history).

No pickles are stored.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import socket
import zlib

import numpy as np
import zarr

from diffops_core import BlockPlan, Layout

__all__ = ["StoreError", "ResultStore", "RECORD_FIELDS", "checksum"]

FORMAT = 1
RECORD_FIELDS = ("state", "checksum", "millis", "run", "nonfinite")
STATE, CHECKSUM, MILLIS, RUN, NONFINITE = range(5)
_CHUNK_TARGET_BYTES = 64 * 2**20


class StoreError(ValueError):
    """The store cannot be used as asked (wrong contents, locked, unreadable)."""


def checksum(values: np.ndarray) -> int:
    """CRC-32 of an array's C-order bytes."""
    return zlib.crc32(np.ascontiguousarray(values).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def local_path(store) -> str | None:
    """The filesystem path of a local store, else None."""
    if isinstance(store, os.PathLike):
        return os.fspath(store)
    if isinstance(store, str):
        if "://" not in store:
            return store
        if store.startswith("file://"):
            return store[len("file://"):]
        return None
    if isinstance(store, zarr.storage.LocalStore):
        return str(store.root)
    return None


def chunk_shape(shape: tuple[int, int], axis: int, block_size: int, itemsize: int) -> tuple[int, int]:
    """Chunks with edges on block edges along ``axis``, at most about 64 MiB each.

    Across the block axis the extent is split evenly: zarr stores edge chunks at
    full size, so a ragged split would write padding (up to a chunk per block).
    """
    other = shape[1 - axis]
    target = max(1, min(other, _CHUNK_TARGET_BYTES // max(1, block_size * itemsize)))
    pieces = math.ceil(other / target)
    across = math.ceil(other / pieces)
    return (across, block_size) if axis == 1 else (block_size, across)


class ResultStore:
    """Read and write one result group. Create with `create` or `open`."""

    def __init__(self, group: zarr.Group, location):
        self.group = group
        self.location = location
        self.meta = dict(group.attrs.get("diffops", {}))
        if not self.meta:
            raise StoreError(f"{location!r} is a Zarr group but holds no diffops result")
        if self.meta.get("format") != FORMAT:
            raise StoreError(
                f"{location!r} was written in diffops store format {self.meta.get('format')}, "
                f"this version reads format {FORMAT}"
            )
        self.plan = BlockPlan(**{k: self.meta["plan"][k] for k in ("total", "block_size")})
        self.matrix = group["matrix"]
        self.records = group["blocks"]

    # -- construction -------------------------------------------------------------

    @classmethod
    def open(cls, location, mode: str = "r") -> "ResultStore":
        """Open an existing result. **Raises:** `StoreError` when there is none."""
        path = local_path(location)
        if path is not None and not os.path.exists(os.path.join(path, "zarr.json")):
            raise StoreError(f"no diffops result at {location!r} (no zarr.json there)")
        try:
            group = zarr.open_group(location, mode=mode)
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise StoreError(f"no diffops result at {location!r}: {err}") from None
        return cls(group, location)

    @classmethod
    def exists(cls, location) -> bool:
        path = local_path(location)
        if path is not None:
            return os.path.exists(os.path.join(path, "zarr.json"))
        try:
            zarr.open_group(location, mode="r")
            return True
        except Exception:  # noqa: BLE001 - any failure to open means "nothing usable there"
            return False

    @classmethod
    def create(cls, location, *, meta: dict, shape, dtype, axis: int, block_size: int,
               compressor: str | None = None, overwrite: bool = False) -> "ResultStore":
        """Create a new result group (replacing whatever is there when ``overwrite``)."""
        path = local_path(location)
        if path is None:
            group = zarr.open_group(location, mode="w" if overwrite else "w-")
        else:
            if overwrite:  # clear everything but our own lock
                _clear_dir(path, keep=RunLock.NAME)
            elif os.path.exists(os.path.join(path, "zarr.json")):
                raise StoreError(f"{location!r} already holds a Zarr group; pass overwrite=True")
            group = zarr.open_group(location, mode="a")
        n_blocks = meta["plan"]["n_blocks"]
        chunks = chunk_shape(tuple(shape), axis, block_size, np.dtype(dtype).itemsize)
        compressors = None
        if compressor:
            compressors = [{"name": "zstd", "configuration": {"level": 3, "checksum": False}}] \
                if compressor == "zstd" else compressor
        group.create_array(
            "matrix", shape=tuple(shape), chunks=chunks, dtype=dtype, fill_value=0,
            compressors=compressors, config={"write_empty_chunks": True},
            dimension_names=("row", "column"),
        )
        group.create_array(
            "blocks", shape=(n_blocks, len(RECORD_FIELDS)), chunks=(1, len(RECORD_FIELDS)),
            dtype="int64", fill_value=0, compressors=None, dimension_names=("block", "field"),
        )
        group.attrs["diffops"] = {**meta, "format": FORMAT, "record_fields": list(RECORD_FIELDS),
                                  "runs": []}
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

    def save_meta(self):
        self.group.attrs["diffops"] = self.meta

    def start_run(self, blocks_todo: int) -> int:
        """Append a run to the history (status ``running``); its 1-based number."""
        runs = self.meta.setdefault("runs", [])
        for run in runs:  # a run still 'running' was killed before it could say so
            if run.get("status") == "running":
                run["status"] = "interrupted"
        runs.append({"run": len(runs) + 1, "start": now(), "host": socket.gethostname(),
                     "pid": os.getpid(), "blocks_todo": blocks_todo, "status": "running"})
        self.save_meta()
        return len(runs)

    def end_run(self, run: int, **fields):
        entry = self.meta["runs"][run - 1]
        entry.update(fields, end=now())
        self.save_meta()

    # -- records ------------------------------------------------------------------

    def read_records(self) -> np.ndarray:
        return np.asarray(self.records[...])

    def done_mask(self, records: np.ndarray | None = None) -> np.ndarray:
        records = self.read_records() if records is None else records
        return records[:, STATE] == 1

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
        """Delete the temporary files a killed writer leaves behind (local stores)."""
        path = local_path(self.location)
        if path is None:
            return 0
        removed = 0
        for root, _dirs, files in os.walk(path):
            for name in files:
                if name.endswith(".partial"):
                    os.unlink(os.path.join(root, name))
                    removed += 1
        return removed


def _clear_dir(path: str, keep: str):
    import shutil

    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        if name == keep:
            continue
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def sha256_json(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class RunLock:
    """An exclusive lock file in a local store, so two runs never write one store.

    A lock left by a dead process on this host is taken over; one held by a live
    process (or by another host) refuses with who holds it.
    """

    NAME = "diffops.lock"

    def __init__(self, location):
        path = local_path(location)
        self.path = os.path.join(path, self.NAME) if path is not None else None
        self.held = False

    def acquire(self):
        if self.path is None:  # remote stores: no lock (documented)
            return self
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": now()}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if self._stale(holder, me["host"]):
                    os.unlink(self.path)  # stale: its process is gone
                    continue
                self._refuse(holder)
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return self
        raise StoreError(f"could not take the lock {self.path!r}")  # pragma: no cover

    def check_free(self):
        """Refuse now if another live run holds the lock (without taking it)."""
        if self.path is None or not os.path.exists(self.path):
            return
        holder = self._holder()
        if not self._stale(holder, socket.gethostname()):
            self._refuse(holder)

    @staticmethod
    def _stale(holder, host) -> bool:
        return bool(holder) and holder.get("host") == host and not _alive(holder.get("pid"))

    def _refuse(self, holder):
        who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}"
               if holder else "an unknown process")
        raise StoreError(
            f"another run ({who}) is writing to {os.path.dirname(self.path)!r}; wait for it "
            f"to finish, or delete {self.path!r} if that process is gone"
        )

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def release(self):
        if self.held:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True
