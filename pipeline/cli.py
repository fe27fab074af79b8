"""The ``diffops`` command: run, status, verify, show, plot and analyze stored results.

Exit codes: 0 success; 1 an error (one line on stderr saying what and what to
do); 2 bad usage (click's own); 3 ``status`` of an incomplete result; 4
``verify`` found bad blocks (without ``--repair``).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

import click

from diffops_core import __version__
from diffops_core.internal import InputError, format_iec

from ._errors import BlockError, SpecError, StoreError
from ._result import open_result
from .workflow import load_spec, run_spec
from .workflow import repair as repair_store

EXIT_INCOMPLETE = 3
EXIT_BAD_BLOCKS = 4


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__).rstrip()


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user causes and can fix: bad input (`InputError`: specs,
    stores, arguments, memory that cannot fit, a missing optional dependency),
    a block that failed, and the file system refusing (a full disk, no
    permission). Anything else is a bug and keeps its traceback."""
    return (InputError, BlockError, OSError)


def _friendly(fn: Callable) -> Callable:
    """Turn the errors users can cause into one line and exit code 1 (``--debug``
    shows their traceback too); unexpected exceptions propagate with theirs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BrokenPipeError:  # the reader (| head) left: nothing to say
            sys.stderr.close()
            sys.exit(1)
        except _user_errors() as err:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            click.echo(f"diffops: error: {_one_line(err)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("diffops: interrupted; run the same command again to resume", err=True)
            sys.exit(130)

    return wrapper


def _open(store):
    return open_result(store)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="diffops")
@click.option("--debug", is_flag=True, help="Show the traceback of every error.")
def main(debug):
    """Dense Jacobians and Hessians of JAX functions, in column blocks, into Zarr."""


def _sparse_line(shape, info: dict) -> str:
    """A sparse result's colouring, products and check, in one line."""
    m, n = shape
    extent = m if info["mode"] == "row" else n
    check = info.get("check") or {}
    verdict = (
        f"; checked against 6 random products row by row (worst row: error "
        f"{check['error']:.2g}, tolerance {check['tolerance']:.2g})"
        if check.get("passed")
        else ""
    )
    return (
        f"  sparse      {info['mode']} colouring: {info['ncolors']} products instead of "
        f"{extent} (nnz {info['nnz']:,}, {100 * info['nnz'] / max(1, m * n):.2g}%){verdict}"
    )


def _print_summary(summary) -> None:
    shape = "x".join(str(s) for s in summary.shape)
    lines = [f"{summary.operation} {shape} {summary.dtype} -> {summary.output}"]
    state = "complete" if summary.complete else "INCOMPLETE"
    lines.append(
        f"  blocks      {summary.blocks_done}/{summary.blocks_total} {state} "
        f"({summary.blocks_computed} computed by this run)"
    )
    if summary.reason:
        lines.append(f"  why         {summary.reason}")
    info = summary.sparsity
    if info:
        lines.append(_sparse_line(summary.shape, info))
    if summary.blocks_computed:
        lines.append(
            f"  wall time   {summary.wall_s:.1f} s (blocks {summary.pipeline_s:.1f} s), "
            f"{summary.columns_per_s:.3g} {'products' if info else 'columns'}/s"
        )
    else:
        lines.append(f"  wall time   {summary.wall_s:.1f} s (nothing to do: already complete)")
    memory = f"{format_iec(summary.peak_rss_driver)} (driver)"
    if summary.peak_rss_worker:
        memory += f", {format_iec(summary.peak_rss_worker)} (largest worker)"
    lines.append(f"  peak memory {memory}")
    if summary.stages:
        lines.append("  driver      " + ", ".join(
            f"{s['name']} {s['seconds']:.1f} s {format_iec(s['peak_bytes'])}"
            + ("" if s["alone"] else " (peak so far)")
            for s in summary.stages
        ))  # fmt: skip
    if summary.symmetry_error is not None:
        lines.append(f"  symmetry    max|H - H^T| / max|H| = {summary.symmetry_error:.2e}")
    if summary.nonfinite is not None:
        where = f" in blocks {list(summary.nonfinite_blocks)}" if summary.nonfinite_blocks else ""
        lines.append(f"  non-finite  {summary.nonfinite} entries{where}")
    if summary.checks_s is not None:
        lines.append(f"  checks      {summary.checks_s:.1f} s")
    for path, how in summary.finalized.items():
        what = "npy" if path == summary.finalize_npy else "std"
        said = "written" if how == "written" else "current (made from this store state)"
        lines.append(f"  {what:<11} {path} ({said})")
    if summary.marginal_std:
        lines.append("  marginal std per leaf (min / median / max):")
        for name, (lo, mid, hi) in summary.marginal_std.items():
            lines.append(f"    {name:<24} {lo:.4g} / {mid:.4g} / {hi:.4g}")
    click.echo("\n".join(lines))


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option(
    "--scheduler", metavar="ADDRESS", help="Run on this dask scheduler (tcp://host:8786)."
)
@click.option("--workers", type=click.IntRange(min=1), help="Start a local cluster of N workers.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Recompute a store that holds another computation (the same one resumes).",
)
@click.option(
    "--break-lock",
    is_flag=True,
    help="Take over the lock of a run that is gone but whose host still holds it.",
)
@click.option(
    "--single-writer",
    is_flag=True,
    help="Write to a backend with no atomic create (no run lease there): only one run writes.",
)
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (no bars).")
@click.option(
    "--output", metavar="STORE", help="Write the result here instead of the spec's output."
)
@click.option(
    "--storage-option",
    "storage",
    metavar="KEY=VALUE",
    multiple=True,
    help="An fsspec option for an object-store output (endpoint_url=..., profile=..., "
    "anon=true); over the spec's storage_options. Never credentials.",
)
@_friendly
def run(
    spec_path,
    scheduler,
    workers,
    overwrite,
    break_lock,
    single_writer,
    progress,
    as_json,
    output,
    storage,
):
    """Run the workflow SPEC: compute what is missing, then summarise.

    Re-running a complete run does no work; an interrupted run resumes; a store
    holding another result is refused unless --overwrite.
    """
    import logging

    # a local cluster's start/stop chatter is not for the user; warnings still show
    logging.getLogger("distributed").setLevel(logging.WARNING)
    spec = _with_storage(load_spec(spec_path), storage)
    target = str(output or spec.output)
    if target.startswith("memory://"):
        raise SpecError(
            f"output {target!r} is a memory store: it lives only in this process, so the "
            "result would be gone when diffops exits (and workers cannot reach it); choose a "
            "path or an object store URL"
        )
    summary = run_spec(
        spec,
        scheduler=scheduler,
        workers=workers,
        overwrite=overwrite,
        break_lock=break_lock,
        single_writer=single_writer,
        progress=progress and not as_json,  # JSON is for programs: no bars beside it
        output=output,
        stage_peaks=True,  # this process is ours: each step's peak is its own
    )
    if as_json:
        click.echo(json.dumps(summary.to_json()))
    else:
        _print_summary(summary)


def _with_storage(spec, pairs):
    """The spec with ``KEY=VALUE`` storage options over its own (values read as
    YAML scalars: ``anon=true`` is a bool), checked as the spec's are."""
    if not pairs:
        return spec
    import yaml

    options = dict(spec.storage_options)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SpecError(f"--storage-option {pair!r}: give KEY=VALUE")
        options[key] = yaml.safe_load(value) if value else ""
    return spec.with_storage_options(options)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_friendly
def status(store, as_json):
    """Blocks done/total and runs of STORE. Exit code 0 when complete, 3 when not."""
    result = _open(store)
    st = result.status()
    runs = result.runs()
    if as_json:
        click.echo(json.dumps({**st, "last_run": runs[-1] if runs else None}))
    else:
        state = "complete" if st["complete"] else "incomplete"
        click.echo(
            f"{store}: {st['blocks_done']}/{st['blocks_total']} blocks, {state}; "
            f"{st['runs']} run(s)"
            + (f" (the last {len(runs)} listed)" if st["runs"] > len(runs) else "")
        )
        for run in runs:
            click.echo(
                f"  run {run['run']}: {run.get('status')} {run.get('start')} .. "
                f"{run.get('end', '')} on {run.get('host')}, "
                f"{run.get('blocks_todo')} block(s) to do"
                + (f", error: {run['error']}" if run.get("error") else "")
            )
        if st["nonfinite_blocks"]:
            click.echo(f"  non-finite values in blocks {st['nonfinite_blocks']}")
        if st["missing_data"]:
            click.echo(
                f"  data chunks missing in blocks {st['missing_data']} (recorded "
                "complete; the next run recomputes them)"
            )
    sys.exit(0 if st["complete"] else EXIT_INCOMPLETE)


@main.command()
@click.argument("store")
@click.option("--repair", is_flag=True, help="Recompute the bad and missing blocks, in STORE.")
@click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False),
    help="The spec to recompute with (default: the one stored with the run).",
)
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@_friendly
def verify(store, repair, spec_path, progress):
    """Check every block of STORE against its checksum; --repair recomputes the bad
    and missing ones. Exit code 0 when every block is present and verifies, 4 when
    some are bad, 3 when some are missing."""
    result = _open(store)
    bad, missing = result.verify(), result.missing_blocks()
    missing = [i for i in missing if i not in bad]
    click.echo(
        f"{store}: {len(bad)} bad block(s){': ' + str(bad) if bad else ''}; "
        f"{len(missing)} incomplete{': ' + str(missing) if missing else ''}"
    )
    if repair and (bad or missing):
        spec = load_spec(spec_path) if spec_path else None
        report = repair_store(store, spec, progress=progress)
        bad, missing = report["still_bad"], report["still_missing"]
        if not bad and not missing:
            fixed = len(report["bad"]) + len(report["missing"])
            click.echo(f"{store}: repaired {fixed} block(s); all blocks verify")
        else:
            click.echo(
                f"{store}: after the repair, {len(bad)} bad and {len(missing)} "
                "incomplete block(s) remain",
                err=True,
            )
    sys.exit(EXIT_BAD_BLOCKS if bad else EXIT_INCOMPLETE if missing else 0)


@main.command()
@click.argument("store")
@_friendly
def show(store):
    """The metadata of STORE and a per-leaf summary (block norms, diagonal range,
    symmetry error)."""
    summary = _open(store).summary()
    click.echo("\n".join(summary.lines()))
    if summary.damage:  # printed, and the exit status says so too
        raise StoreError(summary.damage)


@main.command()
@click.argument("store")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="The PNG file to write."
)
@click.option(
    "--pixels",
    type=click.IntRange(min=16),
    default=800,
    show_default=True,
    help="Cells along the longer side of the image.",
)
@click.option("--leaves", help="Only these leaves, comma-separated (e.g. flux,shape/rho).")
@click.option(
    "--min-width",
    type=click.IntRange(min=1),
    help="The fewest cells a leaf gets (default: 3% of --pixels), so scalars stay visible.",
)
@_friendly
def plot(store, output, pixels, leaves, min_width):
    """A heat map of log10|M| of STORE, read lazily leaf block by leaf block:
    every leaf labelled and at least --min-width cells wide; --leaves zooms."""
    chosen = [name.strip() for name in leaves.split(",") if name.strip()] if leaves else None
    drawn = _open(store).plot(output, pixels=pixels, leaves=chosen, min_cells=min_width)
    rows, cols = drawn["cells"]
    how = "the pattern only" if drawn["sparse"] else "drawn blue"
    note = (
        ""
        if not drawn["missing_blocks"]
        else f"; INCOMPLETE, {drawn['missing_blocks']} block(s) missing, {how}"
    )
    click.echo(f"wrote {output} ({rows}x{cols} cells; leaves {', '.join(drawn['leaves'])}{note})")


@main.command()
@click.argument("store")
@click.option(
    "--damping", type=float, default=0.0, show_default=True, help="Added to the diagonal."
)
@click.option("-k", type=click.IntRange(min=1), default=6, show_default=True,
              help="Eigenvalues at each end.")  # fmt: skip
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write the correlation matrix beside the spectrum (PNG).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_friendly
def analyze(store, damping, k, plot_path, as_json, progress):
    """Uncertainties from the Hessian or Gauss-Newton matrix in STORE: marginal
    sigma per leaf, extreme eigenvalues, condition number, positive-definite
    verdict. The Cholesky factor is kept in STORE (factor/) for the next call."""
    progress = progress and not as_json  # JSON is for programs: no bars beside it
    analysis = _open(store).analyze(damping=damping, k=k, plot=plot_path, progress=progress)
    if as_json:
        click.echo(json.dumps(analysis.to_json(), indent=2))
    else:
        click.echo("\n".join(analysis.lines()))
        if plot_path:
            click.echo(f"wrote {plot_path}")


if __name__ == "__main__":  # pragma: no cover
    main()
