"""Deterministic fault injection for the pipeline's tests (the library has none).

A fault is a dict ``{"block": i, "kind": k, "at": stage, "seconds": s, "once": dir}``:

- ``kind``: ``"raise"`` (a RuntimeError), ``"exit"`` (``os._exit(17)``: the
  process dies), ``"wait"`` (create the file ``signal``, if given, then wait
  until the file ``file`` exists: an event the test sets; never a clock),
  ``"sleep"`` (``seconds``), ``"enospc"`` (an OSError as a full
  disk gives) or ``"nan"`` (poisons the slab's first entry; at ``"kernel"``).
- ``at``: ``"start"`` (before the kernel; the default), ``"kernel"`` (after it,
  the slab on the host), ``"data"`` (just before the slab is written) or
  ``"write"`` (after the slab is written, before its record).
- ``once``: fire only the first time (a marker file in that directory).

`FaultyTask` is the pipeline's `BlockTask` with these faults wrapped around its
steps; `install` makes the executors build it (in this process; on a cluster
the task travels to the workers, which import this module from ``tests/``).
`command` builds a subprocess command line that installs faults, then runs the
``diffops`` command or a Python snippet.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import sys
import time

import numpy as np

from pipeline import DistributedExecutor, ThreadsExecutor
from pipeline.internal import BlockTask

TESTS = os.path.dirname(os.path.abspath(__file__))


def _planned(faults, faults_file):
    if faults_file is not None:
        if not os.path.exists(faults_file):
            return []
        with open(faults_file) as fh:
            text = fh.read()
        return json.loads(text) if text.strip() else []
    return list(faults)


def _fire_once(fault, index, at) -> bool:
    once = fault.get("once")
    if not once:
        return True
    marker = os.path.join(once, f"fault-{index}-{fault['kind']}-{at}")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def wait_for_file(name: str, signal: str | None = None, limit: float = 600.0) -> None:
    """Create ``signal`` (the test's event: this block is running), then wait
    until the test creates ``name`` (a bound only against a test that died)."""
    if signal:
        with open(signal, "w") as fh:
            fh.write(str(os.getpid()))
    deadline = time.monotonic() + limit
    while not os.path.exists(name):
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {limit:.0f} s for {name}: the test never set it")
        time.sleep(0.02)


@dataclasses.dataclass(frozen=True)
class FaultyTask(BlockTask):
    """A `BlockTask` that fires the planned faults at its stages. ``faults`` is a
    tuple of JSON strings; ``faults_file`` (read at each block) wins when set."""

    faults: tuple = ()
    faults_file: str | None = None

    def fire(self, index, at, slab=None):
        for fault in _planned([json.loads(f) for f in self.faults], self.faults_file):
            if fault.get("block") != index or fault.get("at", "start") != at:
                continue
            if not _fire_once(fault, index, at):
                continue
            kind = fault["kind"]
            if kind == "raise":
                raise RuntimeError(f"injected fault in block {index}")
            if kind == "exit":
                os._exit(17)
            if kind == "wait":
                wait_for_file(fault["file"], fault.get("signal"))
            if kind == "sleep":
                time.sleep(float(fault.get("seconds", 1.0)))
            if kind == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            if kind == "nan" and slab is not None:
                slab = np.array(slab)  # device-backed host arrays are read-only
                slab.reshape(-1)[0] = np.nan
        return slab

    def run_block(self, block):
        self.fire(block.index, "start")
        return super().run_block(block)

    def to_host(self, slab, block):
        return self.fire(block.index, "kernel", super().to_host(slab, block))

    def write_data(self, state, block, data):
        self.fire(block.index, "data")
        super().write_data(state, block, data)

    def write_record(self, state, block, record):
        self.fire(block.index, "write")
        super().write_record(state, block, record)


def faulty(task: BlockTask, faults=(), faults_file=None) -> FaultyTask:
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(BlockTask)}
    return FaultyTask(
        **fields, faults=tuple(json.dumps(f) for f in faults), faults_file=faults_file
    )


def install(faults=(), faults_file=None):
    """Make every executor in this process build `FaultyTask`s; returns an undo."""
    originals = {cls: cls.__dict__["task"] for cls in (ThreadsExecutor, DistributedExecutor)}

    def task(self, plan):
        return faulty(BlockTask.from_plan(plan), faults, faults_file)

    for cls in originals:
        cls.task = task

    def undo():
        for cls, original in originals.items():
            cls.task = original

    return undo


_BOOT = (
    "import json, sys, faults; faults.install(json.loads(sys.argv[1])); "
    "sys.argv = sys.argv[:1] + sys.argv[2:]; "
)


def command(faults, args=(), code=None) -> list[str]:
    """A subprocess command line that installs ``faults``, then runs ``diffops
    ARGS`` (or the Python ``code``)."""
    run = (
        code
        if code is not None
        else ("from pipeline.cli import main; main(sys.argv[1:], prog_name='diffops')")
    )
    return [sys.executable, "-c", _BOOT + run, json.dumps(list(faults)), *args]


def env(extra=None) -> dict:
    """The environment for such a subprocess: this tests directory importable."""
    path = os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}
