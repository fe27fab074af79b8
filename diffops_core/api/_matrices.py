"""The in-memory, zodiax-compatible matrices: `hessian`, `jacobian` and
`gauss_newton`, dense, or from compressed products with ``sparsity=``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ..curvature import whitened_residuals
from ..dense import jacobian_matrix, split_jacobian, square_matrix
from ..sparse import matrix_from_products

__all__ = ["gauss_newton", "hessian", "jacobian"]


def hessian(
    f: Callable,
    x: Any,
    nbatches: int = 1,
    jit: bool = True,
    checkpoint: bool = False,
    *,
    block_size: int | None = None,
    memory_budget: int | str | None = None,
    inner_width: int | None = None,
    sparsity: Any = None,
) -> tuple[jax.Array, Callable]:
    """The Hessian of a scalar function of a pytree, in column blocks of HVPs.

    Drop-in for `zodiax.diffops.hessian`: the positional signature and return
    values are the same. Columns are forward-over-reverse Hessian-vector products
    of one-hot vectors, computed a micro-batch at a time inside one jitted loop
    that linearises ``grad f`` once. Every call traces ``f`` once (what JAX
    traces is the computation's identity); the compiled loop is cached on that
    trace and input shapes, so a later call of the same program compiles nothing.

    **Arguments:**

    - `f`: ``f(x) -> scalar``.
    - `x`: a pytree of float arrays and/or Python floats.
    - `nbatches`: zodiax's knob: at most ``ceil(n / nbatches)`` columns in flight.
    - `jit`: ``False`` runs op by op (debugging; slow).
    - `checkpoint`: wrap ``f`` in `jax.checkpoint` (less memory, more compute).
    - `block_size`: at most this many columns in flight.
    - `memory_budget`: bytes or a string (``"512MB"``, ``"2GiB"``): the largest
      block whose compiled kernel fits (the result ``H`` itself is not counted).
    - `inner_width`: micro-batch width inside a block (default: sized from XLA's
      memory analysis; see the README). It can only narrow a block.

    - `sparsity`: ``None`` (the dense path), ``"auto"`` (detect the pattern from
      the jaxpr, star-colour it and compute one product per colour:
      `sparse_hessian`) or a `Sparsity` to reuse. The result is the same dense H.

    At most one of ``nbatches`` (other than 1), ``block_size`` and ``memory_budget``.

    **Returns:** ``(H, unflatten)``: ``H`` of shape ``(n, n)`` over the flat
    parameters (`jax.flatten_util.ravel_pytree` order) and the function mapping a
    flat vector back to a pytree like ``x``.

    **Raises:** `TypeError` for non-float leaves or bad argument types;
    `ValueError` for a non-scalar ``f``, bad block settings or a budget that
    cannot hold one column.
    """
    if sparsity is not None:
        found = _dense_from_sparse("hessian", f, x, sparsity)
        if found is not None:
            return found
    return square_matrix(
        "hessian",
        f,
        x,
        nbatches,
        jit,
        checkpoint,
        block_size=block_size,
        memory_budget=memory_budget,
        inner_width=inner_width,
    )


def _dense_from_sparse(kind: str, f: Callable, x: Any, sparsity: Any):
    """The zodiax-compatible dense result, computed from compressed products;
    None when the pattern is dense (nothing to save: the dense path runs)."""
    found = matrix_from_products(kind, f, x, sparsity, dense_path=False)
    if found is None:
        return None
    matrix, unravel, kernels = found
    dense = jax.device_put(matrix.toarray())  # (jnp.asarray compiles a staging on a first call)
    if kind == "hessian":
        return dense, unravel
    return split_jacobian(dense, kernels.spec.out_layout, kernels.spec.n), unravel


def jacobian(
    f: Callable,
    x: Any,
    nbatches: int = 1,
    jit: bool = True,
    checkpoint: bool = False,
    *,
    block_size: int | None = None,
    memory_budget: int | str | None = None,
    mode: str = "auto",
    inner_width: int | None = None,
    sparsity: Any = None,
) -> tuple[Any, Callable]:
    """The Jacobian of ``f`` with respect to a pytree, in blocks of JVPs or VJPs.

    Drop-in for `zodiax.diffops.jacobian`. ``mode="fwd"`` computes column blocks
    of JVPs, ``"rev"`` row blocks of VJPs, ``"auto"`` whichever needs fewer
    products (rows ``m`` vs columns ``n``). The blocking knobs mean the same as in
    `hessian` and count products (columns in fwd mode, rows in rev mode).

    **Returns:** ``(J, unflatten)``. For an array output ``y``, ``J.shape ==
    (*y.shape, n)``; for a pytree output, a pytree like ``y`` whose leaves have
    shape ``leaf.shape + (n,)``, whatever the blocking.

    With ``sparsity="auto"`` (or a `Sparsity`), from a few compressed products
    instead (`sparse_jacobian`); the result is the same dense Jacobian.

    **Raises:** as `hessian`, plus `ValueError` for an unknown ``mode``.
    """
    if sparsity is not None:
        found = _dense_from_sparse("jacobian", f, x, sparsity)
        if found is not None:
            return found
    return jacobian_matrix(
        f,
        x,
        nbatches,
        jit,
        checkpoint,
        block_size=block_size,
        memory_budget=memory_budget,
        mode=mode,
        inner_width=inner_width,
    )


def gauss_newton(
    residuals: Callable,
    x: Any,
    nbatches: int = 1,
    jit: bool = True,
    checkpoint: bool = False,
    *,
    std: Any = None,
    cov: Any = None,
    inv_cov: Any = None,
    block_size: int | None = None,
    memory_budget: int | str | None = None,
    inner_width: int | None = None,
    sparsity: Any = None,
) -> tuple[jax.Array, Callable]:
    """The Gauss–Newton matrix ``G = Jᵀ W J`` of ``residuals`` at ``x``.

    ``J`` is the Jacobian of the raveled residuals (a pytree is fine) with respect
    to ``ravel_pytree(x)``; each column ``G e_i = Jᵀ W (J e_i)`` is one JVP and one
    VJP of a single linearisation, in column blocks as `hessian` computes them,
    so ``J`` itself is never formed. With Gaussian noise, ``G`` is the Fisher
    information matrix of ``x``.

    **Arguments:**

    - `residuals`, `x`, `nbatches`, `jit`, `checkpoint`, `block_size`,
      `memory_budget`, `inner_width`: as for `hessian`.
    - The noise model, at most one of: `std` (a scalar, an array broadcastable
      to the residuals, a pytree like them, or a flat vector of all ``m``
      residuals: ``W = diag(1/std²)``); `cov` (the
      ``(m, m)`` covariance of the flat residuals, positive definite: used
      through its Cholesky factor, never inverted); `inv_cov` (``W`` itself).
      None: ``W = I``.
    - `sparsity`: as for `hessian`: ``"auto"`` (or a `Sparsity` from
      `gauss_newton_sparsity`) computes ``G`` from one product per colour of a
      star colouring of ``Jᵀ J``'s pattern (`sparse_gauss_newton`); a dense
      ``cov`` makes ``G`` dense, and the dense path runs.

    **Returns:** ``(G, unflatten)``, ``G`` of shape ``(n, n)``.

    **Raises:** `ValueError` naming the arguments for two noise models, a
    ``std`` that is not positive or does not broadcast, a ``cov``/``inv_cov`` of
    the wrong shape or not positive definite (with its smallest eigenvalues);
    the errors of `hessian` for the blocking.
    """
    whitened = whitened_residuals(residuals, x, std, cov, inv_cov)
    if sparsity is not None:
        found = matrix_from_products("gauss_newton", whitened, x, sparsity, dense_path=False)
        if found is not None:  # else dense (a cov mixing every residual): the dense path
            return jnp.asarray(found[0].toarray()), found[1]
    return square_matrix(
        "gauss_newton",
        whitened,
        x,
        nbatches,
        jit,
        checkpoint,
        block_size=block_size,
        memory_budget=memory_budget,
        inner_width=inner_width,
    )
