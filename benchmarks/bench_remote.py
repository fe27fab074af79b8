"""Stores on S3 beside local disk (issue 25): a dense and a sparse run to a real
S3 API (moto's server on 127.0.0.1: the protocol and its requests, not a
network's latency), time and bytes written, median of several runs; the
two-writer race on both backends (the second writer refused, the first's
result intact); and the graph a cluster run sends with a large constant.

    .venv/bin/python benchmarks/bench_remote.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

N_DENSE = 1500
N_SPARSE = 20000


def dense_f(x):
    return jnp.sum(jnp.sin(x) ** 2 * jnp.roll(x, 1)) + jnp.sum(x) ** 2 * 1e-3


def sparse_f(x):  # a band of 5: the tridiagonal-like Hessian of a chain
    return jnp.sum(jnp.sin(x[1:] * x[:-1]) ** 2) + jnp.sum(x**4)


def _moto():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{server._server.server_port}",
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    import s3fs

    s3fs.S3FileSystem().mkdir("bench")
    return server


def _written(location) -> int:
    from pipeline.internal import Files

    return sum(Files(location).listing().values())


def _one(f, x, location, **options):
    import pipeline

    t0 = time.perf_counter()
    result = pipeline.hessian_to_zarr(f, x, location, progress=False, **options)
    seconds = time.perf_counter() - t0
    return seconds, result


def runs(tmp: str, repeats: int) -> list[tuple]:
    rows = []
    cases = [
        ("dense", dense_f, jnp.linspace(0.1, 1.0, N_DENSE), {"block_size": 250}),
        ("sparse (auto)", sparse_f, jnp.linspace(0.1, 1.0, N_SPARSE), {"sparsity": "auto"}),
    ]
    for name, f, x, options in cases:
        for backend in ("local", "s3"):
            times, size = [], 0
            for k in range(repeats):
                where = (f"{tmp}/{name[:5]}-{k}.zarr" if backend == "local"
                         else f"s3://bench/{name[:5]}-{k}.zarr")  # fmt: skip
                seconds, result = _one(f, x, where, **options)
                times.append(seconds)
                size = _written(where)
                matrix = result.sparse() if "sparse" in name else result.store.matrix[...]
                assert np.isfinite(
                    np.asarray(matrix.data if hasattr(matrix, "data") else matrix)
                ).all()
            rows.append((name, backend, len(x), statistics.median(times), size))
    return rows


def race(tmp: str) -> list[tuple]:
    """A run holding the store (a block waits on an event), a second writer
    (another computation, overwrite) started meanwhile: refused or not."""
    import pipeline
    from pipeline.internal import BlockTask

    rows = []
    for backend, where in (("local", f"{tmp}/race.zarr"), ("s3", "s3://bench/race.zarr")):
        started, go = threading.Event(), threading.Event()
        original = BlockTask.run_block

        def waiting(self, block, original=original, started=started, go=go):
            if block.index == 1:
                started.set()
                go.wait(300)
            return original(self, block)

        BlockTask.run_block = waiting
        outcome = {}
        x = jnp.linspace(0.1, 1.0, 40)
        first = threading.Thread(target=lambda: outcome.update(
            a=pipeline.hessian_to_zarr(dense_f, x, where, block_size=10, progress=False)))  # fmt: skip
        first.start()
        started.wait(300)
        try:
            pipeline.hessian_to_zarr(sparse_f, x, where, block_size=10, overwrite=True,
                                     progress=False)  # fmt: skip
            refused = "no: both wrote"
        except pipeline.StoreError as err:
            refused = f"refused ({str(err)[:40]}...)"
        go.set()
        first.join()
        BlockTask.run_block = original
        got = np.asarray(outcome["a"].store.matrix[...])
        intact = np.allclose(got, np.asarray(jax.hessian(dense_f)(x)), rtol=1e-4, atol=1e-5)
        rows.append((backend, refused, intact))
    return rows


def graph(repeats: int) -> tuple:
    """The largest 'Sending large graph' distributed warns of, for a run whose f
    closes over a 16 MB constant (none: under distributed's 10 MB threshold)."""
    from distributed import Client

    import pipeline

    W = np.random.default_rng(0).normal(size=(2000, 2000)).astype(np.float32)
    f = lambda x: 1e-3 * jnp.sum((jnp.asarray(W) @ x) ** 2)
    with pipeline.local_cluster(2, memory_limit="3GiB") as cluster, Client(cluster) as client:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            times = []
            for k in range(repeats):
                t0 = time.perf_counter()
                pipeline.hessian_to_zarr(f, jnp.ones(2000), f"s3://bench/graph-{k}.zarr",
                                         client=client, progress=False, block_size=250)  # fmt: skip
                times.append(time.perf_counter() - t0)
    large = [str(w.message).split("\n")[0] for w in seen if "large graph" in str(w.message)]
    return (large[0] if large else "no large-graph warning"), statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import tempfile

    server = _moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"jax {jax.__version__}, {os.cpu_count()} cores; median of {args.repeats}\n")
            print("| run | backend | n | seconds | bytes written |\n|---|---|---|---|---|")
            for name, backend, n, seconds, size in runs(tmp, args.repeats):
                print(f"| {name} | {backend} | {n} | {seconds:.2f} | {size:,} |")
            print(
                "\n| backend | second writer during a run | first's result intact |\n|---|---|---|"
            )
            for backend, refused, intact in race(tmp):
                print(f"| {backend} | {refused} | {intact} |")
            said, seconds = graph(args.repeats)
            print(f"\ncluster run, f closing over a 16 MB constant (2 workers, S3 store): {said}; "
                  f"{seconds:.2f} s median")  # fmt: skip
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
