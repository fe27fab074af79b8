"""One line naming the field, and the friction a new user hit (issue 16, items 16
and 17)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import pipeline
from helpers import residual_spec
from pipeline.cli import main


def _spec(tmp_path, monkeypatch, name="spec.yaml", text=None, **fields):
    return residual_spec(tmp_path, monkeypatch, "fmodel", name=name, text=text, **fields)


def _one_line(res, message):
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert message in lines[0], lines[0]


@pytest.mark.parametrize(
    "text, message",
    [
        (b"operation: hessian\nfunction: \xff\xfe\n", "not UTF-8 text"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    ],
)
def test_unreadable_specs_are_one_line(tmp_path, monkeypatch, text, message):
    _one_line(CliRunner().invoke(main, ["run", _spec(tmp_path, monkeypatch, text=text)]), message)


@pytest.mark.parametrize(
    "env, message",
    [
        ('{"A=B": "1"}', "env: names must be non-empty strings without '='"),
        ('{"": "1"}', "env: names must be non-empty"),
        ('{"A": "a\\0b"}', "without NUL"),
        ("{A: null}", "env: A: values must be strings"),
        ("{A: 1}", "env: A: values must be strings"),
    ],
)
def test_bad_env_is_refused_not_coerced(tmp_path, monkeypatch, env, message):
    _one_line(CliRunner().invoke(main, ["run", _spec(tmp_path, monkeypatch, env=env)]), message)


def test_an_object_store_without_its_package_names_it(tmp_path, monkeypatch):
    import fsspec

    def missing(scheme):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    res = CliRunner().invoke(
        main, ["run", _spec(tmp_path, monkeypatch, output="s3://bucket/g.zarr")]
    )
    _one_line(res, "output: s3:// stores need a package that is not installed (Install s3fs")


def test_a_point_of_the_wrong_shape_is_one_line(tmp_path, monkeypatch):
    np.savez(tmp_path / "pt.npz", a=np.ones((2, 3)), b=np.ones(7))
    res = CliRunner().invoke(main, ["run", _spec(tmp_path, monkeypatch, point="pt.npz")])
    _one_line(res, "point: fmodel:residuals cannot be evaluated at the point")


def test_an_empty_output_is_refused_in_words(tmp_path):
    import jax.numpy as jnp

    import diffops_core as dc

    with pytest.raises(ValueError, match="f\\(x\\) has no elements"):
        dc.jacobian(lambda x: x[:0], jnp.ones(3))


def test_a_pytree_noise_file_and_output_flag_and_why(tmp_path, monkeypatch):
    np.savez(tmp_path / "noise.npz", fit=np.full(5, 0.5), prior=np.full(5, 2.0))
    spec = _spec(tmp_path, monkeypatch, noise="{std: noise.npz}")
    other = tmp_path / "elsewhere.zarr"
    res = CliRunner().invoke(main, ["run", spec, "--no-progress", "--json", "--output", str(other)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["output"] == str(other) and summary["reason"] == "a new store"
    import importlib

    import jax

    import diffops_core as dc

    model = importlib.import_module("fmodel")
    with jax.enable_x64(True):
        x = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), model.point())
        G = dc.gauss_newton(
            model.residuals, x, std={"fit": np.full(5, 0.5), "prior": np.full(5, 2.0)}
        )[0]
    np.testing.assert_allclose(pipeline.open_result(str(other)).assemble(), G, rtol=1e-10)
    # a noise-only change: named as the noise, and the overwrite run says why it recomputed
    np.savez(tmp_path / "noise.npz", fit=np.full(5, 0.6), prior=np.full(5, 2.0))
    res = CliRunner().invoke(main, ["run", spec, "--no-progress", "--output", str(other)])
    _one_line(res, "the noise model differs (the data f reads changed: its std, cov or inv_cov)")
    res = CliRunner().invoke(
        main, ["run", spec, "--no-progress", "--json", "--overwrite", "--output", str(other)]
    )
    assert json.loads(res.output)["reason"].startswith(
        "replaced (overwrite): the noise model differs"
    )
    res = CliRunner().invoke(main, ["run", spec, "--no-progress", "--output", str(other)])
    assert "why         complete: nothing to do" in res.output


def test_json_output_carries_no_progress_bars(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch)
    res = CliRunner().invoke(main, ["run", spec, "--json"])  # click keeps stderr apart
    assert res.exit_code == 0
    json.loads(res.stdout)
    assert "it/s" not in (res.stderr or "") and "%|" not in (res.stderr or "")


def test_show_says_blocks_of_columns(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch)
    assert CliRunner().invoke(main, ["run", spec, "--no-progress"]).exit_code == 0
    res = CliRunner().invoke(main, ["show", str(tmp_path / "g.zarr")])
    assert "3 blocks of 2 (columns); 3 done" in res.output, res.output


def test_analyze_tells_unit_scaling_from_degeneracy_and_says_one_smallest(tmp_path):
    import jax
    import jax.numpy as jnp

    scales = np.logspace(-4, 4, 12)
    rng = np.random.default_rng(1)
    q = np.linalg.qr(rng.normal(size=(12, 12)))[0]
    R = q @ np.diag(np.linspace(0.5, 2.0, 12)) @ q.T  # a well-conditioned correlation
    d = np.sqrt(np.diag(R))
    M = (R / np.outer(d, d)) * np.outer(scales, scales)

    with jax.enable_x64(True):
        result = pipeline.hessian_to_zarr(
            lambda x: 0.5 * x @ jnp.asarray(M) @ x, np.zeros(12), str(tmp_path / "u.zarr"),
            block_size=4, progress=False,
        )  # fmt: skip
    analysis = result.analyze(progress=False)
    assert analysis.condition > 1e14
    Rn = R / np.outer(d, d)
    eig = np.linalg.eigvalsh(Rn)
    assert analysis.correlation_condition == pytest.approx(eig[-1] / eig[0], rel=1e-6)
    text = "\n".join(analysis.lines())
    assert "of the correlation" in text and "unit scaling" in text
    # a matrix that is not positive definite: the smallest eigenvalue is said once
    with jax.enable_x64(True):
        bad = pipeline.hessian_to_zarr(
            lambda x: 0.5 * x @ jnp.asarray(np.diag(np.arange(-1.0, 11.0))) @ x, np.zeros(12),
            str(tmp_path / "b.zarr"), block_size=4, progress=False,
        )  # fmt: skip
    # (the first line is the store's path, which may hold "-1": pytest-13/...)
    lines = "\n".join(bad.analyze(progress=False).lines()[1:])
    assert lines.count("-1") == 2  # the verdict line and the list of the smallest
