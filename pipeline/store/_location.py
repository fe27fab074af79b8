"""What is at a location, before we touch it: absent, ours or foreign; our
metadata read without opening arrays; removal of only what we wrote; free disk."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil

import zarr

from diffops_core.internal import format_iec

from .._errors import StoreError
from ._format import LOCK_NAME, OUR_NAMES

__all__ = [
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
        if not PARTIAL.search(name) or not name.startswith("zarr.")
    }
    if not names - {LOCK_NAME}:
        return "absent"
    if "zarr.json" not in names:
        return "foreign"
    try:
        attrs = read_group_json(path).get("attributes") or {}
    except StoreError:
        return "foreign"
    return "ours" if _is_ours(attrs) else "foreign"


def read_meta(location) -> dict:
    """The diffops metadata of a store `inspect` calls ours, without opening its arrays."""
    path = local_path(location)
    if path is not None:
        attrs = read_group_json(path).get("attributes") or {}
    else:
        attrs = zarr.open_group(location, mode="r", use_consolidated=False).attrs.asdict()
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
    return (
        f"{location!r} is not empty and is not a diffops store{what}; diffops never writes "
        "into or deletes what it did not create, even with overwrite. Choose a new or "
        "empty directory for the output"
    )


def _written_by_zarr(relative: str) -> bool:
    """Whether a file inside one of our top-level names is one zarr writes for
    us: node metadata, a chunk key (``c/0/3``), or a killed write's temporary."""
    parts = relative.split(os.sep)
    if parts[-1] == "zarr.json" or PARTIAL.search(parts[-1]):
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
