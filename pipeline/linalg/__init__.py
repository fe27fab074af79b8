"""The linear-algebra room: what a stored curvature matrix gives beyond its
entries, out of core. Everything here takes a `ResultStore` (never a
`Result`), imports only `pipeline.run` and `pipeline.store`, and runs its
tasks on the run room's executors.

- `_cholesky`: the blocked, left-looking Cholesky factorisation and ``W = L⁻¹``,
  tile by tile, into the store's factor group (the tile algorithm is described
  there);
- `_factor`: the driver (tile choice, resume, verification first, the
  diagnostics of a matrix that is not positive definite) and the marginal σ;
- `_covariance`: ``(M + d I)⁻¹`` as a stored result of its own;
- `_lanczos`: the streamed products (``M v`` and ``(M + d I)⁻¹ v``) and Lanczos;
- `_spectrum`: the extreme eigenvalues and the condition number;
- `_analysis`: what ``diffops analyze`` reports.

A second stored format (compressed, sparse) gets its own module beside
`_cholesky`, behind the same driver functions.
"""

from ._analysis import FULL_SPECTRUM_BYTES, Analysis, LeafStd, analyze, correlation, solvable
from ._cholesky import FactorTask, factorise
from ._covariance import covariance
from ._factor import EXACT_DIAGNOSIS_BYTES, factor, marginal_std, require_square_complete
from ._lanczos import InverseProduct, StreamedMatrix, extremes, streamed_extremes
from ._spectrum import spectrum, verdict

__all__ = [
    "EXACT_DIAGNOSIS_BYTES",
    "FULL_SPECTRUM_BYTES",
    "Analysis",
    "FactorTask",
    "InverseProduct",
    "LeafStd",
    "StreamedMatrix",
    "analyze",
    "correlation",
    "covariance",
    "extremes",
    "factor",
    "factorise",
    "marginal_std",
    "require_square_complete",
    "solvable",
    "spectrum",
    "streamed_extremes",
    "verdict",
]
