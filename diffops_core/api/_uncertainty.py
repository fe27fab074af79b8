"""What people compute the matrices for, dense or sparse: covariances,
marginal standard deviations and spectra. A `scipy.sparse` matrix goes to the
sparse room (exact variances, never dense), any other to the dense one."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._errors import InputTypeError
from ..curvature import Spectrum, is_sparse, numpy_tree
from ..curvature import covariance as _dense_covariance
from ..curvature import marginal_std as _dense_marginal_std
from ..curvature import spectrum as _dense_spectrum
from ..sparse import sparse_marginal_variance

__all__ = ["Spectrum", "covariance", "marginal_std", "spectrum"]


def covariance(M: Any, *, damping: float = 0.0) -> Any:
    return _dense_covariance(M, damping=damping)


covariance.__doc__ = _dense_covariance.__doc__


def marginal_std(M: Any, x: Any, *, damping: float = 0.0, max_seconds: float | None = 600.0) -> Any:
    """``sqrt(diag((M + damping I)⁻¹))`` as a pytree like ``x``: each parameter's
    standard deviation, the others marginalised. Errors as `covariance`.

    A `scipy.sparse` ``M`` (from `sparse_hessian`) is never inverted or made
    dense: exact variances by the Schur complement on its dense rows, or by
    selected inversion of its sparse factorisation (`diffops_core.sparse`); the
    result is numpy. What that would take longer than ``max_seconds`` (an
    estimate from the factor; None: no limit) is refused before the work."""
    if is_sparse(M):
        variance = sparse_marginal_variance(M, damping, max_seconds)
        return numpy_tree(np.sqrt(variance), x, M.shape)
    return _dense_marginal_std(M, x, damping=damping)


def spectrum(M: Any) -> Spectrum:
    if is_sparse(M):
        raise InputTypeError(
            f"spectrum takes a dense matrix, got a scipy.sparse {M.shape[0]}x{M.shape[1]}; pass "
            "M.toarray() when it fits, or scipy.sparse.linalg.eigsh for a few eigenvalues "
            "(a pipeline store: Result.spectrum)"
        )
    return _dense_spectrum(M)


spectrum.__doc__ = _dense_spectrum.__doc__
