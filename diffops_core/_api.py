"""The in-memory, zodiax-compatible API: `jacobian` and `hessian`."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._errors import InputTypeError, InputValueError
from ._kernels import Kernels, get_kernels
from ._plan import resolve_block_size
from ._sizing import Sizing, auto_inner_width, budget_block

__all__ = ["choose_sizing", "hessian", "jacobian"]

_MODES = ("auto", "fwd", "rev")


def check_flag(name, value) -> bool:
    """``value`` as a bool; `TypeError` naming ``name`` unless it is True/False (or 1/0)."""
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise InputTypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def choose_sizing(
    kernels: Kernels,
    *,
    nbatches=None,
    block_size=None,
    memory_budget=None,
    inner_width=None,
    auto_width=True,
    extent=None,
) -> Sizing:
    """Resolve the blocking knobs into a block size and micro-batch width.

    At most one of ``nbatches`` (zodiax's meaning; 1 counts as not given),
    ``block_size`` and ``memory_budget`` may be given; it bounds the products in
    flight at once. ``inner_width`` (default: `auto_inner_width`) may only narrow that.
    ``extent``: the products to block (default: the kernels' columns, or rows;
    a colouring's colours for compressed products).

    **Raises:** `TypeError`/`ValueError` naming the offending argument.
    """
    spec = kernels.spec
    given = [
        name
        for name, value in (
            ("nbatches", None if nbatches == 1 and not isinstance(nbatches, bool) else nbatches),
            ("block_size", block_size),
            ("memory_budget", memory_budget),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise InputValueError(
            f"give at most one of nbatches, block_size and memory_budget; got {' and '.join(given)}"
        )
    if inner_width is not None:
        if (
            isinstance(inner_width, bool)
            or not isinstance(inner_width, numbers.Integral)
            or inner_width < 1
        ):
            raise InputTypeError(f"inner_width must be a positive int or None, got {inner_width!r}")
    if memory_budget is not None:
        sizing = budget_block(kernels, memory_budget, inner_width=inner_width)
        if extent is None or sizing.block_size <= extent:
            return sizing
        width = None if sizing.inner_width is None else min(sizing.inner_width, extent)
        return Sizing(extent, width, sizing.footprint)
    if nbatches is not None and spec.op == "jacrev" and extent is None:
        # nbatches keeps zodiax's meaning in either mode: at most ceil(n / nbatches)
        # products in flight (checked against the n parameters); in rev mode those
        # products are VJP rows, and a block holds at most the m rows there are.
        size = resolve_block_size(spec.n, nbatches=nbatches)
        nbatches, block_size = None, None if size is None else min(size, spec.extent)
    extent = spec.extent if extent is None else extent
    size = resolve_block_size(extent, nbatches=nbatches, block_size=block_size)
    size = size or extent
    if inner_width is not None:
        return Sizing(size, min(inner_width, size))
    return Sizing(size, auto_inner_width(kernels, size) if auto_width else None)


def _run_matrix(kernels: Kernels, x_flat, inner_width: int | None, jit: bool):
    inner_width = inner_width or auto_inner_width(
        kernels, kernels.spec.extent
    )  # in memory: always sized
    if jit:
        return kernels.matrix(inner_width)(x_flat)
    with jax.disable_jit():
        return kernels.matrix_fn(inner_width)(kernels.consts, x_flat)


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
    # deferred: the sparse path imports _curvature, which imports this module
    from ._sparse import matrix_from_products

    found = matrix_from_products(kind, f, x, sparsity, dense_path=False)
    if found is None:
        return None
    matrix, unravel, kernels = found
    dense = jnp.asarray(matrix.toarray())
    if kind == "hessian":
        return dense, unravel
    return split_jacobian(dense, kernels.spec.out_layout, kernels.spec.n), unravel


def square_matrix(
    op: str,
    f: Callable,
    x: Any,
    nbatches,
    jit,
    checkpoint,
    *,
    block_size,
    memory_budget,
    inner_width,
) -> tuple[jax.Array, Callable]:
    """The ``(n, n)`` matrix of ``op`` (``"hessian"`` or ``"gauss_newton"``) over
    ``ravel_pytree(x)`` in memory, and the unravel function: what `hessian` and
    `gauss_newton` share."""
    jit = check_flag("jit", jit)
    checkpoint = check_flag("checkpoint", checkpoint)
    kernels, x_flat, unravel = get_kernels(f, x, op, checkpoint=checkpoint, cache=jit)
    sizing = choose_sizing(
        kernels,
        nbatches=nbatches,
        block_size=block_size,
        memory_budget=memory_budget,
        inner_width=inner_width,
    )
    return _run_matrix(kernels, x_flat, sizing.inner_width, jit), unravel


def jacobian_op(mode: str, n: int, m: int) -> str:
    """``"jacfwd"`` or ``"jacrev"`` for a mode: ``"auto"`` takes fewer products."""
    if not isinstance(mode, str) or mode not in _MODES:
        raise InputValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "auto":
        mode = "fwd" if n <= m else "rev"
    return "jacfwd" if mode == "fwd" else "jacrev"


def split_jacobian(J, out_layout, n: int):
    """Reshape a flat ``(m, n)`` Jacobian into the output's structure (``leaf.shape + (n,)``)."""
    leaves = out_layout.leaves
    if len(leaves) == 1:
        shape = leaves[0].shape + (n,)
        return out_layout.unflatten_list([J if J.shape == shape else J.reshape(shape)])
    return out_layout.unflatten_list(
        [J[leaf.slice].reshape(leaf.shape + (n,)).astype(leaf.dtype) for leaf in leaves]
    )


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
    jit = check_flag("jit", jit)
    checkpoint = check_flag("checkpoint", checkpoint)
    if not isinstance(mode, str) or mode not in _MODES:
        raise InputValueError(f"mode must be one of {_MODES}, got {mode!r}")
    kernels, x_flat, unravel = get_kernels(f, x, "jacfwd", checkpoint=checkpoint, cache=jit)
    op = jacobian_op(mode, kernels.spec.n, kernels.spec.m)
    if op != "jacfwd":
        kernels = kernels.for_op(op)
    sizing = choose_sizing(
        kernels,
        nbatches=nbatches,
        block_size=block_size,
        memory_budget=memory_budget,
        inner_width=inner_width,
    )
    J = _run_matrix(kernels, x_flat, sizing.inner_width, jit)
    return split_jacobian(J, kernels.spec.out_layout, kernels.spec.n), unravel
