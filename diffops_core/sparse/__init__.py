"""The sparse machinery: a matrix from a few compressed products.

- `detect`: the global sparsity pattern read from the jaxpr, one family of
  primitive rules a module.
- `_coloring`: star, column and row colourings, and the plans that read each
  nonzero from the compressed products.
- `_bicolor`: bidirectional colourings of Jacobians with dense rows and
  columns (JVPs and VJPs together) and their direct recovery.
- `_products`: `Sparsity` (a pattern and its colouring), detection cached on
  what JAX traced, the compressed products, recovery and the self-check;
  `sparse_hessian`, `sparse_jacobian`, `sparse_gauss_newton`.
- `_linalg`: exact marginal variances of a sparse SPD matrix.

Imports the dense and curvature rooms below it.
"""

from ._check import PROBES, probe_vectors
from ._coloring import (
    column_coloring,
    recover,
    recover_star,
    row_coloring,
    seeds,
    star_coloring,
)
from ._linalg import sparse_marginal_variance
from ._products import (
    Sparsity,
    check_sparse,
    detect,
    gauss_newton_sparsity,
    hessian_sparsity,
    jacobian_sparsity,
    matrix_from_products,
    sparse_gauss_newton,
    sparse_hessian,
    sparse_jacobian,
)
from .detect import hessian_pattern, jacobian_pattern

__all__ = [
    "PROBES",
    "Sparsity",
    "check_sparse",
    "column_coloring",
    "detect",
    "gauss_newton_sparsity",
    "hessian_pattern",
    "hessian_sparsity",
    "jacobian_pattern",
    "jacobian_sparsity",
    "matrix_from_products",
    "probe_vectors",
    "recover",
    "recover_star",
    "row_coloring",
    "seeds",
    "sparse_gauss_newton",
    "sparse_hessian",
    "sparse_jacobian",
    "sparse_marginal_variance",
    "star_coloring",
]
