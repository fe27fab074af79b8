"""diffops_core: dense Jacobians and Hessians of JAX functions in column blocks.

The user API, zodiax-compatible: `jacobian`, `hessian`, `hessian_to_pytree`,
and `matrix_to_pytree` (the pytree view of any flat matrix). What executors
build on (layout, block planner, kernels, sizing) is `diffops_core.internal`.
"""

from ._api import hessian, jacobian
from ._version import __version__
from ._views import hessian_to_pytree, matrix_to_pytree

__all__ = [
    "__version__",
    "hessian",
    "hessian_to_pytree",
    "jacobian",
    "matrix_to_pytree",
]
