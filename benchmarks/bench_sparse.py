"""Sparse Hessians from compressed products (issue 18): the PSF demo (n = 4120,
an arrowhead: 24 globals beside a 64x64 flat field) with ``sparse_hessian``
against our dense path, zodiax (nbatches 16) and ``jax.hessian``, each in a
fresh process (first call, median of steady calls on new x, peak RSS by
VmHWM); then the sparse call's stages, measured in this process.

    python benchmarks/bench_sparse.py [--repeats 5]        # the PSF demo, side by side
    python benchmarks/bench_sparse.py sweep --npix 64 128 256 512 1024
    python benchmarks/bench_sparse.py mlp                  # a dense function: no cost
    python benchmarks/bench_sparse.py pipeline [--repeats 3]   # the demo spec, sparse and dense
    python benchmarks/bench_sparse.py spec1m                # workflows/fisher_1m.yaml, staged
    python benchmarks/bench_sparse.py colours               # chain, grid, arrowhead vs optimum

``sweep`` grows the flat field (n = npix² + 24) and computes, each size in a
fresh process, the Hessian and the Gauss–Newton (Fisher) matrix of the PSF
model sparse, then the Fisher matrix's marginal σ (the Hessian at the
simulation's point is indefinite: it has no σ), with each stage's time, the
process's peak memory (VmHWM) and what the dense matrix would need.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from report import mb, run_fresh, write_section

HERE = os.path.dirname(os.path.abspath(__file__))


def _row(*cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _stages(repeats: int) -> list[str]:
    """The first call's stages (trace, detection, colouring, products with
    their compile, recovery, check), then per steady call the products,
    recovery and check, measured around the library's own steps (run in a
    fresh process: the first call is this process's first)."""
    import diffops_core as dc
    from diffops_core.internal import Kernels
    from diffops_core.sparse import _products
    from problems import PROBLEMS

    f, x, _ = PROBLEMS["psf"]()
    x = jax.tree_util.tree_map(np.asarray, x)
    names = ("trace", "products", "recovery", "check")
    spent: dict[str, list[float]] = {k: [] for k in names}
    originals = {"trace": _products._traced, "products": _products._compressed,
                 "recovery": _products.recover, "check": _products._check}  # fmt: skip

    def timed(name):
        def run(*args, **kwargs):
            t = time.perf_counter()
            out = originals[name](*args, **kwargs)
            spent[name].append(time.perf_counter() - t)
            return out

        return run

    _products._traced, _products._compressed = timed("trace"), timed("products")
    _products.recover, _products._check = timed("recovery"), timed("check")
    ahead: dict[str, float] = {}
    compile_ahead, lower_seeded = _products._compile_ahead, Kernels.lower_seeded_products

    class Lowered:  # its compile, in the thread a first call starts, timed
        def __init__(self, lowered):
            self.lowered = lowered

        def compile(self):
            t = time.perf_counter()
            self.lowered.compile()
            ahead["compile"] = time.perf_counter() - t

    def lowered(self, *args):  # before detection, in the caller's thread
        t = time.perf_counter()
        out = lower_seeded(self, *args)
        ahead["lower"] = time.perf_counter() - t
        return Lowered(out)

    class Waited:  # the thread, its join timed (the wait after detection and colouring)
        def __init__(self, thread):
            self.thread = thread

        def join(self):
            t = time.perf_counter()
            self.thread.join()
            ahead["wait"] = ahead.get("wait", 0.0) + time.perf_counter() - t

    def started(*args):
        thread = compile_ahead(*args)
        return None if thread is None else Waited(thread)

    _products._compile_ahead, Kernels.lower_seeded_products = started, lowered
    try:
        t0 = time.perf_counter()
        dc.sparse_hessian(f, x)  # the first call: traces, detects, colours, compiles
        first_total = time.perf_counter() - t0
        first = {k: sum(v) for k, v in spent.items()}
        found = dc.hessian_sparsity(f, x)  # cached: the first call's
        for name in spent:
            spent[name].clear()
        for _ in range(repeats):
            dc.sparse_hessian(f, x)
    finally:
        _products._traced, _products._compressed = originals["trace"], originals["products"]
        _products.recover, _products._check = originals["recovery"], originals["check"]
        _products._compile_ahead, Kernels.lower_seeded_products = compile_ahead, lower_seeded
    ms = {k: 1000 * statistics.median(v) for k, v in spent.items() if v}
    det, col = found.seconds["detection"], found.seconds["coloring"]
    rest = (
        first_total
        - first["trace"]
        - det
        - col
        - first["products"]
        - first["recovery"]
        - first["check"]
        - ahead.get("lower", 0.0)
        - ahead.get("wait", 0.0)
    )
    return [
        _row(
            "n, nnz, colours",
            f"{found.shape[0]}, {found.nnz:,} ({found.nnz / found.shape[0] ** 2:.1%}), "
            f"{found.ncolors} products instead of {found.shape[0]}",
        ),
        _row("first call, all", f"{1000 * first_total:.0f} ms"),
        _row("first call: trace (jaxpr and its identity)", f"{1000 * first['trace']:.0f} ms"),
        _row("first call: detection (cached on the computation after)", f"{1000 * det:.0f} ms"),
        _row("first call: star colouring (cached after)", f"{1000 * col:.0f} ms"),
        _row(
            "first call: the products' trace and lowering, before detection",
            f"{1000 * ahead.get('lower', 0.0):.0f} ms",
        ),  # fmt: skip
        _row(
            "first call: the products' compile, in a thread from then on (beside detection)",
            f"{1000 * ahead.get('compile', 0.0):.0f} ms",
        ),  # fmt: skip
        _row(
            "first call: waiting for that compile after detection and colouring",
            f"{1000 * ahead.get('wait', 0.0):.0f} ms",
        ),  # fmt: skip
        _row("first call: products (16 vectors a call)", f"{1000 * first['products']:.0f} ms"),
        _row("first call: recovery", f"{1000 * first['recovery']:.1f} ms"),
        _row("first call: check", f"{1000 * first['check']:.1f} ms"),
        _row("first call: the rest (sizing, seeds, the return)", f"{1000 * rest:.0f} ms"),
        _row("steady: trace (the per-call identity)", f"{ms.get('trace', 0):.1f} ms"),
        _row("steady: products (median)", f"{ms['products']:.1f} ms"),
        _row("steady: recovery", f"{ms['recovery']:.1f} ms"),
        _row("steady: check, six products of random vectors, row by row", f"{ms['check']:.1f} ms"),
    ]


def one(npix: int) -> dict:
    """One flat-field size, in this (fresh) process."""
    import jax.numpy as jnp

    import diffops_core as dc
    from diffops_core.internal import peak_rss

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "workflows"))  # fmt: skip
    from models.psf import make_model

    loss, best, _ = make_model(npix=npix)
    x = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), best())
    out: dict = {"npix": npix}
    for name, detect, compute, args in (
        ("hessian", dc.hessian_sparsity, dc.sparse_hessian, (loss, x)),
        ("fisher", dc.gauss_newton_sparsity, dc.sparse_gauss_newton, (loss.residuals, x)),
    ):
        t0 = time.perf_counter()
        found = detect(*args)
        t1 = time.perf_counter()
        matrix, _ = compute(*args)
        t2 = time.perf_counter()
        out[name] = {"n": found.shape[0], "nnz": found.nnz, "colors": found.ncolors,
                     "detect_s": found.seconds["detection"], "color_s": found.seconds["coloring"],
                     "wall_detect_s": t1 - t0, "compute_s": t2 - t1}  # fmt: skip
    t3 = time.perf_counter()
    dc.marginal_std(matrix, x)
    out["sigma_s"] = time.perf_counter() - t3
    out["peak_rss"] = peak_rss()
    return out


def sweep(sizes: list[int]) -> None:
    rows = [
        _row("npix", "n", "matrix", "nnz", "colours", "detect s", "colour s",
             "products + recovery + check s", "sigma s", "dense would need"),
        _row(*["---"] * 10),
    ]  # fmt: skip
    peaks = []
    for npix in sizes:
        done = subprocess.run([sys.executable, __file__, "one", "--npix", str(npix)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        res = json.loads(done.stdout.strip().splitlines()[-1])
        print(res, file=sys.stderr)
        for name in ("hessian", "fisher"):
            r = res[name]
            rows.append(_row(npix, f"{r['n']:,}", name, f"{r['nnz']:,}", r["colors"],
                             f"{r['detect_s']:.1f}", f"{r['color_s']:.1f}", f"{r['compute_s']:.1f}",
                             f"{res['sigma_s']:.1f}" if name == "fisher" else "",
                             f"{r['n'] ** 2 * 4 / 1e9:,.1f} GB (float32)"))  # fmt: skip
        peaks.append(f"npix {npix}: {res['peak_rss'] / 1e9:.2f} GB")
    body = (
        "### Flat-field sweep: sparse Hessian and Fisher matrix of the PSF model, and σ\n\n"
        "Each size in a fresh process (float32; 21 Zernike terms, flux and position beside "
        "the npix² flat field). Detection and colouring are the first call's (cached after); "
        "products + recovery + check is the sparse call after them, its compiles included. "
        "σ: `marginal_std` of the sparse Fisher matrix (exact, by the Schur complement on "
        "the 24 dense rows). Peak RSS of each whole process (VmHWM): "
        + "; ".join(peaks)
        + ".\n\n"
        + "\n".join(rows)
    )
    write_section("sparse-sweep", body, "python benchmarks/bench_sparse.py sweep --npix "
                  + " ".join(str(s) for s in sizes))  # fmt: skip
    print(body)


def dense_mlp(repeats: int) -> None:
    """The dense MLP (n = 2632) with ``sparsity="auto"`` against the dense call,
    each in a fresh process: a dense pattern must cost (almost) nothing."""
    rows = [_row("call", "first s", "steady s (median)", "vs dense"), _row(*["---"] * 4)]
    found = []
    for name, kwargs in (
        ("hessian (dense path)", {}),
        ('hessian, sparsity="auto"', {"sparsity": "auto"}),
    ):
        res = run_fresh({"problem": "mlp", "impl": "diffops", "op": "hessian", "repeats": repeats,
                         "kwargs": kwargs})  # fmt: skip
        print(name, res.get("first_s"), res.get("median_s"), res.get("error"), file=sys.stderr)
        found.append((name, res))
    dense = found[0][1]["median_s"]
    for name, res in found:
        rows.append(_row(name, f"{res['first_s']:.2f}", f"{res['median_s']:.3f}",
                         f"{res['median_s'] / dense:.2f}x"))  # fmt: skip
    body = (
        '### A dense function: the MLP (n = 2632) with sparsity="auto"\n\n'
        f"Each in a fresh process; first call, then the median of {repeats} steady calls on new "
        "x. The pattern is found dense (detection stops at its budget) and the dense path runs; "
        "the first call pays the detection once.\n\n" + "\n".join(rows)
    )
    write_section("sparse-mlp", body, f"python benchmarks/bench_sparse.py mlp --repeats {repeats}")
    print(body)


_PIPELINE_CASES = [
    ("sparse, embedded", {"sparsity": "auto"}, None),
    ("sparse, --workers 2 (a cluster per run)", {"sparsity": "auto"}, 2),
    ("sparse, 2 workers (one cluster, kept)", {"sparsity": "auto"}, "kept"),
    ("dense (block 256), embedded", {"blocks": "{block_size: 256}"}, None),
]


def _demo_spec(directory: str, fields: dict, name: str) -> str:
    """The demo's spec (float64 PSF Hessian) with ``fields``, its output in ``directory``."""
    workflows = os.path.join(os.path.dirname(HERE), "workflows")
    data = {"operation": "hessian", "function": "models.psf:loss", "point": "models.psf:best_fit",
            "output": os.path.join(directory, f"{name}.zarr"), "dtype": "float64",
            "python_path": f"[{workflows}]", **fields}  # fmt: skip
    path = os.path.join(directory, f"{name}.yaml")
    with open(path, "w") as fh:
        fh.write("".join(f"{k}: {v}\n" for k, v in data.items()))
    return path


@contextlib.contextmanager
def _kept(workers):
    """A local cluster of two workers for all runs (``"kept"``), or none."""
    if workers != "kept":
        yield None
        return
    import pipeline

    workflows = os.path.join(os.path.dirname(HERE), "workflows")
    env = {"PYTHONPATH": workflows, "JAX_ENABLE_X64": "1"}
    with pipeline.local_cluster(2, env=env, host="127.0.0.1",
                                dashboard_address="127.0.0.1:0") as cluster:  # fmt: skip
        yield cluster.scheduler_address


def pipeline_one(case: int, repeats: int) -> dict:
    """One case of `pipeline_runs` in this (fresh) process: a first run, then
    ``repeats`` more, each into a new store (what `diffops run` does each time)."""
    import shutil
    import tempfile

    import pipeline
    from diffops_core.internal import peak_rss

    _name, fields, workers = _PIPELINE_CASES[case]
    runs = []
    with tempfile.TemporaryDirectory(prefix="diffops-bench-") as tmp, _kept(workers) as address:
        for i in range(repeats + 1):
            spec = pipeline.load_spec(_demo_spec(tmp, fields, f"run{i}"))
            t0 = time.perf_counter()
            summary = pipeline.run_spec(spec, workers=None if address else workers,
                                        scheduler=address, progress=False)  # fmt: skip
            wall = time.perf_counter() - t0
            assert summary.complete
            runs.append({"wall": wall, "blocks_s": summary.pipeline_s,
                         "blocks": summary.blocks_total, "worker": summary.peak_rss_worker,
                         "sparsity": summary.sparsity})  # fmt: skip
            shutil.rmtree(spec.output, ignore_errors=True)
    steady = runs[1:]
    return {
        "first": runs[0]["wall"],
        "steady": statistics.median(r["wall"] for r in steady),
        "blocks_s": statistics.median(r["blocks_s"] for r in steady),
        "blocks": runs[0]["blocks"],
        "products": (runs[0]["sparsity"] or {}).get("ncolors", 4120),
        "driver_peak": peak_rss(),
        "worker_peak": max((r["worker"] or 0) for r in runs) or None,
    }


def pipeline_runs(repeats: int) -> None:
    """The demo spec through the pipeline, sparse (embedded and two local
    workers) beside dense, each case in a fresh process."""
    results = []
    for case, (name, _fields, _workers) in enumerate(_PIPELINE_CASES):
        proc = subprocess.run([sys.executable, __file__, "pipeline-one", str(case), str(repeats)],
                              capture_output=True, text=True, timeout=3600)  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"{name}: {proc.stderr.strip().splitlines()[-1]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, res, file=sys.stderr)
        results.append((name, res))
    dense = results[-1][1]["steady"]
    lines = [
        _row(
            "run",
            "products",
            "blocks",
            "first run s",
            "steady run s (median)",
            "blocks s (median)",
            "dense steady / this",
            "driver peak MB",
            "worker peak MB",
        ),  # fmt: skip
        _row(*["---"] * 9),
    ]
    for name, res in results:
        worker = mb(res["worker_peak"]) if res["worker_peak"] else "-"
        lines.append(_row(name, res["products"], res["blocks"], f"{res['first']:.2f}",
                          f"{res['steady']:.2f}", f"{res['blocks_s']:.2f}",
                          f"{dense / res['steady']:.2g}x", mb(res["driver_peak"]),
                          worker))  # fmt: skip
    body = (
        "### The pipeline on the sparse PSF demo (n = 4120, float64 Hessian)\n\n"
        "`pipeline.run_spec` of the demo spec (no finalize), each case in a fresh process: "
        f"the first run, then the median of {repeats} more, each into a new store (with "
        "`--workers 2`, each run starts its local cluster, as `diffops run --workers 2` "
        "does, and its workers trace and compile; kept: one cluster for all runs, whose "
        "workers keep their compiled kernels). Blocks s: the blocks' share of the run (trace, detection, colouring, the "
        "self-check and the checks are the rest). Peaks by VmHWM.\n\n" + "\n".join(lines)
    )
    write_section("sparse-pipeline", body,
                  f"python benchmarks/bench_sparse.py pipeline --repeats {repeats}")  # fmt: skip
    print(body)


def spec1m_one() -> dict:
    """workflows/fisher_1m.yaml (its σ file in a temporary directory), then σ
    again from the store opened cold, in this (fresh) process, into a
    temporary store: each stage's time and the peak."""
    import tempfile

    import pipeline
    from diffops_core.internal import peak_rss

    workflows = os.path.join(os.path.dirname(HERE), "workflows")
    with tempfile.TemporaryDirectory(
        prefix="diffops-bench-", dir=os.path.join(HERE, "_out")
    ) as tmp:
        spec = pipeline.load_spec(os.path.join(workflows, "fisher_1m.yaml"))
        finalize = spec.finalize.model_copy(update={"std": os.path.join(tmp, "std.npz")})
        spec = spec.model_copy(update={"output": os.path.join(tmp, "f.zarr"),
                                       "finalize": finalize})  # fmt: skip
        t0 = time.perf_counter()
        summary = pipeline.run_spec(spec, progress=False)
        t_run = time.perf_counter() - t0
        result = pipeline.open_result(spec.output)
        t1 = time.perf_counter()
        std = result.marginal_std()
        t_sigma = time.perf_counter() - t1
        t2 = time.perf_counter()
        eig = result.spectrum(k=3, progress=False)
        t_spectrum = time.perf_counter() - t2
        info = result.meta["sparsity"]
        disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(spec.output)
                   for f in fs)  # fmt: skip
        return {"n": result.shape[0], "nnz": info["nnz"], "colours": info["ncolors"],
                "detect_s": info["seconds"]["detection"], "colour_s": info["seconds"]["coloring"],
                "blocks_s": summary.pipeline_s, "check_s": info["check"]["seconds"],
                "checks_s": summary.checks_s, "run_s": t_run, "sigma_s": t_sigma,
                "peak": peak_rss(), "disk": disk, "dtype": str(result.dtype),
                "flux_sigma": float(std["flux"]), "spectrum_s": t_spectrum,
                "condition": eig["condition"], "matvecs": eig["matvecs"]}  # fmt: skip


def spec1m() -> None:
    os.makedirs(os.path.join(HERE, "_out"), exist_ok=True)
    proc = subprocess.run([sys.executable, __file__, "spec1m-one"], capture_output=True,
                          text=True, timeout=3600)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip().splitlines()[-1])
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    dense = r["n"] ** 2 * (4 if r["dtype"] == "float32" else 8)
    lines = [
        _row(
            "n",
            "nnz",
            "colours",
            "detect s",
            "colour s",
            "blocks s",
            "self-check s",
            "checks s",
            "run s (all, σ included)",
            "σ s (cold)",
            "spectrum s (k=3)",
            "condition",
            "peak MB",
            "store MB",
            "dense would be",
        ),  # fmt: skip
        _row(*["---"] * 15),
        _row(
            f"{r['n']:,}",
            f"{r['nnz']:,}",
            r["colours"],
            f"{r['detect_s']:.1f}",
            f"{r['colour_s']:.1f}",
            f"{r['blocks_s']:.1f}",
            f"{r['check_s']:.1f}",
            f"{r['checks_s']:.1f}",
            f"{r['run_s']:.1f}",
            f"{r['sigma_s']:.1f}",
            f"{r['spectrum_s']:.1f} ({r['matvecs']} products)",
            f"{r['condition']:.2g}",
            mb(r["peak"]),
            mb(r["disk"]),
            f"{dense / 1e12:.1f} TB",
        ),  # fmt: skip
    ]
    body = (
        "### The 10⁶-parameter spec: `workflows/fisher_1m.yaml` on this machine\n\n"
        "The Fisher (Gauss-Newton) matrix of the PSF fit with a 1024x1024 flat field, "
        f"{r['dtype']}, through `pipeline.run_spec` on the embedded default into a new store, "
        "as `diffops run workflows/fisher_1m.yaml` runs it, in one fresh process. Run s is "
        "the whole spec: importing the model, tracing, detection, colouring, the blocks, the "
        "self-check against six random products, the checks and the finalize σ file (from "
        "the matrix the self-check recovered). σ cold: `open_result(store).marginal_std()` "
        "afterwards (reading and recovering the matrix again); then `Result.spectrum(k=3)` "
        "(Lanczos on the recovered matrix, the small end by shift-invert on its sparse LU). "
        "Peak by VmHWM over all of it.\n\n" + "\n".join(lines)
    )
    write_section("sparse-spec-1m", body, "python benchmarks/bench_sparse.py spec1m")
    print(body)


def _colour_cases():
    """(name, f, x, kind, optimum) of the known patterns."""
    import jax.numpy as jnp

    cases = []
    for n in (1_000, 100_000, 1_000_000):
        chain = lambda v: jnp.sum((v[1:] - v[:-1] ** 2) ** 2)
        cases.append((f"chain, n = {n:,} (tridiagonal Hessian)", chain, jnp.ones(n), "hessian", 3))
    for side in (32, 316, 1000):

        def grid(v, side=side):
            u = v.reshape(side, side)
            return jnp.sum((u[1:] - u[:-1]) ** 4) + jnp.sum((u[:, 1:] - u[:, :-1]) ** 4)

        def stencil(v, side=side):
            u = jnp.pad(v.reshape(side, side), 1)
            return (4 * u[1:-1, 1:-1] - u[2:, 1:-1] - u[:-2, 1:-1] - u[1:-1, 2:]
                    - u[1:-1, :-2]).ravel() ** 2  # fmt: skip

        x = jnp.ones(side * side)
        cases.append((f"5-point grid {side}², Hessian (star)", grid, x, "hessian", 5))
        cases.append((f"5-point stencil {side}², Jacobian (column)", stencil, x, "jacobian", 5))
    return cases


def colours() -> None:
    import diffops_core as dc

    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "workflows"))
    from models.psf import make_model

    lines = [_row("pattern", "n", "nnz", "colours", "optimum", "detect s", "colour s"),
             _row(*["---"] * 7)]  # fmt: skip
    cases = _colour_cases()
    for npix in (64, 1024):
        loss, best, _ = make_model(npix=npix)
        cases.append((f"PSF arrowhead, {npix}² flat field (Hessian)", loss,
                      jax.tree_util.tree_map(np.asarray, best()), "hessian", 25))  # fmt: skip
    for name, f, x, kind, optimum in cases:
        found = (dc.hessian_sparsity if kind == "hessian" else dc.jacobian_sparsity)(f, x)
        print(name, found.ncolors, found.seconds, file=sys.stderr)
        lines.append(_row(name, f"{found.shape[1]:,}", f"{found.nnz:,}", found.ncolors, optimum,
                          f"{found.seconds['detection']:.2f}",
                          f"{found.seconds['coloring']:.2f}"))  # fmt: skip
    body = (
        "### Colours against the optimum: chains, grids and the arrowhead\n\n"
        "Detection from the jaxpr and colouring, timed by the library (`Sparsity.seconds`), "
        "one process. Optimum: a tridiagonal matrix needs 3 colours in a star colouring, a "
        "5-point grid 5 (its star chromatic number), the 5-point stencil's Jacobian 5 (a "
        "column colouring: no two columns sharing a row), the arrowhead its 24 globals plus "
        "one (a clique of 25).\n\n" + "\n".join(lines)
    )
    write_section("sparse-colours", body, "python benchmarks/bench_sparse.py colours")
    print(body)


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("spec1m", "spec1m-one", "colours"):
        if sys.argv[1] == "spec1m-one":
            print(json.dumps(spec1m_one()))
        else:
            {"spec1m": spec1m, "colours": colours}[sys.argv[1]]()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "stages":  # in a fresh process: its first call
        print(json.dumps(_stages(int(sys.argv[2]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "pipeline-one":
        print(json.dumps(pipeline_one(int(sys.argv[2]), int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "pipeline":
        p = argparse.ArgumentParser()
        p.add_argument("what")
        p.add_argument("--repeats", type=int, default=3)
        pipeline_runs(p.parse_args().repeats)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "mlp":
        p = argparse.ArgumentParser()
        p.add_argument("what")
        p.add_argument("--repeats", type=int, default=3)
        dense_mlp(p.parse_args().repeats)
        return
    if len(sys.argv) > 1 and sys.argv[1] in ("one", "sweep"):
        p = argparse.ArgumentParser()
        p.add_argument("what")
        p.add_argument("--npix", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
        args = p.parse_args()
        if args.what == "one":
            print(json.dumps(one(args.npix[0])))
        else:
            sweep(args.npix)
        return
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
    staged = subprocess.run([sys.executable, __file__, "stages", str(args.repeats)],
                            capture_output=True, text=True, timeout=1800)  # fmt: skip
    if staged.returncode != 0:
        raise SystemExit(staged.stderr.strip().splitlines()[-1])
    stages = [
        _row("stage", "time"),
        _row("---", "---"),
        *json.loads(staged.stdout.splitlines()[-1]),
    ]
    body = (
        "### Sparse Hessian of the PSF demo (n = 4120): compressed products vs dense\n\n"
        f"Each call in a fresh process: the first call, then the median of {args.repeats} steady "
        "calls on new x (peak RSS by VmHWM, less the RSS before the first call). The sparse "
        "result is a scipy CSR matrix, checked against six products of random vectors, row by row.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(stages)
    )
    write_section("sparse-psf", body, f"python benchmarks/bench_sparse.py --repeats {args.repeats}")
    print(body)


if __name__ == "__main__":
    main()
