"""The user API on top of the rooms: the zodiax-compatible matrices
(`_matrices`), what they are computed for (`_uncertainty`) and pytree views
(`_views`). Re-exported by `diffops_core` itself."""

from ._matrices import gauss_newton, hessian, jacobian
from ._uncertainty import Spectrum, covariance, marginal_std, spectrum
from ._views import hessian_to_pytree, matrix_to_pytree

__all__ = [
    "Spectrum",
    "covariance",
    "gauss_newton",
    "hessian",
    "hessian_to_pytree",
    "jacobian",
    "marginal_std",
    "matrix_to_pytree",
    "spectrum",
]
