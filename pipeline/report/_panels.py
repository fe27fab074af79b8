"""The picture of ``diffops analyze``: the correlation matrix (every parameter
up to ``pixels``, else evenly spaced ones per leaf) beside the eigenvalue
spectrum (all of it when the matrix is small enough to assemble, else the
extremes)."""

from __future__ import annotations

import numpy as np

from ..linalg import Analysis, FactorTask, correlation, solvable
from ..store import ResultStore
from ._heatmap import Axis, axis_of, label_axis, matplotlib_pyplot

__all__ = ["plot_analysis"]


def _sample(axis: Axis) -> np.ndarray:
    """Evenly spaced parameters of each leaf, as many as the leaf's cells (a leaf
    smaller than its cells repeats its entries)."""
    picks = []
    for leaf, cells in zip(axis.leaves, axis.cells, strict=True):
        start = leaf.slice.start
        picks.append(start + (np.arange(cells) * leaf.size) // cells)
    return np.concatenate(picks)


def _spectrum_panel(ax, store: ResultStore, analysis: Analysis) -> None:
    """Eigenvalues by index, |λ| on a log scale (negative ones marked): all of
    them for a small matrix, else the extremes Lanczos found."""
    n = analysis.n
    if solvable(store):
        eig = np.linalg.eigvalsh(np.asarray(store.assemble(), np.float64))[::-1]
        index, what = np.arange(1, n + 1), f"all {n} eigenvalues"
    else:
        k = len(analysis.largest)
        eig = np.array([*analysis.largest, *analysis.smallest[::-1]])
        index = np.array([*range(1, k + 1), *range(n - len(analysis.smallest) + 1, n + 1)])
        what = f"the {k} largest and {len(analysis.smallest)} smallest"
        ax.axvspan(k + 0.5, n - len(analysis.smallest) + 0.5, color="0.92")
    positive = eig > 0
    ax.semilogy(index[positive], eig[positive], ".", ms=3, color="C0", label="λ > 0")
    if (~positive).any():
        ax.semilogy(index[~positive], np.abs(eig[~positive]) + 1e-300, "x", ms=4, color="C3",
                    label="|λ|, λ <= 0")  # fmt: skip
    ax.set_xlabel("index (descending)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"spectrum: {what}\ncondition number {analysis.condition:.3g}", fontsize=9)
    ax.legend(fontsize=7)


def _correlation_panel(fig, ax, store: ResultStore, task: FactorTask | None, pixels: int) -> None:
    """The correlation matrix with leaf boundaries and labels."""
    if task is None:
        ax.text(0.5, 0.5, "not positive definite:\nno covariance (try --damping)",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        ax.set_axis_off()
        return
    _rows, cols = store.layouts()
    axis = axis_of(cols, pixels, max(1, pixels * 3 // 100), None)
    picks = _sample(axis)
    image = correlation(task, picks)
    im = ax.imshow(image, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, label="correlation", fraction=0.046)
    label_axis(ax, axis, "row", color="k")
    label_axis(ax, axis, "col", color="k")
    sampled = (
        ""
        if picks.size == task.n and (picks == np.arange(task.n)).all()
        else (f" ({picks.size} of {task.n} parameters, evenly spaced per leaf)")
    )
    damped = f", damping {task.damping:g}" if task.damping else ""
    ax.set_title(f"correlation{sampled}{damped}", fontsize=9)


def plot_analysis(
    store: ResultStore, analysis: Analysis, task: FactorTask | None, output: str, pixels: int = 400
) -> None:
    """Write the correlation matrix beside the eigenvalue spectrum to ``output``."""

    plt = matplotlib_pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6), dpi=110,
                                      gridspec_kw={"width_ratios": [1.15, 1]})  # fmt: skip
    _correlation_panel(fig, left, store, task, pixels)
    _spectrum_panel(right, store, analysis)
    fig.suptitle(
        f"{analysis.operation} {analysis.n}x{analysis.n} at {analysis.location}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(output, format="png")
    plt.close(fig)
