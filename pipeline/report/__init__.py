"""The report room: a stored result read for people. Imports `pipeline.linalg`
and `pipeline.store` (never the `Result` facade above it); each function takes
a `ResultStore`.

- `_scan`: one pass over the stored matrix for the figures people read (row
  norms, the diagonal, the largest entry and asymmetry);
- `_summary`: the checks a run records and what ``diffops show`` prints
  (`StoreSummary`);
- `_heatmap`: ``diffops plot``, read lazily leaf block by leaf block;
- `_panels`: the picture of ``diffops analyze`` (correlation and spectrum).
"""

from ._heatmap import plot
from ._panels import plot_analysis
from ._scan import Scan, scan
from ._summary import LeafSummary, StoreSummary, checks, summarise

__all__ = [
    "LeafSummary",
    "Scan",
    "StoreSummary",
    "checks",
    "plot",
    "plot_analysis",
    "scan",
    "summarise",
]
