"""Pytree views over a flat matrix, for any array type (jax, numpy, dask).

Views slice and reshape; on a dask array nothing is computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import InputValueError
from ..dense import Layout

__all__ = ["hessian_to_pytree", "matrix_to_pytree"]


def matrix_to_pytree(M: Any, rows: Layout, cols: Layout) -> Any:
    """Cut an ``(m, n)`` matrix into a pytree-of-pytrees of blocks.

    Block ``[i][j]`` (outer structure from ``rows``, inner from ``cols``) is
    ``M[rows_i, cols_j]`` reshaped to ``row_leaf_i.shape + col_leaf_j.shape``.

    **Raises:** `ValueError` when ``M``'s shape is not ``(rows.n, cols.n)``.
    """
    shape = tuple(np.shape(M))
    if shape != (rows.n, cols.n):
        raise InputValueError(
            f"the matrix has shape {shape}, but the layouts need ({rows.n}, {cols.n}). "
            "Pass the same x (and f) that the matrix was computed for."
        )
    return rows.unflatten_list(
        [
            cols.unflatten_list(
                [M[ri.slice, cj.slice].reshape(ri.shape + cj.shape) for cj in cols.leaves]
            )
            for ri in rows.leaves
        ]
    )


def hessian_to_pytree(H: Any, x: Any) -> Any:
    """A flat ``(n, n)`` Hessian as zodiax's pytree-of-pytrees.

    Block ``[i][j]`` has shape ``leaf_i.shape + leaf_j.shape``, with ``x``'s
    structure outside and inside. Works for jax, numpy and dask arrays (lazy on
    dask), and for Python-scalar leaves.

    **Arguments:**

    - `H`: an ``(n, n)`` array over `ravel_pytree(x)`'s flat order.
    - `x`: the pytree ``H`` was computed at (only its structure and shapes are used).

    **Raises:** `ValueError` when ``H`` does not have shape ``(n, n)`` for ``x``.
    """
    layout = Layout.from_pytree(x, check_float=False)
    shape = tuple(np.shape(H))
    if shape != (layout.n, layout.n):
        raise InputValueError(
            f"H has shape {shape}, but x flattens to {layout.n} elements, so H must be "
            f"({layout.n}, {layout.n}). Pass the same x that H was computed at."
        )
    return matrix_to_pytree(H, layout, layout)
