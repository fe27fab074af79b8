"""Pipeline benchmarks: overhead against the in-memory API, and out-of-core runs.

    python benchmarks/bench_pipeline.py overhead              # MLP n=2632, block 128
    python benchmarks/bench_pipeline.py outofcore --n 40000 --worker-memory 2GB
    python benchmarks/bench_pipeline.py outofcore --n 90000 --worker-memory 3GB --section larger-than-ram
    python benchmarks/bench_pipeline.py memory                # predicted vs measured worker peaks

``outofcore`` computes the Hessian of a cheap banded-plus-low-rank function
(H = diag(d) + a tridiagonal band + U U^T, known in closed form, so sampled
entries are checked) with a LocalCluster whose workers have a bounded memory
limit, and reports every process's peak RSS, wall time, columns/s, and the write
throughput beside the raw disk write speed measured in the same run. It checks
free disk space first and deletes its store afterwards (unless --keep).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from diffops_core.internal import peak_rss as _peak_rss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import mb, write_section


def _row(*cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


# -- overhead -----------------------------------------------------------------------


def _overhead_case(problem, block, repeats, directory, dtype=None):
    """In-memory vs the embedded default on one problem, interleaved run by run
    (the machine is noisy: side by side, then medians)."""
    import jax

    import diffops_core as dc
    import pipeline
    from problems import PROBLEMS

    f, x, _ = PROBLEMS[problem]()
    # the problems build float32 points; the float64 rows cast them, as a spec's
    # `dtype: float64` does (x64 alone leaves a float32 x, and so a float32 matrix)
    x = jax.tree_util.tree_map(lambda v: np.asarray(v, dtype), x)
    tmp = tempfile.mkdtemp(prefix="diffops-bench-", dir=directory)
    memory, piped, timings = [], [], []
    try:
        for i in range(repeats + 1):  # the first of each is warm-up (compiles)
            t = time.perf_counter()
            jax.block_until_ready(dc.hessian(f, x, block_size=block)[0])
            t_mem = time.perf_counter() - t
            timing = pipeline.Timings()
            t = time.perf_counter()
            pipeline.hessian_to_zarr(
                f,
                x,
                os.path.join(tmp, f"s{i}.zarr"),
                block_size=block,
                progress=False,
                callbacks=[timing],
            )
            t_pipe = time.perf_counter() - t
            shutil.rmtree(os.path.join(tmp, f"s{i}.zarr"), ignore_errors=True)
            if i:
                memory.append(t_mem)
                piped.append(t_pipe)
                timings.append(timing)
            print(
                f"{problem}:{block} run {i}: memory {t_mem:.3f}s pipeline {t_pipe:.3f}s",
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return memory, piped, timings


def overhead(args):
    """The embedded default against the in-memory API: ratio, per-block fixed
    cost, and the share of host work (copies, checksums, writes) hidden behind kernels."""
    import jax

    lines = [
        _row(
            "problem",
            "block",
            "blocks",
            "in-memory s",
            "pipeline s",
            "ratio",
            "fixed cost ms/block",
            "host work s",
            "hidden behind kernels",
        ),
        _row(*["---"] * 9),
    ]
    os.makedirs(args.dir, exist_ok=True)
    for case in args.cases:
        problem, block = case.split(":")
        block = int(block)
        # the demo runs in float64; "psf32" is the same model in float32
        x64 = problem.startswith("psf") and problem != "psf32"
        problem = "psf" if problem == "psf32" else problem
        with jax.enable_x64(x64):
            dtype = np.float64 if x64 else None
            memory, piped, timings = _overhead_case(problem, block, args.repeats, args.dir, dtype)
        mem, pipe = statistics.median(memory), statistics.median(piped)
        ratios = [p / m for p, m in zip(piped, memory)]
        blocks = len(timings[0].events)
        fixed = 1000 * (pipe - mem) / blocks
        host = statistics.median(
            sum(e.total_s - e.compile_s - e.kernel_s for e in t.events) for t in timings
        )
        exposed = statistics.median(max(0.0, t.seconds - t.busy_seconds()) for t in timings)
        hidden = 1 - min(1.0, exposed / host) if host > 0 else 1.0
        lines.append(
            _row(
                problem + (" (float64)" if x64 else " (float32)" if problem == "psf" else ""),
                block,
                blocks,
                f"{mem:.3f}",
                f"{pipe:.3f}",
                f"{statistics.median(ratios):.2f}x",
                f"{fixed:.1f}",
                f"{host:.3f}",
                f"{hidden:.0%}",
            )
        )
    body = (
        "### Pipeline overhead: the embedded default vs in-memory `diffops_core.hessian`\n\n"
        f"Median of {args.repeats} warm runs each, in-memory and pipeline interleaved run by run "
        "(ratio: median of the per-run ratios), each pipeline run into a new store. Fixed cost "
        "= (pipeline - in-memory) / blocks. Host work = the tasks' time outside their kernel "
        "(device-to-host copy, checksum, slab and record writes); hidden = 1 - (run time with "
        "no kernel running) / host work: the share of it overlapped with kernels.\n\n"
        + "\n".join(lines)
    )
    write_section(
        "pipeline-overhead",
        body,
        "python benchmarks/bench_pipeline.py overhead --cases "
        + " ".join(args.cases)
        + f" --repeats {args.repeats}",
    )
    print(body)


def executors(args):
    import jax
    from distributed import Client

    import diffops_core as dc
    import pipeline
    from problems import make_mlp

    f, x, _ = make_mlp()
    x = jax.tree_util.tree_map(np.asarray, x)
    block = args.block_size
    tmp = tempfile.mkdtemp(prefix="diffops-bench-", dir=args.dir)
    counter = [0]

    def fresh():
        counter[0] += 1
        return os.path.join(tmp, f"s{counter[0]}.zarr")

    def timed(fn, repeats):
        fn()  # warm: compiles
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    rows = []
    base = timed(lambda: jax.block_until_ready(dc.hessian(f, x, block_size=block)[0]), args.repeats)
    rows.append(("in-memory diffops_core.hessian", base))
    print(f"in-memory {base:.3f}s", file=sys.stderr)
    for threads in (1, 2):
        t = timed(
            lambda: pipeline.hessian_to_zarr(
                f, x, fresh(), block_size=block, threads=threads, progress=False
            ),
            args.repeats,
        )
        rows.append((f"pipeline, embedded default (threads={threads})", t))
        print(f"embedded threads={threads} {t:.3f}s", file=sys.stderr)
    from distributed import LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        t = timed(
            lambda: pipeline.hessian_to_zarr(
                f, x, fresh(), block_size=block, client=client, progress=False
            ),
            args.repeats,
        )
    rows.append(("pipeline, warm in-process LocalCluster(processes=False, 2 threads)", t))
    print(f"in-process cluster {t:.3f}s", file=sys.stderr)
    for workers in (1, 2):
        with (
            pipeline.local_cluster(workers, memory_limit="6GiB", dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            t = timed(
                lambda: pipeline.hessian_to_zarr(
                    f, x, fresh(), block_size=block, client=client, progress=False
                ),
                args.repeats,
            )
        rows.append(
            (f"pipeline, warm LocalCluster({workers} worker{'s' * (workers > 1)}, 1 thread)", t)
        )
        print(f"cluster {workers} {t:.3f}s", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    lines = [_row("executor", "median s", "vs in-memory"), _row("---", "---", "---")]
    lines += [_row(name, f"{t:.3f}", f"{t / base:.2f}x") for name, t in rows]
    body = (
        f"### Executors compared: MLP Hessian n=2632, block_size={block} "
        f"(median of {args.repeats} warm runs, each into a new store)\n\n" + "\n".join(lines)
    )
    write_section(
        "pipeline-executors",
        body,
        f"python benchmarks/bench_pipeline.py executors --block-size {block}",
    )
    print(body)


def threads(args):
    """Embedded default: 1 vs 2 threads on an I/O-heavy Hessian (writes dominate)."""
    import pipeline

    f, x, _ = make_banded_low_rank(args.n)
    os.makedirs(args.dir, exist_ok=True)
    store = os.path.join(args.dir, "threads.zarr")
    times = {1: [], 2: []}
    for count in (1, 2) * args.repeats:
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        pipeline.hessian_to_zarr(f, x, store, block_size=256, threads=count, progress=False)
        times[count].append(time.perf_counter() - t)
    shutil.rmtree(store, ignore_errors=True)
    lines = [_row("threads", "median s", "runs s"), _row("---", "---", "---")]
    lines += [
        _row(k, f"{statistics.median(v):.2f}", ", ".join(f"{t:.2f}" for t in v))
        for k, v in times.items()
    ]
    body = (
        f"### Embedded default, threads: banded-plus-low-rank Hessian n={args.n:,} "
        f"({args.n * args.n * 4 / 1e9:.1f} GB, block 256), writes dominate\n\n" + "\n".join(lines)
    )
    write_section(
        "pipeline-threads",
        body,
        f"python benchmarks/bench_pipeline.py threads --n {args.n} --repeats {args.repeats}",
    )
    print(body)


# -- out of core --------------------------------------------------------------------


def make_banded_low_rank(n: int, rank: int = 8):
    """f with H = diag(d) + band(c) + U U^T, and a function giving H's columns."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    d = (2.0 + rng.random(n)).astype(np.float32)
    c = (0.1 * rng.standard_normal(n - 1)).astype(np.float32)
    U = (rng.standard_normal((n, rank)) / np.sqrt(rank)).astype(np.float32)

    def f(x):
        Ux = jnp.asarray(U).T @ x
        return (
            0.5 * jnp.sum(jnp.asarray(d) * x**2)
            + jnp.sum(jnp.asarray(c) * x[:-1] * x[1:])
            + 0.5 * jnp.sum(Ux**2)
        )

    def column(j):
        col = U @ U[j]
        col[j] += d[j]
        if j > 0:
            col[j - 1] += c[j - 1]
        if j < n - 1:
            col[j + 1] += c[j]
        return col

    return f, np.zeros(n, np.float32) + 0.1, column


def disk_write_speed(directory: str, nbytes: int = 1 << 30) -> float:
    """Bytes/s of writing ``nbytes`` in 64 MiB pieces and fsyncing, in ``directory``."""
    path = os.path.join(directory, "diskspeed.tmp")
    piece = np.random.default_rng(0).bytes(64 << 20)
    t = time.perf_counter()
    with open(path, "wb") as fh:
        for _ in range(nbytes // len(piece)):
            fh.write(piece)
        fh.flush()
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - t
    os.unlink(path)
    return nbytes / seconds


def _dir_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _dirs, files in os.walk(path)
        for name in files
    )


def outofcore(args):
    from distributed import Client

    import diffops_core.internal as dci
    import pipeline

    n = args.n
    nbytes = n * n * 4
    os.makedirs(args.dir, exist_ok=True)
    free = shutil.disk_usage(args.dir).free
    need = int(nbytes * 1.05) + (1 << 30)
    if free < need:
        sys.exit(
            f"bench_pipeline: need {dci.format_bytes(need)} free in {args.dir} for n={n} "
            f"(H is {dci.format_bytes(nbytes)}), only {dci.format_bytes(free)} free; "
            "use a smaller --n or another --dir"
        )
    import psutil

    total_ram = psutil.virtual_memory().total
    store = tempfile.mkdtemp(prefix="diffops-ooc-", dir=args.dir) + "/h.zarr"
    f, x, column = make_banded_low_rank(n)
    disk = disk_write_speed(args.dir)
    print(
        f"raw disk write {disk / 1e6:.0f} MB/s; H {nbytes / 1e9:.1f} GB; "
        f"RAM {total_ram / 1e9:.1f} GB",
        file=sys.stderr,
    )
    try:
        with (
            pipeline.local_cluster(
                args.workers,
                memory_limit=args.worker_memory,
                threads_per_worker=args.threads,
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
        ):
            t = time.perf_counter()
            timings = pipeline.Timings()
            result = pipeline.hessian_to_zarr(
                f,
                x,
                store,
                block_size=args.block_size,
                client=client,
                progress=True,
                callbacks=[timings],
            )
            wall = time.perf_counter() - t
            worker_peaks = client.run(_peak_rss)
            limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        written = _dir_bytes(os.path.join(store, "matrix"))
        status = result.status()
        rng = np.random.default_rng(1)
        checked = rng.choice(n, size=4, replace=False)
        for j in checked:  # exact columns from the closed form
            got = np.asarray(result.array[:, int(j)].compute())
            np.testing.assert_allclose(got, column(int(j)), rtol=1e-4, atol=1e-4)
        bad = result.verify() if args.verify else None
    finally:
        if not args.keep:
            shutil.rmtree(os.path.dirname(store), ignore_errors=True)
    lines = [
        _row("figure", "value"),
        _row("---", "---"),
        _row("n, H size (float32)", f"{n:,}, {nbytes / 1e9:.1f} GB"),
        _row("machine RAM", f"{total_ram / 1e9:.1f} GB"),
        _row(
            "workers x threads, memory limit each",
            f"{args.workers} x {args.threads}, {mb(min(limits))} MB",
        ),
        _row(
            "block size, blocks",
            f"{args.block_size}, {status['blocks_total']} ({status['blocks_done']} complete)",
        ),
        _row("wall time", f"{wall:.1f} s"),
        _row("columns/s", f"{n / wall:,.0f}"),
        _row(
            "kernel / device-to-host / write time (sum over tasks)",
            f"{timings.total('kernel_s'):.1f} / {timings.total('d2h_s'):.1f} / "
            f"{timings.total('write_s'):.1f} s",
        ),
        _row(
            "bytes on disk (matrix), write throughput",
            f"{written / 1e9:.1f} GB, {written / wall / 1e6:.0f} MB/s",
        ),
        _row("raw disk write speed (1 GiB, fsync, same run)", f"{disk / 1e6:.0f} MB/s"),
        _row("peak RSS, driver", f"{mb(_peak_rss())} MB"),
        _row("peak RSS, each worker", ", ".join(f"{mb(v)} MB" for v in worker_peaks.values())),
        _row(
            "worker peak under its limit",
            "yes" if max(worker_peaks.values()) < min(limits) else "NO",
        ),
        _row("sampled columns vs closed form", f"{len(checked)} columns equal (rtol 1e-4)"),
    ]
    if bad is not None:
        lines.append(_row("verify (all checksums)", "all good" if not bad else f"bad: {bad}"))
    title = (
        args.title
        or f"Out of core: Hessian n={n:,} ({nbytes / 1e9:.1f} GB) with {args.worker_memory} workers"
    )
    body = f"### {title}\n\n" + "\n".join(lines)
    command = (
        f"python benchmarks/bench_pipeline.py outofcore --n {n} --worker-memory "
        f"{args.worker_memory} --workers {args.workers} --block-size {args.block_size}"
        + (" --verify" if args.verify else "")
        + (f" --section {args.section}" if args.section != "pipeline-outofcore" else "")
        + (f" --title '{args.title}'" if args.title else "")
    )
    write_section(args.section, body, command)
    print(body)


def memory(args):
    """Predicted vs measured worker peak (VmHWM) under worker memory limits."""
    from distributed import Client

    import diffops_core.internal as dci
    import pipeline
    from pipeline import DistributedExecutor
    from pipeline.internal import executor_limits as _limits
    from pipeline.internal import task_bytes

    n = args.n
    f, x, column = make_banded_low_rank(n)
    os.makedirs(args.dir, exist_ok=True)
    lines = [
        _row(
            "worker limit",
            "blocking",
            "block",
            "baseline MB (measured)",
            "task MB (XLA + 2 slabs)",
            "predicted peak MB",
            "measured peak MB (VmHWM)",
            "measured / predicted",
            "under the limit",
        ),
        _row(*["---"] * 9),
    ]
    ok = True
    for limit in args.limits:
        for blocking in ("default", args.block_size):
            store = tempfile.mkdtemp(prefix="diffops-mem-", dir=args.dir) + "/h.zarr"
            try:
                with (
                    pipeline.local_cluster(
                        1, memory_limit=limit, threads_per_worker=1, dashboard_address=":0"
                    ) as cluster,
                    Client(cluster) as client,
                ):
                    limits = _limits(DistributedExecutor(client))
                    kw = {} if blocking == "default" else {"block_size": blocking}
                    result = pipeline.hessian_to_zarr(
                        f, x, store, client=client, progress=False, **kw
                    )
                    peak = max(client.run(_peak_rss).values())
                    block = result.meta["plan"]["block_size"]
                    j = int(np.random.default_rng(2).integers(n))
                    np.testing.assert_allclose(
                        np.asarray(result.array[:, j].compute()), column(j), rtol=1e-4, atol=1e-4
                    )
                kernels = dci.get_kernels(f, x, "hessian")[0]
                task = task_bytes(kernels, block)[0]
                predicted = limits.peak(task)
                under = peak < limits.limit
                ok = ok and under
                lines.append(
                    _row(
                        limit,
                        blocking,
                        block,
                        mb(limits.baseline),
                        mb(task),
                        mb(predicted),
                        mb(peak),
                        f"{peak / predicted:.2f}",
                        "yes" if under else "NO",
                    )
                )
                print(lines[-1], file=sys.stderr)
            finally:
                shutil.rmtree(os.path.dirname(store), ignore_errors=True)
    title = (
        f"Worker memory: predicted vs measured peak, Hessian n={n:,} "
        f"({n * n * 4 / 1e9:.1f} GB float32), 1 worker x 1 thread"
    )
    body = (
        f"### {title}\n\n" + "\n".join(lines) + "\n\nPredicted = the worker's measured "
        "baseline (jax and the pipeline imported, backend started) + the larger of one "
        "task (XLA's compiled footprint of the block kernel + two host copies of the slab) "
        "and the runtime floor (`WORKER_RUNTIME_BYTES`, 300 MB: what a worker grows to "
        "whatever the block). The default block is the count default (about 16 blocks, "
        "slabs <= 256 MiB) shrunk until the prediction fits 70% of the limit "
        "(distributed pauses a worker at 80% and kills it at 95%)."
    )
    limits_text = " ".join(args.limits)
    write_section(
        args.section,
        body,
        f"python benchmarks/bench_pipeline.py memory --n {n} "
        f"--limits {limits_text} --block-size {args.block_size}"
        + (f" --section {args.section}" if args.section != "pipeline-memory" else ""),
    )
    print(body)
    if not ok:
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("overhead")
    p.add_argument("--cases", nargs="+", default=["mlp:128", "psf:64", "psf:1024"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_out")
    )
    p.set_defaults(fn=overhead)
    p = sub.add_parser("executors")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None)
    p.set_defaults(fn=executors)
    p = sub.add_parser("threads")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_out")
    )
    p.set_defaults(fn=threads)
    p = sub.add_parser("outofcore")
    p.add_argument("--n", type=int, default=40000)
    p.add_argument("--worker-memory", default="2GB")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument(
        "--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_out")
    )
    p.add_argument("--keep", action="store_true")
    p.add_argument("--verify", action="store_true", help="also checksum every block")
    p.add_argument("--section", default="pipeline-outofcore")
    p.add_argument("--title", default=None)
    p.set_defaults(fn=outofcore)
    p = sub.add_parser("memory")
    p.add_argument("--n", type=int, default=30000)
    p.add_argument("--limits", nargs="+", default=["1GB", "1.5GB", "2GB", "4GB"])
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument(
        "--dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_out")
    )
    p.add_argument("--section", default="pipeline-memory")
    p.set_defaults(fn=memory)
    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
