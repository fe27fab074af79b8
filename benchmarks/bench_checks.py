"""The check phase after a run: before (the matrix re-chunked to block x block
tiles, as the previous release did) and after (`pipeline.report`'s scan: one pass in
panels of stored chunks), side by side on the same stores, beside the blocks'
time. Writes the ``checks`` section of RESULTS.md.

Cases: a newcomer's model (five stars and a 48x48 gain map, n = 2325, float32,
block 16: 146 blocks) and the PSF demo (n = 4120, float64, block 256).

    python benchmarks/bench_checks.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "workflows"))

from report import write_section

import pipeline
from pipeline.internal import checks


def stars_model():
    """Five Gaussian stars (x, y, flux, width) and a background on a 48x48 image
    seen through a gain map: 2304 + 21 = 2325 parameters."""
    side = 48
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    rng = np.random.default_rng(3)
    truth = {
        "gain": np.ones((side, side), np.float32),
        "stars": np.column_stack(
            [rng.uniform(8, 40, 5), rng.uniform(8, 40, 5), rng.uniform(50, 100, 5), np.full(5, 2.0)]
        ).astype(np.float32),
        "bkg": np.float32(1.0),
    }

    def image(p):
        s = p["stars"]
        blobs = s[:, 2, None, None] * jnp.exp(
            -((xx - s[:, 0, None, None]) ** 2 + (yy - s[:, 1, None, None]) ** 2)
            / (2 * s[:, 3, None, None] ** 2)
        )
        return p["gain"] * (jnp.sum(blobs, axis=0) + p["bkg"])

    data = np.asarray(image(truth)) + rng.normal(0, 0.5, (side, side)).astype(np.float32)

    def loss(p):
        return 0.5 * jnp.sum((image(p) - data) ** 2) + 0.5 * jnp.sum((p["gain"] - 1) ** 2)

    return loss, truth


def old_checks(result) -> dict:
    """The previous release's check: the matrix re-chunked to block x block tiles."""
    import dask
    import dask.array as da

    side = result.store.plan.block_size
    a = result.array.rechunk((side, side))
    finite = da.where(da.isfinite(a), a, 0)
    diff, scale = dask.compute(
        da.max(da.abs(finite - finite.T)), da.max(da.abs(finite)), scheduler="threads"
    )
    return {"symmetry_error": float(diff / scale) if scale > 0 else 0.0}


def _median(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def case(name, f, x, block, repeats, x64):
    with tempfile.TemporaryDirectory() as tmp, jax.enable_x64(x64):
        runs = []
        for r in range(repeats + 1):  # the first compiles (as a `diffops run` does)
            store = os.path.join(tmp, f"h{r}.zarr")
            result = pipeline.hessian_to_zarr(f, x, store, block_size=block, progress=False)
            runs.append(result.run_summary.seconds)
        first, blocks_s = runs[0], statistics.median(runs[1:])
        before, old = _median(lambda: old_checks(result), repeats)
        after, new = _median(lambda: checks(result.store), repeats)
        assert abs(old["symmetry_error"] - new["symmetry_error"]) <= 1e-6 * max(
            1e-30, old["symmetry_error"]
        ), (old, new)
        n = result.shape[0]
        return (
            f"| {name} | {n} | {result.dtype} | {block} | {result.store.plan.n_blocks} | "
            f"{first:.2f} | {blocks_s:.2f} | {before:.2f} ({before / first:.0%}) | "
            f"{after:.3f} ({after / first:.1%} / {after / blocks_s:.1%}) | {before / after:.0f}x |"
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    loss, x = stars_model()
    rows.append(case("five stars + 48x48 gain map", loss, x, 16, args.repeats, False))
    with jax.enable_x64(True):
        from models import psf

        x_psf = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), psf.best_fit())
    rows.append(case("PSF demo", psf.loss, x_psf, 256, args.repeats, True))
    body = "\n".join(
        [
            "### The check phase after a run (symmetry check): before and after (issue 16)",
            "",
            "Checks are max|H - H^T| / max|H| and the non-finite count. Before: the stored",
            "matrix re-chunked to block x block tiles (each stored chunk read once per tile",
            "row). After: one pass in panels of whole stored chunks (`pipeline.report`'s scan). Both",
            "on the same store, medians of the repeats. Blocks: the first run in the process",
            "(it compiles, as every `diffops run` does) and the median of as many more runs,",
            "each into a new store (compiled kernels cached). Shares: of the first run's",
            "blocks, and of the warm median.",
            "Both give the same symmetry error (asserted).",
            "",
            "| case | n | dtype | block | blocks | blocks s, first run | blocks s, warm |"
            " checks before s (share of first) | checks after s (share of first / warm) |"
            " speed-up |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )
    write_section("checks", body, f"python benchmarks/bench_checks.py --repeats {args.repeats}")
    print(body)


if __name__ == "__main__":
    main()
