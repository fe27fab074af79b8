"""The noise model of a Gauss–Newton (Fisher) matrix.

With Gaussian noise of covariance ``C`` on residuals ``r(x)``, the negative
log-likelihood is ``½ r(x)ᵀ C⁻¹ r(x)``, and the Gauss–Newton matrix
``G = Jᵀ C⁻¹ J`` is its Fisher information: the expected Hessian. The noise
model whitens the residuals (``x -> A r(x)`` with ``AᵀA = C⁻¹``), so the
kernels compute ``Jᵀ J`` of the whitened ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputValueError
from ..dense import ravel_output
from ._inverse import not_positive_definite

__all__ = ["whitened_residuals"]


def _given(std, cov, inv_cov) -> str | None:
    given = [
        name for name, v in (("std", std), ("cov", cov), ("inv_cov", inv_cov)) if v is not None
    ]
    if len(given) > 1:
        raise InputValueError(
            f"give at most one of std, cov and inv_cov (the noise model); got {' and '.join(given)}"
        )
    return given[0] if given else None


def _std_tree(std, out_tree) -> Any:
    """``std`` as a pytree like the residuals, each leaf broadcast to its leaf."""
    leaves, treedef = jax.tree_util.tree_flatten(out_tree)
    sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
    if np.ndim(std) == 0 and not isinstance(std, (dict, list, tuple)):
        parts = [std] * len(leaves)
    elif (
        len(leaves) > 1
        and not isinstance(std, (dict, list, tuple))
        and np.shape(std) == (sum(sizes),)
    ):  # one value per flat residual
        cuts = np.cumsum(sizes)[:-1]
        parts = [
            p.reshape(leaf.shape)
            for p, leaf in zip(np.split(np.asarray(std), cuts), leaves, strict=True)
        ]
    elif len(leaves) == 1 and not isinstance(std, (dict, list, tuple)):
        parts = [std]
    else:
        try:
            parts = treedef.flatten_up_to(std)  # type: ignore[attr-defined]
        except (ValueError, TypeError):
            raise InputValueError(
                f"std must be a scalar, an array broadcastable to the residuals, a pytree "
                f"like them ({treedef}) or a flat vector of all {sum(sizes)} residuals; got "
                f"{type(std).__name__} of shape {np.shape(std)}"
            ) from None
    out = []
    for part, leaf in zip(parts, leaves, strict=True):
        value = np.asarray(part)
        try:
            np.broadcast_shapes(value.shape, leaf.shape)
        except ValueError:
            raise InputValueError(
                f"std of shape {value.shape} does not broadcast to residuals of shape {leaf.shape}"
            ) from None
        if not np.all(np.isfinite(value)) or np.any(value <= 0):
            raise InputValueError("std must be positive and finite everywhere")
        out.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def _factor(matrix, name: str, m: int, dtype) -> jax.Array:
    """The lower Cholesky factor of an (m, m) positive-definite ``matrix``."""
    a = np.asarray(matrix, dtype=np.float64)
    if a.shape != (m, m):
        raise InputValueError(
            f"{name} must be ({m}, {m}) for {m} residuals (flattened), got {a.shape}"
        )
    try:
        return jnp.asarray(np.linalg.cholesky(a), dtype)
    except np.linalg.LinAlgError:
        raise InputValueError(not_positive_definite(a, name)) from None


def whitened_residuals(residuals: Callable, x, std=None, cov=None, inv_cov=None) -> Callable:
    """``x -> A r(x)`` (flat) with ``Aᵀ A = W``: its Gauss–Newton matrix is ``Jᵀ W J``.

    The noise arrays are closed over: the trace passes them to the compiled
    kernels as arguments, so new noise values need no recompile.
    """
    kind = _given(std, cov, inv_cov)
    out_tree = jax.eval_shape(residuals, x)
    leaves = jax.tree_util.tree_leaves(out_tree)
    m = sum(int(np.prod(leaf.shape)) for leaf in leaves)
    dtype = jnp.result_type(*[leaf.dtype for leaf in leaves]) if leaves else jnp.float32
    if kind is None:
        return lambda p: ravel_output(residuals(p))
    if kind == "std":
        scale = _std_tree(std, out_tree)
        return lambda p: ravel_output(
            jax.tree_util.tree_map(lambda r, s: r / s, residuals(p), scale)
        )
    if kind == "cov":
        lower = _factor(cov, "cov", m, dtype)  # C = L Lᵀ, W = L⁻ᵀ L⁻¹: A = L⁻¹
        return lambda p: jax.scipy.linalg.solve_triangular(
            lower, ravel_output(residuals(p)), lower=True
        )
    lower = _factor(inv_cov, "inv_cov", m, dtype)  # W = L Lᵀ: A = Lᵀ
    return lambda p: lower.T @ ravel_output(residuals(p))
