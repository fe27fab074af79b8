"""Control flow: ``cond`` unites its branches; ``while`` and ``scan`` iterate
their carry to a fixed point (the condition only decides how often: any
number of times). Their bodies are interpreted by ``ctx.run``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._pattern import Pattern, everything, group, indices, take, union

__all__ = ["RULES"]


def _cond(ctx, eqn, pats, vals, outs):
    branches = eqn.params["branches"]
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


def _scan(ctx, eqn, pats, vals, outs):
    jaxpr = eqn.params["jaxpr"]
    nconsts, ncarry = eqn.params["num_consts"], eqn.params["num_carry"]
    consts, carry = pats[:nconsts], list(pats[nconsts : nconsts + ncarry])
    xs = pats[nconsts + ncarry :]
    # every iteration may see any slice: unite each xs over the scanned axis
    sliced = []
    for p in xs:
        inner = p.shape[1:]
        groups = np.broadcast_to(indices(inner), p.shape)
        sliced.append(group(ctx, p, groups, inner))
    known = vals[:nconsts] + [None] * (ncarry + len(xs))
    ys = []
    for _ in range(64):
        new = ctx.run(jaxpr.jaxpr, jaxpr.consts, consts + carry + sliced, known)
        merged = [union(ctx, [a, b], a.shape) for a, b in zip(carry, new[:ncarry], strict=True)]
        ys = new[ncarry:]
        if all(same(a, b) for a, b in zip(carry, merged, strict=True)):
            break
        carry = merged
    else:
        return [everything(ctx, pats, o) for o in outs]
    stacked = []
    for p, shape in zip(ys, outs[ncarry:], strict=True):
        stacked.append(take(ctx, p, np.broadcast_to(indices(p.shape), shape)))
    return merged + stacked


def same(a: Pattern, b: Pattern) -> bool:
    if not np.array_equal(a.common, b.common):
        return False
    if (a.rows is None) != (b.rows is None):
        return False
    return a.rows is None or (a.rows != b.rows).nnz == 0


RULES: dict[str, Callable] = {"cond": _cond, "while": _while, "scan": _scan}
