"""Detection on the CUTEst problems as sif2jax writes them (issue 24, part B):
every unconstrained objective Hessian of n <= ``--most``. Writes the
``cutest`` section of RESULTS.md.

For each problem, at a random point near its start: detection and colouring
time (the first call's), nonzeros, colours; sound when the sparse Hessian from
the pattern passes its self-check (products of six random vectors, row by
row) and equals a Hessian-vector product of jax; dense when detection found
the pattern (nearly) dense or gave up.

    python benchmarks/bench_cutest.py [--most 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)  # the problems are float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import write_section  # noqa: E402

import diffops_core as dc  # noqa: E402


def one(problem) -> dict:
    f = lambda y: problem.objective(y, problem.args)
    y0 = jnp.asarray(np.asarray(problem.y0), jnp.float64)
    rng = np.random.default_rng(len(problem.name))
    y = y0 + jnp.asarray(rng.normal(size=y0.shape) * 0.1 * (1 + np.abs(np.asarray(y0))))
    t0 = time.perf_counter()
    found = dc.hessian_sparsity(f, y)
    out = {"name": problem.name, "n": int(y.size), "detect_s": time.perf_counter() - t0,
           "nnz": found.nnz, "colours": found.ncolors, "dense": found.dense}  # fmt: skip
    if found.dense:
        return out
    try:
        H, _ = dc.sparse_hessian(f, y, sparsity=found)
    except ValueError as err:
        return {**out, "refused": str(err)[:100]}
    v = jnp.asarray(np.random.default_rng(0).standard_normal(y.size))
    hvp = np.asarray(jax.jvp(jax.grad(f), (y,), (v,))[1])
    scale = abs(H) @ np.abs(np.asarray(v)) + np.abs(hvp) + 1e-300
    out["sound"] = bool(np.all(np.abs(H @ np.asarray(v) - hvp) <= 1e-8 * scale))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--most", type=int, default=5000)
    args = parser.parse_args()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sif2jax

        problems = [p for p in sif2jax.unconstrained_minimisation_problems
                    if np.size(p.y0) <= args.most]  # fmt: skip
    imported = time.perf_counter() - t0
    rows = []
    for problem in problems:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows.append(one(problem))
        print(rows[-1], flush=True)
    detect = [r["detect_s"] for r in rows]
    sparse = [r for r in rows if not r["dense"]]
    sound = [r for r in sparse if r.get("sound")]
    refused = [r for r in sparse if "refused" in r]
    slowest = sorted(rows, key=lambda r: -r["detect_s"])[:8]
    lines = [
        f"Every unconstrained CUTEst objective of n <= {args.most} in sif2jax "
        f"({len(rows)} problems; importing sif2jax took {imported:.0f} s), float64, at a "
        "random point near its start, one process.",
        "",
        f"- sparse patterns: {len(sparse)}; their sparse Hessian passed its self-check and "
        f"equalled jax's Hessian-vector product (1e-8 of the row's scale): {len(sound)}; "
        f"refused by the check (an unsound pattern): {len(refused)} "
        f"{[r['name'] for r in refused]}",
        f"- dense (detection saw more than half, or gave up): {len(rows) - len(sparse)}",
        f"- detection and colouring, first call: median {statistics.median(detect):.2f} s, "
        f"worst {max(detect):.1f} s; over 2 s: {sum(d > 2 for d in detect)}",
        "",
        "Slowest to detect:",
        "",
        "| problem | n | nnz | colours | detect s |",
        "|---|---|---|---|---|",
        *[
            f"| {r['name']} | {r['n']} | {r['nnz']:,} | {r['colours']} | {r['detect_s']:.1f} |"
            for r in slowest
        ],  # fmt: skip
    ]
    command = "python benchmarks/bench_cutest.py " + " ".join(sys.argv[1:])
    write_section("cutest", "\n".join(lines), command.strip())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
