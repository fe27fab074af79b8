"""Workflow specs: a YAML file that says what to compute, where, and how.

```yaml
operation: hessian              # or jacobian (then mode: auto|fwd|rev)
function: models.psf:loss       # "module:attribute", importable on the driver and workers
point: models.psf:best_fit      # "module:attribute" of a zero-argument callable, or a .npz
output: ../results/demo.zarr
blocks: {block_size: 256}       # or {nbatches: 64} or {memory_budget: 2GB}; + inner_width
cluster: {workers: 2}           # or {scheduler: tcp://host:8786}; omitted: embedded default
```

Optional keys, with their defaults: ``mode: auto``, ``dtype: float32`` (``float64``
turns on JAX's x64 and casts x), ``checkpoint: false``, ``compression: none``
(or ``zstd``), ``finalize: {npy: null}`` (a path: also write the assembled matrix
as ``.npy`` when it fits in memory), ``python_path: []`` (more directories to
import from; the spec's own directory is always first), ``env: {}`` (environment
variables set before the function is imported, on the driver and on local
workers), and ``cluster.threads_per_worker: 1``, ``cluster.memory_limit: auto``.

Relative paths (output, point, python_path, finalize.npy) are relative to the
spec file's directory, so a spec runs the same from any working directory
(cron, systemd).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys

import yaml

__all__ = ["SpecError", "Spec", "load_spec", "spec_from_dict"]


class SpecError(ValueError):
    """A workflow spec is invalid; the message names the file and the field."""


_TOP = {"operation", "function", "point", "output", "blocks", "cluster", "mode", "dtype",
        "checkpoint", "compression", "finalize", "python_path", "env"}
_BLOCKS = {"block_size", "nbatches", "memory_budget", "inner_width"}
_CLUSTER = {"workers", "scheduler", "threads_per_worker", "memory_limit"}
_FINALIZE = {"npy"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated workflow spec (see the module docstring for the fields)."""

    path: str
    operation: str
    function: str
    point: str
    output: str
    blocks: dict
    cluster: dict
    mode: str = "auto"
    dtype: str = "float32"
    checkpoint: bool = False
    compression: str | None = None
    finalize_npy: str | None = None
    python_path: tuple[str, ...] = ()
    env: dict = dataclasses.field(default_factory=dict)

    @property
    def base(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def to_json(self) -> dict:
        """The spec as stored with a result: every path absolute, so that a repair
        finds the model from any working directory."""
        data = dataclasses.asdict(self)
        data["path"] = os.path.abspath(self.path)
        data["python_path"] = list(self.python_path)
        return data

    def import_dirs(self) -> list[str]:
        return [self.base, *self.python_path]

    def activate(self):
        """Set ``env`` and put the import directories on ``sys.path``."""
        os.environ.update(self.env)
        for directory in reversed(self.import_dirs()):
            if directory not in sys.path:
                sys.path.insert(0, directory)

    def load_function(self):
        self.activate()
        return _import_attr(self, "function", self.function, call=False)

    def load_point(self):
        """x: the zero-argument callable's result, or the .npz's arrays as a dict."""
        self.activate()
        if self.point.endswith(".npz"):
            import numpy as np

            if not os.path.exists(self.point):
                raise SpecError(f"{self.path}: point: no such file {self.point!r}")
            try:
                with np.load(self.point) as data:
                    x = {key: data[key] for key in data.files}
            except Exception as err:  # noqa: BLE001 - any unreadable file is a spec error
                raise SpecError(f"{self.path}: point: cannot read {self.point!r}: {err}") from None
        else:
            x = _import_attr(self, "point", self.point, call=True)
        if self.dtype == "float64":
            import jax
            import numpy as np

            x = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), x)
        return x

    def blocking(self) -> dict:
        return dict(self.blocks)


def _import_attr(spec: Spec, field: str, target: str, call: bool):
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - report any import failure as the spec's
        raise SpecError(
            f"{spec.path}: {field}: cannot import module {module_name!r} ({type(err).__name__}: "
            f"{err}); it must be importable from {spec.base} or python_path"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{spec.path}: {field}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"{spec.path}: {field}: {target!r} is not callable")
    if not call:
        return obj
    try:
        return obj()
    except Exception as err:  # noqa: BLE001 - a failing point function is a spec error
        raise SpecError(f"{spec.path}: {field}: {target}() raised {type(err).__name__}: {err}") \
            from None


def _where(path, key):
    return f"{path}: {key}"


def _require_type(path, key, value, kinds, what):
    if isinstance(value, bool) and bool not in kinds:
        raise SpecError(f"{_where(path, key)}: must be {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise SpecError(f"{_where(path, key)}: must be {what}, got {value!r} ({type(value).__name__})")
    return value


def _check_keys(path, where, data, allowed):
    if not isinstance(data, dict):
        raise SpecError(f"{path}: {where}: must be a mapping, got {data!r}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SpecError(
            f"{path}: {where + ': ' if where else ''}unknown key {unknown[0]!r} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _target(path, key, value):
    _require_type(path, key, value, (str,), "a 'module:attribute' string")
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        raise SpecError(f"{_where(path, key)}: must look like 'module:attribute', got {value!r}")
    return value


def _relative(base, value):
    return value if os.path.isabs(value) or "://" in value else os.path.normpath(
        os.path.join(base, value))


def spec_from_dict(data, path: str = "<spec>") -> Spec:
    """Validate a spec's mapping. **Raises:** `SpecError` naming the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a YAML mapping, got {type(data).__name__}")
    _check_keys(path, "", data, _TOP)
    for key in ("operation", "function", "point", "output"):
        if key not in data:
            raise SpecError(f"{path}: {key}: missing (required)")
    base = os.path.dirname(os.path.abspath(path))

    operation = _require_type(path, "operation", data["operation"], (str,), "'hessian' or 'jacobian'")
    if operation not in ("hessian", "jacobian"):
        raise SpecError(f"{path}: operation: must be 'hessian' or 'jacobian', got {operation!r}")
    mode = data.get("mode", "auto")
    if mode not in ("auto", "fwd", "rev"):
        raise SpecError(f"{path}: mode: must be auto, fwd or rev, got {mode!r}")
    if operation == "hessian" and "mode" in data:
        raise SpecError(f"{path}: mode: only for operation: jacobian")

    function = _target(path, "function", data["function"])
    point = _require_type(path, "point", data["point"], (str,),
                          "a 'module:attribute' string or a path to a .npz file")
    if point.endswith(".npz"):
        point = _relative(base, point)
    else:
        _target(path, "point", point)
    output = _relative(base, _require_type(path, "output", data["output"], (str,), "a path or URL"))

    blocks = data.get("blocks") or {}
    _check_keys(path, "blocks", blocks, _BLOCKS)
    given = [k for k in ("block_size", "nbatches", "memory_budget") if k in blocks]
    if len(given) > 1:
        raise SpecError(f"{path}: blocks: give one of block_size, nbatches, memory_budget; "
                        f"got {' and '.join(given)}")
    for key in ("block_size", "nbatches", "inner_width"):
        if key in blocks:
            value = _require_type(path, f"blocks.{key}", blocks[key], (int,), "a positive int")
            if value < 1:
                raise SpecError(f"{path}: blocks.{key}: must be a positive int, got {value}")
    if "memory_budget" in blocks:
        from diffops_core.internal import parse_bytes

        try:
            parse_bytes(blocks["memory_budget"])
        except (TypeError, ValueError) as err:
            raise SpecError(f"{path}: blocks.{err}") from None

    cluster = data.get("cluster") or {}
    _check_keys(path, "cluster", cluster, _CLUSTER)
    if "workers" in cluster and "scheduler" in cluster:
        raise SpecError(f"{path}: cluster: give workers or scheduler, not both")
    if "workers" in cluster:
        workers = _require_type(path, "cluster.workers", cluster["workers"], (int,), "a positive int")
        if workers < 1:
            raise SpecError(f"{path}: cluster.workers: must be a positive int, got {workers}")
    if "scheduler" in cluster:
        _require_type(path, "cluster.scheduler", cluster["scheduler"], (str,),
                      "an address like tcp://host:8786")
    if "threads_per_worker" in cluster:
        value = _require_type(path, "cluster.threads_per_worker", cluster["threads_per_worker"],
                              (int,), "a positive int")
        if value < 1:
            raise SpecError(f"{path}: cluster.threads_per_worker: must be a positive int, got {value}")

    dtype = data.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise SpecError(f"{path}: dtype: must be float32 or float64, got {dtype!r}")
    checkpoint = _require_type(path, "checkpoint", data.get("checkpoint", False), (bool,),
                               "true or false")
    compression = data.get("compression", "none")
    if compression not in ("none", "zstd", None):
        raise SpecError(f"{path}: compression: must be none or zstd, got {compression!r}")

    finalize = data.get("finalize") or {}
    _check_keys(path, "finalize", finalize, _FINALIZE)
    npy = finalize.get("npy")
    if npy is not None:
        npy = _relative(base, _require_type(path, "finalize.npy", npy, (str,), "a path"))

    python_path = data.get("python_path") or []
    _require_type(path, "python_path", python_path, (list,), "a list of directories")
    for entry in python_path:
        _require_type(path, "python_path", entry, (str,), "a list of directories")
    env = data.get("env") or {}
    _require_type(path, "env", env, (dict,), "a mapping of names to strings")
    env = {str(k): str(v) for k, v in env.items()}

    return Spec(path=path, operation=operation, function=function, point=point, output=output,
                blocks=dict(blocks), cluster=dict(cluster), mode=mode, dtype=dtype,
                checkpoint=checkpoint, compression=None if compression in ("none", None) else compression,
                finalize_npy=npy, python_path=tuple(_relative(base, p) for p in python_path),
                env=env)


def load_spec(path: str) -> Spec:
    """Read and validate a spec file (YAML, safe loader).

    **Raises:** `SpecError` naming the file and field.
    """
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return spec_from_dict(data, path)
