"""Sparse results that are never wrong: each case is a way a wrong matrix or σ
was once returned as checked (sound detection of clamped indexing, a check
with known power, NaN refused by name)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import diffops_core as dc

SEL = jnp.array([0, 3, 20])  # 20 is out of range for n = 12: clamped to 11


def _unsound(f, x) -> int:
    """Nonzeros of the true Hessian that the detected pattern misses."""
    pattern = dc.hessian_sparsity(f, x).pattern.toarray()
    return int((np.asarray(jax.hessian(f)(x)) != 0)[~pattern].sum())


def test_a_clamped_take_is_a_real_dependency():
    x = jnp.linspace(0.1, 1.2, 12, dtype=jnp.float32)
    f = lambda x: jnp.sum(jnp.take(x, SEL, mode="clip") ** 2) + 1e4 * x[5] ** 2
    H, _ = dc.sparse_hessian(f, x)
    assert float(H.toarray()[11, 11]) == float(jax.hessian(f)(x)[11, 11]) == 2.0


@pytest.mark.parametrize(
    "f",
    [
        lambda x: jnp.sum(x.at[SEL].get(mode="clip") ** 2),
        lambda x: jnp.sum(x[SEL] ** 2),  # PROMISE_IN_BOUNDS: XLA clamps
        lambda x: jnp.sum(jax.vmap(lambda i: lax.dynamic_index_in_dim(x, i))(SEL) ** 2),
        lambda x: jnp.sum(
            lax.gather(
                x,
                jnp.array([[10]]),  # a window of 4 from 10 runs past the end: starts at 8
                lax.GatherDimensionNumbers(
                    offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)
                ),
                slice_sizes=(4,),
                mode="clip",
            )
            ** 3
        ),
    ],
    ids=["at-get-clip", "promise-in-bounds", "vmap-dynamic-index", "gather-window-past-end"],
)
def test_clamped_gathers_are_detected_soundly(f):
    x = jnp.linspace(0.1, 1.2, 12, dtype=jnp.float32)
    assert _unsound(f, x) == 0


def test_a_fill_mode_take_reads_nothing_out_of_range():
    x = jnp.linspace(0.1, 1.2, 12, dtype=jnp.float32)
    f = lambda x: jnp.sum(jnp.take(x, SEL, mode="fill", fill_value=0.0) ** 2)
    pattern = dc.hessian_sparsity(f, x).pattern.toarray()
    assert not pattern[11, 11] and pattern[0, 0] and pattern[3, 3]


def _gain_model(dtype=jnp.float32):
    """Residuals of fluxes seen through binned gains, some bins out of range
    (clipped to the last gain), with priors: the realistic form."""
    rng = np.random.default_rng(1)
    ngain, nsrc, nobs = 20, 30, 400
    bins = jnp.asarray(rng.integers(0, ngain + 6, nobs))  # 6 of 26 bins out of range
    src = jnp.asarray(rng.integers(0, nsrc, nobs))
    gain = jnp.asarray(1 + 0.1 * rng.standard_normal(ngain), dtype)
    flux = jnp.asarray(10 + rng.standard_normal(nsrc), dtype)
    data = jnp.take(gain, bins, mode="clip") * flux[src] + jnp.asarray(
        0.05 * rng.standard_normal(nobs), dtype
    )

    def residuals(p):
        model = jnp.take(p["gain"], bins, mode="clip") * p["flux"][src]
        return jnp.concatenate([(model - data) / 0.05, (p["gain"] - 1) / 0.1])

    return residuals, {"gain": gain, "flux": flux}


def test_a_fisher_matrix_through_clipped_bins_is_exact_and_its_sigma_too():
    residuals, x = _gain_model()
    G, _ = dc.sparse_gauss_newton(residuals, x)
    dense, _ = dc.gauss_newton(residuals, x)
    np.testing.assert_allclose(G.toarray(), np.asarray(dense), rtol=1e-5, atol=1e-3)
    sigma = dc.marginal_std(G, x)["gain"]
    reference = dc.marginal_std(np.asarray(dense, np.float64), x)["gain"]
    np.testing.assert_allclose(sigma, reference, rtol=1e-3)
