"""Per-block kernels: JVP columns, VJP rows and HVP columns.

The one primitive is `_fill`: given a linear map ``lin`` (a linearised HVP or JVP,
or a VJP) it applies ``lin`` to the one-hot vectors of a window of ``width``
consecutive indices and writes the products into a slab, ``inner_width`` indices at a
time (micro-batches bound the columns in flight, and a narrower vmap is often
faster on CPUs). Two executors use it:

- the block kernel ``block(x_flat, start) -> slab``: linearise at ``x_flat`` and
  fill the window ``[start, start + block_size)``; ``start`` is a traced scalar,
  so one compile serves every block (the pipeline runs this on dask workers);
- the in-memory matrix ``matrix(x_flat) -> M``: linearise once and fill the whole
  matrix in one jitted loop (the in-memory API).

``f`` is traced once per call (`diffops_core._trace`); compiled kernels are
cached on what JAX traced and take the trace's constants as arguments, so a
second call with new data (or a new ``x``) compiles nothing and is never stale.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import threading

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax.extend.core import ClosedJaxpr

from .._errors import InputTypeError, InputValueError
from ._layout import Layout
from ._trace import TracedFunction, const_spec, eval_flat, trace

__all__ = ["OPS", "KernelSpec", "Kernels", "clear_cache", "get_kernels", "ravel_output"]

#: op -> (axis along which the slab is cut, what the kernel applies)
OPS = {"hessian": 1, "jacfwd": 1, "jacrev": 0, "gauss_newton": 1}


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Static description of what a set of kernels computes.

    **Attributes:**

    - `op`: ``"hessian"`` (HVP columns), ``"jacfwd"`` (JVP columns), ``"jacrev"``
      (VJP rows) or ``"gauss_newton"`` (columns ``Jᵀ (J e_i)``: a JVP then a VJP).
    - `n`: size of the flat input; `m`: size of the flat output (``m == n`` for a
      Hessian). The matrix has shape ``(m, n)``.
    - `dtype`: dtype name of the matrix.
    - `in_layout`, `out_layout`: flat layouts of ``x`` and of ``f(x)``.
    """

    op: str
    n: int
    m: int
    dtype: str
    in_layout: Layout
    out_layout: Layout

    @property
    def axis(self) -> int:
        """1 when blocks are column slabs ``(m, b)``, 0 for row slabs ``(b, n)``."""
        return OPS[self.op]

    @property
    def extent(self) -> int:
        """Number of columns (axis 1) or rows (axis 0) to cover."""
        return self.n if self.axis == 1 else self.m

    @property
    def shape(self) -> tuple[int, int]:
        return (self.m, self.n)

    def slab_shape(self, width: int) -> tuple[int, int]:
        return (self.m, width) if self.axis == 1 else (width, self.n)


def ravel_output(y):
    leaves = jax.tree_util.tree_leaves(y)
    if len(leaves) == 1:
        return jnp.ravel(leaves[0])
    dtype = jnp.result_type(*leaves)
    return jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])


def _linear_map(op, f_flat, x_flat):
    """The linear map whose products are the matrix's columns (or rows).

    A `jax.tree_util.Partial` (a pytree of the linearisation's residuals), so it
    can leave one jitted function and enter another: the pipeline linearises once
    per run and reuses the residuals for every block. Apply it with `_apply`.
    """
    if op == "hessian":
        return jax.linearize(jax.grad(f_flat), x_flat)[1]
    if op == "jacfwd":
        return jax.linearize(f_flat, x_flat)[1]
    if op == "gauss_newton":
        jvp = jax.linearize(f_flat, x_flat)[1]
        vjp = jax.vjp(f_flat, x_flat)[1]
        return jax.tree_util.Partial(_gauss_newton_product, jvp, vjp)
    return jax.vjp(f_flat, x_flat)[1]


def _gauss_newton_product(jvp, vjp, v):
    """``Jᵀ (J v)`` from one linearisation's JVP and VJP."""
    return vjp(jvp(v))[0]


def _apply(op, lin, v):
    return lin(v)[0] if op == "jacrev" else lin(v)


def _seeds(colors, ncolors, probes, in_dtype):
    """The vectors of a compressed block, ``index -> (len(index), extent)``: for
    ``i < ncolors`` (an int, or traced) the seed of colour ``i`` (the sum of its
    unit vectors; ``colors``: each one's colour, traced), then the rows of ``probes`` (the
    check's probe vectors, traced, riding in the same call; ``None``: none)."""

    def vectors(index):
        basis = (colors[None, :] == index[:, None]).astype(in_dtype)
        if probes is None:
            return basis
        row = jnp.clip(index - ncolors, 0, probes.shape[0] - 1)
        return jnp.where((index >= ncolors)[:, None], probes[row].astype(in_dtype), basis)

    return vectors


def _fill(lin, start, width, inner_width, extent, in_dtype, axis, slab, first=0, vectors=None):
    """Write ``lin(e_i)`` for ``i in [start, start + width)`` into ``slab``.

    ``lin`` is a callable of one basis vector (``e_i`` of length ``extent``).
    With ``vectors`` (``index -> (len(index), extent)``, e.g. `_seeds`), the
    vectors are its rows for ``index`` instead (the compressed products of a
    colouring and the check's probes, one compile for all blocks).

    The window is covered by ``ceil(width / inner_width)`` micro-batches; the last one is
    shifted left to end at ``width`` (an overlap, never a pad), and
    ``dynamic_update_slice`` writes each where it was computed. Micro-batches
    before ``first`` (a traced int) are skipped: the last block of a plan starts
    its window early, and the columns before its own are another block's.
    """
    count = math.ceil(width / inner_width)
    lanes = jnp.arange(inner_width)

    def body(j, slab):
        offset = jnp.minimum(j * inner_width, width - inner_width).astype(jnp.int32)
        index = start + offset + lanes
        if vectors is None:
            basis = jax.nn.one_hot(index, extent, dtype=in_dtype)
        else:
            basis = vectors(index)
        products = jax.vmap(lin)(basis)  # (inner_width, len of lin's output)
        if axis == 1:
            return jax.lax.dynamic_update_slice(
                slab, products.T.astype(slab.dtype), (jnp.int32(0), offset)
            )
        return jax.lax.dynamic_update_slice(
            slab, products.astype(slab.dtype), (offset, jnp.int32(0))
        )

    if count == 1:
        return body(0, slab)
    return jax.lax.fori_loop(first, count, body, slab)


_CACHE: collections.OrderedDict[tuple, _Program] = collections.OrderedDict()
_CACHE_SIZE = 32
_CACHE_LOCK = threading.Lock()


class _Program:
    """What every trace with one compile key shares: the jaxpr (never ``f``), the
    jitted kernels and sizing memos. Constants are arguments of every kernel."""

    def __init__(self, jaxpr, checkpoint: bool, in_layout: Layout):
        self.jaxpr = jaxpr
        self.checkpoint = checkpoint
        self.x_aval = jax.ShapeDtypeStruct((in_layout.n,), in_layout.dtype)
        self.jitted: dict[tuple, object] = {}
        self.memos: dict[str, dict] = {}  # per op: sizing figures measured once
        self.lock = threading.Lock()


class Kernels:
    """The kernels of one op for one traced function. Build with `get_kernels`.

    Holds the `KernelSpec`, this call's constants (`consts`: the arrays ``f``
    reads, as traced now) and the `traced` function, and hands out functions
    bound to those constants whose compiled code is shared by every trace with
    the same compile key:

    - `block(block_size, inner_width)`: ``(x_flat, start) -> slab`` of shape
      ``spec.slab_shape(block_size)`` holding columns (rows for ``jacrev``)
      ``start .. start + block_size``; ``start`` is traced (one compile for all
      blocks) and must satisfy ``0 <= start <= extent - block_size``.
    - `matrix(inner_width)`: ``x_flat -> (m, n)`` matrix, the whole loop in one jit.
    - `prepare()` and `slab(block_size, inner_width)`: the block kernel in two stages,
      ``x_flat -> lin`` (linearise once) and ``(lin, start) -> slab``; executors
      that run many blocks at one ``x`` linearise once and reuse ``lin``.
      `compiled_prepare()` / `compiled_block(block_size, inner_width)` are the same,
      compiled ahead of time (shared with the memory analysis).

    ``inner_width`` is the micro-batch width: products vmapped at once (``<= block_size``).
    """

    def __init__(
        self,
        program: _Program,
        op: str,
        traced: TracedFunction,
        in_layout: Layout,
        out_layout: Layout,
    ):
        self._program = program
        self.traced = traced
        self.consts = traced.consts
        self.spec = _make_spec(op, in_layout, out_layout)
        self.memo = program.memos.setdefault(op, {})

    def for_op(self, op: str) -> Kernels:
        """The kernels of another op for the same traced function."""
        return Kernels(self._program, op, self.traced, self.spec.in_layout, self.spec.out_layout)

    def f_flat(self, consts, z):
        """``f`` on the flat input with constants ``consts``, raveled to one vector."""
        return ravel_output(eval_flat(self._program.jaxpr, consts, z))

    def closed(self, consts) -> ClosedJaxpr:
        """The program `f_flat` evaluates, closed over ``consts``: ``z`` to the
        output's leaves (`ravel_output` makes them `f_flat`'s vector)."""
        return ClosedJaxpr(self._program.jaxpr, list(consts))

    def _lin(self, consts, x_flat):
        f_flat = functools.partial(self.f_flat, consts)
        if self._program.checkpoint:
            f_flat = jax.checkpoint(f_flat)
        if self.spec.op == "hessian":
            scalar = lambda z: f_flat(z).reshape(())
            return _linear_map("hessian", scalar, x_flat)
        return _linear_map(self.spec.op, f_flat, x_flat)

    @property
    def seed_dtype(self):
        """The dtype of the vectors the op is applied to (x's; the output's for
        ``jacrev``)."""
        spec = self.spec
        layout = spec.out_layout if spec.op == "jacrev" else spec.in_layout
        return jnp.dtype(layout.dtype)

    def _fill(self, lin, start, width, inner_width, out, first=0, vectors=None):
        spec = self.spec
        apply = lambda v: _apply(spec.op, lin, v)
        return _fill(apply, start, width, inner_width, spec.extent, self.seed_dtype, spec.axis,
                     out, first, vectors)  # fmt: skip

    def slab_fn(self, block_size: int, inner_width: int):
        """The un-jitted second stage: ``(lin, start) -> slab``."""
        spec = self.spec
        _check_widths(spec.extent, block_size, inner_width)

        def slab(lin, start, first=0):
            out = jnp.zeros(spec.slab_shape(block_size), spec.dtype)
            return self._fill(lin, start, block_size, inner_width, out, first)

        return slab

    def seeded_slab_fn(self, ncolors: int, block_size: int, inner_width: int, nprobes: int = 0):
        """The un-jitted compressed stage: ``(lin, colors, probes, start, first) ->
        slab`` of the products of the seeds of colours ``start .. start +
        block_size`` (``colors``: each column's colour, each row's for
        ``jacrev``), where indices ``ncolors .. ncolors + nprobes`` are the rows
        of ``probes`` (``(nprobes, extent)``; the check's probe vectors, riding
        in the same call; ignored when ``nprobes`` is 0)."""
        spec = self.spec
        _check_widths(ncolors + nprobes, block_size, inner_width)

        def slab(lin, colors, probes, start, first=0):
            out = jnp.zeros(spec.slab_shape(block_size), spec.dtype)
            vectors = _seeds(colors, ncolors, probes if nprobes else None, self.seed_dtype)
            return self._fill(lin, start, block_size, inner_width, out, first, vectors)

        return slab

    def block_fn(self, block_size: int, inner_width: int):
        """The un-jitted block kernel ``(consts, x_flat, start) -> slab``."""
        slab = self.slab_fn(block_size, inner_width)
        return lambda consts, x_flat, start: slab(self._lin(consts, x_flat), start)

    def matrix_fn(self, inner_width: int):
        """The un-jitted whole-matrix loop ``(consts, x_flat) -> (m, n)``."""
        spec = self.spec
        _check_widths(spec.extent, spec.extent, inner_width)

        def matrix(consts, x_flat):
            out = jnp.zeros(spec.shape, spec.dtype)
            return self._fill(self._lin(consts, x_flat), 0, spec.extent, inner_width, out)

        return matrix

    def _jit(self, key, build):
        key = (self.spec.op,) + key
        program = self._program
        with program.lock:
            if key not in program.jitted:
                program.jitted[key] = jax.jit(build())
            return program.jitted[key]

    def block(self, block_size: int, inner_width: int):
        jitted = self._jit(
            ("block", block_size, inner_width), lambda: self.block_fn(block_size, inner_width)
        )
        return functools.partial(jitted, self.consts)

    def matrix(self, inner_width: int):
        return functools.partial(
            self._jit(("matrix", inner_width), lambda: self.matrix_fn(inner_width)), self.consts
        )

    def products(self, count: int):
        """``(x_flat, seeds) -> products``: the op's products of ``count`` seed
        vectors at once (``seeds`` of shape ``(count, extent)``; the result
        ``(count, other)``), vmapped, linearising once; compiled once per ``count``
        for every trace with this compile key (the compressed products of a
        colouring: each seed the sum of one colour's unit vectors)."""

        def build():
            def run(consts, x_flat, seeds):
                lin = self._lin(consts, x_flat)
                return jax.vmap(lambda v: _apply(self.spec.op, lin, v))(seeds)

            return run

        return functools.partial(self._jit(("products", count), build), self.consts)

    def _seeded_fn(self, count: int):
        """The un-jitted products of a colouring's vectors from a linearisation:
        ``(lin, colors, ncolors, probes, start) -> products`` (`seeded_products`)."""

        def run(lin, colors, ncolors, probes, start):
            index = start + jnp.arange(count, dtype=jnp.int32)
            vectors = _seeds(colors, ncolors, probes, self.seed_dtype)(index)
            return jax.vmap(lambda v: _apply(self.spec.op, lin, v))(vectors)

        return run

    def _seeded_products_jitted(self, count: int):
        def build():
            seeded = self._seeded_fn(count)

            def run(consts, x_flat, *chunk):
                return seeded(self._lin(consts, x_flat), *chunk)

            return run

        return self._jit(("seeded_products", count), build)

    def seeded_products(self, count: int):
        """``(x_flat, colors, ncolors, probes, start) -> products``: the op's
        products of the vectors ``start .. start + count`` of a colouring, built
        where they run (`_seeds`: colour ``i``'s seed for ``i < ncolors``, then
        the rows of ``probes``, ``(nprobes, extent)``; past them a repeat of the
        last probe, to be dropped). ``colors`` (int32 over the extent, -1 for
        none), ``ncolors`` and ``start`` (int32 scalars) are traced: one compile
        for every colouring and chunk of this extent and number of probes."""
        return functools.partial(self._seeded_products_jitted(count), self.consts)

    def seeded_apply(self, count: int):
        """`seeded_products` in two stages: ``lin = prepare()(x_flat)`` once, then
        ``(lin, colors, ncolors, probes, start) -> products`` per ``count``
        vectors (a call of many chunks linearises once)."""
        return self._jit(("seeded_apply", count), lambda: self._seeded_fn(count))

    def _chunk_avals(self, nprobes: int) -> tuple:
        """The avals of ``(colors, ncolors, probes, start)``."""
        extent, scalar = self.spec.extent, jax.ShapeDtypeStruct((), jnp.int32)
        return (jax.ShapeDtypeStruct((extent,), jnp.int32), scalar,
                jax.ShapeDtypeStruct((nprobes, extent), self.seed_dtype), scalar)  # fmt: skip

    def compile_seeded_apply(self, count: int, nprobes: int, x_flat) -> None:
        """Compile `prepare` and `seeded_apply` ahead of their first call (into the
        caches those calls read)."""
        prepared = self._prepare_jitted().lower(self.consts, x_flat)
        prepared.compile()
        self.seeded_apply(count).lower(prepared.out_info, *self._chunk_avals(nprobes)).compile()

    def lower_seeded_products(self, count: int, nprobes: int, x_flat):
        """`seeded_products` traced and lowered ahead of its first call: its
        ``.compile()`` (which needs no GIL, e.g. in a thread while the colouring
        is found) fills the cache that call reads."""
        jitted = self._seeded_products_jitted(count)
        return jitted.lower(self.consts, x_flat, *self._chunk_avals(nprobes))

    def _prepare_jitted(self):
        return self._jit(("prepare",), lambda: self._lin)

    def prepare(self):
        return functools.partial(self._prepare_jitted(), self.consts)

    def slab(self, block_size: int, inner_width: int):
        return self._jit(
            ("slab", block_size, inner_width), lambda: self.slab_fn(block_size, inner_width)
        )

    def _compiled(self, key, lower):
        key = (self.spec.op, "compiled") + key
        program = self._program
        with program.lock:
            compiled = program.jitted.get(key)
        if compiled is None:
            compiled = lower().compile()
            with program.lock:
                compiled = program.jitted.setdefault(key, compiled)
        return compiled

    def _const_avals(self):
        return tuple(const_spec(c) for c in self.consts)

    def compiled_prepare(self):
        """`prepare` compiled ahead of time: ``compiled(x_flat) -> lin``."""
        compiled = self._compiled(
            ("prepare",),
            lambda: self._prepare_jitted().lower(self._const_avals(), self._program.x_aval),
        )
        return functools.partial(compiled, self.consts)

    def compiled_block(self, block_size: int, inner_width: int):
        """`slab` compiled ahead of time:
        ``compiled(lin, np.int32(block.window), np.int32(block.first_batch(inner_width))) -> slab``.

        The third argument skips the micro-batches before the block's own columns
        (0 but for a plan's last block, whose window starts early): a ragged last
        block costs at most one micro-batch more, not a whole block. Cached:
        executors and `kernel_bytes` share one compile. Its arguments (hence its
        memory analysis) include the linearisation's residuals.
        """

        def lower():
            lin_aval = jax.eval_shape(
                self._prepare_jitted(), self._const_avals(), self._program.x_aval
            )
            start_aval = jax.ShapeDtypeStruct((), "int32")
            return self.slab(block_size, inner_width).lower(lin_aval, start_aval, start_aval)

        return self._compiled(("slab", block_size, inner_width), lower)

    def compiled_seeded_block(
        self, ncolors: int, block_size: int, inner_width: int, nprobes: int = 0
    ):
        """`compiled_block` for the compressed products of a colouring of
        ``ncolors`` colours and ``nprobes`` probe vectors after them
        (`seeded_slab_fn`): ``compiled(lin, colors, probes, np.int32(block.window),
        np.int32(block.first_batch(inner_width))) -> slab``, ``colors`` an int32
        array over the extent, ``probes`` ``(max(nprobes, 1), extent)`` of the
        input's dtype (one compile for every block and colouring of the same
        sizes)."""
        key = ("seeded", ncolors, block_size, inner_width, nprobes)

        def lower():
            lin_aval = jax.eval_shape(
                self._prepare_jitted(), self._const_avals(), self._program.x_aval
            )
            start_aval = jax.ShapeDtypeStruct((), "int32")
            colors_aval = jax.ShapeDtypeStruct((self.spec.extent,), "int32")
            probes_aval = jax.ShapeDtypeStruct((max(nprobes, 1), self.spec.extent),
                                               self.seed_dtype)  # fmt: skip
            seeded = self._jit(
                key, lambda: self.seeded_slab_fn(ncolors, block_size, inner_width, nprobes)
            )
            return seeded.lower(lin_aval, colors_aval, probes_aval, start_aval, start_aval)

        return self._compiled(key, lower)


def _check_widths(extent, width, inner_width):  # extent: columns, rows or colours
    if not 1 <= width <= extent:
        raise InputValueError(f"block size must be in [1, {extent}], got {width}")
    if not 1 <= inner_width <= width:
        raise InputValueError(f"micro-batch width must be in [1, {width}], got {inner_width}")


def _make_spec(op: str, in_layout: Layout, out_layout: Layout) -> KernelSpec:
    for leaf in out_layout.leaves:
        if not jnp.issubdtype(np.dtype(leaf.dtype), jnp.floating):
            raise InputTypeError(
                f"f(x){leaf.path} has dtype {leaf.dtype}; derivatives need a floating-point "
                "output. Cast the output to float inside f."
            )
    if op == "hessian":
        if len(out_layout.leaves) != 1 or out_layout.leaves[0].shape != ():
            shapes = ", ".join(f"f(x){s.path}: shape {s.shape}" for s in out_layout.leaves)
            raise InputValueError(
                f"hessian needs a scalar-valued f, but f returned {shapes}. Reduce the "
                "output to a scalar (e.g. a sum or a loss), or use jacobian for vector outputs."
            )
        return KernelSpec(op, in_layout.n, in_layout.n, in_layout.dtype, in_layout, out_layout)
    if op == "gauss_newton":
        dtype = np.dtype(jnp.result_type(in_layout.dtype, out_layout.dtype)).name
        return KernelSpec(op, in_layout.n, in_layout.n, dtype, in_layout, out_layout)
    if op == "jacfwd":
        dtype = out_layout.dtype
    else:
        dtype = np.dtype(jnp.result_type(in_layout.dtype, out_layout.dtype)).name
    return KernelSpec(op, in_layout.n, out_layout.n, dtype, in_layout, out_layout)


def _ravel(x, dtype: str):
    """`jax.flatten_util.ravel_pytree` of ``x``, flattened on the host when its
    leaves are concrete arrays of the flat dtype already: op by op on the
    device, each leaf's reshape and the concatenation compile once per shape
    (40 ms of a first call). The same vector and the same ``unravel``."""
    leaves = jax.tree_util.tree_leaves(x)
    # a device's arrays (not the CPU's) stay there: copied out and back, x would cost more
    kinds = np.ndarray | jax.Array if jax.default_backend() == "cpu" else np.ndarray
    if not all(isinstance(leaf, kinds) and not isinstance(leaf, jax.core.Tracer)
               and np.dtype(leaf.dtype) == np.dtype(dtype) for leaf in leaves):  # fmt: skip
        return jax.flatten_util.ravel_pytree(x)
    unravel = []
    jax.eval_shape(lambda t: unravel.append(jax.flatten_util.ravel_pytree(t)[1]), x)
    flat = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in leaves])
    return jax.device_put(flat), unravel[0]


def get_kernels(f, x, op: str, *, checkpoint: bool = False, cache: bool = True):
    """Trace ``f`` at ``x`` once and return its kernels.

    ``f`` is traced to a jaxpr on every call (`diffops_core._trace.trace`); the
    kernels are compiled from that jaxpr and cached on what JAX traced (the
    program's structure and the constants a compiled kernel keeps), never on
    ``f``'s identity. The trace's constants (the arrays ``f`` reads) are passed
    to the compiled kernels as arguments, so new data gives fresh results with
    no recompile, and structurally identical functions share one compile.

    **Arguments:**

    - `f`: the function; for ``op="hessian"`` it must return a scalar.
    - `x`: the parameter pytree (arrays, Python floats, or tracers).
    - `op`: ``"hessian"``, ``"jacfwd"`` or ``"jacrev"``.
    - `checkpoint`: wrap ``f`` in `jax.checkpoint`.
    - `cache`: reuse compiled kernels of the same program.

    **Returns:** ``(kernels, x_flat, unravel)``.

    **Raises:** `TypeError` for non-float leaves or outputs; `ValueError` for a
    non-scalar ``f`` in ``hessian`` or an unknown ``op``.
    """
    if op not in OPS:
        raise InputValueError(f"op must be one of {sorted(OPS)}, got {op!r}")
    in_layout = Layout.from_pytree(x)
    if in_layout.n == 0:
        raise InputValueError(
            f"x has no parameters (its leaves have shapes "
            f"{[leaf.shape for leaf in in_layout.leaves]}): there is nothing to differentiate "
            "with respect to; pass an x with at least one element"
        )
    x_flat, unravel = _ravel(x, in_layout.dtype)
    x_aval = jax.ShapeDtypeStruct((in_layout.n,), in_layout.dtype)
    traced = trace(f, unravel, x_aval)
    out_layout = Layout.from_pytree(traced.out_tree, name="f(x)", check_float=False)
    if out_layout.n == 0:
        raise InputValueError(
            f"f(x) has no elements (its leaves have shapes "
            f"{[leaf.shape for leaf in out_layout.leaves]}): there is nothing to differentiate; "
            "return at least one value from f"
        )
    compile_key = traced.compile_key if cache else None
    key = (
        None
        if compile_key is None
        else (
            compile_key,
            bool(checkpoint),
            in_layout.dtype,
            bool(jax.config.read("jax_enable_x64")),
        )
    )
    program = None
    if key is not None:
        with _CACHE_LOCK:
            program = _CACHE.get(key)
            if program is not None:
                _CACHE.move_to_end(key)
    if program is None:
        program = _Program(traced.jaxpr, checkpoint, in_layout)
        if key is not None:
            with _CACHE_LOCK:
                program = _CACHE.setdefault(key, program)
                while len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
    return Kernels(program, op, traced, in_layout, out_layout), x_flat, unravel


def clear_cache():
    """Forget every cached kernel."""
    with _CACHE_LOCK:
        _CACHE.clear()
