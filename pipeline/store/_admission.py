"""One decision for every store a run writes (a computed matrix, a covariance):
create, resume, replace or refuse, made from what is at the location."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import StoreError
from ._format import FORMAT
from ._group import ResultStore
from ._location import describe_foreign, inspect, read_meta

__all__ = ["admit"]


def admit(
    location: Any,
    same: Callable[[dict], bool],
    overwrite: bool,
    refusal: Callable[[dict], str],
    read: tuple[str, Any] | None = None,
) -> ResultStore | None:
    """What is at ``location`` for a result whose stored metadata ``same`` accepts.

    **Returns:** the store opened for writing when it holds this result (resume
    it); None when a new store is to be made there: nothing is there, a store of
    ours whose creation was interrupted (no block can have been recorded), or,
    with ``overwrite``, a store of ours holding another result, damaged array
    metadata or a damaged sparsity pattern (replace it).

    **Raises:** `StoreError`: for a location that is not ours (always, whatever
    ``overwrite``: our own group metadata says diffops); without ``overwrite``,
    for a store of another format (naming it), another result (``refusal(meta)``,
    which says what differs), damaged array metadata or a damaged pattern.

    ``read``: (digest, pattern) this process has just read from this store
    and checked (`ResultStore.sparsity`), not read again while the store's
    sparsity metadata has that digest.
    """
    state = inspect(location)
    if state == "absent":
        return None
    if state == "foreign":
        raise StoreError(describe_foreign(location))
    meta = read_meta(location)
    if not meta.get("ready", False):
        return None
    if meta.get("format") != FORMAT or not same(meta):
        if overwrite:
            return None
        if meta.get("format") != FORMAT:
            ResultStore.open(location)  # raises, naming the format and the way out
        raise StoreError(refusal(meta))
    try:
        store = ResultStore.open(location, mode="r+")
        if store.sparsity_meta:
            store.sparsity(read)  # a damaged pattern or colouring raises (read once, kept)
        return store
    except StoreError:
        if overwrite:
            return None  # damaged: recomputed, as the refusal's words say
        raise
