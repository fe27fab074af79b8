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
    mem = re.search(r"#SBATCH --mem=(\d+)M", script)
    limit = re.search(r"--memory-limit ([0-9.]+\w+)", script)
    assert mem and limit, script
    worker_limit = parse_bytes(limit.group(1))
    job = int(mem.group(1)) * 2**20
    # issue 25, item 13: the worker's limit leaves room for the nanny in the job
    assert abs(job - parse_bytes("32GB")) / parse_bytes("32GB") < 0.01
    assert 0.85 * job <= worker_limit <= 0.92 * job
    # item 12: one task per worker process, every booked core to XLA
    assert re.search(r"--nthreads 1\b", script) and "--cpus-per-task=8" in script
    # item 13: workers retire before the walltime (2 h), staggered; adapt replaces them
    life = re.search(r"--lifetime (\d+)s --lifetime-stagger (\d+)s", script)
    assert life and 6600 <= int(life.group(1)) < 7200 and int(life.group(2)) > 0
    assert "export MALLOC_MMAP_THRESHOLD_=" in script and "export JAX_ENABLE_X64=1" in script
    assert "export PSF_SEED=7" in script  # the spec's env
    dirs = re.search(r"export PYTHONPATH=(\S+)", script).group(1).split(os.pathsep)
    assert os.path.dirname(demo.path) in dirs and dirs[-1] == "$PYTHONPATH"
    assert any(d.endswith("models") for d in dirs)
    if gpus:
        assert "#SBATCH --gres=gpu:1" in script
        assert "export XLA_PYTHON_CLIENT_PREALLOCATE=false" in script
        assert "export JAX_PLATFORMS=cuda" in script  # item 12: never a silent CPU fallback
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


def test_an_active_client_wins_over_the_specs_cluster(tmp_path, monkeypatch):
    """Item 10: with a spec's ``cluster:`` key, slurm.py's run went to a new
    LocalCluster on the login node instead of the SLURM cluster it had started."""
    import jax.numpy as jnp
    import numpy as np
    from distributed import Client, LocalCluster

    import diffops_core as dc
    from pipeline.internal import workflow_module

    (tmp_path / "am.py").write_text(
        "import jax.numpy as jnp, numpy as np\n"
        "def loss(x): return jnp.sum(jnp.sin(x) ** 3)\n"
        "def best_fit(): return np.linspace(0.1, 1, 6).astype(np.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "spec.yaml"
    path.write_text("operation: hessian\nfunction: am:loss\npoint: am:best_fit\noutput: o.zarr\n"
                    "cluster: {workers: 2}\n")  # fmt: skip
    spec = pipeline.load_spec(str(path))

    def no_new_cluster(*args, **kwargs):
        raise AssertionError("a new local cluster beside the active client")

    monkeypatch.setattr(workflow_module, "local_cluster", no_new_cluster)
    in_process = {"processes": False, "dashboard_address": "127.0.0.1:0"}  # no sockets but it
    with LocalCluster(n_workers=1, **in_process) as cluster, Client(cluster) as client:
        summary = pipeline.run_spec(spec, progress=False)
        assert summary.complete
        with pytest.raises(pipeline.SpecError, match="is active in this process"):
            pipeline.run_spec(spec, workers=2, progress=False)
        assert client.status == "running"
    x = np.linspace(0.1, 1, 6).astype(np.float32)
    expected = np.asarray(dc.hessian(lambda v: jnp.sum(jnp.sin(v) ** 3), x)[0])
    got = np.asarray(pipeline.open_result(str(tmp_path / "o.zarr")).assemble())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
