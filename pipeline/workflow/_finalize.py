"""What a workflow writes beside the store once a run is over, under its lock:
the checks (once per store state) and the finalize outputs, each recording the
store state it was made from (`pipeline.store`'s derived files), and
withdrawn before the store changes."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from .._result import Result
from ..report import checks
from ..run import stage
from ..store import is_current, leaf_label, store_state, withdraw, write_derived
from ._spec import Spec

__all__ = ["finish", "withdraw_outputs"]


def _outputs(spec: Spec) -> list[str]:
    return [str(p) for p in (spec.finalize.npy, spec.finalize.std) if p]


def withdraw_outputs(spec: Spec) -> None:
    """Before the store changes: its finalize outputs go aside (``.stale``)."""
    for path in _outputs(spec):
        withdraw(path)


def finish(spec: Spec, result: Result, x, progress: bool, client: Any = None) -> dict:
    """Under the run's lock, against the state it leaves: the checks (once per
    store state) and every finalize output whose source is not this state;
    the checks and σ as tasks on ``client``'s cluster when one is given (the
    driver holds none of the matrix).

    **Returns:** ``outputs`` (path -> ``"written"`` or ``"current"``), ``std``
    (min/median/max per leaf) and ``checks_s`` (seconds the checks took, None
    when the stored ones were current)."""
    store = result.store
    if not result.status()["complete"]:
        withdraw_outputs(spec)  # nothing may stand beside an incomplete store as if current
        return {"outputs": {}}
    state = store_state(store)
    out: dict[str, Any] = {"outputs": {}, "checks_s": None}
    meta = store.meta
    if meta.get("checks_state") != state or "checks" not in meta:
        t0 = time.perf_counter()
        with stage("checks"):
            meta["checks"] = checks(store, progress=progress, client=client)
        out["checks_s"] = time.perf_counter() - t0
        meta["checks_state"] = state
        meta["spec"] = spec.to_json()
        store.save_meta()  # a nothing-to-do run writes nothing
    elif meta.get("spec") != spec.to_json():
        meta["spec"] = spec.to_json()
        store.save_meta()
    if spec.finalize.npy:
        path = str(spec.finalize.npy)
        source = {**state, "derived": "matrix"}
        if is_current(path, source):
            out["outputs"][path] = "current"
        else:
            with stage("npy"):
                write_derived(path, source, lambda fh: np.save(fh, result.assemble()))
            out["outputs"][path] = "written"
    if spec.finalize.std:
        out["std"], out["outputs"][str(spec.finalize.std)] = _write_std(
            spec, result, x, state, progress, client
        )
    return out


def _write_std(spec: Spec, result: Result, x, state: dict, progress: bool, client: Any):
    """``finalize.std``: per-leaf marginal standard deviations (an .npz whose keys
    are leaf labels such as ``shape/rho``), out of core (`Result.marginal_std`:
    tile tasks of bounded memory, the factor kept in the store), unless the file
    is current for ``state``.

    **Returns:** (min/median/max per leaf, ``"written"`` or ``"current"``)."""
    target = str(spec.finalize.std)
    source = {**state, "derived": "marginal_std", "damping": 0.0}
    if is_current(target, source):
        with np.load(target) as saved:
            leaves = {name: saved[name] for name in saved.files}
        how = "current"
    else:
        with stage("std"):
            std = result.marginal_std(x, progress=progress, client=client)
        leaves = {
            leaf_label(jax.tree_util.keystr(path)): np.asarray(value)
            for path, value in jax.tree_util.tree_flatten_with_path(std)[0]
        }
        write_derived(target, source, lambda fh: np.savez(fh, **leaves))
        how = "written"
    figures = {
        name: [float(np.min(v)), float(np.median(v)), float(np.max(v))]
        for name, v in leaves.items()
    }
    return figures, how
