"""Local files written and read as their bytes where zarr would only add cost:
whole chunks of uncompressed arrays, and the metadata documents of a local
store (zarr.json, consolidated metadata) that are ours to write. Each write is
atomic, as zarr's local store's own: a ``.partial`` file renamed into place.
Everything else goes through zarr."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys

import numpy as np
import zarr
from zarr.core.sync import sync

__all__ = [
    "SlabWriter",
    "plain_bytes",
    "read_json",
    "read_region",
    "write_file",
    "write_json",
    "write_plain_array",
]


def write_file(path: str, data) -> None:
    """Write ``data`` (bytes, or an array's buffer) to ``path`` atomically: a
    ``.partial`` file beside it (removed by `ResultStore.remove_partial_files` if
    a crash leaves it), renamed into place, so a reader sees the old file or the
    new one."""
    import uuid

    partial = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(partial, "wb") as fh:
            fh.write(data)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def read_json(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def write_json(path: str, doc: dict) -> None:
    # no indent: the C encoder (the indented one is pure Python, 10x slower)
    write_file(path, json.dumps(doc, default=_plain).encode())


def _plain(value):
    """numpy scalars and arrays in a document as JSON numbers and lists."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_plain_array(root: str, name: str, values: np.ndarray, attributes: dict,
                      dimension: str) -> dict:  # fmt: skip
    """A 1-d array of one uncompressed chunk at ``root/name`` (its zarr.json and
    its chunk ``c/0``, little-endian bytes), as zarr v3 writes one; returns its
    metadata document."""
    dtype = np.dtype(values.dtype).newbyteorder("<")
    doc = {
        "shape": [int(values.size)],
        "data_type": dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(values.size)]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
        "attributes": attributes,
        "dimension_names": [dimension],
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    os.makedirs(os.path.join(root, name, "c"), exist_ok=True)
    write_file(os.path.join(root, name, "c", "0"), np.ascontiguousarray(values, dtype).data)
    write_json(os.path.join(root, name, "zarr.json"), doc)
    return doc


def plain_bytes(matrix: zarr.Array) -> bool:
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
    their values' C-order bytes (`plain_bytes`), each chunk file is read as
    those bytes, as `SlabWriter` writes them (zarr stores edge chunks padded to
    the full chunk shape); zarr's array machinery cost several times the file
    reads (a few hundred small chunks: benchmarks/RESULTS.md, checks). A chunk
    not there, or not of a whole chunk's size, is read through zarr: the fill
    value (NaN for a matrix, never zeros), or zarr's own error."""
    from zarr.storage import LocalStore

    store = array.store
    if not isinstance(store, LocalStore) or not plain_bytes(array):
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
        self.raw = plain_bytes(matrix)
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
        """Write a local chunk as zarr's local store does (`write_file`)."""
        directory = os.path.dirname(path)
        if directory not in self._dirs:
            os.makedirs(directory, exist_ok=True)
            self._dirs.add(directory)
        write_file(path, data.data)
