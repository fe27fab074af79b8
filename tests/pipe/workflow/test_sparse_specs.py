"""Specs with ``sparsity: auto`` (issue 18, part E): run, resumed, verified
and repaired like dense ones; the summary names the saving."""

import os

import numpy as np
import pytest

import diffops_core as dc
import pipeline
from helpers import residual_spec


def test_a_sparse_spec_runs_verifies_and_repairs_a_damaged_product(tmp_path, monkeypatch):
    path = residual_spec(tmp_path, monkeypatch, "sparse_model", sparsity="auto",
                         blocks="{block_size: 1}", dtype="float32",
                         finalize="{std: std.npz}")  # fmt: skip
    summary = pipeline.run_spec(pipeline.load_spec(path), progress=False)
    assert summary.complete and summary.sparsity["ncolors"] < 6
    spec = pipeline.load_spec(path)
    f, x = spec.load_function(), spec.load_point()
    G = np.asarray(dc.gauss_newton(f, x)[0])
    result = pipeline.open_result(str(tmp_path / "g.zarr"))
    np.testing.assert_allclose(result.assemble(), G, rtol=1e-5, atol=1e-5)
    std = np.load(tmp_path / "std.npz")
    np.testing.assert_allclose(std["a"], dc.marginal_std(G.astype(np.float64), x)["a"], rtol=1e-4)
    chunk = os.path.join(str(tmp_path / "g.zarr"), "compressed", "c", "0", "1")
    raw = bytearray(open(chunk, "rb").read())
    raw[:4] = np.float32(7.0).tobytes()
    open(chunk, "wb").write(bytes(raw))
    assert result.verify() == [1]
    report = pipeline.repair(str(tmp_path / "g.zarr"), progress=False)
    assert report["bad"] == [1] and report["still_bad"] == [] and report["still_missing"] == []
    fixed = pipeline.open_result(str(tmp_path / "g.zarr"))
    np.testing.assert_allclose(fixed.assemble(), G, rtol=1e-5, atol=1e-5)
    assert fixed.meta["sparsity"]["check"]["passed"]  # checked again for the new blocks


def test_sparsity_takes_none_or_auto_only(tmp_path, monkeypatch):
    path = residual_spec(tmp_path, monkeypatch, "sparse_bad", sparsity="yes")
    with pytest.raises(pipeline.SpecError, match="sparsity: must be none, auto or"):
        pipeline.load_spec(path)


def test_a_spec_takes_a_known_pattern_from_a_file(tmp_path, monkeypatch):
    """Issue 24: ``sparsity: {pattern: file.npz}`` colours the given pattern and
    checks the result like any other; a pattern that misses entries is
    refused by the check, and a file that is no pattern by name."""
    import scipy.sparse as sp

    auto = residual_spec(tmp_path, monkeypatch, "pattern_model", name="auto.yaml",
                         sparsity="auto", output="auto.zarr", dtype="float32")  # fmt: skip
    pipeline.run_spec(pipeline.load_spec(auto), progress=False)
    known = pipeline.open_result(str(tmp_path / "auto.zarr")).store.sparsity().pattern
    sp.save_npz(tmp_path / "pattern.npz", sp.csr_array(known, dtype=np.float32))
    path = residual_spec(tmp_path, monkeypatch, "pattern_model",
                         sparsity="{pattern: pattern.npz}", dtype="float32")  # fmt: skip
    summary = pipeline.run_spec(pipeline.load_spec(path), progress=False)
    spec = pipeline.load_spec(path)
    G = np.asarray(dc.gauss_newton(spec.load_function(), spec.load_point())[0])
    result = pipeline.open_result(str(tmp_path / "g.zarr"))
    assert summary.complete and result.meta["sparsity"]["check"]["passed"]
    np.testing.assert_allclose(result.sparse().toarray(), G, rtol=1e-5, atol=1e-5)
    sp.save_npz(tmp_path / "diagonal.npz", sp.identity(known.shape[0], format="csr"))
    wrong = residual_spec(tmp_path, monkeypatch, "pattern_model", name="wrong.yaml",
                          sparsity="{pattern: diagonal.npz}", output="wrong.zarr",
                          dtype="float32")  # fmt: skip
    with pytest.raises(ValueError, match="does not match products of random vectors"):
        pipeline.run_spec(pipeline.load_spec(wrong), progress=False)
    (tmp_path / "junk.npz").write_bytes(b"not a pattern")
    junk = residual_spec(tmp_path, monkeypatch, "pattern_model", name="junk.yaml",
                         sparsity="{pattern: junk.npz}", output="junk.zarr")  # fmt: skip
    with pytest.raises(pipeline.SpecError, match="sparsity.pattern: cannot use"):
        pipeline.run_spec(pipeline.load_spec(junk), progress=False)
