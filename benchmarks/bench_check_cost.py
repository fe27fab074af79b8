"""What the self-check costs in the pipeline, now that its probes ride in the
blocks' compiled calls (issue 23, B10), beside what it cost computed apart.
Writes the ``check-cost`` section of RESULTS.md.

A heavy ``f`` with a band Hessian (half-width 3: each pair ``x_i x_{i+d}``
through a sum of ``K`` sines) at ``n`` parameters, float64. In each repeat, in
one process:

- ``pipeline.hessian_to_zarr(f, x, store, sparsity="auto")`` into a new store on
  the embedded default: its blocks compute the colours' and the six probes'
  products; the check (recovery and row-by-row comparison) reads them back;
- the check as it ran before, apart: ``check_sparse`` given no products draws
  six probes and computes their products itself (another linearisation and
  compile of f, then six products), on the same recovered matrix.

Medians over ``--repeats``; the first repeat's compiles included, as a user's
first run has them.

    python benchmarks/bench_check_cost.py [--n 100000] [--terms 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import write_section  # noqa: E402

import pipeline  # noqa: E402
from diffops_core.internal import check_sparse, get_kernels  # noqa: E402


def model(n: int, terms: int):
    rng = np.random.default_rng(5)
    b = jnp.asarray(0.3 + 0.1 * rng.random((3, n)))
    k = jnp.arange(1, terms + 1, dtype=jnp.float64)

    def f(x):
        total = 0.5 * jnp.sum(x**2)
        for d in (1, 2, 3):
            pair = b[d - 1, : n - d] * x[: n - d] * x[d:]
            total = total + jnp.sum(jnp.sin(pair[:, None] * k) / k**2)
        return total

    return f


def one(n: int, terms: int) -> dict:
    f = model(n, terms)
    x = jnp.asarray(np.random.default_rng(6).standard_normal(n) * 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = pipeline.hessian_to_zarr(f, x, os.path.join(tmp, "h.zarr"), sparsity="auto",
                                          progress=False)  # fmt: skip
        run_s = time.perf_counter() - t0
        info = result.meta["sparsity"]
        matrix = result.sparse()
        kernels, x_flat, _ = get_kernels(f, x, "hessian")
        t0 = time.perf_counter()
        apart = check_sparse("hessian", matrix, kernels, x_flat)
        apart_s = time.perf_counter() - t0
    return {
        "ncolors": info["ncolors"],
        "probes": info["probes"]["count"],
        "blocks_s": result.run_summary.seconds,
        "check_s": info["check"]["seconds"],
        "run_s": run_s,
        "apart_s": apart_s,
        "ratio_apart": apart["ratio"],
        "ratio": info["check"]["ratio"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--terms", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = [one(args.n, args.terms) for _ in range(args.repeats)]
    med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    first = runs[0]
    lines = [
        f"A heavy band f (half-width 3, each pair through {args.terms} sines) at n = "
        f"{args.n:,}, float64, on the embedded default, {args.repeats} repeats in one process "
        "(the first with its compiles). Blocks s: the run's blocks (the colours' products and, "
        "riding in the same calls, the six probes'); check s: the check now (recovery and the "
        "row-by-row comparison of the stored probe products); apart s: the check as it was, "
        "computing its six products itself (linearise, compile, six products) on the same "
        "matrix.",
        "",
        "| | colours + probes | blocks s | check s (riding) | check s (apart, as before) "
        "| run s (all) |",
        "|---|---|---|---|---|---|",
        f"| first | {first['ncolors']} + {first['probes']} | {first['blocks_s']:.1f} | "
        f"{first['check_s']:.2f} | {first['apart_s']:.1f} | {first['run_s']:.1f} |",
        f"| median | {med['ncolors']:.0f} + {med['probes']:.0f} | {med['blocks_s']:.1f} | "
        f"{med['check_s']:.2f} | {med['apart_s']:.1f} | {med['run_s']:.1f} |",
        "",
        f"Worst row of the check, riding / apart (error over tolerance, median): "
        f"{med['ratio']:.2g} / {med['ratio_apart']:.2g}.",
    ]
    command = "python benchmarks/bench_check_cost.py " + " ".join(sys.argv[1:])
    write_section("check-cost", "\n".join(lines), command.strip())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
