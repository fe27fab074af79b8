"""Sparsity on the primitives our users' models emit (issue 24, part A):
convolutions of every kind, the reduce_window family, unstack, tile,
dynamic_update_slice, checkpoint, cumulative ops, triangular solves, sorts and
top_k, jit closures, products of `jax.experimental.sparse` BCOO matrices. Each detected pattern holds every nonzero `jax.jacfwd` /
`jax.hessian` give at random points, and equals their union where the
structure is exact (each case failed before: dense, or a crash)."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.scipy.signal as jss
import numpy as np
import pytest
from jax import lax
from jax.experimental import sparse as jsparse

import diffops_core as dc
from diffops_core.internal import hessian_pattern, jacobian_pattern
from diffops_core.sparse.detect import WARNED

N = 24
W = jnp.asarray(np.random.default_rng(0).random(N) + 0.5, jnp.float32)
KERNEL = jnp.asarray([0.5, 2.0, 1.0], jnp.float32)
_RNG = np.random.default_rng(3)
SPARSE = jnp.asarray(np.where(_RNG.random((N, N)) < 0.1, 1.0 + _RNG.random((N, N)), 0.0),
                     jnp.float32)  # fmt: skip
SPARSE3 = jnp.asarray(np.where(_RNG.random((2, 6, 12)) < 0.2, 1.0, 0.0), jnp.float32)
BCOO = jsparse.BCOO.fromdense(SPARSE.at[3].set(0.0).at[:, 7].set(0.0))  # (CMPC's constraints)
BCOO_ZERO = jsparse.BCOO((BCOO.data.at[::3].set(0.0), BCOO.indices), shape=BCOO.shape)
#: two entries stored twice (summed where made dense)
BCOO_TWICE = jnp.concatenate([BCOO.indices, BCOO.indices[:2]])


def _bcoo_of(v, twice=False):
    """A BCOO matrix whose data depend on ``v`` (BCOO's indices, or with two twice)."""
    where = BCOO_TWICE if twice else BCOO.indices
    data = jnp.resize(v, where.shape[0]) * jnp.resize(BCOO.data, where.shape[0])
    return jsparse.BCOO((data, where), shape=BCOO.shape)


def _conv(v, shape, kernel_shape, **kw):
    kernel = jnp.asarray(1.0 + np.arange(np.prod(kernel_shape)).reshape(kernel_shape) % 3,
                         jnp.float32)  # fmt: skip
    return lax.conv_general_dilated(v.reshape(shape), kernel, **kw).ravel()


def _tri(v, left, lower, transpose):
    a = jnp.tril(jnp.ones((6, 6))) + jnp.eye(6)
    a = (a if lower else a.T) * (1.0 + 0.1 * jnp.arange(36.0).reshape(6, 6))
    b = v.reshape((6, 4) if left else (4, 6))
    return lax.linalg.triangular_solve(a, b, left_side=left, lower=lower,
                                       transpose_a=transpose).ravel()  # fmt: skip


#: (name, f of a flat (24,) x, whether the pattern must equal the union of the
#: nonzeros at random points: the structure is exact)
JACOBIANS = [
    ("convolve same", lambda v: jnp.convolve(v, KERNEL, mode="same"), True),
    ("convolve full", lambda v: jnp.convolve(v, KERNEL), True),
    (
        "convolve2d",
        lambda v: jss.convolve2d(v.reshape(4, 6), jnp.ones((3, 3)), mode="same").ravel(),
        True,
    ),  # fmt: skip
    ("kernel from x", lambda v: jnp.convolve(v[:20], v[20:], mode="valid"), True),
    (
        "strided",
        lambda v: _conv(v, (1, 1, 24), (1, 1, 3), window_strides=(2,), padding="VALID"),
        True,
    ),  # fmt: skip
    (
        "lhs dilation",
        lambda v: _conv(
            v, (1, 1, 24), (1, 1, 3), window_strides=(1,), padding=[(1, 1)], lhs_dilation=(2,)
        ),
        True,
    ),  # fmt: skip
    (
        "rhs dilation",
        lambda v: _conv(
            v, (1, 1, 24), (1, 1, 3), window_strides=(1,), padding="SAME", rhs_dilation=(2,)
        ),
        True,
    ),  # fmt: skip
    (
        "negative padding",
        lambda v: _conv(v, (1, 1, 24), (1, 1, 3), window_strides=(1,), padding=[(-2, 1)]),
        True,
    ),  # fmt: skip
    (
        "feature groups",
        lambda v: _conv(
            v, (1, 2, 12), (2, 1, 3), window_strides=(1,), padding="SAME", feature_group_count=2
        ),
        True,
    ),  # fmt: skip
    (
        "channels",
        lambda v: _conv(v, (1, 2, 12), (3, 2, 3), window_strides=(1,), padding="SAME"),
        True,
    ),  # fmt: skip
    (
        "batch groups",
        lambda v: _conv(
            v, (2, 1, 12), (2, 1, 3), window_strides=(1,), padding="SAME", batch_group_count=2
        ),
        True,
    ),  # fmt: skip
    (
        "NHWC",
        lambda v: _conv(
            v,
            (1, 4, 6, 1),
            (3, 3, 1, 1),
            window_strides=(1, 1),
            padding="SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ),
        True,
    ),  # fmt: skip
    (
        "3-D",
        lambda v: _conv(
            v, (1, 1, 2, 3, 4), (1, 1, 2, 2, 2), window_strides=(1, 1, 1), padding="SAME"
        ),
        True,
    ),  # fmt: skip
    (
        "transposed",
        lambda v: lax.conv_transpose(
            v.reshape(1, 24, 1), jnp.ones((3, 1, 1)), (2,), "SAME"
        ).ravel(),
        True,
    ),  # fmt: skip
    ("kernel zeros", lambda v: jnp.convolve(v, jnp.array([1.0, 0.0, 1.0]), mode="same"), True),
    ("sum pool", lambda v: lax.reduce_window(v, 0.0, lax.add, (3,), (1,), "SAME"), True),
    (
        "avg pool 2x2",
        lambda v: lax.reduce_window(v.reshape(4, 6), 0.0, lax.add, (2, 2), (2, 2), "VALID").ravel(),
        True,
    ),  # fmt: skip
    ("max pool", lambda v: lax.reduce_window(v, -jnp.inf, lax.max, (3,), (2,), "VALID"), False),
    ("stack", lambda v: jnp.stack([v[:12] ** 2, v[12:] ** 3]).ravel(), True),
    ("tile", lambda v: jnp.tile(v[:6], 4) * v, True),
    ("dynamic_update_slice", lambda v: lax.dynamic_update_slice(v, v[:3] ** 2, (5,)), True),
    (
        "dynamic_update_slice clamped",
        lambda v: lax.dynamic_update_slice(v, v[:3] ** 2, (30,)),
        True,
    ),  # fmt: skip
    (
        "dynamic_update_slice unknown",
        lambda v: lax.dynamic_update_slice(v, v[:3] ** 2, (jnp.argmax(v).astype(jnp.int32) % 3,)),
        False,
    ),  # fmt: skip
    ("checkpoint", lambda v: jax.checkpoint(lambda u: jnp.sin(u) * u)(v), True),
    ("cumsum", jnp.cumsum, True),
    ("reverse cumsum", lambda v: lax.cumsum(v.reshape(4, 6), axis=1, reverse=True).ravel(), True),
    ("cumprod", lambda v: jnp.cumprod(v * 0.5 + 1.0), True),
    ("sort rows", lambda v: jnp.sort(v.reshape(4, 6), axis=1).ravel(), False),
    ("top_k rows", lambda v: lax.top_k(v.reshape(4, 6), 2)[0].ravel(), False),
    (
        "dynamic_slice unknown start",
        lambda v: lax.dynamic_slice(
            v.reshape(4, 6), (1, jnp.argmax(v).astype(jnp.int32) % 3), (2, 3)
        ).ravel(),
        False,
    ),  # fmt: skip
    ("jit closing over an array", jax.jit(lambda v: v * W), True),
    ("a constant sparse matrix", lambda v: SPARSE @ v, True),
    ("its transpose", lambda v: v @ SPARSE, True),
    (
        "a batched contraction with a sparse constant",
        lambda v: jnp.einsum("bcf,bc->bf", SPARSE3, v.reshape(2, 12)[:, :6]).ravel(),
        True,
    ),  # fmt: skip
    ("a diagonal constant", lambda v: jnp.diag(jnp.arange(24.0)) @ v, True),
    *[
        (
            f"jax.image.resize {method}, (4, 6) to {shape}",
            lambda v, method=method, shape=shape: jax.image.resize(
                v.reshape(4, 6), shape, method
            ).ravel(),
            True,
        )
        for method, shape in (
            ("linear", (8, 12)),
            ("nearest", (8, 12)),
            ("cubic", (3, 9)),  # down and up
            ("lanczos3", (8, 12)),
            ("linear", (2, 3)),  # down, antialiased
        )
    ],
    (
        "custom_linear_solve (cg), diagonal",
        lambda v: jax.scipy.sparse.linalg.cg(lambda u: 2.0 * u, v)[0],
        True,
    ),  # fmt: skip
    (
        "custom_linear_solve (cg), periodic rows",
        lambda v: jax.scipy.sparse.linalg.cg(
            lambda u: (
                4.0 * u
                + 0.5 * (jnp.roll(u.reshape(4, 6), 1, 1) + jnp.roll(u.reshape(4, 6), -1, 1)).ravel()
            ),
            v,
        )[0],
        True,
    ),  # fmt: skip
    (
        "lax.map, step by step",
        lambda v: lax.map(lambda i: v[i] * v[(i + 5) % N], jnp.arange(N)),
        True,
    ),  # fmt: skip
    ("BCOO @ v", lambda v: BCOO @ v, True),
    ("BCOO.T @ v", lambda v: BCOO.T @ v, True),
    ("v @ BCOO.T", lambda v: v @ BCOO.T, True),
    ("BCOO @ a matrix", lambda v: (BCOO @ jnp.stack([v, v**2], 1)).reshape(-1), True),
    ("BCOO with stored zeros @ v", lambda v: BCOO_ZERO @ v, True),
    (
        "BCOO of data from v",
        lambda v: (
            jsparse.BCOO((jnp.resize(v, BCOO.nse) * BCOO.data, BCOO.indices), shape=BCOO.shape)
            @ jnp.cos(v)
        ),
        True,
    ),  # fmt: skip
    ("BCOO of data from v, made dense", lambda v: _bcoo_of(v).todense().ravel(), True),
    (
        "BCOO with entries stored twice, made dense",
        lambda v: _bcoo_of(v, twice=True).todense().ravel(),
        True,
    ),  # fmt: skip
    (
        "BCOO's entries of an array from v",
        lambda v: jsparse.bcoo_extract(BCOO, jnp.outer(v, jnp.cos(v[::-1]))).data,
        True,
    ),  # fmt: skip
    ("BCOO of data from v, transposed", lambda v: _bcoo_of(v).T @ jnp.cos(v), True),
    (
        "BCOO with entries stored twice, sorted",
        lambda v: _bcoo_of(v, twice=True).sort_indices() @ jnp.cos(v),
        True,
    ),  # fmt: skip
    (
        "BCOO transposed, sorted, made dense",
        lambda v: _bcoo_of(v).T.sort_indices().todense().ravel(),
        True,
    ),  # fmt: skip
    *[
        (
            f"triangular_solve left={left} lower={lower} transpose={tr}",
            lambda v, left=left, lower=lower, tr=tr: _tri(v, left, lower, tr),
            True,
        )
        for left in (True, False)
        for lower in (True, False)
        for tr in (False, True)
    ],  # fmt: skip
]

HESSIANS = [
    (
        "lax.map of neighbours, step by step",
        lambda v: jnp.sum(lax.map(lambda i: v[i] * v[i + 1], jnp.arange(N - 1))) + jnp.sum(v**2),
        True,
    ),  # fmt: skip
    (
        "scan with a counter carry",
        lambda v: jnp.sum(lax.scan(lambda c, a: (c + 1.0, a**3 * c), 1.0, v)[1]),
        True,
    ),  # fmt: skip
    (
        "unstack (the gradient of a stack)",
        lambda v: jnp.sum(jnp.stack([v[:12] ** 2, v[12:] * v[:12]]) ** 2),
        True,
    ),  # fmt: skip
    ("convolution", lambda v: jnp.sum(jnp.convolve(v, KERNEL, mode="same") ** 3), True),
    (
        "max pool",
        lambda v: jnp.sum(lax.reduce_window(v, -jnp.inf, lax.max, (3,), (3,), "VALID") ** 2),
        False,
    ),  # fmt: skip
    ("checkpoint", lambda v: jnp.sum(jax.checkpoint(lambda u: jnp.sin(u) * u)(v) ** 2), True),
    ("BCOO least squares", lambda v: jnp.sum((BCOO @ v) ** 2) + jnp.sum(v**3), True),
    # not exact: an empty row of the matrix makes (B(v) sin v)[2] zero, a value of
    # x the tangent's pattern cannot see, so d²/dv2² of cos(v2) times it is kept
    ("BCOO of data from v, a form", lambda v: jnp.cos(v) @ (_bcoo_of(v) @ jnp.sin(v)), False),
    ("BCOO of data from v, made dense", lambda v: jnp.sum(_bcoo_of(v).todense() ** 2), True),
]


def _points(seed, count=3):
    rng = np.random.default_rng(seed)
    return [jnp.asarray(rng.normal(size=N) * 1.3 + 0.2, jnp.float32) for _ in range(count)]


def _compare(pattern, matrices, exact):
    pattern = pattern.toarray()
    true = np.zeros(pattern.shape, bool)
    for m in matrices:
        true |= np.asarray(m) != 0
    missing = true & ~pattern
    assert not missing.any(), np.argwhere(missing)[:5]  # sound
    if exact:
        np.testing.assert_array_equal(pattern, true)
    else:  # not dense: within the slices the structure allows
        assert pattern.sum() < pattern.size


CASES = [("jacobian", *c) for c in JACOBIANS] + [("hessian", *c) for c in HESSIANS]


@pytest.mark.parametrize("kind,name,f,exact", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_patterns_of_users_primitives(kind, name, f, exact):
    WARNED.clear()
    detect, truth = ((jacobian_pattern, jax.jacfwd) if kind == "jacobian" else
                     (hessian_pattern, jax.hessian))  # fmt: skip
    pattern = detect(f, jnp.zeros(N, jnp.float32))
    assert not WARNED, f"no rule for {sorted(WARNED)}"
    _compare(pattern, [truth(f)(x) for x in _points(len(name))], exact)


@pytest.mark.slow
def test_a_flat_field_behind_a_convolution_is_banded_and_exact():
    """A detector's charge diffusion: a 5x5 kernel over a 24x24 flat field times
    a global flux. The Hessian couples each pixel to the 9x9 square the
    kernel's autocorrelation reaches, and the flux to all: that and nothing
    more, in a few dozen products (it was dense: 577 of them), equal to
    jax.hessian."""
    side = 24
    kernel = jnp.asarray(np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0, jnp.float32)
    data = jnp.asarray(np.random.default_rng(1).random((side, side)), jnp.float32)

    def loss(p):
        image = jss.convolve2d(p["flat"].reshape(side, side) * p["flux"], kernel, mode="same")
        return jnp.sum((image - data) ** 2)

    x = {"flat": jnp.ones(side * side, jnp.float32), "flux": jnp.asarray(1.1, jnp.float32)}
    H, _ = dc.sparse_hessian(loss, x)
    found = dc.hessian_sparsity(loss, x)
    rows, cols = np.divmod(np.arange(side * side), side)
    near = (np.abs(rows[:, None] - rows[None, :]) <= 4) & (
        np.abs(cols[:, None] - cols[None, :]) <= 4
    )
    expected = np.ones((side * side + 1,) * 2, bool)
    expected[: side * side, : side * side] = near
    np.testing.assert_array_equal(found.pattern.toarray(), expected)
    assert found.mode == "star" and found.ncolors <= 100
    flat, unravel = jax.flatten_util.ravel_pytree(x)
    dense = np.asarray(jax.hessian(lambda v: loss(unravel(v)))(flat))
    np.testing.assert_allclose(H.toarray(), dense, rtol=1e-4, atol=1e-5)


def test_a_custom_jvp_closing_over_an_integer_array_is_detected():
    index = jnp.array([0, 2, 1, 3])

    @jax.custom_jvp
    def g(v):
        return v[index] * 2.0

    @g.defjvp
    def _g_jvp(primals, tangents):
        return g(primals[0]), tangents[0][index] * 2.0

    pattern = jacobian_pattern(lambda v: g(v[:4]), jnp.zeros(N, jnp.float32)).toarray()
    expected = np.zeros((4, N), bool)
    expected[np.arange(4), [0, 2, 1, 3]] = True
    np.testing.assert_array_equal(pattern, expected)


@pytest.mark.slow
def test_an_mft_optics_model_keeps_its_shared_sets_through_the_contractions():
    """A flat field times the PSF of a pupil with Zernike phases, propagated by
    matrix Fourier transforms (dLux's MFT): in the backward pass each
    contraction unites the whole flat field into every pupil element. It was
    spelled out once per element and went dense past the budget at 64x64; kept
    as one shared set, the Hessian is the arrowhead, in a few products."""
    npup, npix, nz = 32, 64, 4
    rng = np.random.default_rng(0)
    zern = jnp.asarray(rng.normal(size=(nz, npup, npup)), jnp.float32)
    u = jnp.linspace(-1, 1, npup)
    pupil = (u[:, None] ** 2 + u[None, :] ** 2 < 1).astype(jnp.float32)
    mft = jnp.exp(-2j * jnp.pi * jnp.outer(jnp.linspace(-3, 3, npix), u) * 4)
    data = jnp.asarray(rng.random((npix, npix)), jnp.float32)

    def loss(p):
        wavefront = pupil * jnp.exp(1j * jnp.tensordot(p["coeffs"], zern, 1))
        psf = jnp.abs(mft @ wavefront @ mft.T) ** 2
        return jnp.sum((p["flat"].reshape(npix, npix) * psf * p["flux"] - data) ** 2)

    x = {"flat": jnp.ones(npix * npix, jnp.float32), "coeffs": jnp.full(nz, 0.1, jnp.float32),
         "flux": jnp.asarray(1.0, jnp.float32)}  # fmt: skip
    found = dc.hessian_sparsity(loss, x)
    n = npix * npix + nz + 1
    expected = np.eye(n, dtype=bool)
    for globals_ in (slice(0, nz), slice(n - 1, n)):  # ravel order: coeffs, flat, flux
        expected[:, globals_] = expected[globals_, :] = True
    assert not found.dense and found.ncolors == nz + 2
    np.testing.assert_array_equal(found.pattern.toarray(), expected)
    H, _ = dc.sparse_hessian(loss, x, sparsity=found)
    flat, unravel = jax.flatten_util.ravel_pytree(x)
    grad = jax.grad(lambda v: loss(unravel(v)))
    for seed in (1, 2):  # against Hessian-vector products of jax (n = 4101: no dense H)
        v = jnp.asarray(np.random.default_rng(seed).standard_normal(n), jnp.float32)
        hvp = np.asarray(jax.jvp(grad, (flat,), (v,))[1])
        np.testing.assert_allclose(H @ np.asarray(v), hvp, rtol=1e-3, atol=1e-3 * np.abs(hvp).max())


def _lost_structure(v):
    """An anti-diagonal and a diagonal, whose structure detection cannot see
    once ``rev`` has no rule (it stands in for any primitive without one)."""
    return jnp.sum(v[::-1] * v) + jnp.sum(v**3)


def test_auto_says_so_when_it_falls_back_to_dense_because_detection_gave_up(monkeypatch):
    """The dense API with sparsity="auto" computes the same matrix, and warns,
    naming the primitive and the line, when detection gave up; a pattern seen
    whole and more than half full (nothing to save) is silent."""
    from diffops_core.sparse.detect import RULES

    monkeypatch.delitem(RULES, "rev")
    WARNED.discard("rev")
    x = jnp.linspace(0.1, 1.0, N, dtype=jnp.float32)
    with pytest.warns(dc.SparsityWarning, match=r"after rev at .*test_sparsity_coverage"):
        H, _ = dc.hessian(_lost_structure, x, sparsity="auto")
    np.testing.assert_allclose(np.asarray(H), np.asarray(jax.hessian(_lost_structure)(x)),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    WARNED.discard("rev")
    dense = lambda v: jnp.sum(v) ** 3  # every entry: seen whole, nothing to save
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dc.hessian(dense, x, sparsity="auto")


def test_a_known_pattern_is_given_coloured_and_checked():
    """Issue 24: Sparsity.from_pattern colours a pattern the user knows; the
    result equals jax.hessian / jacfwd; a pattern that misses entries is
    refused by the check; bad input is named."""
    import scipy.sparse as sp

    f = lambda v: jnp.sum((v[1:] - v[:-1] ** 2) ** 2)
    x = jnp.linspace(0.1, 1.0, N, dtype=jnp.float32)
    band = sp.diags_array([1.0, 1.0, 1.0], offsets=[-1, 0, 1], shape=(N, N))
    given = dc.Sparsity.from_pattern(band)
    assert given.mode == "star" and given.ncolors == 3
    H, _ = dc.sparse_hessian(f, x, sparsity=given)
    np.testing.assert_allclose(H.toarray(), np.asarray(jax.hessian(f)(x)), rtol=1e-5, atol=1e-5)
    upper = dc.Sparsity.from_pattern(np.triu(np.ones((N, N))) * (np.abs(
        np.subtract.outer(np.arange(N), np.arange(N))) <= 1))  # made symmetric  # fmt: skip
    assert (upper.pattern != given.pattern).nnz == 0
    with pytest.raises(ValueError, match="does not match products of random vectors"):
        dc.sparse_hessian(f, x, sparsity=dc.Sparsity.from_pattern(sp.identity(N)))
    g = lambda v: v[1:] * v[:-1]
    J, _ = dc.sparse_jacobian(g, x, sparsity=dc.Sparsity.from_pattern(
        sp.diags_array([1.0, 1.0], offsets=[0, 1], shape=(N - 1, N)), "jacobian"))  # fmt: skip
    np.testing.assert_allclose(J.toarray(), np.asarray(jax.jacfwd(g)(x)), rtol=1e-6)
    with pytest.raises(ValueError, match="must be square"):
        dc.Sparsity.from_pattern(np.ones((3, 4)))
    with pytest.raises(ValueError, match="kind must be"):
        dc.Sparsity.from_pattern(band, "hess")
    with pytest.raises(TypeError, match="pattern must be a scipy sparse matrix"):
        dc.Sparsity.from_pattern("band.npz")


@pytest.mark.slow  # about 20 s: jax.hessian and the dense path of the model compile
def test_the_mft_example_model_sparse_matrices_equal_jax_and_the_dense_path():
    """The benchmarks' dLux-shaped model (workflows/models/mft.py: spiders,
    Zernike phases, one MFT per star, a flat field): its Hessian is the
    arrowhead of the 21 globals beside the pixels, exact, and the sparse
    Hessian and Fisher matrix equal jax.hessian and the dense gauss_newton."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "workflows"))
    from models.mft import make_model

    loss, best_fit, _ = make_model(npix=12, npupil=16)
    x = jax.tree_util.tree_map(jnp.asarray, best_fit())
    flat, unravel = jax.flatten_util.ravel_pytree(x)
    n, pixels = flat.size, 12 * 12
    f = lambda v: loss(unravel(v))
    H, _ = dc.sparse_hessian(loss, x)
    dense = np.asarray(jax.hessian(f)(flat))
    assert H.nnz == (dense != 0).sum() == pixels + 2 * pixels * (n - pixels) + (n - pixels) ** 2
    scale = np.abs(dense).max()
    np.testing.assert_allclose(H.toarray(), dense, rtol=2e-3, atol=2e-5 * scale)
    G, _ = dc.sparse_gauss_newton(loss.residuals, x)
    reference = np.asarray(dc.gauss_newton(loss.residuals, x)[0])
    np.testing.assert_allclose(
        G.toarray(), reference, rtol=2e-3, atol=2e-5 * np.abs(reference).max()
    )
    assert dc.gauss_newton_sparsity(loss.residuals, x).ncolors == n - pixels + 1
