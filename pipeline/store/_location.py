"""What is at a location, before we touch it: absent, ours or foreign; our
metadata read without opening arrays; removal of only what we wrote; free disk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import uuid

import zarr

from diffops_core.internal import format_iec

from .._errors import StoreError
from ._format import LOCK_NAME, OUR_NAMES

__all__ = [
    "Files",
    "check_free",
    "describe_foreign",
    "inspect",
    "local_path",
    "normalise_location",
    "overlapping",
    "peek",
    "read_meta",
    "remove_ours",
]

LEASE_PREFIX = "diffops.lease."  # the run lease: diffops.lease.<generation> (`_lock`)

# zarr's local store writes through "<name>.<uuid hex>.partial" and renames
PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


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


def read_group_json(path: str) -> dict:
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
        return _inspect_remote(location)
    if not os.path.lexists(path):
        return "absent"
    if not os.path.isdir(path) or os.path.islink(path):
        return "foreign"
    names = {
        name
        for name in os.listdir(path)
        if not PARTIAL.search(name) or not name.startswith("zarr.")
    }
    if not {n for n in names if not _ours_beside(n)}:
        return "absent"
    if "zarr.json" not in names:
        return "foreign"
    try:
        attrs = read_group_json(path).get("attributes") or {}
    except StoreError:
        return "foreign"
    return "ours" if _is_ours(attrs) else "foreign"


def _ours_beside(name: str) -> bool:
    """Whether a top-level name is the run lock or a lease (what a store
    location may hold before, and after, the store itself)."""
    return name == LOCK_NAME or name.startswith(LEASE_PREFIX)


def _unreadable(location, err: BaseException) -> StoreError:
    return StoreError(
        f"cannot read {location!r} ({type(err).__name__}: {err}); nothing was written. Check "
        "the address, that the bucket exists, and the credentials and endpoint (AWS_* "
        "variables, or storage_options)"
    )


def _group_document(files: Files) -> dict | None:
    """The group's zarr.json of a remote location as JSON; None when absent.
    **Raises:** `StoreError` when it cannot be read (never "absent")."""
    try:
        data = json.loads(files.read("zarr.json"))
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise StoreError(f"cannot read {files.location!r}/zarr.json: {err}") from None
    except Exception as err:
        raise _unreadable(files.location, err) from err
    return data if isinstance(data, dict) else {}


def _inspect_remote(location) -> str:
    files = Files(location)
    doc = _group_document(files)
    if doc is None:
        try:
            names = {key.split("/")[0] for key in files.listing()}
            bucket = files.bucket_missing()
        except Exception as err:  # unreadable, never empty
            raise _unreadable(location, err) from err
        if bucket:
            raise StoreError(
                f"{location!r}: the bucket {bucket!r} does not exist, or these credentials "
                "cannot see it; create it first, or check the address, credentials and endpoint"
            )
        return "absent" if all(_ours_beside(n) for n in names) else "foreign"
    return "ours" if _is_ours(doc.get("attributes") or {}) else "foreign"


def read_meta(location) -> dict:
    """The diffops metadata of a store `inspect` calls ours, without opening its arrays."""
    path = local_path(location)
    if path is not None:
        attrs = read_group_json(path).get("attributes") or {}
    else:
        attrs = (_group_document(Files(location)) or {}).get("attributes") or {}
    meta = attrs.get("diffops") if isinstance(attrs, dict) else None
    if not isinstance(meta, dict):
        raise StoreError(f"{location!r}: the diffops metadata is not a JSON object")
    return meta


def peek(location) -> dict | None:
    """The diffops metadata at ``location`` when a store of ours is there and its
    metadata reads, else None (nothing there, not ours, unreadable): what a
    caller deciding defaults (a stored block or tile) or words may look at."""
    try:
        if inspect(location) != "ours":
            return None
        return read_meta(location)
    except (StoreError, OSError, ValueError):
        return None


def describe_foreign(location) -> str:
    path = local_path(location)
    what = ""
    if path is not None and os.path.isdir(path):
        names = sorted(os.listdir(path))
        what = f" (it holds {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
        if "zarr.json" in names:
            try:
                read_group_json(path)
                what += "; its zarr.json has no diffops metadata"
            except StoreError as err:
                what += f"; {err}, so nothing says diffops made it (delete it yourself if so)"
    elif path is not None:
        what = " (it is a file)"
    elif path is None:
        try:
            names = sorted({key.split("/")[0] for key in Files(location).listing()})
        except Exception:  # noqa: BLE001 - the words only
            names = []
        if names:
            what = f" (it holds {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
    return (
        f"{location!r} is not empty and is not a diffops store{what}; diffops never writes "
        "into or deletes what it did not create, even with overwrite. Choose a new or "
        "empty directory for the output"
    )


def _written_by_zarr(relative: str) -> bool:
    """Whether a file inside one of our top-level names is one zarr writes for
    us: node metadata, a chunk key (``c/0/3``), or a killed write's temporary."""
    parts = relative.replace(os.sep, "/").split("/")
    if parts[-1] == "zarr.json" or PARTIAL.search(parts[-1]):
        return True
    return "c" in parts[:-1] and all(p.isdigit() for p in parts[parts.index("c") + 1 :])


def remove_ours(location, names=None) -> list[str]:
    """Delete what we write in a store: node metadata and chunks under our own
    names (never the lock or a lease), then the folders left empty. Any other
    file (a user's notes inside ``matrix/``) and its folders stay, on every
    backend.

    **Returns:** the files left in place, relative to the store.
    """
    path = local_path(location)
    if path is None:
        return _remove_ours_remote(Files(location), names)
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


def _remove_ours_remote(files: Files, names=None) -> list[str]:
    """`remove_ours` key by key (an object store has no folders to empty)."""
    names = OUR_NAMES - {LOCK_NAME} if names is None else set(names)
    kept: list[str] = []
    group_doc = False
    for key in sorted(files.listing()):
        top, _, rest = key.partition("/")
        if top not in names:
            continue
        if not rest:
            group_doc = group_doc or top == "zarr.json"
            continue
        if _written_by_zarr(rest):
            files.remove(key)
        else:
            kept.append(key)
    if group_doc:  # last: until it goes, the location still reads as ours
        files.remove("zarr.json")
    return kept


def check_free(location, need: int, what: str) -> None:
    """Refuse, with the numbers, a local store whose disk cannot take ``need``
    more bytes. **Raises:** `StoreError`."""
    free = free_disk(location)
    if free is not None and need > free:
        raise StoreError(
            f"{what} needs {format_iec(need)} more on disk at {location!r}, but only "
            f"{format_iec(free)} is free there; free space, or choose a store on a larger disk"
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


class Files:
    """The objects of a store location by key (``"matrix/c/0/1"``), wherever they
    are: a local directory, an fsspec filesystem (``s3://`` and its kin) or a
    zarr `MemoryStore`. What the store room needs that zarr's API does not
    give: sizes in a listing, an exclusive create, and removal key by key.

    ``atomic``: whether `create` is atomic against other processes (a local or
    network filesystem: a hard link, which NFS and Lustre make atomic; S3: a
    conditional put, ``If-None-Match: *``; a memory store: one process). Any
    error other than an absent key propagates: an unreadable location is
    never an empty one.
    """

    def __init__(self, location):
        location = normalise_location(location)
        self.location = location
        self.path = local_path(location)
        self.memory = None
        self.fs = None
        if self.path is not None:
            self.protocol = "file"
        elif isinstance(location, zarr.storage.MemoryStore):
            self.protocol, self.memory = "memory", location._store_dict
        else:
            store = location
            if isinstance(location, str):
                store = zarr.storage.FsspecStore.from_url(location)
            if not isinstance(store, zarr.storage.FsspecStore):
                raise TypeError(
                    f"a store of type {type(location).__name__} is not supported here: pass a "
                    "local path, an fsspec URL (s3://...) or a zarr LocalStore, FsspecStore or "
                    "MemoryStore"
                )
            self.fs, self.root = store.fs, store.path.rstrip("/")
            protocols = self.fs.protocol
            protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
            self.protocol = protocols[0]
        # fsspec's memory filesystem lives in this process: a lock makes its create atomic
        self.atomic = self.fs is None or self.protocol in ("s3", "s3a", "memory")

    def _full(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def _run(self, coroutine):
        from zarr.core.sync import sync

        return sync(coroutine)

    def listing(self, prefix: str = "") -> dict[str, int]:
        """Every key under ``prefix`` (a folder, ``""`` for all) with its size."""
        if self.path is not None:
            found = {}
            top = os.path.join(self.path, prefix)
            for base, _dirs, files in os.walk(top):
                for name in files:
                    full = os.path.join(base, name)
                    with contextlib.suppress(FileNotFoundError):
                        key = os.path.relpath(full, self.path).replace(os.sep, "/")
                        found[key] = os.stat(full).st_size
            return found
        if self.memory is not None:
            want = prefix.rstrip("/") + "/" if prefix else ""
            return {k: len(v) for k, v in list(self.memory.items()) if k.startswith(want)}
        assert self.fs is not None
        top = self._full(prefix.rstrip("/"))
        self.fs.invalidate_cache(top)
        try:
            infos = self._run(self.fs._find(top, detail=True))
        except FileNotFoundError:
            return {}
        start = len(self.root) + 1
        return {
            name[start:]: int(info.get("size") or 0)
            for name, info in infos.items()
            if info.get("type", "file") != "directory" and name.startswith(self.root + "/")
        }

    def listing_top(self, start: str) -> list[str]:
        """The top-level keys that begin with ``start`` (no recursion)."""
        if self.path is not None:
            try:
                return [n for n in os.listdir(self.path) if n.startswith(start)]
            except FileNotFoundError:
                return []
        if self.memory is not None:
            return [k for k in list(self.memory) if "/" not in k and k.startswith(start)]
        assert self.fs is not None
        self.fs.invalidate_cache(self.root)
        try:
            names = self._run(self.fs._ls(self.root, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        tails = (str(n).rstrip("/").rsplit("/", 1)[-1] for n in names)
        return [t for t in tails if t.startswith(start)]

    def bucket_missing(self) -> str | None:
        """The bucket of an object store location when it does not exist."""
        if self.fs is None or self.protocol not in ("s3", "s3a", "gs", "gcs", "az", "abfs"):
            return None
        bucket = self.root.split("/", 1)[0]
        self.fs.invalidate_cache(bucket)
        return None if self._run(self.fs._exists(bucket)) else bucket

    def read(self, key: str) -> bytes:
        """The object's bytes. **Raises:** `FileNotFoundError` when it is absent."""
        if self.path is not None:
            with open(os.path.join(self.path, key), "rb") as fh:
                return fh.read()
        if self.memory is not None:
            if key not in self.memory:
                raise FileNotFoundError(key)
            return bytes(self.memory[key].to_bytes())
        assert self.fs is not None
        return bytes(self._run(self.fs._cat_file(self._full(key))))

    def write(self, key: str, data: bytes) -> None:
        """Write (or replace) an object whole."""
        if self.path is not None:
            full = os.path.join(self.path, key)
            temp = f"{full}.{uuid.uuid4().hex}.tmp"
            with open(temp, "wb") as fh:
                fh.write(data)
            os.replace(temp, full)
        elif self.memory is not None:
            self.memory[key] = _memory_buffer(data)
        else:
            assert self.fs is not None
            self._run(self.fs._pipe_file(self._full(key), data))

    def create(self, key: str, data: bytes) -> bool:
        """Write an object only if no object has that key, atomically where
        ``atomic``. **Returns:** whether this call created it."""
        if self.path is not None:
            full = os.path.join(self.path, key)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            temp = f"{full}.{uuid.uuid4().hex}.tmp"
            with open(temp, "wb") as fh:
                fh.write(data)  # whole before it is visible: a reader never sees it half-written
            try:
                os.link(temp, full)  # atomic, and refuses an existing name, on NFS too
            except FileExistsError:
                return False
            finally:
                os.unlink(temp)
            return True
        if self.memory is not None:
            with _MEMORY_LOCK:
                if key in self.memory:
                    return False
                self.memory[key] = _memory_buffer(data)
                return True
        assert self.fs is not None
        if self.protocol == "memory":
            with _MEMORY_LOCK:
                if self._run(self.fs._exists(self._full(key))):
                    return False
                self._run(self.fs._pipe_file(self._full(key), data))
                return True
        if self.protocol not in ("s3", "s3a"):
            raise StoreError(f"{self.location!r}: {self.protocol} offers no exclusive create")
        try:
            self._run(self.fs._pipe_file(self._full(key), data, mode="create"))
        except FileExistsError:
            return False
        return True

    def remove(self, key: str) -> None:
        """Delete an object; an absent one is no error."""
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, key))
        elif self.memory is not None:
            self.memory.pop(key, None)
        else:
            assert self.fs is not None
            with contextlib.suppress(FileNotFoundError):
                self._run(self.fs._rm_file(self._full(key)))


_MEMORY_LOCK = threading.Lock()


def _memory_buffer(data: bytes):
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype().buffer.from_bytes(data)
