"""Detection on the CUTEst problems as sif2jax writes them (issue 24, part B):
every unconstrained objective Hessian of n <= ``--most``. Writes the
``cutest`` section of RESULTS.md.

For each problem, at a random point near its start: detection and colouring
time (the first call's), nonzeros, colours; sound when the sparse Hessian from
the pattern passes its self-check (products of six random vectors, row by
row) and equals a Hessian-vector product of jax; dense when detection found
the pattern (nearly) dense or gave up.

    python benchmarks/bench_cutest.py [--most 5000]
    python benchmarks/bench_cutest.py --baselines   # the section cutest-baselines

With ``--baselines``, every problem of asdex's published CUTEst tables
(``data/asdex_cutest_baselines.py``): our pattern's nonzeros against asdex's
and CUTEst's counts, soundness against jax's dense matrix at three points.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)  # the problems are float64

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import write_section  # noqa: E402

import diffops_core as dc  # noqa: E402


def one(problem) -> dict:
    f = lambda y: problem.objective(y, problem.args)
    y0 = jnp.asarray(np.asarray(problem.y0), jnp.float64)
    rng = np.random.default_rng(len(problem.name))
    y = y0 + jnp.asarray(rng.normal(size=y0.shape) * 0.1 * (1 + np.abs(np.asarray(y0))))
    t0 = time.perf_counter()
    found = dc.hessian_sparsity(f, y)
    out = {"name": problem.name, "n": int(y.size), "detect_s": time.perf_counter() - t0,
           "nnz": found.nnz, "colours": found.ncolors, "dense": found.dense}  # fmt: skip
    if found.dense:
        return out
    try:
        H, _ = dc.sparse_hessian(f, y, sparsity=found)
    except ValueError as err:
        return {**out, "refused": str(err)[:100]}
    v = jnp.asarray(np.random.default_rng(0).standard_normal(y.size))
    hvp = np.asarray(jax.jvp(jax.grad(f), (y,), (v,))[1])
    scale = abs(H) @ np.abs(np.asarray(v)) + np.abs(hvp) + 1e-300
    out["sound"] = bool(np.all(np.abs(H @ np.asarray(v) - hvp) <= 1e-8 * scale))
    return out


def _dense_pattern(dense, y, n: int) -> np.ndarray:
    """The true nonzeros at ``y``: jax's dense Hessian or Jacobian (jitted)."""
    return np.asarray(dense(y)).reshape(-1, n) != 0


def against_baseline(problem, kind: str, published: tuple[int, int]) -> dict:
    """Our pattern of one problem beside asdex's published count and CUTEst's:
    detected at its start (as asdex's table is), sound at three random points."""
    from diffops_core.internal import hessian_pattern, jacobian_pattern

    if kind == "hessian":
        f = lambda y: problem.objective(y, problem.args)
    else:
        side = 0 if kind == "eq" else 1
        f = lambda y: problem.constraint(y)[side]
    y0 = jnp.asarray(np.asarray(problem.y0), jnp.float64)
    out = {"name": problem.name, "kind": kind, "n": int(y0.size), "asdex": published[0],
           "cutest": published[1]}  # fmt: skip
    t0 = time.perf_counter()
    try:
        pattern = (hessian_pattern if kind == "hessian" else jacobian_pattern)(f, y0)
        nnz, dense = int(pattern.nnz), None
    except Exception as err:  # noqa: BLE001 - detection gave up (dense): counted as such
        size = y0.size * (y0.size if kind == "hessian" else int(np.size(f(y0))))
        nnz, pattern, dense = size, None, f"{type(err).__name__}: {str(err)[:60]}"
    out.update(nnz=nnz, detect_s=time.perf_counter() - t0, dense=dense)
    rng = np.random.default_rng(len(problem.name))
    scale = 0.1 * (1.0 + np.abs(np.asarray(y0)))
    missing = 0
    dense = jax.jit(jax.hessian(f) if kind == "hessian" else jax.jacfwd(f))
    seen = None
    for _ in range(3):
        y = y0 + jnp.asarray(rng.normal(size=y0.shape) * scale)
        true = _dense_pattern(dense, y, y0.size)
        seen = true if seen is None else seen | true
        if pattern is not None:
            missing += int((true & ~pattern.toarray()).sum())
    out["sound"] = missing == 0
    # no sound pattern has fewer entries than the union of these (``seen``); the
    # nonzeros at the start are what a count at the start sees (asdex's CUTEst
    # Hessian counts are those of CUTEst's Hessian at x0, symmetrised)
    out["seen"] = int(seen.sum())
    out["at_start"] = int(_dense_pattern(dense, y0, y0.size).sum())
    return out


def baselines(args) -> None:
    """Every problem of asdex's CUTEst tables: our nonzeros against asdex's
    published count and CUTEst's; writes the ``cutest-baselines`` section."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    import asdex_cutest_baselines as published

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sif2jax

        free = {p.name: p for p in sif2jax.unconstrained_minimisation_problems}
        bound = {p.name: p for p in sif2jax.constrained_minimisation_problems}
    imported = time.perf_counter() - t0
    rows, absent = [], []
    for kind, table, problems in (("hessian", published.HESSIAN, free),
                                  ("eq", published.JACOBIAN_EQ, bound),
                                  ("ineq", published.JACOBIAN_INEQ, bound)):  # fmt: skip
        for name, counts in table.items():
            if name not in problems:
                absent.append(f"{kind}/{name}")
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.append(against_baseline(problems[name], kind, counts))
            print(rows[-1], flush=True)
    _baseline_section(rows, absent, imported)


def _baseline_section(rows: list, absent: list, imported: float) -> None:
    equal = [r for r in rows if r["nnz"] == r["cutest"]]
    asdex_equal = [r for r in rows if r["asdex"] == r["cutest"]]
    above = [r for r in rows if r["nnz"] > r["asdex"]]
    below = [r for r in rows if r["nnz"] < r["asdex"]]
    unsound = [r for r in rows if not r["sound"]]
    detect = [r["detect_s"] for r in rows]
    off = sorted((r for r in rows if r["nnz"] != r["cutest"]), key=lambda r: (r["kind"], r["name"]))
    lines = [
        f"The problems of asdex's CUTEst baseline tables (its `tests/test_cutest.py`: objective "
        f"Hessians, equality and inequality constraint Jacobians) as sif2jax writes them, "
        f"float64: {len(rows)} found in sif2jax ({len(absent)} not: {', '.join(absent) or '-'}; "
        f"importing it took {imported:.0f} s). Our pattern (detected at the start, as asdex's "
        "table is) against the nonzeros asdex detects and CUTEst's own count; sound: every "
        "nonzero of jax's dense matrix at three random points near the start inside it.",
        "",
        f"- sound: {len(rows) - len(unsound)} of {len(rows)} {[r['name'] for r in unsound]}",
        f"- equal to CUTEst's count: **{len(equal)} of {len(rows)}** (asdex's published: "
        f"{len(asdex_equal)})",
        f"- more nonzeros than asdex: {len(above)} {[r['kind'] + '/' + r['name'] for r in above]}",
        f"- fewer nonzeros than asdex: {len(below)}",
        f"- detection: median {statistics.median(detect):.3f} s, worst {max(detect):.2f} s",
        f"- where ours differs from CUTEst's count ({len(off)}): ours is the union of jax's "
        f"nonzeros at three random points (no sound pattern has fewer) on "
        f"{sum(r['nnz'] == r['seen'] for r in off)}; CUTEst's count is that of jax's matrix at "
        f"the start (a value that vanishes there, not a structural zero) on "
        f"{sum(r['cutest'] == r['at_start'] for r in off)}; fewer than the union (another "
        f"formulation in sif2jax, or structure CUTEst does not store) on "
        f"{sum(r['cutest'] < r['seen'] for r in off)}",
        "",
        "Where ours differs from CUTEst's count (seen: the union of jax's nonzeros at three "
        "random points; at start: jax's nonzeros at the start):",
        "",
        "| problem | kind | n | ours | seen | at start | asdex | CUTEst |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['name']} | {r['kind']} | {r['n']} | {r['nnz']:,} | {r['seen']:,} | "
            f"{r['at_start']:,} | {r['asdex']:,} | {r['cutest']:,} |"
            for r in off
        ],  # fmt: skip
    ]
    command = "python benchmarks/bench_cutest.py " + " ".join(sys.argv[1:])
    write_section("cutest-baselines", "\n".join(lines), command.strip())
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--most", type=int, default=5000)
    parser.add_argument("--baselines", action="store_true",
                        help="asdex's CUTEst tables instead: nonzeros against asdex and CUTEst")  # fmt: skip
    args = parser.parse_args()
    if args.baselines:
        return baselines(args)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sif2jax

        problems = [p for p in sif2jax.unconstrained_minimisation_problems
                    if np.size(p.y0) <= args.most]  # fmt: skip
    imported = time.perf_counter() - t0
    rows = []
    for problem in problems:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows.append(one(problem))
        print(rows[-1], flush=True)
    detect = [r["detect_s"] for r in rows]
    sparse = [r for r in rows if not r["dense"]]
    sound = [r for r in sparse if r.get("sound")]
    refused = [r for r in sparse if "refused" in r]
    slowest = sorted(rows, key=lambda r: -r["detect_s"])[:8]
    lines = [
        f"Every unconstrained CUTEst objective of n <= {args.most} in sif2jax "
        f"({len(rows)} problems; importing sif2jax took {imported:.0f} s), float64, at a "
        "random point near its start, one process.",
        "",
        f"- sparse patterns: {len(sparse)}; their sparse Hessian passed its self-check and "
        f"equalled jax's Hessian-vector product (1e-8 of the row's scale): {len(sound)}; "
        f"refused by the check (an unsound pattern): {len(refused)} "
        f"{[r['name'] for r in refused]}",
        f"- dense (detection saw more than half, or gave up): {len(rows) - len(sparse)}",
        f"- detection and colouring, first call: median {statistics.median(detect):.2f} s, "
        f"worst {max(detect):.1f} s; over 2 s: {sum(d > 2 for d in detect)}",
        "",
        "Slowest to detect:",
        "",
        "| problem | n | nnz | colours | detect s |",
        "|---|---|---|---|---|",
        *[
            f"| {r['name']} | {r['n']} | {r['nnz']:,} | {r['colours']} | {r['detect_s']:.1f} |"
            for r in slowest
        ],  # fmt: skip
    ]
    command = "python benchmarks/bench_cutest.py " + " ".join(sys.argv[1:])
    write_section("cutest", "\n".join(lines), command.strip())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
