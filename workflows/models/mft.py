"""A dLux-like optical model in pure JAX: the shape of what dLux users fit.

A circular aperture with four spiders and a Zernike phase screen (dLux's
``BasisOptic``) is propagated to the detector by a matrix Fourier transform
(dLux's ``AngularOpticalSystem``: ``A @ field @ Aᵀ``, pixels of half a λ/D),
once per star (three stars, each with a position and a flux: a pupil tilt
each), and the image is multiplied by a per-pixel response (dLux's
``ApplyPixelResponse``: a flat field) and compared with a simulated image
through Poisson noise.

Parameters (``best_fit()``): ``{"flat": (npix, npix), "fluxes": (nstars,),
"positions": (nstars, 2), "zernike": (nzern,)}``; with the defaults npix=64,
nzern=12, nstars=3: n = 4117, as the dLux model of issue 24.

``loss`` is the Poisson negative log-likelihood; ``loss.residuals`` the noise
weighted residuals and the priors the simulation drew from (the flat field's
2% scatter, the Zernike coefficients' 0.05), whose Gauss-Newton matrix is the
Fisher information. Everything is built from fixed seeds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .psf import weighted_residuals, zernike_basis

#: Detector pixels per λ/D (Nyquist sampling: two pixels per λ/D).
PIXEL = 0.5


def aperture(npupil: int, spider: float = 0.02) -> np.ndarray:
    """A unit disk with four spiders of width ``spider`` (of the diameter) at 45°."""
    c = (np.arange(npupil) - (npupil - 1) / 2) / (npupil / 2)
    xx, yy = np.meshgrid(c, c)
    disk = np.hypot(xx, yy) <= 1.0
    arms = (np.abs(xx - yy) < spider * np.sqrt(2)) | (np.abs(xx + yy) < spider * np.sqrt(2))
    return (disk & ~arms).astype(np.float64)


def mft_matrix(npix: int, npupil: int) -> np.ndarray:
    """``A[k, j] = exp(-2πi θ_k x_j)``: pupil samples x (in diameters) to detector
    angles θ (in λ/D, ``PIXEL`` per pixel), one axis."""
    x = (np.arange(npupil) - (npupil - 1) / 2) / npupil
    theta = (np.arange(npix) - (npix - 1) / 2) * PIXEL
    return np.exp(-2j * np.pi * np.outer(theta, x))


def make_model(npix: int = 64, nzern: int = 12, nstars: int = 3, npupil: int = 64,
               seed: int = 0):  # fmt: skip
    """``(loss, best_fit, image_model)`` for ``npix``² pixels, ``nzern`` Zernike
    terms and ``nstars`` stars (n = npix² + nzern + 3 nstars)."""
    basis_np, _ = zernike_basis(nzern, npupil)
    aperture_np = aperture(npupil)
    mft_np = mft_matrix(npix, npupil)
    x = (np.arange(npupil) - (npupil - 1) / 2) / npupil
    ramp_np = np.stack(np.meshgrid(x, x))  # (2, npupil, npupil): the pupil's x and y
    norm = float(aperture_np.sum()) ** 2  # the peak of an unaberrated star: 1

    def image_model(params):
        """Expected counts on the detector, shape (npix, npix)."""
        dtype = params["zernike"].dtype
        complex_ = jnp.complex128 if dtype == jnp.float64 else jnp.complex64
        phase = 2 * jnp.pi * jnp.tensordot(params["zernike"], jnp.asarray(basis_np, dtype), 1)
        mft = jnp.asarray(mft_np, complex_)
        image = jnp.zeros((npix, npix), dtype)
        for s in range(nstars):  # a pixel shift is a pupil tilt of PIXEL λ/D per pixel
            tilt = 2 * jnp.pi * PIXEL * jnp.tensordot(params["positions"][s],
                                                      jnp.asarray(ramp_np, dtype), 1)  # fmt: skip
            field = jnp.asarray(aperture_np, dtype) * jnp.exp(1j * (phase + tilt))
            psf = jnp.abs(mft @ field @ mft.T) ** 2 / norm
            image = image + params["fluxes"][s] * psf
        return image * params["flat"] + 10.0

    def best_fit():
        """The parameters the data were simulated with (float32)."""
        rng = np.random.default_rng(seed)
        spread = npix * 0.25
        return {
            "flat": (1.0 + 0.02 * rng.standard_normal((npix, npix))).astype(np.float32),
            "fluxes": (1e5 * (1.0 + rng.random(nstars))).astype(np.float32),
            "positions": rng.uniform(-spread, spread, (nstars, 2)).astype(np.float32),
            "zernike": (0.05 * rng.standard_normal(nzern)).astype(np.float32),
        }

    truth = jax.tree_util.tree_map(jnp.asarray, best_fit())
    expected_np = np.asarray(image_model(truth))
    data_np = np.random.default_rng(seed + 1).poisson(expected_np).astype(np.float32)
    sigma_np = np.sqrt(expected_np).astype(np.float32)

    def loss(params):
        """Poisson negative log-likelihood of the simulated image (up to a constant)."""
        model = image_model(params)
        return jnp.sum(model - jnp.asarray(data_np, model.dtype) * jnp.log(model))

    residuals = weighted_residuals(image_model, data_np, sigma_np)

    loss.residuals = residuals
    return loss, best_fit, image_model
