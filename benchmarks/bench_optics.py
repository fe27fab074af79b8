"""Optics models with an MFT (issue 24, benchmarks and part E): the Hessian and
the Fisher matrix, dense vs sparse vs zodiax, first call and steady, colours.
Writes the ``optics`` section of RESULTS.md.

Models: ``mft``, a pure-JAX model of dLux's shape (`workflows/models/mft.py`);
``dlux``, the same built from dLux itself (a benchmark extra:
`benchmarks/dlux_model.py`). Both float32, n = npix² + 21.

Each case runs in a fresh process: the first call (trace, detection, colouring,
compiles) and the median of ``--repeats`` steady calls, each at a new x (x
scaled by 1 + 1e-3 k). Dense cases only where the matrix fits (npix 64).

    python benchmarks/bench_optics.py [--npix 64 256] [--repeats 3] [--models mft dlux]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "workflows"))

#: (label, matrix, implementation); dense ones only where the matrix fits.
CASES = [
    ("Hessian", "hessian", "zodiax"),
    ("Hessian", "hessian", "dense"),
    ("Hessian", "hessian", "sparse"),
    ("Fisher", "fisher", "zodiax"),
    ("Fisher", "fisher", "dense"),
    ("Fisher", "fisher", "sparse"),
]


def _model(name: str, npix: int):
    import jax
    import jax.numpy as jnp

    if name == "dlux":
        from dlux_model import make

        return make(npix)
    from models.mft import make_model

    loss, best_fit, _ = make_model(npix=npix)
    return loss, loss.residuals, jax.tree_util.tree_map(jnp.asarray, best_fit())


def _call(matrix: str, impl: str, loss, residuals, info: dict):
    import jax
    from jax.flatten_util import ravel_pytree

    import diffops_core as dc

    if impl == "zodiax":
        import zodiax

        if matrix == "hessian":
            return lambda x: zodiax.diffops.hessian(loss, x, nbatches=16)[0]
        flat_r = lambda p: ravel_pytree(residuals(p))[0]
        gram = jax.jit(lambda J: J.T @ J)
        return lambda x: gram(zodiax.diffops.jacobian(flat_r, x, nbatches=16)[0])
    if impl == "dense":
        fn = dc.hessian if matrix == "hessian" else dc.gauss_newton
        return lambda x: fn(loss if matrix == "hessian" else residuals, x)[0]

    def sparse(x):  # one call, as a user makes it: the products compile beside detection
        if matrix == "hessian":
            out = dc.sparse_hessian(loss, x)[0]
        else:
            out = dc.sparse_gauss_newton(residuals, x)[0]
        if not info:  # the first call's detection, read back from the cache (once)
            found = (dc.hessian_sparsity(loss, x) if matrix == "hessian"
                     else dc.gauss_newton_sparsity(residuals, x))  # fmt: skip
            info.update(colours=found.ncolors, nnz=found.nnz, **found.seconds)
        return out

    return sparse


def one(config: dict) -> dict:
    import jax

    from diffops_core.internal import peak_rss

    loss, residuals, x = _model(config["model"], config["npix"])
    info: dict = {}
    call = _call(config["matrix"], config["impl"], loss, residuals, info)
    xs = [jax.tree_util.tree_map(lambda v, k=k: v * (1 + 1e-3 * k), x)
          for k in range(config["repeats"] + 1)]  # fmt: skip
    t = time.perf_counter()
    jax.block_until_ready(call(xs[0]))
    first = time.perf_counter() - t
    first_info = dict(info)
    times = []
    for xk in xs[1:]:
        t = time.perf_counter()
        jax.block_until_ready(call(xk))
        times.append(time.perf_counter() - t)
    n = sum(v.size for v in jax.tree_util.tree_leaves(x))
    return {**config, **first_info, "n": n, "first_s": first, "steady_s": statistics.median(times),
            "peak": peak_rss()}  # fmt: skip


def fresh(config: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)],
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    if proc.returncode:
        return {**config, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _row(r: dict, base: dict) -> str:
    if "error" in r:
        return (
            f"| {r['model']} | {r['npix']} | {r['label']} | {r['impl']} | error: {r['error']} |||||"
        )
    ratio = lambda key: f"{base[key] / r[key]:.1f}x" if base and key in base else "-"
    colours = r.get("colours", "-")
    detect = f"{r['detection']:.2f} / {r['coloring']:.2f}" if "detection" in r else "-"
    return (f"| {r['model']} | {r['npix']} | {r['n']:,} | {r['label']} | {r['impl']} | {colours} | "
            f"{detect} | {r['first_s']:.2f} | {r['steady_s']:.3f} | {ratio('first_s')} | "
            f"{ratio('steady_s')} | {r['peak'] / 2**30:.2f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npix", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["mft", "dlux"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(json.loads(args.one))))
        return
    lines = [
        "| model | npix | n | matrix | implementation | colours | detect / colour s | first s | "
        "steady s | first vs zodiax | steady vs zodiax | peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        for npix in args.npix:
            base: dict = {}
            for label, matrix, impl in CASES:
                if impl != "sparse" and npix > 64:
                    continue  # the dense matrix would not fit
                r = fresh({"model": model, "npix": npix, "label": label, "matrix": matrix,
                           "impl": impl, "repeats": args.repeats})  # fmt: skip
                if impl == "zodiax":
                    base = r if "error" not in r else {}
                lines.append(_row(r, base))
                print(lines[-1], flush=True)
    text = (
        "### Optics models with an MFT: the Hessian and the Fisher matrix against zodiax\n\n"
        "The Hessian of the Poisson loss and the Fisher (Gauss-Newton) matrix of the noise "
        "weighted residuals and a 2% flat-field prior, float32, for a pure-JAX MFT model of "
        "dLux's shape (`mft`: `workflows/models/mft.py`) and for dLux 0.15 itself (`dlux`: "
        "`benchmarks/dlux_model.py`: aperture with spiders, Zernike `BasisOptic`, "
        "`AngularOpticalSystem`, three `PointSources`, `ApplyPixelResponse`). zodiax: "
        "`zodiax.diffops.hessian` at nbatches 16, and for the Fisher matrix "
        "`zodiax.diffops.jacobian` (nbatches 16) then a jitted `J.T @ J`. dense: "
        "`diffops_core.hessian` / `gauss_newton` (defaults); sparse: `sparse_hessian` / "
        '`sparse_gauss_newton` with `sparsity="auto"`, one call as a user makes it (its '
        "products compile in a thread beside detection; detection cached after the first "
        "call; scipy results, the self-check included). Each case in a fresh process; first: every compile included; "
        f"steady: median of {args.repeats} calls at new x. Peak: the process's VmHWM.\n\n"
        + "\n".join(lines)
    )
    command = "python benchmarks/bench_optics.py " + " ".join(sys.argv[1:])
    from report import write_section

    write_section("optics", text, command.strip())


if __name__ == "__main__":
    main()
