"""Control flow: ``cond`` unites its branches (or walks the one a known index
takes); ``while`` and long ``scan`` iterate their carry to a fixed point (the
condition only decides how often: any number of times), a scan with every
step on its own slice of the xs; a short scan walks its steps one after
another. Their bodies are interpreted by ``ctx.run`` (``ctx.evaluate``: with
known values)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.extend import core as jcore

from ._pattern import (
    Pattern,
    empty,
    everything,
    group,
    indices,
    shape_of,
    stacked,
    take,
    union,
    where,
)

__all__ = ["RULES", "scan"]


def _cond(ctx, eqn, pats, vals, outs):
    """Every branch united, or the one a known index picks (clamped, as XLA does)."""
    branches = eqn.params["branches"]
    if vals[0] is not None and np.size(vals[0]) == 1:
        branches = [branches[int(np.clip(np.asarray(vals[0]).item(), 0, len(branches) - 1))]]
    results = [ctx.run(b.jaxpr, b.consts, pats[1:], vals[1:]) for b in branches]
    return [union(ctx, [r[i] for r in results] + [everything(ctx, [pats[0]], outs[i])], outs[i])
            for i in range(len(outs))]  # fmt: skip


def _while(ctx, eqn, pats, vals, outs):
    body = eqn.params["body_jaxpr"]  # the condition only decides how often: any number
    nb, nc = eqn.params["body_nconsts"], eqn.params["cond_nconsts"]
    consts, carry = pats[nc : nc + nb], list(pats[nc + nb :])
    known = [None] * len(carry)
    for _ in range(64):
        new = ctx.run(body.jaxpr, body.consts, consts + carry, vals[nc : nc + nb] + known)
        merged = [union(ctx, [a, b], a.shape) for a, b in zip(carry, new, strict=True)]
        if all(same(a, b) for a, b in zip(carry, merged, strict=True)):
            return merged
        carry = merged
    return [everything(ctx, pats, o) for o in outs]


#: Elements of the largest array of a scan's body vmapped over its steps up to
#: which the steps are read apart (every step's carry is an array of its own).
_STEPWISE_ELEMENTS = 1 << 22


def _largest(jaxpr) -> int:
    sizes = [int(np.prod(shape_of(v), dtype=np.int64)) for e in jaxpr.eqns for v in e.outvars]
    return max(sizes, default=0)


def _stepwise(eqn):
    """The scan's body vmapped over its steps (consts shared, carry and xs
    batched): one jaxpr whose equations see every step at once, so each step's
    outputs depend on its own slice of xs only."""
    params = eqn.params
    nconsts, ncarry, length = params["num_consts"], params["num_carry"], params["length"]
    run = jcore.jaxpr_as_fun(params["jaxpr"])
    avals = []
    for k, var in enumerate(eqn.invars):
        shape = tuple(var.aval.shape)
        if nconsts <= k < nconsts + ncarry:  # a carry: one per step
            shape = (length, *shape)
        avals.append(jax.ShapeDtypeStruct(shape, var.aval.dtype))
    axes = [None] * nconsts + [0] * (len(avals) - nconsts)
    return jax.make_jaxpr(jax.vmap(lambda *a: run(*a), in_axes=axes))(*avals)


def scan(ctx, eqn, pats, vals):
    """``(patterns, values)`` of a scan's outputs. A pattern is a union over the
    inputs, so two parts are found apart and united:

    - every step at once, each on its own slice of the xs (the body vmapped),
      from the consts and the xs, the carry in depending on nothing: each
      step's ys, and what it adds to the carry (indices and values computed
      from known xs stay known, so a gather or a scatter by them is exact);
    - one step from the carry alone, iterated to a fixed point with those
      additions: the carry out, and what the ys take from it (every step).
    """
    nconsts, ncarry = eqn.params["num_consts"], eqn.params["num_carry"]
    length = eqn.params["length"]
    consts, carry = pats[:nconsts], list(pats[nconsts : nconsts + ncarry])
    xs = pats[nconsts + ncarry :]
    body = eqn.params["jaxpr"]
    if ncarry and 0 < length <= _UNROLLED_STEPS:
        return _unrolled(ctx, eqn, pats, vals)
    stepwise = _stepwise(eqn)
    if _largest(stepwise.jaxpr) <= _STEPWISE_ELEMENTS:
        known = list(vals[:nconsts]) + [None] * ncarry + list(vals[nconsts + ncarry :])
        none = [empty((length, *c.shape)) for c in carry]
        steps, values = ctx.evaluate(stepwise.jaxpr, stepwise.consts, consts + none + xs, known)
        added = [_over_steps(ctx, p) for p in steps[:ncarry]]
    else:  # every step's arrays at once would be too many: each step sees every slice
        united = [_over_steps(ctx, p) for p in xs]
        none = [empty(c.shape) for c in carry]
        ctx.lost.append(f"scan at {where(eqn)} ({length} steps, too many to read apart: "
                        "every step sees every slice of its xs)")  # fmt: skip
        known = list(vals[:nconsts]) + [None] * (ncarry + len(xs))
        found = ctx.run(body.jaxpr, body.consts, consts + none + united, known)
        added = found[:ncarry]
        steps = found[:ncarry] + [_each_step(ctx, q, length) for q in found[ncarry:]]
        values = [None] * len(found)
    quiet = [empty(p.shape) for p in consts] + [None] * ncarry + [empty(p.shape[1:]) for p in xs]
    for _ in range(64):
        ins = quiet[:nconsts] + carry + quiet[nconsts + ncarry :]
        unknown = [None] * (len(ins) - nconsts)
        through = ctx.run(body.jaxpr, body.consts, ins, list(vals[:nconsts]) + unknown)
        merged = [union(ctx, [a, b, c], a.shape)
                  for a, b, c in zip(carry, added, through[:ncarry], strict=True)]  # fmt: skip
        if all(same(a, b) for a, b in zip(carry, merged, strict=True)):
            ys = [union(ctx, [p, _each_step(ctx, q, length)], p.shape)
                  for p, q in zip(steps[ncarry:], through[ncarry:], strict=True)]  # fmt: skip
            return merged + ys, [None] * ncarry + values[ncarry:]
        carry = merged
    outs = [shape_of(v) for v in eqn.outvars]
    return [everything(ctx, pats, o) for o in outs], [None] * len(outs)


#: Scans with a carry of at most this many steps are walked step by step: each
#: step's carry is its own (a fixed point unites every step's: a carry shifted
#: twice depended on every element, not on one).
_UNROLLED_STEPS = 64


def _unrolled(ctx, eqn, pats, vals):
    """``(patterns, values)`` of a short scan, one step after another."""
    nconsts, ncarry = eqn.params["num_consts"], eqn.params["num_carry"]
    length, body = eqn.params["length"], eqn.params["jaxpr"]
    consts, carry = pats[:nconsts], list(pats[nconsts : nconsts + ncarry])
    known = list(vals[nconsts : nconsts + ncarry])
    xs, xs_vals = pats[nconsts + ncarry :], vals[nconsts + ncarry :]
    ys, ys_vals = [], []
    reverse = eqn.params.get("reverse", False)
    for t in reversed(range(length)) if reverse else range(length):
        step = [take(ctx, p, indices(p.shape)[t]) for p in xs]
        step_vals = [None if v is None else v[t] for v in xs_vals]
        found, values = ctx.evaluate(body.jaxpr, body.consts, consts + carry + step,
                                     list(vals[:nconsts]) + known + step_vals)  # fmt: skip
        carry, known = list(found[:ncarry]), list(values[:ncarry])
        ys.append(found[ncarry:])
        ys_vals.append(values[ncarry:])
    if reverse:  # the steps ran last to first; their ys stand first to last
        ys, ys_vals = ys[::-1], ys_vals[::-1]
    stacked = [_stack(ctx, [y[k] for y in ys]) for k in range(len(ys[0]))]
    stacked_vals = [
        None if any(v[k] is None for v in ys_vals) else np.stack([v[k] for v in ys_vals])
        for k in range(len(stacked))
    ]
    return carry + stacked, known + stacked_vals


def _stack(ctx, parts: list[Pattern]) -> Pattern:
    """The steps' patterns as one ``(steps, *shape)``: what all share stays common."""
    whole = stacked(ctx, parts)
    return ctx.check(Pattern((len(parts), *parts[0].shape), whole.rows, whole.common))


def _each_step(ctx, p: Pattern, length: int) -> Pattern:
    """A pattern given to every step: ``(length, *shape)``."""
    idx = np.broadcast_to(indices(p.shape), (length, *p.shape))
    return take(ctx, p, idx)


def _over_steps(ctx, p: Pattern) -> Pattern:
    """Every step's part, united over the steps: ``shape``."""
    inner = p.shape[1:]
    return group(ctx, p, np.broadcast_to(indices(inner), p.shape), inner)


def same(a: Pattern, b: Pattern) -> bool:
    if not np.array_equal(a.common, b.common):
        return False
    if (a.rows is None) != (b.rows is None):
        return False
    return a.rows is None or (a.rows != b.rows).nnz == 0


RULES: dict[str, Callable] = {"cond": _cond, "while": _while}
