"""Colouring at n = 10⁶ (issue 24, part C): the star colouring (Hessians) and
the column colouring (Jacobians) of a chain, 5- and 9-point grids, a band of 7
diagonals and a random graph of degree 7, their greedy loops compiled with
numba; and Jacobians with dense rows and dense columns, coloured one-sidedly
and bidirectionally (JVPs and VJPs together). Writes the ``colouring`` section
of RESULTS.md.

Each pattern is coloured ``--repeats`` times in one process after one warm-up
call (numba's compile, cached on disk after the first run, is reported apart):
the median.

    python benchmarks/bench_colouring.py [--n 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import write_section

from diffops_core import Sparsity
from diffops_core.sparse import column_coloring, star_coloring


def _symmetric(rows, cols, n) -> sp.csr_array:
    a = sp.csr_array((np.ones(rows.size, bool), (rows, cols)), shape=(n, n))
    return sp.csr_array(a + a.T + sp.identity(n, dtype=bool, format="csr"), dtype=bool)


def _grid(n: int, offsets) -> sp.csr_array:
    side = int(np.sqrt(n))
    n = side * side
    i = np.arange(n)
    r, c = np.divmod(i, side)
    rows, cols = [], []
    for dr, dc in offsets:
        ok = (r + dr < side) & (c + dc >= 0) & (c + dc < side)
        rows.append(i[ok])
        cols.append(((r + dr) * side + c + dc)[ok])
    return _symmetric(np.concatenate(rows), np.concatenate(cols), n)


def patterns(n: int) -> dict:
    rng = np.random.default_rng(0)
    i = np.arange(n)
    band = np.concatenate([i[: n - d] for d in (1, 2, 3)])
    shifted = np.concatenate([i[d:] for d in (1, 2, 3)])
    edges = rng.integers(0, n, size=(2, n * 7 // 2))
    return {
        "chain": _symmetric(i[:-1], i[1:], n),
        "5-point grid": _grid(n, [(0, 1), (1, 0)]),
        "9-point grid": _grid(n, [(0, 1), (1, 0), (1, 1), (1, -1)]),
        "band of 7 diagonals": _symmetric(band, shifted, n),
        "random, degree 7": _symmetric(edges[0], edges[1], n),
    }


def lined(n: int, dense: int, body: sp.csr_array | None = None) -> sp.csr_array:
    """``dense`` full rows and ``dense`` full columns beside a diagonal (the
    arrowhead when ``dense`` is 1), or beside ``body``."""
    body = sp.identity(n, dtype=bool, format="csr") if body is None else body
    lines = sp.lil_array((n, n), dtype=bool)
    lines[:dense, :] = True
    lines[:, :dense] = True
    return sp.csr_array(body + sp.csr_array(lines), dtype=bool)


def jacobians(n: int) -> dict:
    grid = _grid(n, [(0, 1), (1, 0)])
    return {
        "arrowhead (1 dense row, 1 dense column)": lined(n, 1),
        "3 dense rows and columns beside a diagonal": lined(n, 3),
        "3 dense rows and columns beside a 5-point stencil": lined(grid.shape[0], 3, grid),
    }


def timed(fn, pattern, repeats: int):
    t0 = time.perf_counter()
    colors = fn(pattern)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(pattern)
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), int(colors.max()) + 1


def _bi(pattern: sp.csr_array) -> Sparsity:
    found = Sparsity.from_pattern(pattern, "jacobian")
    assert found.mode == "bidirectional", found.mode
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lines = [
        f"Star (Hessian) and column (Jacobian) colourings at n = {args.n:,} (grids: the "
        "largest square below), median of "
        f"{args.repeats} after a first call (which includes numba's compile when its disk "
        "cache is cold). Column: the fewer colours of the greedy colouring in the columns' "
        "order and DSATUR's (tried when the greedy one is above the densest row, a lower "
        "bound, and at most 64); before DSATUR, the 5-point grid took 7 column colours (0.13 "
        "s) and the random graph 28 (4.09 s).",
        "",
        "| pattern | nnz | star colours | star s | column colours | column s | first star s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, pattern in patterns(args.n).items():
        first, star_s, star_k = timed(star_coloring, pattern, args.repeats)
        _, col_s, col_k = timed(column_coloring, pattern, args.repeats)
        lines.append(f"| {name} | {pattern.nnz:,} | {star_k} | {star_s:.2f} | {col_k} | "
                     f"{col_s:.2f} | {first:.2f} |")  # fmt: skip
        print(lines[-1], flush=True)
    lines += [
        "",
        "Jacobians with dense rows and dense columns: `Sparsity.from_pattern(pattern, "
        "'jacobian')` (bidirectional: the dense rows by VJPs, the rest by JVPs, or the "
        "transpose) against its `one_sided()` colouring (what a store holds: a colour per "
        "column once a row covers half of them), median as above.",
        "",
        "| pattern | n | nnz | one-sided colours | bidirectional colours (VJPs + JVPs) | s |",
        "|---|---|---|---|---|---|",
    ]
    for name, pattern in jacobians(args.n).items():
        _, seconds, _ = timed(lambda p: _bi(p).colors, pattern, args.repeats)
        found = _bi(pattern)
        n = pattern.shape[1]
        vjps = int(found.colors[n:].max()) + 1 - (int(found.colors[:n].max()) + 1)
        lines.append(f"| {name} | {n:,} | {pattern.nnz:,} | {found.one_sided().ncolors:,} | "
                     f"{found.ncolors} ({vjps} + {found.ncolors - vjps}) | {seconds:.2f} |")  # fmt: skip
        print(lines[-1], flush=True)
    command = "python benchmarks/bench_colouring.py " + " ".join(sys.argv[1:])
    write_section("colouring", "\n".join(lines), command.strip())


if __name__ == "__main__":
    main()
