"""Issue 25, part A: a store on S3 (a real S3 API: moto's server on 127.0.0.1)
is as trustworthy as one on local disk. One writer per store on every backend
(the run lease), cleanup of only what we wrote, a truncated chunk missing, an
unreadable location an error, no secrets in the store. Each case runs on both
backends where it makes sense; each failed on S3 before the lease landed.
"""

import errno
import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zarr

import faults
import pipeline
from helpers import log_fault
from pipeline import StoreError, open_result
from pipeline.internal import Files, ResultStore, inspect

X = jnp.linspace(0.1, 1.0, 12)


def F(x):
    return jnp.sum(jnp.sin(x) ** 2 * jnp.roll(x, 1))


def G(x):  # another computation
    return jnp.sum(jnp.cos(x) ** 2 * jnp.roll(x, 1))


RUN_F = (
    "import jax.numpy as jnp, pipeline\n"
    "f = lambda x: jnp.sum(jnp.sin(x) ** 2 * jnp.roll(x, 1))\n"
    "pipeline.hessian_to_zarr(f, jnp.linspace(0.1, 1.0, 12), sys.argv[1], block_size=4,"
    " progress=False, threads=1)\n"
)


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """A store location on each backend."""
    if request.param == "local":
        return str(tmp_path / "h.zarr")
    return f"{request.getfixturevalue('s3')}/h.zarr"


def _expected(f=F):
    return np.asarray(jax.hessian(f)(X))


def _matrix(location):
    return np.asarray(ResultStore.open(location).matrix[...])


def _start(location, planned):
    return subprocess.Popen(
        faults.command(planned, [location], code=RUN_F),
        env=faults.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_signal(name, proc):
    while not os.path.exists(name):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)


def _lease(location, generation, **doc):
    Files(location).create(f"diffops.lease.{generation}", json.dumps(doc).encode())


def test_a_second_writer_is_refused_while_a_run_holds_the_store(where, tmp_path):
    """Item 1: run A mid-block; run B (another computation, overwrite) and run
    C (the same one) are both refused, naming the holder; A's result is A's."""
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    first = _start(where, [{"block": 1, "kind": "wait", "file": go, "signal": started}])
    try:
        _wait_signal(started, first)
        for f, overwrite in ((G, True), (F, False)):
            with pytest.raises(StoreError, match=r"another run \(.*pid \d+") as err:
                pipeline.hessian_to_zarr(
                    f, X, where, block_size=4, overwrite=overwrite, progress=False
                )
            assert "break_lock" in str(err.value)
    finally:
        open(go, "w").close()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    np.testing.assert_allclose(_matrix(where), _expected(), rtol=1e-5, atol=1e-6)
    result = open_result(where)
    assert [r["status"] for r in result.runs()] == ["complete"]
    assert not Files(where).listing_top("diffops.lease.")  # released
    backend = "S3 (moto)" if where.startswith("s3://") else "local"
    log_fault(f"{backend}: a second and a third writer during a run (refused)", 2, True, 0)


def test_a_lease_of_another_host_excludes_until_it_expires(where):
    """A lock the filesystem does not share (flock node-local, Lustre without
    flock, S3) still excludes through the lease; an expired one is taken over."""
    now = time.time()
    _lease(where, 0, host="node-b", pid=4242, renewed=now, expires=now + 60)
    with pytest.raises(StoreError, match="pid 4242 on node-b"):
        pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False)
    assert inspect(where) == "absent"  # nothing was written
    files = Files(where)
    files.remove("diffops.lease.0")
    _lease(where, 3, host="node-b", pid=4242, renewed=now - 300, expires=now - 240)
    result = pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False)
    np.testing.assert_allclose(
        np.asarray(result.store.matrix[...]), _expected(), rtol=1e-5, atol=1e-6
    )
    assert files.listing_top("diffops.lease.") == []  # the expired one went with the takeover
    backend = "S3 (moto)" if where.startswith("s3://") else "local"
    log_fault(
        f"{backend}: a live lease of another host (refused), then expired (taken over)", 2, True, 0
    )


def test_break_lock_takes_a_live_lease_over(where):
    now = time.time()
    _lease(where, 0, host="node-b", pid=4242, renewed=now, expires=now + 600)
    result = pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False, break_lock=True)
    np.testing.assert_allclose(
        np.asarray(result.store.matrix[...]), _expected(), rtol=1e-5, atol=1e-6
    )


@pytest.mark.slow  # a driver process started and SIGKILLed per backend
def test_a_killed_run_reads_interrupted_and_resumes(where, tmp_path):
    """Item 19: a SIGKILLed run's lease is of a dead process of this host: its
    history reads interrupted (not running forever) and a rerun resumes at once."""
    started = str(tmp_path / "started")
    first = _start(
        where, [{"block": 2, "kind": "wait", "file": str(tmp_path / "never"), "signal": started}]
    )
    _wait_signal(started, first)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    runs = open_result(where).runs()
    assert [r["status"] for r in runs] == ["interrupted"]
    result = pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False)
    assert result.run_summary.reason.startswith("the same computation")
    np.testing.assert_allclose(
        np.asarray(result.store.matrix[...]), _expected(), rtol=1e-5, atol=1e-6
    )
    backend = "S3 (moto)" if where.startswith("s3://") else "local"
    log_fault(f"{backend}: driver SIGKILL mid-block (reads interrupted), then resume", 1, True, 0)


def test_overwrite_removes_only_what_we_wrote(where):
    """Item 2: on S3, overwrite deleted every object under the prefix."""
    pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False)
    files = Files(where)
    mine = {"matrix/notes.txt": b"a", "blocks/c/notes.txt": b"b", "README.txt": b"c"}
    for key, data in mine.items():
        files.write(key, data)
    result = pipeline.hessian_to_zarr(G, X, where, block_size=4, progress=False, overwrite=True)
    np.testing.assert_allclose(
        np.asarray(result.store.matrix[...]), _expected(G), rtol=1e-5, atol=1e-6
    )
    for key, data in mine.items():
        assert files.read(key) == data
    backend = "S3 (moto)" if where.startswith("s3://") else "local"
    log_fault(f"{backend}: overwrite beside 3 files of the user's (all kept)", 3, True, 0)


def test_a_truncated_chunk_is_missing(where):
    """Item 3: on S3 the listing counted a truncated chunk as present."""
    pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False)
    files = Files(where)
    chunk = sorted(k for k in files.listing("matrix") if "/c/" in k)[1]
    files.write(chunk, files.read(chunk)[:10])
    status = open_result(where).status()
    assert not status["complete"] and status["missing_data"] == [1]
    result = pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False)
    assert result.run_summary.blocks_computed == 1
    np.testing.assert_allclose(
        np.asarray(result.store.matrix[...]), _expected(), rtol=1e-5, atol=1e-6
    )
    backend = "S3 (moto)" if where.startswith("s3://") else "local"
    log_fault(f"{backend}: a chunk truncated (missing, recomputed)", 1, True, 0)


def test_an_unreadable_location_is_an_error_not_an_empty_one(s3, monkeypatch):
    """Item 4: any remote error read as "absent"."""
    where = f"{s3}/h.zarr"
    pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False)

    def broken(self, key):
        raise OSError(errno.EIO, "connection reset (injected)")

    monkeypatch.setattr(Files, "read", broken)
    with pytest.raises(StoreError, match=r"cannot read .*connection reset \(injected\)"):
        inspect(where)
    with pytest.raises(StoreError, match="cannot read"):
        pipeline.hessian_to_zarr(G, X, where, block_size=4, progress=False)
    monkeypatch.undo()
    np.testing.assert_allclose(_matrix(where), _expected(), rtol=1e-5, atol=1e-6)
    log_fault("S3 (moto): every read failing (an error, never an empty store)", 1, True, 0)


def test_a_backend_without_atomic_create_needs_the_users_word(tmp_path):
    """fsspec's filesystems other than local and S3 offer no exclusive create:
    refused, saying why, unless single_writer."""
    where = zarr.storage.FsspecStore.from_url(f"file://{tmp_path}/h.zarr")
    with pytest.raises(StoreError, match="no atomic create.*single_writer=True"):
        pipeline.hessian_to_zarr(F, X, where, block_size=4, progress=False)


def test_s3_setup_errors_are_one_line_naming_the_location(s3, tmp_path, monkeypatch):
    """Item 20: a missing bucket (unnamed), an unreachable endpoint, missing
    credentials: tracebacks or zarr's words. Items 16, 17: a finalize URL and a
    memory:// output from the command line failed late or lost the result."""
    from click.testing import CliRunner

    from pipeline.cli import main

    (tmp_path / "tm.py").write_text(
        "import jax.numpy as jnp, numpy as np\n"
        "def loss(x): return jnp.sum(jnp.sin(x) ** 2)\n"
        "def best_fit(): return np.linspace(0.1, 1, 6).astype(np.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    def run(output, extra=""):
        spec = tmp_path / "spec.yaml"
        spec.write_text(
            f"operation: hessian\nfunction: tm:loss\npoint: tm:best_fit\noutput: {output}\n{extra}"
        )
        res = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
        assert res.exit_code == 1
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("diffops: error: "), res.output
        return lines[0]

    assert "the bucket 'nobucket' does not exist" in run("s3://nobucket/h.zarr")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    line = run(f"{s3}/h.zarr")
    assert f"cannot read '{s3}/h.zarr'" in line and "credentials" in line
    assert "output 'memory://x/h.zarr' is a memory store" in run("memory://x/h.zarr")
    line = run(str(tmp_path / "h.zarr"), f"finalize: {{npy: {s3}/h.npy}}\n")
    assert "finalize.npy" in line and "local paths only" in line
    assert not (tmp_path / "h.zarr").exists()  # refused before anything ran


def test_storage_options_from_the_spec_and_the_command_line(
    s3, _moto_server, tmp_path, monkeypatch
):
    """Item 21: only AWS_* variables worked; a spec and the command line now
    give fsspec's options (an endpoint here), and never store credentials."""
    import s3fs
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the endpoint only from the options
    s3fs.S3FileSystem.clear_instance_cache()
    (tmp_path / "tm.py").write_text(
        "import jax.numpy as jnp, numpy as np\n"
        "def loss(x): return jnp.sum(jnp.sin(x) ** 2)\n"
        "def best_fit(): return np.linspace(0.1, 1, 6).astype(np.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    base = "operation: hessian\nfunction: tm:loss\npoint: tm:best_fit\n"
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        base + f"output: {s3}/a.zarr\nstorage_options: {{endpoint_url: '{_moto_server}'}}\n"
    )
    res = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert res.exit_code == 0, res.output
    plain = tmp_path / "plain.yaml"
    plain.write_text(base + f"output: {s3}/b.zarr\n")
    res = CliRunner().invoke(main, ["run", str(plain), "--no-progress", "--storage-option",
                                    f"endpoint_url={_moto_server}"])  # fmt: skip
    assert res.exit_code == 0, res.output
    monkeypatch.setenv("AWS_ENDPOINT_URL", _moto_server)  # to read them back here
    s3fs.S3FileSystem.clear_instance_cache()
    x = np.linspace(0.1, 1, 6).astype(np.float32)
    expected = np.asarray(jax.hessian(lambda v: jnp.sum(jnp.sin(v) ** 2))(x))
    for name in ("a", "b"):
        np.testing.assert_allclose(_matrix(f"{s3}/{name}.zarr"), expected, rtol=1e-5, atol=1e-6)
    spec.write_text(base + f"output: {s3}/c.zarr\nstorage_options: {{secret: hunter2}}\n")
    res = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert res.exit_code == 1 and "credentials do not go in a spec" in res.output
    res = CliRunner().invoke(main, ["run", str(plain), "--storage-option", "key=AKIA"])
    assert res.exit_code == 1 and "credentials do not go in a spec" in res.output


def test_a_specs_env_values_are_not_stored(tmp_path, monkeypatch):
    """Item 5: a spec's env went verbatim into the store's metadata, where users
    put AWS_SECRET_ACCESS_KEY."""
    from click.testing import CliRunner

    from pipeline.cli import main
    from pipeline.internal import stored_spec

    (tmp_path / "tm.py").write_text(
        "import jax.numpy as jnp, numpy as np\n"
        "def loss(x): return jnp.sum(jnp.sin(x) ** 2)\n"
        "def best_fit(): return np.linspace(0.1, 1, 6).astype(np.float32)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "before")  # restored after the spec sets them
    monkeypatch.setenv("MY_FLAG", "0")
    spec = tmp_path / "spec.yaml"
    spec.write_text("operation: hessian\nfunction: tm:loss\npoint: tm:best_fit\noutput: o.zarr\n"
                    "env: {AWS_SECRET_ACCESS_KEY: sekrit-value-42, MY_FLAG: '1'}\n")  # fmt: skip
    res = CliRunner().invoke(main, ["run", str(spec), "--no-progress"])
    assert res.exit_code == 0, res.output
    text = "".join(p.read_text() for p in (tmp_path / "o.zarr").rglob("zarr.json"))
    assert "sekrit-value-42" not in text and "AWS_SECRET_ACCESS_KEY" in text
    monkeypatch.setenv("MY_FLAG", "1")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    stored = stored_spec(open_result(str(tmp_path / "o.zarr")))
    assert stored.env == {"MY_FLAG": "1"}  # the names' values from this environment
