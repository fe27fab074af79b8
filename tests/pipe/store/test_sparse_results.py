"""Sparse results in the store (issue 18, part E): the blocks compute the
compressed products of their colours, the store keeps them with the pattern
and the colours, and every reader gives the matrix `jax.hessian` /
`jax.jacfwd` give, or refuses."""

import dataclasses
import os
import warnings

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import diffops_core as dc
import diffops_core.internal
import pipeline
import pipeline.internal
from helpers import log_fault
from pipeline.internal import BlockTask, Limits

NPIX, NGLOBAL = 40, 3


def arrow_x():
    return {
        "flat": jnp.linspace(0.9, 1.1, NPIX, dtype=jnp.float32),
        "globals": jnp.array([0.3, -0.2, 0.5], jnp.float32),
    }


def arrow_loss(p):
    """Each pixel couples only to itself and the globals: an arrowhead Hessian."""
    shape = jnp.exp(-((jnp.arange(NPIX) - 20.0 * p["globals"][0]) ** 2) / 50.0)
    model = p["flat"] * (1.0 + shape * p["globals"][1]) + p["globals"][2] ** 2
    return jnp.sum((model - 1.0) ** 2) + jnp.sum(p["flat"] ** 4) + jnp.sum(p["globals"] ** 2)


def arrow_residuals(p):
    shape = jnp.exp(-((jnp.arange(NPIX) - 20.0 * p["globals"][0]) ** 2) / 50.0)
    model = p["flat"] * (1.0 + shape * p["globals"][1]) + p["globals"][2]
    return {"pixels": model - 1.0, "prior": jnp.concatenate([p["flat"] - 1.0, p["globals"]])}


def _flat(f, x):
    flat, unravel = jax.flatten_util.ravel_pytree(x)
    return (lambda v: f(unravel(v))), flat


def _killed_at(store, inject, block):
    """A sparse run into ``store`` (blocks of 2 products) that fails at ``block``:
    its products written, no record."""
    inject([{"block": block, "kind": "raise", "at": "write"}])
    with pytest.raises(pipeline.BlockError):
        pipeline.hessian_to_zarr(arrow_loss, arrow_x(), store, sparsity="auto", block_size=2,
                                 progress=False)  # fmt: skip
    inject.clear()


def _dense_hessian(f, x):
    g, flat = _flat(f, x)
    return np.asarray(jax.hessian(g)(flat))


def test_a_sparse_hessian_store_holds_few_products_and_reads_as_jax_hessian(tmp_path):
    x = arrow_x()
    store = str(tmp_path / "h.zarr")
    result = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", progress=False)
    info = result.meta["sparsity"]
    n = NPIX + NGLOBAL
    assert info["mode"] == "star" and info["ncolors"] == NGLOBAL + 1  # the optimum
    probes = info["probes"]  # the check's products ride after the colours'
    assert probes["count"] == diffops_core.internal.PROBES
    # the products, not n columns
    assert result.store.data.shape == (n, info["ncolors"] + probes["count"])
    assert not os.path.exists(os.path.join(store, "matrix"))
    expected = _dense_hessian(arrow_loss, x)
    S = result.sparse()
    assert isinstance(S, sp.csr_array) and S.nnz == info["nnz"] < n * n
    np.testing.assert_allclose(S.toarray(), expected, rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(result.array.compute(), expected, rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(result.assemble(), expected, rtol=2e-5, atol=2e-4)
    blocks = result.to_pytree(x)
    np.testing.assert_allclose(np.asarray(blocks["flat"]["globals"]), expected[:NPIX, NPIX:],
                               rtol=2e-5, atol=2e-4)  # fmt: skip
    zodiax_like = dc.hessian_to_pytree(dc.hessian(arrow_loss, x)[0], x)
    np.testing.assert_allclose(np.asarray(blocks["globals"]["globals"]),
                               np.asarray(zodiax_like["globals"]["globals"]), rtol=2e-5, atol=2e-4)  # fmt: skip
    assert result.verify() == [] and result.shape == (n, n)
    assert info["check"]["passed"] and info["check"]["error"] <= info["check"]["tolerance"]
    assert info["check"]["seed"] == probes["seed"]  # the check read the stored products
    vectors = diffops_core.internal.probe_vectors(n, probes["seed"])
    stored = np.asarray(result.store.data[:, info["ncolors"] :])
    np.testing.assert_allclose(stored.T, vectors @ expected.T, rtol=2e-5, atol=2e-3)
    again = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", progress=False)
    assert again.run_summary.reason == "complete: nothing to do"


def test_the_last_ragged_block_of_colours_verifies(tmp_path):
    # 4 colours and 6 probes in blocks of 3: the last block's window starts early;
    # its record must be of its own product only (a defect: it was of the whole window)
    result = pipeline.hessian_to_zarr(arrow_loss, arrow_x(), str(tmp_path / "h.zarr"),
                                      sparsity="auto", block_size=3, progress=False)  # fmt: skip
    assert result.store.plan.n_blocks == 4 and result.verify() == []


def test_sparse_jacobians_in_column_and_row_modes(tmp_path):
    x = jnp.linspace(0.1, 1.0, 30)
    tall = lambda v: jnp.concatenate([v[1:] * v[:-1], v[:1] ** 3])
    wide = lambda v: jnp.stack([jnp.sum(v[::2] ** 2), jnp.sum(jnp.sin(v[1::2]))])
    for f, mode in ((tall, "column"), (wide, "row")):
        result = pipeline.jacobian_to_zarr(f, x, str(tmp_path / f"{mode}.zarr"),
                                           sparsity="auto", progress=False)  # fmt: skip
        info = result.meta["sparsity"]
        assert info["mode"] == mode
        stored = result.store.data.shape
        probes = diffops_core.internal.PROBES  # after a column colouring's products only
        expected = (30, info["ncolors"] + probes) if mode == "column" else (info["ncolors"], 30)
        assert stored == expected and ("probes" in info) == (mode == "column")
        np.testing.assert_allclose(result.sparse().toarray(), np.asarray(jax.jacfwd(f)(x)),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip


def test_a_sparse_fisher_matrix_and_its_sigma_equal_the_dense_ones(tmp_path):
    x = arrow_x()
    sparse = pipeline.gauss_newton_to_zarr(arrow_residuals, x, str(tmp_path / "s.zarr"), std=0.1,
                                           sparsity="auto", progress=False)  # fmt: skip
    dense = pipeline.gauss_newton_to_zarr(arrow_residuals, x, str(tmp_path / "d.zarr"), std=0.1,
                                          progress=False)  # fmt: skip
    assert sparse.meta["sparsity"]["ncolors"] == NGLOBAL + 1
    np.testing.assert_allclose(sparse.assemble(), dense.assemble(), rtol=1e-5, atol=1e-3)
    got, want = sparse.marginal_std(x), dense.marginal_std(x)
    for key in ("flat", "globals"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4)
    G = dc.gauss_newton(arrow_residuals, x, std=0.1)[0]
    expected = dc.marginal_std(np.asarray(G, np.float64), x)
    np.testing.assert_allclose(got["globals"], expected["globals"], rtol=1e-4)


def test_a_dense_function_with_auto_is_the_dense_computation(tmp_path):
    store = str(tmp_path / "h.zarr")
    f = lambda v: jnp.sum(jnp.outer(v, v) ** 2)
    x = jnp.linspace(0.1, 1.0, 12)
    first = pipeline.hessian_to_zarr(f, x, store, sparsity="auto", progress=False)
    assert "sparsity" not in first.meta and os.path.isdir(os.path.join(store, "matrix"))
    again = pipeline.hessian_to_zarr(f, x, store, progress=False)  # the same computation
    assert again.run_summary.reason == "complete: nothing to do"


def test_auto_refuses_a_dense_fallback_above_max_dense_and_says_why(tmp_path):
    """Issue 24: sparsity="auto" never plans dense work beyond what the user
    allows without saying so: above max_dense (1 GiB unless raised) the run is
    refused before anything is written, naming the size and the ways on."""
    store = str(tmp_path / "h.zarr")
    f = lambda v: jnp.sum(jnp.outer(v, v) ** 2)
    x = jnp.linspace(0.1, 1.0, 12)
    with pytest.raises(ValueError, match=r"dense 12x12 float32 result would be 576 B.*max_dense"):
        pipeline.hessian_to_zarr(f, x, store, sparsity="auto", max_dense=500, progress=False)
    assert not os.path.exists(store)
    result = pipeline.hessian_to_zarr(f, x, store, sparsity="auto", max_dense="1KB",
                                      progress=False)  # fmt: skip
    np.testing.assert_allclose(result.assemble(), _dense_hessian(f, x), rtol=1e-5)
    with pytest.raises(ValueError, match="max_dense"):
        pipeline.hessian_to_zarr(f, x, str(tmp_path / "b.zarr"), sparsity="auto",
                                 max_dense="lots", progress=False)  # fmt: skip


def test_a_dense_store_is_not_replaced_by_a_sparse_run_without_overwrite(tmp_path):
    store = str(tmp_path / "h.zarr")
    x = arrow_x()
    pipeline.hessian_to_zarr(arrow_loss, x, store, progress=False)
    with pytest.raises(pipeline.StoreError, match="options"):
        pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", progress=False)
    result = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", overwrite=True,
                                      progress=False)  # fmt: skip
    assert result.store.is_sparse and not os.path.exists(os.path.join(store, "matrix"))


def test_a_wrong_pattern_fails_its_check_and_is_never_read(tmp_path):
    x = arrow_x()
    store = str(tmp_path / "h.zarr")
    found = dc.hessian_sparsity(arrow_loss, x)
    n = found.shape[0]
    diagonal = sp.csr_array(sp.identity(n, dtype=bool, format="csr"))
    wrong = dataclasses.replace(found, pattern=diagonal, colors=np.zeros(n, int), ncolors=1)
    with pytest.raises(ValueError, match="does not match products of random vectors"):
        pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity=wrong, progress=False)
    result = pipeline.open_result(store)
    assert result.status()["complete"]  # the blocks are there, but the result failed
    assert result.meta["sparsity"]["check"]["passed"] is False
    for read in (result.sparse, result.assemble, lambda: result.array.compute()):
        with pytest.raises(ValueError, match="has not passed its check"):
            read()
    assert "FAILED" in "\n".join(result.summary().lines())


def test_a_killed_sparse_run_resumes_its_missing_colours_only(tmp_path, inject):
    x = arrow_x()
    store = str(tmp_path / "h.zarr")
    _killed_at(store, inject, 1)
    partial = pipeline.open_result(store)
    assert partial.missing_blocks() == [1]
    with pytest.raises(ValueError, match="incomplete"):
        partial.sparse()
    result = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", block_size=2,
                                      progress=False)  # fmt: skip
    assert result.run_summary.blocks_computed == 1
    np.testing.assert_allclose(result.assemble(), _dense_hessian(arrow_loss, x), rtol=2e-5,
                               atol=2e-4)  # fmt: skip


@pytest.mark.parametrize("plan_sees_the_store", [True, False])
def test_a_resumed_block_of_probes_computes_the_stores_vectors(
    tmp_path, inject, monkeypatch, plan_sees_the_store
):
    """The probe vectors are the store's (their seed drawn when it was made): a
    resume computes its probe products with them, whether the plan read the
    stored seed or drew another (a store made by another run after the plan
    looked: the run takes the store's)."""
    x = arrow_x()
    store = str(tmp_path / "h.zarr")
    _killed_at(store, inject, 3)  # products 6, 7: probes
    seed = pipeline.open_result(store).meta["sparsity"]["probes"]["seed"]
    if not plan_sees_the_store:
        planning = pipeline.internal.plan_module
        seedless = lambda info: (int((info.get("probes") or {}).get("count", 0)), None)
        monkeypatch.setattr(planning, "probes_of", seedless)  # the plan draws another seed
    result = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", block_size=2,
                                      progress=False)  # fmt: skip
    info = result.meta["sparsity"]
    assert result.run_summary.blocks_computed == 1 and info["probes"]["seed"] == seed
    assert info["check"]["passed"] and info["check"]["seed"] == seed
    np.testing.assert_allclose(result.sparse().toarray(), _dense_hessian(arrow_loss, x),
                               rtol=2e-5, atol=2e-4)  # fmt: skip


def test_a_worker_refuses_probe_vectors_other_than_the_stores(tmp_path, inject, monkeypatch):
    """A block computes the probe vectors of the store's seed or none: the run
    refuses, naming both, rather than store products the check's noise
    estimate (their linearity defect) would absorb."""
    x = arrow_x()
    store = str(tmp_path / "h.zarr")
    _killed_at(store, inject, 3)
    api, planning = pipeline.internal.api_module, pipeline.internal.plan_module
    monkeypatch.setattr(api, "_stored_probes", lambda run_plan, _store: run_plan)
    seedless = lambda info: (int((info.get("probes") or {}).get("count", 0)), None)
    monkeypatch.setattr(planning, "probes_of", seedless)  # the plan draws another seed
    with pytest.raises(pipeline.BlockError, match="probe vectors stored in the store"):
        pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", block_size=2,
                                 progress=False)  # fmt: skip
    assert pipeline.open_result(store).missing_blocks() == [3]  # nothing half-marked


def test_a_damaged_pattern_is_refused_naming_it(tmp_path):
    store = str(tmp_path / "h.zarr")
    result = pipeline.hessian_to_zarr(arrow_loss, arrow_x(), store, sparsity="auto",
                                      progress=False)  # fmt: skip
    chunk = os.path.join(store, "colors", "c", "0")
    values = np.fromfile(chunk, dtype="<i4")
    values[0] = values[0] + 1
    values.tofile(chunk)
    fresh = pipeline.open_result(store)
    with pytest.raises(pipeline.StoreError, match="colors stored at .* differ"):
        fresh.sparse()
    with pytest.raises(pipeline.StoreError, match="colors stored at .* differ"):
        pipeline.open_result(store).verify()  # no block repair mends it: said, not hidden
    assert result is not None


def test_a_sparse_store_has_no_dense_matrix_to_factorise(tmp_path):
    result = pipeline.hessian_to_zarr(arrow_loss, arrow_x(), str(tmp_path / "h.zarr"),
                                      sparsity="auto", progress=False)  # fmt: skip
    for call in (lambda: result.covariance(str(tmp_path / "c.zarr"), progress=False),
                 lambda: result.analyze(progress=False)):  # fmt: skip
        with pytest.raises(ValueError, match="holds a sparse result"):
            call()
    assert not os.path.exists(tmp_path / "c.zarr")


def test_a_worker_refuses_a_colouring_other_than_the_drivers(tmp_path):
    x = arrow_x()
    store = str(tmp_path / "h.zarr")
    result = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", progress=False)
    plan = pipeline.internal.plan("hessian", arrow_loss, x, store, sparsity="auto",
                                  limits=Limits(10**12, 0, 1, "test"))  # fmt: skip
    task = dataclasses.replace(BlockTask.from_plan(plan.for_run(2, "t")), colors="0" * 64)
    with pytest.raises(pipeline.BlockError, match="colouring stored in the store differs"):
        task(0)
    assert result.verify() == []  # nothing was written


def test_xarray_opens_a_sparse_store_and_show_names_the_saving(tmp_path):
    xr = pytest.importorskip("xarray")
    store = str(tmp_path / "h.zarr")
    result = pipeline.hessian_to_zarr(arrow_loss, arrow_x(), store, sparsity="auto",
                                      progress=False)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(store)
    assert ds.compressed.dims == ("row", "color") and ds.compressed.shape == (43, 4 + 6)
    assert ds.colors.shape == (43,)
    view = result.to_xarray()  # the dense view, with the leaf coordinates
    assert view.dims == ("row", "column") and view.shape == (43, 43)
    flat = int(view.attrs["row_leaves"].index("['flat']"))
    block = view.sel(
        row=view.row[view.row_leaf == flat], column=view.column[view.column_leaf == flat]
    )
    np.testing.assert_allclose(block.values, _dense_hessian(arrow_loss, arrow_x())[:NPIX, :NPIX],
                               rtol=2e-5, atol=2e-4)  # fmt: skip
    text = "\n".join(result.summary().lines())
    assert "4 products instead of 43" in text and "passed" in text


def test_the_spectrum_of_a_sparse_store_is_the_dense_matrixs(tmp_path):
    x = arrow_x()
    fisher = pipeline.gauss_newton_to_zarr(arrow_residuals, x, str(tmp_path / "g.zarr"), std=0.1,
                                           sparsity="auto", progress=False)  # fmt: skip
    hessian = pipeline.hessian_to_zarr(arrow_loss, x, str(tmp_path / "h.zarr"), sparsity="auto",
                                       progress=False)  # fmt: skip
    chain = pipeline.hessian_to_zarr(lambda v: jnp.sum(v[1:] * v[:-1] ** 2) - jnp.sum(v**2),
                                     jnp.linspace(-1.0, 1.0, 40), str(tmp_path / "c.zarr"),
                                     sparsity="auto", progress=False)  # fmt: skip
    assert chain.meta["sparsity"]["ncolors"] == 3
    for result in (fisher, hessian, chain):  # positive definite twice, then indefinite
        dense = result.assemble().astype(np.float64)
        exact = np.linalg.eigvalsh((dense + dense.T) / 2)
        found = result.spectrum(k=3, progress=False)
        np.testing.assert_allclose(found["largest"], exact[::-1][:3], rtol=1e-5)
        np.testing.assert_allclose(found["smallest"], exact[:3], rtol=1e-4, atol=1e-6)
        assert found["positive_definite"] == bool(exact[0] > 0) and found["matvecs"] > 0
    assert not found["positive_definite"]  # the chain's: the small end by Lanczos on it


def test_the_blocking_counts_colours(tmp_path):
    x = arrow_x()
    # 4 colours and the check's 6 probes
    for i, (options, blocks) in enumerate((({"nbatches": 64}, 10), ({"block_size": 100}, 1),
                                           ({"nbatches": 2}, 2))):  # fmt: skip
        result = pipeline.hessian_to_zarr(arrow_loss, x, str(tmp_path / f"h{i}.zarr"),
                                          sparsity="auto", progress=False, **options)  # fmt: skip
        assert result.store.plan.n_blocks == blocks, options
    with pytest.raises(ValueError, match="at most one of nbatches, block_size"):
        pipeline.hessian_to_zarr(arrow_loss, x, str(tmp_path / "bad.zarr"), sparsity="auto",
                                 nbatches=2, block_size=2, progress=False)  # fmt: skip


def test_a_sparse_run_traces_f_once(tmp_path):
    # detection and the self-check read the plan's trace (a defect: f was traced
    # three times, by the plan, the detection and the check)
    traces = []

    def counted(p):
        traces.append(1)  # runs when f is traced, never when a kernel runs
        return arrow_loss(p)

    pipeline.hessian_to_zarr(counted, arrow_x(), str(tmp_path / "h.zarr"), sparsity="auto",
                             progress=False)  # fmt: skip
    assert len(traces) == 1


def _fisher_store(tmp_path):
    store = str(tmp_path / "f.zarr")
    pipeline.gauss_newton_to_zarr(arrow_residuals, arrow_x(), store, std=0.1, sparsity="auto",
                                  progress=False)  # fmt: skip
    return store


def test_sparse_readers_compare_checksums_as_dense_readers_do(tmp_path):
    import zarr

    store = _fisher_store(tmp_path)
    products = zarr.open_array(os.path.join(store, "compressed"), mode="r+")
    products[:, :1] = np.asarray(products[:, :1]) * 1.5  # valid bytes, other values
    result = pipeline.open_result(store)
    with pytest.raises(pipeline.StoreError, match="no longer match their checksums"):
        result.marginal_std()
    with pytest.raises(pipeline.StoreError, match="verify --repair"):
        pipeline.open_result(store).sparse()
    log_fault("sparse: a products chunk rewritten with valid bytes", 1, True, 0)


def test_a_resume_and_a_run_with_nothing_to_do_take_the_pattern_from_the_store(
    tmp_path, inject, monkeypatch
):
    x = arrow_x()
    store = str(tmp_path / "h.zarr")
    _killed_at(store, inject, 1)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0])
        return dc.internal.detect_sparsity(*args, **kwargs)

    monkeypatch.setattr("pipeline.run._plan.detect_sparsity", counted)
    resumed = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", block_size=2,
                                       progress=False)  # fmt: skip
    assert resumed.run_summary.blocks_computed == 1 and calls == []
    again = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", block_size=2,
                                     progress=False)  # fmt: skip
    assert again.run_summary.blocks_computed == 0 and calls == []
    np.testing.assert_allclose(again.assemble(), _dense_hessian(arrow_loss, x), rtol=2e-5,
                               atol=2e-4)  # fmt: skip
    other = lambda p: arrow_loss(p) + jnp.sum(p["flat"][1:] * p["flat"][:-1])  # another pattern
    replaced = pipeline.hessian_to_zarr(other, x, store, sparsity="auto", block_size=2,
                                        overwrite=True, progress=False)  # fmt: skip
    assert calls == ["hessian"]  # another computation: detected, never the stored pattern
    log_fault("sparse: a block killed, resumed with the stored pattern", 1, True, 0)
    np.testing.assert_allclose(replaced.assemble(), _dense_hessian(other, x), rtol=2e-5,
                               atol=2e-4)  # fmt: skip


@pytest.mark.slow
def test_a_spectrum_short_of_k_says_how_many_are_missing(tmp_path):
    chain = pipeline.hessian_to_zarr(lambda v: jnp.sum(v[1:] * v[:-1] ** 2) - jnp.sum(v**2),
                                     jnp.linspace(-1.0, 1.0, 3000), str(tmp_path / "c.zarr"),
                                     sparsity="auto", progress=False)  # fmt: skip
    found = chain.spectrum(k=4, tol=1e-300, progress=False)  # a tolerance Lanczos cannot meet
    assert found["asked"] == 4
    short = {end: 4 - len(found[end]) for end in ("largest", "smallest") if len(found[end]) < 4}
    assert short and found["unconverged"] == short
    complete = chain.spectrum(k=3, progress=False)
    assert "unconverged" not in complete and len(complete["largest"]) == 3


def test_a_truncated_zstd_chunk_of_products_is_refused_naming_its_block(tmp_path):
    from helpers import chunk_files

    store = str(tmp_path / "z.zarr")
    pipeline.gauss_newton_to_zarr(arrow_residuals, arrow_x(), store, std=0.1, sparsity="auto",
                                  compressor="zstd", progress=False)  # fmt: skip
    first = chunk_files(store, "compressed")[0]
    with open(first, "r+b") as fh:
        fh.truncate(max(1, os.path.getsize(first) // 2))
    with pytest.raises(pipeline.StoreError, match=r"blocks \[0\] .* no longer decode"):
        pipeline.open_result(store).sparse()
    assert pipeline.open_result(store).verify() == [0]
    log_fault("sparse: a zstd chunk of products truncated", 1, True, 0)


def test_the_check_rides_in_the_blocks_calls_not_another_linearisation(tmp_path, monkeypatch):
    """Issue 23, B10 (the pipeline): the probe vectors' products are columns of
    the blocks' own compiled calls, stored after the colours'; the check reads
    them and runs nothing more of f (it linearised and compiled apart before)."""
    x = arrow_x()
    kernels_cls = diffops_core.internal.Kernels

    def refuse(*_args, **_kwargs):
        raise AssertionError("the check computed its products apart")

    monkeypatch.setattr(kernels_cls, "products", refuse)
    result = pipeline.hessian_to_zarr(arrow_loss, x, str(tmp_path / "h.zarr"),
                                      sparsity="auto", progress=False)  # fmt: skip
    info = result.meta["sparsity"]
    assert info["check"]["passed"] and info["check"]["seed"] == info["probes"]["seed"]
    np.testing.assert_allclose(result.sparse().toarray(), _dense_hessian(arrow_loss, x),
                               rtol=2e-5, atol=2e-4)  # fmt: skip


def test_a_run_with_nothing_to_do_reads_the_pattern_once_and_compiles_no_block(
    tmp_path, monkeypatch
):
    """Issue 24 (fisher_1m with nothing to do): the plan reads the store's
    pattern (digests checked) and admission takes it, instead of reading it
    twice more; the block kernel is compiled for its memory check only when
    blocks are left."""
    from pipeline.internal import group_module, plan_module

    store, x = str(tmp_path / "h.zarr"), arrow_x()
    pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", block_size=2,
                             progress=False)  # fmt: skip
    reads, real = [], group_module.read_sparsity

    def counted(*args, **kwargs):
        reads.append(args[2])
        return real(*args, **kwargs)

    def no_compile(*args, **kwargs):
        raise AssertionError("the block kernel was compiled with nothing to do")

    monkeypatch.setattr(group_module, "read_sparsity", counted)
    monkeypatch.setattr(plan_module, "task_bytes", no_compile)
    result = pipeline.hessian_to_zarr(arrow_loss, x, store, sparsity="auto", block_size=2,
                                      progress=False)  # fmt: skip
    assert result.run_summary.reason == "complete: nothing to do"
    assert len(reads) == 1
    with pytest.raises(AssertionError, match="compiled"):  # blocks left: memory checked
        pipeline.hessian_to_zarr(arrow_loss, x, str(tmp_path / "new.zarr"), sparsity="auto",
                                 block_size=2, progress=False)  # fmt: skip


def test_an_arrowhead_jacobian_is_stored_from_one_sided_products(tmp_path):
    """In memory the arrowhead Jacobian takes three products (JVPs and VJPs
    together); a store holds one kind of product, so the pipeline colours it
    one-sidedly: more products, the same matrix."""
    x = jnp.linspace(0.1, 1.0, 120)
    f = lambda v: jnp.concatenate([jnp.sum(jnp.sin(v))[None], v[1:] ** 2 * v[0]])
    assert dc.jacobian_sparsity(f, x).mode == "bidirectional"
    result = pipeline.jacobian_to_zarr(f, x, str(tmp_path / "a.zarr"), sparsity="auto",
                                       progress=False)  # fmt: skip
    assert result.meta["sparsity"]["mode"] in ("column", "row")
    np.testing.assert_allclose(result.sparse().toarray(), np.asarray(jax.jacfwd(f)(x)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    other = str(tmp_path / "b.zarr")  # 120 products of 120 float32: 56 KiB
    with pytest.raises(ValueError, match=r"3 products with JVPs and VJPs together.*56.25 kiB"):
        pipeline.jacobian_to_zarr(f, x, other, sparsity="auto", max_dense="50KB", progress=False)
    assert not os.path.exists(other)
