"""Running a workflow spec: cluster set-up, the pipeline call, and repair."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from diffops_core.internal import InputError, whitened_residuals

from .._api import _to_zarr
from .._errors import SpecError
from .._result import Result, open_result
from ..run import (
    Stages,
    active_client,
    by_value,
    environment,
    local_cluster,
    noise_digest,
    peak_rss,
    stage,
)
from ..store import normalise_location
from ._finalize import finish, withdraw_outputs
from ._spec import Spec, storage_env

__all__ = ["WorkflowSummary", "repair", "run_spec", "stored_spec"]


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
    sparsity: dict | None = None
    """A sparse result's pattern, colouring and check (the store's ``sparsity``)."""
    stages: tuple[dict, ...] = ()
    """Each step this run took in the driver (load, plan, blocks, self-check,
    checks, npy, std): ``name``, ``seconds``, ``peak_bytes`` (the driver's peak
    memory during it when ``alone``, else its peak so far; see `run_spec`'s
    ``stage_peaks``)."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def _client_for(spec: Spec, scheduler: str | None, workers: int | None) -> Iterator[Any]:
    """A distributed client as the spec/flags ask, or None (embedded default).
    A client active in this process (a caller's: ``workflows/slurm.py``'s
    SLURM cluster) wins over the spec's ``cluster``; given beside explicit
    ``scheduler``/``workers``, the conflict is refused."""
    active = active_client()
    if active is not None:
        if scheduler or workers:
            asked = f"scheduler {scheduler}" if scheduler else f"{workers} local workers"
            raise SpecError(
                f"a distributed client ({active.scheduler.address}) is active in this process, "
                f"and this run was also asked for {asked}: give one; the active client is "
                "used when neither is given"
            )
        yield active  # the caller's cluster, not a new local one beside it
        return
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
        env = {"PYTHONPATH": pythonpath, **spec.env, **storage_env(spec)}
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
    single_writer: bool = False,
    output: Any = None,
    redo: Sequence[int] = (),
    stage_peaks: bool = False,
) -> WorkflowSummary:
    """Run a spec through the pipeline; what it did as a `WorkflowSummary`.

    Idempotent: a complete store is left as it is and only summarised. With
    ``output``, the result goes there instead of the spec's output (a store that
    was moved or copied); ``redo`` lists blocks to recompute (their records are
    cleared under the lock, only once the function has been traced and the
    store found to hold the same computation). With ``stage_peaks``, the
    process's peak memory is reset as each step begins (Linux), so that each
    step's figure in `WorkflowSummary.stages` is its own: for a process that
    keeps no peak of its own (``diffops run`` asks for it).
    """
    if output is not None:
        spec = spec.model_copy(update={"output": normalise_location(output)})
    spec.check_targets()
    x64 = jax.enable_x64(True) if spec.dtype == "float64" else contextlib.nullcontext()
    # the store's options for the whole run here (the tasks carry them to workers)
    with x64, environment(storage_env(spec)):
        locks = {"break_lock": break_lock, "single_writer": single_writer}
        with Stages(reset_peak=stage_peaks) as stages:
            summary = _run_spec(spec, scheduler, workers, overwrite, progress, locks, tuple(redo))
        return dataclasses.replace(
            summary,
            peak_rss_driver=stages.peak_bytes,
            stages=tuple(dataclasses.asdict(s) for s in stages.figures),
        )


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
    spec: Spec, scheduler, workers, overwrite, progress, locks: dict, redo
) -> WorkflowSummary:
    t0 = time.perf_counter()
    with stage("load"):
        f, x, noise = _loaded(spec)
    finished: dict[str, Any] = {}

    with _client_for(spec, scheduler, workers) as client, by_value(spec.import_dirs()):

        def after(result: Result) -> None:
            finished.update(finish(spec, result, x, progress, client))

        # the spec's own modules travel by value: a cluster need not import them
        result = _to_zarr(
            spec.operation, f, x, spec.output, client=client, overwrite=overwrite,
            progress=progress, **locks, redo=redo, noise=noise,
            before_write=lambda: withdraw_outputs(spec), after=after, **_options(spec),
        )  # fmt: skip
        worker_peak = max(client.run(peak_rss).values(), default=None) if client else None
    summary = _summary(spec, result, time.perf_counter() - t0, worker_peak)
    return dataclasses.replace(
        summary,
        marginal_std=finished.get("std"),
        finalized=finished.get("outputs", {}),
        checks_s=finished.get("checks_s"),
        reason=result.run_summary.reason,
    )


def _loaded(spec: Spec) -> tuple[Any, Any, str | None]:
    """(f, x, the noise model's digest) of a spec: its modules imported, its
    point loaded and checked, the noise model applied to a Gauss-Newton's
    residuals."""
    f = spec.load_function()
    x = spec.load_point()
    spec.check_outputs()  # after the imports: model files are inputs too
    _check_point(spec, f, x)
    noise = None
    if spec.operation == "gauss_newton":
        model = spec.load_noise()  # read once: for the residuals and their digest
        f = _whitened(spec, f, x, model)
        noise = noise_digest(**model)
    return f, x, noise


def _options(spec: Spec) -> dict[str, Any]:
    """The run options a spec gives (its env with its storage options: they
    reach every task)."""
    return {
        "mode": spec.mode if spec.operation == "jacobian" else None,
        "checkpoint": spec.checkpoint,
        "compressor": spec.compressor,
        "sparsity": spec.load_sparsity(),
        "max_dense": spec.max_dense,
        "env": {**spec.env, **storage_env(spec)},
        **spec.blocking(),
    }


def _check_point(spec: Spec, f, x) -> None:
    """f traces at the point (one abstract evaluation): a point of the wrong shape
    or structure is the spec's error, in one line (--debug shows the traceback)."""
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
    try:
        return whitened_residuals(residuals, x, **noise)
    except InputError as err:
        raise SpecError(f"{spec.path}: noise: {err}") from None


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
        sparsity=result.store.sparsity_meta,
    )
