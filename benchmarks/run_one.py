"""Run one benchmark configuration in this (fresh) process; print one JSON line.

    python benchmarks/run_one.py '{"problem": "mlp", "impl": "diffops", "op": "hessian",
                                    "kwargs": {"nbatches": 128}, "repeats": 3}'

impl: ``diffops`` (diffops_core), ``zodiax`` (zodiax.diffops), ``jax`` (a jitted
jax.hessian / jax.jacrev on the flat input, compiled by the first call).
Times: the first call (compiles included) and the median of ``repeats`` steady
calls, each on a new x (x scaled by 1 + 1e-3 k), results blocked until ready.
Memory: RSS before the first call and the process's peak RSS at the end.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import psutil
from jax.flatten_util import ravel_pytree

from diffops_core.internal import peak_rss as _peak_rss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from problems import PROBLEMS


def make_call(impl, op, f, kwargs):
    if impl == "diffops":
        import diffops_core as dc

        fn = dc.hessian if op == "hessian" else dc.jacobian
        return lambda x: fn(f, x, **kwargs)[0]
    if impl == "sparse":  # compressed products: a scipy sparse result
        import diffops_core as dc

        fn = dc.sparse_hessian if op == "hessian" else dc.sparse_jacobian
        return lambda x: fn(f, x, **kwargs)[0]
    if impl == "zodiax":
        import zodiax

        fn = zodiax.diffops.hessian if op == "hessian" else zodiax.diffops.jacobian
        return lambda x: fn(f, x, **kwargs)[0]
    if impl == "jax":
        transform = {"hessian": jax.hessian, "jacrev": jax.jacrev, "jacfwd": jax.jacfwd}[op]
        compiled = {}

        def call(x):
            x_flat, unravel = ravel_pytree(x)
            if "fn" not in compiled:
                compiled["fn"] = jax.jit(transform(lambda z: f(unravel(z))))
            return compiled["fn"](x_flat)

        return call
    raise ValueError(impl)


def main(config: dict) -> dict:
    f, x, _ = PROBLEMS[config["problem"]]()
    x = jax.tree_util.tree_map(jnp.asarray, x)
    call = make_call(config["impl"], config.get("op", "hessian"), f, config.get("kwargs", {}))
    xs = [
        jax.tree_util.tree_map(lambda v, k=k: v * (1 + 1e-3 * k), x)
        for k in range(config.get("repeats", 3) + 1)
    ]
    jax.block_until_ready(xs)
    rss0 = psutil.Process().memory_info().rss
    t = time.perf_counter()
    jax.block_until_ready(call(xs[0]))
    first = time.perf_counter() - t
    times = []
    for xk in xs[1:]:
        t = time.perf_counter()
        out = jax.block_until_ready(call(xk))
        times.append(time.perf_counter() - t)
        del out
    peak = _peak_rss()
    sizing = {}
    if config["impl"] == "diffops":
        import diffops_core.internal as dci

        kw = dict(config.get("kwargs", {}))
        kw.pop("sparsity", None)  # the blocking only
        op = "hessian" if config.get("op", "hessian") == "hessian" else None
        kernels, _, _ = dci.get_kernels(f, x, op or "jacfwd")
        if op is None:
            kernels = kernels.for_op(
                dci.jacobian_op(kw.pop("mode", "auto"), kernels.spec.n, kernels.spec.m)
            )
        chosen = dci.choose_sizing(kernels, **kw)
        sizing = {"block_size": chosen.block_size, "inner_width": chosen.inner_width}
    if config.get("trace"):
        # per-call identity cost: trace f to a jaxpr (+ its structure digest), the
        # part of every call that zodiax-style caching on f's identity skipped;
        # and the pipeline's digest of every constant's bytes
        import diffops_core.internal as dci

        op = config.get("op", "hessian")
        op = op if op in ("hessian", "jacrev", "jacfwd") else "jacfwd"
        tt, it = [], []
        for _ in range(20):
            t = time.perf_counter()
            kernels = dci.get_kernels(f, x, "hessian" if op == "hessian" else "jacfwd")[0]
            tt.append(time.perf_counter() - t)
            t = time.perf_counter()
            kernels.traced.identity()
            it.append(time.perf_counter() - t)
        sizing.update(trace_s=statistics.median(tt), identity_s=statistics.median(it))
    return {
        **config,
        **sizing,
        "first_s": first,
        "median_s": statistics.median(times),
        "times_s": times,
        "rss_before": rss0,
        "peak_rss": peak,
        "peak_increase": peak - rss0,
        "device": str(jax.devices()[0].device_kind),
    }


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
