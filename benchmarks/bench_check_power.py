"""The self-check's power: the smallest entry a pattern may miss before the
check refuses the result, by dtype, n and pattern. Writes the ``check-power``
section of RESULTS.md.

A scalar ``f0`` whose Hessian is an arrowhead (5 global rows of scale ~n beside
a diagonal of scale ~1) or a band of 7 diagonals; ``f = f0 + h x_p x_q`` couples
two rows ``f0`` leaves apart, and the check is given ``f0``'s pattern (the
coupling dropped). For each size ``h / (row p's abs sum)`` on a grid of
half-decades the wrong result is computed ``--calls`` times (probes drawn afresh
each call): the table gives the smallest size refused every time, and the
largest refused never (above it the check's probability is between).

    python benchmarks/bench_check_power.py [--calls 20]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import write_section

import diffops_core as dc

SIZES = [10.0**e for e in np.arange(-15, -1.5, 0.5)]


def model(kind: str, n: int):
    rng = np.random.default_rng(3)
    c = jnp.asarray(1 + rng.random(n))
    if kind == "arrowhead":
        w = jnp.asarray(rng.random((5, n - 5)))
        return lambda x: 0.5 * jnp.sum(c * x**2) + jnp.sum(x[:5] * (w @ x[5:]))
    b = jnp.asarray(0.3 * rng.random((3, n)))
    return lambda x: (
        0.5 * jnp.sum(c * x**2)
        + sum(jnp.sum(b[d - 1, : n - d] * x[: n - d] * x[d:]) for d in (1, 2, 3))
    )


def refused(f, x, sparsity) -> bool:
    try:
        dc.sparse_hessian(f, x, sparsity=sparsity)
    except ValueError:
        return True
    return False


def power(kind: str, n: int, x64: bool, calls: int) -> tuple[float | None, float | None]:
    with jax.enable_x64(x64):
        f0 = model(kind, n)
        x = jnp.asarray(np.random.default_rng(4).standard_normal(n),
                        jnp.float64 if x64 else jnp.float32)  # fmt: skip
        p, q = n // 2, n // 2 + 40
        scale = float(np.abs(np.asarray(jax.grad(lambda z: jax.grad(f0)(z)[p])(x))).sum())
        wrong = dc.hessian_sparsity(f0, x)
        always, never = None, None
        for size in SIZES:
            h = size * scale
            f = lambda z, h=h: f0(z) + h * z[p] * z[q]
            count = sum(refused(f, x, wrong) for _ in range(calls))
            if count == 0:
                never = size
            if count == calls and always is None:
                always = size
        return always, never


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    rows = []
    for x64 in (False, True):
        for kind in ("arrowhead", "band"):
            for n in (1000, 10_000, 100_000):
                always, never = power(kind, n, x64, args.calls)
                first = "none up to 1e-2" if always is None else f"{always:.1e}"
                last = f"below {SIZES[0]:.0e}" if never is None else f"{never:.1e}"
                rows.append(
                    f"| {'float64' if x64 else 'float32'} | {kind} | {n:,} | "
                    f"{first} | {last} | {'1e-10' if x64 else '1e-4'} |"
                )
                print(rows[-1], flush=True)
    body = (
        "### The self-check's power\n\n"
        "One entry dropped from the pattern, of a size relative to its row's abs sum; "
        f"each size computed {args.calls} times (fresh probes each call). *Refused always*: "
        "the smallest size on a half-decade grid refused in every call; *refused never*: "
        "the largest refused in none.\n\n"
        "| dtype | pattern | n | refused always from | refused never up to | target |\n"
        "| --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    )
    write_section(
        "check-power", body, f"python benchmarks/bench_check_power.py --calls {args.calls}"
    )


if __name__ == "__main__":
    main()
