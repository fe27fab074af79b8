"""`operation: gauss_newton` specs with a noise model, and finalize.std (issue 11)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import diffops_core as dc
from pipeline.cli import main
from pipeline.internal import ResultStore

MODEL = """
import jax.numpy as jnp
import numpy as np

def residuals(p):
    return {"fit": jnp.sin(p["a"]) * p["b"] - 0.2, "prior": (p["a"] - 0.5) / 2.0}

def point():
    return {"a": np.linspace(0.1, 1.0, 5).astype(np.float32), "b": np.float32(1.5)}
"""
M = 10  # residuals: 5 + 5


def _spec(tmp_path, monkeypatch, **fields):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "gnmodel.py").write_text(MODEL)
    data = {
        "operation": "gauss_newton",
        "function": "gnmodel:residuals",
        "point": "gnmodel:point",
        "output": "g.zarr",
        "blocks": "{block_size: 2}",
        "dtype": "float64",
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in data.items()))
    return str(path)


def _expected(**noise):
    import importlib

    model = importlib.import_module("gnmodel")
    import jax

    with jax.enable_x64(True):
        x = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), model.point())
        G = np.asarray(dc.gauss_newton(model.residuals, x, **noise)[0])
        return G, dc.marginal_std(G, x)


def _cov():
    a = np.random.default_rng(4).normal(size=(M, M))
    return a @ a.T + M * np.eye(M)


@pytest.mark.parametrize("form", ["none", "std", "std_file", "cov", "inv_cov"])
def test_a_fisher_spec_with_each_noise_form(tmp_path, monkeypatch, form):
    noise, fields = {}, {}
    if form == "std":
        noise, fields = {"std": 0.5}, {"noise": "{std: 0.5}"}
    elif form == "std_file":
        std = np.concatenate([np.linspace(0.5, 1.0, 5), np.full(5, 2.0)])  # all 10, flat
        np.save(tmp_path / "std.npy", std)
        noise, fields = {"std": std}, {"noise": "{std: std.npy}"}
    elif form in ("cov", "inv_cov"):
        matrix = _cov() if form == "cov" else np.linalg.inv(_cov())
        np.save(tmp_path / "c.npy", matrix)
        noise, fields = {form: matrix}, {"noise": f"{{{form}: c.npy}}"}
    spec = _spec(tmp_path, monkeypatch, finalize="{std: sigma.npz}", **fields)
    res = CliRunner().invoke(main, ["run", spec, "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    G, sigma = _expected(**noise)
    got = np.asarray(ResultStore.open(str(tmp_path / "g.zarr")).matrix[...])
    np.testing.assert_allclose(got, G, rtol=1e-10, atol=1e-12 * np.abs(G).max())
    with np.load(tmp_path / "sigma.npz") as saved:
        assert sorted(saved.files) == ["a", "b"]
        np.testing.assert_allclose(saved["a"], sigma["a"], rtol=1e-8)
        np.testing.assert_allclose(saved["b"], sigma["b"], rtol=1e-8)
    summary = json.loads(res.output)
    assert summary["marginal_std"]["b"] == pytest.approx([float(sigma["b"])] * 3)


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"operation": "hessian", "function": "gnmodel:residuals", "noise": "{std: 1.0}"},
            "noise: only for operation: gauss_newton",
        ),
        (
            {"noise": "{std: 1.0, cov: c.npy}"},
            "noise: give one of std, cov, inv_cov; got std and cov",
        ),
        ({"noise": "{std: 0}"}, "noise.std: must be positive"),
        ({"noise": "{cov: missing.npy}"}, "noise.cov: cannot read"),
        ({"noise": "{std: [1, 2]}"}, "noise.std: must be a positive number or a path"),
        (
            {"operation": "jacobian", "finalize": "{std: s.npz}"},
            "finalize.std: only for operation: hessian or gauss_newton",
        ),
    ],
)
def test_bad_fisher_specs_are_one_line(tmp_path, monkeypatch, fields, message):
    np.save(tmp_path / "wrong.npy", np.eye(3))
    spec = _spec(tmp_path, monkeypatch, **fields)
    res = CliRunner().invoke(main, ["run", spec, "--no-progress"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert message in lines[0] and "spec.yaml" in lines[0]


def test_a_noise_matrix_of_the_wrong_size_names_the_field(tmp_path, monkeypatch):
    np.save(tmp_path / "c.npy", np.eye(3))
    spec = _spec(tmp_path, monkeypatch, noise="{cov: c.npy}")
    res = CliRunner().invoke(main, ["run", spec, "--no-progress"])
    assert res.exit_code == 1
    assert "spec.yaml: noise: cov must be (10, 10) for 10 residuals" in res.output


def test_a_rerun_reads_the_std_it_wrote_instead_of_factorising_again(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch, finalize="{std: sigma.npz}")
    first = CliRunner().invoke(main, ["run", spec, "--no-progress", "--json"])
    assert first.exit_code == 0, first.output
    import diffops_core

    def refuse(*args, **kwargs):
        raise AssertionError("marginal_std recomputed on a rerun that computed nothing")

    monkeypatch.setattr(diffops_core, "marginal_std", refuse)
    again = CliRunner().invoke(main, ["run", spec, "--no-progress", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["blocks_computed"] == 0
    assert json.loads(again.output)["marginal_std"] == json.loads(first.output)["marginal_std"]
