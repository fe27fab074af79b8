"""Spec checks made before anything is computed (issue 10)."""

import numpy as np
import pytest
from click.testing import CliRunner

import diffops_core as dc
from pipeline.cli import main
from pipeline.internal import ResultStore

MODEL = """
import jax.numpy as jnp
import numpy as np

def loss(p):
    return jnp.sum(jnp.sin(p["shape"]["rho"]) ** 2) * jnp.sum(p["flux"] ** 3)

def int_point():
    return {"shape": {"rho": np.arange(3)}, "flux": np.ones(2, np.float32)}

def good_point():
    return {"shape": {"rho": np.linspace(0.1, 1.0, 3).astype(np.float32)},
            "flux": np.full(2, 0.5, np.float32)}
"""


def _spec(tmp_path, monkeypatch, **fields):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "checkmodel.py").write_text(MODEL)
    data = {
        "operation": "hessian",
        "function": "checkmodel:loss",
        "point": "checkmodel:good_point",
        "output": "out.zarr",
        **fields,
    }
    path = tmp_path / "spec.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in data.items()))
    return str(path)


def _one_line_error(spec):
    res = CliRunner().invoke(main, ["run", spec, "--no-progress"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert lines[0].startswith("diffops: error: ") and "spec.yaml" in lines[0]
    return lines[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_integer_leaves_are_refused_under_every_dtype(tmp_path, monkeypatch, dtype):
    # float64 used to cast them silently, float32 refused without naming the spec
    spec = _spec(tmp_path, monkeypatch, point="checkmodel:int_point", dtype=dtype)
    line = _one_line_error(spec)
    assert "point: leaf ['shape']['rho'] has dtype int64, not a float" in line
    assert not (tmp_path / "out.zarr").exists()


def test_an_output_under_a_file_is_refused_naming_the_field(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("not a directory")
    spec = _spec(tmp_path, monkeypatch, output="afile/sub/out.zarr")
    line = _one_line_error(spec)
    assert "output: cannot write" in line and "is a file, not a directory" in line


def test_an_unwritable_finalize_target_is_refused_before_any_block(tmp_path, monkeypatch):
    # it used to fail only after the whole matrix was computed
    (tmp_path / "afile").write_text("not a directory")
    spec = _spec(tmp_path, monkeypatch, finalize="{npy: afile/fisher.npy}")
    line = _one_line_error(spec)
    assert "finalize.npy: cannot write" in line
    assert not (tmp_path / "out.zarr").exists()


def test_missing_output_directories_are_created(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch, output="deep/er/out.zarr")
    res = CliRunner().invoke(main, ["run", spec, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert ResultStore.open(str(tmp_path / "deep" / "er" / "out.zarr")).done_mask().all()


def test_a_nested_point_from_npz_keys_with_slashes(tmp_path, monkeypatch):
    # a nested shape/rho used to give KeyError: 'shape'
    x = {
        "shape": {"rho": np.linspace(0.1, 1.0, 3).astype(np.float32)},
        "flux": np.full(2, 0.5, np.float32),
    }
    np.savez(tmp_path / "point.npz", **{"shape/rho": x["shape"]["rho"], "flux": x["flux"]})
    spec = _spec(tmp_path, monkeypatch, point="point.npz")
    res = CliRunner().invoke(main, ["run", spec, "--no-progress"])
    assert res.exit_code == 0, res.output
    import importlib

    model = importlib.import_module("checkmodel")
    expected = np.asarray(dc.hessian(model.loss, x)[0])
    got = np.asarray(ResultStore.open(str(tmp_path / "out.zarr")).matrix[...])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    leaves = [
        leaf["path"]
        for leaf in ResultStore.open(str(tmp_path / "out.zarr")).meta["in_layout"]["leaves"]
    ]
    assert leaves == ["['flux']", "['shape']['rho']"]


# -- plots of unbalanced leaves (issue 10) ----------------------------------------------


def test_small_leaves_get_a_minimum_width_and_every_leaf_a_label():
    from diffops_core.internal import Layout
    from pipeline.internal import axis_of as _axis
    from pipeline.internal import leaf_label

    z = lambda n: np.zeros(n, np.float32)
    x = {"background": z(576), "flux": np.float32(1.0), "position": z(2), "psf": {"rho": z(3)}}
    layout = Layout.from_pytree(x)
    axis = _axis(layout, 800, 24, None)
    assert [leaf_label(leaf.path) for leaf in axis.leaves] == [
        "background",
        "flux",
        "position",
        "psf/rho",
    ]
    assert axis.cells == (576, 24, 24, 24)  # one cell an entry where that fits, small ones widened
    big = _axis(
        Layout.from_pytree({"b": np.zeros(10_000, np.float32), "s": np.float32(0)}), 800, 24, None
    )
    assert big.cells[1] == 24 and 700 <= big.cells[0] <= 800  # downsampled to the budget
    # the old proportional picture gave the scalars under 2 of 800 cells and labels to 2 leaves


def test_resampling_keeps_the_maximum_and_nan():
    from pipeline.internal import resample as _resample

    block = np.arange(12.0).reshape(3, 4)
    assert _resample(block, 1, 2).tolist() == [[9.0, 11.0]]
    wide = _resample(np.array([[1.0, 5.0]]), 2, 4)
    assert wide.tolist() == [[1.0, 1.0, 5.0, 5.0]] * 2
    block[1, 1] = np.nan
    assert np.isnan(_resample(block, 1, 2)[0, 0])


def test_plot_zooms_to_chosen_leaves_and_names_unknown_ones(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch)
    assert CliRunner().invoke(main, ["run", spec, "--no-progress"]).exit_code == 0
    store, png = str(tmp_path / "out.zarr"), str(tmp_path / "zoom.png")
    res = CliRunner().invoke(main, ["plot", store, "-o", png, "--leaves", "shape/rho"])
    assert res.exit_code == 0, res.output
    assert "leaves shape/rho)" in res.output
    import matplotlib.image

    assert matplotlib.image.imread(png).ndim == 3
    res = CliRunner().invoke(main, ["plot", store, "-o", png, "--leaves", "rho"])
    assert res.exit_code == 1
    assert "no leaf named 'rho'; the leaves are: flux, shape/rho" in res.output


def test_diffops_itself_is_never_shipped_by_value(tmp_path, monkeypatch):
    # a spec may sit in diffops' own source tree (an editable install): the
    # workers must run their installed pipeline, not a copy pickled by value
    import os

    import pipeline
    from pipeline.internal import local_modules

    repo = os.path.dirname(os.path.dirname(pipeline.__file__))
    names = local_modules([repo])
    assert "pipeline" not in names and "diffops_core" not in names
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "shipme.py").write_text("X = 1\n")
    import shipme  # noqa: F401

    assert "shipme" in local_modules([str(tmp_path)])
