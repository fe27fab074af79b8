"""The heat map of a stored matrix (``diffops plot``), read lazily (dask over
Zarr) leaf block by leaf block, so it works on matrices larger than memory."""

from __future__ import annotations

import dataclasses

import dask
import dask.array as da
import numpy as np

from diffops_core.internal import InputValueError

from .._errors import MissingDependencyError
from ..store import SQUARE, ResultStore, leaf_label

__all__ = ["Axis", "axis_of", "label_axis", "matplotlib_pyplot", "plot"]


@dataclasses.dataclass(frozen=True)
class Axis:
    """How one axis of the picture is drawn: the leaves shown, and the cells each
    gets (at least ``min_cells``, so a scalar beside a large leaf stays visible)."""

    leaves: tuple
    cells: tuple[int, ...]

    @property
    def edges(self) -> list[int]:
        return [0, *np.cumsum(self.cells).tolist()]


def axis_of(layout, pixels: int, min_cells: int, chosen: list[str] | None) -> Axis:
    leaves = [leaf for leaf in layout.leaves if chosen is None or leaf_label(leaf.path) in chosen]
    total = sum(leaf.size for leaf in leaves)
    budget = max(pixels - min_cells * len(leaves), len(leaves))
    cells = [
        min(leaf.size, max(min_cells, round(budget * leaf.size / total)))
        if leaf.size >= min_cells
        else min_cells
        for leaf in leaves
    ]
    return Axis(tuple(leaves), tuple(cells))


def resample(block: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``block`` to ``rows x cols`` cells: each cell the maximum over the entries it
    covers (an entry repeated where a small leaf is widened). NaN stays NaN."""
    for axis, cells in ((0, rows), (1, cols)):
        size = block.shape[axis]
        starts = (np.arange(cells) * size) // cells
        block = np.maximum.reduceat(block, starts, axis=axis)
    return block


def _leaf_image(store: ResultStore, row_axis: Axis, col_axis: Axis) -> np.ndarray:
    """|M| in the cells of the two axes, read lazily leaf block by leaf block."""

    a = da.abs(da.from_zarr(store.matrix))
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
            image[r0 : r0 + rcells, c0 : c0 + ccells] = resample(block, rcells, ccells)
    return image


def _cell_of(index: np.ndarray, size: int, cells: int) -> np.ndarray:
    """The cell each index of a leaf of ``size`` falls in (`resample`'s cells)."""
    starts = (np.arange(cells) * size) // cells
    return np.searchsorted(starts, index, side="right") - 1


def _sparse_image(store: ResultStore, row_axis: Axis, col_axis: Axis) -> tuple[np.ndarray, bool]:
    """A sparse result's cells: the largest |entry| of each (0 where the pattern
    has none), from the recovered matrix; the pattern alone (1 where it has an
    entry) while the result is incomplete or unchecked. A leaf smaller than its
    cells is widened, each entry repeated (as `resample` does). **Returns:**
    (image, whether it holds values)."""
    values = store.status()["complete"] and store.checked
    matrix = (store.sparse() if values else store.sparsity().pattern).tocsr()
    rows_eff = [min(c, leaf.size) for leaf, c in zip(row_axis.leaves, row_axis.cells, strict=True)]
    cols_eff = [min(c, leaf.size) for leaf, c in zip(col_axis.leaves, col_axis.cells, strict=True)]
    image = np.zeros((sum(rows_eff), sum(cols_eff)))
    r_edges, c_edges = np.cumsum([0, *rows_eff]), np.cumsum([0, *cols_eff])
    for rleaf, r0, rcells in zip(row_axis.leaves, r_edges, rows_eff, strict=False):
        part = matrix[rleaf.slice].tocoo()
        for cleaf, c0, ccells in zip(col_axis.leaves, c_edges, cols_eff, strict=False):
            inside = (part.col >= cleaf.slice.start) & (part.col < cleaf.slice.stop)
            rows = r0 + _cell_of(part.row[inside], rleaf.size, rcells)
            cols = c0 + _cell_of(part.col[inside] - cleaf.slice.start, cleaf.size, ccells)
            entry = np.abs(part.data[inside].astype(np.float64)) if values else 1.0
            np.maximum.at(image, (rows, cols), entry)
    return image[np.ix_(_widen(row_axis, r_edges), _widen(col_axis, c_edges))], values


def _widen(axis: Axis, edges) -> np.ndarray:
    """For each drawn cell of ``axis``, its cell at no more than one per entry."""
    out = []
    for leaf, start, cells in zip(axis.leaves, edges, axis.cells, strict=False):
        own = (np.arange(cells) * leaf.size) // cells if cells > leaf.size else np.arange(cells)
        out.append(start + own)
    return np.concatenate(out)


def _logged(image: np.ndarray):
    with np.errstate(divide="ignore"):
        logged = np.log10(image)
    finite = logged[np.isfinite(logged)]
    hi = float(finite.max()) if finite.size else 0.0
    lo = max(float(np.percentile(finite, 1)), hi - 12) if finite.size else 0.0
    missing = np.isnan(logged)  # blocks not computed (the fill value) or NaN entries
    return np.ma.masked_array(np.where(np.isfinite(logged), logged, lo), mask=missing), lo


def label_axis(ax, axis: Axis, which: str, color: str = "cyan") -> None:
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


def matplotlib_pyplot():
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
    store: ResultStore,
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
    plt = matplotlib_pyplot()
    import matplotlib

    min_cells = min_cells or max(1, pixels * 3 // 100)
    rows_layout, cols_layout = store.layouts()
    row_axis = axis_of(rows_layout, pixels, min_cells, _choose(rows_layout, leaves))
    col_axis = axis_of(
        cols_layout,
        pixels,
        min_cells,
        _choose(cols_layout, leaves) if store.meta["operation"] in SQUARE else None,
    )
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    if store.is_sparse:
        logged = _spy(store, ax, fig, row_axis, col_axis)
    else:
        logged, lo = _logged(_leaf_image(store, row_axis, col_axis))
        cmap = matplotlib.colormaps["magma"].with_extremes(bad="#9fc5e8")
        im = ax.imshow(logged, cmap=cmap, vmin=lo, interpolation="nearest", aspect="auto")
        fig.colorbar(im, ax=ax, label="log10 |entry| (max over each cell)")
    edge = "0.55" if store.is_sparse else "cyan"  # on white, or on the colour map
    label_axis(ax, row_axis, "row", edge)
    label_axis(ax, col_axis, "col", edge)
    status = store.status()
    ax.set_title(_title(store, status, logged), fontsize=9)
    fig.tight_layout()
    fig.savefig(output, format="png")
    plt.close(fig)
    return {
        "cells": tuple(logged.shape),
        "leaves": [leaf_label(leaf.path) for leaf in row_axis.leaves],
        "missing_blocks": status["blocks_total"] - status["blocks_done"],
        "sparse": store.is_sparse,
    }


def _spy(store: ResultStore, ax, fig, row_axis: Axis, col_axis: Axis):
    """A sparse result's spy plot: white where the pattern has no entry, else
    log10 of the largest |entry| of the cell (the pattern alone, in one colour,
    until the result is complete and checked). **Returns:** the masked image."""
    import matplotlib

    image, values = _sparse_image(store, row_axis, col_axis)
    if values:
        logged, lo = _logged(image)
        logged = np.ma.masked_where(image == 0, logged)
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
        im = ax.imshow(logged, cmap=cmap, vmin=lo, interpolation="nearest", aspect="auto")
        fig.colorbar(im, ax=ax, label="log10 |entry| (max over each cell); white: no entry")
        return logged
    spy = np.ma.masked_where(image == 0, image)
    cmap = matplotlib.colormaps["Greys"].with_extremes(bad="white")
    ax.imshow(spy, cmap=cmap, vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    return np.ma.masked_array(image, mask=np.zeros(image.shape, bool))


def _title(store: ResultStore, status: dict, logged) -> str:
    m, n = store.shape
    info = store.sparsity_meta
    if info:
        title = (
            f"{store.meta['operation']} {m}x{n}, sparse: nnz {info['nnz']:,}, "
            f"{info['ncolors']} colours ({info['mode']}); leaf widths not to scale"
        )
        if not (status["complete"] and store.checked):
            title += "\nthe pattern only: the result is incomplete or not yet checked"
        return title
    title = f"{store.meta['operation']} {m}x{n}: log10|M|, leaf widths not to scale"
    if not status["complete"]:
        title += (
            f"\nINCOMPLETE: {status['blocks_done']}/{status['blocks_total']} blocks; "
            "blue = missing or NaN"
        )
    elif np.ma.getmaskarray(logged).any():
        title += "\nblue = NaN entries"
    return title
