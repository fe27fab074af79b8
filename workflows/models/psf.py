"""A small optical PSF fit: the kind of model whose Fisher matrix dLux users want.

A circular pupil with a Zernike phase screen is propagated to the focal plane by
an FFT; the PSF is shifted by a sub-pixel position (a pupil tilt), scaled by a
flux, multiplied by a per-pixel flat field and compared with a simulated image
through the Poisson negative log-likelihood. The Hessian of that loss at the
best fit is the Fisher information of the parameters.

Parameters (``best_fit()``): ``{"flat": (npix, npix), "flux": (), "position": (2,),
"zernike": (nzern,)}``; with the defaults npix=64, nzern=21: n = 4120.

Everything is built from fixed seeds, so driver and workers agree.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

OVERSAMPLE = 2  # the focal-plane FFT grid is OVERSAMPLE * npupil wide


def _noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order n and azimuthal frequency m of Noll index j (m < 0: sine term)."""
    n, rest = 0, j - 1
    while rest > n:
        n += 1
        rest -= n
    m = (-1) ** j * ((n % 2) + 2 * ((rest + ((n + 1) % 2)) // 2))
    return n, m


def zernike_basis(nterms: int, npupil: int):
    """Noll-ordered Zernike polynomials 2..nterms+1 (piston left out) on a unit disk,
    and the disk itself."""
    c = (np.arange(npupil) - (npupil - 1) / 2) / (npupil / 2)
    xx, yy = np.meshgrid(c, c)
    rho, theta = np.hypot(xx, yy), np.arctan2(yy, xx)
    inside = rho <= 1.0
    rho_in, theta_in = rho[inside], theta[inside]  # the terms are zero outside the disk
    powers: dict[int, np.ndarray] = {}  # each power of rho and each angular term once
    angulars: dict[int, np.ndarray] = {}
    basis = np.zeros((nterms, npupil, npupil))
    for i, j in enumerate(range(2, nterms + 2)):
        n, m = _noll_to_nm(j)
        radial = np.zeros_like(rho_in)
        for k in range((n - abs(m)) // 2 + 1):
            coef = (
                (-1) ** k
                * math.factorial(n - k)
                / (
                    math.factorial(k)
                    * math.factorial((n + abs(m)) // 2 - k)
                    * math.factorial((n - abs(m)) // 2 - k)
                )
            )
            p = n - 2 * k
            if p not in powers:
                powers[p] = rho_in**p
            radial += coef * powers[p]
        if m not in angulars:
            angulars[m] = np.cos(m * theta_in) if m >= 0 else np.sin(-m * theta_in)
        basis[i][inside] = radial * angulars[m]
    return basis, inside


def weighted_residuals(model_fn, data_np: np.ndarray, sigma_np: np.ndarray):
    """The residuals of an image model: the pixels' (model - data) / sqrt(expected
    counts), whose Gauss-Newton matrix is the Poisson Fisher information, and the
    priors the simulation drew from (the flat field's 2% scatter around 1, the
    Zernike coefficients' 0.05). Without them the data leave modes unconstrained
    (flux against the flat field's mean, piston, tip/tilt against position): the
    Fisher matrix alone is singular."""

    def residuals(params):
        model = model_fn(params)
        pixels = (model - jnp.asarray(data_np, model.dtype)) / jnp.asarray(sigma_np, model.dtype)
        return {
            "pixels": pixels,
            "flat_prior": (params["flat"] - 1.0) / 0.02,
            "zernike_prior": params["zernike"] / 0.05,
        }

    return residuals


def make_model(npix: int = 64, nzern: int = 21, npupil: int | None = None, seed: int = 0):
    """Build ``(loss, best_fit)`` for a detector of ``npix``^2 pixels and ``nzern``
    Zernike terms (n = npix^2 + nzern + 3 parameters)."""
    npupil = npupil or npix
    basis_np, aperture_np = zernike_basis(nzern, npupil)
    c = (np.arange(npupil) - (npupil - 1) / 2) / (npupil / 2)
    tilt_np = np.stack(np.meshgrid(c, c))  # (2, npupil, npupil): x and y tilt

    def psf_model(params):
        """Expected counts on the detector, shape (npix, npix)."""
        dtype = params["zernike"].dtype
        phase = jnp.tensordot(params["zernike"], jnp.asarray(basis_np, dtype), axes=1)
        # A shift of s focal-plane pixels is a pupil phase ramp of pi * s / OVERSAMPLE
        # per unit of normalised pupil radius (Fourier shift theorem).
        tilt = jnp.tensordot(params["position"], jnp.asarray(tilt_np, dtype), axes=1)
        wave = 2 * jnp.pi * phase + jnp.pi / OVERSAMPLE * tilt
        field = jnp.asarray(aperture_np, dtype) * jnp.exp(1j * wave)
        size = OVERSAMPLE * npupil
        pad = (size - npupil) // 2
        field = jnp.pad(field, ((pad, size - npupil - pad), (pad, size - npupil - pad)))
        intensity = jnp.abs(jnp.fft.fftshift(jnp.fft.fft2(field))) ** 2
        lo = (size - npix) // 2
        psf = intensity[lo : lo + npix, lo : lo + npix] / jnp.sum(intensity)
        return params["flux"] * psf * params["flat"] + 10.0

    def best_fit():
        """The parameters the data were simulated with (float32)."""
        rng = np.random.default_rng(seed)
        return {
            "flat": (1.0 + 0.02 * rng.standard_normal((npix, npix))).astype(np.float32),
            "flux": np.float32(1e6),
            "position": np.array([0.3, -0.2], dtype=np.float32),
            "zernike": (0.05 * rng.standard_normal(nzern)).astype(np.float32),
        }

    truth = jax.tree_util.tree_map(jnp.asarray, best_fit())
    rng = np.random.default_rng(seed + 1)
    expected_np = np.asarray(psf_model(truth))  # evaluated once: data and noise both use it
    data_np = rng.poisson(expected_np).astype(np.float32)

    def loss(params):
        """Poisson negative log-likelihood of the simulated image (up to a constant)."""
        model = psf_model(params)
        data = jnp.asarray(data_np, model.dtype)
        return jnp.sum(model - data * jnp.log(model))

    sigma_np = np.sqrt(expected_np).astype(np.float32)

    residuals = weighted_residuals(psf_model, data_np, sigma_np)

    loss.residuals = residuals
    return loss, best_fit, psf_model


_DEMO: dict = {}


def __getattr__(name: str):
    """The demo model, 64x64 pixels, 21 Zernike terms, n = 4120: ``loss``,
    ``residuals``, ``best_fit`` and ``psf_model``, built on first use (a module
    that imports `make_model` for another size does not pay for it)."""
    if name not in ("loss", "residuals", "best_fit", "psf_model"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _DEMO:
        loss, best_fit, psf_model = make_model()
        _DEMO.update(loss=loss, residuals=loss.residuals, best_fit=best_fit, psf_model=psf_model)
    return _DEMO[name]
