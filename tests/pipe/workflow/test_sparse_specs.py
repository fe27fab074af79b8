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


def test_a_spec_run_names_each_step_with_the_drivers_peak(tmp_path, monkeypatch):
    """Issue 25 item 14: the driver's steps, each with its seconds and its own
    peak (`stage_peaks`), in the summary and in ``diffops run``'s output."""
    from click.testing import CliRunner

    from pipeline.cli import main

    spec = residual_spec(tmp_path, monkeypatch, "staged_model", sparsity="auto",
                         finalize="{std: std.npz, npy: g.npy}")  # fmt: skip
    summary = pipeline.run_spec(pipeline.load_spec(spec), progress=False, stage_peaks=True)
    names = [s["name"] for s in summary.stages]
    assert names == ["load", "plan", "blocks", "self-check", "checks", "npy", "std"]
    assert all(s["alone"] and s["peak_bytes"] > 0 and s["seconds"] >= 0 for s in summary.stages)
    assert summary.peak_rss_driver >= max(s["peak_bytes"] for s in summary.stages)
    again = pipeline.run_spec(pipeline.load_spec(spec), progress=False)  # nothing to do
    assert [s["name"] for s in again.stages] == ["load", "plan", "blocks"]
    assert not any(s["alone"] for s in again.stages)  # the caller's peak is left alone
    out = CliRunner().invoke(
        main, ["run", spec, "--output", str(tmp_path / "again.zarr"), "--no-progress"]
    )
    assert out.exit_code == 0, out.output
    line = next(t for t in out.output.splitlines() if t.strip().startswith("driver"))
    assert "plan" in line and "self-check" in line and "(peak so far)" not in line


def test_a_step_measured_alone_forgets_the_peak_before_it():
    """The reset is real: a step after a large allocation reports its own peak,
    not the allocation's (and without the reset, the peak so far)."""
    from pipeline.internal import Stages, stage

    big = np.ones(2**27)  # 1 GiB, touched
    del big
    with Stages() as so_far, stage("small"):
        np.ones(2**20).sum()
    with Stages(reset_peak=True) as alone, stage("small"):
        np.ones(2**20).sum()
    (mine,), (theirs,) = alone.figures, so_far.figures
    assert mine.alone and not theirs.alone
    assert theirs.peak_bytes - mine.peak_bytes > 2**29
    assert alone.peak_bytes >= 2**30  # the recorder's own peak keeps what came before
