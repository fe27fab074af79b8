"""Shared fixtures: `inject` plans deterministic faults (see tests/faults.py)."""

import pytest

import faults


@pytest.fixture
def inject():
    """``inject([fault, ...])`` makes this process's executors run faulty block
    tasks; ``inject.clear()`` (and the end of the test) restores them."""
    undos = []

    def clear():
        while undos:
            undos.pop()()

    def plan(planned=(), faults_file=None):
        clear()
        undos.append(faults.install(planned, faults_file))

    plan.clear = clear
    yield plan
    clear()
