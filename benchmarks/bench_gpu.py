"""GPU benchmark: one command, no network, installs nothing, under 5 minutes.

    python benchmarks/bench_gpu.py --out DIR          # on a GPU machine
    python benchmarks/bench_gpu.py --quick --out DIR  # a small dry run (any device)

1. In memory, side by side: `diffops_core.hessian` vs `jax.jit(jax.hessian)` vs
   `zodiax.diffops.hessian` (skipped if zodiax is not installed) on the MLP
   (n=2632) and on the PSF fit at 128x128 pixels (n=16408), each in a fresh
   process: first call, median of 3 steady calls, peak device memory where the
   backend reports it. Out-of-memory is reported as such.
2. The pipeline with the embedded default on the GPU, writing to local disk, on
   the PSF fit at 128x128 (compute-heavy FFTs; the MLP with --quick): per-block
   kernel, device-to-host and write time, the device busy fraction (union of
   kernel intervals over the blocks' wall time; target >= 80%), columns/s.
3. The largest n that fits: in memory (the banded-plus-low-rank f at growing n
   until the device runs out of memory) and through the pipeline (bounded by
   free disk: n = sqrt(free / 4) for float32).

Writes ``results.json`` and ``results.md`` into --out (and prints the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _fresh(config: dict, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "run_one.py"), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()
        message = tail[-1] if tail else "failed"
        if "RESOURCE_EXHAUSTED" in proc.stderr or "out of memory" in proc.stderr.lower():
            message = "out of device memory"
        return {**config, "error": message[:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def in_memory(problems, timeout):
    rows = []
    for problem, nbatches in problems:
        for impl, kwargs in (
            ("diffops", {"nbatches": nbatches}),
            ("jax", {}),
            ("zodiax", {"nbatches": nbatches}),
        ):
            if impl == "zodiax":
                try:
                    import zodiax  # noqa: F401
                except ImportError:
                    rows.append({"problem": problem, "impl": impl, "error": "zodiax not installed"})
                    continue
            res = _fresh(
                {"problem": problem, "impl": impl, "kwargs": kwargs, "repeats": 3}, timeout
            )
            rows.append(res)
            print(json.dumps({k: v for k, v in res.items() if k != "times_s"}), file=sys.stderr)
    return rows


def pipeline_run(problem, block_size, directory):
    import jax
    from bench_pipeline import disk_write_speed

    import pipeline
    from problems import PROBLEMS

    f, x, _ = PROBLEMS[problem]()
    n = int(sum(v.size for v in jax.tree_util.tree_leaves(x)))
    store = tempfile.mkdtemp(prefix="diffops-gpu-", dir=directory) + "/h.zarr"
    disk = disk_write_speed(directory, 1 << 30)
    try:
        t = time.perf_counter()
        timings = pipeline.Timings()
        pipeline.hessian_to_zarr(
            f, x, store, block_size=block_size, progress=False, threads=2, callbacks=[timings]
        )
        wall = time.perf_counter() - t
        blocks = len(timings.events)
        return {
            "problem": problem,
            "n": n,
            "block_size": block_size,
            "blocks": blocks,
            "wall_s": wall,
            "pipeline_s": timings.seconds,
            "kernel_s_per_block": timings.total("kernel_s") / blocks,
            "d2h_s_per_block": timings.total("d2h_s") / blocks,
            "write_s_per_block": timings.total("write_s") / blocks,
            "device_busy_fraction": timings.busy_fraction(),
            "columns_per_s": n / timings.seconds,
            "gb_written": n * n * 4 / 1e9,
            "raw_disk_mb_s": disk / 1e6,
            "device": jax.devices()[0].device_kind,
        }
    finally:
        shutil.rmtree(os.path.dirname(store), ignore_errors=True)


def largest_in_memory(sizes):
    """Largest n whose float32 Hessian the in-memory API computes on the device."""
    import jax
    from bench_pipeline import make_banded_low_rank

    import diffops_core as dc
    import diffops_core.internal as dci

    best, tried = None, []
    for n in sizes:
        f, x, _ = make_banded_low_rank(n)
        try:
            H, _ = dc.hessian(f, jax.device_put(x), block_size=min(n, 4096))
            H.block_until_ready()
            del H
            best = n
            tried.append((n, "ok"))
        except Exception as err:  # noqa: BLE001 - out of memory ends the search
            tried.append((n, type(err).__name__))
            break
        finally:
            dci.clear_cache()
    return best, tried


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=os.path.join(HERE, "_out", "gpu"))
    parser.add_argument("--quick", action="store_true", help="small sizes (a dry run)")
    parser.add_argument("--disk", default=None, help="directory for the pipeline's store")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    import jax

    device = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}"
    problems = [("mlp", 128)] if args.quick else [("mlp", 128), ("psf128", 16)]
    results = {"device": device, "in_memory": in_memory(problems, 240)}
    disk_dir = args.disk or args.out
    problem, block = ("mlp", 256) if args.quick else ("psf128", 1024)
    results["pipeline"] = pipeline_run(problem, block, disk_dir)
    sizes = [2000, 4000] if args.quick else [32768, 65536, 98304, 131072]
    best, tried = largest_in_memory(sizes)
    free = shutil.disk_usage(disk_dir).free
    results["largest_n"] = {
        "in_memory": best,
        "tried": tried,
        "pipeline_disk_bound": int(math.sqrt(free / 4)),
        "free_disk_gb": free / 1e9,
    }
    results["seconds"] = time.perf_counter() - t0
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    lines = [
        f"GPU benchmark on {device} ({results['seconds']:.0f} s)",
        "",
        "| problem | implementation | first call s | steady median s | peak RSS MB | note |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["in_memory"]:
        if "error" in r:
            lines.append(f"| {r['problem']} | {r['impl']} | | | | {r['error']} |")
        else:
            lines.append(
                f"| {r['problem']} | {r['impl']} | {r['first_s']:.2f} | {r['median_s']:.3f} | "
                f"{r['peak_rss'] / 1e6:.0f} | |"
            )
    p = results["pipeline"]
    lines += [
        "",
        f"Pipeline, {p['problem']} n={p['n']} ({p['gb_written']:.1f} GB), block {p['block_size']}: "
        f"{p['columns_per_s']:.0f} columns/s; per block kernel {p['kernel_s_per_block'] * 1e3:.1f} ms, "
        f"device-to-host {p['d2h_s_per_block'] * 1e3:.1f} ms, write {p['write_s_per_block'] * 1e3:.1f} ms; "
        f"device busy {100 * p['device_busy_fraction']:.0f}% (target >= 80%); raw disk "
        f"{p['raw_disk_mb_s']:.0f} MB/s.",
        f"Largest n in memory: {best} (tried {tried}); through the pipeline, bounded by "
        f"{free / 1e9:.0f} GB free disk: n = {results['largest_n']['pipeline_disk_bound']}.",
    ]
    text = "\n".join(lines)
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
