"""The shape of `diffops_core`: rooms by role (dense, curvature, sparse, api),
arrows pointing down only, no import cycle, no import of our own modules inside
a function, no private name taken across rooms, at most ten modules a folder,
and never dask, zarr or the pipeline."""

import ast
import os

import diffops_core
import diffops_core.internal
from helpers import (
    ROOT,
    folders_over,
    import_cycles,
    import_graph,
    module_imports,
    package_modules,
    room,
    rooms_pointing_up,
)

#: The rooms from the bottom up: each imports only those before it (and itself).
LAYERS = (
    "_version",
    "_errors",
    "dense",
    "curvature",
    "sparse",
    "api",
    "internal",
    "__init__",
)


def test_every_import_points_down_the_rooms():
    assert rooms_pointing_up("diffops_core", LAYERS) == []


def test_no_import_cycle():
    assert import_cycles(import_graph("diffops_core")) == []


def test_no_module_of_ours_is_imported_inside_a_function():
    inside = []
    for module, path in package_modules("diffops_core").items():
        found = module_imports(path, module, path.endswith("__init__.py"), names=True)
        inside += [f"{module}: {target}.{name}" for target, name, inner in found if inner]
    assert inside == []


def test_no_private_name_is_taken_across_rooms():
    taken = []
    modules = package_modules("diffops_core")
    for module, path in modules.items():
        found = module_imports(path, module, path.endswith("__init__.py"), names=True)
        for target, name, _inner in found:
            if room(target) == room(module):
                continue
            private = [p for p in target.split(".")[1:] if p.startswith("_")]
            dunder = bool(name) and name.startswith("__") and name.endswith("__")
            if (name and name.startswith("_") and not dunder) or (
                private and private != [room(target)]
            ):
                taken.append(f"{module} takes {target}.{name}")
    assert taken == []


def test_no_folder_holds_more_than_ten_modules():
    assert folders_over("diffops_core") == []


def test_nothing_of_dask_zarr_or_the_pipeline():
    banned = ("dask", "distributed", "zarr", "pipeline")
    found = []
    for base, _dirs, files in os.walk(os.path.join(ROOT, "diffops_core")):
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(base, name)
            for node in ast.walk(ast.parse(open(path).read())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                found += [f"{path}: {n}" for n in names if n.split(".")[0] in banned]
    assert found == []


def test_the_rooms_test_sees_a_private_name_taken_across_rooms(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from ..sparse._coloring import _dense_vertices\n")
    found = module_imports(str(path), "diffops_core.api._m", package=False, names=True)
    assert ("diffops_core.sparse._coloring", "_dense_vertices", False) in found


def test_the_public_names_exist_and_are_sorted():
    for package in (diffops_core, diffops_core.internal):
        names = package.__all__
        assert len(set(names)) == len(names)
        for name in names:
            assert hasattr(package, name), name
