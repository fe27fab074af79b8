"""Sparsity patterns of Jacobians and Hessians, read from the jaxpr.

The pattern is *global*: it holds for every ``x`` of that shape and dtype. It
comes from the linear map itself: the Jacobian's pattern is how the tangent
output of ``jax.jvp(f, (x,), (t,))`` depends on ``t``, the Hessian's how that
of ``jax.jvp(grad f, (x,), (t,))`` (a Hessian-vector product) does. Tracing
the product, not ``f``, follows the derivative rules differentiation really
uses (``custom_jvp``, ``custom_vjp``) and leaves out what depends only on ``x``
(it is a constant of the linear map). The Hessian is the Jacobian of the
gradient: one set of first-order rules serves both, where a second-order
propagation would need a second rule per primitive, and the structure of the
gradient is exactly what the Hessian's columns can be. What ``f`` computes of
its constants alone is split off before differentiating (`_split`): JAX's AD
traces only what depends on ``x``, and the walk reads those constants' values
as it reads its own fold's (computed when a rule first reads one).

Each array of the traced program carries, for each of its elements, the set of
``t``'s entries it depends on: a sparse boolean matrix (elements x n) plus a set
shared by every element (what an FFT or a reduction spreads over a whole
array stays one set, never n copies of it). One rule per primitive:
elementwise ops unite; structural ones (reshape, transpose, slicing, pad,
concatenate, broadcast, gather with known indices) move rows, computed by
applying the primitive itself to arrays of element indices; reductions,
contractions and FFTs unite over the axes they reduce or transform. Control
flow (``cond``, ``while``, ``scan``) unites its branches and iterates its
carry to a fixed point. A primitive without a rule is dense over its operands
(always safe, never smaller than the truth) and logged once, naming it.
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax.extend import core as jcore

from . import _control, _elementwise, _host, _indexing, _reductions, _structural, _windows
from ._elementwise import ELEMENTWISE
from ._indexing import overwrites, settled
from ._pattern import NONE, Context, Dense, Pattern, empty, everything, shape_of, union, where

__all__ = [
    "RULES",
    "WARNED",
    "hessian_pattern",
    "jacobian_pattern",
    "run",
    "tangent_pattern",
    "where",
]

_log = logging.getLogger("diffops")
WARNED: set[str] = set()

#: Every rule, by primitive name: one family a module.
RULES: dict[str, Callable] = {
    **_elementwise.RULES,
    **_structural.RULES,
    **_indexing.RULES,
    **_reductions.RULES,
    **_control.RULES,
    **_windows.RULES,
}

_CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
          "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin")  # fmt: skip


class _Batch:
    """Values computed together when one of them is first read (`_Later`): a
    fold's call, or an equation's evaluation. Most folded values are read by no
    rule (constants of the linear map, used with x); the PSF demo's fold
    compiled 0.16 s beside the products' compile on a first call, for two of
    its values, which numpy computes exactly."""

    __slots__ = ("run", "ins", "outs")

    def __init__(self, run: Callable, ins: list):
        self.run: Callable = run
        self.ins: list = ins
        self.outs: list | None = None

    def value(self, index: int):
        if self.outs is None:
            self.outs = list(self.run(*[resolved(v) for v in self.ins]))
            self.ins = []  # (what it read can go)
        return self.outs[index]


class _FoldBatch(_Batch):
    """A fold's outputs (`_Fold`), each computed when first read by its own
    equations alone: on the host where they are exact (a gradient's seed,
    ``broadcast_in_dim`` of 1.0), else compiled if they are at most a quarter
    of the fold; a second read that needs a compile, or a larger first one,
    computes every output at once (at most 1.25 of the fold compiled: HAIFAM
    read one output made by 637 of its fold's 1,128 equations; compiling those
    before the whole took its detection from 2.5 s to 3.9 s). The PSF
    demo's rules read two seeds of a fold of 10 equations; a dLux model's, 8
    outputs of 12, made by most of its 100."""

    __slots__ = ("fold", "done", "compiled")

    def __init__(self, fold: _Fold, ins: list):
        super().__init__(fold, ins)
        self.fold = fold
        self.done: dict[int, Any] = {}  # the outputs computed alone
        self.compiled = False  # whether one of them needed a compile

    def value(self, index: int):
        if index in self.done:  # (first: a value read once reads the same after)
            return self.done[index]
        if self.outs is not None:
            return self.outs[index]
        ins, call = self.fold.cone(index)
        if isinstance(call, _Fold):  # its own equations need a compile
            if self.compiled or 4 * len(call.batch) > len(self.fold.batch):
                return super().value(index)  # every output at once
            self.compiled = True
        known = dict(zip(self.fold.ins, self.ins, strict=True))
        self.done[index] = call(*[resolved(known[v]) for v in ins])[0]
        return self.done[index]


class _Later:
    """A known value not computed yet: output ``index`` of a `_Batch`."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Batch, index: int):
        self.batch, self.index = batch, index


def resolved(value):
    """``value``, computed if it is a `_Later`."""
    return value.batch.value(value.index) if isinstance(value, _Later) else value


def _later(run: Callable, ins: list, count: int) -> list:
    batch = _FoldBatch(run, ins) if isinstance(run, _Fold) else _Batch(run, ins)
    return [_Later(batch, k) for k in range(count)]


class _Values(list):
    """The known values of an equation's inputs as a rule reads them: each
    computed on reading (rules read few; most never read a fold's outputs)."""

    def __getitem__(self, key):
        item = super().__getitem__(key)
        return [resolved(v) for v in item] if isinstance(key, slice) else resolved(item)

    def __iter__(self):
        return (resolved(v) for v in super().__iter__())


class _Env:
    """Per variable: its pattern, and its value when known without x or t (a
    `_Later` until read)."""

    def __init__(self):
        self.patterns: dict[Any, Pattern] = {}
        self.values: dict[Any, Any] = {}

    def pattern(self, var) -> Pattern:
        if isinstance(var, jcore.Literal):
            return empty(np.shape(var.val))
        return self.patterns.get(var) or empty(shape_of(var))

    def value(self, var):
        if isinstance(var, jcore.Literal):
            return var.val
        return self.values.get(var)


def run(ctx: Context, jaxpr, consts: Sequence, ins: Sequence[Pattern], known: Sequence):
    """The patterns of ``jaxpr``'s outputs given those of its inputs (``known``:
    their values where known, else None)."""
    return _evaluate(ctx, jaxpr, consts, ins, known)[0]


def _evaluate_for_rules(ctx: Context, jaxpr, consts, ins, known):
    """`_evaluate` with the outputs' values computed (rules read them)."""
    patterns, values = _evaluate(ctx, jaxpr, consts, ins, known)
    return patterns, [resolved(v) for v in values]


def _evaluate(ctx: Context, jaxpr, consts: Sequence, ins: Sequence[Pattern], known: Sequence):
    """``(patterns, values)`` of ``jaxpr``'s outputs: `run`, with the values known
    without ``x`` or ``t`` (a nested call's index arithmetic comes back out)."""
    env = _Env()
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env.values[var] = value
    for var, p, value in zip(jaxpr.invars, ins, known, strict=True):
        env.patterns[var] = p
        if value is not None:
            env.values[var] = value
    folded = _fold_ahead(ctx, jaxpr, env)
    for eqn in jaxpr.eqns:
        if id(eqn) in folded:
            continue  # evaluated ahead, with the other constants
        pats = [env.pattern(v) for v in eqn.invars]
        vals = [env.value(v) for v in eqn.invars]
        depends = any(p.depends for p in pats)
        if not depends and all(v is not None for v in vals) and overwrites(eqn):
            vals = [resolved(v) for v in vals]
            if settled(eqn, vals):  # each element written once: its value is known
                env.values[eqn.outvars[0]] = eqn.primitive.bind(*vals, **eqn.params)
            continue
        if not depends and all(v is not None for v in vals) and _foldable(eqn):
            outs = _later(functools.partial(_bind_values, eqn), vals, len(eqn.outvars))
            for var, value in zip(eqn.outvars, outs, strict=True):
                env.values[var] = value
            continue
        called = (
            _call(ctx, eqn, pats, vals) if depends or any(v is not None for v in vals) else None
        )
        if called is not None:  # a call: patterns, and what it computes of known values
            for var, p, value in zip(eqn.outvars, *called, strict=True):
                env.patterns[var] = p
                if value is not None:
                    env.values[var] = value
            continue
        if not depends:
            continue  # a function of x alone: a constant of the linear map
        try:
            outs = _rule(ctx, eqn, pats, _Values(vals))
        except Dense as err:
            if err.args:  # said where already, deeper in
                raise
            raise Dense(
                f"the pattern of {eqn.primitive.name} at {where(eqn)} would hold more than "
                f"{ctx.budget:,} entries{_lost(ctx)}"
            ) from None
        for var, p in zip(eqn.outvars, outs, strict=True):
            env.patterns[var] = p
    return [env.pattern(v) for v in jaxpr.outvars], [env.value(v) for v in jaxpr.outvars]


#: Equations folded ahead in one compiled call at least (fewer: one by one).
_FOLD_AHEAD = 4

#: Folds whose every value is at most this size, and whose equations repeat
#: (``_REPEATS`` a kind at least), run op by op (XLA's compile of
#: thousands of scalar equations costs seconds; each primitive's cached kernel, microseconds).
_FOLD_EAGER = 64
#: (each kind compiles once, 35 ms; DIXMAANA1's 23 kinds in 30 equations took
#: 0.8 s so, against one compile of them all)
_REPEATS = 8


def _fold_ahead(ctx: Context, jaxpr, env: _Env) -> set[int]:
    """Evaluate in one compiled call every equation whose inputs are all known
    before the walk (constants and what they compute: coordinates, masks, a
    basis, index arithmetic), and put the values used elsewhere in ``env``;
    the ids of the equations folded. One by one, each primitive of a dLux model
    compiled on its own: 2.9 s of its 4 s detection. Evaluated as the products'
    compiled kernel evaluates them (fused), not op by op."""
    known = {v for v in env.values if not env.pattern(v).depends}
    key = (id(jaxpr), frozenset(id(v) for v in known))
    plan = ctx.folds.get(key)
    if plan is None:  # the jaxpr kept with its plan: its id stays its own
        plan = ctx.folds[key] = (jaxpr, *_fold_plan(jaxpr, known))
    _, ids, ins, outs, run = plan
    if run is not None:  # computed when a rule first reads one of them (`_Later`)
        values = _later(run, [env.values[v] for v in ins], len(outs))
        env.values.update(zip(outs, values, strict=True))
    return ids


def _fold_plan(jaxpr, known: set):
    """``(ids of the equations folded, their inputs, the outputs used elsewhere,
    their call or None)`` (`_program`)."""
    batch = []
    for eqn in jaxpr.eqns:
        if all(isinstance(v, jcore.Literal) or v in known for v in eqn.invars) and (
            _foldable(eqn) and not eqn.effects
        ):
            batch.append(eqn)
            known.update(eqn.outvars)
    if len(batch) < _FOLD_AHEAD:
        return set(), [], [], None
    made = {v for eqn in batch for v in eqn.outvars}
    ids = {id(eqn) for eqn in batch}
    used = [v for eqn in jaxpr.eqns if id(eqn) not in ids for v in eqn.invars] + list(jaxpr.outvars)
    outs = list(dict.fromkeys(v for v in used if not isinstance(v, jcore.Literal) and v in made))
    ins = list(dict.fromkeys(v for eqn in batch for v in eqn.invars
                             if not isinstance(v, jcore.Literal) and v not in made))  # fmt: skip
    if not outs:
        return ids, ins, outs, None
    return ids, ins, outs, _program(batch, ins, outs)


def _program(batch: list, ins: list, outs: list) -> Callable:
    """``batch``'s ``outs`` from its ``ins``: on the host or op by op where that
    is exact or cheap, else a `_Fold` (one compiled call)."""
    if all(_exact(eqn) for eqn in batch) or (
        max(_size(v) for eqn in batch for v in eqn.outvars) <= _FOLD_EAGER
        and len(batch) >= _REPEATS * len({_kind(eqn) for eqn in batch})
    ):
        return functools.partial(_one_by_one, batch, ins, outs)
    return _Fold(batch, ins, outs)


def _debug_info(what: str, ins: list, outs: list):
    """The debug info of a jaxpr detection builds (``what`` it computes)."""
    return jcore.DebugInfo("sparsity detection", what, tuple(f"in{i}" for i in range(len(ins))),
                           tuple(f"out{i}" for i in range(len(outs))))  # fmt: skip


class _Fold:
    """A fold's compiled call of every output (compiled on its first call), and
    of any one output's own equations (`cone`)."""

    def __init__(self, batch: list, ins: list, outs: list):
        self.batch, self.ins, self.outs = batch, ins, outs
        self.cones: dict[int, tuple] = {}
        self.jitted: Callable | None = None

    def __call__(self, *values):
        if self.jitted is None:
            info = _debug_info("the constants of a traced product", self.ins, self.outs)
            jaxpr = jcore.Jaxpr([], self.ins, self.outs, self.batch, debug_info=info)
            self.jitted = jax.jit(jcore.jaxpr_as_fun(jcore.ClosedJaxpr(jaxpr, [])))
        return self.jitted(*values)

    def cone(self, index: int) -> tuple[list, Callable]:
        """``(inputs, call)`` of output ``index`` alone: the equations it needs."""
        if index not in self.cones:
            need, eqns = {self.outs[index]}, []
            for eqn in reversed(self.batch):
                if any(v in need for v in eqn.outvars):
                    eqns.append(eqn)
                    need.update(v for v in eqn.invars if not isinstance(v, jcore.Literal))
            eqns.reverse()
            ins = [v for v in self.ins if v in need]
            self.cones[index] = ins, _program(eqns, ins, [self.outs[index]])
        return self.cones[index]


def _bind(eqn, vals: list) -> list:
    """The outputs of an equation whose inputs are all known: by numpy where
    that is XLA's result bit for bit (`_host`: nothing compiled), else by the
    primitive (each primitive and shape compiles once)."""
    if _host.exact(eqn):
        outs = _host.evaluate(eqn, vals)
        if outs is not None:  # (None: a scatter whose mode decides)
            return outs
    elif _exact(eqn):  # a call of host equations (``jnp.where``): walked into
        inner, consts = _sub_jaxpr(eqn.params)
        return _one_by_one(inner.eqns, [*inner.constvars, *inner.invars], inner.outvars,
                           *consts, *vals)  # fmt: skip
    else:  # float arithmetic as XLA evaluates it on its own, where numpy's is that
        outs = _host.one_op(eqn, vals)
        if outs is not None:
            return outs
    outs = eqn.primitive.bind(*vals, **eqn.params)
    return outs if eqn.primitive.multiple_results else [outs]


#: Whether a called jaxpr is host equations only, per jaxpr while it lives.
_HOST_ONLY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _per_jaxpr(cache: weakref.WeakKeyDictionary, jaxpr, compute: Callable) -> bool:
    """``compute(jaxpr)``, once per jaxpr while it lives (a model's thousands of
    nested calls are looked into once)."""
    found = cache.get(jaxpr)
    if found is None:
        found = cache[jaxpr] = compute(jaxpr)
    return found


def _exact(eqn) -> bool:
    """Whether the host evaluates ``eqn`` exactly (`_host.exact`), or it is a call
    of such equations alone (VANDANMSLS's 880 ``jnp.where`` calls, 25 µs
    each as compiled calls)."""
    if _host.exact(eqn):
        return True
    if eqn.primitive.name not in _FOLDED_CALLS:
        return False
    inner = _sub_jaxpr(eqn.params)[0]
    if inner is None:
        return False
    return _per_jaxpr(_HOST_ONLY, inner, lambda j: all(_exact(e) for e in j.eqns))


def _bind_values(eqn, *values) -> list:
    return _bind(eqn, list(values))


def _one_by_one(batch: list, ins: list, outs: list, *values) -> list:
    """A fold evaluated one equation after another (`_bind`)."""
    env = dict(zip(ins, values, strict=True))
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    for eqn in batch:
        env.update(zip(eqn.outvars, _bind(eqn, [read(v) for v in eqn.invars]), strict=True))
    return [read(v) for v in outs]


def _kind(eqn) -> tuple:
    """What an equation evaluated on its own compiles for (each kind once)."""
    called = _sub_jaxpr(eqn.params)[0]
    avals = tuple((shape_of(v), str(v.aval.dtype)) for v in (*eqn.invars, *eqn.outvars))
    return eqn.primitive.name, id(called), avals


def _size(v) -> int:
    return int(np.prod(getattr(v.aval, "shape", ()), dtype=np.int64))


def _lost(ctx: Context) -> str:
    """Where detection already gave up on structure before, if it did."""
    if not ctx.lost:
        return ""
    return f", after {ctx.lost[0]}" + (
        f" and {len(ctx.lost) - 1} more" if len(ctx.lost) > 1 else ""
    )


def _call(ctx: Context, eqn, pats: list[Pattern], vals: list):
    """``(patterns, values)`` of a call's outputs (its jaxpr walked into), or
    None when ``eqn`` is not a call with a jaxpr."""
    if eqn.primitive.name == "scan":  # a loop whose steps' known values come out
        return _control.scan(ctx, eqn, pats, _Values(vals))
    valued = _reductions.VALUED.get(eqn.primitive.name)
    if valued is not None:  # a rule whose outputs' known values come out too
        return valued(ctx, eqn, pats, _Values(vals), [shape_of(v) for v in eqn.outvars])
    if eqn.primitive.name not in _CALLS:
        return None
    jaxpr, consts = _sub_jaxpr(eqn.params)
    if jaxpr is None:
        return None
    ins = pats[-len(jaxpr.invars) :] if len(pats) > len(jaxpr.invars) else pats
    known = vals[-len(jaxpr.invars) :] if len(vals) > len(jaxpr.invars) else vals
    return _evaluate(ctx, jaxpr, consts, ins, known)


#: Calls evaluated when every input is known without ``x`` or ``t``: the
#: index arithmetic jnp's helpers wrap in a nested jit (``jnp.take``'s
#: normalisation of negative indices, ``jnp.where``) stays known, and the gather
#: that uses it is exact. What they compute ``f`` computes anyway.
_FOLDED_CALLS = ("pjit", "jit", "closed_call", "core_call")


def _foldable(eqn) -> bool:
    """Whether to evaluate an equation whose inputs are all known: what indices
    and shapes are made of (small), not loops (which may be long) or callbacks,
    nor a ``scatter`` that may write one element twice (or a call holding one):
    which write wins is the backend's to choose, so its value is not known
    here (`_indexing.settled` evaluates one that writes each element once)."""
    name = eqn.primitive.name
    if name in _CALLS and name not in _FOLDED_CALLS:
        return False
    if name in ("while", "scan", "cond") or "callback" in name or overwrites(eqn):
        return False
    if name in _FOLDED_CALLS and _holds_overwrite(_sub_jaxpr(eqn.params)[0]):
        return False
    return sum(_size(v) for v in eqn.outvars) <= 1 << 24


#: Whether a called jaxpr holds a `scatter` that may write an element twice, per
#: jaxpr while it lives.
_OVERWRITES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _holds_overwrite(jaxpr) -> bool:
    if jaxpr is None:
        return False
    return _per_jaxpr(_OVERWRITES, jaxpr, lambda j: any(
        overwrites(e) or (e.primitive.name in _CALLS and _holds_overwrite(_sub_jaxpr(e.params)[0]))
        for e in j.eqns))  # fmt: skip


def _sub_jaxpr(params: dict):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in params:
            value = params[key]
            if hasattr(value, "consts"):  # a ClosedJaxpr (which has eqns too): its consts
                return value.jaxpr, value.consts
            return value, ()
    return None, ()


def _rule(ctx: Context, eqn, pats: list[Pattern], vals: list) -> list[Pattern]:
    name = eqn.primitive.name
    outs = [shape_of(v) for v in eqn.outvars]
    rule = RULES.get(name)
    if rule is not None:
        return rule(ctx, eqn, pats, vals, outs)
    if name in ELEMENTWISE or _all_same_shape(eqn):
        return [union(ctx, pats, shape) for shape in outs]
    ctx.lost.append(f"{name} at {where(eqn)} (no rule: dense over its operands)")
    if name not in WARNED:
        WARNED.add(name)
        _log.warning(
            "sparsity: no rule for the primitive %r; its outputs are taken to depend on "
            "everything its operands depend on (safe, possibly denser than the truth)",
            name,
        )
    return [everything(ctx, pats, shape) for shape in outs]


def _all_same_shape(eqn) -> bool:
    """An elementwise op by shape: one output, every operand its shape or a scalar."""
    if len(eqn.outvars) != 1:
        return False
    out = shape_of(eqn.outvars[0])
    return eqn.primitive.name in ELEMENTWISE and all(shape_of(v) in (out, ()) for v in eqn.invars)


def default_budget(n: int) -> int:
    """The entries any one array's pattern may hold before the matrix is taken as
    dense: 64 a row and 2²⁰ more, or up to 2²⁵ (about 200 MB of pattern) while
    that is under an eighth of n² (a 9x9 stencil's 81 a row at n = 65,536)."""
    return max(64 * n + (1 << 20), min(n * n // 8, 1 << 25))


def tangent_pattern(product: Callable, x_flat, budget: int | None = None,
                    known: tuple = ((), ())) -> sp.csr_array:  # fmt: skip
    """The (m x n) pattern of the linear map ``t -> product(x, t, *c)`` (flat
    arrays), valid for every ``x`` of ``x_flat``'s shape and dtype; ``known``:
    the abstract values of ``c`` and their values (each may be a `_Later`).

    **Raises:** `Dense` when the pattern is found (nearly) dense on the way.
    """
    n = int(np.size(x_flat))
    aval = jax.ShapeDtypeStruct(np.shape(x_flat), jnp.result_type(x_flat))
    closed = jax.make_jaxpr(product)(aval, aval, *known[0])
    # what any one array's pattern may hold before the matrix is taken as dense
    ctx = Context(n, budget if budget is not None else default_budget(n), _evaluate_for_rules)
    eye = sp.csr_array(sp.identity(n, dtype=bool, format="csr"))
    ins = [empty(np.shape(x_flat)), Pattern((n,), eye, NONE)]
    ins += [empty(a.shape) for a in known[0]]
    (out,) = run(ctx, closed.jaxpr, closed.consts, ins, [None, None, *known[1]])
    try:
        matrix = out.matrix(n, ctx.budget)
    except Dense:
        raise Dense(f"the matrix's pattern would hold more than {ctx.budget:,} entries"
                    f"{_lost(ctx)}") from None  # fmt: skip
    if ctx.lost and matrix.nnz > 0.5 * matrix.shape[0] * matrix.shape[1]:
        # more than half full because detection gave up somewhere: say where
        raise Dense(f"the matrix's pattern is more than half full{_lost(ctx)}")
    return matrix


def _split(f_flat: Callable, x_flat, program: tuple | None) -> tuple[Callable, tuple]:
    """``f_flat`` as ``(g, known)``: ``g(z, *c)`` computes what depends on ``z``
    from ``c``, the values ``f_flat`` computes of its constants alone (``known``:
    their abstract values, and each computed when a rule first reads it, as the
    walk's own fold computes them). Differentiating ``g``, JAX traces only the
    equations that depend on ``x``: VANDANMSLS's objective has 8,175 equations,
    895 of them on ``x``; the rest make constants of its data (B-spline
    coefficients), which its Hessian-vector product traced forward, linearised
    and transposed. ``program``: ``f_flat`` traced already, as ``(closed jaxpr
    of its output's leaves, the function making them f_flat's output)``
    (re-tracing VANDANMSLS's program took 0.4 s)."""
    if program is None:
        aval = jax.ShapeDtypeStruct(np.shape(x_flat), jnp.result_type(x_flat))
        program = (jax.make_jaxpr(f_flat)(aval), lambda outs: outs[0])
    closed, post = program
    jaxpr = closed.jaxpr
    ids, ins, outs, run_fold = _fold_plan(jaxpr, set(jaxpr.constvars))
    given = dict(zip(jaxpr.constvars, closed.consts, strict=True))
    values = _later(run_fold, [given[v] for v in ins], len(outs)) if outs else []
    invars = [*jaxpr.invars, *outs]
    info = _debug_info("what depends on x", invars, jaxpr.outvars)
    rest = jcore.Jaxpr(jaxpr.constvars, invars, jaxpr.outvars,
                       [eqn for eqn in jaxpr.eqns if id(eqn) not in ids],
                       jaxpr.effects, debug_info=info)  # fmt: skip
    g = jcore.jaxpr_as_fun(jcore.ClosedJaxpr(rest, closed.consts))
    avals = tuple(jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype,
                                       weak_type=getattr(v.aval, "weak_type", False))
                  for v in outs)  # fmt: skip
    return (lambda z, *c: post(g(z, *c))), (avals, tuple(values))


def jacobian_pattern(f_flat: Callable, x_flat, budget: int | None = None,
                     program: tuple | None = None) -> sp.csr_array:  # fmt: skip
    """The pattern of the Jacobian of ``f_flat`` (flat in, flat out; ``program``:
    it traced already, see `_split`)."""
    g, known = _split(f_flat, x_flat, program)
    product = lambda x, t, *c: jax.jvp(lambda z: g(z, *c), (x,), (t,))[1]
    return tangent_pattern(product, x_flat, budget, known)


def hessian_pattern(f_flat: Callable, x_flat, budget: int | None = None,
                    program: tuple | None = None) -> sp.csr_array:  # fmt: skip
    """The pattern of the Hessian of scalar ``f_flat``: the Jacobian's of its
    gradient (``program``: as `jacobian_pattern`'s)."""
    g, known = _split(f_flat, x_flat, program)
    grad = jax.grad(lambda z, *c: g(z, *c).reshape(()))
    product = lambda x, t, *c: jax.jvp(lambda z: grad(z, *c), (x,), (t,))[1]
    return tangent_pattern(product, x_flat, budget, known)
