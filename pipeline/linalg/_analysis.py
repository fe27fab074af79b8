"""What a stored Hessian or Gauss–Newton matrix says about the parameters'
uncertainties, out of core (``diffops analyze``; the picture is
`pipeline.report`'s):

- marginal σ per leaf (min, median, max) from the stored factor (`_factor`);
- extreme eigenvalues by Lanczos: the largest on ``M`` (streamed block by
  block); the smallest as the inverses of the largest of ``M⁻¹ = Wᵀ W``
  (streamed tile by tile of the stored ``W = L⁻¹``: shift-invert, which
  converges in a few dozen products where Lanczos on the small end of an
  ill-conditioned ``M`` takes hundreds). Without a factor (not positive
  definite), the smallest come from ``M`` itself;
- the condition number, also of the correlation matrix (units scaled out).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from diffops_core.internal import InputValueError

from .._errors import NotPositiveDefiniteError
from ..store import ResultStore, leaf_label, read_variance
from ._cholesky import FactorTask
from ._factor import factor, require_square_complete
from ._lanczos import (
    InverseProduct,
    StreamedMatrix,
    extremes,
    operator,
    products,
    streamed_extremes,
)
from ._spectrum import verdict

__all__ = ["FULL_SPECTRUM_BYTES", "Analysis", "LeafStd", "analyze", "correlation", "solvable"]

#: Matrices up to this many bytes get every eigenvalue (and the picture all of them).
FULL_SPECTRUM_BYTES = 256 * 2**20


def solvable(store: ResultStore, factor: int = 1) -> bool:
    """Whether ``store``'s matrix is small enough (`FULL_SPECTRUM_BYTES` times
    ``factor``) to assemble and solve for every eigenvalue here."""
    return store.nbytes <= factor * FULL_SPECTRUM_BYTES


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
        # σ are invariant to each parameter's units: their accuracy follows the
        # unit-free (correlation) condition number, not the raw one
        unit_free = np.isfinite(self.correlation_condition)
        accuracy = (self.correlation_condition if unit_free else self.condition) * np.finfo(
            np.float64
        ).eps
        if self.positive_definite and accuracy > 1e-4:
            what = "correlation condition" if unit_free else "condition"
            out.append(
                f"  ill-conditioned: the σ of the weakest directions are good to about "
                f"{accuracy:.1g} relative ({what} x eps)"
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
    store: ResultStore, *, damping: float = 0.0, k: int = 6, client: Any = None,
    progress: bool = True,
) -> tuple[Analysis, FactorTask | None]:  # fmt: skip
    """See `Result.analyze`; with the stored factor (None when there is none)."""
    require_square_complete(store, "the analysis")
    n = store.shape[0]
    k = max(1, min(int(k), n - 1))
    std, error, task = None, None, None
    try:
        task = factor(store, damping=damping, client=client, progress=progress)
        std = np.sqrt(read_variance(task))
    except NotPositiveDefiniteError as err:
        error = str(err)
    found = streamed_extremes(store, k, "both", task, progress)
    largest, smallest, matvecs = found["largest"], found["smallest"], found["matvecs"]
    if not largest or not smallest:
        largest, smallest = _exact_extremes(store, k, matvecs)
    low, high = float(smallest[0]), float(largest[0])
    analysis = Analysis(
        location=str(store.location),
        operation=store.meta["operation"],
        n=n,
        damping=float(damping),
        largest=tuple(float(v) for v in largest),
        smallest=tuple(float(v) for v in smallest),
        **verdict(largest, smallest),
        damped_condition=(high + damping) / (low + damping) if low + damping > 0 else float("inf"),
        leaves=_leaf_std(store, std) if std is not None else (),
        error=error,
        matvecs=matvecs,
        correlation_condition=_correlation_condition(store, task, progress),
    )
    return analysis, task


def _correlation_condition(store: ResultStore, task: FactorTask | None, progress: bool):
    """The condition number of ``S (M + d I) S``, ``S = diag(M + d I)^-1/2``: every
    eigenvalue for a matrix small enough to assemble, else Lanczos at the large
    end on ``M`` streamed and scaled, and on ``S⁻¹ (M + d I)⁻¹ S⁻¹`` (the stored
    factor) for the small end. NaN without a factor (not positive definite)."""
    if task is None:
        return float("nan")
    n, d = task.n, task.damping
    if solvable(store):
        a = np.asarray(store.assemble(), np.float64)
        a[np.diag_indices_from(a)] += d
        s = 1 / np.sqrt(np.diag(a))
        eig = np.linalg.eigvalsh(a * np.outer(s, s))
        return float(eig[-1] / eig[0]) if eig[0] > 0 else float("inf")
    with products(progress) as listeners:
        streamed, inverse = StreamedMatrix(store, listeners), InverseProduct(task, listeners)
        s = 1 / np.sqrt(streamed.diagonal() + d)
        high = extremes(operator(lambda v: s * streamed(s * v) + d * s * s * v, n), 1, "LA")
        mu = extremes(operator(lambda v: inverse(v / s) / s, n), 1, "LA")
    return float(high[0] * mu[0]) if high and mu else float("nan")


def _exact_extremes(store: ResultStore, k: int, matvecs: int) -> tuple[list, list]:
    """Both ends from every eigenvalue (`numpy.linalg.eigvalsh`), for a matrix
    small enough to assemble, when Lanczos could not resolve an end (the small
    end of an indefinite, ill-conditioned matrix)."""
    if not solvable(store, 2):
        raise InputValueError(
            f"Lanczos found no eigenvalue at one end of the spectrum of {store.location!r} "
            f"within {matvecs} products, and the matrix is too large to solve in memory here"
        )
    eig = np.linalg.eigvalsh(np.asarray(store.assemble(), np.float64))
    return eig[::-1][:k].tolist(), eig[:k].tolist()


def _leaf_std(store: ResultStore, std: np.ndarray) -> tuple[LeafStd, ...]:
    _rows, cols = store.layouts()
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
