"""Shared test problems and comparisons (one place, imported by every test module)."""

from __future__ import annotations

import ast
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


def mixed_x(dtype=jnp.float32):
    """A pytree of mixed shapes: 0-d, 1-d, 2-d, nested dict/list/tuple and a Python float."""
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    return {
        "scalar": jnp.asarray(0.7, dtype),
        "vec": jax.random.normal(k[0], (5,), dtype),
        "nested": [
            jax.random.normal(k[1], (2, 3), dtype),
            (1.25, jax.random.normal(k[2], (3,), dtype)),
        ],
    }


def mixed_loss(p):
    """A scalar with coupling between every leaf (a dense Hessian)."""
    a = p["scalar"]
    v = p["vec"]
    m, (s, w) = p["nested"]
    t = jnp.tanh(m @ w) * a + s * jnp.sum(jnp.sin(v) ** 2)
    return jnp.sum(t**2) + jnp.prod(jnp.cos(v[:3])) * s * a + jnp.sum(m**3) * jnp.sum(v)


def mixed_out(p):
    """A pytree-valued function of `mixed_x` (for Jacobians)."""
    m, (s, w) = p["nested"]
    return {
        "first": jnp.sin(p["vec"]) * p["scalar"] * s,
        "second": (m @ w, jnp.sum(m) * p["scalar"]),
    }


def flat(f, x):
    """``f`` as a function of the flat vector of ``x``, and that vector."""
    x_flat, unravel = ravel_pytree(x)
    return (lambda z: f(unravel(z))), x_flat


def reference_hessian(f, x):
    g, x_flat = flat(f, x)
    return np.asarray(jax.jit(jax.hessian(g))(x_flat))


def reference_jacobian(f, x):
    g, x_flat = flat(f, x)
    return jax.jit(jax.jacobian(g))(x_flat)


def tol(dtype):
    return (
        dict(rtol=2e-5, atol=2e-5)
        if np.dtype(dtype) == np.float32
        else dict(rtol=1e-12, atol=1e-12)
    )


def assert_tree_close(actual, expected, **kw):
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    for a, e in zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)):
        assert np.shape(a) == np.shape(e)
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), **kw)


class TraceCounter:
    """Wraps a function and counts how often JAX traces (or Python calls) it."""

    def __init__(self, f):
        self.f = f
        self.count = 0

    def __call__(self, *args):
        self.count += 1
        return self.f(*args)


class CompileCounter:
    """Counts XLA compiles (jax.monitoring's backend-compile events) inside a ``with``."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def _listen(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def file_snapshot(root):
    """{relative path: (size, mtime_ns, inode)} of every file under ``root``."""
    import os

    snap = {}
    for base, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(base, name)
            st = os.stat(full)
            snap[os.path.relpath(full, root)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return snap


def chunk_files(store, array="matrix"):
    """The data chunk files of a local store's array, sorted."""
    import glob
    import os

    return sorted(
        p
        for p in glob.glob(os.path.join(store, array, "c", "**", "*"), recursive=True)
        if os.path.isfile(p)
    )


def log_fault(name, injected, survived, data_lost):
    """Append a fault-injection figure to $DIFFOPS_FAULT_REPORT (benchmarks/fault_report.py)."""
    import json
    import os

    path = os.environ.get("DIFFOPS_FAULT_REPORT")
    if path:
        with open(path, "a") as fh:
            fh.write(
                json.dumps(
                    {
                        "fault": name,
                        "injected": injected,
                        "survived": survived,
                        "data_lost": data_lost,
                    }
                )
                + "\n"
            )


def lock_is_free(store) -> bool:
    """Whether no process holds the run lock of a local store (an OS lock)."""
    import os

    import filelock

    lock = filelock.FileLock(os.path.join(store, "diffops.lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        return False
    lock.release()
    return True


def wait_for_lock_held(store, proc, timeout=120.0):
    """Wait until a process holds the store's run lock (it is writing)."""
    import os
    import time

    deadline = time.time() + timeout
    while True:
        assert time.time() < deadline and proc.poll() is None
        if os.path.exists(os.path.join(store, "zarr.json")) and not lock_is_free(store):
            return
        time.sleep(0.02)


def scheduler_address(path, proc) -> str:
    """The address in a dask scheduler file, once the scheduler has written it
    whole: the file appears before its content, so its existence is no sign
    (a test read it empty). Waits on the file; fails if the scheduler exits."""
    import json
    import time

    while True:
        try:
            with open(path) as fh:
                return json.load(fh)["address"]
        except (FileNotFoundError, ValueError, KeyError):
            assert proc.poll() is None, "the scheduler exited before writing its file"
            time.sleep(0.05)


#: A small residual model for spec tests: ``residuals`` (two leaves, 10 values),
#: a scalar ``loss`` and ``point`` (``a``: 5, ``b``: a scalar).
RESIDUAL_MODEL = """
import jax.numpy as jnp
import numpy as np

def residuals(p):
    return {"fit": jnp.sin(p["a"]) * p["b"] - 0.2, "prior": (p["a"] - 0.5) / 2.0}

def loss(p):
    return jnp.sum(jnp.sin(p["a"]) ** 2 * p["b"]) + jnp.sum(p["a"] ** 2)

def point():
    return {"a": np.linspace(0.1, 1.0, 5).astype(np.float32), "b": np.float32(1.5)}
"""


def residual_spec(tmp_path, monkeypatch, module, name="spec.yaml", text=None, **fields) -> str:
    """Write `RESIDUAL_MODEL` as ``module.py`` and a gauss_newton spec of it
    (float64, block 2, output ``g.zarr``; ``fields`` override, as YAML text) in
    ``tmp_path``, or the spec file's raw bytes ``text``. **Returns:** its path."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / f"{module}.py").write_text(RESIDUAL_MODEL)
    path = tmp_path / name
    if text is not None:
        path.write_bytes(text)
        return str(path)
    data = {
        "operation": "gauss_newton",
        "function": f"{module}:residuals",
        "point": f"{module}:point",
        "output": "g.zarr",
        "blocks": "{block_size: 2}",
        "dtype": "float64",
        **fields,
    }
    path.write_text("".join(f"{k}: {v}\n" for k, v in data.items()))
    return str(path)


# -- a stored SPD quadratic (the uncertainty and analysis tests) -----------------------

SPD_N = 150


def spd(n=SPD_N, seed=0, shift=0.05):
    """A float32 SPD matrix, ``a aᵀ / n + shift I``."""
    a = np.random.default_rng(seed).normal(size=(n, n))
    return (a @ a.T / n + shift * np.eye(n)).astype(np.float32)


def spd_x():
    return {"a": jnp.ones((5, 10), jnp.float32), "b": jnp.zeros(SPD_N - 50, jnp.float32)}


def spd_quadratic(P):
    P = jnp.asarray(P)

    def f(x):
        v = jnp.concatenate([x["a"].ravel(), x["b"]])
        return 0.5 * v @ P @ v

    return f


def spd_store(tmp_path, P=None, block_size=32, name="h.zarr"):
    """``0.5 vᵀ P v`` (P = `spd()` by default) stored by `pipeline.hessian_to_zarr`."""
    import pipeline

    P = spd() if P is None else P
    return pipeline.hessian_to_zarr(
        spd_quadratic(P), spd_x(), str(tmp_path / name), block_size=block_size, progress=False
    )


# -- the shape of a package: its modules and the imports between them ------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def package_modules(package: str) -> dict[str, str]:
    """{dotted name: path} of every module of ``package`` (a top-level folder)."""
    found = {}
    for base, _dirs, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(base, name)
                parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _is_type_checking(node) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_imports(path: str, module: str, package: bool, *, names: bool = False) -> set:
    """The modules of ``module``'s own top-level package that it imports, anywhere
    in its body (an ``if TYPE_CHECKING:`` block is left out: it never runs).
    With ``names``: ``(target, name, inside a function)`` for each imported name."""
    tree = ast.parse(open(path).read())
    top = module.split(".")[0]
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    inner = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    base = module.split(".") if package else module.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == top:
                    out.add((a.name, None, id(node) in inner) if names else a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = ".".join(base[: len(base) - node.level + 1])
                target = f"{stem}.{node.module}" if node.module else stem
            else:
                target = node.module or ""
            if target.split(".")[0] != top:
                continue
            if names:
                out |= {(target, a.name, id(node) in inner) for a in node.names}
                continue
            if node.module:  # `from . import _x` imports _x, not the package (already there)
                out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names}
    return out


def import_graph(package: str) -> dict[str, set[str]]:
    """{module: the modules of ``package`` it imports}."""
    modules = package_modules(package)
    graph = {}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        graph[name] = {
            m for m in module_imports(path, name, is_package) if m in modules and m != name
        }
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of ``graph`` meets (none: an empty list)."""
    state, cycles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif state.get(nxt) is None:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [node])
    return cycles


def room(module: str) -> str:
    """The room of a module: the first name below its package (``__init__`` for
    the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rooms_pointing_up(package: str, layers: tuple[str, ...]) -> list[str]:
    """The imports of ``package`` from a room to one above it in ``layers``."""
    wrong = []
    for module, targets in import_graph(package).items():
        here = layers.index(room(module))
        for target in targets:
            if layers.index(room(target)) > here:
                wrong.append(f"{module} imports {target}")
    return wrong


def folders_over(package: str, most: int = 10) -> list[tuple[str, list[str]]]:
    """The folders of ``package`` holding more than ``most`` modules."""
    out = []
    for base, _dirs, files in os.walk(os.path.join(ROOT, package)):
        modules = [f for f in files if f.endswith(".py")]
        if len(modules) > most:
            out.append((base, modules))
    return out
