"""Shipping a spec's model to a cluster that cannot import it.

A spec names ``module:function`` importable from the spec's directory (and its
``python_path``). Workers started by hand (``dask worker`` in a SLURM job, a
shared server) do not have that directory on their path, and the scheduler
unpickles task graphs too. So the modules the driver imported from those
directories are pickled **by value** (cloudpickle's
``register_pickle_by_value``): their functions travel with their code and the
globals they read (data a module loaded at import included), and neither the
scheduler nor the workers import them. Modules installed in the environment
(jax, numpy, your packages in site-packages) still travel by reference: the
workers must have them, and `DistributedExecutor` checks that before the first
block.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

__all__ = ["by_value", "local_modules"]


def _inside(path: str, directories: Sequence[str]) -> bool:
    path = os.path.realpath(path)
    return any(os.path.commonpath([path, d]) == d for d in directories)


#: Never shipped by value, wherever they are installed from (an editable install
#: of diffops lives in its source tree, which a spec may sit in): the workers run
#: their own copy, and the block task must be their class.
NEVER = frozenset({"pipeline", "diffops_core", "__main__"})


def local_modules(directories: Sequence[str]) -> list[str]:
    """Top-level names of the imported modules whose files lie under
    ``directories`` (and not in an installed environment's site-packages, and
    never diffops itself)."""
    roots = [os.path.realpath(d) for d in directories if os.path.isdir(d)]
    names = set()
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or "site-packages" in path or "dist-packages" in path:
            continue
        if name.partition(".")[0] in NEVER:
            continue
        if _inside(path, roots):
            names.add(name.partition(".")[0])
    return sorted(names)


@contextlib.contextmanager
def by_value(directories: Sequence[str]) -> Iterator[list[str]]:
    """Pickle the modules imported from ``directories`` by value while inside."""
    import cloudpickle

    names = [n for n in local_modules(directories) if n in sys.modules]
    registered = []
    try:
        for name in names:
            cloudpickle.register_pickle_by_value(sys.modules[name])
            registered.append(name)
        yield registered
    finally:
        for name in registered:
            with contextlib.suppress(ValueError, KeyError):
                cloudpickle.unregister_pickle_by_value(sys.modules[name])
