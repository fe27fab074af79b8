"""Blocking in memory: the knobs (``nbatches``, ``block_size``,
``memory_budget``, ``inner_width``) resolved into a `Sizing`, and the dense
matrices of the in-memory API computed in one jitted loop of products."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax

from .._errors import InputTypeError, InputValueError
from ._kernels import Kernels, get_kernels
from ._plan import resolve_block_size
from ._sizing import Sizing, auto_inner_width, budget_block

__all__ = [
    "check_flag",
    "choose_sizing",
    "jacobian_matrix",
    "jacobian_op",
    "split_jacobian",
    "square_matrix",
]

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
    blocking = {"block_size": block_size, "memory_budget": memory_budget,
                "inner_width": inner_width}  # fmt: skip
    matrix, _, unravel = _in_memory(f, x, op, nbatches, jit, checkpoint, blocking)
    return matrix, unravel


def _in_memory(f, x, op, nbatches, jit, checkpoint, blocking: dict, mode=None):
    """``(matrix, kernels, unravel)``: ``op``'s flat matrix of ``f`` at ``x`` in
    one jitted loop (for ``"jacfwd"``, the ``mode``'s op: JVP columns or VJP
    rows), the flags and blocking knobs checked."""
    jit = check_flag("jit", jit)
    checkpoint = check_flag("checkpoint", checkpoint)
    if op == "jacfwd" and (not isinstance(mode, str) or mode not in _MODES):
        raise InputValueError(f"mode must be one of {_MODES}, got {mode!r}")
    kernels, x_flat, unravel = get_kernels(f, x, op, checkpoint=checkpoint, cache=jit)
    if op == "jacfwd":
        chosen = jacobian_op(mode, kernels.spec.n, kernels.spec.m)
        kernels = kernels if chosen == op else kernels.for_op(chosen)
    sizing = choose_sizing(kernels, nbatches=nbatches, **blocking)
    return _run_matrix(kernels, x_flat, sizing.inner_width, jit), kernels, unravel


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


def jacobian_matrix(
    f: Callable,
    x: Any,
    nbatches,
    jit,
    checkpoint,
    *,
    block_size,
    memory_budget,
    mode,
    inner_width,
) -> tuple[Any, Callable]:
    """The dense Jacobian of ``f`` at ``x`` in the output's structure (`split_jacobian`),
    and the unravel function: what `jacobian` runs without ``sparsity``."""
    blocking = {"block_size": block_size, "memory_budget": memory_budget,
                "inner_width": inner_width}  # fmt: skip
    J, kernels, unravel = _in_memory(f, x, "jacfwd", nbatches, jit, checkpoint, blocking, mode)
    return split_jacobian(J, kernels.spec.out_layout, kernels.spec.n), unravel
