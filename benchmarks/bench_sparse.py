"""Sparse Hessians from compressed products (issue 18): the PSF demo (n = 4120,
an arrowhead: 24 globals beside a 64x64 flat field) with ``sparse_hessian``
against our dense path, zodiax (nbatches 16) and ``jax.hessian``, each in a
fresh process (first call, median of steady calls on new x, peak RSS by
VmHWM); then the sparse call's stages, measured in this process.

    python benchmarks/bench_sparse.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import numpy as np
from report import mb, run_fresh, write_section


def _row(*cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _stages(repeats: int) -> list[str]:
    """Detection and colouring (first call), then per steady call: products,
    recovery and check, measured around the library's own steps."""
    import diffops_core as dc
    from diffops_core import _sparse
    from problems import PROBLEMS

    f, x, _ = PROBLEMS["psf"]()
    x = jax.tree_util.tree_map(np.asarray, x)
    found = dc.hessian_sparsity(f, x)
    spent = {"products": [], "recovery": [], "check": []}
    originals = {
        "products": _sparse._compressed, "recovery": _sparse.recover_star, "check": _sparse._check,
    }  # fmt: skip

    def timed(name):
        def run(*args, **kwargs):
            t = time.perf_counter()
            out = originals[name](*args, **kwargs)
            spent[name].append(time.perf_counter() - t)
            return out

        return run

    _sparse._compressed, _sparse.recover_star, _sparse._check = (
        timed("products"), timed("recovery"), timed("check"),
    )  # fmt: skip
    try:
        dc.sparse_hessian(f, x)  # compiles
        for name in spent:
            spent[name].clear()
        for _ in range(repeats):
            dc.sparse_hessian(f, x)
    finally:
        _sparse._compressed, _sparse.recover_star, _sparse._check = (
            originals["products"], originals["recovery"], originals["check"],
        )  # fmt: skip
    ms = {k: 1000 * statistics.median(v) for k, v in spent.items()}
    return [
        _row(
            "n, nnz, colours",
            f"{found.shape[0]}, {found.nnz:,} ({found.nnz / found.shape[0] ** 2:.1%}), "
            f"{found.ncolors} products instead of {found.shape[0]}",
        ),
        _row(
            "detection (first call; cached on the computation)",
            f"{1000 * found.seconds['detection']:.0f} ms",
        ),
        _row("star colouring (first call; cached)", f"{1000 * found.seconds['coloring']:.0f} ms"),
        _row("products (steady, median)", f"{ms['products']:.1f} ms"),
        _row("recovery (steady)", f"{ms['recovery']:.1f} ms"),
        _row("check: two products of random vectors (steady)", f"{ms['check']:.1f} ms"),
    ]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    configs = [
        ("sparse_hessian (compressed)", {"impl": "sparse", "kwargs": {}}),
        ("diffops hessian, nbatches 16 (dense)", {"impl": "diffops", "kwargs": {"nbatches": 16}}),
        ("zodiax hessian, nbatches 16", {"impl": "zodiax", "kwargs": {"nbatches": 16}}),
        ("jax.hessian (jit)", {"impl": "jax", "kwargs": {}}),
    ]
    results = []
    for name, cfg in configs:
        res = run_fresh({"problem": "psf", "op": "hessian", "repeats": args.repeats, **cfg})
        print(name, res.get("first_s"), res.get("median_s"), res.get("error"), file=sys.stderr)
        results.append((name, res))
    sparse = results[0][1]["median_s"]
    lines = [
        _row("call", "first s", "steady s (median)", "vs sparse", "peak RSS increase MB"),
        _row(*["---"] * 5),
    ]
    for name, res in results:
        lines.append(_row(name, f"{res['first_s']:.2f}", f"{res['median_s']:.3f}",
                          f"{res['median_s'] / sparse:.1f}x", mb(res["peak_increase"])))  # fmt: skip
    stages = [_row("stage", "time"), _row("---", "---"), *_stages(args.repeats)]
    body = (
        "### Sparse Hessian of the PSF demo (n = 4120): compressed products vs dense\n\n"
        f"Each call in a fresh process: the first call, then the median of {args.repeats} steady "
        "calls on new x (peak RSS by VmHWM, less the RSS before the first call). The sparse "
        "result is a scipy CSR matrix, checked against two products of random vectors.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(stages)
    )
    write_section("sparse-psf", body, f"python benchmarks/bench_sparse.py --repeats {args.repeats}")
    print(body)


if __name__ == "__main__":
    main()
