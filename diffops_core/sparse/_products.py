"""Sparse Hessians and Jacobians from a few compressed products.

`hessian_sparsity` / `jacobian_sparsity` detect the global pattern from the
jaxpr (`detect`) and colour it (`_coloring`); `sparse_hessian` /
`sparse_jacobian` compute one product per colour (the seed of a colour is the
sum of its unit vectors), recover every nonzero directly, and check the result
against products of random vectors (row by row) before returning it: a detection
error is a refusal, never a wrong matrix.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import secrets
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .._errors import InputTypeError, InputValueError, SparsityWarning
from ..curvature import whitened_residuals
from ..dense import auto_inner_width, get_kernels, ravel_output
from ._bicolor import bicolor_plan, bicoloring, split_colors
from ._check import PROBES, check_products, compute_eps, probe_vectors
from ._coloring import (
    column_coloring,
    column_plan,
    recover,
    row_coloring,
    row_plan,
    star_coloring,
    star_plan,
)
from .detect import Dense, gram, hessian_pattern, jacobian_pattern

__all__ = [
    "Sparsity",
    "check_sparse",
    "detect",
    "gauss_newton_sparsity",
    "hessian_sparsity",
    "jacobian_sparsity",
    "matrix_from_products",
    "sparse_gauss_newton",
    "sparse_hessian",
    "sparse_jacobian",
]

#: Seed vectors per compiled products call (colours and the check's probes; a
#: last call is filled with repeats, dropped): a fixed width, so that a first
#: call compiles it while detection runs (`_compile_ahead`) and every call after
#: reuses it. Per vector, 16 at once cost as much as 32 on the PSF demo at 64²
#: to 512² (within 3%; 8 at once: up to 15% more), and bound the products' memory.
_PRODUCTS_AT_ONCE = 16
#: From this many parameters on, a call linearises once and applies the linear
#: map per chunk (two compiled programs); below it, each chunk's one program
#: linearises again: at n = 4120 two programs cost the first call 0.1-0.2 s more
#: compile, at n = 10⁶ linearising per chunk cost the Fisher matrix 25% more.
_TWO_STAGE_FROM = 1 << 16


@dataclasses.dataclass(frozen=True)
class Sparsity:
    """A global sparsity pattern and its colouring.

    **Attributes:** `shape` ``(m, n)`` over ``ravel_pytree(x)``; `pattern` (a
    boolean `scipy.sparse.csr_array`); `colors` (per column, or per row in
    ``"row"`` mode; every column its own when dense; in ``"bidirectional"``
    mode the columns' colours then the rows', offset by the columns' count, -1
    for none: JVPs and VJPs together); `ncolors`; `mode` (``"star"``,
    ``"column"``, ``"row"``, ``"bidirectional"`` or ``"dense"``); `dtype` (of
    x); `seconds` (what
    detection and colouring cost); `why` (for a dense one: the primitive and
    line where detection gave up, or that the pattern is half full).
    """

    shape: tuple[int, int]
    pattern: Any
    colors: np.ndarray
    ncolors: int
    mode: str
    dtype: str
    seconds: dict = dataclasses.field(default_factory=dict, compare=False)
    why: str = dataclasses.field(default="", compare=False)

    @property
    def nnz(self) -> int:
        """Nonzeros of the pattern; ``m·n`` for a dense one (detection may
        have stopped before it spelled the pattern out)."""
        return self.shape[0] * self.shape[1] if self.dense else int(self.pattern.nnz)

    @property
    def dense(self) -> bool:
        """Whether the pattern is (nearly) dense: colouring saves nothing, and
        `hessian(..., sparsity="auto")` runs the dense path."""
        return self.mode == "dense"

    @classmethod
    def from_pattern(cls, pattern: Any, kind: str = "hessian", dtype: str = "") -> Sparsity:
        """A known pattern, coloured for you: ``pattern`` is the matrix's nonzero
        structure (a scipy sparse matrix or a boolean or numeric array, ``(m, n)``
        over ``ravel_pytree(x)``, the flat output's rows for a Jacobian); ``kind``
        is ``"hessian"``, ``"gauss_newton"`` (made symmetric, star-coloured) or
        ``"jacobian"`` (a column or a row colouring, whichever needs fewer, or
        both at once for dense rows beside dense columns);
        ``dtype``: x's (empty: whatever x is). The result is checked against
        products of random vectors as any other: a pattern that misses an entry
        is refused, never returned.

        **Raises:** `TypeError` for something not a matrix, `ValueError` for a
        pattern of the wrong shape or kind."""
        if kind not in _OP:
            raise InputValueError(
                f"kind must be 'hessian', 'gauss_newton' or 'jacobian', got {kind!r}"
            )
        if sp.issparse(pattern):
            matrix = sp.csr_array(pattern)
        elif isinstance(pattern, np.ndarray | jax.Array | list):
            matrix = sp.csr_array(np.asarray(pattern))
        else:
            raise InputTypeError(
                f"pattern must be a scipy sparse matrix or an array, got {type(pattern).__name__}"
            )
        if matrix.ndim != 2:
            raise InputValueError(f"pattern must be 2-D, got shape {matrix.shape}")
        matrix.eliminate_zeros()  # a stored zero is not an entry
        matrix = sp.csr_array(matrix, dtype=bool)
        m, n = (int(v) for v in matrix.shape)
        if kind != "jacobian":
            if m != n:
                raise InputValueError(
                    f"a {kind} pattern must be square, got {m}x{n}; a Jacobian's is "
                    "Sparsity.from_pattern(pattern, 'jacobian')"
                )
            matrix = sp.csr_array(matrix + matrix.T, dtype=bool)
        matrix.sort_indices()
        found = _color(kind, matrix, (m, n), str(dtype))
        return dataclasses.replace(found, why="" if not found.dense else _HALF)

    @functools.cached_property
    def plan(self):
        """Where each nonzero is read from the compressed products (made once)."""
        if self.mode == "row":
            return row_plan(self.pattern, self.colors)
        if self.mode == "bidirectional":
            return bicolor_plan(self.pattern, self.colors)
        if self.mode == "column" or (self.mode == "dense" and self.shape[0] != self.shape[1]):
            return column_plan(self.pattern, self.colors)
        return star_plan(self.pattern, self.colors)

    def one_sided(self) -> Sparsity:
        """This Sparsity with a one-sided colouring (column or row, whichever
        needs fewer): itself unless bidirectional. For an executor that stores
        one kind of product (the pipeline): more products, the same matrix."""
        return self if self.mode != "bidirectional" else self._one_sided_colouring

    @functools.cached_property
    def _one_sided_colouring(self) -> Sparsity:
        """`one_sided`'s colouring, made once (the pipeline asks on every run)."""
        return _one_sided(self.pattern, self.shape, self.dtype, self.seconds)


#: Detected sparsities, least recently used first, and the bytes they hold at
#: most (a pattern of 10⁷ nonzeros takes about 50 MB with its recovery plan):
#: the same model on many data sets shares one entry, another model evicts the
#: oldest.
_CACHE: collections.OrderedDict[tuple, Sparsity] = collections.OrderedDict()
_CACHE_BYTES = 256 << 20
_CACHE_LOCK = threading.Lock()


def _nbytes(found: Sparsity) -> int:
    """What a cached `Sparsity` holds: its pattern and colours, and its recovery
    plan (four arrays of about the pattern's size, made on first use)."""
    pattern = sp.csr_array(found.pattern)
    own = pattern.data.nbytes + pattern.indices.nbytes + pattern.indptr.nbytes
    return 5 * own + np.asarray(found.colors).nbytes


def _remember(key: tuple, found: Sparsity) -> None:
    with _CACHE_LOCK:
        _CACHE[key] = found
        _CACHE.move_to_end(key)
        total = sum(_nbytes(s) for s in _CACHE.values())
        while total > _CACHE_BYTES and len(_CACHE) > 1:
            _, dropped = _CACHE.popitem(last=False)
            total -= _nbytes(dropped)


#: The kernels' op whose matrix each kind is (a Jacobian's pattern is its JVPs').
_OP = {"hessian": "hessian", "gauss_newton": "gauss_newton", "jacobian": "jacfwd"}


def _traced(kind: str, f: Callable, x: Any) -> tuple[Any, Any, Callable]:
    """(kernels, x flat, unravel) of ``f`` at ``x`` for ``kind``: one trace."""
    return get_kernels(f, x, _OP[kind])


def _detect(kind: str, f: Callable, x: Any) -> Sparsity:
    """The Sparsity of ``kind`` of ``f`` at ``x``, detected once per computation
    (what JAX traced)."""
    return _detected(kind, *_traced(kind, f, x)[:2])


def _detected(kind: str, kernels, x_flat) -> Sparsity:
    """The Sparsity of ``kind`` of a traced function (``kernels``, of any op),
    cached on what JAX traced."""
    kernels = kernels.for_op(_OP[kind])
    try:
        identity = kernels.traced.identity()
    except InputTypeError:  # host callbacks: no identity to cache on; detected every call
        key = None
    else:
        key = (kind, identity.program, identity.data, str(jnp.result_type(x_flat)), x_flat.shape)
    with _CACHE_LOCK:
        found = None if key is None else _CACHE.get(key)
        if key is not None and found is not None:
            _CACHE.move_to_end(key)
    if found is not None:
        return found
    t0 = time.perf_counter()
    consts = kernels.consts
    f_flat = lambda z: kernels.f_flat(consts, z)
    m, n = kernels.spec.m, kernels.spec.n
    program = (kernels.closed(consts), ravel_output)  # traced once, not again
    try:
        if kind == "hessian":
            scalar = (program[0], lambda leaves: ravel_output(leaves).reshape(()))
            pattern = hessian_pattern(lambda z: f_flat(z).reshape(()), x_flat, program=scalar)
        elif kind == "gauss_newton":  # G = Jᵀ W J of the whitened residuals: Jᵀ J's pattern
            jac = sp.csr_array(jacobian_pattern(f_flat, x_flat, program=program), dtype=bool)
            pattern = gram(jac)
        else:
            pattern = jacobian_pattern(f_flat, x_flat, program=program)
    except Dense as err:
        pattern, why = None, str(err)
    else:
        why = _HALF
    t1 = time.perf_counter()
    # Jᵀ J is symmetric as built: its star colouring need not add its transpose
    found = _color(kind, pattern, (m, n), str(jnp.result_type(x_flat)),
                   symmetric=kind == "gauss_newton")  # fmt: skip
    found = dataclasses.replace(
        found,
        seconds={"detection": t1 - t0, "coloring": time.perf_counter() - t1},
        why=why if found.dense else "",
    )
    if key is not None:
        _remember(key, found)
    return found


#: Why a detected pattern is dense when detection saw it whole (no warning).
_HALF = "its pattern has more than half of its entries"


def _color(kind: str, pattern, shape, dtype: str, symmetric: bool = False) -> Sparsity:
    m, n = shape
    dense = pattern is None or pattern.nnz > 0.5 * m * n
    if dense:  # nothing to save: the dense path computes it (`dense_matrix`)
        full = sp.csr_array((m, n), dtype=bool) if pattern is None else pattern
        return Sparsity(shape, full, np.arange(n), n, "dense", dtype)
    if kind in ("hessian", "gauss_newton"):
        colors = star_coloring(pattern, symmetric=symmetric)
        return Sparsity(shape, pattern, colors, int(colors.max()) + 1, "star", dtype)
    both = bicoloring(pattern)  # JVPs and VJPs together (None without dense rows and columns)
    if both is None:
        return _one_sided(pattern, shape, dtype)
    csr = sp.csr_array(pattern)
    bound = min(int(np.diff(csr.indptr).max()), int(np.diff(sp.csc_array(csr).indptr).max()))
    # below both sides' lower bounds (the densest row, the densest column), the one-sided
    # colourings cannot win and are not tried: with a dense row of 10⁶ columns the column
    # colouring walks it from every column
    one = None if both[1] < bound else _one_sided(pattern, shape, dtype)
    if one is not None and one.ncolors <= both[1]:
        return one
    return Sparsity(shape, pattern, both[0], both[1], "bidirectional", dtype)


def _one_sided(pattern, shape, dtype: str, seconds=None) -> Sparsity:
    """A Jacobian's column or row colouring, whichever needs fewer: each is at
    least the densest row (column), which decides which to colour. When that
    bound is half the columns (rows) or more, each takes a colour of its own
    (at most twice the optimum; the greedy walk would visit the dense line
    from every column: quadratic, hours at 10⁶)."""
    m, n = shape
    rows_bound = int(np.diff(sp.csr_array(pattern).indptr).max(initial=0))  # columns >= this
    cols_bound = int(np.diff(sp.csc_array(pattern).indptr).max(initial=0))  # rows >= this
    mode = "column" if rows_bound <= cols_bound else "row"
    bound, extent = (rows_bound, n) if mode == "column" else (cols_bound, m)
    if 2 * bound >= extent:
        colors = np.arange(extent)
    elif mode == "column":
        colors = column_coloring(pattern)
    else:
        colors = row_coloring(pattern)
    return Sparsity(shape, pattern, colors, int(colors.max()) + 1, mode, dtype, dict(seconds or {}))


def hessian_sparsity(f: Callable, x: Any) -> Sparsity:
    """The Hessian's global pattern of scalar ``f`` at ``x``'s shape and dtype,
    star-coloured. Cached on the computation (what JAX traced)."""
    return _detect("hessian", f, x)


def jacobian_sparsity(f: Callable, x: Any) -> Sparsity:
    """The Jacobian's global pattern of ``f`` at ``x``'s shape and dtype, with a
    column or a row colouring (whichever needs fewer), or a bidirectional one
    (JVPs and VJPs together) when the pattern has dense rows and dense columns
    and that needs fewer products still. Cached as above."""
    return _detect("jacobian", f, x)


def _given(kind: str, sparsity, kernels, x_flat) -> Sparsity:
    """``sparsity`` checked against the traced function (``"auto"``: detected)."""
    if isinstance(sparsity, Sparsity):
        spec = kernels.for_op(_OP[kind]).spec
        shape = (spec.m, spec.n)
        dtype = str(jnp.result_type(x_flat))
        if sparsity.dtype == "":  # a pattern given for whatever x is
            sparsity = dataclasses.replace(sparsity, dtype=dtype)
        if sparsity.shape != shape or sparsity.dtype != dtype:
            raise InputValueError(
                f"sparsity is of a {sparsity.shape} {sparsity.dtype} matrix, but this {kind} is "
                f"{shape} {dtype}; detect it for this f and x (sparsity='auto')"
            )
        _check_colors(sparsity)
        return sparsity
    if sparsity is None:
        raise InputValueError(
            f"sparsity=None asks for the dense {_WHAT[kind]}: call the dense function "
            "(hessian, jacobian or gauss_newton), or pass sparsity='auto' or a Sparsity"
        )
    if not isinstance(sparsity, str):
        raise InputTypeError(
            f"sparsity must be 'auto' or a Sparsity, got a {type(sparsity).__name__}; a known "
            "pattern goes in a Sparsity (shape, pattern, colors, ncolors, mode, dtype), or "
            "let it be detected with sparsity='auto'"
        )
    if sparsity != "auto":
        raise InputValueError(f"sparsity must be None, 'auto' or a Sparsity, got {sparsity!r}")
    return _detected(kind, kernels, x_flat)


def _check_colors(found: Sparsity) -> None:
    """A hand-made `Sparsity`'s colours: one per column (per row in ``"row"``
    mode), each in ``[0, ncolors)``."""
    m, n = found.shape
    both = found.mode == "bidirectional"
    extent = m + n if both else m if found.mode == "row" else n
    what = "column, then one per row" if both else "row" if found.mode == "row" else "column"
    colors = np.asarray(found.colors)
    if colors.shape != (extent,) or not np.issubdtype(colors.dtype, np.integer):
        raise InputValueError(
            f"sparsity.colors must be {extent} integers (one per {what} of the {m}x{n} "
            f"matrix), got {colors.dtype} of shape {colors.shape}"
        )
    low = -1 if both else 0  # -1: a line in no product
    if extent and (colors.min() < low or colors.max() >= found.ncolors):
        raise InputValueError(
            f"sparsity.colors must lie in [{low}, ncolors={found.ncolors}), got "
            f"[{colors.min()}, {colors.max()}]"
        )


def _dense_matrix(kernels, x_flat, found: Sparsity) -> sp.csr_array:
    """A dense pattern's matrix by the dense path (one jitted loop of products),
    as CSR; refused when it would not fit."""
    m, n = found.shape
    if m * n > 1 << 28:
        raise InputValueError(
            f"sparsity detection found this {m}x{n} matrix dense ({found.why or 'dense'}): a "
            "sparse result of a dense matrix would not fit. If the matrix is sparse, the "
            "structure was lost there: give the pattern (a Sparsity); else compute it dense "
            "(sparsity=None), or out of core with the pipeline"
        )
    matrix = kernels.matrix(auto_inner_width(kernels, kernels.spec.extent))(x_flat)
    return sp.csr_array(np.asarray(matrix))


def _compressed(kernels, x_flat, colors: np.ndarray, transpose: bool, probes=None):
    """The products of the seeds of ``colors`` (one per colour, -1: none), then
    those of the ``probes`` (rows; the check's vectors, riding in the same
    calls), built where they run, `_PRODUCTS_AT_ONCE` per compiled call:
    ``(compressed, the probes' products or None)``."""
    colors = np.asarray(colors, np.int64)
    count = int(colors.max(initial=-1)) + 1
    nprobes = 0 if probes is None else probes.shape[0]
    dtype = kernels.seed_dtype
    # converted on the host, then put: jnp.asarray would compile a conversion (and a
    # staging) on a first call, 30 ms of the PSF demo's
    on_device = jax.device_put(colors.astype(np.int32))
    rows = np.zeros((1, kernels.spec.extent), dtype) if probes is None else probes
    rows = jax.device_put(np.asarray(rows, dtype))
    total = count + nprobes
    run = _chunk_products(kernels, x_flat)
    pending = [run(on_device, np.int32(count), rows, np.int32(start))
               for start in range(0, total, _PRODUCTS_AT_ONCE)]  # fmt: skip
    other = kernels.spec.m if kernels.spec.axis == 1 else kernels.spec.n
    out = np.concatenate([np.asarray(p) for p in pending]) if pending else np.zeros((0, other))
    out = out[:total]
    found = out[:count]
    return (found if transpose else found.T), (out[count:] if nprobes else None)


def _chunk_products(kernels, x_flat):
    """``(colors, ncolors, probes, start) -> products`` of `_PRODUCTS_AT_ONCE`
    vectors at ``x_flat``: linearised once here from `_TWO_STAGE_FROM`
    parameters on, else in each chunk's one program."""
    if kernels.spec.n >= _TWO_STAGE_FROM:
        return functools.partial(kernels.seeded_apply(_PRODUCTS_AT_ONCE), kernels.prepare()(x_flat))
    return functools.partial(kernels.seeded_products(_PRODUCTS_AT_ONCE), x_flat)


def _compile_ahead(kind: str, sparsity: Any, kernels, x_flat) -> threading.Thread | None:
    """A first call's products compiled in a thread while the pattern is detected
    and coloured (XLA compiles without the GIL): the call's width is fixed
    (`_PRODUCTS_AT_ONCE`) and the colouring traced, so nothing in it waits for
    them. For the symmetric kinds (column products, the probes riding along)
    and Jacobians with no fewer rows than columns (most likely column
    coloured); None when nothing is left to compile or nothing is detected.
    A failure is dropped here: the call compiles again and raises it there."""
    spec = kernels.spec
    if not (isinstance(sparsity, str) and (kind != "jacobian" or spec.m >= spec.n)):
        return None
    key = ("ahead", kernels.spec.op, _PRODUCTS_AT_ONCE)
    with _CACHE_LOCK:
        if key in kernels.memo:
            return None
        kernels.memo[key] = True

    x64 = bool(jax.config.read("jax_enable_x64"))  # a context's setting is this thread's alone

    def dropped() -> None:
        with _CACHE_LOCK:
            kernels.memo.pop(key, None)

    lowered = None
    if spec.n < _TWO_STAGE_FROM:
        # traced and lowered here, before detection: Python, which in the thread would
        # share the GIL with detection's walk and put off the compile (the first
        # call's critical path) by twice as long; at 10⁶ detection is the longer
        try:
            lowered = kernels.lower_seeded_products(_PRODUCTS_AT_ONCE, PROBES, x_flat)
        except Exception:  # noqa: BLE001 - traced again, and raised, by the call
            dropped()
            return None

    def compile_() -> None:
        try:
            if lowered is not None:
                lowered.compile()
                return
            with jax.enable_x64(x64):
                kernels.compile_seeded_apply(_PRODUCTS_AT_ONCE, PROBES, x_flat)
        except Exception:  # noqa: BLE001 - compiled again, and raised, by the call
            dropped()

    # not a daemon: an exit waits for it, before JAX's own clean-up
    thread = threading.Thread(target=compile_, name="diffops-compile-ahead")
    thread.start()
    return thread


def _both_ways(kernels, x_flat, found: Sparsity):
    """``(probe seed, the flat buffer of J S꜀ then Sᵣᵀ J, the probes' products)``
    of a bidirectional colouring: the JVPs with the check's probes riding in
    their calls, then the VJPs."""
    cols, rows = split_colors(found.colors, found.shape)
    seed = secrets.randbits(32)
    probes = probe_vectors(found.shape[1], seed)
    by_col, products = _compressed(kernels, x_flat, cols, False, probes)
    by_row, _ = _compressed(kernels.for_op("jacrev"), x_flat, rows, True)
    return seed, np.concatenate([np.ravel(by_col), np.ravel(by_row)]), products


def _row_groups(kernels) -> list[slice]:
    """The rows of each leaf of the matrix (the gradient's for a Hessian or a
    Gauss–Newton matrix, the output's for a Jacobian)."""
    spec = kernels.spec
    layout = spec.out_layout if spec.op == "jacfwd" else spec.in_layout
    return [leaf.slice for leaf in layout.leaves]


def _check(matrix: sp.csr_array, kernels, x_flat, what: str, seed=None, products=None) -> dict:
    """``matrix`` against the products ``M v`` of random probe vectors
    (``kernels``: the column products' op; the ``products`` of the probes of
    ``seed`` when they rode with the colours' products, else drawn and computed
    here): a detection or a colouring error is refused, never returned
    (`_check.check_products`).

    **Returns:** ``error``, ``tolerance``, ``ratio``, ``row``, ``eps``, ``seed``.
    **Raises:** `ValueError`."""
    if products is None:
        seed = secrets.randbits(32)
        probes = probe_vectors(matrix.shape[1], seed)
        run = kernels.products(PROBES)
        products = np.asarray(run(x_flat, jnp.asarray(probes, x_flat.dtype)))
    else:
        probes = probe_vectors(matrix.shape[1], seed)
    dtype = np.dtype(jnp.result_type(x_flat))
    key = ("check_eps", dtype.name)  # a function of the program's dtypes: once per program
    if key not in kernels.memo:
        kernels.memo[key] = compute_eps(kernels.traced.jaxpr, dtype)
    eps = kernels.memo[key]
    found = check_products(matrix, probes, products, eps, _row_groups(kernels), what)
    return {**found, "seed": seed}


def sparse_hessian(f: Callable, x: Any, sparsity: Any = "auto") -> tuple[sp.csr_array, Callable]:
    """The Hessian of scalar ``f`` at ``x`` as a `scipy.sparse.csr_array` over
    ``ravel_pytree(x)``, from one Hessian-vector product per colour of its star
    colouring (``sparsity``: ``"auto"`` detects it; a `Sparsity` reuses it),
    checked against products of random vectors (row by row). Never forms a dense n x n
    (unless the pattern is dense).

    **Returns:** ``(H, unflatten)``. **Raises:** `ValueError` for a sparsity of
    another shape or dtype, or a result that does not check.
    """
    return matrix_from_products("hessian", f, x, sparsity)[:2]


def sparse_gauss_newton(
    residuals: Callable,
    x: Any,
    *,
    std: Any = None,
    cov: Any = None,
    inv_cov: Any = None,
    sparsity: Any = "auto",
) -> tuple[sp.csr_array, Callable]:
    """The Gauss–Newton (Fisher) matrix ``Jᵀ W J`` of ``residuals`` at ``x`` as a
    `scipy.sparse.csr_array`, from one product ``G s`` per colour of a star
    colouring of ``Jᵀ J``'s pattern, checked as `sparse_hessian`'s. The noise
    model is `gauss_newton`'s; a dense ``cov`` or ``inv_cov`` mixes every
    residual, so ``G`` is dense and nothing is saved (the dense path is then
    what runs, recovered alike).

    **Returns:** ``(G, unflatten)``. **Raises:** as `sparse_hessian`, and the
    noise model's errors.
    """
    whitened = whitened_residuals(residuals, x, std, cov, inv_cov)
    return matrix_from_products("gauss_newton", whitened, x, sparsity)[:2]


def gauss_newton_sparsity(
    residuals: Callable, x: Any, *, std: Any = None, cov: Any = None, inv_cov: Any = None
) -> Sparsity:
    """The Gauss–Newton matrix's pattern (``Jᵀ J``'s, of the whitened residuals),
    star-coloured; cached as `hessian_sparsity`."""
    return _detect("gauss_newton", whitened_residuals(residuals, x, std, cov, inv_cov), x)


def sparse_jacobian(f: Callable, x: Any, sparsity: Any = "auto") -> tuple[sp.csr_array, Callable]:
    """The Jacobian of ``f`` at ``x`` as a `scipy.sparse.csr_array` (``(m, n)``
    over the flat output and ``ravel_pytree(x)``), from one product per colour
    of a column colouring (JVPs), a row colouring (VJPs) or both (an arrowhead
    Jacobian in three products), checked as `sparse_hessian`'s.

    **Returns:** ``(J, unflatten)`` (of x). **Raises:** as `sparse_hessian`.
    """
    return matrix_from_products("jacobian", f, x, sparsity)[:2]


def detect(kind: str, kernels, x_flat, sparsity: Any = "auto") -> Sparsity:
    """The `Sparsity` of ``kind`` (``"hessian"``, ``"jacobian"`` or
    ``"gauss_newton"`` of whitened residuals) of an executor's traced function
    (``kernels`` of any op, and the flat concrete ``x``; nothing is traced
    again): detected and coloured (cached), or ``sparsity`` checked against it.

    **Raises:** `ValueError` as `matrix_from_products`."""
    _refuse_traced(x_flat)
    return _given(kind, sparsity, kernels, x_flat)


def check_sparse(
    kind: str, matrix: sp.csr_array, kernels, x_flat, seed: int | None = None, products=None
) -> dict:
    """Check a recovered ``matrix`` of ``kind`` against products of random
    vectors of the traced function (``kernels`` of any op, at ``x_flat``): an
    executor's result, as `matrix_from_products` checks its own. ``products``:
    the ``(PROBES, m)`` products of the probe vectors of ``seed``
    (`probe_vectors`) when they rode with the colours' products; else they are
    drawn and computed here. **Returns:** ``error``, ``tolerance``, ``ratio``,
    ``row``, ``eps``, ``seed``. **Raises:** `ValueError` on a mismatch beyond
    the tolerance."""
    if products is not None and seed is None:
        raise InputValueError("check_sparse: products given without the seed of their probes")
    return _check(matrix, kernels.for_op(_OP[kind]), x_flat, _WHAT[kind], seed, products)


def _warn_dense(kind: str, found: Sparsity, sparsity: Any) -> None:
    """Say so when ``"auto"`` falls back to the dense path because detection gave
    up (not when it saw a pattern more than half full: nothing to save)."""
    if not (isinstance(sparsity, str) and found.why and found.why != _HALF):
        return
    m, n = found.shape
    warnings.warn(
        f"sparsity='auto' could not find the {_WHAT[kind]}'s structure ({found.why}); "
        f"computing the dense {m}x{n} matrix instead ({n} products). If it is sparse, give "
        "its pattern (Sparsity.from_pattern), or pass sparsity=None to ask for the dense "
        "result without this warning",
        SparsityWarning,
        stacklevel=4,
    )


def _refuse_traced(x: Any) -> None:
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x)):
        raise InputValueError(
            "sparsity= needs a concrete x (it colours a pattern on the host); call it outside "
            "jit, or pass sparsity=None"
        )


_WHAT = {"hessian": "Hessian", "gauss_newton": "Gauss-Newton matrix", "jacobian": "Jacobian"}


def matrix_from_products(kind: str, f: Callable, x: Any, sparsity: Any, *, dense_path: bool = True):
    """``(matrix, unflatten, kernels)`` of ``kind`` (``"hessian"``, ``"jacobian"``
    or ``"gauss_newton"`` of already whitened residuals): one product per colour
    (JVPs, HVPs or G products of column seeds; VJPs of row seeds in ``"row"``
    mode), recovered and checked. A dense pattern is computed by the dense path,
    or, without ``dense_path``, left to the caller: None.

    **Raises:** `ValueError` for a traced ``x`` (the pattern is coloured on the
    host), a bad ``sparsity``, or a result that does not check."""
    _refuse_traced(x)
    kernels, x_flat, unravel = _traced(kind, f, x)
    ahead = _compile_ahead(kind, sparsity, kernels, x_flat)  # kernels of _OP[kind]
    found = _given(kind, sparsity, kernels, x_flat)
    if ahead is not None and not found.dense:  # else it ends alone, in vain (not a daemon)
        ahead.join()
    if found.dense:
        if not dense_path:
            _warn_dense(kind, found, sparsity)
            return None
        return _dense_matrix(kernels, x_flat, found), unravel, kernels
    if found.mode == "row":  # VJPs: the probes (JVPs or HVPs) are another op's call
        compressed, _ = _compressed(kernels.for_op("jacrev"), x_flat, found.colors, True)
        seed, products = None, None
    elif found.mode == "bidirectional":
        seed, compressed, products = _both_ways(kernels, x_flat, found)
    else:
        seed = secrets.randbits(32)
        probes = probe_vectors(found.shape[1], seed)
        compressed, products = _compressed(kernels, x_flat, found.colors, False, probes)
    matrix = recover(found.plan, found.shape, compressed)
    _check(matrix, kernels, x_flat, _WHAT[kind], seed, products)
    return matrix, unravel, kernels
