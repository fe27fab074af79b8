"""Run a workflow spec with one dask worker per GPU of this machine (dask-cuda).

    pip install -e ".[gpu]"                          # CUDA jax and dask-cuda
    python workflows/gpu_local.py workflows/psf_large.yaml        # run, then stop
    python workflows/gpu_local.py --serve                          # keep a cluster up:
    diffops run workflows/psf_large.yaml --scheduler tcp://127.0.0.1:8786   # from elsewhere

Each worker sees one GPU (``CUDA_VISIBLE_DEVICES``, set by dask-cuda) and gets
JAX's environment before it imports JAX, through the nanny's pre-spawn
environment: ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (without it the first
worker's JAX takes 75% of a GPU's memory at start) and the malloc settings of
`pipeline.local_cluster`. With one GPU, the embedded default
(``diffops run spec.yaml``) is as fast: this is for several.
"""

from __future__ import annotations

import argparse
import sys
import time

import dask

import pipeline
from pipeline.internal import JAX_WORKER_ENV


def cuda_cluster(port: int = 8786, **kwargs):
    """A `dask_cuda.LocalCUDACluster`, one worker per visible GPU, set up for JAX."""
    from dask_cuda import LocalCUDACluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": dict(JAX_WORKER_ENV)}):
        where = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:8787", **kwargs}
        return LocalCUDACluster(scheduler_port=port, **where)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", help="the spec to run (omit with --serve)")
    parser.add_argument("--serve", action="store_true", help="keep the cluster up until Ctrl-C")
    parser.add_argument("--port", type=int, default=8786)
    args = parser.parse_args(argv)
    if not args.serve and not args.spec:
        parser.error("give a spec, or --serve")
    from distributed import Client

    with cuda_cluster(args.port) as cluster, Client(cluster) as client:
        print(
            f"scheduler {cluster.scheduler_address}, dashboard {client.dashboard_link}, "
            f"{len(client.scheduler_info()['workers'])} GPU worker(s)",
            file=sys.stderr,
        )
        if args.serve:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        summary = pipeline.run_spec(pipeline.load_spec(args.spec))
    print(summary)
    return 0 if summary.complete else 3


if __name__ == "__main__":
    sys.exit(main())
