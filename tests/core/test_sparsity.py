"""Sparsity patterns read from the jaxpr (issue 18, part A): every true nonzero of
`jax.hessian` / `jax.jacfwd`, at random points, lies inside the detected pattern,
and the pattern is exact where the structure is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffops_core.internal import hessian_pattern, jacobian_pattern

N = 12
GRID = (3, 4)


def _points(seed: int, n: int = N, count: int = 3):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=n) * 1.3 + 0.2, jnp.float32) for _ in range(count)]


#: (name, scalar f of a flat (12,) x, the exact pattern where it is known or None)
HESSIANS = [
    ("elementwise", lambda v: jnp.sum(jnp.sin(v) ** 2 + jnp.exp(v) * v), np.eye(N, dtype=bool)),
    (
        "chain",
        lambda v: jnp.sum((v[1:] - v[:-1] ** 2) ** 2),
        np.abs(np.subtract.outer(np.arange(N), np.arange(N))) <= 1,
    ),
    ("reduction", lambda v: jnp.sum(v) ** 3 + jnp.max(v * v), None),
    ("matmul", lambda v: jnp.sum(jnp.tanh(jnp.linspace(-1, 1, 2 * N).reshape(2, N) @ v)), None),
    ("fft", lambda v: jnp.sum(jnp.abs(jnp.fft.fft(v[:4])) ** 2) + jnp.sum(v[4:] ** 3), None),
    ("rfft2", lambda v: jnp.sum(jnp.abs(jnp.fft.rfft2(v.reshape(GRID))) ** 3), None),
    (
        "grid",
        lambda v: (
            jnp.sum((v.reshape(GRID)[1:] - v.reshape(GRID)[:-1]) ** 2 * v.reshape(GRID)[1:])
            + jnp.sum(jnp.exp(v))
        ),
        None,
    ),
    ("transpose", lambda v: jnp.sum(v.reshape(GRID).T[1:] ** 3 * jnp.arange(3.0)), None),
    (
        "concatenate and pad",
        lambda v: jnp.sum(jnp.concatenate([v[:3] ** 2, jnp.pad(v[3:], 2) ** 3])),
        np.eye(N, dtype=bool),
    ),
    ("cumsum", lambda v: jnp.sum(jnp.cumsum(v) ** 2), None),
    (
        "gather",
        lambda v: jnp.sum(v[jnp.array([0, 3, 5, 5])] ** 3),
        np.diag(np.isin(np.arange(N), [0, 3, 5])),
    ),
    ("data-dependent gather", lambda v: jnp.sum(v[jnp.argmax(v)] ** 3 + v**3), None),
    (
        "fori_loop",
        lambda v: jax.lax.fori_loop(0, 3, lambda i, c: c * v, jnp.ones(N)).sum(),
        np.eye(N, dtype=bool),
    ),
    ("scan", lambda v: jax.lax.scan(lambda c, xi: (c + xi**2, c * xi), 0.0, v)[1].sum(), None),
    (
        "cond",
        lambda v: jax.lax.cond(v[0] > 0, lambda u: jnp.sum(u**2), lambda u: u[1] * u[2], v),
        None,
    ),
    ("select", lambda v: jnp.sum(jnp.where(v > 0, v**3, jnp.sin(v)) + jax.nn.relu(v) ** 3), None),
    (
        "custom_jvp (softplus, logsumexp)",
        lambda v: jnp.sum(jax.nn.softplus(v)) + jax.nn.logsumexp(v[:4]),
        None,
    ),
    ("complex", lambda v: jnp.sum(jnp.abs(v[:6] + 1j * v[6:]) ** 3), None),
    ("dynamic_slice", lambda v: jnp.sum(jax.lax.dynamic_slice(v, (2,), (5,)) ** 3), None),
    ("remat", lambda v: jnp.sum(jax.checkpoint(lambda u: jnp.sin(u) * u[::-1])(v) ** 2), None),
]


def _check(pattern, true, exact):
    pattern = pattern.toarray()
    assert pattern.shape == true.shape
    missing = (true != 0) & ~pattern
    assert not missing.any(), np.argwhere(missing)[:5]
    if exact is not None:
        np.testing.assert_array_equal(pattern, exact)


@pytest.mark.parametrize("name,f,exact", HESSIANS, ids=[h[0] for h in HESSIANS])
def test_hessian_pattern_holds_every_true_nonzero(name, f, exact):
    pattern = hessian_pattern(f, jnp.zeros(N, jnp.float32))
    for x in _points(hash(name) % 1000):
        _check(pattern, np.asarray(jax.hessian(f)(x)), exact)


JACOBIANS = [
    (
        "shifted product",
        lambda v: v[1:] * v[:-1],
        (np.eye(N - 1, N, k=0, dtype=bool) | np.eye(N - 1, N, k=1, dtype=bool)),
    ),
    ("stencil", lambda v: (jnp.roll(v.reshape(GRID), 1, 0) - v.reshape(GRID)).ravel() ** 2, None),
    ("fft", lambda v: jnp.abs(jnp.fft.fft(v[:8])), None),
    ("scatter-add", lambda v: jnp.zeros(5).at[jnp.array([0, 2, 2, 4])].add(v[:4] ** 2), None),
    ("sort", lambda v: jnp.sort(v)[:3], None),
]


@pytest.mark.parametrize("name,f,exact", JACOBIANS, ids=[j[0] for j in JACOBIANS])
def test_jacobian_pattern_holds_every_true_nonzero(name, f, exact):
    pattern = jacobian_pattern(f, jnp.zeros(N, jnp.float32))
    for x in _points(hash(name) % 1000):
        _check(pattern, np.asarray(jax.jacfwd(f)(x)), exact)


def test_scatter_add_is_exact_with_known_indices():
    f = lambda v: jnp.zeros(5).at[jnp.array([0, 2, 2, 4])].add(v[:4] ** 2)
    pattern = jacobian_pattern(f, jnp.zeros(N, jnp.float32)).toarray()
    expected = np.zeros((5, N), bool)
    expected[0, 0] = expected[2, 1] = expected[2, 2] = expected[4, 3] = True
    np.testing.assert_array_equal(pattern, expected)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.integers(0, N - 1), min_size=2, max_size=6),
    st.integers(0, 2**31 - 1),
)
def test_random_pairings_are_found(pairs, seed):
    # f couples chosen pairs: H's nonzeros are those pairs (and the diagonal)
    idx = np.array(pairs)
    f = lambda v: jnp.sum(v[idx[:-1]] * v[idx[1:]] ** 2) + jnp.sum(v**4)
    pattern = hessian_pattern(f, jnp.zeros(N, jnp.float32))
    for x in _points(seed % 10_000, count=2):
        _check(pattern, np.asarray(jax.hessian(f)(x)), None)
    expected = np.eye(N, dtype=bool)
    expected[idx[:-1], idx[1:]] = expected[idx[1:], idx[:-1]] = True
    expected[idx[1:], idx[1:]] = True
    np.testing.assert_array_equal(pattern.toarray(), expected)


def test_the_psf_demo_is_an_arrowhead():
    import os
    import sys

    from jax.flatten_util import ravel_pytree

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "workflows"))
    from models.psf import make_model

    loss, best_fit, _ = make_model(npix=16, nzern=5)
    flat, unravel = ravel_pytree(best_fit())
    f = lambda v: loss(unravel(v))
    pattern = hessian_pattern(f, flat)
    true = np.asarray(jax.hessian(f)(flat)) != 0
    _check(pattern, true, None)
    n, pixels = flat.size, 16 * 16
    assert pattern.nnz == true.sum()  # exact: every pixel couples only to itself and the globals
    assert pattern.nnz <= pixels + 2 * pixels * (n - pixels) + (n - pixels) ** 2


def test_a_primitive_without_a_rule_is_dense_over_its_operands(caplog):
    import diffops_core._sparsity as sparsity

    rule = sparsity._RULES.pop("cumsum")
    try:
        pattern = hessian_pattern(lambda v: jnp.sum(jnp.cumsum(v[:4]) ** 2) + jnp.sum(v**3),
                                  jnp.zeros(N, jnp.float32))  # fmt: skip
    finally:
        sparsity._RULES["cumsum"] = rule
        sparsity._WARNED.discard("cumsum")
    dense = pattern.toarray()
    assert dense[:4, :4].all() and "cumsum" in caplog.text
