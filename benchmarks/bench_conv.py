"""A flat field behind a detector's charge diffusion (issue 24): the image is
``conv2d(flat * psf * flux, 5x5 kernel)``, the loss its squared residuals.
Before ``conv_general_dilated`` had a rule, every such Hessian was dense (n
products); now its pattern is the kernel's 9x9 autocorrelation footprint beside
the flux's row and column. Writes the ``conv`` section of RESULTS.md.

Each size in a fresh process: detection and colouring (the first call's),
the sparse Hessian and Fisher matrix (first call, compiles included; then
steady), σ of the Fisher matrix, and, up to ``--dense-upto`` pixels a side,
the dense ``hessian`` beside them. Peaks by VmHWM.

    python benchmarks/bench_conv.py [--npix 64 256 1024] [--dense-upto 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def one(npix: int, dense: bool) -> dict:
    import jax
    import jax.flatten_util
    import jax.numpy as jnp
    import jax.scipy.signal as jss
    import numpy as np

    import diffops_core as dc
    from diffops_core.internal import peak_rss

    taps = np.array([1.0, 4.0, 6.0, 4.0, 1.0])
    kernel = jnp.asarray(np.outer(taps, taps) / 256.0, jnp.float32)
    rng = np.random.default_rng(0)
    psf = jnp.asarray(rng.random((npix, npix)) + 0.5, jnp.float32)
    data = jnp.asarray(rng.random((npix, npix)), jnp.float32)

    def image(p):
        return jss.convolve2d(p["flat"].reshape(npix, npix) * psf * p["flux"], kernel,
                              mode="same")  # fmt: skip

    def residuals(p):  # the flat field's prior: flux and flat are otherwise degenerate
        return {"image": image(p) - data, "prior": 10.0 * (p["flat"] - 1.0)}

    loss = lambda p: jnp.sum((image(p) - data) ** 2) + jnp.sum(100.0 * (p["flat"] - 1.0) ** 2)
    x = {"flat": jnp.ones(npix * npix, jnp.float32), "flux": jnp.asarray(1.1, jnp.float32)}
    out: dict = {"npix": npix, "n": npix * npix + 1}
    t0 = time.perf_counter()
    found = dc.hessian_sparsity(loss, x)
    out.update(detect_s=found.seconds["detection"], colour_s=found.seconds["coloring"],
               colours=found.ncolors, nnz=found.nnz, first_sparsity_s=time.perf_counter() - t0)  # fmt: skip
    t0 = time.perf_counter()
    H, _ = dc.sparse_hessian(loss, x, sparsity=found)
    out["hessian_first_s"] = time.perf_counter() - t0
    x2 = {"flat": x["flat"] * 1.01, "flux": x["flux"]}
    t0 = time.perf_counter()
    dc.sparse_hessian(loss, x2, sparsity=found)
    out["hessian_steady_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    F, _ = dc.sparse_gauss_newton(residuals, x, std=0.1)
    out["fisher_first_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sigma = dc.marginal_std(F, x)
    out["sigma_s"] = time.perf_counter() - t0
    out["sigma_flux"] = float(np.asarray(sigma["flux"]))
    if dense:
        t0 = time.perf_counter()
        Hd, _ = dc.hessian(loss, x)
        jax.block_until_ready(Hd)
        out["dense_s"] = time.perf_counter() - t0
        flat = np.asarray(Hd)
        out["max_diff"] = float(np.abs(H.toarray() - flat).max() / np.abs(flat).max())
    out["peak_gb"] = peak_rss() / 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npix", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--dense-upto", type=int, default=64)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dense", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dense)))
        return
    from report import write_section

    rows = []
    for npix in args.npix:
        cmd = [sys.executable, __file__, "--one", str(npix)]
        if npix <= args.dense_upto:
            cmd.append("--dense")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        dense = (f"{r['dense_s']:.1f} s (max diff {r['max_diff']:.1e})"
                 if "dense_s" in r else "-")  # fmt: skip
        rows.append(
            f"| {npix} | {r['n']:,} | {r['nnz']:,} | {r['colours']} | {r['detect_s']:.2f} | "
            f"{r['colour_s']:.2f} | {r['hessian_first_s']:.1f} | {r['hessian_steady_s']:.2f} | "
            f"{r['fisher_first_s']:.1f} | {r['sigma_s']:.1f} | {dense} | {r['peak_gb']:.2f} |"
        )
        print(rows[-1], flush=True)
    lines = [
        "A flat field behind a 5x5 charge-diffusion kernel (`jax.scipy.signal.convolve2d`) "
        "times a global flux, with a prior on the flat field, float32; each size in a fresh process. The Hessian's pattern "
        "is each pixel's 9x9 neighbourhood (the kernel's autocorrelation) beside the flux "
        "(dense before `conv_general_dilated` had a rule: n products). First: compiles "
        "included; steady: at another x. σ: `marginal_std` of the sparse Fisher matrix. "
        "Peak: the whole process (VmHWM).",
        "",
        "| npix | n | nnz | colours | detect s | colour s | Hessian first s | Hessian steady s "
        "| Fisher first s | σ s | dense `hessian` | peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    command = "python benchmarks/bench_conv.py " + " ".join(sys.argv[1:])
    write_section("conv", "\n".join(lines), command.strip())


if __name__ == "__main__":
    main()
