"""Shared benchmark plumbing: run a configuration in a fresh process, and keep
each benchmark's table in its own marked section of RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time

from diffops_core.internal import peak_rss  # noqa: F401 - what the benchmarks report

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "RESULTS.md")


def run_fresh(config: dict, timeout: float = 1800) -> dict:
    """Run ``run_one.py`` with ``config`` in a new Python process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "run_one.py"), json.dumps(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        return {
            **config,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cores = os.cpu_count()
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.0f} GiB"
    except ImportError:
        mem = "?"
    import jax

    dev = jax.devices()[0]
    return f"{platform.machine()}, {cores} cores, {mem}; JAX {jax.__version__} on {dev.device_kind}"


def mb(nbytes) -> str:
    return f"{nbytes / 1e6:,.0f}"


def write_section(name: str, body: str, command: str):
    """Replace (or append) the section ``name`` of RESULTS.md."""
    stamp = time.strftime("%Y-%m-%d")
    section = (
        f"<!-- {name}:start -->\n{body.rstrip()}\n\nCommand: `{command}` "
        f"({stamp}; {machine()})\n<!-- {name}:end -->"
    )
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = (
        pattern.sub(lambda _: section, text)
        if pattern.search(text)
        else f"{text.rstrip()}\n\n{section}\n"
    )
    with open(RESULTS, "w") as fh:
        fh.write(text)
