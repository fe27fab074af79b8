"""Run a workflow spec on a SLURM cluster through dask-jobqueue.

Run it on the login node (it is the driver: it starts the dask scheduler there
and submits worker jobs with ``sbatch``)::

    pip install -e ".[cluster]"                      # dask-jobqueue
    python workflows/slurm.py workflows/demo.yaml --jobs 4 --cores 8 --memory 32GB \\
        --walltime 02:00:00 --print-script            # look at the job script first
    python workflows/slurm.py workflows/demo.yaml --jobs 4 --cores 8 --memory 32GB \\
        --walltime 02:00:00                           # then run

GPU nodes: add ``--gpus 1`` (one worker per GPU job, ``--gres=gpu:1``; run as
many jobs as GPUs you want). What each worker job gets:

- one dask worker process with the job's whole memory as its limit (the
  pipeline plans blocks to 70% of it) and ``--cores`` threads for XLA;
- JAX's environment before the worker imports JAX: the malloc settings of
  `pipeline.local_cluster`, ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` on GPU jobs
  (several processes may share a GPU's memory), the spec's ``env``;
- ``PYTHONPATH`` with the spec's import directories, for a model the nodes can
  import (a model beside the spec travels with the task by value anyway; what
  it imports from an installed package must be installed on the nodes, in the
  same environment: ``--python`` names its interpreter).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys

from dask.utils import parse_bytes

import pipeline
from pipeline.internal import JAX_WORKER_ENV


def worker_env(spec: pipeline.Spec, gpus: int) -> dict[str, str]:
    """The environment a worker job exports before it starts (and imports JAX)."""
    env = dict(JAX_WORKER_ENV)
    if not gpus:
        env.pop("XLA_PYTHON_CLIENT_PREALLOCATE")  # a CPU worker allocates as it goes anyway
        env["JAX_PLATFORMS"] = "cpu"
    else:
        env["JAX_PLATFORMS"] = "cuda"  # a node whose CUDA fails must fail, never run on CPU
    if spec.dtype == "float64":
        env["JAX_ENABLE_X64"] = "1"
    env.update(spec.env)
    env["PYTHONPATH"] = os.pathsep.join([*spec.import_dirs(), "$PYTHONPATH"])
    return env


def slurm_cluster(
    spec: pipeline.Spec,
    *,
    cores: int,
    memory: str,
    walltime: str,
    gpus: int = 0,
    queue: str | None = None,
    account: str | None = None,
    python: str | None = None,
    scheduler_options: dict | None = None,
):
    """A `dask_jobqueue.SLURMCluster` whose jobs are one worker each, set up for
    JAX and for ``spec`` (see the module docstring). Scale it with
    ``cluster.scale(jobs=N)``; ``cluster.job_script()`` shows what is submitted."""
    from dask_jobqueue import SLURMCluster

    prologue = [
        f"export {name}={value if name == 'PYTHONPATH' else shlex.quote(value)}"
        for name, value in worker_env(spec, gpus).items()
    ]
    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    job_bytes = parse_bytes(memory)
    return SLURMCluster(
        # one task per worker process: XLA uses every core the job books
        cores=1,
        job_cpu=cores,
        processes=1,
        # the worker's limit leaves room for the nanny and the runtime inside
        # the job's cgroup (SLURM kills the whole job past --mem)
        memory=f"{int(job_bytes * WORKER_SHARE)}B",
        job_mem=f"{job_bytes // 2**20}M",
        walltime=walltime,
        queue=queue,
        account=account,
        python=python or sys.executable,
        job_script_prologue=prologue,
        job_extra_directives=directives,
        # retire each worker before its job's walltime, staggered, so that
        # `adapt` replaces jobs one at a time and a run outlives walltimes
        worker_extra_args=lifetime_args(walltime),
        scheduler_options=scheduler_options or {},
    )


#: The share of a job's memory its worker may use (the rest: nanny, runtime).
WORKER_SHARE = 0.9


def lifetime_args(walltime: str) -> list[str]:
    """``--lifetime`` five minutes (or a tenth) before the walltime, staggered."""
    parts = [int(p) for p in walltime.replace("-", ":").split(":")]
    seconds = 0
    for part, unit in zip(reversed(parts), (1, 60, 3600, 86400), strict=False):
        seconds += part * unit
    margin = min(300, seconds // 10)
    stagger = max(1, min(120, seconds // 20))
    return ["--lifetime", f"{seconds - margin}s", "--lifetime-stagger", f"{stagger}s"]


def scheduler_binding(interface: str | None) -> dict:
    """Where the scheduler listens: the interface the compute nodes use (never
    every interface of a shared login node); its dashboard on loopback only
    (reach it through ``ssh -L 8787:127.0.0.1:8787 login-node``)."""
    where = (
        {"interface": interface}
        if interface
        else {"host": socket.gethostbyname(socket.gethostname())}
    )
    return {**where, "dashboard_address": "127.0.0.1:8787"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--jobs", type=int, default=1, help="worker jobs to submit")
    parser.add_argument("--cores", type=int, required=True, help="cores per job (XLA threads)")
    parser.add_argument("--memory", required=True, help="memory per job, e.g. 32GB")
    parser.add_argument("--walltime", required=True, help="e.g. 04:00:00")
    parser.add_argument("--gpus", type=int, default=0, help="GPUs per job (0 or 1)")
    parser.add_argument("--queue")
    parser.add_argument("--account")
    parser.add_argument("--python", help="the nodes' interpreter (default: this one)")
    parser.add_argument(
        "--interface",
        help="the network interface the compute nodes reach this host on (e.g. ib0); "
        "default: the address of this host's name",
    )
    parser.add_argument("--print-script", action="store_true", help="print the job script and exit")
    args = parser.parse_args(argv)
    parse_bytes(args.memory)  # a bad size fails here, not in a job
    spec = pipeline.load_spec(args.spec)
    # a preview needs no reachable scheduler: keep it (and its dashboard) on this host
    local = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    cluster = slurm_cluster(
        spec,
        cores=args.cores,
        memory=args.memory,
        walltime=args.walltime,
        gpus=args.gpus,
        queue=args.queue,
        account=args.account,
        python=args.python,
        scheduler_options=local if args.print_script else scheduler_binding(args.interface),
    )
    with cluster:
        if args.print_script:
            print(cluster.job_script())
            return 0
        from distributed import Client

        # adapt, not scale: jobs retired before their walltime are replaced
        cluster.adapt(minimum_jobs=args.jobs, maximum_jobs=args.jobs)
        with Client(cluster) as client:
            print(f"dashboard: {client.dashboard_link}", file=sys.stderr)
            client.wait_for_workers(1)
            # the active client is this SLURM cluster: a spec's `cluster:` never
            # starts a local one on the login node beside it
            summary = pipeline.run_spec(spec)
    print(summary)
    return 0 if summary.complete else 3


if __name__ == "__main__":
    sys.exit(main())
