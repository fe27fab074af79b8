"""Reading a stored result for people: checks, the summary, the heat map.

Everything here reads the store lazily (dask over Zarr), block by block, so it
works on matrices larger than memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from diffops_core.internal import InputError

from ._store import NONFINITE

if TYPE_CHECKING:  # pragma: no cover
    from ._result import Result, StoreSummary

__all__ = ["MissingDependencyError", "checks", "plot", "summarise"]


class MissingDependencyError(InputError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def _square(result: Result):
    """The matrix with square chunks, so that row blocks and their transposes line up."""
    side = result._store.plan.block_size
    return result.array.rechunk((side, side))


def checks(result: Result) -> dict:
    """Non-finite entries (from the records) and, for a Hessian, the relative
    symmetry error max|H - H^T| / max|H| (read lazily, block by block)."""
    import dask
    import dask.array as da

    records = result._store.read_records()
    out: dict = {"nonfinite": int(records[:, NONFINITE].sum())}
    if result.meta["operation"] == "hessian":
        a = _square(result)
        finite = da.where(da.isfinite(a), a, 0)
        diff, scale = dask.compute(
            da.max(da.abs(finite - finite.T)), da.max(da.abs(finite)), scheduler="threads"
        )
        out["symmetry_error"] = float(diff / scale) if scale > 0 else 0.0
    return out


def _leaf_figures(result: Result) -> list:
    import dask
    import dask.array as da

    from ._result import LeafSummary

    rows_layout, _ = result.layouts()
    a = _square(result)
    hessian = result.meta["operation"] == "hessian"
    stats = []
    for leaf in rows_layout.leaves:
        row = a[leaf.slice, :]
        entry = {"norm": da.linalg.norm(row)}
        if hessian:
            diag = da.diagonal(a[leaf.slice, leaf.slice])
            entry.update(
                diagonal_min=diag.min(),
                diagonal_max=diag.max(),
                asymmetry=da.max(da.abs(row - a[:, leaf.slice].T)),
            )
        stats.append(entry)
    (stats,) = dask.compute(stats, scheduler="threads")
    return [
        LeafSummary(
            path=leaf.path, shape=tuple(leaf.shape), **{k: float(v) for k, v in entry.items()}
        )
        for leaf, entry in zip(rows_layout.leaves, stats, strict=True)
    ]


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


def _image(result: Result, pixels: int):
    """(log10|M| downsampled by block maximum as a masked array, the factor)."""
    import dask.array as da

    a = da.abs(result.array)
    m, n = result.shape
    factor = max(1, math.ceil(max(m, n) / pixels))
    if factor > 1:
        a = da.coarsen(np.max, a, {0: factor, 1: factor}, trim_excess=True)
    image = np.asarray(a.compute(scheduler="threads"), dtype=np.float64)
    with np.errstate(divide="ignore"):
        logged = np.log10(image)
    finite = logged[np.isfinite(logged)]
    hi = float(finite.max()) if finite.size else 0.0
    lo = max(float(np.percentile(finite, 1)), hi - 12) if finite.size else 0.0
    missing = np.isnan(logged)  # blocks not computed (the fill value) or NaN entries
    return np.ma.masked_array(np.where(np.isfinite(logged), logged, lo), mask=missing), factor, lo


def _label_leaves(ax, layout, factor: int, axis: str) -> None:
    """Draw the leaf boundaries and label the leaves, widest first, skipping any
    label too close to one already placed."""
    edges = [leaf.offset / factor for leaf in layout.leaves] + [layout.n / factor]
    for edge in edges[1:-1]:
        (ax.axhline if axis == "row" else ax.axvline)(edge - 0.5, color="cyan", lw=0.6)
    spans = sorted(
        zip(edges[:-1], edges[1:], layout.leaves, strict=True), key=lambda t: t[0] - t[1]
    )
    kept: list[tuple[float, str]] = []
    gap = 0.03 * edges[-1]
    for lo, hi, leaf in spans:
        centre = (lo + hi) / 2 - 0.5
        if all(abs(centre - c) >= gap for c, _ in kept):
            kept.append((centre, leaf.path or "x"))
    kept.sort()
    ticks, labels = [c for c, _ in kept], [label for _, label in kept]
    if axis == "row":
        ax.set_yticks(ticks, labels, fontsize=7)
    else:
        ax.set_xticks(ticks, labels, fontsize=7, rotation=60, ha="right")


def plot(result: Result, output: str, *, pixels: int = 800) -> dict:
    """A heat map of log10|M|, downsampled (block maximum) for large matrices and
    read lazily, with the leaf boundaries drawn and labelled; missing blocks are
    drawn in a colour of their own, never as small values."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "plotting needs matplotlib: pip install 'diffops[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logged, factor, lo = _image(result, pixels)
    rows_layout, cols_layout = result.layouts()
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#9fc5e8")
    im = ax.imshow(logged, cmap=cmap, vmin=lo, interpolation="nearest", aspect="auto")
    fig.colorbar(
        im, ax=ax, label="log10 |entry|" + (f" (max over {factor}x{factor})" if factor > 1 else "")
    )
    _label_leaves(ax, rows_layout, factor, "row")
    _label_leaves(ax, cols_layout, factor, "col")
    status = result.status()
    m, n = result.shape
    title = f"{result.meta['operation']} {m}x{n}: log10|M|"
    if not status["complete"]:
        title += (
            f"\nINCOMPLETE: {status['blocks_done']}/{status['blocks_total']} blocks; "
            "blue = missing or NaN"
        )
    elif np.ma.getmaskarray(logged).any():
        title += "\nblue = NaN entries"
    ax.set_title(title, fontsize=9 if "\n" in title else None)
    fig.tight_layout()
    fig.savefig(output, format="png")
    plt.close(fig)
    return {
        "cells": tuple(logged.shape),
        "factor": factor,
        "missing_blocks": status["blocks_total"] - status["blocks_done"],
    }
