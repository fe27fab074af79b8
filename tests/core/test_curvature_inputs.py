"""What the in-memory inverses and spectra refuse (issue 16, items 5 and 16)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffops_core as dc


@pytest.mark.parametrize("call", ["spectrum", "covariance", "marginal_std"])
def test_a_non_finite_matrix_is_refused_naming_the_entries(call):
    M = np.array([[1.0, 0.0], [0.0, np.nan]])
    fn = {
        "spectrum": lambda: dc.spectrum(M),
        "covariance": lambda: dc.covariance(M),
        "marginal_std": lambda: dc.marginal_std(M, np.zeros(2)),
    }[call]
    with pytest.raises(ValueError, match=r"1 non-finite .* at \(1, 1\)"):
        fn()
    with pytest.raises(ValueError, match="non-finite"):
        dc.covariance(jnp.array([[1.0, jnp.inf], [jnp.inf, 1.0]]))


def test_spectrum_under_jit_still_works():
    eig = jax.jit(lambda m: dc.spectrum(m).eigenvalues)(jnp.eye(3) * 2.0)
    np.testing.assert_allclose(eig, 2.0)


def test_damping_of_any_real_number_type():
    M = np.eye(2)
    np.testing.assert_allclose(dc.covariance(M, damping=np.int64(1)), np.eye(2) / 2)
    np.testing.assert_allclose(dc.covariance(M, damping=np.float32(1.0)), np.eye(2) / 2)
    with pytest.raises(TypeError, match="damping must be a number"):
        dc.covariance(M, damping="1")


def test_float16_and_empty_matrices_are_refused():
    with pytest.raises(TypeError, match="float16, too coarse .* cast it to float32"):
        dc.covariance(np.eye(2, dtype=np.float16))
    with pytest.raises(ValueError, match=r"M is empty \(shape \(0, 0\)\)"):
        dc.spectrum(np.zeros((0, 0)))


def test_a_standard_deviation_beyond_x_dtype_is_refused_not_inf():
    with pytest.raises(ValueError, match="does not fit x's float32; pass x in float64"):
        dc.marginal_std(np.eye(2) * 1e-80, np.zeros(2, np.float32))
    with jax.enable_x64(True):
        std = dc.marginal_std(np.eye(2) * 1e-80, np.zeros(2, np.float64))
    np.testing.assert_allclose(std, 1e40)
