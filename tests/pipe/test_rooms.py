"""The shape of `pipeline`: rooms by role, arrows pointing down only, one home for
each concept, and a public surface that says what it promises.

Imports are read from the source (ast), imports inside functions included; an
``if TYPE_CHECKING:`` block is left out, since it never runs (it names types
for the type checker only).
"""

import ast
import os

import pipeline
import pipeline.internal
from helpers import (
    ROOT,
    folders_over,
    import_cycles,
    import_graph,
    module_imports,
    rooms_pointing_up,
)

#: The rooms from the bottom up: each imports only those before it (and itself).
LAYERS = (
    "_errors",
    "store",
    "run",
    "linalg",
    "report",
    "_result",
    "_api",
    "workflow",
    "cli",
    "internal",
    "__init__",
)


def test_every_import_points_down_the_rooms():
    assert rooms_pointing_up("pipeline", LAYERS) == []


def test_no_import_cycle_counting_imports_inside_functions():
    assert import_cycles(import_graph("pipeline")) == []


def test_the_layering_test_sees_imports_inside_functions(tmp_path):
    source = "def f():\n    from ..linalg import factor\n    return factor\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    assert "pipeline.linalg" in module_imports(str(path), "pipeline.store._m", package=False)


def test_no_folder_holds_more_than_ten_modules():
    assert folders_over("pipeline") == []


def _code_strings(tree):
    """String constants of a module that are not docstrings."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs
    ]


def test_tqdm_crc32_and_vmhwm_each_live_in_one_module():
    homes = {"tqdm": set(), "crc32": set(), "VmHWM": set()}
    for package in ("pipeline", "diffops_core"):
        for base, _dirs, files in os.walk(os.path.join(ROOT, package)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(base, name)
                tree = ast.parse(open(path).read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tqdm"):
                        homes["tqdm"].add(path)
                    if isinstance(node, ast.Import) and any(
                        a.name.startswith("tqdm") for a in node.names
                    ):
                        homes["tqdm"].add(path)
                    if isinstance(node, ast.Attribute) and node.attr == "crc32":
                        homes["crc32"].add(path)
                if any("VmHWM" in s for s in _code_strings(tree)):
                    homes["VmHWM"].add(path)
    rel = {k: sorted(os.path.relpath(p, ROOT) for p in v) for k, v in homes.items()}
    assert rel == {
        "tqdm": ["pipeline/run/_callbacks.py"],
        "crc32": ["pipeline/store/_format.py"],
        "VmHWM": ["diffops_core/dense/_sizing.py"],
    }


def test_nothing_outside_the_package_imports_a_private_module():
    offenders = []
    for folder in ("tests", "benchmarks", "workflows"):
        for base, _dirs, files in os.walk(os.path.join(ROOT, folder)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(base, name)
                for node in ast.walk(ast.parse(open(path).read())):
                    names = []
                    if isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.module:
                        names = [node.module]
                        if node.module == "pipeline" or node.module.startswith("pipeline."):
                            names += [f"{node.module}.{a.name}" for a in node.names]
                    for dotted in names:
                        parts = dotted.split(".")
                        if parts[0] == "pipeline" and any(p.startswith("_") for p in parts[1:]):
                            if parts[1:] != ["__version__"]:
                                offenders.append(f"{os.path.relpath(path, ROOT)}: {dotted}")
    assert offenders == []


def test_the_public_names_are_sorted_and_say_what_methods_return_and_raise():
    names = pipeline.__all__
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(pipeline, name), name
    key = [(0 if n.isupper() else 1 if n[:1].isupper() else 2, n) for n in names]
    assert key == sorted(key)  # constants, classes, then functions, each alphabetical
    returned = {"Analysis", "LeafStd", "StoreSummary", "LeafSummary", "WorkflowSummary"}
    raised = {"MissingDependencyError", "NotPositiveDefiniteError", "StoreError", "SpecError"}
    assert returned | raised <= set(names)
    assert not {"BlockTask", "plan"} & set(names)  # machinery: pipeline.internal
    for name in pipeline.internal.__all__:
        assert hasattr(pipeline.internal, name), name


def test_result_has_no_repair_method():
    # repairing needs the workflow (the spec); the read-only facade does not
    assert not hasattr(pipeline.Result, "repair") and callable(pipeline.repair)


def test_a_failed_cholesky_is_an_error_type_with_its_diagnostics():
    err = pipeline.NotPositiveDefiniteError(
        "not positive definite", location="x", columns=(0, 4), damping=0.0, smallest=-1.0
    )
    assert isinstance(err, ValueError) and err.smallest == -1.0 and err.columns == (0, 4)
