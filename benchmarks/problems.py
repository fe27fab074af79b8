"""Benchmark problems, built from fixed seeds (same in every process).

Each `make_*` returns ``(f, x, description)``.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(_HERE), "workflows"))


def make_mlp():
    """MLP loss: inputs 32, hidden 64 (tanh), outputs 8, batch 4096, MSE; n = 2632."""
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    X = jax.random.normal(k[0], (4096, 32))
    Y = jax.random.normal(k[1], (4096, 8))
    params = {
        "W1": jax.random.normal(k[2], (32, 64)) * 0.2,
        "b1": jnp.zeros(64),
        "W2": jax.random.normal(k[3], (64, 8)) * 0.2,
        "b2": jnp.zeros(8),
    }

    def loss(p):
        h = jnp.tanh(X @ p["W1"] + p["b1"])
        return jnp.mean((h @ p["W2"] + p["b2"] - Y) ** 2)

    return loss, params, "MLP 32-64-8 tanh, batch 4096, MSE (n=2632)"


def make_psf():
    """The demo optical PSF fit (FFT-heavy): n = 4120."""
    from models import psf

    x = jax.tree_util.tree_map(jnp.asarray, psf.best_fit())
    return psf.loss, x, "PSF fit: Zernike + flat field + position + flux, FFT 128^2 (n=4120)"


def make_dense(n: int = 4096):
    """A dense Hessian: sum softplus(W x) + 0.5 |x|^2, W (512, n)."""
    W = jax.random.normal(jax.random.PRNGKey(7), (512, n)) / np.sqrt(n)
    x = jax.random.normal(jax.random.PRNGKey(8), (n,))

    def f(v):
        return jnp.sum(jax.nn.softplus(W @ v)) + 0.5 * jnp.sum(v**2)

    return f, x, f"dense: sum softplus(W x) + |x|^2/2, W 512x{n} (n={n})"


def make_wide(m: int = 64, n: int = 20000):
    """A wide Jacobian: tanh(A x) with A (m, n)."""
    A = jax.random.normal(jax.random.PRNGKey(9), (m, n)) / np.sqrt(n)
    x = jax.random.normal(jax.random.PRNGKey(10), (n,))
    return (lambda v: jnp.tanh(A @ v)), x, f"wide Jacobian: tanh(A x), A {m}x{n}"


def make_psf128():
    """The PSF fit at 128x128 pixels (n = 16408): a larger problem for a GPU."""
    from models.psf import make_model

    loss, best_fit, _ = make_model(npix=128)
    x = jax.tree_util.tree_map(jnp.asarray, best_fit())
    return loss, x, "PSF fit at 128x128 pixels (n=16408)"


PROBLEMS = {
    "mlp": make_mlp,
    "psf": make_psf,
    "psf128": make_psf128,
    "dense": make_dense,
    "wide": make_wide,
}
