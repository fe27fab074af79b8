"""Issue 8: a stored result is the computation asked for (fresh or refused), views
never show a missing block as zeros, and the store is only ever ours.

Each test reproduces a case observed on d0876c5; those that inject a fault log
it for benchmarks/fault_report.py.
"""

import json
import os
import shutil
import threading
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc
import diffops_core.internal as dci
import pipeline
from helpers import chunk_files, file_snapshot, log_fault, mixed_loss, mixed_x, tol
from pipeline.internal import BlockTask, Limits, ResultStore, RunLock, task_bytes
from pipeline.internal import default_block as _default_block

X4 = jnp.linspace(0.1, 0.4, 4)


def _hessian(f, x=X4):
    return np.asarray(dc.hessian(f, x)[0])


# -- what the old fingerprint missed (issue 8, item 2) ---------------------------------

GLOBAL_W = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
FAKE_MODULE = types.ModuleType("fake_model")


def _global_pair():
    global GLOBAL_W
    f = lambda x: jnp.sum(GLOBAL_W * jnp.sin(x))

    def change():
        global GLOBAL_W
        GLOBAL_W = GLOBAL_W * 10

    return f, f, change


def _module_attribute_pair():
    FAKE_MODULE.w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    f = lambda x: jnp.sum(FAKE_MODULE.w * jnp.sin(x))
    return f, f, lambda: setattr(FAKE_MODULE, "w", FAKE_MODULE.w * 10)


class _Obj:
    def __init__(self, w):
        self.w = jnp.asarray(w, jnp.float32)

    def loss(self, x):
        return jnp.sum(self.w * jnp.sin(x))

    def __call__(self, x):
        return jnp.sum(self.w * jnp.cos(x))


class _Eqx(eqx.Module):
    w: jax.Array

    def __call__(self, x):
        return jnp.sum(self.w * jnp.sin(x) ** 2)


class _ClassAttr:
    w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)


def _deep(w, depth=8):
    f = lambda x: jnp.sum(w * jnp.sin(x))
    for _ in range(depth):
        f = (lambda g: lambda x: g(x) * 1.0)(f)
    return f


def _kwdefault(w):
    def f(x, *, w=w):
        return jnp.sum(w * jnp.sin(x))

    return f


W1, W2 = [1.0, 2.0, 3.0, 4.0], [5.0, 1.0, 7.0, 2.0]
PAIRS = {
    "global": _global_pair,
    "module attribute": _module_attribute_pair,
    "bound method's object": lambda: (_Obj(W1).loss, _Obj(W2).loss, None),
    "callable object's attribute": lambda: (_Obj(W1), _Obj(W2), None),
    "equinox module as f": lambda: (_Eqx(jnp.array(W1)), _Eqx(jnp.array(W2)), None),
    "equinox module closed over": lambda: (
        (lambda m: lambda x: m(x) + 1.0)(_Eqx(jnp.array(W1))),
        (lambda m: lambda x: m(x) + 1.0)(_Eqx(jnp.array(W2))),
        None,
    ),
    "jitted f, edited body": lambda: (
        jax.jit(lambda x: jnp.sum(jnp.sin(x) ** 3)),
        jax.jit(lambda x: jnp.sum(jnp.sin(x) ** 5)),
        None,
    ),
    "__kwdefaults__": lambda: (
        _kwdefault(np.array(W1, np.float32)),
        _kwdefault(np.array(W2, np.float32)),
        None,
    ),
    "frozenset": lambda: (
        (lambda s: lambda x: jnp.sum(x**3) * sum(sorted(s)))(frozenset({1.0, 2.0})),
        (lambda s: lambda x: jnp.sum(x**3) * sum(sorted(s)))(frozenset({5.0})),
        None,
    ),
    "class attribute": lambda: (
        lambda x: jnp.sum(_ClassAttr.w * jnp.sin(x)),
        None,
        lambda: setattr(_ClassAttr, "w", _ClassAttr.w * 10),
    ),
    "closure deeper than 6": lambda: (
        _deep(np.array(W1, np.float32)),
        _deep(np.array(W2, np.float32)),
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(PAIRS))
def test_another_computation_is_refused_then_recomputed(tmp_path, case):
    saved = (GLOBAL_W, _ClassAttr.w)
    try:
        fa, fb, change = PAIRS[case]()
        store = str(tmp_path / "h.zarr")
        first = pipeline.hessian_to_zarr(fa, X4, store, block_size=2, progress=False).assemble()
        np.testing.assert_allclose(first, _hessian(fa), rtol=1e-6)
        if change is not None:
            change()
            fb = fb or fa
        with pytest.raises(
            pipeline.StoreError,
            match=r"differs in: (function|data)\).*"
            r"overwrite=True",
        ):
            pipeline.hessian_to_zarr(fb, X4, store, block_size=2, progress=False)
        again = pipeline.hessian_to_zarr(
            fb, X4, store, block_size=2, overwrite=True, progress=False
        )
        assert again.run_summary.blocks_computed == 2  # everything, not a mix
        expected = _hessian(fb)
        assert not np.allclose(expected, first)
        np.testing.assert_allclose(again.assemble(), expected, rtol=1e-6)
    finally:
        globals()["GLOBAL_W"], _ClassAttr.w = saved
    log_fault(f"f's {case} changed between runs (refused, then recomputed)", 1, True, 0)


def test_changed_data_after_an_interrupted_run_is_refused_not_mixed(tmp_path, monkeypatch, inject):
    global GLOBAL_W
    saved = GLOBAL_W
    f = lambda x: jnp.sum(GLOBAL_W * jnp.sin(x) ** 2)
    store = str(tmp_path / "h.zarr")
    inject([{"block": 2, "kind": "raise"}])
    with pytest.raises(pipeline.BlockError):
        pipeline.hessian_to_zarr(f, X4, store, block_size=1, threads=1, progress=False)
    inject.clear()
    try:
        GLOBAL_W = GLOBAL_W * 3
        with pytest.raises(
            pipeline.StoreError,
            match=r"differs in: data\): the data f reads "
            r"changed",
        ):
            pipeline.hessian_to_zarr(f, X4, store, block_size=1, progress=False)
        done = pipeline.hessian_to_zarr(f, X4, store, block_size=1, overwrite=True, progress=False)
        assert done.run_summary.blocks_computed == 4
        np.testing.assert_allclose(done.assemble(), _hessian(f), rtol=1e-6)
    finally:
        GLOBAL_W = saved
    log_fault("data changed after an interrupted run (refused; no mixed matrix)", 1, True, 0)


def test_a_new_store_gets_its_own_objects_matrix(tmp_path):
    # issue 8 (3): the worker kernel cache keyed on the fingerprint minus x wrote
    # b1's Hessian into b2
    b1 = pipeline.hessian_to_zarr(
        _Obj([1, 2, 3, 4]).loss, X4, str(tmp_path / "b1.zarr"), block_size=2, progress=False
    )
    b2 = pipeline.hessian_to_zarr(
        _Obj([10, 20, 30, 40]).loss, X4, str(tmp_path / "b2.zarr"), block_size=2, progress=False
    )
    np.testing.assert_allclose(b1.assemble(), _hessian(_Obj([1, 2, 3, 4]).loss), rtol=1e-6)
    np.testing.assert_allclose(b2.assemble(), _hessian(_Obj([10, 20, 30, 40]).loss), rtol=1e-6)


def test_a_worker_whose_f_reads_other_data_refuses_to_write(tmp_path):
    store = str(tmp_path / "h.zarr")
    good = pipeline.hessian_to_zarr(_Obj(W1).loss, X4, store, block_size=2, progress=False)
    ctx_args = good.meta
    identity = dci.get_kernels(_Obj(W1).loss, X4, "hessian")[0].traced.identity()
    task = BlockTask(
        token="t-other",
        f=_Obj(W2).loss,
        x=np.asarray(X4),
        op="hessian",
        checkpoint=False,
        program=identity.program,
        data=identity.data,
        block_size=2,
        inner_width=None,
        location=store,
        run=9,
        x64=False,
        extent=4,
        axis=ctx_args["axis"],
    )
    with pytest.raises(pipeline.BlockError, match=r"the data f reads .* differs from the driver"):
        task(0)
    assert ResultStore.open(store).read_records()[0, 3] == 1  # untouched: still run 1's


# -- views never read a missing block as zeros (item 4) --------------------------------


def test_missing_blocks_read_as_nan_in_every_view(tmp_path, monkeypatch, inject):
    store = str(tmp_path / "h.zarr")
    inject([{"block": 1, "kind": "raise"}])
    with pytest.raises(pipeline.BlockError):
        pipeline.hessian_to_zarr(
            mixed_loss, mixed_x(), store, block_size=4, threads=1, progress=False
        )
    result = pipeline.open_result(store)
    missing = result.missing_blocks()
    assert 1 in missing
    a = result.array.compute()
    for block in range(4):
        columns = a[:, 4 * block : 4 * block + 4]
        assert np.isnan(columns).all() if block in missing else np.isfinite(columns).all()
    import zarr

    assert np.isnan(zarr.open_group(store, mode="r")["matrix"][0, 5])  # any zarr reader
    leaves = jax.tree_util.tree_leaves(result.to_pytree())
    assert any(np.isnan(np.asarray(leaf.compute())).any() for leaf in leaves)
    with pytest.raises(ValueError, match="incomplete"):
        result.assemble()


def test_a_deleted_chunk_makes_the_store_incomplete_and_is_recomputed(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    os.unlink(chunk_files(store)[2])
    result = pipeline.open_result(store)
    status = result.status()
    assert not status["complete"] and status["missing_data"] == [2]
    assert result.missing_blocks() == [2]
    with pytest.raises(ValueError, match="incomplete"):
        result.assemble()
    again = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    assert again.run_summary.blocks_computed == 1
    np.testing.assert_allclose(
        again.assemble(), dc.hessian(mixed_loss, mixed_x())[0], **tol(np.float32)
    )
    log_fault("a data chunk deleted from a complete store (seen, recomputed)", 1, True, 0)


def test_to_pytree_checks_key_paths_not_only_shapes(tmp_path):
    x = {"a": jnp.ones(3), "b": jnp.ones(2)}
    result = pipeline.hessian_to_zarr(
        lambda p: jnp.sum(p["a"]) ** 2 * jnp.sum(p["b"] ** 2),
        x,
        str(tmp_path / "h.zarr"),
        progress=False,
    )
    renamed = {"p": jnp.ones(3), "q": jnp.ones(2)}
    with pytest.raises(
        ValueError,
        match=r"x has leaves \[\['p'\] \(3,\).*computed for "
        r"\[\['a'\] \(3,\)",
    ):
        result.to_pytree(renamed)
    assert result.to_pytree(x)["a"]["b"].shape == (3, 2)


# -- the store is only ever ours (items 5, 7, 9) ---------------------------------------


def test_a_directory_that_is_not_ours_is_never_touched(tmp_path):
    target = tmp_path / "mine"
    (target / "models").mkdir(parents=True)
    (target / "notes.txt").write_text("do not delete")
    (target / "models" / "m.py").write_text("x = 1")
    before = file_snapshot(str(target))
    for overwrite in (False, True):
        with pytest.raises(
            pipeline.StoreError,
            match=r"is not a diffops store .*notes.txt.*never "
            r"writes into or deletes",
        ):
            pipeline.hessian_to_zarr(
                mixed_loss, mixed_x(), str(target), overwrite=overwrite, progress=False
            )
    assert file_snapshot(str(target)) == before
    a_file = tmp_path / "file.zarr"
    a_file.write_text("data")
    with pytest.raises(pipeline.StoreError, match="is a file"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), str(a_file), overwrite=True, progress=False)
    assert a_file.read_text() == "data"
    log_fault("output pointed at a user's directory (refused, nothing touched)", 2, True, 0)


def test_a_store_killed_while_being_created_is_recreated(tmp_path, monkeypatch):
    import zarr

    store = str(tmp_path / "h.zarr")
    real = zarr.Group.create_array

    def dies_on_blocks(self, name, **kw):
        if name == "blocks":
            raise KeyboardInterrupt  # as a kill would, between the two arrays
        return real(self, name, **kw)

    monkeypatch.setattr(zarr.Group, "create_array", dies_on_blocks)
    with pytest.raises(KeyboardInterrupt):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    monkeypatch.setattr(zarr.Group, "create_array", real)
    with pytest.raises(
        pipeline.StoreError, match="creation was interrupted; run the computation again"
    ):
        pipeline.open_result(store)
    done = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    assert done.status()["complete"]
    # a bare group without diffops metadata is not ours (issue 16, item 6): refused,
    # and left as it was
    bare = tmp_path / "bare.zarr"
    zarr.open_group(str(bare), mode="w")
    before = file_snapshot(str(bare))
    with pytest.raises(pipeline.StoreError, match="no diffops metadata"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), str(bare), block_size=4, progress=False)
    assert file_snapshot(str(bare)) == before
    log_fault("a store killed while being created (recreated)", 2, True, 0)


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_array_metadata_is_one_line_naming_the_file(tmp_path, damage):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    meta = os.path.join(store, "matrix", "zarr.json")
    if damage == "delete":
        os.unlink(meta)
    else:
        with open(meta, "r+") as fh:
            fh.truncate(40)
    with pytest.raises(
        pipeline.StoreError,
        match=r"cannot read .*h.zarr/matrix/zarr.json .*"
        r"overwrite=True",
    ) as err:
        pipeline.open_result(store)
    assert "\n" not in str(err.value)
    with pytest.raises(pipeline.StoreError, match=r"matrix/zarr.json"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    done = pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), store, block_size=4, overwrite=True, progress=False
    )
    np.testing.assert_allclose(
        done.assemble(), dc.hessian(mixed_loss, mixed_x())[0], **tol(np.float32)
    )
    log_fault(
        f"array metadata {damage}d (one line naming the file; overwrite recomputes)", 1, True, 0
    )


def test_damaged_group_metadata_names_the_file(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    with open(os.path.join(store, "zarr.json"), "r+") as fh:
        fh.truncate(20)
    with pytest.raises(pipeline.StoreError, match=r"cannot read .*h.zarr/zarr.json"):
        pipeline.open_result(store)
    # nothing readable says diffops made it (issue 16, item 6): refused even with
    # overwrite, naming the file, and nothing touched
    before = file_snapshot(store)
    for overwrite in (False, True):
        with pytest.raises(
            pipeline.StoreError, match=r"cannot read .*h.zarr/zarr.json.*delete it yourself"
        ):
            pipeline.hessian_to_zarr(
                mixed_loss, mixed_x(), store, block_size=4, overwrite=overwrite, progress=False
            )
    assert file_snapshot(store) == before


def test_file_urls_work_and_leave_no_bare_group(tmp_path):
    path = tmp_path / "u.zarr"
    result = pipeline.hessian_to_zarr(
        mixed_loss, mixed_x(), f"file://{path}", block_size=4, progress=False
    )
    assert result.status()["complete"]
    again = pipeline.open_result(f"file://{path}")
    np.testing.assert_allclose(
        again.assemble(), dc.hessian(mixed_loss, mixed_x())[0], **tol(np.float32)
    )
    from pipeline.internal import COORDINATES

    expected = ["blocks", "diffops.lock", "matrix", "zarr.json", *COORDINATES]  # only ours
    assert sorted(os.listdir(path)) == sorted(expected)


# -- locks (item 8) --------------------------------------------------------------------


def test_a_stale_lock_race_has_exactly_one_winner(tmp_path):
    winners_per_trial = []
    for trial in range(40):
        store = tmp_path / f"s{trial}"
        store.mkdir()
        # an old lock body of a dead process: no longer means anything
        (store / "diffops.lock").write_text(json.dumps({"host": "h", "pid": 2**22 + 1}))
        barrier, held, errors = threading.Barrier(2), [], []

        def take(store=store, barrier=barrier, held=held, errors=errors):
            lock = RunLock(str(store))
            barrier.wait()
            try:
                lock.acquire()
                held.append(lock)
            except pipeline.StoreError:
                pass
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        threads = [threading.Thread(target=take) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        winners_per_trial.append(len(held))
        for lock in held:
            lock.release()
    assert winners_per_trial == [1] * 40
    log_fault("two runs racing for a stale lock (40 trials, one winner each)", 40, True, 0)


# -- plans that fit (items 10, 11) -----------------------------------------------------


def _wide_quadratic(n):
    w = jnp.linspace(0.5, 1.5, n)
    return (lambda v: jnp.sum(w * v**2) + jnp.sum(v) ** 2 * 1e-3), jnp.linspace(-1.0, 1.0, n)


def test_default_block_fits_the_memory_there_is(tmp_path, monkeypatch):
    import psutil

    f, x = _wide_quadratic(2000)
    kernels = dci.get_kernels(f, x, "hessian")[0]
    roomy = _default_block(kernels, Limits(10**12, 0, 2, "test"))
    assert roomy == 125  # about 16 blocks
    need = task_bytes(kernels, roomy)[0]
    tight = Limits(int(need), 0, 2, "test")  # room for about half a default block per task
    block = _default_block(kernels, tight)
    assert 1 <= block < roomy and tight.fits(task_bytes(kernels, block)[0])
    with_baseline = _default_block(kernels, Limits(int(need), int(0.2 * need), 2, "test"))
    assert with_baseline < block  # the worker's baseline is counted

    class Small:
        available = int(need)
        total = int(need)

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Small)
    result = pipeline.hessian_to_zarr(f, x, str(tmp_path / "h.zarr"), progress=False)
    assert result.meta["plan"]["block_size"] == block
    np.testing.assert_allclose(result.array.compute(), dc.hessian(f, x)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(
        MemoryError,
        match=r"one block task needs about .* over 80% of this "
        r"machine's available memory",
    ):
        Small.available = 1000
        pipeline.hessian_to_zarr(f, x, str(tmp_path / "tiny.zarr"), progress=False)


def test_a_device_smaller_than_the_host_sizes_the_blocks(tmp_path, monkeypatch):
    """Issue 25, item 12: the memory plan counted only the host's memory, but on
    a GPU each block's kernel runs in the device's (``memory_stats``)."""
    from pipeline.internal import executor_limits, resources_module

    f, x = _wide_quadratic(2000)
    kernels = dci.get_kernels(f, x, "hessian")[0]
    need = task_bytes(kernels, 125)[0]  # a default block of 125, per task
    monkeypatch.setattr(resources_module, "device_bytes", lambda: int(need))
    limits = executor_limits(pipeline.ThreadsExecutor(2))
    assert limits.limit == int(need) and "the device's memory" in limits.where
    block = _default_block(kernels, limits)
    assert 1 <= block < 125
    result = pipeline.hessian_to_zarr(f, x, str(tmp_path / "h.zarr"), progress=False)
    assert result.meta["plan"]["block_size"] == block
    np.testing.assert_allclose(result.array.compute(), dc.hessian(f, x)[0], rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(resources_module, "device_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match=r"the device's memory"):
        pipeline.hessian_to_zarr(f, x, str(tmp_path / "tiny.zarr"), progress=False)
    monkeypatch.setattr(resources_module, "device_bytes", lambda: 0)  # a CPU: the host's
    assert "device" not in executor_limits(pipeline.ThreadsExecutor(2)).where


def test_a_matrix_larger_than_the_disk_is_refused_before_a_store_exists(tmp_path):
    n = 10**6  # 4 TB of float32
    f = lambda v: jnp.sum(v**2)
    store = tmp_path / "huge.zarr"
    with pytest.raises(pipeline.StoreError, match=r"needs 3\.64 TiB more on disk .* but only "):
        pipeline.hessian_to_zarr(f, jnp.zeros(n), str(store), block_size=64, progress=False)
    assert not store.exists()
    log_fault("a 4 TB Hessian on a small disk (refused before a store exists)", 1, True, 0)


# -- moved stores, repair (item 6) -----------------------------------------------------


def test_a_moved_store_resumes_in_place(tmp_path):
    store = str(tmp_path / "h.zarr")
    pipeline.hessian_to_zarr(mixed_loss, mixed_x(), store, block_size=4, progress=False)
    moved = str(tmp_path / "elsewhere" / "h.zarr")
    shutil.copytree(store, moved)
    ResultStore.open(moved, "r+").clear_record(3)
    before = file_snapshot(store)
    again = pipeline.hessian_to_zarr(mixed_loss, mixed_x(), moved, block_size=4, progress=False)
    assert again.run_summary.blocks_computed == 1 and again.status()["complete"]
    assert file_snapshot(store) == before


def test_a_worker_limit_below_the_runtime_floor_is_refused_with_the_numbers():
    from pipeline.internal import WORKER_RUNTIME_BYTES

    f, x = _wide_quadratic(200)
    kernels = dci.get_kernels(f, x, "hessian")[0]
    worker = Limits(
        int(0.6e9), int(0.25e9), 1, "a worker's memory limit", WORKER_RUNTIME_BYTES, 0.7
    )
    with pytest.raises(
        MemoryError,
        match=r"238.42 MiB baseline \+ the 286.10 MiB a worker's runtime "
        r"grows to .* over 70% of a worker's memory limit",
    ):
        _default_block(kernels, worker)
    roomy = Limits(int(1e9), int(0.25e9), 1, "a worker's memory limit", WORKER_RUNTIME_BYTES, 0.7)
    assert roomy.peak(1) == int(0.25e9) + WORKER_RUNTIME_BYTES and roomy.fits(1)


def test_a_default_blocked_run_resumes_whatever_memory_is_free_now(tmp_path, monkeypatch):
    # the default block depends on the memory there is; resuming must not see
    # "another computation" because the machine has more (or less) free than before
    import psutil

    f, x = _wide_quadratic(2000)
    kernels = dci.get_kernels(f, x, "hessian")[0]
    need = task_bytes(kernels, 125)[0]  # 125: the count default, with memory to spare

    class Tight:
        available = int(need)
        total = int(need)

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight)
    store = str(tmp_path / "h.zarr")
    first = pipeline.hessian_to_zarr(f, x, store, progress=False)
    block = first.meta["plan"]["block_size"]
    assert block < 125
    pipeline.store.ResultStore.open(store, "r+").clear_record(3)
    monkeypatch.undo()  # memory to spare now: a fresh plan would take 125
    again = pipeline.hessian_to_zarr(f, x, store, progress=False)
    assert again.meta["plan"]["block_size"] == block
    assert again.run_summary.blocks_computed == 1 and again.status()["complete"]


def test_a_directory_holding_only_a_folder_named_like_a_coordinate_is_not_ours(tmp_path):
    # review of issue 10: the coordinate arrays' names (row, column, ...) joined the
    # names we create; a folder of the user's called "row" must not make a directory
    # look like a half-made store of ours (which a run would clear)
    target = tmp_path / "out.zarr"
    (target / "row").mkdir(parents=True)
    (target / "row" / "notes.txt").write_text("mine")
    with pytest.raises(pipeline.StoreError, match="not a diffops store|refus"):
        pipeline.hessian_to_zarr(mixed_loss, mixed_x(), str(target), block_size=4, progress=False)
    assert (target / "row" / "notes.txt").read_text() == "mine"
