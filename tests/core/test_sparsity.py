"""Sparsity patterns read from the jaxpr (issue 18, part A): every true nonzero of
`jax.hessian` / `jax.jacfwd`, at random points, lies inside the detected pattern,
and the pattern is exact where the structure is known."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from diffops_core.internal import hessian_pattern, jacobian_pattern
from diffops_core.sparse import recover_star, seeds, star_coloring
from diffops_core.sparse.detect import RULES, WARNED, gram

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
    # a defect: JAX's mul takes [n, 1] * [1, n]; each output element was read as
    # depending on the smaller operand's element 0 (a diagonal pattern, not dense)
    ("outer product (implicit broadcast)", lambda v: jnp.sum(jnp.outer(v, v) ** 2), None),
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
    ("broadcast rows and columns", lambda v: (v[:3, None] * v[None, 3:7] + v[7]).ravel(), None),
]


@pytest.mark.parametrize("name,f,exact", JACOBIANS, ids=[j[0] for j in JACOBIANS])
def test_jacobian_pattern_holds_every_true_nonzero(name, f, exact):
    pattern = jacobian_pattern(f, jnp.zeros(N, jnp.float32))
    for x in _points(hash(name) % 1000):
        _check(pattern, np.asarray(jax.jacfwd(f)(x)), exact)


def test_the_zeros_of_a_constant_factor_are_used():
    """HS117 multiplies the tangent by a constant with zeros (``a * x[:, None]``,
    then a sum) and HS86 contracts it with one more than half full (``A.T @ x``);
    both were dense over the constant's shape (75 and 50 nonzeros against
    asdex's 62 and 37); ELATTAR's ``x[1] * t`` with ``t[0] = 0`` kept ``x[1]``
    in element 0. Exact now, in the Jacobian and the Hessian."""
    a = np.array([[1.0, 0, 2], [0, 0, 3], [4, 5, 0], [0, 1, 1]])  # 7 of 12 nonzero
    y = jnp.linspace(0.1, 1.0, 7)
    products = lambda v: jnp.sum(jnp.asarray(a) * v[:4, None], axis=0) + v[4:] ** 2
    contraction = lambda v: jnp.asarray(a).T @ v[:4] + v[4:] ** 2
    t = jnp.arange(7.0) * 0.1  # t[0] = 0: a scalar's derivative vanishes there (ELATTAR)
    scaled = lambda v: v[0] * jnp.exp(-v[1] * t) + v[2:] ** 2 @ jnp.ones((5, 7))
    for f in (products, contraction, scaled):
        true = np.asarray(jax.jacfwd(f)(y)) != 0
        np.testing.assert_array_equal(jacobian_pattern(f, y).toarray(), true)
        loss = lambda v, f=f: jnp.sum(f(v) ** 2)
        true = np.asarray(jax.hessian(loss)(y)) != 0
        np.testing.assert_array_equal(hessian_pattern(loss, y).toarray(), true)


def test_a_basis_on_an_aperture_is_exact_and_united_once_per_signature():
    """A phase from a few coefficients times a basis that is zero off a circular
    aperture (a Zernike basis): pixels off the aperture depend on no coefficient.
    The pattern is exact (it was, reading each of the basis's nonzeros one by
    one: 6 s of a 1024² flat field's detection); now each distinct set of zeros
    is united once. Also with a batch axis, and the basis on the left."""
    k, npix = 4, 9
    c = (np.arange(npix) - (npix - 1) / 2) / (npix / 2)
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= 1
    basis = np.random.default_rng(1).normal(size=(k, npix, npix)) * inside
    basis[2, :, 4] = 0  # one coefficient also off along a line: a third signature
    b = jnp.asarray(basis, jnp.float32)
    batched = jnp.stack([b, b[::-1]])  # (2, k, npix, npix)

    def phase_right(v):
        return jnp.tensordot(v[:k], b, axes=1)

    def phase_left(v):
        return jnp.tensordot(b, v[:k], axes=((0,), (0,)))

    def phase_batched(v):
        z = v[:k].reshape(1, k) * jnp.array([[1.0], [2.0]])
        return jnp.einsum("bk,bkij->bij", z, batched).sum(0)

    x = jnp.linspace(0.5, 1.0, k + npix * npix, dtype=jnp.float32)
    for phase in (phase_right, phase_left, phase_batched):
        f = lambda v, phase=phase: jnp.sum((jnp.cos(phase(v)) * v[k:].reshape(npix, npix)) ** 2)
        true = np.asarray(jax.hessian(f)(x)) != 0
        np.testing.assert_array_equal(hessian_pattern(f, x).toarray(), true)
        g = lambda v, phase=phase: (1 + phase(v)).reshape(-1) * v[k:]
        true = np.asarray(jax.jacfwd(g)(x)) != 0
        np.testing.assert_array_equal(jacobian_pattern(g, x).toarray(), true)


def test_a_basis_copied_to_many_pixels_stays_exact_through_pad_and_fft():
    """At 72² pixels and 21 terms the basis's signatures are copied to more
    entries than a rule spells out: they stay a few rows (picks) through the
    product, the mask, the pad and the FFT, and the patterns stay exact."""
    k, npix = 21, 72
    c = (np.arange(npix) - (npix - 1) / 2) / (npix / 2)
    inside = (c[:, None] ** 2 + c[None, :] ** 2) <= 1
    basis = np.random.default_rng(2).normal(size=(k, npix, npix)) * inside
    basis[3, :, 10] = 0  # a third signature
    b = jnp.asarray(basis, jnp.float32)
    mask = jnp.asarray(inside, jnp.float32)

    def image(v):
        field = mask * jnp.exp(1j * jnp.tensordot(v[:k], b, axes=1))
        wide = jnp.pad(field, ((4, 4), (4, 4)))
        return (jnp.abs(jnp.fft.fft2(wide)) ** 2)[4:-4, 4:-4] * v[k:].reshape(npix, npix)

    def phase(v):
        return (1 + jnp.tensordot(v[:k], b, axes=1)).reshape(-1) * v[k:]

    x = jnp.asarray(np.random.default_rng(3).uniform(0.5, 1.0, k + npix * npix), jnp.float32)
    for g in (image, phase):
        true = np.asarray(jax.jacfwd(lambda v, g=g: g(v).reshape(-1))(x)) != 0
        np.testing.assert_array_equal(jacobian_pattern(g, x).toarray(), true)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 30), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_picks_of_a_few_rows_act_as_the_rows_they_stand_for(nbase, size, ncommon, seed):
    # every move of the algebra on a pattern held as picks equals the same move
    # on its rows spelled out
    from diffops_core.sparse.detect._pattern import (
        Context,
        Pattern,
        everything,
        gather_rows,
        group,
        take,
        union,
    )  # fmt: skip

    rng = np.random.default_rng(seed)
    n = 12
    base = sp.csr_array(rng.random((nbase, n)) < 0.3)
    idx = rng.integers(-1, nbase, size)
    common = np.sort(rng.choice(n, ncommon, replace=False)).astype(np.int64)
    ctx = Context(n, 10_000, None)
    lazy = lambda: Pattern((size,), None, common, (base, idx))
    spelled = lambda: Pattern((size,), gather_rows(base, idx), common)
    full = lambda q: q.matrix(n, 10_000).toarray()
    assert lazy().depends and full(lazy()).tolist() == full(spelled()).tolist()
    other = Pattern((size,), sp.csr_array(rng.random((size, n)) < 0.1), np.zeros(0, np.int64))
    where = rng.integers(-1, size, 2 * size)
    groups = rng.integers(0, 3, size)
    moves = (
        lambda q: ctx.check(q),
        lambda q: take(ctx, q, where),
        lambda q: take(ctx, take(ctx, q, where), rng.permutation(2 * size)),
        lambda q: union(ctx, [q, Pattern((), None, np.array([n - 1]))], (size,)),
        lambda q: union(ctx, [q, other], (size,)),
        lambda q: group(ctx, q, groups, (3,)),
        lambda q: everything(ctx, [q], (2,)),
    )
    for move in moves:
        state = rng.bit_generator.state
        got = full(move(lazy()))
        rng.bit_generator.state = state
        np.testing.assert_array_equal(got, full(move(spelled())))


def test_pad_and_row_gathers_match_the_primitive_and_the_product():
    """The pad rule's numpy padding equals ``lax.pad`` (negative and interior
    padding too), and a pattern's row gather equals the selection matrix's
    product it replaced."""
    from diffops_core.sparse.detect._pattern import gather_rows
    from diffops_core.sparse.detect._structural import pad_indices

    rng = np.random.default_rng(0)
    for _ in range(300):
        shape = tuple(int(s) for s in rng.integers(0, 5, rng.integers(1, 4)))
        config = []
        for n in shape:
            interior = int(rng.integers(0, 3))
            spread = n + max(n - 1, 0) * interior
            lo = int(rng.integers(-spread, 4))
            hi = max(int(rng.integers(-spread, 4)), -(spread + lo))
            config.append((lo, hi, interior))
        idx = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
        expected = np.asarray(lax.pad(jnp.asarray(idx), np.int32(-1), config))
        got = pad_indices(idx, config)
        assert got.shape == expected.shape, (shape, config)
        np.testing.assert_array_equal(got, expected)
    import scipy.sparse as sp

    for _ in range(100):
        m, n = (int(s) for s in rng.integers(1, 20, 2))
        rows = sp.csr_array(sp.random_array((m, n), density=0.3, rng=rng, format="csr") != 0)
        idx = rng.integers(-1, m, int(rng.integers(0, 30)))
        picked = np.flatnonzero(idx >= 0)
        select = sp.csr_array((np.ones(picked.size, bool), (picked, idx[picked])), (idx.size, m))
        np.testing.assert_array_equal(gather_rows(rows, idx).toarray(), (select @ rows).toarray())


def test_scatters_of_one_shape_build_their_landing_kernel_once():
    """A model's scatters repeat their shapes (SBRYBND: 17, each compiled on its
    own): the transpose that finds where each update lands is built once per
    shape and parameters, and stays exact for other indices."""
    from diffops_core.sparse.detect._indexing import _landing

    _landing.cache_clear()
    ix = [jnp.array([0, 2, 2, 4]), jnp.array([1, 1, 3, 0]), jnp.array([4, 3, 2, 1])]
    f = lambda v: sum(jnp.zeros(5).at[i].add(v[4 * k : 4 * k + 4] ** 2) for k, i in enumerate(ix))
    pattern = jacobian_pattern(f, jnp.zeros(N, jnp.float32)).toarray()
    expected = np.zeros((5, N), bool)
    for k, i in enumerate(ix):
        expected[np.asarray(i), 4 * k + np.arange(4)] = True
    np.testing.assert_array_equal(pattern, expected)
    info = _landing.cache_info()
    assert info.misses == 1 and info.hits == 2


#: ``.at[].set`` cases of asdex's scatter tests (tests/_interpret/test_scatter.py):
#: (name, f, n, the nonzeros asdex asserts). The written slots lose the operand.
SETS = [
    ("one constant", lambda x: x.at[1].set(0.0), 3, 2),
    ("two of x", lambda x: x[:4].at[jnp.array([0, 2])].set(x[4:6]), 6, 4),
    ("middle axis", lambda x: x.reshape(2, 3, 4).at[:, 2, :].set(0.0).reshape(-1), 24, 16),
    ("rows", lambda x: x.reshape(3, 4).at[jnp.array([2, 0])].set(jnp.ones((2, 4))).ravel(), 12, 4),
    (
        "coordinates",
        lambda x: (
            x.reshape(3, 4).at[jnp.array([0, 1, 2]), jnp.array([1, 3, 0])].set(jnp.zeros(3)).ravel()
        ),
        12,
        9,
    ),  # fmt: skip
    (
        "non-square rows",
        lambda x: x.reshape(3, 5).at[jnp.array([1])].set(jnp.zeros((1, 5))).ravel(),
        15,
        10,
    ),  # fmt: skip
    ("then gathered", lambda x: x.at[1].set(0.0)[jnp.array([0, 2])], 3, 2),
    ("written twice", lambda x: jnp.zeros(3).at[jnp.array([1, 1])].set(x[:2]), 3, 2),
]


@pytest.mark.parametrize("f, n, asdex", [case[1:] for case in SETS], ids=[c[0] for c in SETS])
def test_a_set_replaces_what_it_writes(f, n, asdex):
    """``x.at[i].set(v)``: the written elements depend on ``v`` alone (they kept
    the operand's element: 24 nonzeros for asdex's 16 on the middle axis). An
    element written twice depends on every writer: which one wins is the
    backend's choice, so the JVP's own record of the winner (a scatter of ids,
    run here on the CPU) is not taken for known. Never more than asdex."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=n), jnp.float32)
    pattern = jacobian_pattern(f, x)
    _check(pattern, np.asarray(jax.jacfwd(f)(x)), None)
    assert pattern.nnz == asdex


def test_a_set_out_of_bounds_keeps_the_operand_where_undefined():
    """An index out of bounds under ``promise_in_bounds`` leaves the write
    undefined: the operand element is kept (a superset); dropped or clipped
    writes are exact."""
    idx = jnp.array([1, 7])
    x = jnp.linspace(0.5, 1.0, 4)
    for mode, nnz in (("drop", 4), ("clip", 4), ("promise_in_bounds", 6)):
        f = lambda v, mode=mode: v.at[idx].set(v[:2] * 2, mode=mode)
        pattern = jacobian_pattern(f, x)
        _check(pattern, np.asarray(jax.jacfwd(f)(x)), None)
        assert pattern.nnz == nnz, mode


def test_a_known_mask_selects_one_case():
    """``jnp.where`` with a mask known without ``x``: each element depends on
    the case it takes alone (it depended on both)."""
    f = lambda v: jnp.where(jnp.arange(5) % 2 == 0, v[:5], v[5:] ** 2)
    x = jnp.linspace(0.5, 1.0, 10)
    pattern = jacobian_pattern(f, x).toarray()
    np.testing.assert_array_equal(pattern, np.asarray(jax.jacfwd(f)(x)) != 0)
    assert pattern.sum() == 5


#: Loops whose steps a fixed point united: (name, f of x, n).
STEPS = [
    ("a carry shifted twice", lambda x: lax.fori_loop(0, 2, lambda i, v: jnp.roll(v, 1) * 2, x), 5),
    ("a running sum's products", lambda x: lax.scan(lambda c, v: (c + v, c * v), 0.0, x)[1], 5),
    (
        "the same, reversed",
        lambda x: lax.scan(lambda c, v: (c + v, c * v), 0.0, x, reverse=True)[1],
        5,
    ),
    (
        "a carry rolled by the xs",
        lambda x: lax.scan(lambda c, v: (jnp.roll(c, 1) * v, c[0]), x[:3], x[3:])[0],
        7,
    ),
    (
        "one element set a step",
        lambda x: lax.fori_loop(0, 3, lambda i, v: v.at[i].set(v[i + 1] * 2), x),
        5,
    ),
    ("a known branch", lambda x: lax.cond(True, lambda v: v[::-1], lambda v: v, x), 4),
    (
        "a known switch",
        lambda x: lax.switch(2, [lambda v: v, lambda v: v[::-1], lambda v: v * v[0]], x),
        4,
    ),
]


@pytest.mark.parametrize("f, n", [case[1:] for case in STEPS], ids=[c[0] for c in STEPS])
def test_short_loops_are_read_step_by_step_and_known_branches_alone(f, n):
    """A scan of a few steps (up to 64) walks its steps one after another, each
    with its own carry: a carry rolled twice was dense (25 nonzeros for 5), a
    running sum's products 25 for 14. A ``cond`` whose index is known walks the
    branch it takes (both were united). Exact: the nonzeros of jax's Jacobian at
    three points, and the Hessian's soundness."""
    true = np.zeros((1, 1))
    for seed in range(3):
        x = jnp.asarray(np.random.default_rng(seed).normal(size=n), jnp.float32)
        jac = np.asarray(jax.jacfwd(f)(x)) != 0
        true = jac if seed == 0 else true | jac
    pattern = jacobian_pattern(f, x)
    _check(pattern, true, true)
    loss = lambda v: jnp.sum(jnp.sin(f(v)) ** 2)
    _check(hessian_pattern(loss, x), np.asarray(jax.hessian(loss)(x)), None)


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


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(1, 40),
    st.integers(0, 6),
    st.floats(0.0, 0.3),
    st.integers(0, 2**31 - 1),
)
def test_the_gauss_newton_pattern_equals_the_sparse_product(m, n, heavy, density, seed):
    # Jᵀ J's pattern with a few columns most rows hold (a model's globals), taken
    # apart from the rest, must be the sparse product's, entry for entry
    rng = np.random.default_rng(seed)
    jac = rng.random((m, n)) < density
    cols = rng.choice(n, size=min(heavy, n), replace=False)
    jac[:, cols] |= rng.random((m, cols.size)) < 0.9
    jac[rng.random(m) < 0.2] = False  # empty rows
    got = gram(sp.csr_array(jac))
    assert got.shape == (n, n) and got.dtype == bool
    np.testing.assert_array_equal(got.toarray(), (jac.T.astype(int) @ jac.astype(int)) > 0)
    assert got.nnz == int(((jac.T.astype(int) @ jac.astype(int)) > 0).sum())  # no repeats


@pytest.mark.slow
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
    rule = RULES.pop("cumsum")
    try:
        pattern = hessian_pattern(lambda v: jnp.sum(jnp.cumsum(v[:4]) ** 2) + jnp.sum(v**3),
                                  jnp.zeros(N, jnp.float32))  # fmt: skip
    finally:
        RULES["cumsum"] = rule
        WARNED.discard("cumsum")
    dense = pattern.toarray()
    assert dense[:4, :4].all() and "cumsum" in caplog.text


# -- compressed products (part C) -------------------------------------------------------


def _tree_x():
    return {"a": jnp.linspace(0.1, 0.9, 5, dtype=jnp.float32),
            "b": jnp.linspace(-0.5, 0.5, 7, dtype=jnp.float32).reshape(7)}  # fmt: skip


def _chain_loss(p):
    v = jnp.concatenate([p["a"], p["b"]])
    return jnp.sum((v[1:] - v[:-1] ** 2) ** 2) + jnp.sum(jnp.cos(v)) * v[0]


def test_sparse_hessian_equals_jax_hessian_from_few_products():
    import diffops_core as dc

    x = _tree_x()
    H, unravel = dc.sparse_hessian(_chain_loss, x)
    flat, _ = jax.flatten_util.ravel_pytree(x)
    dense = np.asarray(jax.hessian(lambda v: _chain_loss(unravel(v)))(flat))
    np.testing.assert_allclose(H.toarray(), dense, rtol=1e-5, atol=1e-5)
    found = dc.hessian_sparsity(_chain_loss, x)
    assert found.mode == "star" and found.ncolors < flat.size and found.nnz == H.nnz
    same, _ = dc.hessian(_chain_loss, x, sparsity="auto")
    np.testing.assert_allclose(np.asarray(same), dense, rtol=1e-5, atol=1e-5)
    again, _ = dc.hessian(_chain_loss, x, sparsity=found)  # reused
    np.testing.assert_allclose(np.asarray(again), dense, rtol=1e-5, atol=1e-5)


def test_sparse_jacobian_equals_jacfwd_in_column_and_row_modes():
    import diffops_core as dc

    x = jnp.linspace(0.1, 1.0, N)
    tall = lambda v: jnp.concatenate([v[1:] * v[:-1], jnp.fft.fft(v[:4]).real, v[:1] ** 3])
    wide = lambda v: jnp.stack([jnp.sum(v[::2] ** 2), jnp.sum(jnp.sin(v[1::2]))])
    for f, mode in ((tall, "column"), (wide, "row")):
        J, _ = dc.sparse_jacobian(f, x)
        np.testing.assert_allclose(J.toarray(), np.asarray(jax.jacfwd(f)(x)), rtol=1e-5, atol=1e-6)
        assert dc.jacobian_sparsity(f, x).mode == mode
        dense, _ = dc.jacobian(f, x, sparsity="auto")
        np.testing.assert_allclose(np.asarray(dense), np.asarray(jax.jacfwd(f)(x)), rtol=1e-5,
                                   atol=1e-6)  # fmt: skip


def test_a_wrong_pattern_is_refused_not_returned():
    import scipy.sparse as sparse

    import diffops_core as dc

    x = _tree_x()
    found = dc.hessian_sparsity(_chain_loss, x)
    diagonal = sparse.csr_array(sparse.identity(found.shape[0], dtype=bool, format="csr"))
    wrong = dataclasses.replace(found, pattern=diagonal, colors=np.zeros(found.shape[0], int),
                                ncolors=1)  # fmt: skip
    with pytest.raises(ValueError, match="does not match products of random vectors"):
        dc.sparse_hessian(_chain_loss, x, sparsity=wrong)


def test_sparsity_of_another_shape_or_a_bad_value_is_refused():
    import diffops_core as dc

    found = dc.hessian_sparsity(_chain_loss, _tree_x())
    with pytest.raises(ValueError, match=r"sparsity is of a \(12, 12\) float32 matrix"):
        dc.hessian(lambda v: jnp.sum(v**3), jnp.ones(4), sparsity=found)
    with pytest.raises(ValueError, match="sparsity must be None, 'auto' or a Sparsity"):
        dc.hessian(_chain_loss, _tree_x(), sparsity="yes")


def test_detection_is_cached_on_the_computation():
    import diffops_core as dc

    first = dc.hessian_sparsity(_chain_loss, _tree_x())
    assert dc.hessian_sparsity(_chain_loss, _tree_x()) is first  # same program and data
    other = dc.hessian_sparsity(lambda p: 2 * _chain_loss(p), _tree_x())
    assert other is not first


@pytest.mark.parametrize(
    "pattern,most",
    [("arrowhead", 25), ("tridiagonal", 3), ("stencil", 6), ("arrowhead with pairs", 26)],
)
def test_star_colouring_is_near_the_optimum(pattern, most):
    import scipy.sparse as sparse

    if pattern == "arrowhead":  # 24 globals beside a flat field: the PSF demo's shape
        a = sparse.lil_array((600, 600), dtype=bool)
        a.setdiag(True)
        a[:24, :] = True
        a[:, :24] = True
    elif pattern == "arrowhead with pairs":
        # the globals' neighbours coloured at once, but not the pixels coupled to
        # another pixel: those must still be star-coloured among themselves
        a = sparse.lil_array((600, 600), dtype=bool)
        a.setdiag(True)
        a[:24, :] = True
        a[:, :24] = True
        for i in range(100, 200, 3):
            a[i, i + 1] = a[i + 1, i] = a[i + 1, i + 2] = a[i + 2, i + 1] = True
    elif pattern == "tridiagonal":
        a = sparse.diags_array([1, 1, 1], offsets=[-1, 0, 1], shape=(500, 500), dtype=bool)
    else:
        t = sparse.diags_array([1.0, 1.0, 1.0], offsets=[-1, 0, 1], shape=(20, 20))
        a = sparse.kron(sparse.identity(20), t) + sparse.kron(t, sparse.identity(20))
    a = sparse.csr_array(a, dtype=bool)
    colors = star_coloring(a)
    assert colors.max() + 1 <= most
    h = sparse.csr_array(a, dtype=np.float64)
    h.data = np.random.default_rng(1).normal(size=h.nnz)
    h = sparse.csr_array(h + h.T)
    np.testing.assert_allclose(recover_star(a, colors, h @ seeds(colors)).toarray(), h.toarray())


def _greedy_in_order(pattern):
    """The greedy column colouring in the columns' order (what we kept before)."""
    colors = np.full(pattern.shape[1], -1)
    csc = pattern.tocsc()
    for j in range(pattern.shape[1]):
        rows = csc.indices[csc.indptr[j] : csc.indptr[j + 1]]
        taken = {
            c
            for r in rows
            for c in colors[pattern.indices[pattern.indptr[r] : pattern.indptr[r + 1]]]
        }
        colors[j] = next(c for c in range(pattern.shape[1]) if c not in taken)
    return colors


def _valid_columns(pattern, colors):
    for r in range(pattern.shape[0]):
        row = colors[pattern.indices[pattern.indptr[r] : pattern.indptr[r + 1]]]
        assert len(set(row.tolist())) == row.size, f"row {r} has two columns of one colour"


def test_the_5_point_stencils_jacobian_takes_the_optimal_5_colours():
    """Issue 24 part C: the greedy colouring in the columns' order gives 7;
    DSATUR, tried beside it, gives 5 (each row has 5 entries: the optimum)."""
    import scipy.sparse as sparse

    from diffops_core.sparse import column_coloring, row_coloring

    t = sparse.diags_array([1.0, 1.0, 1.0], offsets=[-1, 0, 1], shape=(30, 30))
    a = sparse.csr_array(sparse.kron(sparse.identity(30), t) + sparse.kron(t, sparse.identity(30)),
                         dtype=bool)  # fmt: skip
    assert _greedy_in_order(a).max() + 1 == 7
    colors = column_coloring(a)
    assert colors.max() + 1 == 5
    _valid_columns(a, colors)
    j = sparse.csr_array(a, dtype=np.float64)
    j.data = np.random.default_rng(2).normal(size=j.nnz)
    compressed = j @ np.eye(5)[colors]  # one product per colour
    rows, cols = j.nonzero()
    np.testing.assert_array_equal(compressed[rows, colors[cols]], j[rows, cols])  # read directly
    assert row_coloring(sparse.csr_array(a.T)).max() + 1 == 5


@settings(max_examples=30, deadline=None)
@given(st.integers(5, 60), st.integers(5, 60), st.floats(0.02, 0.3), st.integers(0, 2**31 - 1))
def test_column_colourings_are_valid_and_never_worse_than_greedy(m, n, density, seed):
    import scipy.sparse as sparse

    from diffops_core.sparse import column_coloring

    a = sparse.csr_array(sparse.random_array((m, n), density=density, rng=seed) != 0)
    colors = column_coloring(a)
    _valid_columns(a, colors)
    assert colors.max() <= _greedy_in_order(a).max()


@settings(max_examples=25, deadline=None)
@given(st.integers(4, 80), st.floats(0.02, 0.4), st.integers(0, 2**31 - 1))
def test_small_colourings_run_as_python_give_the_compiled_loops_colours(n, density, seed):
    # below a bound on their steps, colouring loops not yet loaded run as Python
    # (the same code): the colours must be the compiled loops' own
    import scipy.sparse as sparse

    import diffops_core.sparse._coloring as coloring
    from diffops_core.sparse import column_coloring

    a = sparse.random_array((n, n), density=density, rng=seed) != 0
    a = sparse.csr_array(a + a.T + sparse.eye_array(n, dtype=bool), dtype=bool)
    ours = {}
    loop = coloring._loop
    for way, pick in (("compiled", lambda f, steps: f), ("python", lambda f, steps: f.py_func)):
        coloring._loop = pick
        try:
            ours[way] = (star_coloring(a), column_coloring(a))
        finally:
            coloring._loop = loop
    np.testing.assert_array_equal(ours["compiled"][0], ours["python"][0])
    np.testing.assert_array_equal(ours["compiled"][1], ours["python"][1])


def test_a_small_first_colouring_loads_no_compiled_loop():
    """A first call's colouring of a small pattern loaded numba's loops from
    their cache: 0.23 s of VANDANMSLS's 0.38 s colouring of a 22x22 pattern.
    In a fresh process now, nothing is loaded, and the colours are right."""
    import subprocess
    import sys

    code = (
        "import numpy as np, scipy.sparse as sp\n"
        "import diffops_core.sparse._coloring as c\n"
        "a = sp.csr_array(sp.diags_array([1, 1, 1, 1, 1], offsets=[-2, -1, 0, 1, 2], "
        "shape=(40, 40)), dtype=bool)\n"
        "star, cols = c.star_coloring(a), c.column_coloring(a)\n"
        "print(int(star.max()) + 1, int(cols.max()) + 1, "
        "[len(f.signatures) for f in (c._star_greedy, c._distance2, c._dsatur)])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)  # fmt: skip
    star, columns, loaded = out.stdout.strip().split(" ", 2)
    assert loaded == "[0, 0, 0]"
    assert int(columns) == 5 and 3 <= int(star) <= 5  # a band of 5: 5 columns


def test_an_arrowhead_jacobian_takes_three_products_jvps_and_vjps_together():
    """Issue 24 part C: one output that sees every input and one input every
    output sees need n products in either direction alone (every column shares
    the dense row, every row the dense column); a bidirectional colouring reads
    the dense row from one VJP and the rest from two JVPs."""
    import diffops_core as dc

    n = 300
    f = lambda v: jnp.concatenate([jnp.sum(jnp.sin(v))[None], v[1:] ** 2 * v[0]])
    x = jnp.linspace(0.1, 1.0, n)
    found = dc.jacobian_sparsity(f, x)
    assert (found.mode, found.ncolors, found.nnz) == ("bidirectional", 3, n + 2 * (n - 1))
    assert found.one_sided().ncolors == n  # what it took before
    J, _ = dc.sparse_jacobian(f, x)
    np.testing.assert_allclose(J.toarray(), np.asarray(jax.jacfwd(f)(x)), rtol=1e-6, atol=1e-6)
    dense, _ = dc.jacobian(f, x, sparsity="auto")
    np.testing.assert_allclose(np.asarray(dense), np.asarray(jax.jacfwd(f)(x)), rtol=1e-6,
                               atol=1e-6)  # fmt: skip
    given = dc.Sparsity.from_pattern(found.pattern, "jacobian")
    assert (given.mode, given.ncolors) == ("bidirectional", 3)


def test_a_wrong_bidirectional_colouring_is_refused():
    import diffops_core as dc

    n = 60
    f = lambda v: jnp.concatenate([jnp.sum(jnp.sin(v))[None], v[1:] ** 2 * v[0]])
    x = jnp.linspace(0.1, 1.0, n)
    found = dc.jacobian_sparsity(f, x)
    with pytest.raises(ValueError, match=r"must be 120 integers \(one per column, then"):
        dc.sparse_jacobian(f, x, sparsity=dataclasses.replace(found, colors=found.colors[:n]))
    all_columns = np.concatenate([np.zeros(n, int), np.full(n, -1)])  # one JVP for all
    wrong = dataclasses.replace(found, colors=all_columns, ncolors=1)
    with pytest.raises(ValueError, match="not a bidirectional colouring"):
        dc.sparse_jacobian(f, x, sparsity=wrong)


@settings(max_examples=30, deadline=None)
@given(st.integers(150, 300), st.integers(150, 300), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 2**31 - 1))  # fmt: skip
def test_bidirectional_colourings_recover_every_nonzero(m, n, rows, cols, seed):
    """Random sparse patterns with a few dense rows and columns (denser than 10x
    the median: `dense_vertices`): the plan reads
    every nonzero of a random matrix exactly from ``J S꜀`` and ``Sᵣᵀ J``, in
    fewer products than either side alone."""
    import scipy.sparse as sparse

    from diffops_core.sparse._bicolor import bicolor_plan, bicoloring, split_colors
    from diffops_core.sparse._coloring import column_coloring, recover, row_coloring

    rng = np.random.default_rng(seed)
    a = sparse.random_array((m, n), density=0.01, rng=seed).toarray() != 0
    a[rng.choice(m, rows, replace=False)] = True
    a[:, rng.choice(n, cols, replace=False)] = True
    pattern = sparse.csr_array(a)
    colors, count = bicoloring(pattern)
    c, r = split_colors(colors, (m, n))
    j = np.where(a, rng.normal(size=(m, n)), 0.0)
    one_hot = lambda k: (k[:, None] == np.arange(k.max(initial=-1) + 1)).astype(float)  # -1: none
    flat = np.concatenate([np.ravel(j @ one_hot(c)), np.ravel(one_hot(r).T @ j)])
    got = recover(bicolor_plan(pattern, colors), (m, n), flat)
    np.testing.assert_array_equal(got.toarray(), j)
    assert count == c.max(initial=-1) + 1 + r.max(initial=-1) + 1
    one_sided = min(column_coloring(pattern).max(), row_coloring(pattern).max()) + 1
    assert one_sided == min(m, n)  # a dense row and a dense column: every line alone
    assert count < one_sided // 4  # the dense lines a product each, and a few more


def test_a_known_symmetric_pattern_is_coloured_as_if_symmetrised():
    """The Gauss-Newton pattern (Jᵀ J, symmetric as built) skips the sum with
    its transpose: the same colours, and the caller's pattern is left as it is."""
    import scipy.sparse as sparse

    j = sparse.random_array((80, 60), density=0.05, rng=3) != 0
    j = sparse.csr_array(sparse.hstack([j, sparse.csr_array(np.ones((80, 3), bool))]))
    g = sparse.csr_array(j.T @ j, dtype=bool)
    before = g.copy()
    np.testing.assert_array_equal(star_coloring(g, symmetric=True), star_coloring(g))
    assert (g != before).nnz == 0 and g.diagonal().sum() == before.diagonal().sum() > 0


# -- uncertainties of sparse matrices (part D) ------------------------------------------


def _arrowhead(n=300, k=6, seed=0):
    import scipy.sparse as sparse

    rng = np.random.default_rng(seed)
    a = sparse.lil_array((n, n))
    a.setdiag(rng.uniform(2.0, 3.0, n))
    border = rng.normal(size=(k, n)) * 0.05
    a[:k, :] = border
    a[:, :k] = border.T
    dense = a.toarray()
    dense[:k, :k] = np.eye(k) * 5 + 0.1
    return sparse.csr_array(dense), dense


def test_sparse_marginal_std_is_exact_without_the_inverse():
    import scipy.sparse as sparse

    import diffops_core as dc

    S, dense = _arrowhead()
    x = {"g": np.zeros(6), "pixels": np.zeros(294)}
    std = dc.marginal_std(S, x)
    expected = np.sqrt(np.diag(np.linalg.inv(dense)))
    np.testing.assert_allclose(std["g"], expected[:6], rtol=1e-10)
    np.testing.assert_allclose(std["pixels"], expected[6:], rtol=1e-10)
    # a stencil (no dense border): the sparse factorisation
    t = sparse.diags_array([-1.0, 4.2, -1.0], offsets=[-1, 0, 1], shape=(12, 12))
    grid = sparse.csr_array(
        sparse.kron(sparse.identity(12), t) + sparse.kron(t, sparse.identity(12))
    )
    std = dc.marginal_std(grid, np.zeros(144))
    np.testing.assert_allclose(std, np.sqrt(np.diag(np.linalg.inv(grid.toarray()))), rtol=1e-10)
    damped = dc.marginal_std(S, x, damping=2.0)
    np.testing.assert_allclose(damped["g"], np.sqrt(np.diag(np.linalg.inv(dense + 2 * np.eye(300))))[:6],
                               rtol=1e-10)  # fmt: skip


def test_a_sparse_matrix_not_positive_definite_is_diagnosed():
    import diffops_core as dc

    S, dense = _arrowhead()
    S = S.tolil()
    S[0, 0] = -50.0
    with pytest.raises(ValueError, match="not positive definite: its smallest eigenvalue is -5"):
        dc.marginal_std(S.tocsr(), np.zeros(300))


def test_a_sparse_covariance_is_dense_when_it_fits():
    import diffops_core as dc

    S, dense = _arrowhead(n=50, k=3)
    np.testing.assert_allclose(dc.covariance(S), np.linalg.inv(dense), rtol=1e-10)


def test_sparse_hessian_then_sigma_equals_the_dense_path():
    import diffops_core as dc

    def f(p):  # a flat field beside three globals: an arrowhead Hessian
        model = (
            p["g"][0] * jnp.exp(-(jnp.linspace(-1, 1, 40) ** 2) * p["g"][1]) * p["flat"] + p["g"][2]
        )
        data = jnp.linspace(1.0, 2.0, 40)
        return jnp.sum(model - data * jnp.log(model)) + 0.5 * jnp.sum((p["flat"] - 1) ** 2)

    x = {"flat": jnp.ones(40, jnp.float32), "g": jnp.asarray([1.5, 0.5, 0.2], jnp.float32)}
    H, _ = dc.sparse_hessian(f, x)
    assert dc.hessian_sparsity(f, x).ncolors == 4  # three globals, and all pixels as one
    dense, _ = dc.hessian(f, x)
    np.testing.assert_allclose(dc.marginal_std(H, x, damping=5.0)["flat"],
                               dc.marginal_std(np.asarray(dense, np.float64), x, damping=5.0)["flat"], rtol=1e-4)  # fmt: skip


def test_sparse_gauss_newton_equals_the_dense_fisher_matrix():
    import diffops_core as dc

    def residuals(p):  # each pixel's residual: its own flat value and two globals
        model = p["g"][0] * jnp.exp(-(jnp.linspace(-1, 1, 30) ** 2) * p["g"][1]) * p["flat"]
        return {"pixels": model - jnp.linspace(1.0, 2.0, 30), "prior": (p["flat"] - 1) / 0.1}

    x = {"flat": jnp.ones(30, jnp.float32), "g": jnp.asarray([1.5, 0.5], jnp.float32)}
    std = {"pixels": jnp.full(30, 0.2), "prior": jnp.ones(30)}
    G, _ = dc.sparse_gauss_newton(residuals, x, std=std)
    dense, _ = dc.gauss_newton(residuals, x, std=std)
    np.testing.assert_allclose(G.toarray(), np.asarray(dense), rtol=1e-5, atol=1e-4)
    found = dc.gauss_newton_sparsity(residuals, x, std=std)
    assert found.ncolors == 3 and found.mode == "star"  # two globals, and all pixels as one
    sigma = dc.marginal_std(G, x)
    expected = dc.marginal_std(np.asarray(dense, np.float64), x)
    np.testing.assert_allclose(sigma["flat"], expected["flat"], rtol=1e-4)


def test_a_dense_pattern_runs_the_dense_path():
    import diffops_core as dc

    W = jnp.linspace(-1, 1, 5 * N).reshape(5, N)
    f = lambda v: jnp.sum(jnp.tanh(W @ v) ** 2)  # every parameter couples to every other
    x = jnp.linspace(0.1, 0.5, N)
    found = dc.hessian_sparsity(f, x)
    assert found.dense and found.mode == "dense"
    H, _ = dc.hessian(f, x, sparsity="auto")
    np.testing.assert_allclose(np.asarray(H), np.asarray(jax.hessian(f)(x)), rtol=1e-5, atol=1e-6)
    S, _ = dc.sparse_hessian(f, x)
    np.testing.assert_allclose(S.toarray(), np.asarray(jax.hessian(f)(x)), rtol=1e-5, atol=1e-6)


def test_gauss_newton_takes_sparsity_auto():
    import diffops_core as dc

    def residuals(p):
        return jnp.concatenate([p[1:] * p[:-1], jnp.sin(p[:3]) * p[0]])

    x = jnp.linspace(0.2, 1.0, N)
    dense, _ = dc.gauss_newton(residuals, x, std=0.5)
    auto, _ = dc.gauss_newton(residuals, x, std=0.5, sparsity="auto")
    np.testing.assert_allclose(np.asarray(auto), np.asarray(dense), rtol=1e-5, atol=1e-5)
    cov = np.eye(N + 2) * 0.25 + 0.01  # mixes every residual: G is dense
    mixed, _ = dc.gauss_newton(residuals, x, cov=cov, sparsity="auto")
    np.testing.assert_allclose(np.asarray(mixed), np.asarray(dc.gauss_newton(residuals, x, cov=cov)[0]),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    assert dc.gauss_newton_sparsity(residuals, x, cov=cov).dense


def test_a_steady_sparse_call_traces_f_once():
    import diffops_core as dc

    calls = []

    def f(v):
        calls.append(1)  # runs once per trace
        return jnp.sum((v[1:] - v[:-1] ** 2) ** 2)

    x = jnp.linspace(0.1, 1.0, N)
    dc.hessian(f, x, sparsity="auto")  # detects, colours, compiles
    calls.clear()
    dc.hessian(f, x, sparsity="auto")
    assert len(calls) == 1  # the identity's trace; detection and kernels are cached


@pytest.mark.parametrize("two_stage", [False, True], ids=["one-program", "two-stage"])
@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
def test_a_first_call_compiles_its_products_once_while_detecting(x64, two_stage, caplog,
                                                                 monkeypatch):  # fmt: skip
    """The products' call has a fixed width and takes the colouring as traced
    arguments, so a first call compiles it in a thread while the pattern is
    detected, under the caller's x64 setting (a context's setting is its
    thread's alone: compiled at another, the call would compile again). From
    `_TWO_STAGE_FROM` parameters on, the linearisation and the products per
    chunk are two programs, both compiled there."""
    import logging

    import diffops_core as dc
    import diffops_core.sparse._products as products

    if two_stage:
        monkeypatch.setattr(products, "_TWO_STAGE_FROM", 1)
    scale = 1.5 + x64 + 2 * two_stage  # a program of its own in each case

    def f(v):
        return jnp.sum(jnp.sin(v[1:] * v[:-1]) * scale) + jnp.sum(v**4)

    jax.config.update("jax_log_compiles", True)
    try:
        with jax.enable_x64(x64), caplog.at_level(logging.DEBUG, logger="jax"):
            x = jnp.linspace(0.1, 1.0, 300)
            H, _ = dc.sparse_hessian(f, x)
            runs = [r.threadName for r in caplog.records
                    if "XLA compilation of jit(run)" in r.getMessage()
                    or "XLA compilation of jit(_lin)" in r.getMessage()]  # fmt: skip
            np.testing.assert_allclose(H.toarray(), np.asarray(jax.hessian(f)(x)), rtol=1e-5,
                                       atol=1e-6)  # fmt: skip
            x2 = jax.block_until_ready(x * 1.01)
            caplog.clear()
            dc.sparse_hessian(f, x2)
            again = [r for r in caplog.records if "XLA compilation of" in r.getMessage()]
    finally:
        jax.config.update("jax_log_compiles", False)
    assert runs == ["diffops-compile-ahead"] * (1 + two_stage)
    assert again == []


def test_a_first_call_compiles_nothing_op_by_op(caplog):
    """A first call compiles its products' program and detection's fold, and
    nothing op by op: x's flattening (a reshape per leaf and a
    concatenation), the colours' conversion to int32 and the probes' staging
    each compiled op by op on the device before (70 ms of the PSF demo's first
    call, on its critical path)."""
    import logging

    import diffops_core as dc

    def f(p):
        v = jnp.concatenate([p["a"].ravel(), p["b"]])
        return jnp.sum(jnp.cos(v[1:] * v[:-1]) * 1.75) + jnp.sum(v**4)

    rng = np.random.default_rng(3)
    x = {"a": rng.random((6, 20), dtype=np.float32), "b": rng.random(40, dtype=np.float32)}
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.DEBUG, logger="jax"):
            H, unravel = dc.sparse_hessian(f, x)
            compiled = [r.getMessage().split("jit(")[1].split(")")[0] for r in caplog.records
                        if "Finished XLA compilation of" in r.getMessage()]  # fmt: skip
    finally:
        jax.config.update("jax_log_compiles", False)
    # detection's fold of what depends on constants alone (the gradient's seeds here)
    # is one program of its own
    assert [name for name in compiled if name != "jaxpr_as_fun"] == ["run"]
    flat = jax.flatten_util.ravel_pytree(x)[0]
    dense = jax.hessian(lambda z: f(unravel(z)))(flat)
    np.testing.assert_allclose(H.toarray(), np.asarray(dense), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["hessian", "gauss_newton", "jacobian"])
def test_products_linearised_once_per_call_equal_the_dense_matrix(kind, monkeypatch):
    # the two-stage products (one linearisation, the linear map applied per chunk
    # of 16), forced at a small n: three chunks of colours and probes
    import diffops_core as dc
    import diffops_core.sparse._products as products

    monkeypatch.setattr(products, "_TWO_STAGE_FROM", 1)
    k = 40
    x = jnp.linspace(0.2, 1.3, 2 * k, dtype=jnp.float32)
    band = lambda v: v[2:] * v[1:-1] - jnp.sin(v[:-2]) + v[0] * v[-1]  # a band and two globals
    if kind == "hessian":
        f = lambda v: jnp.sum(band(v) ** 2) + jnp.sum(v[::3] ** 3)
        got, dense = dc.sparse_hessian(f, x)[0], jax.hessian(f)(x)
    elif kind == "gauss_newton":
        got, dense = dc.sparse_gauss_newton(band, x)[0], jax.jacfwd(band)(x).T @ jax.jacfwd(band)(x)
    else:
        got, dense = dc.sparse_jacobian(band, x)[0], jax.jacfwd(band)(x)
    np.testing.assert_allclose(got.toarray(), np.asarray(dense), rtol=2e-5, atol=2e-5)


def _host_cases():
    rng = np.random.default_rng(5)
    big = jnp.asarray(rng.integers(-(2**31), 2**31 - 1, (4, 6)), jnp.int32)
    small = jnp.asarray(rng.integers(0, 255, (4, 6)), jnp.uint8)
    signed = jnp.asarray([[-128, 127, 5, -3, 0, 1]] * 4, jnp.int8)
    floats = jnp.asarray(rng.standard_normal((4, 6)) * 1e5, jnp.float32).at[0, 0].set(jnp.nan)
    return [
        (
            lambda a, b: (a + b, a * b, a - b, -a, jnp.maximum(a, b), jnp.minimum(a, b)),
            big,
            big[::-1] * 3,
        ),
        (lambda a, b: (a - b, a * b, a & b, a | b, a ^ b, ~a), small, small[::-1]),
        (lambda a, b: (-a, a * a, a < b, a == b), signed, signed[:, ::-1]),
        (lambda a, b: (a < b, a >= b, a != b, a == a, jnp.where(a > 0, a, b)), floats, -floats),
        (
            lambda a, b: (
                a.astype(jnp.float16),
                a.astype(jnp.bfloat16),
                b.astype(jnp.float32),
                (a > 0).astype(jnp.int32),
                b.astype(jnp.int8),
            ),
            floats,
            big,
        ),  # fmt: skip
        (
            lambda a, b: (
                a.T,
                a.reshape(3, 8),
                a[1:4:2, ::3],
                jnp.concatenate([a, b.astype(a.dtype)]),
                a[::-1, ::-1],
                jnp.broadcast_to(a[:, None, :], (4, 5, 6)),
                lax.iota(jnp.int32, 7),
                jnp.stack(jnp.unstack(a, axis=1)),
                jnp.stack([a, a * 2], axis=1),
                *lax.split(a, (1, 3), axis=0),
                a[None, :, :, None].squeeze(),
                lax.select_n(a % 3, a, a + 1, a * 2),
            ),
            big,
            small,
        ),  # fmt: skip
    ]


def _each_equation(closed, args):
    """``(eqn, its inputs' values, its outputs' values)`` of each equation of a
    closed jaxpr at ``args``, each output computed by the primitive (XLA)."""
    env = dict(zip(closed.jaxpr.constvars, closed.consts, strict=True))
    env.update(zip(closed.jaxpr.invars, args, strict=True))
    read = lambda v: v.val if isinstance(v, jax.extend.core.Literal) else env[v]
    for eqn in closed.jaxpr.eqns:
        vals = [read(v) for v in eqn.invars]
        outs = eqn.primitive.bind(*vals, **eqn.params)
        outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
        yield eqn, vals, outs


@pytest.mark.parametrize("case", range(6))
def test_constants_evaluated_on_the_host_are_xla_s_bit_for_bit(case):
    """Detection folds constants with numpy where that is exact (`_host`): each
    such equation's numpy result must be the primitive's own, bits and dtype."""
    from diffops_core.sparse.detect import _host

    f, *args = _host_cases()[case]
    checked = 0
    for eqn, vals, outs in _each_equation(jax.make_jaxpr(f)(*args), args):
        if _host.exact(eqn):
            for mine, theirs in zip(_host.evaluate(eqn, vals), outs, strict=True):
                assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, eqn
                bits = lambda a: np.ascontiguousarray(a).view(np.uint8)
                np.testing.assert_array_equal(bits(mine), bits(np.asarray(theirs)))
            checked += 1
        else:  # float arithmetic and float-to-integer casts stay XLA's
            name = eqn.primitive.name
            assert (
                name in ("convert_element_type", "rem", "pjit", "jit")
                or eqn.outvars[0].aval.dtype.kind == "f"
                or name not in _host._EXACT
            ), eqn
    assert checked >= 4


def test_a_constant_unstack_is_folded_without_a_compile(caplog):
    """A defect: SBRYBND's detection folded an ``unstack`` of 100 constants with
    XLA, whose compile took 1.7 s of its 2.7 s. Folded by numpy, it compiles
    nothing, and the gather it feeds stays exact."""
    import logging

    index = np.arange(100) * 7 % 50

    def f(v):
        parts = jnp.unstack(jnp.asarray(index))
        return sum(v[i] * v[i + 1] for i in parts[::9])

    x = jnp.linspace(0.1, 1.0, 60)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            pattern = hessian_pattern(f, x)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [
        r.getMessage() for r in caplog.records if "Compiling jit(unstack)" in r.getMessage()
    ]
    truth = np.asarray(jax.hessian(f)(x)) != 0
    np.testing.assert_array_equal(pattern.toarray(), truth)
    assert compiled == []


def _fold_compiles(caplog, detect) -> tuple:
    """``detect()``'s result and how many programs of folded constants it compiled."""
    import logging

    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax"):
            caplog.clear()
            found = detect()
    finally:
        jax.config.update("jax_log_compiles", False)
    return found, sum("XLA compilation of jit(jaxpr_as_fun)" in r.getMessage()
                      for r in caplog.records)  # fmt: skip


def test_folded_constants_no_rule_reads_compile_nothing(caplog):
    """A defect: detection compiled every fold of constants (the PSF demo's: 0.16 s
    beside the products' compile on a first call) though no rule read them. Now
    a fold is computed when a rule first reads one of its values."""
    c = np.linspace(0.1, 2.0, 30, dtype=np.float32)

    def f(v):
        w = jnp.exp(jnp.asarray(c)) * 2.0 + jnp.cos(jnp.asarray(c)) ** 3  # constants only
        return jnp.sum(jnp.sin(v + w) ** 2) + jnp.sum(v[1:] * v[:-1])

    x = jnp.linspace(0.1, 1.0, 30, dtype=jnp.float32)
    pattern, compiles = _fold_compiles(caplog, lambda: hessian_pattern(f, x))
    assert compiles == 0
    np.testing.assert_array_equal(pattern.toarray(), np.asarray(jax.hessian(f)(x)) != 0)


def test_folded_constants_a_rule_reads_keep_their_zeros(caplog):
    # two folded factors with zeros where their masks are, computed by XLA (not
    # on the host): the first read computes its own equations, the second the
    # whole fold; both factors' zeros make the pattern exact, and a third
    # folded value no rule reads changes nothing
    c = np.linspace(0.1, 2.0, 40, dtype=np.float32)
    mask_a, mask_b = (np.arange(40) % 3 == 0), (np.arange(40) % 4 == 1)

    def f(v):
        cc = jnp.asarray(c)
        a = jnp.exp(cc) * jnp.asarray(mask_a, jnp.float32)
        b = jnp.log(cc + 1.0) * jnp.asarray(mask_b, jnp.float32)
        unread = jnp.tanh(cc) * 3.0
        return jnp.sum((v * a) ** 2 * v[::-1]) + jnp.sum(jnp.sin(v * b)) + jnp.sum(v + unread)

    x = jnp.linspace(0.3, 1.7, 40, dtype=jnp.float32)
    pattern, compiles = _fold_compiles(caplog, lambda: hessian_pattern(f, x))
    assert compiles <= 2
    truth = np.zeros((40, 40), bool)
    for seed in range(3):  # the union over points: entries that vanish at one by chance
        z = x * (1 + 0.1 * seed)
        truth |= np.asarray(jax.hessian(f)(z)) != 0
    np.testing.assert_array_equal(pattern.toarray(), truth)


def test_a_folded_value_made_by_most_of_its_fold_compiles_the_fold_once(caplog):
    # a defect: a first read whose own equations were most of the fold compiled
    # them, then the whole fold at the next read (HAIFAM: 2.5 s -> 3.9 s)
    c = np.linspace(0.1, 2.0, 40, dtype=np.float32)

    def f(v):
        cc = jnp.asarray(c)
        a = jnp.exp(jnp.sin(cc) * 1.5 + jnp.cos(cc) ** 2) * (jnp.arange(40) % 3 == 0)
        b = jnp.log(cc + 1.0) * (jnp.arange(40) % 4 == 1)
        return jnp.sum((v * a) ** 2 * v[::-1]) + jnp.sum(jnp.sin(v * b))

    x = jnp.linspace(0.3, 1.7, 40, dtype=jnp.float32)
    pattern, compiles = _fold_compiles(caplog, lambda: hessian_pattern(f, x))
    assert compiles == 1
    truth = np.zeros((40, 40), bool)
    for seed in range(3):
        truth |= np.asarray(jax.hessian(f)(x * (1 + 0.1 * seed))) != 0
    np.testing.assert_array_equal(pattern.toarray(), truth)


def test_a_folded_value_reads_the_same_every_time():
    # a value computed alone (its own equations) and then again with the whole
    # fold may differ in its last bits (another program): a rule that read it
    # once must read the same after, or two rules see two values of one constant
    import importlib

    interp = importlib.import_module("diffops_core.sparse.detect._interpret")

    class Small(interp._Fold):  # one output's own equations, compiled: 1.0
        def __init__(self):
            super().__init__([None], ["a"], ["u"])

        def __call__(self, *values):
            return [np.float32(1.0)]

    class Fold(interp._Fold):  # the whole fold, compiled: 1.0 + 1 ulp, then 3.0
        def __init__(self):
            super().__init__([None] * 8, ["a"], ["u", "v"])

        def cone(self, index):
            return ["a"], Small()

        def __call__(self, *values):
            return [np.nextafter(np.float32(1.0), np.float32(2.0)), np.float32(3.0)]

    batch = interp._FoldBatch(Fold(), [np.float32(0.0)])
    first = batch.value(0)
    assert batch.value(1) == np.float32(3.0)  # a compiled read after: the whole fold
    assert batch.value(0) == first == np.float32(1.0)


def _ieee_values(dtype) -> np.ndarray:
    """Floats of every kind IEEE 754 has: tiny and huge normals, zeros of both
    signs, subnormals, infinities, a NaN, and ordinary values."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(11)
    special = [0.0, -0.0, 1.0, -1.0, 3.0, 6.0, 1 / 3, info.tiny, -info.tiny, info.tiny * 4,
               info.smallest_subnormal, -info.smallest_subnormal * 5, info.max, -info.max,
               np.sqrt(info.max), np.sqrt(info.tiny), np.inf, -np.inf, np.nan]  # fmt: skip
    ordinary = rng.standard_normal(45) * 10.0 ** rng.integers(-12, 12, 45)
    return np.concatenate([special, ordinary]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_float_equation_on_the_host_is_xla_s_alone_or_declined(dtype):
    """Where detection evaluates a fold op by op (thousands of scalars:
    VANDANMSLS's B-spline values, 0.4 s through XLA's dispatch), IEEE 754's
    operations go to numpy: each result is XLA's for that equation alone (its
    operands arguments) bit for bit, or the host declines (None) where a
    subnormal operand or result would be flushed to zero by XLA."""
    with jax.enable_x64(dtype == np.float64):
        _check_one_op(dtype)


def _check_one_op(dtype) -> None:
    from diffops_core.sparse.detect import _host

    values = _ieee_values(dtype)
    a, b = np.repeat(values, values.size), np.tile(values, values.size)
    ops = [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b,
           lambda a, b: -a]  # fmt: skip
    ops += [lambda a, b, y=y: lax.integer_pow(a, y) for y in (1, 2, 3, 5, 7)]
    bits = lambda x: np.ascontiguousarray(x).view(np.uint8)
    declined = agreed = 0
    for op in ops:
        for x, y in ((a, b), (a[:1], b[:1]), (a[5:6], b[7:8])):  # arrays, and scalars' shapes
            (eqn,) = jax.make_jaxpr(op)(x, y).jaxpr.eqns
            args = [x, y][: len(eqn.invars)]
            mine = _host.one_op(eqn, args)
            if mine is None:
                declined += 1
                continue
            agreed += 1
            theirs = eqn.primitive.bind(*args, **eqn.params)
            assert mine[0].dtype == np.asarray(theirs).dtype
            np.testing.assert_array_equal(bits(mine[0]), bits(np.asarray(theirs)))
    # the subnormals make every whole array decline; the scalars are done on the host
    assert declined >= len(ops) and agreed >= 2 * len(ops)
    for op in (lambda a, b: lax.integer_pow(a, -2), lambda a, b: a < b, lambda a, b: jnp.exp(a)):
        (eqn,) = jax.make_jaxpr(op)(a[:1], b[:1]).jaxpr.eqns  # not such an equation
        assert _host.one_op(eqn, [a[:1], b[:1]][: len(eqn.invars)]) is None


def test_a_zero_float_arithmetic_makes_is_xla_s_not_the_host_s():
    """A defect (found by the CUTEst baselines, never released): with IEEE
    754's ``+ - * /`` folded by numpy, OET2's ``jnp.linspace(-0.5, 0.5, 501)``
    held an exact 0.0 where XLA's compiled program (a division by a constant
    made a product with its reciprocal) computes 1e-17, and the pattern lost
    the two Jacobian entries that multiply it: unsound. Float arithmetic
    stays XLA's."""

    def f(q):
        r = jnp.linspace(-0.5, 0.5, 501)
        return q[0] - q[1] * jnp.exp(q[2] * r) + 1.0 / (1.0 + r)

    x = jnp.asarray([0.3, -1.2, 0.7])
    pattern = jacobian_pattern(f, x).toarray()
    truth = np.zeros_like(pattern)
    for scale in (1.0, 1.3, 0.6):
        truth |= np.asarray(jax.jit(jax.jacfwd(f))(x * scale)) != 0
    assert not (truth & ~pattern).any()  # sound: every nonzero inside the pattern


def test_detection_differentiates_only_what_depends_on_x(monkeypatch):
    """A defect: detection traced the Hessian-vector product of the whole
    objective, its constants' arithmetic included: VANDANMSLS computes 220
    B-spline values of its data in 7,280 of its 8,175 equations, which JAX's
    AD traced forward, linearised and transposed, and which the fold then
    evaluated (2.1 s in all). Now what depends on constants alone is split
    off before differentiating and folded as before: the B-spline's zeros
    still make the pattern exact."""
    knots = np.linspace(-1.0, 1.0, 12)
    traced = []
    make_jaxpr = jax.make_jaxpr
    monkeypatch.setattr(jax, "make_jaxpr", lambda fn, *a, **k: (
        lambda *args: traced.append(make_jaxpr(fn, *a, **k)(*args)) or traced[-1]))  # fmt: skip

    def f(v):
        basis = []
        for k in knots:  # scalar arithmetic on constants, as sif2jax writes it
            t = jnp.asarray(k) * 1.5 - 0.25
            basis.append(jnp.where(t > 0, t * t * t / 6.0, 0.0))
        b = jnp.stack(basis)
        return jnp.sum((v * b) ** 2) + jnp.sum(v[1:] * v[:-1])

    x = jnp.linspace(0.3, 1.2, 12)
    pattern = hessian_pattern(f, x)

    def names(jaxpr) -> list:  # every primitive, nested calls' included
        subs = [getattr(p, "jaxpr", p) for e in jaxpr.eqns for p in e.params.values()]
        return [e.primitive.name for e in jaxpr.eqns] + [
            n for sub in subs if hasattr(sub, "eqns") for n in names(sub)
        ]

    product = traced[-1].jaxpr
    assert "div" not in names(product) and "gt" not in names(product)  # constants' ops only
    truth = np.zeros((12, 12), bool)
    for scale in (1.0, 1.3, 0.7):
        truth |= np.asarray(jax.hessian(f)(x * scale)) != 0
    np.testing.assert_array_equal(pattern.toarray(), truth)
    assert not truth[0, 0] and truth[-1, -1]  # a zero of the basis, and a nonzero


def _scatters():
    """``.at[].set`` as models write it, each with the result the host must
    give (XLA's) or None where it must decline."""
    a = np.arange(60, dtype=np.float64).reshape(6, 10) * 0.5 - 3.0
    col = np.linspace(-1.0, 1.0, 6)
    idx = np.asarray([3, 0, 5], np.int32)
    return (
        [
            (lambda a: a.at[:, 4].set(col), True),  # HAIFAM's kind
            (lambda a: a.at[2].set(a[0] * 2), True),
            (lambda a: a.at[idx, 1:4].set(-a[:3, :3]), True),
            (lambda a: a.at[1:5:2, ::3].set(7.0), True),
            (lambda a: a.at[idx, idx].set(1.5), True),
            (lambda a: a.ravel().at[jnp.asarray([59, 0, 17])].set(9.0, unique_indices=True), True),
            (lambda a: a.at[jnp.asarray([1, 1])].set(a[:2]), False),  # one element written twice
            (lambda a: a.at[jnp.asarray([2, 9])].set(0.0, mode="drop"), False),  # out of bounds
            (lambda a: a.at[jnp.asarray([8])].set(0.0, mode="clip"), False),  # clamped
        ],
        a,
    )


@pytest.mark.parametrize("case", range(9))
def test_a_scatter_on_the_host_is_xla_s_or_declined(case):
    """A constant ``.at[].set`` is folded on the host when each update lands
    inside the operand on an element of its own (HAIFAM's 300 scatters
    compiled for 2 s of its detection before): XLA's result bit for bit; out of
    bounds (clamped, dropped, or undefined by mode) or written twice, declined."""
    from diffops_core.sparse.detect import _host

    cases, a = _scatters()
    f, hosted = cases[case]
    seen = 0
    for eqn, vals, outs in _each_equation(jax.make_jaxpr(f)(a), [a]):
        if eqn.primitive.name != "scatter":
            continue
        seen += 1
        assert _host.exact(eqn)
        mine = _host.evaluate(eqn, vals)
        assert (mine is not None) == hosted
        if mine is not None:
            bits = lambda x: np.ascontiguousarray(x).view(np.uint8)
            assert mine[0].dtype == np.asarray(outs[0]).dtype
            np.testing.assert_array_equal(bits(mine[0]), bits(np.asarray(outs[0])))
    assert seen == 1
