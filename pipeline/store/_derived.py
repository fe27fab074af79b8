"""Files a workflow derives from a store (``finalize``): each says which store
state it was made from, and none outlives that state.

Beside each output ``F`` lies ``F.diffops.json``: the store's location, its
fingerprint and a digest of its completion records (`store_state`), and what
was derived. An output is current only when that record equals the store's
state now. The data is written first (to a temporary name, then renamed), the
record after it, so a kill between them leaves an output that reads as stale.
Before a run changes the store, the outputs are withdrawn: renamed to
``F.stale`` (nothing is lost; nothing can be mistaken for current).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from typing import IO, Any

from ._group import ResultStore

__all__ = ["is_current", "store_state", "withdraw", "write_derived"]

RECORD_SUFFIX = ".diffops.json"
STALE_SUFFIX = ".stale"


def store_state(store: ResultStore) -> dict[str, Any]:
    """The state of a store's matrix: its fingerprint and a digest of every
    block's record (state and checksum)."""
    return {
        "location": str(store.location),
        "fingerprint": store.meta.get("fingerprint"),
        "blocks": store.records_digest(),
    }


def _record(path: str) -> dict | None:
    try:
        with open(path + RECORD_SUFFIX) as fh:
            value = json.load(fh)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def is_current(path: str, source: dict) -> bool:
    """Whether ``path`` exists and was derived from ``source`` (a `store_state`
    plus what was derived)."""
    return os.path.isfile(path) and _record(path) == source


def _atomic(path: str, write: Callable[[IO[bytes]], None]) -> None:
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(partial, "wb") as fh:
            write(fh)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise


def write_derived(path: str, source: dict, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` exactly there (``write(fh)`` fills it; numpy adds no
    suffix to a file handle), then its record of ``source``."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path + RECORD_SUFFIX)
    _atomic(path, write)
    text = json.dumps(source, indent=1).encode()
    _atomic(path + RECORD_SUFFIX, lambda fh: None if fh.write(text) else None)


def withdraw(path: str) -> bool:
    """Move ``path`` aside to ``path.stale`` (its record removed first); whether
    there was anything to move."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path + RECORD_SUFFIX)
    if not os.path.isfile(path):
        return False
    os.replace(path, path + STALE_SUFFIX)
    return True
