"""Curvature in memory, dense: the noise model of a Gauss–Newton (Fisher)
matrix (`_noise`: residuals whitened so the kernels compute ``Jᵀ W J``), and
the inverses and spectra of dense symmetric matrices (`_inverse`: covariances,
marginal standard deviations, eigenvalues, and the diagnostics of a matrix
without a Cholesky factor).

Imports only the dense room below it.
"""

from ._inverse import (
    Spectrum,
    check_damping,
    covariance,
    diagnose_not_positive_definite,
    is_sparse,
    marginal_std,
    not_positive_definite,
    numpy_tree,
    spectrum,
)
from ._noise import whitened_residuals

__all__ = [
    "Spectrum",
    "check_damping",
    "covariance",
    "diagnose_not_positive_definite",
    "is_sparse",
    "marginal_std",
    "not_positive_definite",
    "numpy_tree",
    "spectrum",
    "whitened_residuals",
]
