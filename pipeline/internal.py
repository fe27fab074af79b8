"""What executors, tests, benchmarks and ``workflows/*.py`` build on: the rooms'
machinery, re-exported from one place so that nothing outside `pipeline`
imports a private module.

No stability promise: names here change with the rooms (as equinox's
``internal``). The user API is the top level of `pipeline`.

- store: `ResultStore`, `RunLock`, `Files` (a store's objects on any backend),
  `inspect`, `SlabWriter`, `read_region`, `remove_ours`,
  `store_disk_bytes`, `sha256_json`, the record field indices and names;
- run: `plan`, `BlockTask`, `Limits`, `task_bytes`, `default_block`,
  `executor_limits`, `JAX_WORKER_ENV`, `peak_rss`, `vm_bytes`, `local_modules`,
  `constant_avals`;
- linalg: `FactorTask`, `factor`, `analyze`, `correlation`, `extremes`;
- report: `scan`, `checks`, `axis_of`, `resample`, `leaf_label`;
- workflow: `spec_from_dict`, `stored_spec`.

The seams tests patch (a module's globals, to inject a fault or count calls)
are the modules themselves, named here: `api_module` (``_stored_probes``),
`plan_module` (``probes_of``: the seed a plan draws), `factor_module`
(``EXACT_DIAGNOSIS_BYTES``), `analysis_module`
(``FULL_SPECTRUM_BYTES``), `lanczos_module` (``extremes``), `scan_module`
(``read_region``), `location_module` (``free_disk``), `resources_module`
(``device_bytes``: an accelerator's memory), `finalize_module`
(``checks``), `workflow_module` (``finish``, ``local_cluster``).
"""

from . import _api as api_module
from ._api import executor_limits
from .linalg import FactorTask, analyze, correlation, extremes, factor
from .linalg import _analysis as analysis_module
from .linalg import _factor as factor_module
from .linalg import _lanczos as lanczos_module
from .report import Scan, checks, scan
from .report import _scan as scan_module
from .report._heatmap import axis_of, resample
from .run import (
    JAX_WORKER_ENV,
    WORKER_RUNTIME_BYTES,
    BlockTask,
    Limits,
    Stages,
    device_bytes,
    forget_checked,
    local_modules,
    on_device,
    peak_rss,
    plan,
    stage,
    task_bytes,
    vm_bytes,
)
from .run import _plan as plan_module
from .run import _resources as resources_module
from .run._plan import default_block
from .run._task import constant_avals
from .store import (
    CHECKSUM,
    COORDINATES,
    MILLIS,
    NONFINITE,
    RECORD_FIELDS,
    RUN,
    RUNS_KEPT,
    STATE,
    Files,
    ResultStore,
    RunLock,
    SlabWriter,
    checksum,
    inspect,
    invalidate,
    leaf_label,
    read_region,
    remove_ours,
    sha256_json,
    store_disk_bytes,
)
from .store import _group as group_module
from .store import _location as location_module
from .workflow import _finalize as finalize_module
from .workflow import _run as workflow_module
from .workflow import spec_from_dict, stored_spec

__all__ = [
    "CHECKSUM",
    "COORDINATES",
    "JAX_WORKER_ENV",
    "MILLIS",
    "NONFINITE",
    "RECORD_FIELDS",
    "RUN",
    "RUNS_KEPT",
    "STATE",
    "WORKER_RUNTIME_BYTES",
    "BlockTask",
    "FactorTask",
    "Files",
    "Limits",
    "ResultStore",
    "RunLock",
    "Scan",
    "SlabWriter",
    "Stages",
    "analysis_module",
    "analyze",
    "api_module",
    "axis_of",
    "checks",
    "checksum",
    "constant_avals",
    "correlation",
    "default_block",
    "device_bytes",
    "executor_limits",
    "extremes",
    "factor",
    "factor_module",
    "finalize_module",
    "forget_checked",
    "group_module",
    "inspect",
    "invalidate",
    "lanczos_module",
    "leaf_label",
    "local_modules",
    "location_module",
    "on_device",
    "peak_rss",
    "plan",
    "plan_module",
    "read_region",
    "remove_ours",
    "resample",
    "resources_module",
    "scan",
    "scan_module",
    "sha256_json",
    "spec_from_dict",
    "stage",
    "store_disk_bytes",
    "stored_spec",
    "task_bytes",
    "vm_bytes",
    "workflow_module",
]
