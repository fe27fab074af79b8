"""The workflow room: a YAML spec run by hand, on a cluster or on a schedule.
Imports the `*_to_zarr` API, the `Result` facade and the rooms below.

- `_spec`: the spec models (pydantic), read with a strict YAML loader; every
  error names the file and the field;
- `_load`: what a spec loads (its model's modules, the point, the noise files)
  and the targets it writes, checked;
- `_run`: `run_spec` (cluster set-up, the pipeline call) and `repair`;
- `_finalize`: the checks and finalize outputs a run leaves beside the store,
  each naming the store state it came from.
"""

from ._run import WorkflowSummary, repair, run_spec, stored_spec
from ._spec import Spec, load_spec, spec_from_dict

__all__ = [
    "Spec",
    "WorkflowSummary",
    "load_spec",
    "repair",
    "run_spec",
    "spec_from_dict",
    "stored_spec",
]
