"""A small optical PSF fit: the kind of model whose Fisher matrix dLux users want.

A circular pupil with a Zernike phase screen is propagated to the focal plane by
an FFT; the PSF is shifted by a sub-pixel position (a pupil tilt), scaled by a
flux, multiplied by a per-pixel flat field and compared with a simulated image
through the Poisson negative log-likelihood. The Hessian of that loss at the
best fit is the Fisher information of the parameters.

Parameters (``best_fit()``): ``{"flat": (npix, npix), "flux": (), "position": (2,),
"zernike": (nzern,)}``; with the defaults npix=64, nzern=21: n = 4120.

Everything is built at import from fixed seeds, so driver and workers agree.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np

NPUPIL = int(os.environ.get("DIFFOPS_PSF_NPUPIL", 64))
NPIX = int(os.environ.get("DIFFOPS_PSF_NPIX", 64))
NZERN = int(os.environ.get("DIFFOPS_PSF_NZERN", 21))
OVERSAMPLE = 2  # focal-plane FFT grid is OVERSAMPLE * NPUPIL wide


def _noll_to_nm(j: int) -> tuple[int, int]:
    """Radial order n and azimuthal frequency m of Noll index j (m < 0: sine term)."""
    n, rest = 0, j - 1
    while rest > n:
        n += 1
        rest -= n
    m = (-1) ** j * ((n % 2) + 2 * ((rest + ((n + 1) % 2)) // 2))
    return n, m


def zernike_basis(nterms: int, npupil: int) -> np.ndarray:
    """Noll-ordered Zernike polynomials 2..nterms+1 (piston left out) on a unit disk."""
    c = (np.arange(npupil) - (npupil - 1) / 2) / (npupil / 2)
    xx, yy = np.meshgrid(c, c)
    rho, theta = np.hypot(xx, yy), np.arctan2(yy, xx)
    inside = rho <= 1.0
    basis = []
    for j in range(2, nterms + 2):
        n, m = _noll_to_nm(j)
        radial = np.zeros_like(rho)
        for k in range((n - abs(m)) // 2 + 1):
            coef = (-1) ** k * math.factorial(n - k) / (
                math.factorial(k)
                * math.factorial((n + abs(m)) // 2 - k)
                * math.factorial((n - abs(m)) // 2 - k)
            )
            radial += coef * rho ** (n - 2 * k)
        angular = np.cos(m * theta) if m >= 0 else np.sin(-m * theta)
        basis.append(np.where(inside, radial * angular, 0.0))
    return np.stack(basis), inside


_BASIS, _APERTURE = zernike_basis(NZERN, NPUPIL)
_C = (np.arange(NPUPIL) - (NPUPIL - 1) / 2) / (NPUPIL / 2)
_TILT = np.stack(np.meshgrid(_C, _C))  # (2, npupil, npupil): x and y tilt


def psf_model(params):
    """Expected counts on the detector, shape (NPIX, NPIX)."""
    basis = jnp.asarray(_BASIS, dtype=params["zernike"].dtype)
    phase = jnp.tensordot(params["zernike"], basis, axes=1)
    # A shift of s focal-plane pixels is a pupil phase ramp of pi * s / OVERSAMPLE
    # per unit of normalised pupil radius (Fourier shift theorem).
    tilt = jnp.tensordot(params["position"], jnp.asarray(_TILT, phase.dtype), axes=1)
    wave = 2 * jnp.pi * phase + jnp.pi / OVERSAMPLE * tilt
    field = jnp.asarray(_APERTURE, phase.dtype) * jnp.exp(1j * wave)
    size = OVERSAMPLE * NPUPIL
    pad = (size - NPUPIL) // 2
    field = jnp.pad(field, ((pad, size - NPUPIL - pad), (pad, size - NPUPIL - pad)))
    focal = jnp.fft.fftshift(jnp.fft.fft2(field))
    intensity = jnp.abs(focal) ** 2
    lo = (size - NPIX) // 2
    psf = intensity[lo:lo + NPIX, lo:lo + NPIX]
    psf = psf / jnp.sum(intensity)
    return params["flux"] * psf * params["flat"] + 10.0


def best_fit():
    """The parameters the data were simulated with (float32)."""
    rng = np.random.default_rng(0)
    return {
        "flat": (1.0 + 0.02 * rng.standard_normal((NPIX, NPIX))).astype(np.float32),
        "flux": np.float32(1e6),
        "position": np.array([0.3, -0.2], dtype=np.float32),
        "zernike": (0.05 * rng.standard_normal(NZERN)).astype(np.float32),
    }


_DATA = np.asarray(
    np.random.default_rng(1).poisson(np.asarray(psf_model(jax.tree_util.tree_map(
        jnp.asarray, best_fit())))),
    dtype=np.float32,
)


def loss(params):
    """Poisson negative log-likelihood of the simulated image (up to a constant)."""
    model = psf_model(params)
    data = jnp.asarray(_DATA, model.dtype)
    return jnp.sum(model - data * jnp.log(model))
