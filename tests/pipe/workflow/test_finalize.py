"""Finalize outputs never outlive the store state they came from, the checks and
metadata are written under the run's lock, and no output overwrites an input
(issue 16, items 2, 4 and 8; the nightly recipe)."""

import json
import re
import threading

import numpy as np
import pytest
from click.testing import CliRunner

import pipeline
from helpers import residual_spec
from pipeline.cli import main
from pipeline.internal import ResultStore


def _spec(tmp_path, monkeypatch, name="spec.yaml", text=None, **fields):
    return residual_spec(tmp_path, monkeypatch, "dmodel", name=name, text=text, **fields)


def _run(*args):
    return CliRunner().invoke(main, ["run", *args, "--no-progress", "--json"])


def _store_std(store):
    result = pipeline.open_result(store)
    return np.sqrt(np.diag(np.linalg.inv(np.asarray(result.assemble(), np.float64))))


def _saved_std(path):
    with np.load(path) as saved:
        return np.concatenate([np.ravel(saved["a"]), np.ravel(saved["b"])])


def test_nightly_kill_between_the_last_block_and_finalize_then_rerun(tmp_path, monkeypatch):
    np.save(tmp_path / "s.npy", np.full(10, 0.5))
    spec = _spec(
        tmp_path, monkeypatch, noise="{std: s.npy}", finalize="{std: sigma.npz, npy: g.npy}"
    )
    first = _run(spec)
    assert first.exit_code == 0, first.output
    store = str(tmp_path / "g.zarr")
    np.testing.assert_allclose(_saved_std(tmp_path / "sigma.npz"), _store_std(store), rtol=1e-9)
    # the next night: the noise scaled by 1.5, and the run killed after its last block
    np.save(tmp_path / "s.npy", np.full(10, 0.75))
    from pipeline.internal import workflow_module as workflow

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "finish", killed)
    res = _run(spec, "--overwrite")
    assert res.exit_code == 130
    assert not (tmp_path / "sigma.npz").exists() and not (tmp_path / "g.npy").exists()
    assert (tmp_path / "sigma.npz.stale").exists()  # last night's, set aside
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(tmp_path))
    again = _run(spec)
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert summary["blocks_computed"] == 0
    assert set(summary["finalized"].values()) == {"written"}
    std = _store_std(store)
    np.testing.assert_allclose(_saved_std(tmp_path / "sigma.npz"), std, rtol=1e-9)
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), pipeline.open_result(store).assemble())
    np.testing.assert_allclose(summary["marginal_std"]["b"][0], std[-1], rtol=1e-9)
    # a third run checks them, and says so
    third = json.loads(_run(spec).output)
    assert set(third["finalized"].values()) == {"current"}


def test_a_run_killed_part_way_leaves_no_old_output_beside_the_incomplete_store(
    tmp_path, monkeypatch, inject
):
    spec = _spec(tmp_path, monkeypatch, finalize="{npy: g.npy}")
    assert _run(spec).exit_code == 0
    old = np.load(tmp_path / "g.npy")
    np.save(tmp_path / "s.npy", np.full(10, 0.7))
    spec2 = _spec(
        tmp_path, monkeypatch, name="spec2.yaml", noise="{std: s.npy}", finalize="{npy: g.npy}"
    )
    inject([{"block": 2, "kind": "raise"}])
    res = _run(spec2, "--overwrite")
    assert res.exit_code == 1
    assert not (tmp_path / "g.npy").exists()
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy.stale"), old)
    inject.clear()
    res = _run(spec2)
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(
        np.load(tmp_path / "g.npy"), pipeline.open_result(str(tmp_path / "g.zarr")).assemble()
    )


def test_a_replacement_killed_while_it_deletes_the_old_store_leaves_no_old_output(
    tmp_path, monkeypatch
):
    """Issue 25, item 23: the outputs went only just before blocks were written,
    after the old store's blocks were already being deleted."""
    spec = _spec(tmp_path, monkeypatch, finalize="{npy: g.npy}")
    assert _run(spec).exit_code == 0
    np.save(tmp_path / "s.npy", np.full(10, 0.7))
    spec2 = _spec(
        tmp_path, monkeypatch, name="spec2.yaml", noise="{std: s.npy}", finalize="{npy: g.npy}"
    )
    store = str(tmp_path / "g.zarr")
    removed = []

    def killed_while_removing(cls, location, **kwargs):
        removed.append(np.load(tmp_path / "g.npy") if (tmp_path / "g.npy").exists() else None)
        raise KeyboardInterrupt  # the kill, as the old store starts to go

    monkeypatch.setattr(ResultStore, "create", classmethod(killed_while_removing))
    res = _run(spec2, "--overwrite")
    assert res.exit_code == 130
    assert removed == [None]  # withdrawn before the old store began to change
    assert not (tmp_path / "g.npy").exists()
    monkeypatch.undo()
    monkeypatch.syspath_prepend(str(tmp_path))
    res = _run(spec2, "--overwrite")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.load(tmp_path / "g.npy"), pipeline.open_result(store).assemble())


def test_an_output_edited_by_hand_is_not_current(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch, finalize="{npy: g.npy}")
    assert _run(spec).exit_code == 0
    record = tmp_path / "g.npy.diffops.json"
    source = json.loads(record.read_text())
    assert source["fingerprint"] == ResultStore.open(str(tmp_path / "g.zarr")).meta["fingerprint"]
    record.write_text(json.dumps({**source, "blocks": "0" * 64}))
    assert json.loads(_run(spec).output)["finalized"] == {str(tmp_path / "g.npy"): "written"}


def test_a_second_writer_during_the_checks_is_refused(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch)
    from pipeline.internal import finalize_module as workflow

    real = workflow.checks
    outcome = {}

    def checks_with_intruder(result, progress=False, client=None):
        def intrude():
            import dmodel

            def other(p):
                return 3 * dmodel.loss(p)

            try:
                import jax

                with jax.enable_x64(True):
                    x = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), dmodel.point())
                    pipeline.hessian_to_zarr(
                        other, x, result.location, overwrite=True, progress=False
                    )
                outcome["error"] = None
            except pipeline.StoreError as err:
                outcome["error"] = str(err)

        thread = threading.Thread(target=intrude)
        thread.start()
        thread.join()
        return real(result, progress=progress, client=client)

    monkeypatch.setattr(workflow, "checks", checks_with_intruder)
    res = _run(spec)
    assert res.exit_code == 0, res.output
    assert "another run" in outcome["error"]
    store = ResultStore.open(str(tmp_path / "g.zarr"))
    assert store.meta["operation"] == "gauss_newton" and "checks" in store.meta


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"point": "pt.npz", "finalize": "{std: pt.npz}"}, "finalize.std: .*pt.npz' is point"),
        (
            {"noise": "{std: s.npy}", "finalize": "{npy: s.npy}"},
            "finalize.npy: .*s.npy' is noise.std",
        ),
        ({"finalize": "{npy: spec.yaml}"}, "is the spec itself"),
        ({"finalize": "{npy: dmodel.py}"}, "is the model file of dmodel"),
        ({"finalize": "{npy: g.zarr/m.npy}"}, "is inside the output store"),
        ({"finalize": "{npy: same.npy, std: same.npy}"}, "finalize.std: .* is finalize.npy"),
    ],
)
def test_an_output_that_is_an_input_is_refused_before_anything_runs(
    tmp_path, monkeypatch, fields, message
):
    import sys

    monkeypatch.delitem(sys.modules, "dmodel", raising=False)  # imported from this tmp_path
    np.savez(tmp_path / "pt.npz", a=np.linspace(0.1, 1.0, 5), b=np.float64(1.5))
    np.save(tmp_path / "s.npy", np.full(10, 0.5))
    spec = _spec(tmp_path, monkeypatch, **fields)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    res = CliRunner().invoke(main, ["run", spec, "--no-progress"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert re.search(message, res.output), res.output
    assert not (tmp_path / "g.zarr").exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_finalize_npy_writes_exactly_the_path_named(tmp_path, monkeypatch):
    spec = _spec(tmp_path, monkeypatch, finalize="{npy: s2.yaml}")
    res = _run(spec)
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "s2.yaml.npy").exists()
    np.testing.assert_allclose(
        np.load(tmp_path / "s2.yaml"), pipeline.open_result(str(tmp_path / "g.zarr")).assemble()
    )
