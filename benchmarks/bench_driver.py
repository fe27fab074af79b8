"""The driver's memory per step of a spec's run (issue 25 item 14): how much a
login node must hold to run ``workflows/fisher_1m.yaml``, on the embedded
default and with a cluster (where the self-check, the checks and σ are tasks
on the workers).

    python benchmarks/bench_driver.py [--spec workflows/fisher_1m.yaml] [--repeats 1]

Each case runs in a fresh process, as ``diffops run`` does: `pipeline.run_spec`
with ``stage_peaks=True``, so each step's peak is the process's VmHWM reset as
the step began (``/proc/self/clear_refs``), into a new store in a temporary
directory (its σ file beside it). The cluster case is ``--workers 1``: one
worker process on this machine (a LocalCluster, as ``diffops run --workers 1``
starts it), whose peak is its own VmHWM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
from report import HERE, mb, write_section

STEPS = ("load", "plan", "blocks", "self-check", "checks", "std")

#: label: (workers, the store's directory): the third reruns the first's store
#: in a fresh process, with nothing left to do.
CASES = {
    "embedded (no cluster)": (0, "embedded"),
    "cluster (--workers 1)": (1, "cluster"),
    "nothing to do (embedded, again)": (0, "embedded"),
}


def one(spec_path: str, workers: int, where: str) -> dict:
    """The spec into the store in the directory ``where`` (its σ file beside
    it), in this (fresh) process."""
    import pipeline

    spec = pipeline.load_spec(spec_path)
    finalize = spec.finalize.model_copy(update={"std": os.path.join(where, "std.npz")})
    spec = spec.model_copy(update={"output": os.path.join(where, "f.zarr"),
                                   "finalize": finalize})  # fmt: skip
    summary = pipeline.run_spec(spec, workers=workers or None, progress=False,
                                stage_peaks=True)  # fmt: skip
    check = (summary.sparsity or {}).get("check", {})
    return {
        "stages": {s["name"]: [s["seconds"], s["peak_bytes"]] for s in summary.stages},
        "alone": all(s["alone"] for s in summary.stages),
        "peak": summary.peak_rss_driver,
        "worker": summary.peak_rss_worker,
        "wall": summary.wall_s,
        "n": summary.shape[0],
        "where": check.get("where", ""),
        "reason": summary.reason,
        "process": time.time() - psutil.Process().create_time(),  # imports included
    }


def _fresh(spec_path: str, workers: int, where: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--one", spec_path, "--workers", str(workers), "--where",
         where],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip().splitlines()[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(runs: list[dict], name: str, i: int) -> float | None:
    values = [r["stages"][name][i] for r in runs if name in r["stages"]]
    return statistics.median(values) if values else None


def _row(label: str, runs: list[dict]) -> str:
    cells = [label]
    for name in STEPS:
        s, peak = _median(runs, name, 0), _median(runs, name, 1)
        cells.append("—" if s is None else f"{s:.1f} s / {mb(peak)}")
    worker = [r["worker"] for r in runs if r["worker"]]
    cells += [mb(statistics.median(r["peak"] for r in runs)),
              mb(statistics.median(worker)) if worker else "—",
              f"{statistics.median(r['wall'] for r in runs):.1f}",
              f"{statistics.median(r['process'] for r in runs):.1f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spec", default=os.path.join(os.path.dirname(HERE), "workflows",
                                                       "fisher_1m.yaml"))  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--one", default=None)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--where", default=None)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.workers, args.where)))
        return
    os.makedirs(os.path.join(HERE, "_out"), exist_ok=True)
    found: dict[str, list[dict]] = {k: [] for k in CASES}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="diffops-bench-",
                                         dir=os.path.join(HERE, "_out")) as tmp:  # fmt: skip
            for label, (workers, store) in CASES.items():
                where = os.path.join(tmp, store)
                os.makedirs(where, exist_ok=True)
                found[label].append(_fresh(args.spec, workers, where))
    for label, runs in found.items():
        assert all(r["alone"] for r in runs), "the peak could not be reset: not Linux?"
        print(label, json.dumps(runs))
    again = found["nothing to do (embedded, again)"]
    assert all(r["reason"] == "complete: nothing to do" for r in again), again
    n = next(iter(found.values()))[0]["n"]
    header = ["where", *STEPS, "driver peak MB", "worker peak MB", "run s", "process s"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += [_row(label, runs) for label, runs in found.items()]
    spec = os.path.relpath(args.spec, os.path.dirname(HERE))
    body = (
        f"### The driver's memory per step: `{spec}` (n = {n:,})\n\n"
        "Each case in a fresh process, through `pipeline.run_spec(..., stage_peaks=True)` as "
        "`diffops run` runs it, into a new store. Each step: its seconds / the driver's peak "
        "during it in MB (VmHWM, reset as the step began). *load*: importing the model and "
        "its point; *plan*: tracing, detection, colouring and sizing (on the driver in both "
        "cases); *blocks*: opening the store and the products (in the driver's process on "
        "the embedded default); *self-check*, *checks*, *std*: on the embedded default in "
        "the driver, with a cluster as one task each on a worker (the driver then holds no "
        "nnz-sized matrix). Worker peak: the largest worker's VmHWM at the end of the run. "
        "*Nothing to do*: the first case's complete store, run again in a fresh process (the "
        "pattern read from the store, no kernel compiled, the checks and σ file current). Run "
        "s: `run_spec` (its load step is the model's own import: building the 1024² model and "
        "its data); process s: the whole process, Python's imports of jax and the pipeline "
        "included. "
        f"Median of {args.repeats} run(s).\n\n" + "\n".join(lines)
    )
    write_section("driver-stages", body,
                  f"python benchmarks/bench_driver.py --repeats {args.repeats}")  # fmt: skip
    print(body)


if __name__ == "__main__":
    main()
