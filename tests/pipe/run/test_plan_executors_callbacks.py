"""The pipeline's seam (issue 9): a pure plan, executors behind one interface,
callbacks, and the defects found on the way."""

import ast
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import diffops_core as dc
import pipeline
from diffops_core.internal import BlockPlan, InputError
from helpers import mixed_loss, mixed_x, tol
from pipeline.cli import main
from pipeline.internal import RUNS_KEPT, Limits, ResultStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROOMY = Limits(10**12, 0, 2, "test")


def _sources(package):
    """Every module of ``package``, by its path inside it (``run/_plan.py``)."""
    folder = os.path.join(ROOT, package)
    found = {}
    for base, _dirs, files in os.walk(folder):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(base, name)
                found[os.path.relpath(path, folder)] = open(path).read()
    return found


# -- the plan ---------------------------------------------------------------------------


def test_plan_is_pure_and_fingerprints_what_jax_traces(tmp_path):
    location = str(tmp_path / "h.zarr")
    a = pipeline.internal.plan(
        "hessian", mixed_loss, mixed_x(), location, limits=ROOMY, block_size=3
    )
    b = pipeline.internal.plan(
        "hessian", mixed_loss, mixed_x(), location, limits=ROOMY, block_size=3
    )
    assert not os.path.exists(location) and os.listdir(tmp_path) == []  # nothing written
    assert a.fingerprint == b.fingerprint and a.blocks == BlockPlan(16, 3)
    assert a.store_meta()["plan"] == {"extent": 16, "block_size": 3, "n_blocks": 6}
    moved = jax.tree_util.tree_map(lambda v: v + 1, mixed_x())
    c = pipeline.internal.plan("hessian", mixed_loss, moved, location, limits=ROOMY, block_size=3)
    assert c.fingerprint != a.fingerprint
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.inner_width = 2


def test_plan_refuses_a_task_that_cannot_fit_with_the_numbers(tmp_path):
    tight = Limits(1000, 0, 1, "a test limit")
    planned = pipeline.internal.plan(
        "hessian", mixed_loss, mixed_x(), str(tmp_path / "h"), limits=tight, block_size=16
    )  # a plan with nothing to compute needs no room: checked once blocks are left
    with pytest.raises(pipeline.NotEnoughMemoryError, match=r"over 80% of a test limit") as err:
        planned.check_memory(tight)
    assert isinstance(err.value, MemoryError) and isinstance(err.value, InputError)
    with pytest.raises(pipeline.NotEnoughMemoryError, match=r"over 80% of a test limit"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), str(tmp_path / "h"), block_size=16,
                                 executor=_Tight(tight), progress=False)  # fmt: skip
    assert not os.path.exists(tmp_path / "h")  # refused before anything was written


class _Tight:
    """An executor whose tasks may use ``limits`` (never asked to run a block)."""

    name = "tight"

    def __init__(self, limits):
        self.tight = limits

    def limits(self):
        return self.tight

    def where(self):
        return None

    def run(self, plan, todo, callbacks):
        raise AssertionError("a block ran")


def test_the_plan_and_events_import_no_executor_or_store():
    # the plan (and the events it is reported with) are pure: no zarr, no distributed,
    # no dask graphs; only dask.utils' byte formatting
    for name in ("run/_plan.py", "run/_types.py", "run/_callbacks.py", "store/_format.py"):
        tree = ast.parse(_sources("pipeline")[name])
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in modules if m and m.split(".")[0] in ("zarr", "distributed")}, name
        assert not {m for m in modules if m and m.startswith("dask") and m != "dask.utils"}, name
        executors = ("_threads", "_distributed", "_task", "_group", "_chunks")
        assert not {m for m in modules if m and m.lstrip(".") in executors}, name


# -- executors and callbacks ------------------------------------------------------------


class SerialExecutor:
    """The smallest executor: the blocks one after the other, in this thread."""

    name = "serial"

    def where(self):
        return None

    def run(self, plan, todo, callbacks):
        task = pipeline.internal.BlockTask.from_plan(plan)
        for i in todo:
            callbacks.on_block_end(task(i))


class Recorder(pipeline.Callback):
    def __init__(self):
        self.calls = []

    def on_run_start(self, event):
        self.calls.append(("start", event.todo, event.done))

    def on_block_end(self, event):
        assert isinstance(event, pipeline.BlockEvent)
        self.calls.append(("block", event.index, event.stop - event.start))

    def on_run_end(self, event):
        self.calls.append(("end", event.status))


def test_an_executor_of_our_own_and_callbacks_see_every_block(tmp_path):
    recorder, timings = Recorder(), pipeline.Timings()
    result = pipeline.hessian_to_zarr(
        mixed_loss,
        mixed_x(),
        str(tmp_path / "h.zarr"),
        block_size=5,
        executor=SerialExecutor(),
        callbacks=[recorder, timings],
        progress=False,
    )
    np.testing.assert_allclose(
        result.assemble(), dc.hessian(mixed_loss, mixed_x())[0], **tol(np.float32)
    )
    assert recorder.calls == [
        ("start", (0, 1, 2, 3), 0),
        ("block", 0, 5),
        ("block", 1, 5),
        ("block", 2, 5),
        ("block", 3, 1),
        ("end", "complete"),
    ]
    assert result.meta["runs"][-1]["executor"] == "serial"
    assert len(timings.events) == 4 and timings.total("kernel_s") > 0
    assert 0 < timings.busy_seconds() <= timings.seconds and 0 < timings.busy_fraction() <= 1
    assert result.run_summary == pipeline.RunSummary(
        blocks_computed=4,
        seconds=result.run_summary.seconds,
        columns_per_s=result.run_summary.columns_per_s,
        nonfinite_blocks=(),
        hosts=result.run_summary.hosts,
    )
    assert result.run_summary.columns_per_s > 0


def test_a_failed_run_reports_its_end_to_callbacks(tmp_path, inject):
    inject([{"block": 1, "kind": "raise"}])
    recorder = Recorder()
    with pytest.raises(pipeline.BlockError, match="block 1"):
        pipeline.hessian_to_zarr(
            mixed_loss,
            mixed_x(),
            str(tmp_path / "h.zarr"),
            block_size=4,
            threads=1,
            callbacks=[recorder],
            progress=False,
        )
    assert recorder.calls[0][0] == "start" and recorder.calls[-1] == ("end", "failed")


def test_the_progress_bar_is_tqdm_on_stderr(tmp_path, capsys):
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), str(tmp_path / "h.zarr"), block_size=2)
    err = capsys.readouterr().err
    assert "diffops hessian" in err and "8/8" in err and "block/s" in err


# -- run history, bounded (adversarial: 1000 runs made a 334 kB zarr.json) --------------


def test_the_run_history_keeps_the_last_runs_and_a_count(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    rs = ResultStore.open(store, "r+")
    for _ in range(RUNS_KEPT + 9):
        rs.end_run(rs.start_run(0), status="complete")
    meta = ResultStore.open(store).meta
    assert len(meta["runs"]) == RUNS_KEPT and meta["runs_total"] == RUNS_KEPT + 10
    assert [r["run"] for r in meta["runs"]] == list(range(11, RUNS_KEPT + 11))
    assert os.path.getsize(os.path.join(store, "zarr.json")) < 20_000
    assert pipeline.open_result(store).status()["runs"] == RUNS_KEPT + 10
    res = CliRunner().invoke(main, ["status", store])
    assert f"{RUNS_KEPT + 10} run(s) (the last {RUNS_KEPT} listed)" in res.output
    # the next run is numbered after all of them, and its blocks say so
    ResultStore.open(store, "r+").clear_record(0)
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    assert ResultStore.open(store).read_records()[0, 3] == RUNS_KEPT + 11


# -- stores written before this version -------------------------------------------------


def test_a_store_fingerprinted_with_the_old_inner_width_name_resumes(tmp_path):
    from pipeline.internal import sha256_json

    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    rs = ResultStore.open(store, "r+")
    parts = rs.meta["fingerprint_parts"]
    options = dict(parts["options"])
    options["micro"] = options.pop("inner_width")
    old = {**parts, "options": options}
    plan = dict(rs.meta["plan"])
    plan["total"] = plan.pop("extent")
    rs.meta.update(fingerprint=sha256_json(old), fingerprint_parts=old, plan=plan)
    rs.save_meta()
    rs.clear_record(2)
    again = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    assert again.run_summary.blocks_computed == 1 and again.status()["complete"]


# -- the in-memory defects the adversarial tester found ---------------------------------


def test_bfloat16_x_is_differentiated():
    f = lambda x: jnp.sum(jnp.sin(x) ** 2)
    x = jnp.linspace(0.1, 1.0, 6)
    H16, _ = dc.hessian(f, x.astype(jnp.bfloat16))
    H32, _ = dc.hessian(f, x)
    assert H16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(H16, np.float32), H32, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("call", ["hessian", "jacobian", "hessian_to_zarr"])
def test_a_zero_size_x_is_refused_without_naming_an_unasked_block_size(tmp_path, call):
    f = lambda x: jnp.sum(x**2)
    with pytest.raises(ValueError, match=r"x has no parameters") as err:
        if call == "hessian_to_zarr":
            pipeline.hessian_to_zarr(f, jnp.ones(0), str(tmp_path / "h"), progress=False)
        else:
            getattr(dc, call)(f, jnp.ones(0))
    assert "block" not in str(err.value)
    assert not os.path.exists(tmp_path / "h")


@pytest.mark.parametrize("budget", [float("inf"), 1e400, "1e400", "infGB"])
def test_an_infinite_memory_budget_is_a_value_error(budget):
    with pytest.raises(ValueError, match=r"memory_budget"):
        dc.hessian(lambda x: jnp.sum(x**2), jnp.ones(3), memory_budget=budget)


# -- the spec ----------------------------------------------------------------------------

BASE = "operation: hessian\nfunction: tinymodel:loss\npoint: tinymodel:best_fit\noutput: o.zarr\n"


def _run_spec_text(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return CliRunner().invoke(main, ["run", str(path), "--no-progress"])


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    # 440 bytes once expanded to an 8 MB zarr.json (+260 MB per level)
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 8)]
    text = BASE + "env:\n" + "".join(f"  {line}\n" for line in lines)
    t = time.perf_counter()
    res = _run_spec_text(tmp_path, text)
    assert time.perf_counter() - t < 5
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "aliases (*a0) are not allowed" in res.output and "spec.yaml" in res.output
    assert not os.path.exists(tmp_path / "o.zarr")


def test_duplicate_keys_are_refused(tmp_path):
    res = _run_spec_text(tmp_path, BASE + "blocks: {block_size: 2}\nblocks: {block_size: 4}\n")
    assert res.exit_code == 1
    assert "duplicate key 'blocks'" in res.output and "(line 6)" in res.output


@pytest.mark.parametrize("budget", [".inf", "1e400", "'1e400'"])
def test_an_infinite_memory_budget_in_a_spec_is_one_line(tmp_path, budget):
    res = _run_spec_text(tmp_path, BASE + f"blocks: {{memory_budget: {budget}}}\n")
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "blocks.memory_budget" in res.output and "finite" in res.output


def test_compressor_is_the_spec_name_too(tmp_path):
    spec = pipeline.internal.spec_from_dict(
        {
            "operation": "hessian",
            "function": "m:f",
            "point": "m:p",
            "output": "o",
            "compressor": "zstd",
        },
        str(tmp_path / "s.yaml"),
    )
    assert spec.compressor == "zstd"
    res = _run_spec_text(tmp_path, BASE + "compression: zstd\n")
    assert res.exit_code == 1 and "compression: renamed to compressor" in res.output


# -- the command: user errors in one line, bugs with their traceback --------------------


def test_an_unexpected_error_keeps_its_traceback(tmp_path, monkeypatch):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)

    def broken(self):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(pipeline.Result, "status", broken)
    res = CliRunner().invoke(main, ["status", store])
    assert isinstance(res.exception, ValueError) and "a bug" in str(res.exception)
    assert "diffops: error" not in res.output


def test_a_user_error_is_one_line_and_debug_shows_its_traceback(tmp_path):
    missing = str(tmp_path / "none.zarr")
    res = CliRunner().invoke(main, ["status", missing])
    assert res.exit_code == 1 and res.output.startswith("diffops: error: no diffops result")
    res = CliRunner().invoke(main, ["--debug", "status", missing])
    assert isinstance(res.exception, pipeline.StoreError)


def test_show_names_the_operation_once(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    res = CliRunner().invoke(main, ["show", store])
    assert "operation   hessian, shape (16, 16)" in res.output
    assert "hessian (hessian)" not in res.output
    summary = pipeline.open_result(store).summary()
    assert [leaf.path for leaf in summary.leaves] == [
        s.path for s in pipeline.open_result(store).layouts()[0].leaves
    ]
    assert json.dumps(dataclasses.asdict(summary))  # plain data


# -- habits -----------------------------------------------------------------------------


def _functions(source):
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # the whole definition, docstring included
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_pipeline_function_is_over_fifty_lines():
    long = [
        (name, fn, n)
        for name, src in _sources("pipeline").items()
        for fn, n in _functions(src)
        if n > 50
    ]
    assert long == []


def test_no_fault_injection_or_environment_switch_in_the_library():
    for package in ("pipeline", "diffops_core"):
        for name, src in _sources(package).items():
            assert "DIFFOPS_FAULTS" not in src, name
            assert 'os.environ.get("DIFFOPS' not in src, name


def test_the_front_doors_are_small():
    assert sorted(dc.__all__) == sorted(
        [
            "__version__",
            "jacobian",
            "hessian",
            "hessian_to_pytree",
            "matrix_to_pytree",
            # issue 11: what the matrices are for
            "gauss_newton",
            "covariance",
            "marginal_std",
            "spectrum",
            "Spectrum",
            # issue 18: sparse matrices from compressed products
            "Sparsity",
            "SparsityWarning",  # issue 24: auto says when it falls back to dense
            "gauss_newton_sparsity",
            "hessian_sparsity",
            "jacobian_sparsity",
            "sparse_gauss_newton",
            "sparse_hessian",
            "sparse_jacobian",
        ]
    )
    import diffops_core.internal as dci

    for name in dci.__all__:
        assert hasattr(dci, name), name


def test_public_functions_are_annotated():
    import inspect

    for module in (dc, pipeline):
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isfunction(obj):
                continue
            sig = inspect.signature(obj)
            missing = [p for p, v in sig.parameters.items() if v.annotation is inspect._empty]
            assert not missing and sig.return_annotation is not inspect._empty, (name, missing)


@pytest.mark.parametrize("compressors", [None, "zstd"])
def test_the_slab_writer_writes_what_zarr_reads_back(tmp_path, compressors):
    import zarr

    from pipeline.internal import SlabWriter

    codecs = None if compressors is None else [{"name": "zstd", "configuration": {"level": 1}}]
    group = zarr.open_group(str(tmp_path / "g"), mode="w")
    matrix = group.create_array(
        "m",
        shape=(10, 11),
        chunks=(3, 4),
        dtype="float64",
        fill_value=float("nan"),
        compressors=codecs,
    )
    writer = SlabWriter(matrix)
    assert writer.raw == (compressors is None)  # whole chunks bypass zarr's machinery
    rng = np.random.default_rng(0)
    expected = np.full((10, 11), np.nan)
    for cols in (slice(0, 4), slice(8, 11), slice(4, 8)):  # edge chunks included
        data = rng.standard_normal((10, cols.stop - cols.start))
        writer.write(slice(None), cols, data)
        expected[:, cols] = data
        np.testing.assert_array_equal(np.asarray(matrix[...]), expected)
    rows = rng.standard_normal((3, 11))  # a row slab
    writer.write(slice(3, 6), slice(None), rows)
    expected[3:6] = rows
    np.testing.assert_array_equal(
        np.asarray(zarr.open_array(str(tmp_path / "g" / "m"))[...]), expected
    )
