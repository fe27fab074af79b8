"""diffops_core: dense Jacobians and Hessians of JAX functions in column blocks.

The user API, zodiax-compatible: `jacobian`, `hessian`, `hessian_to_pytree`,
and `matrix_to_pytree` (the pytree view of any flat matrix); and what people
compute those matrices for: `gauss_newton` (Fisher matrices with a noise
model), `covariance`, `marginal_std` and `spectrum`. What executors
build on (layout, block planner, kernels, sizing) is `diffops_core.internal`.
"""

from ._api import hessian, jacobian
from ._curvature import Spectrum, covariance, gauss_newton, marginal_std, spectrum
from ._version import __version__
from ._views import hessian_to_pytree, matrix_to_pytree

__all__ = [
    "Spectrum",
    "__version__",
    "covariance",
    "gauss_newton",
    "hessian",
    "hessian_to_pytree",
    "jacobian",
    "marginal_std",
    "matrix_to_pytree",
    "spectrum",
]
