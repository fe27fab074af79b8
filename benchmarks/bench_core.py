"""diffops_core benchmarks: this project vs zodiax.diffops vs jax, side by side.

Every configuration runs in a fresh process (run_one.py): first-call time,
median of N steady calls on new x, peak RSS. Writes the tables into the
``core`` section of benchmarks/RESULTS.md.

    python benchmarks/bench_core.py                 # everything (about 15 min on 2 cores)
    python benchmarks/bench_core.py --suite mlp     # one suite: mlp, sweep, wide, repeated, trace, budget
"""

from __future__ import annotations

import argparse
import sys

from report import mb, run_fresh, write_section

MLP_H_BYTES = 2632 * 2632 * 4


def _row(*cells):
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _cfg(problem, impl, repeats, op="hessian", **kwargs):
    return {"problem": problem, "impl": impl, "op": op, "kwargs": kwargs, "repeats": repeats}


def _show(res):
    if "error" in res:
        print("  ERROR", res, file=sys.stderr)
        return
    print(
        f"  {res['problem']} {res['impl']} {res.get('kwargs')} first {res['first_s']:.2f}s "
        f"median {res['median_s']:.3f}s peak+{mb(res['peak_increase'])} MB",
        file=sys.stderr,
    )


def run(cfg):
    res = run_fresh(cfg)
    _show(res)
    return res


def suite_mlp(repeats, problem="mlp", nbatches=(1, 16, 128)):
    jx = run(_cfg(problem, "jax", repeats))
    lines = [
        _row(
            "implementation",
            "nbatches",
            "first call s",
            "steady median s",
            "peak RSS MB",
            "RSS increase MB",
            "vs zodiax (same nbatches)",
            "vs jax.hessian",
            "RSS incr. vs jax",
        ),
        _row(*["---"] * 9),
    ]
    for nb in nbatches:
        ours = run(_cfg(problem, "diffops", repeats, nbatches=nb))
        zod = run(_cfg(problem, "zodiax", repeats, nbatches=nb))
        for res, name in ((ours, "diffops"), (zod, "zodiax")):
            if "error" in res:
                lines.append(_row(name, nb, "error: " + res["error"][:80], "", "", "", "", "", ""))
                continue
            lines.append(
                _row(
                    name,
                    nb,
                    f"{res['first_s']:.2f}",
                    f"{res['median_s']:.3f}",
                    mb(res["peak_rss"]),
                    mb(res["peak_increase"]),
                    f"{zod['median_s'] / res['median_s']:.2f}x faster"
                    if "error" not in zod
                    else "",
                    f"{jx['median_s'] / res['median_s']:.2f}x faster",
                    f"{res['peak_increase'] / jx['peak_increase']:.3f}",
                )
            )
    lines.append(
        _row(
            "jax.jit(jax.hessian)",
            "-",
            f"{jx['first_s']:.2f}",
            f"{jx['median_s']:.3f}",
            mb(jx["peak_rss"]),
            mb(jx["peak_increase"]),
            "",
            "1.00x",
            "1.000",
        )
    )
    return "\n".join(lines)


SWEEPS = [
    ("mlp", {"nbatches": 128}),
    ("mlp", {}),
    ("psf", {}),
    ("dense", {"nbatches": 8}),
]


def suite_sweep(repeats):
    lines = [
        _row(
            "problem",
            "blocking",
            "block",
            "median s by inner width",
            "best width",
            "default width",
            "default / best",
        ),
        _row(*["---"] * 7),
    ]
    for problem, blocking in SWEEPS:
        default = run(_cfg(problem, "diffops", repeats, **blocking))
        times = {}
        for width in (1, 2, 4, 8, 16, 32, 64, 128):
            if width > default["block_size"]:
                break
            res = run(_cfg(problem, "diffops", repeats, inner_width=width, **blocking))
            if "error" not in res:
                times[width] = res["median_s"]
        best = min(times, key=times.get)
        ratio = default["median_s"] / times[best]
        cells = ", ".join(f"{w}: {t:.3f}" for w, t in times.items())
        lines.append(
            _row(
                problem,
                blocking or "none",
                default["block_size"],
                cells,
                best,
                f"{default['inner_width']} ({default['median_s']:.3f} s)",
                f"{ratio:.2f}",
            )
        )
    return "\n".join(lines)


def suite_wide(repeats):
    repeats = max(repeats, 30)  # millisecond calls: more of them for a stable median
    ours = run(_cfg("wide", "diffops", repeats, op="jacobian", nbatches=16))
    ours1 = run(_cfg("wide", "diffops", repeats, op="jacobian"))
    jx = run(_cfg("wide", "jax", repeats, op="jacrev"))
    zod = run(_cfg("wide", "zodiax", 3, op="jacobian", nbatches=16))
    lines = [
        _row("implementation", "first call s", "steady median s", "vs jax.jacrev"),
        _row(*["---"] * 4),
    ]
    for name, res in (
        ("diffops nbatches=16 (auto -> rev)", ours),
        ("diffops nbatches=1 (auto -> rev)", ours1),
        ("jax.jit(jax.jacrev)", jx),
        ("zodiax nbatches=16", zod),
    ):
        lines.append(
            _row(
                name,
                f"{res['first_s']:.3f}",
                f"{res['median_s'] * 1e3:.2f} ms",
                f"{res['median_s'] / jx['median_s']:.2f}x",
            )
        )
    return "\n".join(lines)


def suite_repeated(repeats):
    ours = run(_cfg("dense", "diffops", repeats, nbatches=8))
    jx = run(_cfg("dense", "jax", repeats))
    return "\n".join(
        [
            _row(
                "implementation",
                "first call s",
                "steady median s (new x each call)",
                "vs pre-jitted jax",
            ),
            _row(*["---"] * 4),
            _row(
                "diffops nbatches=8",
                f"{ours['first_s']:.2f}",
                f"{ours['median_s']:.3f}",
                f"{ours['median_s'] / jx['median_s']:.2f}x",
            ),
            _row(
                "jax.jit(jax.hessian), pre-jitted",
                f"{jx['first_s']:.2f}",
                f"{jx['median_s']:.3f}",
                "1.00x",
            ),
        ]
    )


def suite_budget(repeats):
    lines = [
        _row(
            "memory_budget",
            "block chosen",
            "inner width",
            "steady median s",
            "RSS increase MB",
            "budget + H MB",
            "within",
        ),
        _row(*["---"] * 7),
    ]
    for budget, nbytes in (("256MB", 256e6), ("1GB", 1e9)):
        res = run(_cfg("mlp", "diffops", repeats, memory_budget=budget))
        limit = nbytes + MLP_H_BYTES
        lines.append(
            _row(
                budget,
                res["block_size"],
                res["inner_width"],
                f"{res['median_s']:.3f}",
                mb(res["peak_increase"]),
                mb(limit),
                "yes" if res["peak_increase"] <= limit else "NO",
            )
        )
    return "\n".join(lines)


def suite_trace(repeats):
    """Per-call cost of the identity (a trace of f to a jaxpr, every call)."""
    configs = [
        ("mlp", "hessian", {"nbatches": 128}),
        ("psf", "hessian", {"nbatches": 16}),
        ("dense", "hessian", {"nbatches": 8}),
        ("wide", "jacobian", {"nbatches": 16}),
    ]
    lines = [
        _row(
            "problem",
            "steady call s",
            "trace per call ms",
            "share of the call",
            "constant digest ms (pipeline only)",
        ),
        _row(*["---"] * 5),
    ]
    for problem, op, kw in configs:
        res = run({**_cfg(problem, "diffops", repeats, op=op, **kw), "trace": True})
        lines.append(
            _row(
                problem,
                f"{res['median_s']:.3f}",
                f"{res['trace_s'] * 1e3:.2f}",
                f"{100 * res['trace_s'] / res['median_s']:.1f}%",
                f"{res['identity_s'] * 1e3:.2f}",
            )
        )
    return "\n".join(lines)


SUITES = {
    "mlp": (
        "Hessian of the MLP loss (n=2632): this project vs zodiax.diffops vs jax.hessian",
        suite_mlp,
    ),
    "psf": (
        "Hessian of the PSF fit (n=4120, FFT-heavy)",
        lambda r: suite_mlp(r, problem="psf", nbatches=(1, 16)),
    ),
    "sweep": ("Inner (micro-batch) width sweep: default vs best", suite_sweep),
    "wide": ("Wide Jacobian 64x20000, nbatches=16", suite_wide),
    "repeated": (
        "Repeated calls (same f, new x, f traced every call), dense n=4096 Hessian, nbatches=8",
        suite_repeated,
    ),
    "trace": (
        "Per-call trace cost (the identity of a computation is what JAX traces)",
        suite_trace,
    ),
    "budget": (
        "memory_budget on the MLP: peak RSS increase vs budget + size of H (27.7 MB)",
        suite_budget,
    ),
}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", action="append", choices=sorted(SUITES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    names = args.suite or list(SUITES)
    command = "python benchmarks/bench_core.py" + "".join(f" --suite {n}" for n in args.suite or [])
    for name in names:  # each suite keeps its own section of RESULTS.md
        title, fn = SUITES[name]
        print(f"== {title}", file=sys.stderr)
        body = f"### {title}\n\n{fn(args.repeats)}\n"
        write_section(
            f"core-{name}",
            body,
            command + ("" if args.repeats == 3 else f" --repeats {args.repeats}"),
        )
        print(body)


if __name__ == "__main__":
    main()
