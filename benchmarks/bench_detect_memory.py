"""Sparsity detection's memory on models that spread a shared set over many
rows (what once spelled an n x n pattern out): a tridiagonal written with
``jnp.take``, with ``jax.checkpoint``, with ``lax.map`` and with
``jnp.convolve``, at n = 10^5. Each in a fresh process: the detection's time,
the process's peak (VmHWM) and the verdict. Writes the ``detect-memory``
section of RESULTS.md.

    python benchmarks/bench_detect_memory.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import write_section

CASE = r"""
import json, sys, time
import jax, jax.numpy as jnp
import diffops_core as dc
from diffops_core.internal import vm_bytes
kind, n = sys.argv[1], int(sys.argv[2])
idx = jnp.arange(n)
models = {
    "take": lambda x: jnp.sum(x**2) + jnp.sum(jnp.take(x, idx[1:]) * jnp.take(x, idx[:-1])),
    "checkpoint": lambda x: jnp.sum(jax.checkpoint(lambda z: z[1:] * z[:-1])(x)) + jnp.sum(x**2),
    "map": lambda x: jnp.sum(jax.lax.map(lambda i: x[i] * x[i + 1], jnp.arange(n - 1)))
    + jnp.sum(x**2),
    "convolve": lambda x: jnp.sum(jnp.convolve(x, jnp.array([1.0, 2.0, 1.0]), mode="same") ** 2),
}
x = jnp.linspace(0.1, 1.0, n)
before = vm_bytes("VmRSS")
t = time.perf_counter()
found = dc.hessian_sparsity(models[kind], x)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak": vm_bytes(), "before": before, "mode": found.mode,
                  "ncolors": int(found.ncolors), "nnz": int(found.nnz), "why": found.why}))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    rows = []
    for kind in ("take", "checkpoint", "map", "convolve"):
        out = subprocess.run([sys.executable, "-c", CASE, kind, str(args.n)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        found = json.loads(out.stdout.strip().splitlines()[-1])
        verdict = (f"{found['mode']}, {found['ncolors']} colours" if found["mode"] != "dense"
                   else "dense: " + found["why"].split(" (")[0][:90])  # fmt: skip
        rows.append(f"| {kind} | {found['seconds']:.2f} s | {found['peak'] / 2**30:.2f} GiB | "
                    f"{found['before'] / 2**30:.2f} GiB | {verdict} |")  # fmt: skip
        print(rows[-1], flush=True)
    body = (
        f"### Detection memory on shared sets spread over rows (n = {args.n:,})\n\n"
        "A tridiagonal Hessian written four ways, each detected in a fresh process (float32). "
        "Peak: the process's VmHWM (Python and JAX included); before: its RSS before detection. "
        "At n = 2*10^4 the take and map forms took 7.5 GB and 15 s before the budget bounded "
        "the spelled-out pattern (`tests/core/test_sparse_trust.py`). Checkpoint (`remat`) and "
        "map (`dynamic_update_slice`) still have no rule: they go dense, in bounded memory, "
        "saying where.\n\n"
        "| written with | detection | peak | before | verdict |\n| --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
    )
    write_section("detect-memory", body, f"python benchmarks/bench_detect_memory.py --n {args.n}")


if __name__ == "__main__":
    main()
