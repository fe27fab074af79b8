"""``diffops analyze`` and `Result.analyze` (issue 11)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import pipeline
import pipeline.internal
from helpers import SPD_N as N
from helpers import mixed_out, mixed_x
from helpers import spd as _spd
from helpers import spd_store as _store
from pipeline.cli import main


def _analyze_cli(*args):
    return CliRunner().invoke(main, ["analyze", *args, "--no-progress"])


def _clustered(n=N, seed=0):
    """Eigenvalues: a few spread ones and a tight cluster (pixels of one noise
    level), the case where Lanczos converges slowly inside the cluster."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.concatenate([[1e-3, 0.5, 2.0], 100 + 1e-6 * rng.normal(size=n - 6), [1e3, 3e3, 1e4]])
    return ((q * eig) @ q.T).astype(np.float32), np.sort(eig)


def test_analyze_reports_sigma_eigenvalues_and_the_verdict(tmp_path):
    result = _store(tmp_path)
    H = np.asarray(result.assemble(), np.float64)
    eig = np.linalg.eigvalsh(H)
    std = np.sqrt(np.diag(np.linalg.inv(H)))
    out = _analyze_cli(result.location, "--json", "-k", "3")
    assert out.exit_code == 0, out.output
    found = json.loads(out.output)
    np.testing.assert_allclose(found["largest"], eig[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(found["smallest"], eig[:3], rtol=1e-6)
    assert found["positive_definite"] and found["error"] is None
    assert found["condition"] == pytest.approx(eig[-1] / eig[0], rel=1e-6)
    leaves = {leaf["label"]: leaf for leaf in found["leaves"]}
    assert leaves["a"]["shape"] == [5, 10]
    assert leaves["a"]["min"] == pytest.approx(std[:50].min(), rel=1e-9)
    assert leaves["b"]["median"] == pytest.approx(np.median(std[50:]), rel=1e-9)
    assert leaves["b"]["max"] == pytest.approx(std[50:].max(), rel=1e-9)
    text = _analyze_cli(result.location)
    assert text.exit_code == 0 and "positive definite   yes" in text.output
    assert f"{leaves['b']['max']:.4g}" in text.output


def test_a_cluster_of_eigenvalues_does_not_stall_the_smallest(tmp_path):
    P, _ = _clustered()
    result = _store(tmp_path, P=P)
    eig = np.linalg.eigvalsh(np.asarray(result.assemble(), np.float64))  # as stored (float32)
    analysis = result.analyze(k=6, progress=False)
    assert analysis.matvecs < 1500
    # the spread ones converge; those inside the cluster may be left out
    np.testing.assert_allclose(analysis.smallest[:3], eig[:3], rtol=1e-6)
    np.testing.assert_allclose(analysis.largest[:3], eig[::-1][:3], rtol=1e-5)
    assert "ill-conditioned" not in "\n".join(analysis.lines())


def test_not_positive_definite_gives_the_verdict_and_damping_the_sigma(tmp_path):
    P = _spd()
    eig = np.linalg.eigvalsh(P.astype(np.float64))
    P[np.diag_indices(N)] -= (eig[0] + eig[1]) / 2
    result = _store(tmp_path, P=P)
    out = _analyze_cli(result.location)
    assert out.exit_code == 0, out.output
    assert "positive definite   NO" in out.output and "not computed" in out.output
    assert "damping=" in out.output
    found = json.loads(_analyze_cli(result.location, "--json", "--damping", "1").output)
    assert found["leaves"] and found["error"] is None and not found["positive_definite"]
    assert found["damped_condition"] < found["condition"] == float("inf")


def test_the_picture_is_written(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    result = _store(tmp_path)
    png = tmp_path / "a.png"
    out = _analyze_cli(result.location, "--plot", str(png))
    assert out.exit_code == 0 and f"wrote {png}" in out.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(
        pipeline.internal.analysis_module, "FULL_SPECTRUM_BYTES", 0
    )  # the Lanczos extremes only
    task = pipeline.internal.FactorTask(result.location, N, 150, 0.0)
    corr = pipeline.internal.correlation(task, np.arange(N))
    H = np.asarray(result.assemble(), np.float64)
    cov = np.linalg.inv(H)
    np.testing.assert_allclose(
        corr, cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov))), atol=1e-10
    )
    result.analyze(plot=str(png), pixels=40, progress=False)
    assert png.stat().st_size > 1000


def test_analyze_refuses_a_jacobian_and_an_incomplete_store(tmp_path, inject):
    jac = pipeline.jacobian_to_zarr(mixed_out, mixed_x(), str(tmp_path / "j.zarr"), progress=False)
    out = _analyze_cli(jac.location)
    assert out.exit_code == 1
    assert "holds a jacobian; compute gauss_newton_to_zarr" in out.output
    inject([{"block": 0, "kind": "raise"}])
    with pytest.raises(pipeline.BlockError):
        _store(tmp_path, name="part.zarr")
    inject.clear()
    out = _analyze_cli(str(tmp_path / "part.zarr"))
    assert out.exit_code == 1 and "incomplete (4/5 blocks); run it again" in out.output
    assert len(out.output.strip().splitlines()) == 1
    out = _analyze_cli(str(tmp_path / "nothing"))
    assert out.exit_code == 1 and "no diffops result" in out.output


def test_an_end_lanczos_cannot_resolve_is_solved_in_memory_when_it_fits(tmp_path, monkeypatch):
    P = _spd()
    eig = np.linalg.eigvalsh(P.astype(np.float64))
    P[np.diag_indices(N)] -= (eig[0] + eig[1]) / 2
    result = _store(tmp_path, P=P)
    original = pipeline.internal.lanczos_module.extremes
    monkeypatch.setattr(
        pipeline.internal.lanczos_module,
        "extremes",
        lambda op, k, which, *a: [] if which == "SA" else original(op, k, which, *a),
    )
    analysis = result.analyze(k=3, progress=False)
    exact = np.linalg.eigvalsh(np.asarray(result.assemble(), np.float64))
    np.testing.assert_allclose(analysis.smallest, exact[:3], rtol=1e-10)
    assert not analysis.positive_definite and analysis.error
    monkeypatch.setattr(pipeline.internal.analysis_module, "FULL_SPECTRUM_BYTES", 1)
    with pytest.raises(ValueError, match="Lanczos found no eigenvalue at one end"):
        result.analyze(k=3, progress=False)


def test_units_alone_do_not_make_sigma_inaccurate(tmp_path):
    C = _spd()  # well conditioned
    d = np.logspace(0, 7, N)  # parameters in units 10⁷ apart: the raw condition ~1e14
    result = _store(tmp_path, P=(C * d[:, None] * d[None, :]).astype(np.float64))
    analysis = result.analyze(k=3, progress=False)
    assert analysis.condition * np.finfo(np.float64).eps > 1e-4  # the raw figure is huge
    assert analysis.correlation_condition < 1e6
    text = "\n".join(analysis.lines())
    assert "mostly unit scaling" in text and "ill-conditioned" not in text
