"""Out-of-core uncertainties: marginal σ by a tiled Cholesky, and Lanczos spectra.

    python benchmarks/bench_uncertainty.py factor [--n 20000] [--worker-memory 1GB]
    python benchmarks/bench_uncertainty.py lanczos [--n 8000]

``factor``: a float64 Hessian of ``n`` parameters (``diag(d) + U Uᵀ``, positive
definite) is written to a store, then ``diag(H⁻¹)`` is computed three ways,
each in a fresh process, one after the other, on the same store:

- numpy in memory: the matrix read whole, ``numpy.linalg.cholesky``, then the
  triangular inverse (``scipy.linalg.solve_triangular`` against I);
- ours: `Result.marginal_std` with a `LocalCluster` of one worker of one thread
  and ``--worker-memory`` (the tile tasks run there);
- dask: the matrix rechunked through Zarr into square chunks,
  ``dask.array.linalg.cholesky`` and ``solve_triangular`` against ``da.eye``,
  the column sums of ``W²``, on the same kind of worker.

Each reports its wall time and the VmHWM of every process it used. The numpy
result is the reference for the others' accuracy.

``lanczos``: an ``n`` float64 Hessian with a spread spectrum; every eigenvalue by
``numpy.linalg.eigvalsh`` (the matrix assembled) against the 6 largest and 6
smallest by `Result.spectrum`: the large end by Lanczos on the streamed matrix,
the small end by shift-invert on the stored factor (first call: factorising
included; second: the factor read from the store).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from report import mb, write_section
from report import peak_rss as _peak_rss

HERE = os.path.dirname(os.path.abspath(__file__))


def _x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def make_store(path: str, n: int, rank: int = 16, spread: bool = False) -> None:
    """A float64 Hessian ``diag(d) + U Uᵀ`` at ``path`` (``spread``: ``d`` spans
    four decades, for a spectrum Lanczos has to work at)."""
    _x64()
    import jax.numpy as jnp

    import pipeline

    rng = np.random.default_rng(0)
    d = np.logspace(-2, 2, n)[rng.permutation(n)] if spread else 1.0 + rng.random(n)
    U = rng.standard_normal((n, rank)) / np.sqrt(n)

    def f(x):
        ux = jnp.asarray(U).T @ x
        return 0.5 * jnp.sum(jnp.asarray(d) * x**2) + 0.5 * jnp.sum(ux**2)

    pipeline.hessian_to_zarr(f, np.zeros(n), path, block_size=512, progress=False)


# -- the three ways, each run in a fresh process --------------------------------------


def way_numpy(store: str, out: str) -> dict:
    import scipy.linalg

    import pipeline

    t0 = time.perf_counter()
    H = pipeline.open_result(store).assemble()
    read = time.perf_counter() - t0
    t0 = time.perf_counter()
    L = np.linalg.cholesky(H)
    del H
    W = scipy.linalg.solve_triangular(L, np.eye(L.shape[0]), lower=True, overwrite_b=True)
    del L
    var = np.einsum("ij,ij->j", W, W)
    wall = time.perf_counter() - t0
    np.save(out, var)
    return {"read_s": read, "wall_s": wall, "driver_peak": _peak_rss()}


def _cluster(memory: str):
    import pipeline

    return pipeline.local_cluster(1, memory_limit=memory, threads_per_worker=1,
                                  dashboard_address=":0")  # fmt: skip


def way_ours(store: str, out: str, memory: str) -> dict:
    from distributed import Client

    import pipeline

    with _cluster(memory) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        std = pipeline.open_result(store).marginal_std(client=client, progress=False)
        wall = time.perf_counter() - t0
        workers = list(client.run(_peak_rss).values())
        limit = min(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
        t0 = time.perf_counter()
        pipeline.open_result(store).marginal_std(client=client, progress=False)
        again = time.perf_counter() - t0
    var = np.asarray(std) ** 2
    np.save(out, var)
    return {"wall_s": wall, "again_s": again, "driver_peak": _peak_rss(), "worker_peaks": workers,
            "limit": limit}  # fmt: skip


def way_dask(store: str, out: str, memory: str, tile: int) -> dict:
    import dask.array as da
    import zarr
    from distributed import Client

    import pipeline

    n = pipeline.open_result(store).shape[0]
    # dask's cholesky needs every chunk square, edge chunks too: a divisor of n
    tile = max(d for d in range(1, tile + 1) if n % d == 0)
    square = os.path.join(os.path.dirname(store), "square.zarr")
    shutil.rmtree(square, ignore_errors=True)
    with _cluster(memory) as cluster, Client(cluster) as client:
        t0 = time.perf_counter()
        matrix = da.from_zarr(zarr.open_array(store, path="matrix", mode="r"))
        matrix.rechunk((tile, tile)).to_zarr(square, compute=True)
        rechunk = time.perf_counter() - t0
        a = da.from_zarr(square)
        lower = da.linalg.cholesky(a, lower=True)
        eye = da.eye(n, chunks=tile, dtype=np.float64)
        w = da.linalg.solve_triangular(lower, eye, lower=True)
        status, var = "ok", None
        try:
            var = (w**2).sum(axis=0).compute()
        except Exception as err:  # noqa: BLE001 - a failure is the measurement
            status = f"failed: {type(err).__name__}: {str(err)[:160]}"
        wall = time.perf_counter() - t0
        try:
            workers = list(client.run(_peak_rss).values())
        except Exception:  # noqa: BLE001
            workers = []
        limit = min(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
    shutil.rmtree(square, ignore_errors=True)
    if var is not None:
        np.save(out, var)
    return {"wall_s": wall, "rechunk_s": rechunk, "status": status, "chunk": tile, "driver_peak": _peak_rss(),
            "worker_peaks": workers, "limit": limit}  # fmt: skip


def _fresh(args: list[str], timeout: float, blas_threads: int | None) -> dict:
    """Run one way in a fresh process (and its workers: they inherit the
    environment), with ``blas_threads`` OpenBLAS threads if given; its JSON
    line, or what went wrong."""
    command = [sys.executable, os.path.abspath(__file__), "one", *args]
    env = dict(os.environ)
    if blas_threads:
        env["OPENBLAS_NUM_THREADS"] = str(blas_threads)
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"did not finish in {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        last = proc.stderr.strip().splitlines()[-1:] or [""]
        return {"status": f"exit {proc.returncode}: {last[0][:200]}"}
    return json.loads(lines[-1])


def factor(args) -> None:
    directory = tempfile.mkdtemp(prefix="diffops-factor-", dir=args.dir)
    store = os.path.join(directory, "h.zarr")
    try:
        t0 = time.perf_counter()
        make_store(store, args.n)
        print(f"store written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        runs = {}
        for way in ("numpy", "ours", "dask"):
            extra = [args.worker_memory, str(args.tile)] if way != "numpy" else []
            runs[way] = _fresh([way, store, os.path.join(directory, f"{way}.npy"), *extra],
                               args.timeout, args.blas_threads)  # fmt: skip
            print(way, runs[way], file=sys.stderr)
        reference_path = os.path.join(directory, "numpy.npy")
        reference = np.load(reference_path) if os.path.exists(reference_path) else None
        for way in ("ours", "dask"):
            path = os.path.join(directory, f"{way}.npy")
            if os.path.exists(path) and reference is not None:
                runs[way]["error"] = float(np.max(np.abs(np.load(path) / reference - 1)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    body = _factor_table(args, runs)
    command = (
        f"python benchmarks/bench_uncertainty.py factor --n {args.n} --worker-memory "
        f"{args.worker_memory}"
        + (f" --blas-threads {args.blas_threads}" if args.blas_threads else "")
    )
    write_section("uncertainty-factor", body, command)
    print(body)


def _peaks(run: dict) -> str:
    workers = ", ".join(mb(v) for v in run.get("worker_peaks") or [])
    text = f"driver {mb(run['driver_peak'])}" if "driver_peak" in run else "-"
    return text + (f"; worker {workers}" if workers else "")


def _factor_table(args, runs: dict) -> str:
    n = args.n
    rows = [
        f"### Out-of-core marginal σ, float64 n={n:,} ({n * n * 8 / 1e9:.1f} GB), "
        f"{args.worker_memory} worker"
        + (f", {args.blas_threads} BLAS thread(s) per process" if args.blas_threads else "")
        + "\n",
        "| way | wall | peak RSS (VmHWM, MB) | under the worker limit | max rel. error of "
        "diag(H⁻¹) vs numpy | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    numpy_run = runs["numpy"]
    rows.append(
        f"| numpy in memory (cholesky + triangular inverse) | {numpy_run.get('wall_s', 0):.1f} s "
        f"(+{numpy_run.get('read_s', 0):.1f} s reading H) | {_peaks(numpy_run)} | (no limit) | "
        f"reference | {numpy_run.get('status', 'ok')} |"
    )
    for way, name in (
        ("ours", "diffops tiles (Result.marginal_std)"),
        ("dask", "dask.array.linalg"),
    ):
        run = runs[way]
        peaks = run.get("worker_peaks") or []
        under = ("yes" if max(peaks) < run["limit"] else "NO") if peaks else "-"
        note = run.get("status", "ok")
        if way == "ours" and "again_s" in run:
            note += f"; second call {run['again_s']:.2f} s (stored factor)"
        if way == "dask" and "rechunk_s" in run:
            note += (
                f"; chunks {run['chunk']}² (a divisor of n: dask needs every chunk square); "
                f"of which rechunk through Zarr {run['rechunk_s']:.1f} s"
            )
        wall = f"{run['wall_s']:.1f} s" if "wall_s" in run else "-"
        error = f"{run['error']:.1e}" if "error" in run else "-"
        rows.append(f"| {name} | {wall} | {_peaks(run)} | {under} | {error} | {note} |")
    return "\n".join(rows)


# -- Lanczos ------------------------------------------------------------------------


def lanczos(args) -> None:
    import pipeline

    directory = tempfile.mkdtemp(prefix="diffops-lanczos-", dir=args.dir)
    store = os.path.join(directory, "h.zarr")
    try:
        make_store(store, args.n, spread=True)
        result = pipeline.open_result(store)
        t0 = time.perf_counter()
        spec = result.spectrum(k=6, progress=False)  # factorises, then shift-invert
        t_spec = time.perf_counter() - t0
        eigh_times, again_times = [], []
        for _ in range(args.repeats):  # interleaved, medians
            t0 = time.perf_counter()
            eig = np.linalg.eigvalsh(result.assemble())
            eigh_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            again = result.spectrum(k=6, progress=False)  # the factor is stored
            again_times.append(time.perf_counter() - t0)
        t_eigh, t_again = statistics.median(eigh_times), statistics.median(again_times)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def err(values, exact):
        k = len(values)
        return float(np.max(np.abs(np.asarray(values) / exact[:k] - 1))) if k else float("nan")

    top, bottom = eig[::-1], eig
    rows = [
        f"### Lanczos extreme eigenvalues vs numpy eigvalsh, float64 n={args.n:,}\n",
        f"Spectrum: diag(d) + U Uᵀ, d spanning 1e-2..1e2; condition {eig[-1] / eig[0]:.3g}.\n",
        "| method | wall | largest: found, max rel. error | smallest: found, max rel. error "
        "| products |",
        "| --- | --- | --- | --- | --- |",
        f"| numpy eigvalsh (all {args.n}; median of {args.repeats}) | {t_eigh:.1f} s | all, exact reference | all | - |",
        f"| Result.spectrum, first call (factorises; large end by Lanczos on M, small end "
        f"by shift-invert) | {t_spec:.1f} s | {len(spec['largest'])}, "
        f"{err(spec['largest'], top):.1e} | {len(spec['smallest'])}, "
        f"{err(spec['smallest'], bottom):.1e} | {spec['matvecs']} |",
        f"| Result.spectrum, again (factor stored; median of {args.repeats}) | {t_again:.1f} s | "
        f"{len(again['largest'])}, {err(again['largest'], top):.1e} | "
        f"{len(again['smallest'])}, {err(again['smallest'], bottom):.1e} | {again['matvecs']} |",
    ]
    body = "\n".join(rows)
    write_section("uncertainty-lanczos", body,
                  f"python benchmarks/bench_uncertainty.py lanczos --n {args.n} --repeats {args.repeats}")  # fmt: skip
    print(body)


def one(argv: list[str]) -> None:
    way, store, out, *extra = argv
    if way == "numpy":
        result = way_numpy(store, out)
    elif way == "ours":
        result = way_ours(store, out, extra[0])
    else:
        result = way_dask(store, out, extra[0], int(extra[1]))
    print(json.dumps(result))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("factor")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--worker-memory", default="1GB")
    p.add_argument("--tile", type=int, default=2048)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--blas-threads", type=int, help="OPENBLAS_NUM_THREADS of every process")
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.set_defaults(run=factor)
    p = sub.add_parser("lanczos")
    p.add_argument("--n", type=int, default=8000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=tempfile.gettempdir())
    p.set_defaults(run=lanczos)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
