"""A real external cluster (issue 10): `dask scheduler` and two `dask worker`
processes started by hand, bound to 127.0.0.1, from another directory and
without the model on their path, as a SLURM job or a shared server starts them."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import diffops_core as dc
from helpers import scheduler_address
from pipeline.internal import ResultStore

BIN = os.path.dirname(sys.executable)

MODEL = """
import os

import jax.numpy as jnp
import numpy as np

SCALE = float(os.environ.get("EXT_SCALE", "1"))  # read at import, on the driver


def loss(p):
    # read when f is traced: on the workers too
    power = float(os.environ.get("EXT_POWER", "2"))
    return SCALE * jnp.sum(jnp.sin(p["a"]) ** power) * jnp.sum(p["b"] ** 3)


def needs_a_driver_module(p):
    import only_on_driver  # importable where the driver runs, nowhere else

    return only_on_driver.scale * jnp.sum(p["a"] ** 2) * jnp.sum(p["b"])


def arrow(p):
    # every entry of a couples only to itself and b[0, 0]: an arrowhead Hessian
    return jnp.sum(p["a"] ** 4) + jnp.sum(p["a"]) * p["b"][0, 0] ** 2 + jnp.sum(p["b"] ** 4)


def best_fit():
    return {"a": np.linspace(0.1, 1.0, 7).astype(np.float32),
            "b": np.full((2, 2), 0.4, np.float32)}
"""


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(JAX_PLATFORMS="cpu", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    return env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The scheduler's address; every process started here is stopped after."""
    where = tmp_path_factory.mktemp("elsewhere")  # not the spec's directory
    scheduler_file = str(where / "scheduler.json")
    procs = []
    logs = []

    def start(*args):
        log = open(where / f"log{len(procs)}.txt", "w")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [os.path.join(BIN, "dask"), *args],
                cwd=where,
                env=_clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    try:
        start(
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--scheduler-file",
            scheduler_file,
        )
        address = scheduler_address(scheduler_file, procs[0])
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            start(
                "worker",
                address,
                "--host",
                "127.0.0.1",
                "--dashboard-address",
                "127.0.0.1:0",
                "--nthreads",
                "1",
                "--memory-limit",
                "3GiB",
                "--no-nanny",
            )
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            hosts = {w["host"] for w in client.scheduler_info()["workers"].values()}
        assert hosts == {"127.0.0.1"}
        yield address
    finally:
        # the workers first, while their scheduler is there to hear them leave (a
        # worker whose scheduler has gone waits out its reconnect timeout: 30 s)
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in logs:
            log.close()
        assert all(proc.poll() is not None for proc in procs)


def _spec(tmp_path, function="extmodel:loss", **extra):
    (tmp_path / "extmodel.py").write_text(MODEL)
    lines = [
        "operation: hessian",
        f"function: {function}",
        "point: extmodel:best_fit",
        "output: out.zarr",
        "blocks: {block_size: 4}",
    ] + [f"{k}: {json.dumps(v)}" for k, v in extra.items()]
    path = tmp_path / "spec.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(spec, address, env_extra=None):
    env = {**_clean_env(), **(env_extra or {})}
    proc = subprocess.run(
        [
            os.path.join(BIN, "diffops"),
            "run",
            spec,
            "--scheduler",
            address,
            "--no-progress",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    return proc


def _expected(tmp_path, scale=1.0, power=2.0):
    import jax.numpy as jnp

    x = {"a": np.linspace(0.1, 1.0, 7).astype(np.float32), "b": np.full((2, 2), 0.4, np.float32)}
    f = lambda p: scale * jnp.sum(jnp.sin(p["a"]) ** power) * jnp.sum(p["b"] ** 3)
    return np.asarray(dc.hessian(f, x)[0])


def test_a_model_the_workers_cannot_import_is_shipped_and_computed(cluster, tmp_path):
    proc = _run(_spec(tmp_path), cluster)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["complete"] and summary["blocks_computed"] == 3
    got = np.asarray(ResultStore.open(str(tmp_path / "out.zarr")).matrix[...])
    np.testing.assert_allclose(got, _expected(tmp_path), rtol=1e-5, atol=1e-5)


def test_the_spec_env_reaches_external_workers(cluster, tmp_path):
    # EXT_SCALE is read at import (on the driver); EXT_POWER when f is traced (on
    # every worker): both must be the spec's, or the run refuses
    spec = _spec(tmp_path, env={"EXT_SCALE": "3", "EXT_POWER": "4"})
    proc = _run(spec, cluster)
    assert proc.returncode == 0, proc.stderr
    got = np.asarray(ResultStore.open(str(tmp_path / "out.zarr")).matrix[...])
    np.testing.assert_allclose(got, _expected(tmp_path, 3.0, 4.0), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # two more driver processes on the hand-started cluster
def test_the_spec_env_does_not_outlive_its_run(cluster, tmp_path):
    """The env a run set stayed in its workers' environment: the next run of the
    same model without it was refused (its trace read EXT_POWER=4)."""
    (tmp_path / "one").mkdir()
    first = _run(_spec(tmp_path / "one", env={"EXT_POWER": "4"}), cluster)
    assert first.returncode == 0, first.stderr
    (tmp_path / "two").mkdir()
    second = _run(_spec(tmp_path / "two"), cluster)
    assert second.returncode == 0, second.stderr
    got = np.asarray(ResultStore.open(str(tmp_path / "two" / "out.zarr")).matrix[...])
    np.testing.assert_allclose(got, _expected(tmp_path), rtol=1e-5, atol=1e-5)


def test_a_module_only_the_driver_has_is_refused_in_one_line(cluster, tmp_path):
    driver_only = tmp_path / "driver_lib"
    driver_only.mkdir()
    (driver_only / "only_on_driver.py").write_text("scale = 2.0\n")
    spec = _spec(tmp_path, function="extmodel:needs_a_driver_module")
    proc = _run(spec, cluster, {"PYTHONPATH": str(driver_only)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "No module named 'only_on_driver'" in lines[0] and "tcp://127.0.0.1:" in lines[0]
    assert "lost dependencies" not in lines[0]
    assert (
        not (tmp_path / "out.zarr" / "blocks").exists()
        or not ResultStore.open(str(tmp_path / "out.zarr")).done_mask().any()
    )


def test_a_sparse_spec_runs_on_external_workers_reading_the_stored_colours(cluster, tmp_path):
    import jax.numpy as jnp

    proc = _run(_spec(tmp_path, function="extmodel:arrow", sparsity="auto"), cluster)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["complete"] and summary["sparsity"]["ncolors"] == 2
    assert summary["sparsity"]["check"]["passed"]
    store = ResultStore.open(str(tmp_path / "out.zarr"))
    x = {"a": np.linspace(0.1, 1.0, 7).astype(np.float32), "b": np.full((2, 2), 0.4, np.float32)}
    f = lambda p: (jnp.sum(p["a"] ** 4) + jnp.sum(p["a"]) * p["b"][0, 0] ** 2
                   + jnp.sum(p["b"] ** 4))  # fmt: skip
    np.testing.assert_allclose(store.sparse().toarray(), np.asarray(dc.hessian(f, x)[0]),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_a_relative_output_is_resolved_on_the_driver(cluster, tmp_path):
    """Issue 25, item 8: ``--output rel_out.zarr`` went to the workers (started
    elsewhere) unresolved, and every block failed with FileNotFoundError."""
    spec = _spec(tmp_path)
    command = [os.path.join(BIN, "diffops"), "run", spec, "--scheduler", cluster,
               "--no-progress", "--json", "--output", "rel_out.zarr"]  # fmt: skip
    proc = subprocess.run(command, env=_clean_env(), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = np.asarray(ResultStore.open(str(tmp_path / "rel_out.zarr")).matrix[...])
    np.testing.assert_allclose(got, _expected(tmp_path), rtol=1e-5, atol=1e-5)


def test_a_store_the_workers_cannot_reach_is_refused_before_the_first_block(cluster):
    """Item 8: nothing checked that the workers could open the store (a path,
    credentials, memory://): every block failed instead, one by one."""
    import jax.numpy as jnp
    from distributed import Client

    import pipeline

    f = lambda x: jnp.sum(jnp.sin(x) ** 2)
    with Client(cluster, timeout=60) as client:
        with pytest.raises(pipeline.ClusterSetupError) as err:
            pipeline.hessian_to_zarr(f, jnp.ones(6), "memory://only-here/h.zarr", client=client,
                                     progress=False)  # fmt: skip
    message = str(err.value)
    assert "cannot reach the store 'memory://only-here/h.zarr'" in message
    assert "\n" not in message and "tcp://127.0.0.1:" in message
