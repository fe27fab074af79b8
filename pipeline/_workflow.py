"""Running a workflow spec: cluster set-up, the pipeline call, checks, finalize."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time

import numpy as np

from ._api import _to_zarr
from ._cluster import local_cluster, peak_rss
from ._result import Result, open_result
from ._spec import Spec, SpecError
from ._store import NONFINITE, ResultStore, normalise_location

__all__ = ["run_spec", "repair", "stored_spec", "checks", "peak_rss"]


@contextlib.contextmanager
def _client_for(spec: Spec, scheduler: str | None, workers: int | None):
    """A distributed client as the spec/flags ask, or None (embedded default)."""
    scheduler = scheduler or spec.cluster.get("scheduler")
    workers = workers or (None if scheduler else spec.cluster.get("workers"))
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
        with local_cluster(workers, threads_per_worker=spec.cluster.get("threads_per_worker", 1),
                           memory_limit=spec.cluster.get("memory_limit", "auto"), env=env,
                           dashboard_address=":0") as cluster, Client(cluster) as client:
            yield client
        return
    yield None


def checks(result: Result) -> dict:
    """Non-finite entries (from the records) and, for a Hessian, the relative
    symmetry error max|H - H^T| / max|H| (read lazily, block by block)."""
    import dask
    import dask.array as da

    records = result._store.read_records()
    out = {"nonfinite": int(records[:, NONFINITE].sum())}
    if result.meta["operation"] == "hessian":
        side = result._store.plan.block_size  # square chunks: a and a.T line up
        a = result.array.rechunk((side, side))
        finite = da.where(da.isfinite(a), a, 0)
        diff, scale = dask.compute(da.max(da.abs(finite - finite.T)), da.max(da.abs(finite)),
                                   scheduler="threads")
        out["symmetry_error"] = float(diff / scale) if scale > 0 else 0.0
    return out


def run_spec(spec: Spec, *, scheduler: str | None = None, workers: int | None = None,
             overwrite: bool = False, progress: bool = True, break_lock: bool = False,
             output=None, redo=()) -> dict:
    """Run a spec through the pipeline; the summary as a dict.

    Idempotent: a complete store is left as it is and only summarised. With
    ``output``, the result goes there instead of the spec's output (a store that
    was moved or copied); ``redo`` lists blocks to recompute (their records are
    cleared under the lock, only once the function has been traced and the
    store found to hold the same computation).
    """
    import jax

    if output is not None:
        spec = dataclasses.replace(spec, output=normalise_location(output))
    x64 = jax.enable_x64(True) if spec.dtype == "float64" else contextlib.nullcontext()
    with x64:
        return _run_spec(spec, scheduler, workers, overwrite, progress, break_lock, tuple(redo))


def stored_spec(result: Result) -> Spec:
    """The spec stored with a result by the run that computed it.

    **Raises:** `SpecError` when there is none (the result was computed from Python).
    """
    stored = result.meta.get("spec")
    if not stored:
        raise SpecError(f"no spec is stored with {result.location!r} (it was computed from "
                        "Python, not by diffops run): pass the spec (--spec SPEC)")
    stored = dict(stored)
    stored["python_path"] = tuple(stored.get("python_path", ()))
    return Spec(**stored)


def repair(location, spec: Spec | None = None, *, progress: bool = True) -> dict:
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
    return {"bad": bad, "missing": [i for i in missing if i not in bad],
            "still_bad": result.verify(), "still_missing": result.missing_blocks()}


def _run_spec(spec, scheduler, workers, overwrite, progress, break_lock, redo) -> dict:
    t0 = time.perf_counter()
    f = spec.load_function()
    x = spec.load_point()
    with _client_for(spec, scheduler, workers) as client:
        result = _to_zarr(spec.operation, f, x, spec.output,
                          mode=spec.mode if spec.operation == "jacobian" else None,
                          checkpoint=spec.checkpoint, client=client, overwrite=overwrite,
                          progress=progress, compressor=spec.compression,
                          break_lock=break_lock, redo=redo, **spec.blocking())
        worker_peak = None
        if client is not None:
            worker_peak = max(client.run(peak_rss).values(), default=None)
    run_summary = result.run_summary
    computed = run_summary.get("blocks_computed", 0)
    store = ResultStore.open(spec.output, mode="r+") if computed or "checks" not in result.meta \
        else None
    if store is not None:  # something new was computed: check it and remember how to redo it
        store.meta["checks"] = checks(result)
        store.meta["spec"] = spec.to_json()
        store.save_meta()
        result = open_result(spec.output)
    if spec.finalize_npy and (computed or not os.path.exists(spec.finalize_npy)):
        np.save(spec.finalize_npy, result.assemble())
    seconds = time.perf_counter() - t0
    status = result.status()
    summary = {
        "output": spec.output,
        "operation": spec.operation,
        "shape": list(result.shape),
        "dtype": str(result.dtype),
        "blocks_total": status["blocks_total"],
        "blocks_done": status["blocks_done"],
        "blocks_computed": computed,
        "complete": status["complete"],
        "wall_s": seconds,
        "pipeline_s": run_summary.get("seconds", 0.0),
        "columns_per_s": run_summary.get("columns_per_s", 0.0),
        "peak_rss_driver": peak_rss(),
        "peak_rss_worker": worker_peak,
        **result.meta.get("checks", {}),
        "nonfinite_blocks": status["nonfinite_blocks"],
        "finalize_npy": spec.finalize_npy,
    }
    return summary
