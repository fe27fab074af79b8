"""What a store holds, for people: the checks a run records and the summary
``diffops show`` prints, from one pass over the stored matrix (`_scan`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from diffops_core.internal import format_iec

from .._errors import StoreError
from ..run import DistributedExecutor, open_checked
from ..store import NONFINITE, SQUARE, ResultStore, pattern_bytes
from ._scan import scan

__all__ = ["LeafSummary", "StoreSummary", "checks", "summarise"]


@dataclasses.dataclass(frozen=True)
class LeafSummary:
    """Figures of one leaf's rows: `norm` (Frobenius norm of its row block); for
    a Hessian `diagonal_min`, `diagonal_max` and `asymmetry` (max|H - H^T|)."""

    path: str
    shape: tuple[int, ...]
    norm: float
    diagonal_min: float | None = None
    diagonal_max: float | None = None
    asymmetry: float | None = None


@dataclasses.dataclass(frozen=True)
class StoreSummary:
    """What `Result.summary` reports."""

    location: str
    operation: str
    op: str
    shape: tuple[int, int]
    dtype: str
    nbytes: int
    block_size: int
    n_blocks: int
    axis: int
    blocks_done: int
    complete: bool
    function: str
    fingerprint: str
    versions: dict
    runs: int
    checks: dict
    leaves: tuple[LeafSummary, ...] = ()
    sparsity: dict | None = None
    """A sparse result's pattern and colouring (the store's ``sparsity`` metadata)."""
    check: str = ""
    """A sparse result's check, in words, for the store as it is now."""
    damage: str = ""
    """Why the figures of a complete store were not read: blocks changed since
    they were written (empty when none)."""

    def lines(self) -> list[str]:
        """The summary as text lines (what ``diffops show`` prints)."""
        what = "rows" if self.axis == 0 else "columns"
        op = self.operation if self.op == self.operation else f"{self.operation} ({self.op})"
        out = [
            self.location,
            f"  operation   {op}, shape {self.shape}, {self.dtype}, {format_iec(self.nbytes)}",
            f"  blocks      {self.n_blocks} blocks of {self.block_size} ({what}); "
            f"{self.blocks_done} done",
            f"  function    {self.function}",
            f"  fingerprint {self.fingerprint[:16]}  versions {self.versions}",
            f"  runs        {self.runs}; checks {self.checks}",
        ]
        if self.sparsity:
            out[1:3] = self._sparse_lines()
        if not self.complete:
            return [*out, "  (incomplete: no per-leaf summary)"]
        if self.damage:
            return [*out, f"  DAMAGED     {self.damage} (no per-leaf summary)"]
        hessian = self.operation in SQUARE
        header = f"  {'leaf':<28} {'shape':<14} {'row-block norm':>15}"
        if hessian:
            header += f" {'diagonal min':>13} {'diagonal max':>13} {'max|H-H^T|':>11}"
        out.append(header)
        for leaf in self.leaves:
            line = f"  {leaf.path or '(root)':<28} {leaf.shape!s:<14} {leaf.norm:>15.4g}"
            if hessian:
                line += (
                    f" {leaf.diagonal_min:>13.4g} {leaf.diagonal_max:>13.4g}"
                    f" {leaf.asymmetry:>11.3g}"
                )
            out.append(line)
        return out

    def _sparse_lines(self) -> list[str]:
        info = self.sparsity or {}
        m, n = self.shape
        op = self.operation if self.op == self.operation else f"{self.operation} ({self.op})"
        extent = m if info.get("mode") == "row" else n
        itemsize = np.dtype(self.dtype).itemsize
        stored = math.prod(info["compressed_shape"]) * itemsize + pattern_bytes(info)
        verdict = self.check
        return [
            f"  operation   {op}, shape {self.shape}, {self.dtype}, sparse: "
            f"{format_iec(stored)} stored (dense {format_iec(self.nbytes)})",
            f"  sparsity    {info['mode']} colouring: nnz {info['nnz']:,} "
            f"({100 * info['nnz'] / max(1, m * n):.2g}%), {info['ncolors']} colours: "
            f"{info['ncolors']} products instead of {extent}",
            f"  blocks      {self.n_blocks} blocks of {self.block_size} colours; "
            f"{self.blocks_done} done; check against 6 random products: {verdict}",
        ]


def checks(store: ResultStore, progress: bool = False, client: Any = None) -> dict:
    """Non-finite entries (from the records) and, for a Hessian, the relative
    symmetry error max|H - H^T| / max|H|, in one pass over the stored matrix
    (`pipeline._scan`); as one task on ``client``'s cluster when given (the
    driver then reads none of the matrix)."""
    if client is not None:
        return DistributedExecutor(client).call(_checks_at, store.location, near=store.location)
    records = store.read_records()
    out: dict = {"nonfinite": int(records[:, NONFINITE].sum())}
    if store.meta["operation"] in SQUARE:
        found = scan(store, progress=progress, records=records)
        diff = float(np.max(found.row_asymmetry)) if found.row_asymmetry is not None else 0.0
        out["symmetry_error"] = diff / found.max_abs if found.max_abs > 0 else 0.0
    return out


def _checks_at(location: Any) -> dict:
    """`checks` of the store at ``location``, on a worker (the matrix its
    self-check recovered, when it ran there)."""
    return checks(open_checked(location))


def _leaf_figures(store: ResultStore, progress: bool = False) -> list:
    rows_layout, _ = store.layouts()
    found = scan(store, progress=progress)
    hessian = store.meta["operation"] in SQUARE
    out = []
    for leaf in rows_layout.leaves:
        entry = {"norm": float(np.sqrt(np.sum(found.row_squares[leaf.slice])))}
        if hessian:
            assert found.diagonal is not None and found.row_asymmetry is not None
            diag = found.diagonal[leaf.slice]
            entry.update(
                diagonal_min=float(np.min(diag)),
                diagonal_max=float(np.max(diag)),
                asymmetry=float(np.max(found.row_asymmetry[leaf.slice])),
            )
        out.append(LeafSummary(path=leaf.path, shape=tuple(leaf.shape), **entry))
    return out


def summarise(store: ResultStore) -> StoreSummary:
    meta = store.meta
    status = store.status()
    check, readable = "", status["complete"] and store.checked
    if store.sparsity_meta:
        check, readable = _check_words(store, status["complete"])
    parts = meta.get("fingerprint_parts", {})
    leaves, damage = (), ""
    try:
        leaves = tuple(_leaf_figures(store)) if readable else ()
    except StoreError as err:  # blocks changed since written: never summarised as numbers
        damage = str(err)
    return StoreSummary(
        location=str(store.location),
        operation=meta["operation"],
        op=meta["op"],
        shape=tuple(meta["shape"]),
        dtype=meta["dtype"],
        nbytes=store.nbytes,
        block_size=store.plan.block_size,
        n_blocks=store.plan.n_blocks,
        axis=int(meta["axis"]),
        blocks_done=status["blocks_done"],
        complete=status["complete"],
        function=str(parts.get("function")),
        fingerprint=meta["fingerprint"],
        versions=parts.get("versions") or {},
        runs=status["runs"],
        checks=meta.get("checks", {}),
        leaves=leaves,
        sparsity=store.sparsity_meta,
        check=check,
        damage=damage,
    )


def _check_words(store: ResultStore, complete: bool) -> tuple[str, bool]:
    """A sparse result's check in words for the store as it is now, and whether
    its readers will read it (they refuse in every other case)."""
    check = (store.sparsity_meta or {}).get("check") or {}
    if check and not check.get("passed"):
        return "FAILED", False
    if not complete:
        return "not yet (the store is incomplete)", False
    if not check:
        return ("not yet: the store is complete but was never checked (a run stopped during its "
                "check); run the computation again", False)  # fmt: skip
    if not store.checked:
        return ("out of date: it passed for other blocks than those stored now; run the "
                "computation again", False)  # fmt: skip
    try:  # what readers do: each block against its checksum (kept for the scan after)
        store.sparse()
    except StoreError as err:
        return f"passed once, but readers refuse: {err}", False
    return f"passed (error {check['error']:.3g}, tolerance {check['tolerance']:.3g})", True
