"""Constants evaluated on the host, exactly: the primitives whose numpy
evaluation is bit for bit XLA's (moves of elements, comparisons, logic, and
integer arithmetic, which wraps alike), so that folding them compiles nothing.

Detection evaluates what depends only on constants (index arithmetic, masks,
coordinates). Op by op, each primitive and shape compiled its own XLA kernel:
10 to 80 ms apiece, and 1.7 s for one ``unstack`` of 100 scalars (SBRYBND).
Float arithmetic is left to XLA: a transcendental's last bit (hence a zero)
may differ, and so may IEEE 754's own ``+ - * /``: XLA's compiled program
rewrites them (a division by a constant becomes a product with its
reciprocal, products and sums of constants are reassociated, ``a * b + c`` is
one fused multiply-add). Evaluated op by op on the host, OET2's
``jnp.linspace(-0.5, 0.5, 501)`` holds an exact 0.0 that the products'
program computes as 1e-17: a zero the pattern relies on must be XLA's.

`one_op` is narrower: the value XLA gives for one float equation evaluated
on its own (its operands arguments, nothing to rewrite), which is where
detection already evaluates a fold of small scalars op by op. There IEEE
754's ``+ - * /``, negation and positive integer powers (JAX's square and
multiply) round alike in numpy and XLA on the CPU, but for subnormals, which
XLA flushes to zero: then it declines. VANDANMSLS's 7,280 scalar equations
of its data took 0.4 s through XLA's dispatch, one at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

__all__ = ["evaluate", "exact", "one_op"]


def _broadcast_in_dim(x, shape, broadcast_dimensions, **_):
    expanded = [1] * len(shape)
    for axis, size in zip(broadcast_dimensions, np.shape(x), strict=True):
        expanded[axis] = size
    return np.broadcast_to(np.reshape(x, expanded), shape)


def _slice(x, start_indices, limit_indices, strides=None, **_):
    steps = strides or (1,) * len(start_indices)
    return x[tuple(slice(a, b, s) for a, b, s in zip(start_indices, limit_indices, steps,
                                                      strict=True))]  # fmt: skip


def _iota(dtype, shape, dimension, **_):
    index = np.arange(shape[dimension], dtype=dtype)
    return np.broadcast_to(index.reshape([-1 if d == dimension else 1 for d in range(len(shape))]),
                           shape)  # fmt: skip


def _select_n(which, *cases, **_):
    return np.choose(np.asarray(which, np.int64), cases)


def _convert(x, new_dtype, **_):
    return np.asarray(x).astype(np.dtype(new_dtype))


#: Integer and boolean arithmetic: it wraps as XLA's does.
_INTEGERS = {"and", "or", "xor", "not", "add", "sub", "mul", "neg", "max", "min"}

_EXACT: dict[str, Callable] = {
    "unstack": lambda x, axis, **_: [np.take(x, i, axis) for i in range(np.shape(x)[axis])],
    "stack": lambda *xs, axis, **_: np.stack(xs, axis),
    "split": lambda x, sizes, axis, **_: np.split(x, np.cumsum(sizes)[:-1], axis),
    "transpose": lambda x, permutation, **_: np.transpose(x, permutation),
    "reshape": lambda x, new_sizes, **_: np.reshape(x, new_sizes),
    "squeeze": lambda x, dimensions, **_: np.squeeze(x, tuple(dimensions)),
    "broadcast_in_dim": _broadcast_in_dim,
    "slice": _slice,
    "concatenate": lambda *xs, dimension, **_: np.concatenate(xs, dimension),
    "rev": lambda x, dimensions, **_: np.flip(x, tuple(dimensions)),
    "iota": _iota,
    "select_n": _select_n,
    "convert_element_type": _convert,
    "eq": lambda a, b, **_: np.equal(a, b),
    "ne": lambda a, b, **_: np.not_equal(a, b),
    "lt": lambda a, b, **_: np.less(a, b),
    "le": lambda a, b, **_: np.less_equal(a, b),
    "gt": lambda a, b, **_: np.greater(a, b),
    "ge": lambda a, b, **_: np.greater_equal(a, b),
    "and": lambda a, b, **_: np.bitwise_and(a, b),
    "or": lambda a, b, **_: np.bitwise_or(a, b),
    "xor": lambda a, b, **_: np.bitwise_xor(a, b),
    "not": lambda a, **_: np.invert(a),
    "add": lambda a, b, **_: np.add(a, b),
    "sub": lambda a, b, **_: np.subtract(a, b),
    "mul": lambda a, b, **_: np.multiply(a, b),
    "neg": lambda a, **_: np.negative(a),
    "max": lambda a, b, **_: np.maximum(a, b),
    "min": lambda a, b, **_: np.minimum(a, b),
}


class _Declined(Exception):
    """A scatter whose result XLA leaves to the mode or the backend: the host
    declines (XLA evaluates it)."""


def _scatter(operand, where, updates, dimension_numbers, **_):
    """``scatter`` (``.at[].set``) where every update window lies inside the
    operand and no two updates land on one element: there every mode agrees,
    and the result is a move of elements (HAIFAM's 300 ``.at[:, j].set``,
    whose compile took 2 s of its detection); else declined."""
    dims = dimension_numbers
    if dims.operand_batching_dims or updates.ndim == 0:
        raise _Declined
    grid = np.indices(updates.shape).reshape(updates.ndim, -1)
    batch = tuple(grid[d] for d in range(updates.ndim) if d not in dims.update_window_dims)
    starts = where[batch] if batch else np.broadcast_to(where, (grid.shape[1], where.shape[-1]))
    start = np.zeros((operand.ndim, grid.shape[1]), np.int64)
    for j, d in enumerate(dims.scatter_dims_to_operand_dims):
        start[d] = starts[:, j]
    window = np.zeros_like(start)
    sizes = np.ones(operand.ndim, np.int64)
    spanned = [d for d in range(operand.ndim) if d not in dims.inserted_window_dims]
    for d, u in zip(spanned, dims.update_window_dims, strict=True):
        window[d], sizes[d] = grid[u], updates.shape[u]
    bound = np.asarray(operand.shape, np.int64)[:, None] - sizes[:, None]
    if np.any(start < 0) or np.any(start > bound):
        raise _Declined  # out of bounds: clamped, dropped or undefined, by mode
    flat = np.ravel_multi_index(tuple(start + window), operand.shape)
    if np.unique(flat).size != flat.size:
        raise _Declined  # two writes to one element: which wins is XLA's choice
    out = np.array(operand, copy=True).reshape(-1)
    out[flat] = updates.reshape(-1)
    return out.reshape(operand.shape)


_EXACT["scatter"] = _scatter


def _kind(v) -> str:
    return np.dtype(v.aval.dtype).kind if hasattr(v.aval, "dtype") else "?"


def exact(eqn) -> bool:
    """Whether numpy evaluates ``eqn`` as XLA does, bit for bit (from its types)."""
    name = eqn.primitive.name
    if name not in _EXACT:
        return False
    if name in _INTEGERS:
        return all(_kind(v) in "iub" for v in (*eqn.invars, *eqn.outvars))
    if name == "convert_element_type":  # float to integer: XLA saturates, numpy need not
        source, target = _kind(eqn.invars[0]), _kind(eqn.outvars[0])
        return not (source in "fcV" and target not in "fcV") and not (source == "c" != target)
    if name == "reshape":
        return eqn.params.get("dimensions") is None
    if name == "select_n":
        return len(eqn.invars) <= 32
    if name == "scatter":
        return eqn.params.get("update_jaxpr") is None and _kind(eqn.invars[1]) in "iu"
    return all(_kind(v) != "?" for v in eqn.invars)


def evaluate(eqn, values) -> list | None:
    """The outputs of an `exact` ``eqn`` at the known ``values`` of its inputs
    (each first cast to its input's type, as the jaxpr types it), by numpy;
    None where the host declines (a scatter XLA's mode decides)."""
    pairs = zip(eqn.invars, values, strict=True)
    arrays = [np.asarray(value, dtype=var.aval.dtype) for var, value in pairs]
    try:
        with np.errstate(over="ignore"):
            out = _EXACT[eqn.primitive.name](*arrays, **eqn.params)
    except _Declined:
        return None
    outs = out if eqn.primitive.multiple_results else [out]
    return [np.asarray(o, dtype=v.aval.dtype) for o, v in zip(outs, eqn.outvars, strict=True)]


def _integer_pow(x, y, **_):
    """``x ** y`` (y > 0) as JAX lowers it: square and multiply, each step checked."""
    acc = None
    while y > 0:
        if y & 1:
            acc = x if acc is None else _checked(np.multiply(acc, x))
        y >>= 1
        if y > 0:
            x = _checked(np.multiply(x, x))
    return acc


_ONE_OP: dict[str, Callable] = {
    "add": lambda a, b, **_: np.add(a, b),
    "sub": lambda a, b, **_: np.subtract(a, b),
    "mul": lambda a, b, **_: np.multiply(a, b),
    "div": lambda a, b, **_: np.divide(a, b),
    "neg": lambda a, **_: np.negative(a),
    "integer_pow": _integer_pow,
}


def _checked(value):
    if _subnormal(value):
        raise _Declined
    return value


def _subnormal(value) -> bool:
    value = np.asarray(value)
    tiny = np.finfo(value.dtype).tiny
    if value.ndim == 0:  # (most values folded op by op are scalars)
        return 0 < abs(float(value)) < tiny
    magnitude = np.abs(value)
    return bool(np.any((magnitude > 0) & (magnitude < tiny)))


def one_op(eqn, values) -> list | None:
    """The outputs of one float equation as XLA evaluates it on its own (see
    above), by numpy; None where that may differ (not such an equation, not on
    the CPU, or a subnormal operand or result)."""
    name = eqn.primitive.name
    if name not in _ONE_OP or jax.default_backend() != "cpu":
        return None
    dtypes = [getattr(v.aval, "dtype", None) for v in (*eqn.invars, *eqn.outvars)]
    if any(d not in (np.float32, np.float64) for d in dtypes) or len(set(dtypes)) != 1:
        return None
    power = eqn.params.get("y", 1) if name == "integer_pow" else 1
    if not isinstance(power, int) or power < 1:
        return None
    arrays = [np.asarray(value, dtype=dtypes[0]) for value in values]
    try:
        with np.errstate(all="ignore"):  # (IEEE's infinities and NaNs are results like any)
            if any(_subnormal(a) for a in arrays):
                return None
            out = _ONE_OP[name](*arrays, **eqn.params)
            out = _checked(np.asarray(out, dtype=dtypes[0]))
    except _Declined:
        return None
    return [out]
