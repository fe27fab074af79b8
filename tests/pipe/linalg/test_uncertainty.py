"""Marginal σ and covariances of stored matrices, out of core (issue 11)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import diffops_core as dc
import pipeline
from helpers import SPD_N as N
from helpers import mixed_out, mixed_x
from helpers import spd as _spd
from helpers import spd_quadratic as _quadratic
from helpers import spd_store as _store
from helpers import spd_x as _x
from pipeline.internal import factor_module


def _in_memory(result, damping=0.0):
    return dc.marginal_std(np.asarray(result.assemble(), np.float64), _x(), damping=damping)


def _close(got, expected, rtol=2e-7):  # in memory: rounded to x's float32
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], rtol=rtol)


class _Count:
    """Counts the tile tasks run (wrapping `FactorTask.lower_tile`)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = pipeline.internal.FactorTask.lower_tile

        def counted(task, i, j):
            self.calls += 1
            return original(task, i, j)

        monkeypatch.setattr(pipeline.internal.FactorTask, "lower_tile", counted)


@pytest.mark.parametrize(
    ("block_size", "tile"),
    [(16, 32), (50, 64), (150, 150), pytest.param(32, 7, marks=pytest.mark.slow), (7, 40)],
)
def test_marginal_std_and_covariance_equal_the_in_memory_ones(tmp_path, block_size, tile):
    result = _store(tmp_path, block_size=block_size)
    got = result.marginal_std(tile=tile, progress=False)
    assert set(got) == {"a", "b"} and got["a"].shape == (5, 10) and got["a"].dtype == np.float64
    _close(got, _in_memory(result))
    cov = result.covariance(str(tmp_path / "c.zarr"), tile=tile, progress=False)
    expected = dc.covariance(np.asarray(result.assemble(), np.float64))
    np.testing.assert_allclose(cov.assemble(), expected, rtol=1e-9, atol=1e-12)
    assert cov.meta["operation"] == "covariance" and cov.dtype == np.float64
    assert cov.status()["complete"] and cov.verify() == []
    np.testing.assert_allclose(
        np.asarray(cov.to_pytree()["a"]["b"]), dc.hessian_to_pytree(expected, _x())["a"]["b"]
    )


def test_a_second_call_reads_the_stored_factor_and_damping_replaces_it(tmp_path, monkeypatch):
    result = _store(tmp_path)
    count = _Count(monkeypatch)
    first = result.marginal_std(tile=50, progress=False)
    assert count.calls == 6  # 3 tile columns: 3 + 2 + 1 tiles
    again = pipeline.open_result(result.location).marginal_std(progress=False)  # tile: stored
    assert count.calls == 6
    _close(again, first, rtol=0)
    damped = result.marginal_std(damping=0.5, progress=False)
    assert count.calls > 6
    _close(damped, _in_memory(result, damping=0.5))
    assert all(np.all(damped[k] < first[k]) for k in first)


def test_a_damaged_tile_is_computed_again(tmp_path, monkeypatch):
    result = _store(tmp_path)
    expected = result.marginal_std(tile=50, progress=False)
    chunk = os.path.join(result.location, "factor", "lower", "c", "2", "1")
    with open(chunk, "r+b") as fh:  # flip bytes in L[2, 1]
        fh.seek(800)
        fh.write(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    os.remove(os.path.join(result.location, "factor", "variance", "c", "2"))  # work left
    count = _Count(monkeypatch)
    _close(result.marginal_std(progress=False), expected)
    assert count.calls == 1


def test_a_killed_factorisation_resumes_with_the_same_answer(tmp_path, monkeypatch):
    result = _store(tmp_path, block_size=16)
    script = textwrap.dedent(
        f"""
        import os, signal
        import pipeline
        from pipeline.internal import FactorTask
        writes = 0
        original = pipeline.internal.FactorTask.write
        def write(self, arrays, name, i, j, data):
            global writes
            writes += 1
            if writes == 9:  # the tile's data written, its record not yet
                arrays[name][self.span(i), self.span(j)] = data
                os.kill(os.getpid(), signal.SIGKILL)
            original(self, arrays, name, i, j, data)
        pipeline.internal.FactorTask.write = write
        pipeline.open_result({result.location!r}).marginal_std(tile=30, progress=False)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    records = np.asarray(
        pipeline.internal.FactorTask(result.location, N, 30, 0.0).arrays()["records"][0]
    )
    assert int(np.count_nonzero(records)) == 8  # 8 tiles recorded, the 9th only written
    count = _Count(monkeypatch)
    _close(result.marginal_std(tile=30, progress=False), _in_memory(result))
    assert count.calls == 15 - 8  # 5 tile columns: 15 tiles, 8 kept


def test_not_positive_definite_fails_with_the_diagnostics_and_keeps_nothing(tmp_path):
    P = _spd()
    eig = np.linalg.eigvalsh(P.astype(np.float64))
    P[np.diag_indices(N)] -= (eig[2] + eig[3]) / 2  # 3 modes < 0
    result = _store(tmp_path, P=P)
    target = tmp_path / "cov.zarr"
    with pytest.raises(ValueError, match="damping=") as info:
        result.covariance(str(target), tile=40, progress=False)
    message = str(info.value)
    assert "not positive definite" in message and "(3 of 150 eigenvalues <= 0;" in message
    assert "broke down in columns" in message
    assert "factor" not in os.listdir(result.location) and not target.exists()
    with pytest.raises(ValueError, match="smallest eigenvalue"):
        dc.marginal_std(np.asarray(result.assemble(), np.float64), _x())
    _close(result.marginal_std(damping=1.0, progress=False), _in_memory(result, damping=1.0))


def test_a_large_matrix_is_diagnosed_by_lanczos(tmp_path, monkeypatch):
    P = _spd()
    eig = np.linalg.eigvalsh(P.astype(np.float64))
    P[np.diag_indices(N)] -= (eig[0] + eig[1]) / 2  # 1 mode < 0
    result = _store(tmp_path, P=P)
    monkeypatch.setattr(factor_module, "EXACT_DIAGNOSIS_BYTES", 0)
    with pytest.raises(ValueError, match="by Lanczos") as info:
        result.marginal_std(tile=40, progress=False)
    assert "1 of its 150 eigenvalues <= 0" in str(info.value)
    low = float(str(info.value).split("smallest eigenvalue is ")[1].split(" ")[0])
    assert low == pytest.approx((eig[0] - eig[1]) / 2, rel=1e-3)


def test_jacobian_incomplete_and_bad_arguments_are_refused(tmp_path, inject):
    jac = pipeline.jacobian_to_zarr(mixed_out, mixed_x(), str(tmp_path / "j.zarr"), progress=False)
    with pytest.raises(ValueError, match="holds a jacobian"):
        jac.marginal_std(progress=False)
    inject([{"block": 1, "kind": "raise"}])
    with pytest.raises(pipeline.BlockError):
        _store(tmp_path, name="part.zarr")
    inject.clear()
    part = pipeline.open_result(str(tmp_path / "part.zarr"))
    with pytest.raises(ValueError, match="incomplete"):
        part.covariance(str(tmp_path / "c.zarr"), progress=False)
    assert not (tmp_path / "c.zarr").exists()
    result = _store(tmp_path)
    with pytest.raises(ValueError, match="damping must be finite"):
        result.marginal_std(damping=-1.0, progress=False)
    with pytest.raises(TypeError, match="damping must be a number"):
        result.marginal_std(damping="a lot", progress=False)
    with pytest.raises(ValueError, match="tile must be a positive int"):
        result.marginal_std(tile=0, progress=False)
    with pytest.raises(ValueError, match="its own store"):
        result.covariance(result.location, progress=False)
    assert "factor" not in os.listdir(result.location)


def test_the_covariance_store_is_ours_or_refused(tmp_path):
    result = _store(tmp_path)
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    with pytest.raises(pipeline.StoreError, match="not a diffops store"):
        result.covariance(str(foreign), progress=False, overwrite=True)
    assert os.listdir(foreign) == ["data.txt"]
    other = _store(tmp_path, P=_spd(seed=1), name="other.zarr")
    with pytest.raises(pipeline.StoreError, match="another result"):
        result.covariance(other.location, progress=False)
    first = result.covariance(str(tmp_path / "c.zarr"), tile=64, progress=False)
    again = result.covariance(str(tmp_path / "c.zarr"), progress=False)
    assert again.meta["runs_total"] == first.meta["runs_total"] == 1  # complete: nothing to do
    replaced = result.covariance(other.location, overwrite=True, progress=False)
    assert replaced.meta["operation"] == "covariance"


def test_an_overwritten_store_never_reuses_the_old_factor(tmp_path):
    result = _store(tmp_path)
    result.marginal_std(progress=False)
    other = pipeline.hessian_to_zarr(
        _quadratic(_spd(seed=3)), _x(), result.location, block_size=32, progress=False,
        overwrite=True,
    )  # fmt: skip
    _close(other.marginal_std(progress=False), _in_memory(other))


def test_a_complete_factor_is_not_reread_and_a_damaged_inverse_never_reaches_a_covariance(
    tmp_path, monkeypatch
):
    result = _store(tmp_path)
    expected = result.marginal_std(tile=50, progress=False)
    reads = []
    original = pipeline.internal.FactorTask.read
    monkeypatch.setattr(
        pipeline.internal.FactorTask,
        "read",
        lambda self, *a: reads.append(a[1:]) or original(self, *a),
    )
    _close(result.marginal_std(progress=False), expected, rtol=0)
    assert reads == []  # the second call reads the variances only
    chunk = os.path.join(result.location, "factor", "inverse", "c", "2", "0")
    with open(chunk, "r+b") as fh:  # damage W[2, 0]
        fh.seek(80)
        fh.write(b"\xff" * 16)
    cov = result.covariance(str(tmp_path / "c.zarr"), progress=False)
    H = np.asarray(result.assemble(), np.float64)
    np.testing.assert_allclose(cov.assemble(), dc.covariance(H), rtol=1e-9, atol=1e-12)
