"""Gauss–Newton (Fisher) matrices against forming J: time, side by side.

    python benchmarks/bench_curvature.py [--repeats 3]

For the MLP (float32) and the PSF demo (float64): `diffops_core.gauss_newton`
(one JVP and one VJP per column, J never formed) against `jax.jacfwd` followed
by ``Jᵀ J`` (jitted together), with `diffops_core.hessian` of the loss for
scale. Median of the warm calls, the three interleaved call by call.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from report import write_section

import diffops_core as dc


def mlp():
    from problems import make_mlp

    loss, x, _ = make_mlp()
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    X, Y = jax.random.normal(k[0], (4096, 32)), jax.random.normal(k[1], (4096, 8))
    scale = np.sqrt(2.0 / Y.size)  # loss = mean(r^2): its Gauss-Newton matrix is 2/N J^T J

    def residuals(p):
        h = jnp.tanh(X @ p["W1"] + p["b1"])
        return (h @ p["W2"] + p["b2"] - Y) * scale

    return "MLP n=2632, m=32768 (float32)", loss, residuals, x, False


def psf():
    from models import psf as model

    x = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), model.best_fit())
    return "PSF demo n=4120, m=8213 (float64)", model.loss, model.residuals, x, True


def _timed(fns, repeats):
    times = {name: [] for name in fns}
    for i in range(repeats + 1):
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn())
            if i:
                times[name].append(time.perf_counter() - t)
            print(f"{name}: {time.perf_counter() - t:.2f}s", file=sys.stderr)
    return {name: statistics.median(ts) for name, ts in times.items()}


def case(make, repeats):
    title, loss, residuals, x, x64 = make()
    with jax.enable_x64(x64):
        flat, unravel = ravel_pytree(x)
        r_flat = lambda z: ravel_pytree(residuals(unravel(z)))[0]

        @jax.jit
        def formed(z):
            J = jax.jacfwd(r_flat)(z)
            return J.T @ J

        G = np.asarray(dc.gauss_newton(residuals, x)[0])
        ref = np.asarray(formed(flat))
        err = float(np.abs(G - ref).max() / np.abs(ref).max())
        t = _timed(
            {
                "gauss_newton": lambda: dc.gauss_newton(residuals, x)[0],
                "jacfwd then JtJ": lambda: formed(flat),
                "hessian of the loss": lambda: dc.hessian(loss, x)[0],
            },
            repeats,
        )
    return title, t, err


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lines = [
        "| problem | gauss_newton s | jacfwd + JᵀJ s | ratio | hessian of the loss s | "
        "max rel. difference |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for make in (mlp, psf):
        title, t, err = case(make, args.repeats)
        lines.append(
            f"| {title} | {t['gauss_newton']:.3f} | {t['jacfwd then JtJ']:.3f} | "
            f"{t['gauss_newton'] / t['jacfwd then JtJ']:.2f}x | "
            f"{t['hessian of the loss']:.3f} | {err:.1e} |"
        )
    body = (
        "### Gauss–Newton matrices: diffops_core.gauss_newton vs forming J\n\n"
        f"Median of {args.repeats} warm calls, interleaved; defaults (no blocking "
        "argument).\n\n" + "\n".join(lines)
    )
    write_section(
        "curvature-gn", body, f"python benchmarks/bench_curvature.py --repeats {args.repeats}"
    )
    print(body)


if __name__ == "__main__":
    main()
