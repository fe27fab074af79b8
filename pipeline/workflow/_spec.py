"""Workflow specs: a YAML file that says what to compute, where, and how.

```yaml
operation: hessian              # or jacobian (then mode: auto|fwd|rev), or gauss_newton
function: models.psf:loss       # "module:attribute", importable on the driver and workers
point: models.psf:best_fit      # "module:attribute" of a zero-argument callable, or a .npz
output: ../results/demo.zarr
blocks: {block_size: 256}       # or {nbatches: 64} or {memory_budget: 2GB}; + inner_width
cluster: {workers: 2}           # or {scheduler: tcp://host:8786}; omitted: embedded default
```

Optional keys, with their defaults: ``noise: {}`` (gauss_newton: ``{std: 0.1}``
or a ``.npy``, ``{cov: c.npy}``, ``{inv_cov: w.npy}``), ``mode: auto``,
``dtype: float32`` (``float64`` turns on JAX's x64 and casts x), ``checkpoint: false``,
``compressor: none`` (or ``zstd``), ``sparsity: none`` (or ``auto``: detect
the pattern, colour it, and compute and store only one product per colour;
or ``{pattern: file.npz}``: a known pattern, saved by `scipy.sparse.save_npz`,
coloured and checked alike), ``max_dense: 1GiB`` (the dense result ``auto``
may fall back to when it finds no structure to use; above it the run is
refused),
``finalize: {npy: null, std: null}`` (paths: also write the assembled matrix
as ``.npy``, and the per-leaf marginal standard deviations as ``.npz``, when
the matrix fits in memory), ``python_path: []`` (more directories to
import from; the spec's own directory is always first), ``env: {}`` (environment
variables set before the function is imported, on the driver and on local
workers), ``storage_options: {}`` (for an object-store ``output``: fsspec's
options for its filesystem, e.g. ``{endpoint_url: "http://minio:9000"}``,
``{profile: lab}``, ``{anon: true}``; credentials are refused here: they go in
the environment or a profile), and ``cluster.threads_per_worker: 1``,
``cluster.memory_limit: auto``.

Relative paths (output, point, python_path, finalize.npy) are relative to the
spec file's directory, so a spec runs the same from any working directory
(cron, systemd).

The file is read with a safe YAML loader that also refuses duplicate keys and
aliases (``&a``/``*a``: a few hundred bytes of aliases can expand to gigabytes);
the fields are validated by pydantic models. Every error names the file and
the field.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    model_validator,
)

from diffops_core.internal import parse_bytes

from .._errors import SpecError
from ._load import (
    check_float_leaves,
    check_scheme,
    check_writable,
    import_attr,
    load_npz,
    nest,
)

__all__ = ["Spec", "load_spec", "spec_from_dict"]


# -- field checks, each with the message a user sees ----------------------------------


def _type_name(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _positive_int(value):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a positive int, got {_type_name(value)}")
    if value < 1:
        raise ValueError(f"must be a positive int, got {value}")
    return value


def _text(what: str):
    def check(value):
        if not isinstance(value, str):
            raise ValueError(f"must be {what}, got {_type_name(value)}")
        return value

    return check


def _flag(value):
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _choice(*allowed: str, words: str):
    def check(value):
        if value not in allowed:
            raise ValueError(f"must be {words}, got {value!r}")
        return value

    return check


def _target(value):
    _text("a 'module:attribute' string")(value)
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"must look like 'module:attribute', got {value!r}")
    return value


def _point(value):
    _text("a 'module:attribute' string or a path to a .npz file")(value)
    return value if value.endswith(".npz") else _target(value)


def _memory_budget(value):
    try:
        parse_bytes(value, name="memory_budget")
    except (TypeError, ValueError) as err:
        raise ValueError(f"@{err}") from None  # '@': the message names the field itself
    return value


def _none_or(word: str):
    """A field that is ``none`` (None) or ``word``."""

    def check(value):
        if value in (None, "none"):
            return None
        if value != word:
            raise ValueError(f"must be none or {word}, got {value!r}")
        return value

    return check


_compressor = _none_or("zstd")


def _sparsity(value):
    """``none``, ``auto`` or ``{pattern: file.npz}`` (a known pattern, saved with
    `scipy.sparse.save_npz`)."""
    if value in (None, "none"):
        return None
    if value == "auto":
        return value
    if isinstance(value, dict) and set(value) == {"pattern"} and isinstance(value["pattern"], str):
        if not value["pattern"].endswith(".npz"):
            raise ValueError(f"pattern must be a .npz (scipy.sparse.save_npz), got {value!r}")
        return {"pattern": value["pattern"]}
    raise ValueError(f"must be none, auto or {{pattern: file.npz}}, got {value!r}")


#: Storage options that are credentials: a spec is stored with its result.
_SECRET_OPTIONS = frozenset({
    "key", "secret", "token", "password", "session_token", "credentials", "account_key",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "sas_token",
})  # fmt: skip


def _storage_options(value):
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ValueError(f"must be a mapping of option names to values, got {value!r}")
    secret = sorted(k for k in value if k.lower() in _SECRET_OPTIONS)
    if secret:
        raise ValueError(
            f"{', '.join(secret)}: credentials do not go in a spec (it is stored with the "
            "result); put them in the environment (AWS_ACCESS_KEY_ID, ...) or a profile "
            "(storage_options: {profile: name})"
        )
    return dict(value)


def _max_dense(value):
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be bytes or a size like 40GB, got {value!r}")
    return value


def _dirs(value):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of directories, got {value!r}")
    return tuple(value)


def _env(value):
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of names to strings, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ValueError(f"names must be non-empty strings without '=' or NUL, got {key!r}")
        if not isinstance(item, str) or "\0" in item:
            raise ValueError(
                f'{key}: values must be strings (quote them: "1", ""), without NUL; got {item!r}'
            )
    return dict(value)


def _opt(check):
    """``check``, letting None (the default) through."""

    def optional(value):
        return None if value is None else check(value)

    return optional


def _size(value):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be bytes (int), a size like '4GB', or auto, got {value!r}")
    return value


PositiveInt = Annotated[int, BeforeValidator(_positive_int)]
OptionalPositiveInt = Annotated[int | None, BeforeValidator(_opt(_positive_int))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Blocks(_Model):
    """``blocks``: at most one of `block_size`, `nbatches`, `memory_budget`; and
    `inner_width`."""

    block_size: OptionalPositiveInt = None
    nbatches: OptionalPositiveInt = None
    memory_budget: Annotated[int | str | None, BeforeValidator(_opt(_memory_budget))] = None
    inner_width: OptionalPositiveInt = None

    @model_validator(mode="after")
    def _one(self):
        given = [
            k for k in ("block_size", "nbatches", "memory_budget") if getattr(self, k) is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"give one of block_size, nbatches, memory_budget; got {' and '.join(given)}"
            )
        return self


class Cluster(_Model):
    """``cluster``: `workers` (a local cluster) or `scheduler` (an address)."""

    workers: OptionalPositiveInt = None
    scheduler: Annotated[
        str | None, BeforeValidator(_opt(_text("an address like tcp://host:8786")))
    ] = None
    threads_per_worker: PositiveInt = 1
    memory_limit: Annotated[int | str, BeforeValidator(_size)] = "auto"

    @model_validator(mode="after")
    def _either(self):
        if self.workers is not None and self.scheduler is not None:
            raise ValueError("give workers or scheduler, not both")
        return self


class Finalize(_Model):
    """``finalize``: `npy`, a path for the assembled matrix; `std`, a path for the
    marginal standard deviations per leaf (``.npz``; Hessian or Gauss–Newton)."""

    npy: Annotated[str | None, BeforeValidator(_opt(_text("a path")))] = None
    std: Annotated[str | None, BeforeValidator(_opt(_text("a path to an .npz")))] = None


def _std_value(value):
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a positive number or a path to a .npy, got {value!r}")
    if not isinstance(value, str) and not value > 0:
        raise ValueError(f"must be positive, got {value!r}")
    return value


class Noise(_Model):
    """``noise`` (``operation: gauss_newton``): at most one of `std` (a number or a
    ``.npy`` broadcastable to the residuals), `cov` or `inv_cov` (``.npy``, the
    flat residuals' covariance or its inverse)."""

    std: Annotated[float | str | None, BeforeValidator(_opt(_std_value))] = None
    """A number, a ``.npy`` broadcastable to the residuals, or an ``.npz`` with one
    array per residual leaf (keys are leaf paths, ``fit`` or ``terms/a``)."""
    cov: Annotated[str | None, BeforeValidator(_opt(_text("a path to a .npy")))] = None
    inv_cov: Annotated[str | None, BeforeValidator(_opt(_text("a path to a .npy")))] = None

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("std", "cov", "inv_cov") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of std, cov, inv_cov; got {' and '.join(given)}")
        return self


class Spec(_Model):
    """A validated workflow spec (see the module docstring for the fields);
    `path` is the spec file, and every relative path is resolved against it."""

    path: str
    operation: Annotated[
        str,
        BeforeValidator(
            _choice(
                "hessian",
                "jacobian",
                "gauss_newton",
                words="'hessian', 'jacobian' or 'gauss_newton'",
            )
        ),
    ]
    function: Annotated[str, BeforeValidator(_target)]
    point: Annotated[str, BeforeValidator(_point)]
    output: Annotated[str, BeforeValidator(_text("a path or URL"))]
    blocks: Blocks = Blocks()
    cluster: Cluster = Cluster()
    mode: Annotated[
        str, BeforeValidator(_choice("auto", "fwd", "rev", words="auto, fwd or rev"))
    ] = "auto"
    dtype: Annotated[
        str, BeforeValidator(_choice("float32", "float64", words="float32 or float64"))
    ] = "float32"
    checkpoint: Annotated[bool, BeforeValidator(_flag)] = False
    compressor: Annotated[str | None, BeforeValidator(_compressor)] = None
    sparsity: Annotated[str | dict | None, BeforeValidator(_sparsity)] = None
    max_dense: Annotated[int | str | None, BeforeValidator(_opt(_max_dense))] = None
    finalize: Finalize = Finalize()
    noise: Noise = Noise()
    python_path: Annotated[tuple[str, ...], BeforeValidator(_dirs)] = ()
    env: Annotated[dict[str, str], BeforeValidator(_env)] = {}
    storage_options: Annotated[dict[str, Any], BeforeValidator(_storage_options)] = {}

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):  # an explicit null means the default
            data = {k: v for k, v in data.items() if v is not None}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.operation != "jacobian" and "mode" in self.model_fields_set:
            raise ValueError("@mode: only for operation: jacobian")
        if self.operation != "gauss_newton" and "noise" in self.model_fields_set:
            raise ValueError("@noise: only for operation: gauss_newton")
        if self.operation == "jacobian" and self.finalize.std:
            raise ValueError("@finalize.std: only for operation: hessian or gauss_newton")
        return self

    @property
    def base(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def resolved(self) -> Spec:
        """The spec with relative paths made relative to the spec file's directory."""

        def rel(value):
            if value is None or os.path.isabs(value) or "://" in value:
                return value
            return os.path.normpath(os.path.join(self.base, value))

        return self.model_copy(
            update={
                "output": rel(self.output),
                "point": rel(self.point) if self.point.endswith(".npz") else self.point,
                "python_path": tuple(rel(p) for p in self.python_path),
                "sparsity": {"pattern": rel(self.sparsity["pattern"])}
                if isinstance(self.sparsity, dict)
                else self.sparsity,  # fmt: skip
                "finalize": Finalize(npy=rel(self.finalize.npy), std=rel(self.finalize.std)),
                "noise": Noise(
                    **{
                        k: rel(v) if isinstance(v, str) else v
                        for k, v in self.noise.model_dump().items()
                    }
                ),
            }
        )

    def to_json(self) -> dict:
        """The spec as stored with a result: every path absolute, so that a repair
        finds the model from any working directory; of ``env``, only the names
        (a repair takes their values from its own environment)."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        data["path"] = os.path.abspath(self.path)
        if "env" in data:  # names only: values are where users put secrets (AWS_SECRET_...)
            data["env_names"] = sorted(data.pop("env"))
        return data

    @classmethod
    def from_stored(cls, data: dict) -> Spec:
        """The spec `to_json` stored (also the older, flat form)."""
        data = dict(data)
        names = data.pop("env_names", None)
        if isinstance(names, list):  # the values, from this environment (never stored)
            data["env"] = {k: os.environ[k] for k in names if str(k) in os.environ}
        if "finalize_npy" in data:  # written before the spec had pydantic models
            data["finalize"] = {"npy": data.pop("finalize_npy")}
        if "compression" in data:
            data["compressor"] = data.pop("compression")
        if data.get("operation") == "hessian":
            data.pop("mode", None)  # the older form stored the default
        path = str(data.get("path", "<stored spec>"))
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise SpecError(
                _message(f"{path} (as stored with the result)", err.errors()[0])
            ) from None

    def with_storage_options(self, options: dict) -> Spec:
        """This spec with other ``storage_options`` (checked as the spec's are).
        **Raises:** `SpecError` naming the field."""
        try:
            checked = _storage_options(options)
        except ValueError as err:
            raise SpecError(f"{self.path}: storage_options: {err}") from None
        return self.model_copy(update={"storage_options": checked})

    def blocking(self) -> dict:
        return self.blocks.model_dump(exclude_none=True)

    def import_dirs(self) -> list[str]:
        return [self.base, *self.python_path]

    def activate(self) -> None:
        """Set ``env`` and put the import directories on ``sys.path``."""
        os.environ.update(self.env)
        for directory in reversed(self.import_dirs()):
            if directory not in sys.path:
                sys.path.insert(0, directory)

    def load_function(self):
        self.activate()
        return import_attr(self, "function", self.function, call=False)

    def load_point(self):
        """x: the zero-argument callable's result, or the .npz's arrays as a dict."""
        self.activate()
        if self.point.endswith(".npz"):
            x = load_npz(self)
        else:
            x = import_attr(self, "point", self.point, call=True)
        check_float_leaves(self, x)
        if self.dtype == "float64":
            import jax
            import numpy as np

            x = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), x)
        return x

    def check_targets(self) -> None:
        """Refuse, before anything is computed, an ``output`` or ``finalize.npy``
        that cannot be written: a path under a file, or under a directory this
        process may not write, or a finalize file given as a URL. (Missing
        directories are created.)

        **Raises:** `SpecError` naming the file and the field.
        """
        if "://" not in self.output:
            check_writable(self, "output", self.output)
        else:
            check_scheme(self)
        for field in ("npy", "std"):
            target = getattr(self.finalize, field)
            if target and "://" in target:
                raise SpecError(
                    f"{self.path}: finalize.{field}: {target!r} is a URL; finalize files are "
                    "written to local paths only (the store itself may be remote): choose a "
                    "local path, and copy the file where it must go"
                )
            if target:
                check_writable(self, f"finalize.{field}", target)

    def inputs(self) -> dict[str, str]:
        """Every file the run reads, by what it is: the spec, the point (.npz),
        the noise files and the model files (modules imported from the spec's
        import directories)."""
        found = {os.path.realpath(self.path): "the spec itself"}
        if self.point.endswith(".npz"):
            found[os.path.realpath(self.point)] = "point"
        for key, value in self.noise.model_dump().items():
            if isinstance(value, str):
                found[os.path.realpath(value)] = f"noise.{key}"
        dirs = [os.path.realpath(d) + os.sep for d in self.import_dirs()]
        for module in list(sys.modules.values()):
            name = getattr(module, "__file__", None)
            if isinstance(name, str) and any(os.path.realpath(name).startswith(d) for d in dirs):
                found.setdefault(os.path.realpath(name), f"the model file of {module.__name__}")
        return found

    def check_outputs(self) -> None:
        """Refuse, before anything runs, a finalize output that is an input (the
        spec, the point, a noise file, a model file), the output store, or the
        other output: writing it would destroy what the run reads.

        **Raises:** `SpecError` naming the field and what the path is.
        """
        inputs = self.inputs()
        if "://" not in self.output:
            inputs.setdefault(os.path.realpath(self.output), "output (the store)")
        for field in ("npy", "std"):
            target = getattr(self.finalize, field)
            if not target:
                continue
            real = os.path.realpath(target)
            what = inputs.get(real)
            if what is None and "://" not in self.output:
                store = os.path.realpath(self.output) + os.sep
                what = "inside the output store" if real.startswith(store) else None
            if what is not None:
                raise SpecError(
                    f"{self.path}: finalize.{field}: {target!r} is {what}; writing it would "
                    "destroy what the run reads. Choose another path for the output"
                )
            inputs[real] = f"finalize.{field}"

    def load_sparsity(self) -> Any:
        """``None``, ``"auto"``, or the `diffops_core.Sparsity` of the pattern file
        (coloured for this operation; checked like any result).

        **Raises:** `SpecError` naming the file when it cannot be read or is no
        pattern of this operation."""
        if not isinstance(self.sparsity, dict):
            return self.sparsity
        import scipy.sparse as sp

        from diffops_core import Sparsity

        path = self.sparsity["pattern"]
        try:
            return Sparsity.from_pattern(sp.load_npz(path), self.operation)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the spec's
            raise SpecError(
                f"{self.path}: sparsity.pattern: cannot use {path!r}: {type(err).__name__}: {err}"
            ) from None

    def load_noise(self) -> dict:
        """The noise model as `diffops_core.gauss_newton` takes it (arrays loaded).

        **Raises:** `SpecError` naming the field for a file that cannot be read.
        """
        import numpy as np

        noise = {k: v for k, v in self.noise.model_dump().items() if v is not None}
        for key, value in noise.items():
            if isinstance(value, str):
                try:
                    loaded = np.load(value)
                    if isinstance(loaded, np.lib.npyio.NpzFile):  # a pytree, one per leaf
                        with loaded:
                            loaded = nest({k: loaded[k] for k in loaded.files})
                    noise[key] = loaded
                except Exception as err:  # noqa: BLE001 - any unreadable file is the spec's
                    raise SpecError(
                        f"{self.path}: noise.{key}: cannot read {value!r}: "
                        f"{type(err).__name__}: {err}"
                    ) from None
        return noise


# -- errors ---------------------------------------------------------------------------


def _allowed(loc: tuple) -> str:
    model: type[BaseModel] = Spec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return ", ".join(sorted(k for k in model.model_fields if k != "path"))


def _message(path: str, error: Any) -> str:
    """One pydantic error as ``file: field: what``."""
    loc = tuple(error["loc"])
    where = ".".join(str(p) for p in loc)
    kind, text = error["type"], str(error["msg"])
    if kind == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1])
        return (
            f"{path}: {parent + ': ' if parent else ''}unknown key {loc[-1]!r} "
            f"(allowed: {_allowed(loc)})"
        )
    if kind == "missing":
        return f"{path}: {where}: missing (required)"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"{path}: {where}: must be a mapping, got {error.get('input')!r}"
    text = text.removeprefix("Value error, ")
    if text.startswith("@"):  # the message names its field itself: say only its parent
        parent = ".".join(str(p) for p in loc[:-1])
        return f"{path}: {parent + '.' if parent else ''}{text[1:]}"
    return f"{path}: {where + ': ' if where else ''}{text}"


def spec_from_dict(data: Any, path: str = "<spec>") -> Spec:
    """Validate a spec's mapping. **Raises:** `SpecError` naming the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a YAML mapping, got {type(data).__name__}")
    if "path" in data:
        raise SpecError(f"{path}: unknown key 'path' (allowed: {_allowed(('path',))})")
    if "compression" in data:
        raise SpecError(
            f"{path}: compression: renamed to compressor (none or zstd), the name "
            "the Python API uses; rename the key"
        )
    try:
        spec = Spec.model_validate({**data, "path": path})
    except ValidationError as err:
        raise SpecError(_message(path, err.errors()[0])) from None
    return spec.resolved()


# -- YAML -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing aliases and duplicate keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem=f"aliases (*{event.anchor}) are not allowed in a spec; write the value out",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r}; give each key once",
                    problem_mark=key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str) -> Spec:
    """Read and validate a spec file (safe YAML; no aliases, no duplicate keys).

    **Raises:** `SpecError` naming the file and field.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_StrictLoader)
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except UnicodeDecodeError as err:
        raise SpecError(
            f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save the spec as UTF-8"
        ) from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to be a spec; write it flat") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise SpecError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    return spec_from_dict(data, path)


def storage_env(spec: Spec) -> dict[str, str]:
    """The spec's ``storage_options`` as fsspec reads them from the environment
    (``FSSPEC_<PROTOCOL>``: JSON): what the run sets here and on its workers."""
    if not spec.storage_options or "://" not in spec.output:
        return {}
    protocol = spec.output.split("://", 1)[0]
    return {f"FSSPEC_{protocol.upper()}": json.dumps(spec.storage_options)}
