"""The diffops command, through click's runner and as real subprocesses."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

import diffops_core as dc
import faults
from helpers import chunk_files
from pipeline import StoreError
from pipeline.cli import main
from pipeline.internal import ResultStore

TINY_MODEL = """
import jax.numpy as jnp
import numpy as np

def loss(p):
    return jnp.sum(jnp.sin(p["a"]) ** 2) * jnp.sum(p["b"] ** 3) + jnp.prod(p["a"][:3])

def best_fit():
    return {"a": np.linspace(0.1, 1.0, 9).astype(np.float32),
            "b": np.full((2, 3), 0.4, np.float32)}

def vector(p):
    return jnp.sin(p["a"]) * jnp.sum(p["b"])

def broken():
    raise RuntimeError("no data today")
"""


def write_spec(tmp_path, body=None, name="spec.yaml", **overrides):
    (tmp_path / "tinymodel.py").write_text(TINY_MODEL)
    data = {
        "operation": "hessian",
        "function": "tinymodel:loss",
        "point": "tinymodel:best_fit",
        "output": "out.zarr",
        "blocks": {"block_size": 4},
    }
    data.update(overrides)
    text = body if body is not None else "\n".join(f"{k}: {json.dumps(v)}" for k, v in data.items())
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def expected_hessian():
    import importlib

    tiny = importlib.import_module("tinymodel")
    return np.asarray(dc.hessian(tiny.loss, tiny.best_fit())[0])


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def spec(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return write_spec(tmp_path)


def test_run_status_verify_show_plot(spec, tmp_path):
    res = invoke("run", spec, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "hessian 15x15 float32" in res.output and "4/4 complete (4 computed" in res.output
    assert "symmetry" in res.output and "non-finite  0 entries" in res.output
    store = str(tmp_path / "out.zarr")
    np.testing.assert_allclose(
        np.asarray(ResultStore.open(store).matrix[...]), expected_hessian(), rtol=1e-5, atol=1e-5
    )

    res = invoke("status", store)
    assert res.exit_code == 0 and "4/4 blocks, complete; 1 run(s)" in res.output
    res = invoke("status", store, "--json")
    assert json.loads(res.output)["blocks_done"] == 4

    res = invoke("verify", store)
    assert res.exit_code == 0 and "0 bad block(s)" in res.output

    res = invoke("show", store)
    assert res.exit_code == 0
    assert "['a']" in res.output and "['b']" in res.output and "diagonal min" in res.output

    png = str(tmp_path / "m.png")
    res = invoke("plot", store, "-o", png)
    assert res.exit_code == 0, res.output
    with open(png, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).ndim == 3


def test_rerun_of_complete_run_does_no_work(spec, tmp_path):
    assert invoke("run", spec, "--no-progress").exit_code == 0
    from helpers import file_snapshot

    before = file_snapshot(str(tmp_path / "out.zarr"))
    res = invoke("run", spec, "--no-progress")
    assert res.exit_code == 0 and "(0 computed by this run)" in res.output
    assert "nothing to do" in res.output
    assert file_snapshot(str(tmp_path / "out.zarr")) == before


def test_status_of_incomplete_store_exits_3(spec, tmp_path, monkeypatch, inject):
    inject([{"block": 1, "kind": "raise"}])
    res = invoke("run", spec, "--no-progress")
    assert res.exit_code == 1
    assert (
        res.output.strip()
        .splitlines()[-1]
        .startswith("diffops: error: block 1 (columns 4:8) failed: RuntimeError: injected fault")
    )
    res = invoke("status", str(tmp_path / "out.zarr"))
    assert res.exit_code == 3 and "incomplete" in res.output
    inject.clear()
    assert invoke("run", spec, "--no-progress").exit_code == 0
    assert invoke("status", str(tmp_path / "out.zarr")).exit_code == 0


def test_changed_input_refused_without_overwrite(spec, tmp_path):
    assert invoke("run", spec, "--no-progress").exit_code == 0
    other = write_spec(
        tmp_path, name="other.yaml", function="tinymodel:vector", operation="jacobian"
    )
    res = invoke("run", other, "--no-progress")
    assert res.exit_code == 1
    assert "holds a result of a different computation" in res.output
    assert "overwrite=True" in res.output
    assert invoke("run", other, "--no-progress", "--overwrite").exit_code == 0


def test_verify_repair_restores_the_exact_matrix(spec, tmp_path):
    assert invoke("run", spec, "--no-progress").exit_code == 0
    store = str(tmp_path / "out.zarr")
    good = np.asarray(ResultStore.open(store).matrix[...])
    from helpers import chunk_files

    chunks = chunk_files(store)
    with open(chunks[1], "r+b") as fh:
        fh.write(b"garbage!" * 4)
    with open(chunks[3], "r+b") as fh:
        fh.truncate(7)
    res = invoke("verify", store)
    assert res.exit_code == 4 and "2 bad block(s): [1, 3]" in res.output
    res = invoke("verify", store, "--repair", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "repaired 2 block(s)" in res.output
    np.testing.assert_array_equal(np.asarray(ResultStore.open(store).matrix[...]), good)


@pytest.mark.parametrize(
    "body,message",
    [
        (
            "function: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n",
            "operation: missing (required)",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n"
            "colour: blue\n",
            "unknown key 'colour'",
        ),
        (
            "operation: hessian\nfunction: nosuchmodule:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n",
            "function: cannot import module 'nosuchmodule'",
        ),
        (
            "operation: hessian\nfunction: tinymodel:nothing\npoint: tinymodel:best_fit\noutput: o.zarr\n",
            "function: module 'tinymodel' has no attribute 'nothing'",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:broken\noutput: o.zarr\n",
            "point: tinymodel:broken() raised RuntimeError: no data today",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n"
            "blocks: {block_size: many}\n",
            "blocks.block_size: must be a positive int, got 'many'",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n"
            "blocks: {block_size: 4, nbatches: 2}\n",
            "blocks: give one of",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: 7\n",
            "output: must be a path or URL, got 7",
        ),
        (
            "operation: hessian\nfunction: loss\npoint: tinymodel:best_fit\noutput: o.zarr\n",
            "function: must look like 'module:attribute', got 'loss'",
        ),
        (
            "operation: laplacian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n",
            "operation: must be 'hessian', 'jacobian' or 'gauss_newton', got 'laplacian'",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n"
            "checkpoint: maybe\n",
            "checkpoint: must be true or false, got 'maybe'",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n"
            "cluster: {workers: 0}\n",
            "cluster.workers: must be a positive int, got 0",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n"
            "blocks: {memory_budget: lots}\n",
            "blocks.memory_budget='lots' is not a size",
        ),
        (
            "operation: hessian\nfunction: tinymodel:vector\npoint: tinymodel:best_fit\noutput: o.zarr\n",
            "hessian needs a scalar-valued f",
        ),
        (
            "operation: hessian\nfunction: tinymodel:loss\npoint: missing.npz\noutput: o.zarr\n",
            "point: no such file",
        ),
        ("- just\n- a list\n", "a spec must be a YAML mapping"),
        ("operation: [unclosed\n", "not valid YAML"),
    ],
)
def test_spec_errors_are_one_line_naming_the_field(tmp_path, monkeypatch, body, message):
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write_spec(tmp_path, body=body)
    res = invoke("run", path, "--no-progress")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, res.output
    assert lines[0].startswith("diffops: error: ") and message in lines[0]
    if "spec" not in message and "hessian needs" not in message:
        assert path in lines[0] or "spec.yaml" in lines[0]


def test_missing_spec_file_and_store(tmp_path):
    res = invoke("run", str(tmp_path / "none.yaml"))
    assert res.exit_code == 1 and "no such spec file" in res.output
    res = invoke("status", str(tmp_path / "none.zarr"))
    assert res.exit_code == 1 and "no diffops result" in res.output


def _cli(args, planned=(), env_extra=None):
    """``diffops ARGS`` in a subprocess; with ``planned`` faults installed first by
    the test-side module (tests/faults.py)."""
    if planned:
        command, env = faults.command(planned, args), faults.env(env_extra)
    else:
        command = [sys.executable, "-m", "pipeline.cli", *args]
        env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_done(store, count, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if os.path.exists(os.path.join(store, "blocks", "zarr.json")):
            try:
                if int(ResultStore.open(store).done_mask().sum()) >= count:
                    return
            except StoreError:  # still being created (not ready yet)
                pass
        time.sleep(0.1)
    raise AssertionError("no progress")


@pytest.mark.slow
def test_sigkill_of_diffops_run_resumes(spec, tmp_path):
    store = str(tmp_path / "out.zarr")
    slow = [{"block": i, "kind": "sleep", "seconds": 1.0} for i in range(4)]
    proc = _cli(["run", spec, "--no-progress"], slow)
    try:
        _wait_done(store, 1, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done_before = int(ResultStore.open(store).done_mask().sum())
    assert 1 <= done_before < 4
    proc = _cli(["run", spec, "--no-progress", "--json"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["blocks_computed"] == 4 - done_before and summary["complete"]
    np.testing.assert_allclose(
        np.asarray(ResultStore.open(store).matrix[...]), expected_hessian(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_concurrent_second_run_is_refused(spec, tmp_path):
    """Issue 25, item 25: the first run's blocks slept 4 s each, and on a loaded
    machine it finished before the second started. Its block waits for an
    event the test sets only after the second run was refused."""
    store = str(tmp_path / "out.zarr")
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    first = _cli(
        ["run", spec, "--no-progress"],
        [{"block": 1, "kind": "wait", "file": go, "signal": started}],
    )
    try:
        while not os.path.exists(started):
            assert first.poll() is None, first.communicate()
            time.sleep(0.02)
        second = _cli(["run", spec, "--no-progress"])
        out, err = second.communicate(timeout=300)
        assert second.returncode == 1
        assert err.strip().splitlines()[-1].startswith("diffops: error: another run (run 1, pid ")
    finally:
        open(go, "w").close()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    np.testing.assert_allclose(
        np.asarray(ResultStore.open(store).matrix[...]), expected_hessian(), rtol=1e-5, atol=1e-5
    )


def test_help_on_every_subcommand():
    for command in ([], ["run"], ["status"], ["verify"], ["show"], ["plot"]):
        res = invoke(*command, "--help")
        assert res.exit_code == 0 and "Usage: " in res.output


def test_jacobian_spec_run_show_plot(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = write_spec(
        tmp_path,
        operation="jacobian",
        function="tinymodel:vector",
        mode="rev",
        blocks={"block_size": 3},
    )
    res = invoke("run", spec, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "jacobian 9x15 float32" in res.output and "symmetry" not in res.output
    store = str(tmp_path / "out.zarr")
    import importlib

    tiny = importlib.import_module("tinymodel")
    J, _ = dc.jacobian(tiny.vector, tiny.best_fit(), mode="rev")
    np.testing.assert_allclose(
        np.asarray(ResultStore.open(store).matrix[...]), np.asarray(J), rtol=1e-5, atol=1e-6
    )
    res = invoke("show", store)
    assert res.exit_code == 0 and "jacobian (jacrev)" in res.output and "(rows)" in res.output
    png = str(tmp_path / "j.png")
    assert invoke("plot", store, "-o", png).exit_code == 0
    assert open(png, "rb").read(4) == b"\x89PNG"


DATA_MODEL = """
import jax.numpy as jnp
import numpy as np
import os

DATA = np.load(os.path.join(os.path.dirname(__file__), "data.npy"))  # read at import

def loss(p):
    return jnp.sum(DATA * jnp.sin(p["a"]) ** 2)

def best_fit():
    return {"a": np.linspace(0.1, 1.0, 8).astype(np.float32)}
"""


@pytest.mark.slow
def test_changed_data_file_is_refused_and_overwrite_is_a_nightly_recipe(tmp_path):
    # issue 8 (2): the data file changed and `diffops run` served the old matrix
    (tmp_path / "datamodel.py").write_text(DATA_MODEL)
    np.save(tmp_path / "data.npy", np.arange(1.0, 9.0, dtype=np.float32))
    spec_path = write_spec(
        tmp_path, function="datamodel:loss", point="datamodel:best_fit", blocks={"block_size": 2}
    )
    env = {"PYTHONPATH": str(tmp_path)}

    def run(*flags):
        proc = _cli(["run", spec_path, "--no-progress", "--json", *flags], env_extra=env)
        out, err = proc.communicate(timeout=300)
        return proc.returncode, out, err

    code, out, _ = run()
    assert code == 0 and json.loads(out)["blocks_computed"] == 4
    np.save(tmp_path / "data.npy", np.arange(1.0, 9.0, dtype=np.float32) * 3)
    code, out, err = run()
    assert code == 1
    assert "differs in: data): the data f reads changed" in err and "--overwrite" in err
    code, out, _ = run("--overwrite")
    assert code == 0 and json.loads(out)["blocks_computed"] == 4
    a = np.linspace(0.1, 1.0, 8).astype(np.float32)
    expected = np.diag(3 * np.arange(1.0, 9.0) * 2 * np.cos(2 * a))
    np.testing.assert_allclose(
        np.asarray(ResultStore.open(str(tmp_path / "out.zarr")).matrix[...]),
        expected,
        rtol=1e-4,
        atol=1e-5,
    )
    code, out, _ = run("--overwrite")  # nothing changed: nothing done
    assert code == 0 and json.loads(out)["blocks_computed"] == 0


def test_output_dot_is_refused_and_nothing_is_deleted(tmp_path, monkeypatch):
    # issue 8 (5): `output: .` deleted the spec, the models package and notes.txt
    monkeypatch.syspath_prepend(str(tmp_path))
    spec_path = write_spec(tmp_path, output=".")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "notes.txt").write_text("mine")
    from helpers import file_snapshot

    before = file_snapshot(str(tmp_path))
    for flags in ([], ["--overwrite"]):
        res = invoke("run", spec_path, "--no-progress", *flags)
        assert res.exit_code == 1
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and "is not a diffops store" in lines[0]
    after = {k: v for k, v in file_snapshot(str(tmp_path)).items() if "__pycache__" not in k}
    assert after == {k: v for k, v in before.items() if "__pycache__" not in k}


def test_verify_repairs_the_store_it_is_given(spec, tmp_path):
    # issue 8 (6): a copied store was "repaired" into the original path
    assert invoke("run", spec, "--no-progress").exit_code == 0
    store = str(tmp_path / "out.zarr")
    good = np.asarray(ResultStore.open(store).matrix[...])
    copy = str(tmp_path / "copy" / "out.zarr")
    import shutil

    shutil.copytree(store, copy)
    from helpers import chunk_files, file_snapshot

    with open(chunk_files(copy)[2], "r+b") as fh:
        fh.write(b"garbage!" * 4)
    before = file_snapshot(store)
    res = invoke("verify", copy, "--repair", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "repaired 1 block(s); all blocks verify" in res.output
    np.testing.assert_array_equal(np.asarray(ResultStore.open(copy).matrix[...]), good)
    assert file_snapshot(store) == before


def test_verify_repair_whose_import_fails_clears_no_record(spec, tmp_path, monkeypatch):
    assert invoke("run", spec, "--no-progress").exit_code == 0
    store = str(tmp_path / "out.zarr")
    from helpers import chunk_files

    with open(chunk_files(store)[1], "r+b") as fh:
        fh.write(b"garbage!" * 4)
    os.rename(tmp_path / "tinymodel.py", tmp_path / "gone.py")
    monkeypatch.delitem(sys.modules, "tinymodel", raising=False)
    res = invoke("verify", store, "--repair", "--no-progress")
    assert res.exit_code == 1
    assert "cannot import module 'tinymodel'" in res.output.strip().splitlines()[-1]
    assert ResultStore.open(store).read_records()[1, 0] == 1  # the record is still there
    assert invoke("verify", store).exit_code == 4


def test_verify_exits_non_zero_on_an_incomplete_store(spec, tmp_path):
    assert invoke("run", spec, "--no-progress").exit_code == 0
    store = str(tmp_path / "out.zarr")
    ResultStore.open(store, "r+").clear_record(2)
    res = invoke("verify", store)
    assert res.exit_code == 3 and "1 incomplete: [2]" in res.output
    res = invoke("verify", store, "--repair", "--no-progress")
    assert res.exit_code == 0 and "repaired 1 block(s)" in res.output


def test_the_stored_spec_path_is_absolute(spec, tmp_path, monkeypatch):
    # issue 8 (6): a relative stored spec path broke repair from another directory
    monkeypatch.chdir(tmp_path)
    assert invoke("run", "spec.yaml", "--no-progress").exit_code == 0
    stored = ResultStore.open(str(tmp_path / "out.zarr")).meta["spec"]
    assert os.path.isabs(stored["path"]) and os.path.isabs(stored["output"])
    monkeypatch.chdir("/")
    ResultStore.open(str(tmp_path / "out.zarr"), "r+").clear_record(0)
    res = invoke("verify", str(tmp_path / "out.zarr"), "--repair", "--no-progress")
    assert res.exit_code == 0, res.output


def test_status_of_damaged_metadata_is_one_line(spec, tmp_path):
    assert invoke("run", spec, "--no-progress").exit_code == 0
    os.unlink(tmp_path / "out.zarr" / "blocks" / "zarr.json")
    res = invoke("status", str(tmp_path / "out.zarr"))
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "blocks/zarr.json" in lines[0] and "--overwrite" in lines[0]


def test_plot_of_an_incomplete_store_says_so(spec, tmp_path, monkeypatch, inject):
    inject([{"block": 1, "kind": "raise"}])
    assert invoke("run", spec, "--no-progress").exit_code == 1
    png = str(tmp_path / "partial.png")
    res = invoke("plot", str(tmp_path / "out.zarr"), "-o", png)
    assert res.exit_code == 0 and "INCOMPLETE" in res.output and "drawn blue" in res.output
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]
    blue = np.all(np.abs(image - np.array([0x9F, 0xC5, 0xE8]) / 255) < 0.02, axis=-1)
    assert blue.sum() > 100  # the missing block is drawn, not shown as small values


def test_show_of_a_store_with_a_garbage_block_says_damaged_not_numbers(spec, tmp_path):
    """Issue 25, item 22: ``show`` printed inf norms and a diagonal of 8.6e306
    from a block whose bytes were garbage, and exited 0."""
    assert invoke("run", spec, "--no-progress").exit_code == 0
    store = str(tmp_path / "out.zarr")
    chunks = sorted(chunk_files(store))
    rng = np.random.default_rng(0)
    victim = chunks[1]
    size = os.path.getsize(victim)
    with open(victim, "wb") as fh:
        fh.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    res = CliRunner().invoke(main, ["show", store])
    assert res.exit_code == 1
    assert "DAMAGED" in res.output and "block(s) [1]" in res.output
    assert "inf" not in res.output and "e+30" not in res.output
    assert res.output.strip().splitlines()[-1].startswith("diffops: error: block(s) [1]")
