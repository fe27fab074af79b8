"""The SLURM example (workflows/slurm.py, issue 10): the job script it submits,
checked without a SLURM cluster (dask-jobqueue only formats it here)."""

import importlib.util
import os
import re

import pytest
from dask.utils import parse_bytes

import pipeline

pytest.importorskip("dask_jobqueue")  # in the test extra: installed wherever the tests run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LOCAL = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}


def _slurm():
    spec = importlib.util.spec_from_file_location(
        "slurm", os.path.join(ROOT, "workflows", "slurm.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def demo(tmp_path):
    text = open(os.path.join(ROOT, "workflows", "demo.yaml")).read()
    path = tmp_path / "demo.yaml"
    path.write_text(text + "env: {PSF_SEED: '7'}\npython_path: [models]\n")
    return pipeline.load_spec(str(path))


@pytest.mark.parametrize("gpus", [0, 1])
def test_the_job_script_sets_memory_jax_env_and_model_path(demo, gpus):
    slurm = _slurm()
    with slurm.slurm_cluster(
        demo, cores=8, memory="32GB", walltime="02:00:00", gpus=gpus, scheduler_options=LOCAL
    ) as cluster:
        script = cluster.job_script()
    assert "tcp://127.0.0.1:" in script  # the test's scheduler binds 127.0.0.1 only
    mem = re.search(r"#SBATCH --mem=(\d+)G", script)
    limit = re.search(r"--memory-limit ([0-9.]+\w+)", script)
    assert mem and limit, script
    worker_limit = parse_bytes(limit.group(1))
    assert abs(worker_limit - parse_bytes("32GB")) / parse_bytes("32GB") < 0.01
    assert worker_limit <= int(mem.group(1)) * 2**30  # the job holds what the worker may use
    assert re.search(r"--nthreads 8\b", script) and "--cpus-per-task=8" in script
    assert "export MALLOC_MMAP_THRESHOLD_=" in script and "export JAX_ENABLE_X64=1" in script
    assert "export PSF_SEED=7" in script  # the spec's env
    dirs = re.search(r"export PYTHONPATH=(\S+)", script).group(1).split(os.pathsep)
    assert os.path.dirname(demo.path) in dirs and dirs[-1] == "$PYTHONPATH"
    assert any(d.endswith("models") for d in dirs)
    if gpus:
        assert "#SBATCH --gres=gpu:1" in script
        assert "export XLA_PYTHON_CLIENT_PREALLOCATE=false" in script
    else:
        assert "--gres" not in script and "XLA_PYTHON_CLIENT_PREALLOCATE" not in script
        assert "export JAX_PLATFORMS=cpu" in script


def test_print_script_runs_as_the_docs_say(capsys):
    slurm = _slurm()
    code = slurm.main(
        [
            os.path.join(ROOT, "workflows", "demo.yaml"),
            "--cores",
            "4",
            "--memory",
            "8GB",
            "--walltime",
            "00:30:00",
            "--print-script",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("#!/usr/bin/env bash") and "#SBATCH -t 00:30:00" in out
    assert "tcp://127.0.0.1:" in out
