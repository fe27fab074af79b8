"""Gauss–Newton matrices, covariances, marginal errors and spectra in memory (issue 11)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import diffops_core as dc
from helpers import CompileCounter, mixed_out, mixed_x


def _jacobian(residuals, x):
    flat, unravel = ravel_pytree(x)
    return np.asarray(
        jax.jacfwd(lambda z: ravel_pytree(residuals(unravel(z)))[0])(flat), np.float64
    )


def _cov(m, seed=0):
    a = np.random.default_rng(seed).normal(size=(m, m))
    return a @ a.T + m * np.eye(m)


STD = {"first": 0.5, "second": (np.array([0.1, 2.0], np.float32), 0.25)}
M_OUT = 8  # mixed_out: 5 + 2 + 1 residuals


def _weights(kind):
    if kind is None:
        return {}, np.eye(M_OUT)
    if kind == "std":
        w = np.concatenate([np.full(5, 1 / 0.25), [1 / 0.01, 1 / 4.0], [1 / 0.0625]])
        return {"std": STD}, np.diag(w)
    cov = _cov(M_OUT)
    if kind == "cov":
        return {"cov": cov}, np.linalg.inv(cov)
    return {"inv_cov": np.linalg.inv(cov)}, np.linalg.inv(cov)


@pytest.mark.parametrize("kind", [None, "std", "cov", "inv_cov"])
@pytest.mark.parametrize(
    "blocking",
    [{}, {"nbatches": 4}, {"block_size": 5}, {"memory_budget": "64MB"}, {"inner_width": 3}],
)
def test_gauss_newton_is_jt_w_j(kind, blocking):
    x = mixed_x()
    noise, W = _weights(kind)
    G, unflatten = dc.gauss_newton(mixed_out, x, **noise, **blocking)
    J = _jacobian(mixed_out, x)
    expected = J.T @ W @ J
    np.testing.assert_allclose(
        np.asarray(G), expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max()
    )
    assert G.shape == (16, 16) and jax.tree_util.tree_structure(
        unflatten(G[0])
    ) == jax.tree_util.tree_structure(x)


def test_a_scalar_std_and_an_array_std_for_one_residual_array():
    x = jnp.linspace(0.1, 1.0, 6)
    res = lambda p: jnp.sin(p) * jnp.sum(p) - 0.3
    J = _jacobian(res, x)
    G, _ = dc.gauss_newton(res, x, std=0.5)
    np.testing.assert_allclose(np.asarray(G), J.T @ J / 0.25, rtol=1e-4, atol=1e-5)
    std = np.linspace(0.5, 1.5, 6).astype(np.float32)
    G, _ = dc.gauss_newton(res, x, std=std)
    np.testing.assert_allclose(np.asarray(G), J.T @ np.diag(1 / std**2) @ J, rtol=1e-4, atol=1e-5)


def test_two_noise_models_fail_naming_both():
    with pytest.raises(
        ValueError,
        match=r"give at most one of std, cov and inv_cov .*got std "
        r"and inv_cov",
    ):
        dc.gauss_newton(mixed_out, mixed_x(), std=1.0, inv_cov=np.eye(M_OUT))


@pytest.mark.parametrize(
    "noise, message",
    [
        ({"std": 0.0}, "std must be positive and finite"),
        (
            {"std": np.ones(3)},
            r"std must be a scalar, .* or a flat vector of all 8 residuals; "
            r"got ndarray of shape \(3,\)",
        ),
        (
            {"std": {"first": np.ones(3), "second": (1.0, 1.0)}},
            r"std of shape \(3,\) does not broadcast to residuals of shape \(5,\)",
        ),
        ({"cov": np.eye(3)}, r"cov must be \(8, 8\) for 8 residuals"),
        ({"cov": -np.eye(M_OUT)}, r"cov is not positive definite: its smallest eigenvalue is -1"),
    ],
)
def test_bad_noise_is_named(noise, message):
    with pytest.raises(ValueError, match=message):
        dc.gauss_newton(mixed_out, mixed_x(), **noise)


def test_new_noise_values_do_not_recompile():
    x = mixed_x()
    dc.gauss_newton(mixed_out, x, cov=_cov(M_OUT, 1))
    with CompileCounter() as compiles:
        G, _ = dc.gauss_newton(mixed_out, x, cov=_cov(M_OUT, 2))
    assert compiles.count == 0  # the noise is an argument of the compiled kernel
    J = _jacobian(mixed_out, x)
    expected = J.T @ np.linalg.inv(_cov(M_OUT, 2)) @ J
    np.testing.assert_allclose(
        np.asarray(G), expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max()
    )


# -- covariance, marginal_std, spectrum -------------------------------------------------


def _spd(n=6, seed=3):
    return _cov(n, seed) / n


@pytest.mark.parametrize("as_jax", [False, True])
def test_covariance_and_marginal_std_equal_numpy(as_jax):
    M = _spd()
    Mx = jnp.asarray(M) if as_jax else M
    C = dc.covariance(Mx)
    assert isinstance(C, jax.Array) == as_jax
    np.testing.assert_allclose(np.asarray(C), np.linalg.inv(M), rtol=1e-4, atol=1e-6)
    x = {"a": np.zeros(4, np.float32), "b": np.float32(0.0), "c": np.zeros(1, np.float32)}
    std = dc.marginal_std(Mx, x)
    flat = np.concatenate([np.ravel(std["a"]), np.ravel(std["b"]), np.ravel(std["c"])])
    np.testing.assert_allclose(flat, np.sqrt(np.diag(np.linalg.inv(M))), rtol=1e-4)
    assert np.shape(std["a"]) == (4,) and np.shape(std["b"]) == ()


def test_an_indefinite_matrix_is_refused_with_diagnostics_and_damping_is_explicit():
    M = np.diag([4.0, 1.0, -0.5, -2.0])
    with pytest.raises(ValueError) as err:
        dc.covariance(M)
    text = str(err.value)
    assert "smallest eigenvalue is -2" in text and "2 of 4 eigenvalues <= 0" in text
    assert "0.5 of the largest" in text and "damping=" in text
    with pytest.raises(ValueError, match="not positive definite"):
        dc.marginal_std(jnp.asarray(M), jnp.zeros(4))
    damped = dc.covariance(np.diag([4.0, 1.0, 0.0]), damping=0.5)
    np.testing.assert_allclose(damped, np.diag([1 / 4.5, 1 / 1.5, 2.0]))
    with pytest.raises(ValueError, match="damping must be finite and >= 0"):
        dc.covariance(M, damping=-1.0)


def test_covariance_under_jit():
    M = jnp.asarray(_spd())
    np.testing.assert_allclose(
        np.asarray(jax.jit(dc.covariance)(M)), np.linalg.inv(np.asarray(M)), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("as_jax", [False, True])
def test_spectrum(as_jax):
    M = _spd(8)
    s = dc.spectrum(jnp.asarray(M) if as_jax else M)
    eig = np.linalg.eigvalsh(M)
    np.testing.assert_allclose(np.asarray(s.eigenvalues), eig, rtol=1e-4)
    assert float(s.condition) == pytest.approx(eig[-1] / eig[0], rel=1e-3) and int(s.rank) == 8
    low = np.diag([3.0, 1.0, 0.0])
    s = dc.spectrum(low)
    assert np.isinf(s.condition) and int(s.rank) == 2
    jitted = jax.jit(dc.spectrum)(jnp.asarray(M))
    assert float(jitted.condition) == pytest.approx(eig[-1] / eig[0], rel=1e-3)


def test_not_a_square_float_matrix():
    with pytest.raises(ValueError, match=r"must be a square matrix, got shape \(2, 3\)"):
        dc.covariance(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="must be a float matrix"):
        dc.spectrum(np.eye(3, dtype=int))


def test_a_flat_std_vector_for_pytree_residuals():
    x = mixed_x()
    flat_std = np.concatenate([np.full(5, 0.5), [0.1, 2.0], [0.25]]).astype(np.float32)
    G1, _ = dc.gauss_newton(mixed_out, x, std=flat_std)
    G2, _ = dc.gauss_newton(mixed_out, x, std=STD)
    np.testing.assert_allclose(np.asarray(G1), np.asarray(G2), rtol=1e-6)
