"""Running a workflow spec: cluster set-up, the pipeline call, checks, finalize."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._api import _to_zarr
from ._cluster import local_cluster, peak_rss
from ._derived import is_current, store_state, withdraw, write_derived
from ._fingerprint import noise_digest
from ._report import checks
from ._result import Result, open_result
from ._ship import by_value
from ._spec import Spec, SpecError
from ._store import normalise_location

__all__ = ["WorkflowSummary", "checks", "peak_rss", "repair", "run_spec", "stored_spec"]


@dataclasses.dataclass(frozen=True)
class WorkflowSummary:
    """What `run_spec` did: the store, its progress, timings and checks."""

    output: str
    operation: str
    shape: tuple[int, int]
    dtype: str
    blocks_total: int
    blocks_done: int
    blocks_computed: int
    complete: bool
    wall_s: float
    """Seconds for the whole spec (import, plan, blocks, checks, finalize)."""
    pipeline_s: float
    """Seconds the blocks took."""
    columns_per_s: float
    peak_rss_driver: int
    peak_rss_worker: int | None
    nonfinite: int | None
    symmetry_error: float | None
    nonfinite_blocks: tuple[int, ...]
    finalize_npy: str | None
    marginal_std: dict | None = None
    """Per leaf (label): min, median and max of the marginal standard deviation,
    when the spec asks for ``finalize.std``."""
    finalized: dict = dataclasses.field(default_factory=dict)
    """Each finalize output: ``"written"`` by this run, or ``"current"`` (checked:
    made from the store's present state)."""
    reason: str = ""
    """Why this run computed what it did (`RunSummary.reason`)."""
    checks_s: float | None = None
    """Seconds the checks took (None: the stored ones were of this store state)."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def _client_for(spec: Spec, scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A distributed client as the spec/flags ask, or None (embedded default)."""
    scheduler = scheduler or spec.cluster.scheduler
    workers = workers or (None if scheduler else spec.cluster.workers)
    if scheduler:
        from distributed import Client

        with Client(scheduler) as client:
            yield client
        return
    if workers:
        from distributed import Client

        pythonpath = os.pathsep.join([*spec.import_dirs(), os.environ.get("PYTHONPATH", "")])
        env = {"PYTHONPATH": pythonpath, **spec.env}
        if spec.dtype == "float64":
            env["JAX_ENABLE_X64"] = "1"
        with (
            local_cluster(
                workers,
                threads_per_worker=spec.cluster.threads_per_worker,
                memory_limit=spec.cluster.memory_limit,
                env=env,
                host="127.0.0.1",
                dashboard_address="127.0.0.1:0",
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    yield None


def run_spec(
    spec: Spec,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    break_lock: bool = False,
    output: Any = None,
    redo: Sequence[int] = (),
) -> WorkflowSummary:
    """Run a spec through the pipeline; what it did as a `WorkflowSummary`.

    Idempotent: a complete store is left as it is and only summarised. With
    ``output``, the result goes there instead of the spec's output (a store that
    was moved or copied); ``redo`` lists blocks to recompute (their records are
    cleared under the lock, only once the function has been traced and the
    store found to hold the same computation).
    """
    import jax

    if output is not None:
        spec = spec.model_copy(update={"output": normalise_location(output)})
    spec.check_targets()
    x64 = jax.enable_x64(True) if spec.dtype == "float64" else contextlib.nullcontext()
    with x64:
        return _run_spec(spec, scheduler, workers, overwrite, progress, break_lock, tuple(redo))


def stored_spec(result: Result) -> Spec:
    """The spec stored with a result by the run that computed it.

    **Raises:** `SpecError` when there is none (the result was computed from Python).
    """
    stored = result.meta.get("spec")
    if not stored:
        raise SpecError(
            f"no spec is stored with {result.location!r} (it was computed from "
            "Python, not by diffops run): pass the spec (--spec SPEC)"
        )
    return Spec.from_stored(stored)


def repair(location: Any, spec: Spec | None = None, *, progress: bool = True) -> dict:
    """Recompute the bad and missing blocks of the store at ``location``, in place.

    Verifies every recorded block first; recomputes the bad ones and those never
    finished, into this store (not the spec's output: the store may have been
    moved or copied), then verifies again.

    **Arguments:** `location` (the store), `spec` (default: the one stored with
    it), `progress`.

    **Returns:** ``{"bad": [...], "missing": [...], "still_bad": [...],
    "still_missing": [...]}``: the blocks found before and left after.

    **Raises:** `SpecError` when no spec is given or stored; the pipeline's errors
    (a record is cleared only once the replacement is ready to run).
    """
    location = normalise_location(location)
    result = open_result(location)
    bad, missing = result.verify(), result.missing_blocks()
    if bad or missing:
        run_spec(spec or stored_spec(result), progress=progress, output=location, redo=bad)
        result = open_result(location)
    return {
        "bad": bad,
        "missing": [i for i in missing if i not in bad],
        "still_bad": result.verify(),
        "still_missing": result.missing_blocks(),
    }


def _run_spec(
    spec: Spec, scheduler, workers, overwrite, progress, break_lock, redo
) -> WorkflowSummary:
    t0 = time.perf_counter()
    f = spec.load_function()
    x = spec.load_point()
    spec.check_outputs()  # after the imports: model files are inputs too
    _check_point(spec, f, x)
    noise = None
    if spec.operation == "gauss_newton":
        model = spec.load_noise()  # read once: for the residuals and their digest
        f = _whitened(spec, f, x, model)
        noise = noise_digest(**model)
    finished: dict[str, Any] = {}

    def after(result: Result) -> None:
        finished.update(_finish(spec, result, x, progress))

    with _client_for(spec, scheduler, workers) as client, by_value(spec.import_dirs()):
        # the spec's own modules travel by value: a cluster need not import them
        result = _to_zarr(
            spec.operation,
            f,
            x,
            spec.output,
            mode=spec.mode if spec.operation == "jacobian" else None,
            checkpoint=spec.checkpoint,
            client=client,
            overwrite=overwrite,
            progress=progress,
            compressor=spec.compressor,
            break_lock=break_lock,
            redo=redo,
            env=spec.env,
            noise=noise,
            before_write=lambda: _withdraw(spec),
            after=after,
            **spec.blocking(),
        )
        worker_peak = max(client.run(peak_rss).values(), default=None) if client else None
    summary = _summary(spec, result, time.perf_counter() - t0, worker_peak)
    return dataclasses.replace(
        summary,
        marginal_std=finished.get("std"),
        finalized=finished.get("outputs", {}),
        checks_s=finished.get("checks_s"),
        reason=result.run_summary.reason,
    )


def _outputs(spec: Spec) -> list[str]:
    return [str(p) for p in (spec.finalize.npy, spec.finalize.std) if p]


def _withdraw(spec: Spec) -> None:
    """Before the store changes: its finalize outputs go aside (``.stale``)."""
    for path in _outputs(spec):
        withdraw(path)


def _finish(spec: Spec, result: Result, x, progress: bool) -> dict:
    """Under the run's lock, against the state it leaves: the checks (once per
    store state) and every finalize output whose source is not this state.

    **Returns:** ``outputs`` (path -> ``"written"`` or ``"current"``), ``std``
    (min/median/max per leaf) and ``checks_s`` (seconds the checks took, None
    when the stored ones were current)."""
    store = result._store
    if not result.status()["complete"]:
        _withdraw(spec)  # nothing may stand beside an incomplete store as if current
        return {"outputs": {}}
    state = store_state(store)
    out: dict[str, Any] = {"outputs": {}, "checks_s": None}
    meta = store.meta
    if meta.get("checks_state") != state or "checks" not in meta:
        t0 = time.perf_counter()
        meta["checks"] = checks(result, progress=progress)
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
            write_derived(path, source, lambda fh: np.save(fh, result.assemble()))
            out["outputs"][path] = "written"
    if spec.finalize.std:
        out["std"], out["outputs"][str(spec.finalize.std)] = _write_std(
            spec, result, x, state, progress
        )
    return out


def _check_point(spec: Spec, f, x) -> None:
    """f traces at the point (one abstract evaluation): a point of the wrong shape
    or structure is the spec's error, in one line (--debug shows the traceback)."""
    import jax

    try:
        jax.eval_shape(f, x)
    except (TypeError, ValueError, IndexError) as err:
        shapes = jax.tree_util.tree_map(lambda v: tuple(np.shape(v)), x)
        raise SpecError(
            f"{spec.path}: point: {spec.function} cannot be evaluated at the point {spec.point} "
            f"(leaf shapes {shapes}): {type(err).__name__}: {str(err).splitlines()[0]}; give a "
            "point of the shapes f expects"
        ) from err


def _whitened(spec: Spec, residuals, x, noise: dict):
    """The spec's residuals with its noise model (`Spec.load_noise`) applied
    (`whitened_residuals`)."""
    from diffops_core.internal import InputError, whitened_residuals

    try:
        return whitened_residuals(residuals, x, **noise)
    except InputError as err:
        raise SpecError(f"{spec.path}: noise: {err}") from None


def _write_std(spec: Spec, result: Result, x, state: dict, progress: bool):
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
        import jax

        from ._report import leaf_label

        std = result.marginal_std(x, progress=progress)
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


def _summary(spec: Spec, result: Result, seconds: float, worker_peak) -> WorkflowSummary:
    status = result.status()
    found = result.meta.get("checks", {})
    return WorkflowSummary(
        output=str(spec.output),
        operation=spec.operation,
        shape=result.shape,
        dtype=str(result.dtype),
        blocks_total=status["blocks_total"],
        blocks_done=status["blocks_done"],
        blocks_computed=result.run_summary.blocks_computed,
        complete=status["complete"],
        wall_s=seconds,
        pipeline_s=result.run_summary.seconds,
        columns_per_s=result.run_summary.columns_per_s,
        peak_rss_driver=peak_rss(),
        peak_rss_worker=worker_peak,
        nonfinite=found.get("nonfinite"),
        symmetry_error=found.get("symmetry_error"),
        nonfinite_blocks=tuple(status["nonfinite_blocks"]),
        finalize_npy=spec.finalize.npy,
    )
