"""The blocked Cholesky factorisation of a stored square matrix, tile by tile,
into the store's factor group (`Tiles`): the tile tasks and their order. The
algorithm is described in `pipeline.linalg`'s docstring."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import scipy.linalg

from .._errors import NotPositiveDefiniteTile
from ..run import BlockEvent, Callback, Executor
from ..store import INVERSE, LOWER, VARIANCE, Tiles, checksum

__all__ = ["FactorTask", "factorise"]


@dataclasses.dataclass(frozen=True)
class FactorTask(Tiles):
    """The tile computations, runnable wherever the store can be read (a worker
    opens the store itself: the task is a few numbers and a location)."""

    def lower_tile(self, i: int, j: int) -> None:
        """Compute and store ``L[i, j]`` (``i >= j``; ``L[j, k]`` for ``k <= j`` done)."""
        arrays = self.arrays()
        acc = self.source(i, j)
        for k in range(j):
            left = self.read(arrays, "lower", i, k)
            right = left if i == j else self.read(arrays, "lower", j, k)
            acc -= left @ right.T
            del left, right
        if i == j:
            try:
                value = np.linalg.cholesky(acc)
            except np.linalg.LinAlgError:
                span = self.span(j)
                raise NotPositiveDefiniteTile(span.start, span.stop) from None
        else:
            diag = self.read(arrays, "lower", j, j)
            # X L[j,j]^T = acc  <=>  L[j,j] X^T = acc^T
            value = scipy.linalg.solve_triangular(diag, acc.T, lower=True).T
        self.write(arrays, "lower", i, j, np.ascontiguousarray(value))

    def inverse_column(self, j: int) -> None:
        """Compute (or re-read) tile column ``j`` of ``W = L⁻¹`` and store
        ``diag(M⁻¹)`` of its columns: the column sums of ``W[:, j]²``."""
        arrays = self.arrays()
        records = np.asarray(arrays["records"][INVERSE, :, j])
        width = self.span(j).stop - self.span(j).start
        squares = np.zeros(width)
        for i in range(j, self.tiles):
            value = None
            if records[i]:
                value = self.read(arrays, "inverse", i, j)
                if checksum(value) + 1 != records[i]:
                    value = None  # damaged since: compute it again
            if value is None:
                diag = self.read(arrays, "lower", i, i)
                if i == j:
                    rhs = np.eye(width)
                else:
                    rhs = np.zeros((diag.shape[0], width))
                    for k in range(j, i):
                        rhs -= self.read(arrays, "lower", i, k) @ self.read(arrays, "inverse", k, j)
                value = np.ascontiguousarray(scipy.linalg.solve_triangular(diag, rhs, lower=True))
                self.write(arrays, "inverse", i, j, value)
            squares += np.einsum("ij,ij->j", value, value)
        arrays["variance"][self.span(j)] = squares
        arrays["records"][VARIANCE, j, j] = checksum(squares) + 1

    def covariance_tile(self, arrays: dict, a: int, b: int) -> np.ndarray:
        """``C[a, b] = Σ_{k >= max(a, b)} W[k, a]ᵀ W[k, b]`` (``M⁻¹ = Wᵀ W``)."""
        rows = self.span(a).stop - self.span(a).start
        cols = self.span(b).stop - self.span(b).start
        out = np.zeros((rows, cols))
        for k in range(max(a, b), self.tiles):
            out += self.read(arrays, "inverse", k, a).T @ self.read(arrays, "inverse", k, b)
        return out


def factorise(task: FactorTask, records: np.ndarray, executor: Executor, callbacks: Callback):
    """Compute every tile not recorded: ``L`` column by column, then ``W`` and the
    variances, reporting each tile to ``callbacks``. **Raises:**
    `NotPositiveDefiniteTile`."""
    tiles, count = task.tiles, itertools.count()

    def done(_result: Any) -> None:
        callbacks.on_block_end(BlockEvent(index=next(count), start=0, stop=0))

    for j in range(tiles):
        if not records[LOWER, j, j]:
            executor.map(task.lower_tile, [(j, j)], done)
        below = [(i, j) for i in range(j + 1, tiles) if not records[LOWER, i, j]]
        executor.map(task.lower_tile, below, done)
    columns = [(j,) for j in range(tiles) if not records[VARIANCE, j, j]]
    executor.map(task.inverse_column, columns, done)
