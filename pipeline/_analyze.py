"""``diffops analyze``: what a stored Hessian or Gauss–Newton matrix says about
the parameters' uncertainties, out of core.

- Marginal σ per leaf (min, median, max) from the stored factor (`_factor`).
- Extreme eigenvalues by Lanczos: the largest on ``M`` (streamed block by
  block); the smallest as the inverses of the largest of ``M⁻¹ = Wᵀ W``
  (streamed tile by tile of the stored ``W = L⁻¹``: shift-invert, which
  converges in a few dozen products where Lanczos on the small end of an
  ill-conditioned ``M`` takes hundreds). Without a factor (not positive
  definite), the smallest come from ``M`` itself.
- The picture: the correlation matrix (every parameter up to ``pixels``, else
  evenly spaced ones per leaf) beside the eigenvalue spectrum (all of it when
  the matrix is small enough to assemble, else the extremes).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from diffops_core.internal import InputError, InputValueError

from ._analysis import (
    InverseProduct,
    _StreamedMatrix,
    extremes,
    require_square_complete,
    streamed_extremes,
)
from ._factor import FactorTask, read_variance
from ._report import _Axis, _axis, _label_axis, leaf_label
from ._uncertainty import factor

if TYPE_CHECKING:  # pragma: no cover
    from ._result import Result

__all__ = ["Analysis", "LeafStd", "analyze"]

#: Matrices up to this many bytes get every eigenvalue in the picture.
_FULL_SPECTRUM_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class LeafStd:
    """The marginal σ of one leaf: `min`, `median`, `max` over its entries."""

    label: str
    shape: tuple[int, ...]
    min: float
    median: float
    max: float


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What `Result.analyze` found. `largest` descending and `smallest` ascending
    are eigenvalues of the stored ``M`` (the damping not added); `condition`
    and `positive_definite` are ``M``'s; `damped_condition` that of
    ``M + damping I``; `leaves` is empty and `error` says why when no σ could be
    computed (not positive definite)."""

    location: str
    operation: str
    n: int
    damping: float
    largest: tuple[float, ...]
    smallest: tuple[float, ...]
    condition: float
    positive_definite: bool
    damped_condition: float
    leaves: tuple[LeafStd, ...]
    error: str | None
    matvecs: int
    correlation_condition: float = float("nan")
    """The condition number of the correlation matrix ``D^-1/2 (M + d I) D^-1/2``
    (``D`` its diagonal): what is left of the condition number once each
    parameter's units are scaled out. Large only when parameters are degenerate;
    NaN when not positive definite."""

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["leaves"] = [dataclasses.asdict(leaf) for leaf in self.leaves]
        return out

    def lines(self) -> list[str]:
        """The analysis as text (what ``diffops analyze`` prints)."""
        verdict = "yes" if self.positive_definite else "NO"
        out = [
            f"{self.location}: {self.operation} {self.n}x{self.n}",
            f"  positive definite   {verdict} (smallest eigenvalue {self.smallest[0]:.4g})",
            f"  largest eigenvalues {', '.join(f'{v:.4g}' for v in self.largest)}",
            f"  smallest            {', '.join(f'{v:.4g}' for v in self.smallest)}",
            f"  condition number    {self.condition:.4g}",
        ]
        if np.isfinite(self.correlation_condition):
            out.append(
                f"  of the correlation  {self.correlation_condition:.4g} (units scaled out: "
                + (
                    "the parameters are degenerate)"
                    if self.correlation_condition * np.finfo(np.float64).eps > 1e-8
                    else "the raw figure is mostly unit scaling)"
                )
            )
        if self.positive_definite and self.condition * np.finfo(np.float64).eps > 1e-4:
            out.append(
                f"  ill-conditioned: the σ of the weakest directions are good to about "
                f"{self.condition * np.finfo(np.float64).eps:.1g} relative (condition x eps)"
            )
        if self.damping:
            out.append(
                f"  with damping {self.damping:g}: condition number {self.damped_condition:.4g}"
            )
        if self.error:  # one smallest eigenvalue in the output: the one above
            need = max(0.0, -self.smallest[0])
            damped = " plus the damping" if self.damping else ""
            return [
                *out,
                f"  marginal sigma      not computed: the matrix{damped} is not positive "
                f"definite; pass damping= (--damping) greater than {need:.4g} to regularise it",
            ]
        out.append(f"  {'marginal sigma':<28} {'shape':<14} {'min':>11} {'median':>11} {'max':>11}")
        for leaf in self.leaves:
            out.append(
                f"  {leaf.label:<28} {leaf.shape!s:<14} {leaf.min:>11.4g} {leaf.median:>11.4g}"
                f" {leaf.max:>11.4g}"
            )
        return out


def analyze(
    result: Result, *, damping: float = 0.0, k: int = 6, client: Any = None, progress: bool = True
) -> tuple[Analysis, FactorTask | None]:
    """See `Result.analyze`; with the stored factor (None when there is none)."""
    require_square_complete(result, "the analysis")
    n = result.shape[0]
    k = max(1, min(int(k), n - 1))
    std, error, task = None, None, None
    try:
        task = factor(result, damping=damping, client=client, progress=progress)
        std = np.sqrt(read_variance(task))
    except InputError as err:
        if "not positive definite" not in str(err):
            raise
        error = str(err)
    found = streamed_extremes(result, k, "both", task, progress)
    largest, smallest, matvecs = found["largest"], found["smallest"], found["matvecs"]
    if not largest or not smallest:
        largest, smallest = _exact_extremes(result, k, matvecs)
    low, high = float(smallest[0]), float(largest[0])
    analysis = Analysis(
        location=str(result.location),
        operation=result.meta["operation"],
        n=n,
        damping=float(damping),
        largest=tuple(float(v) for v in largest),
        smallest=tuple(float(v) for v in smallest),
        condition=high / low if low > 0 else float("inf"),
        positive_definite=low > 0,
        damped_condition=(high + damping) / (low + damping) if low + damping > 0 else float("inf"),
        leaves=_leaf_std(result, std) if std is not None else (),
        error=error,
        matvecs=matvecs,
        correlation_condition=_correlation_condition(result, task, k, progress),
    )
    return analysis, task


def _correlation_condition(result: Result, task: FactorTask | None, k: int, progress: bool):
    """The condition number of ``S (M + d I) S``, ``S = diag(M + d I)^-1/2``: every
    eigenvalue for a matrix small enough to assemble, else Lanczos at the large
    end on ``M`` streamed and scaled, and on ``S⁻¹ (M + d I)⁻¹ S⁻¹`` (the stored
    factor) for the small end. NaN without a factor (not positive definite)."""
    if task is None:
        return float("nan")
    from scipy.sparse.linalg import LinearOperator

    n, d = task.n, task.damping
    if result.nbytes <= _FULL_SPECTRUM_BYTES:
        a = np.asarray(result.assemble(), np.float64)
        a[np.diag_indices_from(a)] += d
        s = 1 / np.sqrt(np.diag(a))
        eig = np.linalg.eigvalsh(a * np.outer(s, s))
        return float(eig[-1] / eig[0]) if eig[0] > 0 else float("inf")
    streamed = _StreamedMatrix(result, progress)
    try:
        diag = (
            np.concatenate(
                [
                    np.diagonal(streamed.slab(b.index, slice(b.start, b.stop))[b.start : b.stop])
                    for b in streamed.plan
                ]  # fmt: skip
            )
            + d
        )
        s = 1 / np.sqrt(diag)
        big = LinearOperator((n, n), matvec=lambda v: s * streamed(s * v) + d * s * s * v,
                             dtype=np.float64)  # fmt: skip
        inverse = InverseProduct(task, streamed.bar)
        small = LinearOperator((n, n), matvec=lambda v: inverse(v / s) / s, dtype=np.float64)
        high, mu = extremes(big, 1, "LA"), extremes(small, 1, "LA")
    finally:
        streamed.close()
    return float(high[0] * mu[0]) if high and mu else float("nan")


def _exact_extremes(result: Result, k: int, matvecs: int) -> tuple[list, list]:
    """Both ends from every eigenvalue (`numpy.linalg.eigvalsh`), for a matrix
    small enough to assemble, when Lanczos could not resolve an end (the small
    end of an indefinite, ill-conditioned matrix)."""
    if result.nbytes > 2 * _FULL_SPECTRUM_BYTES:
        raise InputValueError(
            f"Lanczos found no eigenvalue at one end of the spectrum of {result.location!r} "
            f"within {matvecs} products, and the matrix is too large to solve in memory here"
        )
    eig = np.linalg.eigvalsh(np.asarray(result.assemble(), np.float64))
    return eig[::-1][:k].tolist(), eig[:k].tolist()


def _leaf_std(result: Result, std: np.ndarray) -> tuple[LeafStd, ...]:
    _rows, cols = result.layouts()
    return tuple(
        LeafStd(
            leaf_label(leaf.path),
            tuple(leaf.shape),
            float(np.min(std[leaf.slice])),
            float(np.median(std[leaf.slice])),
            float(np.max(std[leaf.slice])),
        )
        for leaf in cols.leaves
    )


# -- the picture ---------------------------------------------------------------------


def _sample(axis: _Axis) -> np.ndarray:
    """Evenly spaced parameters of each leaf, as many as the leaf's cells (a leaf
    smaller than its cells repeats its entries)."""
    picks = []
    for leaf, cells in zip(axis.leaves, axis.cells, strict=True):
        start = leaf.slice.start
        picks.append(start + (np.arange(cells) * leaf.size) // cells)
    return np.concatenate(picks)


def _inverse_columns(task: FactorTask, columns: np.ndarray) -> np.ndarray:
    """``W[:, columns]`` read tile by tile (tiles above the diagonal are zero)."""
    arrays = task.arrays()
    out = np.zeros((task.n, columns.size))
    for j in range(task.tiles):
        span = task.span(j)
        mine = np.flatnonzero((columns >= span.start) & (columns < span.stop))
        if mine.size:
            for i in range(j, task.tiles):
                tile = task.read(arrays, "inverse", i, j)
                out[task.span(i), mine] = tile[:, columns[mine] - span.start]
    return out


def correlation(task: FactorTask, columns: np.ndarray) -> np.ndarray:
    """The correlation matrix of the parameters ``columns``: ``C[S, S]`` with
    ``C = Wᵀ W``, scaled by the σ."""
    w = _inverse_columns(task, columns)
    cov = w.T @ w
    sigma = np.sqrt(np.diag(cov))
    return cov / np.outer(sigma, sigma)


def _spectrum_panel(ax, result: Result, analysis: Analysis) -> None:
    """Eigenvalues by index, |λ| on a log scale (negative ones marked): all of
    them for a small matrix, else the extremes Lanczos found."""
    n = analysis.n
    if result.nbytes <= _FULL_SPECTRUM_BYTES:
        eig = np.linalg.eigvalsh(np.asarray(result.assemble(), np.float64))[::-1]
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


def _correlation_panel(fig, ax, result: Result, task: FactorTask | None, pixels: int) -> None:
    """The correlation matrix with leaf boundaries and labels."""
    if task is None:
        ax.text(0.5, 0.5, "not positive definite:\nno covariance (try --damping)",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        ax.set_axis_off()
        return
    _rows, cols = result.layouts()
    axis = _axis(cols, pixels, max(1, pixels * 3 // 100), None)
    picks = _sample(axis)
    image = correlation(task, picks)
    im = ax.imshow(image, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, label="correlation", fraction=0.046)
    _label_axis(ax, axis, "row", color="k")
    _label_axis(ax, axis, "col", color="k")
    sampled = (
        ""
        if picks.size == task.n and (picks == np.arange(task.n)).all()
        else (f" ({picks.size} of {task.n} parameters, evenly spaced per leaf)")
    )
    damped = f", damping {task.damping:g}" if task.damping else ""
    ax.set_title(f"correlation{sampled}{damped}", fontsize=9)


def plot_analysis(
    result: Result, analysis: Analysis, task: FactorTask | None, output: str, pixels: int = 400
) -> None:
    """Write the correlation matrix beside the eigenvalue spectrum to ``output``."""
    from ._report import _matplotlib

    plt = _matplotlib()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6), dpi=110,
                                      gridspec_kw={"width_ratios": [1.15, 1]})  # fmt: skip
    _correlation_panel(fig, left, result, task, pixels)
    _spectrum_panel(right, result, analysis)
    fig.suptitle(
        f"{analysis.operation} {analysis.n}x{analysis.n} at {analysis.location}", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(output, format="png")
    plt.close(fig)
