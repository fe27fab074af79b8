"""The ``diffops`` command: run, status, verify, show and plot stored results.

Exit codes: 0 success; 1 an error (one line on stderr saying what and what to
do); 2 bad usage (click's own); 3 ``status`` of an incomplete result; 4
``verify`` found bad blocks (without ``--repair``).
"""

from __future__ import annotations

import functools
import json
import math
import sys

import click

from diffops_core import __version__

EXIT_INCOMPLETE = 3
EXIT_BAD_BLOCKS = 4


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__).rstrip()


def _friendly(fn):
    """Turn the errors users can cause into one line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ._spec import SpecError
        from ._store import StoreError
        from ._tasks import BlockError

        try:
            return fn(*args, **kwargs)
        except (SpecError, StoreError, BlockError, MemoryError, ValueError, TypeError,
                OSError, ImportError) as err:
            click.echo(f"diffops: error: {_one_line(err)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("diffops: interrupted; run the same command again to resume", err=True)
            sys.exit(130)

    return wrapper


def _open(store):
    from ._result import open_result

    return open_result(store)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="diffops")
def main():
    """Dense Jacobians and Hessians of JAX functions, in column blocks, into Zarr."""


def _print_summary(summary: dict):
    op = summary["operation"]
    shape = "x".join(str(s) for s in summary["shape"])
    lines = [f"{op} {shape} {summary['dtype']} -> {summary['output']}"]
    state = "complete" if summary["complete"] else "INCOMPLETE"
    lines.append(f"  blocks      {summary['blocks_done']}/{summary['blocks_total']} {state} "
                 f"({summary['blocks_computed']} computed by this run)")
    if summary["blocks_computed"]:
        lines.append(f"  wall time   {summary['wall_s']:.1f} s (blocks {summary['pipeline_s']:.1f} s), "
                     f"{summary['columns_per_s']:.0f} columns/s")
    else:
        lines.append(f"  wall time   {summary['wall_s']:.1f} s (nothing to do: already complete)")
    memory = f"{format_bytes(summary['peak_rss_driver'])} (driver)"
    if summary.get("peak_rss_worker"):
        memory += f", {format_bytes(summary['peak_rss_worker'])} (largest worker)"
    lines.append(f"  peak memory {memory}")
    if "symmetry_error" in summary:
        lines.append(f"  symmetry    max|H - H^T| / max|H| = {summary['symmetry_error']:.2e}")
    if "nonfinite" in summary:
        where = f" in blocks {summary['nonfinite_blocks']}" if summary.get("nonfinite_blocks") else ""
        lines.append(f"  non-finite  {summary['nonfinite']} entries{where}")
    if summary.get("finalize_npy"):
        lines.append(f"  npy         {summary['finalize_npy']}")
    click.echo("\n".join(lines))


@main.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False))
@click.option("--scheduler", metavar="ADDRESS", help="Run on this dask scheduler (tcp://host:8786).")
@click.option("--workers", type=click.IntRange(min=1), help="Start a local cluster of N workers.")
@click.option("--overwrite", is_flag=True,
              help="Recompute a store that holds another computation (the same one resumes).")
@click.option("--break-lock", is_flag=True,
              help="Take over the lock of a run that is gone but whose host still holds it.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_friendly
def run(spec_path, scheduler, workers, overwrite, break_lock, progress, as_json):
    """Run the workflow SPEC: compute what is missing, then summarise.

    Re-running a complete run does no work; an interrupted run resumes; a store
    holding another result is refused unless --overwrite.
    """
    import logging

    from ._spec import load_spec
    from ._workflow import run_spec

    # a local cluster's start/stop chatter is not for the user; warnings still show
    logging.getLogger("distributed").setLevel(logging.WARNING)
    spec = load_spec(spec_path)
    summary = run_spec(spec, scheduler=scheduler, workers=workers, overwrite=overwrite,
                       break_lock=break_lock, progress=progress)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _print_summary(summary)


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_friendly
def status(store, as_json):
    """Blocks done/total and runs of STORE. Exit code 0 when complete, 3 when not."""
    result = _open(store)
    st = result.status()
    runs = result.meta.get("runs", [])
    if as_json:
        click.echo(json.dumps({**st, "last_run": runs[-1] if runs else None}))
    else:
        state = "complete" if st["complete"] else "incomplete"
        click.echo(f"{store}: {st['blocks_done']}/{st['blocks_total']} blocks, {state}; "
                   f"{len(runs)} run(s)")
        for run in runs:
            click.echo(f"  run {run['run']}: {run.get('status')} {run.get('start')} .. "
                       f"{run.get('end', '')} on {run.get('host')}, "
                       f"{run.get('blocks_todo')} block(s) to do"
                       + (f", error: {run['error']}" if run.get("error") else ""))
        if st["nonfinite_blocks"]:
            click.echo(f"  non-finite values in blocks {st['nonfinite_blocks']}")
        if st["missing_data"]:
            click.echo(f"  data chunks missing in blocks {st['missing_data']} (recorded "
                       "complete; the next run recomputes them)")
    sys.exit(0 if st["complete"] else EXIT_INCOMPLETE)


@main.command()
@click.argument("store")
@click.option("--repair", is_flag=True, help="Recompute the bad and missing blocks, in STORE.")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False),
              help="The spec to recompute with (default: the one stored with the run).")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@_friendly
def verify(store, repair, spec_path, progress):
    """Check every block of STORE against its checksum; --repair recomputes the bad
    and missing ones. Exit code 0 when every block is present and verifies, 4 when
    some are bad, 3 when some are missing."""
    from ._spec import load_spec
    from ._workflow import repair as repair_store

    result = _open(store)
    bad, missing = result.verify(), result.missing_blocks()
    missing = [i for i in missing if i not in bad]
    click.echo(f"{store}: {len(bad)} bad block(s){': ' + str(bad) if bad else ''}; "
               f"{len(missing)} incomplete{': ' + str(missing) if missing else ''}")
    if repair and (bad or missing):
        spec = load_spec(spec_path) if spec_path else None
        report = repair_store(store, spec, progress=progress)
        bad, missing = report["still_bad"], report["still_missing"]
        if not bad and not missing:
            fixed = len(report["bad"]) + len(report["missing"])
            click.echo(f"{store}: repaired {fixed} block(s); all blocks verify")
        else:
            click.echo(f"{store}: after the repair, {len(bad)} bad and {len(missing)} "
                       "incomplete block(s) remain", err=True)
    sys.exit(EXIT_BAD_BLOCKS if bad else EXIT_INCOMPLETE if missing else 0)


@main.command()
@click.argument("store")
@_friendly
def show(store):
    """The metadata of STORE and a per-leaf summary (block norms, diagonal range,
    symmetry error)."""
    import dask
    import dask.array as da

    result = _open(store)
    meta = result.meta
    st = result.status()
    plan = meta["plan"]
    click.echo(f"{store}")
    click.echo(f"  operation   {meta['operation']} ({meta['op']}), shape {tuple(meta['shape'])}, "
               f"{meta['dtype']}, {format_bytes(result.nbytes)}")
    click.echo(f"  blocks      {plan['n_blocks']} of {plan['block_size']} "
               f"({'rows' if meta['axis'] == 0 else 'columns'}); {st['blocks_done']} done")
    parts = meta.get("fingerprint_parts", {})
    click.echo(f"  function    {parts.get('function')}")
    click.echo(f"  fingerprint {meta['fingerprint'][:16]}  versions {parts.get('versions')}")
    click.echo(f"  runs        {len(meta.get('runs', []))}; checks {meta.get('checks', {})}")
    if not st["complete"]:
        click.echo("  (incomplete: no per-leaf summary)")
        return
    rows_layout, cols_layout = result.layouts()
    side = plan["block_size"]
    a = result.array.rechunk((side, side))  # square chunks: row blocks and a.T line up
    stats = []
    for leaf in rows_layout.leaves:
        row = a[leaf.slice, :]
        entry = {"norm": da.linalg.norm(row)}
        if meta["operation"] == "hessian":
            diag = da.diagonal(a[leaf.slice, leaf.slice])
            entry.update(dmin=diag.min(), dmax=diag.max(),
                         sym=da.max(da.abs(row - a[:, leaf.slice].T)))
        stats.append(entry)
    (stats,) = dask.compute(stats, scheduler="threads")
    header = f"  {'leaf':<28} {'shape':<14} {'row-block norm':>15}"
    if meta["operation"] == "hessian":
        header += f" {'diagonal min':>13} {'diagonal max':>13} {'max|H-H^T|':>11}"
    click.echo(header)
    for leaf, entry in zip(rows_layout.leaves, stats):
        line = f"  {leaf.path or '(root)':<28} {str(leaf.shape):<14} {float(entry['norm']):>15.4g}"
        if meta["operation"] == "hessian":
            line += (f" {float(entry['dmin']):>13.4g} {float(entry['dmax']):>13.4g}"
                     f" {float(entry['sym']):>11.3g}")
        click.echo(line)


@main.command()
@click.argument("store")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The PNG file to write.")
@click.option("--pixels", type=click.IntRange(min=16), default=800, show_default=True,
              help="Largest side of the image, in matrix cells after downsampling.")
@_friendly
def plot(store, output, pixels):
    """A heat map of log10|M| of STORE, downsampled (block maximum) for large
    matrices and read lazily, with the leaf boundaries drawn and labelled."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("diffops plot needs matplotlib: pip install 'diffops[plot]'") from None
    matplotlib.use("Agg")
    import dask.array as da
    import matplotlib.pyplot as plt
    import numpy as np

    result = _open(store)
    a = da.abs(result.array)
    m, n = result.shape
    factor = max(1, math.ceil(max(m, n) / pixels))
    if factor > 1:
        a = da.coarsen(np.max, a, {0: factor, 1: factor}, trim_excess=True)
    image = np.asarray(a.compute(scheduler="threads"), dtype=np.float64)
    with np.errstate(divide="ignore"):
        logged = np.log10(image)
    finite = logged[np.isfinite(logged)]
    hi = float(finite.max()) if finite.size else 0.0
    lo = max(float(np.percentile(finite, 1)), hi - 12) if finite.size else 0.0
    missing = np.isnan(logged)  # blocks not computed (the fill value) or NaN entries
    logged = np.ma.masked_array(np.where(np.isfinite(logged), logged, lo), mask=missing)
    rows_layout, cols_layout = result.layouts()
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    # never drawn as small values: missing is missing
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#9fc5e8")
    im = ax.imshow(logged, cmap=cmap, vmin=lo, interpolation="nearest", aspect="auto")
    fig.colorbar(im, ax=ax, label="log10 |entry|" + (f" (max over {factor}x{factor})"
                                                      if factor > 1 else ""))
    for layout, axis in ((rows_layout, "row"), (cols_layout, "col")):
        edges = [leaf.offset / factor for leaf in layout.leaves] + [layout.n / factor]
        for edge in edges[1:-1]:
            (ax.axhline if axis == "row" else ax.axvline)(edge - 0.5, color="cyan", lw=0.6)
        # label leaves from the widest down, skipping any too close to one kept
        spans = sorted(zip(edges[:-1], edges[1:], layout.leaves), key=lambda t: t[0] - t[1])
        kept, gap = [], 0.03 * edges[-1]
        for lo_, hi_, leaf in spans:
            centre = (lo_ + hi_) / 2 - 0.5
            if all(abs(centre - c) >= gap for c, _ in kept):
                kept.append((centre, leaf.path or "x"))
        kept.sort()
        ticks, labels = [c for c, _ in kept], [label for _, label in kept]
        if axis == "row":
            ax.set_yticks(ticks, labels, fontsize=7)
        else:
            ax.set_xticks(ticks, labels, fontsize=7, rotation=60, ha="right")
    st = result.status()
    title = f"{result.meta['operation']} {m}x{n}: log10|M|"
    if not st["complete"] or missing.any():
        title += (f"\nINCOMPLETE: {st['blocks_done']}/{st['blocks_total']} blocks; blue = missing "
                  "or NaN" if not st["complete"] else "\nblue = NaN entries")
    ax.set_title(title, fontsize=9 if "\n" in title else None)
    fig.tight_layout()
    fig.savefig(output, format="png")
    plt.close(fig)
    note = "" if st["complete"] else (f"; INCOMPLETE, {st['blocks_total'] - st['blocks_done']} "
                                      "block(s) missing, drawn blue")
    click.echo(f"wrote {output} ({logged.shape[0]}x{logged.shape[1]} cells, "
               f"downsampled {factor}x{note})")


if __name__ == "__main__":  # pragma: no cover
    main()
