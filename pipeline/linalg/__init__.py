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

**The tile algorithm** (`_cholesky`). The matrix ``A`` (plus the damping on
the diagonal) is read as stored, column slabs one stored chunk at a time, so no
square-chunked copy is made; the factor group holds ``L`` and ``W = L⁻¹`` in
``(tile, tile)`` float64 chunks, ``diag(M⁻¹)`` and a record per tile and stage
(``crc32 + 1`` of its data, written after the data; 0: not done). Left-looking,
one tile per task: ``L[j,j] = chol(A[j,j] - Σ_{k<j} L[j,k] L[j,k]ᵀ)``, then
``L[i,j] = (A[i,j] - Σ_{k<j} L[i,k] L[j,k]ᵀ) L[j,j]⁻ᵀ`` for ``i > j``; a tile
column's off-diagonal tiles are independent (they run in parallel on a
cluster). Then one task per tile column of ``W`` walks down it:
``W[j,j] = L[j,j]⁻¹`` and ``W[i,j] = -L[i,i]⁻¹ Σ_{j<=k<i} L[i,k] W[k,j]``, and
stores ``diag(M⁻¹)`` of its columns, the column sums of ``W²`` (``M⁻¹ = Wᵀ W``).
Each task holds at most about five tiles (default tile 2048: 32 MiB each).
Everything is float64. The factor's identity is the matrix's (its fingerprint
and the checksums of its blocks), the damping and the tile: another one
replaces it; a repair clears every tile that depends on a recomputed block.
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
