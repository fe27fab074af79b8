"""The store room: one Zarr v3 group per result, and only ever ours.

Zarr and numpy only: nothing here knows of JAX, dask or the rooms above.

Layout of a result group:

- ``matrix``: the ``(m, n)`` array, fill value NaN: a chunk never written reads
  as NaN, never as zeros. Chunks are ``(rows, block_size)`` for column slabs
  (``(block_size, cols)`` for row slabs), so chunk edges along the block axis
  fall exactly on block edges: each task writes whole chunks that no other task
  touches. A sparse result holds ``compressed`` (its products, blocked over
  the colours the same way), ``pattern_indptr``, ``pattern_indices`` and
  ``colors`` in its place (`_sparse`).
- ``blocks``: the completion records, ``(n_blocks, 5)`` int64 with one chunk per
  block: ``[state, crc32 of the data written, milliseconds, run, non-finite count]``.
  A record is written only after the block's data. A block counts as complete
  when its ``state`` is 1 *and* every data chunk of it exists (at its full size
  when stored uncompressed; Zarr skips all-zero chunks unless told otherwise, so
  chunk presence alone is no record; a record alone does not survive a deleted
  chunk).
- group attributes, key ``diffops``: JSON metadata (operation, shapes, dtype,
  block plan, flat layouts of x and f(x), fingerprint, run history), with
  ``ready: false`` from the moment the group exists until both arrays do. The
  group and its attributes are written in one atomic write, so a store killed
  while being created is recognisably ours.
- coordinate arrays (``row``, ``column``, ``*_leaf``, ``*_index``) and
  consolidated metadata, for readers without diffops (xarray).
- ``factor/``: the Cholesky factor of a square matrix, in square tiles with a
  record each (`_tiles`): the second stored format, derived from the first.
- ``diffops.lock``: the run lock of a local store (`RunLock`), and
  ``diffops.lease.<generation>``: the run lease, on every backend (`_lock`):
  one writer per store, on local disk, NFS, Lustre and S3 alike.

What we create in a store's directory: `OUR_NAMES`. "Ours" means the group's
own zarr.json carries diffops metadata with a format number; nothing else is
ever written into or deleted, even with ``overwrite``. Cleanup removes only the
files zarr writes for us (metadata, chunk keys, ``.partial`` temporaries). No
pickles are stored.

Modules: `_format` (names, records, checksums, chunking, sizes,
fingerprints), `_location` (what is at a location; `Files`: a store's
objects on any backend), `_lock` (the lock and the lease), `_chunks`
(whole-chunk reads and writes), `_group` (`ResultStore`), `_admission`
(create, resume, replace or refuse), `_derived` (files made from a store
state), `_sparse` (the compressed format of a sparse result), `_tiles` (the
factor group).
"""

from ._admission import admit
from ._chunks import SlabWriter, read_region
from ._derived import is_current, store_state, withdraw, write_derived
from ._format import (
    CHECKSUM,
    COORDINATES,
    CURVATURE,
    FACTOR,
    FORMAT,
    MILLIS,
    NONFINITE,
    OUR_NAMES,
    RECORD_FIELDS,
    RUN,
    RUNS_KEPT,
    SPARSE_ARRAYS,
    SQUARE,
    STATE,
    checksum,
    chunk_shape,
    describe_difference,
    difference,
    digest,
    factor_disk_bytes,
    layouts,
    leaf_label,
    record,
    same_computation,
    sha256_json,
    store_disk_bytes,
    store_meta,
)
from ._group import ResultStore
from ._location import (
    Files,
    check_free,
    describe_foreign,
    inspect,
    local_path,
    normalise_location,
    overlapping,
    peek,
    read_meta,
    remove_ours,
)
from ._lock import LEASE_SECONDS, Lease, RunLock, lease_alive, lock_is_free
from ._sparse import (
    COLORS,
    COMPRESSED,
    compressed_shape,
    pattern_bytes,
    probes_of,
    sparsity_meta,
)
from ._tiles import (
    DEFAULT_TILE,
    INVERSE,
    LOWER,
    VARIANCE,
    Tiles,
    check_done,
    factor_identity,
    invalidate,
    open_or_create,
    read_variance,
    remove_factor,
    stored_identity,
    variances_intact,
)

__all__ = [
    "CHECKSUM",
    "COLORS",
    "COMPRESSED",
    "COORDINATES",
    "CURVATURE",
    "DEFAULT_TILE",
    "FACTOR",
    "FORMAT",
    "INVERSE",
    "LEASE_SECONDS",
    "LOWER",
    "MILLIS",
    "NONFINITE",
    "OUR_NAMES",
    "RECORD_FIELDS",
    "RUN",
    "RUNS_KEPT",
    "SPARSE_ARRAYS",
    "SQUARE",
    "STATE",
    "VARIANCE",
    "Files",
    "Lease",
    "ResultStore",
    "RunLock",
    "SlabWriter",
    "Tiles",
    "admit",
    "check_done",
    "check_free",
    "checksum",
    "chunk_shape",
    "compressed_shape",
    "describe_difference",
    "describe_foreign",
    "difference",
    "digest",
    "factor_disk_bytes",
    "factor_identity",
    "inspect",
    "invalidate",
    "is_current",
    "layouts",
    "leaf_label",
    "lease_alive",
    "local_path",
    "lock_is_free",
    "normalise_location",
    "open_or_create",
    "overlapping",
    "pattern_bytes",
    "peek",
    "probes_of",
    "read_meta",
    "read_region",
    "read_variance",
    "record",
    "remove_factor",
    "remove_ours",
    "same_computation",
    "sha256_json",
    "sparsity_meta",
    "store_disk_bytes",
    "store_meta",
    "store_state",
    "stored_identity",
    "variances_intact",
    "withdraw",
    "write_derived",
]
