"""The pipeline on a 2-worker LocalCluster(processes=True), with faults."""

import json
import os

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc
import pipeline
from helpers import log_fault, mixed_loss, mixed_out, mixed_x, tol

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def faults_file(tmp_path_factory):
    return str(tmp_path_factory.mktemp("faults") / "faults.json")


@pytest.fixture(scope="module")
def client(faults_file):
    from distributed import Client

    env = {
        "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
        "JAX_PLATFORMS": "cpu",
    }
    with pipeline.local_cluster(2, env=env, memory_limit="4GiB") as cluster:
        with Client(cluster) as c:
            yield c


@pytest.fixture
def faults(faults_file, inject):
    """Plan faults for the cluster's workers: the faulty task (installed here by
    the test-side module) carries the file's path; workers read it at each block."""
    inject(faults_file=faults_file)

    def plan(spec):
        with open(faults_file, "w") as fh:
            json.dump(spec, fh)

    yield plan
    if os.path.exists(faults_file):
        os.unlink(faults_file)


def test_cluster_hessian_equals_in_memory(tmp_path, client):
    x = mixed_x()
    result = pipeline.hessian_to_zarr(
        mixed_loss, x, str(tmp_path / "h.zarr"), block_size=2, client=client, progress=False
    )
    H, _ = dc.hessian(mixed_loss, x, block_size=2)
    np.testing.assert_allclose(result.assemble(), H, **tol(np.float32))
    assert os.getpid() not in {int(h.rsplit(":", 1)[1]) for h in result.run_summary.hosts}
    assert result.meta["runs"][-1]["executor"] == "distributed"


def test_cluster_jacobian_rev(tmp_path, client):
    x = mixed_x()
    result = pipeline.jacobian_to_zarr(
        mixed_out,
        x,
        str(tmp_path / "j.zarr"),
        mode="rev",
        block_size=4,
        client=client,
        progress=False,
    )
    J, _ = dc.jacobian(mixed_out, x, mode="rev")
    import jax

    flat = np.concatenate([np.asarray(v).reshape(-1, 16) for v in jax.tree_util.tree_leaves(J)])
    np.testing.assert_allclose(result.assemble(), flat, **tol(np.float32))


@pytest.mark.slow
def test_worker_killed_mid_task_run_completes_bitwise(tmp_path, client, faults):
    x = mixed_x()
    clean = pipeline.hessian_to_zarr(
        mixed_loss, x, str(tmp_path / "clean.zarr"), block_size=2, client=client, progress=False
    ).assemble()
    once = tmp_path / "once"
    once.mkdir()
    faults(
        [
            {"block": 3, "kind": "exit", "at": "start", "once": str(once)},
            {"block": 5, "kind": "exit", "at": "write", "once": str(once)},
        ]
    )
    result = pipeline.hessian_to_zarr(
        mixed_loss, x, str(tmp_path / "h.zarr"), block_size=2, client=client, progress=False
    )
    assert sorted(os.listdir(once)) == ["fault-3-exit-start", "fault-5-exit-write"]
    assert result.status()["complete"]
    np.testing.assert_array_equal(result.assemble(), clean)
    assert result.verify() == []
    log_fault(
        "worker process exits mid-task (os._exit, before the kernel and after the write)",
        2,
        True,
        int(np.count_nonzero(result.assemble() != clean)),
    )


def test_block_error_on_cluster_names_the_block(tmp_path, client, faults):
    faults([{"block": 1, "kind": "raise"}])
    with pytest.raises(pipeline.BlockError, match=r"block 1 \(columns 2:4\) failed"):
        pipeline.hessian_to_zarr(
            mixed_loss,
            mixed_x(),
            str(tmp_path / "h.zarr"),
            block_size=2,
            client=client,
            progress=False,
        )


def test_worker_memory_limit_is_a_contract(tmp_path):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, processes=False, memory_limit="1kB", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as c,
    ):
        with pytest.raises(MemoryError, match=r"over 70% of a worker's memory limit \(0.98 kiB\)"):
            pipeline.hessian_to_zarr(
                mixed_loss,
                mixed_x(),
                str(tmp_path / "h.zarr"),
                block_size=2,
                client=c,
                progress=False,
            )


def test_cluster_marginal_std_and_covariance_equal_the_in_memory_ones(tmp_path, client):
    """The tile tasks of the out-of-core factorisation run on the workers."""
    x = mixed_x()
    result = pipeline.hessian_to_zarr(
        mixed_loss, x, str(tmp_path / "h.zarr"), block_size=4, progress=False
    )
    H = np.asarray(result.assemble(), np.float64)
    damping = 1.0 + abs(float(np.linalg.eigvalsh(H)[0]))  # positive definite either way
    got = result.marginal_std(x, damping=damping, tile=5, client=client, progress=False)
    expected = dc.marginal_std(H, x, damping=damping)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=2e-7)
    cov = result.covariance(
        str(tmp_path / "c.zarr"), damping=damping, client=client, progress=False
    )
    np.testing.assert_allclose(cov.assemble(), dc.covariance(H, damping=damping), rtol=1e-10)
    assert cov.verify() == []


def _listeners(pids):
    import psutil

    found = []
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                found.append((pid, conn.laddr.ip, conn.laddr.port))
    return found


def test_every_listener_of_local_cluster_is_on_loopback():
    """Issue 25, item 11: local_cluster left LocalCluster's dashboard on ':8787',
    every interface: whoever reaches it runs code as the user."""
    import psutil
    from distributed import Client

    me = os.getpid()
    before = {(ip, port) for _pid, ip, port in _listeners([me])}
    with pipeline.local_cluster(1, memory_limit="2GiB") as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)
        kids = [p.pid for p in psutil.Process(me).children(recursive=True)]
        opened = [(pid, ip, port) for pid, ip, port in _listeners([me, *kids])
                  if pid != me or (ip, port) not in before]  # fmt: skip
        assert kids and opened
        assert all(ip == "127.0.0.1" for _pid, ip, _port in opened), opened
        assert client.dashboard_link.startswith("http://127.0.0.1:")


def _unpicklable(module):
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)  # as a spec's own modules travel
    return lambda: cloudpickle.unregister_pickle_by_value(module)


def test_a_model_that_does_not_pickle_travels_by_reference(tmp_path, client):
    """Issue 25, item 9: a dLux-like model beside its spec, shipped by value,
    ended every cluster run in distributed's AssertionError (322 lines)."""
    import jax
    import unpicklable_model as model

    undo = _unpicklable(model)
    try:
        result = pipeline.hessian_to_zarr(model.loss, jnp.linspace(0.1, 1, 6), str(tmp_path / "h.zarr"),
                                          client=client, progress=False)  # fmt: skip
    finally:
        undo()
    expected = np.asarray(jax.hessian(model.loss)(jnp.linspace(0.1, 1, 6)))
    np.testing.assert_allclose(np.asarray(result.store.matrix[...]), expected, rtol=1e-5, atol=1e-6)


def test_a_model_the_workers_can_neither_unpickle_nor_import_is_one_line(
    tmp_path, client, monkeypatch
):
    import importlib
    import shutil

    shutil.copy(os.path.join(TESTS, "unpicklable_model.py"), tmp_path / "driver_only_model.py")
    monkeypatch.syspath_prepend(str(tmp_path))  # on the driver's path only
    model = importlib.import_module("driver_only_model")
    undo = _unpicklable(model)
    try:
        with pytest.raises(pipeline.ClusterSetupError) as err:
            pipeline.hessian_to_zarr(model.loss, jnp.linspace(0.1, 1, 6), str(tmp_path / "h.zarr"),
                                     client=client, progress=False)  # fmt: skip
    finally:
        undo()
    message = str(err.value)
    assert "\n" not in message and "No module named 'driver_only_model'" in message
    assert "AssertionError" not in message


def test_the_functions_constants_travel_once_outside_the_graph(tmp_path, client):
    """Issue 25, item 15: f's constants were pickled into the graph ("Sending
    large graph of size 68.69 MiB", 197 MiB for fisher_1m)."""
    import warnings

    W = np.random.default_rng(0).normal(size=(1500, 1500)).astype(np.float32)  # 9 MB
    f = lambda x: 1e-3 * jnp.sum((jnp.asarray(W) @ x) ** 2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = pipeline.hessian_to_zarr(f, jnp.ones(1500), str(tmp_path / "h.zarr"),
                                          client=client, progress=False, block_size=500)  # fmt: skip
    assert not [w for w in seen if "large graph" in str(w.message)]
    expected = 2e-3 * (W.T.astype(np.float64) @ W)
    np.testing.assert_allclose(np.asarray(result.store.matrix[...]), expected, rtol=2e-3, atol=2e-3)


def test_the_heavy_steps_of_a_sparse_spec_run_on_the_cluster(tmp_path, client, monkeypatch):
    """Issue 25 item 14: with a cluster, the self-check, the checks and σ are
    tasks on it; the driver never recovers the matrix (here it cannot)."""
    from helpers import residual_spec
    from pipeline.internal import ResultStore, forget_checked

    spec = residual_spec(tmp_path, monkeypatch, "heavy_model", sparsity="auto",
                         finalize="{std: std.npz}")  # fmt: skip

    def refused(self):
        raise AssertionError("the driver recovered the matrix")

    monkeypatch.setattr(ResultStore, "_recovered", refused)
    hits = sum(client.run(forget_checked).values())
    summary = pipeline.run_spec(pipeline.load_spec(spec), progress=False)
    # the checks and σ ran where the self-check did, on the matrix it recovered
    assert sum(client.run(forget_checked).values()) - hits == 2
    result = pipeline.open_result(str(tmp_path / "g.zarr"))
    check = result.meta["sparsity"]["check"]
    assert check["passed"] and int(check["where"].rsplit(":", 1)[1]) != os.getpid()
    assert result.meta["checks"]["nonfinite"] == 0 and summary.symmetry_error < 1e-12
    monkeypatch.undo()  # the reference, in this process
    import heavy_model

    with jax.enable_x64(True):
        x = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), heavy_model.point())
        flat, unravel = jax.flatten_util.ravel_pytree(x)
        J = jax.jacfwd(lambda v: jax.flatten_util.ravel_pytree(heavy_model.residuals(
            unravel(v)))[0])(flat)  # fmt: skip
        G = np.asarray(J.T @ J)
    with np.load(tmp_path / "std.npz") as saved:
        got = np.concatenate([saved[k].ravel() for k in ("a", "b")])
    np.testing.assert_allclose(got, np.sqrt(np.diag(np.linalg.inv(G))), rtol=1e-9)


def test_a_wrong_pattern_fails_its_check_on_the_cluster_and_is_recorded(
    tmp_path, client, monkeypatch
):
    """A given pattern that misses the arrowhead's couplings: the worker's
    self-check refuses it, and the driver records the failure."""
    import scipy.sparse as sp

    from helpers import residual_spec

    sp.save_npz(tmp_path / "diag.npz", sp.csr_matrix(sp.identity(6, dtype=bool)))
    spec = residual_spec(tmp_path, monkeypatch, "wrong_model",
                         sparsity=f"{{pattern: {tmp_path / 'diag.npz'}}}")  # fmt: skip
    with pytest.raises(ValueError, match="does not match products of random vectors"):
        pipeline.run_spec(pipeline.load_spec(spec), progress=False)
    result = pipeline.open_result(str(tmp_path / "g.zarr"))
    assert result.status()["complete"] and result.meta["sparsity"]["check"]["passed"] is False
    with pytest.raises(ValueError, match="has not passed its check"):
        result.sparse()
