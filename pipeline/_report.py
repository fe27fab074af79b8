"""Reading a stored result for people: checks, the summary, the heat map.

Everything here reads the store lazily (dask over Zarr), block by block, so it
works on matrices larger than memory.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import numpy as np

from diffops_core.internal import InputError, InputValueError

from ._scan import scan
from ._store import NONFINITE, SQUARE

if TYPE_CHECKING:  # pragma: no cover
    from ._result import Result, StoreSummary

__all__ = ["MissingDependencyError", "checks", "plot", "summarise"]


class MissingDependencyError(InputError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def checks(result: Result, progress: bool = False) -> dict:
    """Non-finite entries (from the records) and, for a Hessian, the relative
    symmetry error max|H - H^T| / max|H|, in one pass over the stored matrix
    (`pipeline._scan`)."""
    records = result._store.read_records()
    out: dict = {"nonfinite": int(records[:, NONFINITE].sum())}
    if result.meta["operation"] in SQUARE:
        found = scan(result._store, progress=progress, records=records)
        diff = float(np.max(found.row_asymmetry)) if found.row_asymmetry is not None else 0.0
        out["symmetry_error"] = diff / found.max_abs if found.max_abs > 0 else 0.0
    return out


def _leaf_figures(result: Result, progress: bool = False) -> list:
    from ._result import LeafSummary

    rows_layout, _ = result.layouts()
    found = scan(result._store, progress=progress)
    hessian = result.meta["operation"] in SQUARE
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


def summarise(result: Result) -> StoreSummary:
    from ._result import StoreSummary

    meta = result.meta
    status = result.status()
    parts = meta.get("fingerprint_parts", {})
    return StoreSummary(
        location=str(result.location),
        operation=meta["operation"],
        op=meta["op"],
        shape=tuple(meta["shape"]),
        dtype=meta["dtype"],
        nbytes=result.nbytes,
        block_size=result._store.plan.block_size,
        n_blocks=result._store.plan.n_blocks,
        axis=int(meta["axis"]),
        blocks_done=status["blocks_done"],
        complete=status["complete"],
        function=str(parts.get("function")),
        fingerprint=meta["fingerprint"],
        versions=parts.get("versions") or {},
        runs=status["runs"],
        checks=meta.get("checks", {}),
        leaves=tuple(_leaf_figures(result)) if status["complete"] else (),
    )


def leaf_label(path: str) -> str:
    """A leaf's key path as a short label: ``['shape']['rho']`` -> ``shape/rho``."""
    parts = re.findall(r"\[(?:'([^']*)'|\"([^\"]*)\"|([^\]]*))\]|\.(\w+)", path or "")
    names = ["".join(p) for p in parts]
    return "/".join(names) if names else (path or "x")


@dataclasses.dataclass(frozen=True)
class _Axis:
    """How one axis of the picture is drawn: the leaves shown, and the cells each
    gets (at least ``min_cells``, so a scalar beside a large leaf stays visible)."""

    leaves: tuple
    cells: tuple[int, ...]

    @property
    def edges(self) -> list[int]:
        return [0, *np.cumsum(self.cells).tolist()]


def _axis(layout, pixels: int, min_cells: int, chosen: list[str] | None) -> _Axis:
    leaves = [leaf for leaf in layout.leaves if chosen is None or leaf_label(leaf.path) in chosen]
    total = sum(leaf.size for leaf in leaves)
    budget = max(pixels - min_cells * len(leaves), len(leaves))
    cells = [
        min(leaf.size, max(min_cells, round(budget * leaf.size / total)))
        if leaf.size >= min_cells
        else min_cells
        for leaf in leaves
    ]
    return _Axis(tuple(leaves), tuple(cells))


def _resample(block: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``block`` to ``rows x cols`` cells: each cell the maximum over the entries it
    covers (an entry repeated where a small leaf is widened). NaN stays NaN."""
    for axis, cells in ((0, rows), (1, cols)):
        size = block.shape[axis]
        starts = (np.arange(cells) * size) // cells
        block = np.maximum.reduceat(block, starts, axis=axis)
    return block


def _leaf_image(result: Result, row_axis: _Axis, col_axis: _Axis) -> np.ndarray:
    """|M| in the cells of the two axes, read lazily leaf block by leaf block."""
    import dask
    import dask.array as da

    a = da.abs(result.array)
    parts = []
    for rleaf, rcells in zip(row_axis.leaves, row_axis.cells, strict=True):
        for cleaf, ccells in zip(col_axis.leaves, col_axis.cells, strict=True):
            sub = a[rleaf.slice, cleaf.slice]
            fr, fc = max(1, rleaf.size // rcells), max(1, cleaf.size // ccells)
            if fr > 1 or fc > 1:  # first coarsen by whole factors, lazily
                sub = da.coarsen(np.max, sub, {0: fr, 1: fc}, trim_excess=True)
            parts.append(sub)
    (computed,) = dask.compute(parts, scheduler="threads")
    image = np.empty((sum(row_axis.cells), sum(col_axis.cells)))
    it = iter(computed)
    for r0, rcells in zip(row_axis.edges, row_axis.cells, strict=False):
        for c0, ccells in zip(col_axis.edges, col_axis.cells, strict=False):
            block = np.asarray(next(it), dtype=np.float64)
            image[r0 : r0 + rcells, c0 : c0 + ccells] = _resample(block, rcells, ccells)
    return image


def _logged(image: np.ndarray):
    with np.errstate(divide="ignore"):
        logged = np.log10(image)
    finite = logged[np.isfinite(logged)]
    hi = float(finite.max()) if finite.size else 0.0
    lo = max(float(np.percentile(finite, 1)), hi - 12) if finite.size else 0.0
    missing = np.isnan(logged)  # blocks not computed (the fill value) or NaN entries
    return np.ma.masked_array(np.where(np.isfinite(logged), logged, lo), mask=missing), lo


def _label_axis(ax, axis: _Axis, which: str, color: str = "cyan") -> None:
    """Leaf boundaries, and every leaf labelled at its centre."""
    edges = axis.edges
    for edge in edges[1:-1]:
        (ax.axhline if which == "row" else ax.axvline)(edge - 0.5, color=color, lw=0.6)
    ticks = [(lo + hi) / 2 - 0.5 for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    labels = [leaf_label(leaf.path) for leaf in axis.leaves]
    if which == "row":
        ax.set_yticks(ticks, labels, fontsize=7)
    else:
        ax.set_xticks(ticks, labels, fontsize=7, rotation=60, ha="right")


def _choose(layout, leaves: list[str] | None) -> list[str] | None:
    if leaves is None:
        return None
    known = [leaf_label(leaf.path) for leaf in layout.leaves]
    unknown = [name for name in leaves if name not in known]
    if unknown:
        raise InputValueError(f"no leaf named {unknown[0]!r}; the leaves are: {', '.join(known)}")
    return list(leaves)


def _matplotlib():
    """``matplotlib.pyplot`` on the Agg backend. **Raises:** `MissingDependencyError`."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "plotting needs matplotlib: pip install 'diffops[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(
    result: Result,
    output: str,
    *,
    pixels: int = 800,
    leaves: list[str] | None = None,
    min_cells: int | None = None,
) -> dict:
    """A heat map of log10|M| read lazily, leaf block by leaf block: every leaf
    gets at least ``min_cells`` cells (default 3% of ``pixels``), so scalars
    beside a large leaf stay visible, and every leaf is labelled; ``leaves``
    (labels such as ``flux`` or ``shape/rho``) zooms to those rows and columns.
    Large leaves are downsampled by block maximum; missing blocks are drawn in a
    colour of their own, never as small values."""
    plt = _matplotlib()
    import matplotlib

    min_cells = min_cells or max(1, pixels * 3 // 100)
    rows_layout, cols_layout = result.layouts()
    row_axis = _axis(rows_layout, pixels, min_cells, _choose(rows_layout, leaves))
    col_axis = _axis(
        cols_layout,
        pixels,
        min_cells,
        _choose(cols_layout, leaves) if result.meta["operation"] in SQUARE else None,
    )
    logged, lo = _logged(_leaf_image(result, row_axis, col_axis))
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#9fc5e8")
    im = ax.imshow(logged, cmap=cmap, vmin=lo, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, label="log10 |entry| (max over each cell)")
    _label_axis(ax, row_axis, "row")
    _label_axis(ax, col_axis, "col")
    status = result.status()
    m, n = result.shape
    title = f"{result.meta['operation']} {m}x{n}: log10|M|, leaf widths not to scale"
    if not status["complete"]:
        title += (
            f"\nINCOMPLETE: {status['blocks_done']}/{status['blocks_total']} blocks; "
            "blue = missing or NaN"
        )
    elif np.ma.getmaskarray(logged).any():
        title += "\nblue = NaN entries"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(output, format="png")
    plt.close(fig)
    return {
        "cells": tuple(logged.shape),
        "leaves": [leaf_label(leaf.path) for leaf in row_axis.leaves],
        "missing_blocks": status["blocks_total"] - status["blocks_done"],
    }
