"""Inverses and spectra of dense symmetric matrices in memory: covariances,
marginal standard deviations, eigenvalues, and the diagnostics of a matrix
without a Cholesky factor (what the sparse path reports too).

The inverse of a Fisher (Gauss–Newton) matrix is the Cramér–Rao bound on the
covariance of ``x``.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._errors import InputTypeError, InputValueError

__all__ = [
    "Spectrum",
    "check_damping",
    "covariance",
    "diagnose_not_positive_definite",
    "is_sparse",
    "marginal_std",
    "not_positive_definite",
    "numpy_tree",
    "spectrum",
]


def diagnose_not_positive_definite(a: np.ndarray, name: str = "the matrix"):
    """(the message, the smallest eigenvalue, how many are <= 0) of a symmetric
    matrix without a Cholesky factor."""
    eig = np.linalg.eigvalsh((a + a.T) / 2)
    bad = int(np.sum(eig <= 0))
    scale = float(np.max(np.abs(eig))) if eig.size else 0.0
    worst = float(eig[0]) / scale if scale > 0 else float("nan")
    message = (
        f"{name} is not positive definite: its smallest eigenvalue is {eig[0]:.3g} "
        f"({bad} of {eig.size} eigenvalues <= 0; the most negative is {abs(worst):.2g} of "
        f"the largest in size). Nothing was regularised: pass damping= (added to the "
        "diagonal) to do so explicitly, or check the model (parameters it does not "
        "constrain, or a point that is not a minimum)"
    )
    return message, float(eig[0]), bad


def not_positive_definite(a: np.ndarray, name: str = "the matrix") -> str:
    """The message of `diagnose_not_positive_definite`."""
    return diagnose_not_positive_definite(a, name)[0]


def _square(M, name: str = "M"):
    """Refuse what has no inverse or spectrum to speak of: not a square float
    matrix, an empty one, too little precision, or (outside jit) non-finite
    entries, which would give plausible-looking numbers."""
    shape = np.shape(M)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise InputValueError(f"{name} must be a square matrix, got shape {shape}")
    if shape[0] == 0:
        raise InputValueError(f"{name} is empty (shape {shape}); pass a matrix of at least 1x1")
    dtype = jnp.result_type(M)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise InputTypeError(f"{name} must be a float matrix, got dtype {dtype}")
    if jnp.finfo(dtype).bits < 32:
        raise InputTypeError(
            f"{name} has dtype {np.dtype(dtype).name}, too coarse for an inverse or a spectrum; "
            "cast it to float32 or float64"
        )
    if _traced(M):
        return
    finite = np.isfinite(np.asarray(M))
    if not finite.all():
        bad = np.argwhere(~finite)
        where = ", ".join(str(tuple(int(i) for i in b)) for b in bad[:4])
        raise InputValueError(
            f"{name} has {len(bad)} non-finite (NaN or infinite) entries, at {where}"
            f"{' ...' if len(bad) > 4 else ''}; its inverse and spectrum would be meaningless. "
            "Find where the derivatives are not finite and fix the model or the point"
        )


def numpy_tree(flat: np.ndarray, x: Any, shape) -> Any:
    """``flat`` (float64) as a pytree of numpy arrays like ``x``."""
    leaves, treedef = jax.tree_util.tree_flatten(x)
    sizes = [int(np.size(leaf)) for leaf in leaves]
    if sum(sizes) != flat.size:
        raise InputValueError(
            f"x has {sum(sizes)} parameters but M is {shape}; pass the x M was computed at"
        )
    parts = np.split(flat, np.cumsum(sizes)[:-1])
    shaped = [p.reshape(np.shape(leaf)) for p, leaf in zip(parts, leaves, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, shaped)


def is_sparse(M) -> bool:
    return hasattr(M, "tocsr") and hasattr(M, "nnz")  # a scipy.sparse array or matrix


def _dense_if_it_fits(M) -> np.ndarray:
    import psutil

    n = M.shape[0]
    need, free = 3 * n * n * 8, psutil.virtual_memory().available  # M, its factor, the inverse
    if need > 0.8 * free:
        raise InputValueError(
            f"the covariance of this {n}x{n} sparse matrix is dense: it needs about "
            f"{need / 1e9:.1f} GB, and {free / 1e9:.1f} GB is available; use marginal_std "
            "(exact, never dense) or a covariance of a subset of the parameters"
        )
    return np.asarray(M.toarray(), np.float64)


def check_damping(damping) -> float:
    if isinstance(damping, bool) or not isinstance(damping, numbers.Real):
        raise InputTypeError(f"damping must be a number, got {damping!r}")
    value = float(damping)
    if not np.isfinite(value) or value < 0:
        raise InputValueError(f"damping must be finite and >= 0, got {damping!r}")
    return value


def _traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def _cholesky(M, damping: float):
    """The lower factor of ``M + damping I``; refuses (outside jit) when it fails."""
    xp = np if isinstance(M, np.ndarray) else jnp
    a = M + damping * xp.eye(M.shape[0], dtype=M.dtype) if damping else M
    if xp is np:
        try:
            return np.linalg.cholesky(a), np
        except np.linalg.LinAlgError:
            raise InputValueError(not_positive_definite(np.asarray(a))) from None
    lower = jnp.linalg.cholesky(a)
    if not _traced(lower) and not bool(jnp.all(jnp.isfinite(lower))):
        raise InputValueError(not_positive_definite(np.asarray(a)))
    return lower, jnp


def _inverse_factor(M, damping):
    """``L⁻¹`` for ``M + damping I = L Lᵀ`` (so ``M⁻¹ = L⁻ᵀ L⁻¹``), and the array
    module it is in (numpy for numpy input, else jax.numpy)."""
    lower, xp = _cholesky(M, check_damping(damping))
    eye = xp.eye(M.shape[0], dtype=lower.dtype)
    if xp is np:
        import scipy.linalg  # a dependency of jax

        return scipy.linalg.solve_triangular(lower, eye, lower=True), np
    return jax.scipy.linalg.solve_triangular(lower, eye, lower=True), jnp


def covariance(M: Any, *, damping: float = 0.0) -> Any:
    """``(M + damping I)⁻¹`` of a symmetric positive-definite ``M``, through Cholesky.

    For a Fisher or Gauss–Newton matrix this is the covariance of the parameters
    (the Cramér–Rao bound). A numpy ``M`` gives a numpy result, a jax one a jax
    array. Under `jax.jit` a matrix that is not positive definite gives NaNs
    (JAX cannot raise on values); call it outside jit for the diagnostics.

    A `scipy.sparse` ``M`` gives a dense numpy covariance when it fits in memory
    and is refused, with the numbers, when it does not (use `marginal_std`).

    **Raises:** `ValueError` when ``M`` (plus damping) is not positive definite,
    giving its smallest eigenvalue, how many are not positive and the relative
    size of the worst; it never regularises unless you pass ``damping``.
    """
    if is_sparse(M):
        M = _dense_if_it_fits(M)
    _square(M)
    inv_lower, xp = _inverse_factor(M, damping)
    return inv_lower.T @ inv_lower


def marginal_std(M: Any, x: Any, *, damping: float = 0.0) -> Any:
    """``sqrt(diag((M + damping I)⁻¹))`` of a dense ``M`` as a pytree like ``x``:
    each parameter's standard deviation, the others marginalised. Errors as
    `covariance`."""
    _square(M)
    inv_lower, xp = _inverse_factor(M, damping)
    std = xp.sqrt(xp.sum(inv_lower**2, axis=0))
    flat, unravel = ravel_pytree(x)
    if flat.shape[0] != M.shape[0]:
        raise InputValueError(
            f"x has {flat.shape[0]} parameters but M is {M.shape}; pass the x M was computed at"
        )
    if not _traced(std) and np.isfinite(np.asarray(std)).all():
        top = float(np.max(np.asarray(std)))
        if top > float(jnp.finfo(flat.dtype).max):
            raise InputValueError(
                f"the largest standard deviation ({top:.3g}) does not fit x's "
                f"{np.dtype(flat.dtype).name}; pass x in float64 with jax_enable_x64 on "
                "(or rescale the parameters)"
            )
    tree = unravel(jnp.asarray(std, flat.dtype))
    return jax.tree_util.tree_map(np.asarray, tree) if xp is np else tree


class Spectrum(NamedTuple):
    """`eigenvalues` ascending; `condition` = largest / smallest (inf unless all are
    positive); `rank`: eigenvalues above ``n * eps * largest``."""

    eigenvalues: Any
    condition: Any
    rank: Any


def spectrum(M: Any) -> Spectrum:
    """Eigenvalues (ascending), condition number and numerical rank of a symmetric
    ``M``. Works under `jax.jit` (for a jax ``M``)."""
    _square(M)
    xp = np if isinstance(M, np.ndarray) else jnp
    eig = xp.linalg.eigvalsh((M + M.T) / 2)
    top = xp.max(xp.abs(eig))
    condition = xp.where(eig[0] > 0, eig[-1] / xp.where(eig[0] > 0, eig[0], 1), xp.inf)
    eps = xp.finfo(eig.dtype).eps
    rank = xp.sum(eig > M.shape[0] * eps * top)
    return Spectrum(eig, condition, rank)
