"""diffops_core: dense Jacobians and Hessians of JAX functions in column blocks.

The user API, zodiax-compatible: `jacobian`, `hessian`, `hessian_to_pytree`,
and `matrix_to_pytree` (the pytree view of any flat matrix); and what people
compute those matrices for: `gauss_newton` (Fisher matrices with a noise
model), `covariance`, `marginal_std` and `spectrum`. Sparse matrices from a
few compressed products: `hessian_sparsity`/`jacobian_sparsity` (the global
pattern read from the jaxpr, coloured), `sparse_hessian`/`sparse_jacobian`
(scipy sparse results, checked), and ``sparsity="auto"`` on `hessian` and
`jacobian`. What executors
build on (layout, block planner, kernels, sizing) is `diffops_core.internal`.

Rooms, from the bottom up, each importing only those below it: `_errors`;
`dense` (trace, layout, block plan, kernels, sizing); `curvature` (noise
models, dense inverses and spectra); `sparse` (detection, colouring,
compressed products, sparse linear algebra); `api` (the user functions).
"""

from ._errors import SparsityWarning
from ._version import __version__
from .api import (
    Spectrum,
    covariance,
    gauss_newton,
    hessian,
    hessian_to_pytree,
    jacobian,
    marginal_std,
    matrix_to_pytree,
    spectrum,
)
from .sparse import (
    Sparsity,
    gauss_newton_sparsity,
    hessian_sparsity,
    jacobian_sparsity,
    sparse_gauss_newton,
    sparse_hessian,
    sparse_jacobian,
)

__all__ = [
    "Sparsity",
    "SparsityWarning",
    "Spectrum",
    "__version__",
    "covariance",
    "gauss_newton",
    "gauss_newton_sparsity",
    "hessian",
    "hessian_sparsity",
    "hessian_to_pytree",
    "jacobian",
    "jacobian_sparsity",
    "marginal_std",
    "matrix_to_pytree",
    "sparse_gauss_newton",
    "sparse_hessian",
    "sparse_jacobian",
    "spectrum",
]
