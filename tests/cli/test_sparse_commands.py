"""The ``diffops`` command on a sparse result (issue 18, part E): ``run`` and
``show`` name the colouring and the saving, ``plot`` draws a spy plot (white
where the pattern has no entry), ``verify`` checks the stored products."""

import json
import textwrap

import numpy as np
from click.testing import CliRunner

from pipeline.cli import main

ARROW_MODEL = """
import jax.numpy as jnp
import numpy as np

def loss(p):
    # each pixel couples only to itself and the two globals
    model = p["flat"] * (1.0 + p["g"][0] * jnp.linspace(0, 1, 60)) + p["g"][1] ** 2
    return jnp.sum((model - 1.0) ** 2) + jnp.sum(p["flat"] ** 4)

def best_fit():
    return {"flat": np.linspace(0.9, 1.1, 60).astype(np.float32),
            "g": np.array([0.2, 0.3], np.float32)}
"""


def _spec(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "arrowmodel.py").write_text(ARROW_MODEL)
    text = """
        operation: hessian
        function: arrowmodel:loss
        point: arrowmodel:best_fit
        output: out.zarr
        sparsity: auto
        blocks: {block_size: 1}
    """
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_run_show_plot_verify_of_a_sparse_store(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch)
    res = invoke("run", spec, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "star colouring: 3 products instead of 62" in res.output and "checked" in res.output
    store = str(tmp_path / "out.zarr")
    show = invoke("show", store)
    assert show.exit_code == 0 and "3 products instead of 62" in show.output
    assert "passed" in show.output and "['flat']" in show.output
    png = str(tmp_path / "spy.png")
    res = invoke("plot", store, "-o", png)
    assert res.exit_code == 0, res.output
    import matplotlib.image

    image = matplotlib.image.imread(png)[..., :3]
    white = np.all(image > 0.98, axis=-1).mean()
    assert white > 0.5  # the flat field's off-diagonal is no entry: white, not small values
    res = invoke("verify", store)
    assert res.exit_code == 0, res.output
    status = json.loads(invoke("status", store, "--json").output)
    assert status["complete"]


def test_plot_of_an_incomplete_sparse_store_draws_the_pattern_and_says_so(
    tmp_path, monkeypatch, inject
):
    spec = _spec(tmp_path, monkeypatch)
    inject([{"block": 1, "kind": "raise", "at": "write"}])  # killed before its record
    assert invoke("run", spec, "--no-progress").exit_code == 1
    res = invoke("plot", str(tmp_path / "out.zarr"), "-o", str(tmp_path / "p.png"))
    assert res.exit_code == 0, res.output
    assert "INCOMPLETE" in res.output and "the pattern only" in res.output


def _edit_sparsity(store, **changes):
    import zarr

    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    meta = dict(group.attrs["diffops"])
    meta["sparsity"] = {**meta["sparsity"], **changes}
    group.attrs["diffops"] = meta


def test_edited_sparsity_metadata_is_refused_in_one_line(tmp_path, monkeypatch):
    import pytest

    import pipeline

    spec = _spec(tmp_path, monkeypatch)
    assert invoke("run", spec, "--no-progress").exit_code == 0
    store = str(tmp_path / "out.zarr")
    import zarr

    probes = zarr.open_group(store, mode="r").attrs["diffops"]["sparsity"]["probes"]
    other = {**probes, "seed": probes["seed"] + 1}  # the check's vectors: another seed
    for changes in ({"mode": "column"}, {"mode": "row"}, {"shape": [62, 61]}, {"probes": other}):
        _edit_sparsity(store, **changes)
        with pytest.raises(pipeline.StoreError, match="sparsity metadata .* is not what"):
            pipeline.open_result(store).sparse()
        with pytest.raises(pipeline.StoreError, match="recompute the result"):
            pipeline.open_result(store).verify()
        res = CliRunner().invoke(main, ["verify", store])
        assert res.exit_code != 0 and "Traceback" not in res.output
        assert "is not what the result was written with" in res.output
        _edit_sparsity(store, mode="star", shape=[62, 62], probes=probes)  # back as written
    assert pipeline.open_result(store).sparse().shape == (62, 62)
    from helpers import log_fault

    log_fault("sparse: metadata edited (mode column, mode row, shape, probe seed)", 4, True, 0)


def test_show_says_what_readers_will_do(tmp_path, monkeypatch):
    import zarr

    spec = _spec(tmp_path, monkeypatch)
    assert invoke("run", spec, "--no-progress").exit_code == 0
    store = str(tmp_path / "out.zarr")
    assert "check against 6 random products: passed" in invoke("show", store).output
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    meta = dict(group.attrs["diffops"])
    check = meta["sparsity"]["check"]
    products = zarr.open_array(f"{store}/compressed", mode="r+")
    saved = np.asarray(products[:, :1])
    products[:, :1] = saved * 1.5  # valid bytes, other values
    res = invoke("show", store)
    assert res.exit_code == 0 and "no longer match their checksums" in res.output
    assert "passed (" not in res.output
    products[:, :1] = saved
    _edit_sparsity(store, check={**check, "blocks": "another state"})
    assert "out of date" in invoke("show", store).output
    _edit_sparsity(store, check=None)  # complete, killed during its check
    res = invoke("show", store)
    assert "never checked" in res.output and "incomplete" not in res.output


def test_a_damaged_pattern_is_recomputed_by_overwrite(tmp_path, monkeypatch):
    """Issue 25, item 18: verify said "recompute (overwrite=True)", but
    ``run --overwrite`` said "complete: nothing to do" (the same computation)."""
    import zarr

    spec = _spec(tmp_path, monkeypatch)
    assert invoke("run", spec, "--no-progress").exit_code == 0
    store = str(tmp_path / "out.zarr")
    colors = zarr.open_array(f"{store}/colors", mode="r+")
    colors[0] = int(colors[1]) + 1  # valid bytes, another colouring
    res = CliRunner().invoke(main, ["verify", store, "--repair"])
    assert res.exit_code != 0 and "overwrite" in res.output
    res = CliRunner().invoke(main, ["run", spec, "--no-progress"])
    assert res.exit_code == 1 and "damaged" in res.output  # refused, never "nothing to do"
    res = invoke("run", spec, "--no-progress", "--overwrite", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["blocks_computed"] > 0
    assert invoke("verify", store).exit_code == 0
    import pipeline

    dense = pipeline.open_result(store).sparse().toarray()
    assert dense.shape == (62, 62) and np.isfinite(dense).all()
