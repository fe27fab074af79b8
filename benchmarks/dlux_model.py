"""A dLux model of the shape issue 24 tried (dLux from PyPI, a benchmark extra):
a circular aperture with four spiders and a Zernike `BasisOptic`, an MFT
`AngularOpticalSystem`, three point sources, a `LayeredDetector` with
`ApplyPixelResponse` (a flat field). Parameters ``{"flat": (npix, npix),
"coeffs": (12,), "position": (3, 2), "flux": (3,)}``: n = 4117 at npix = 64.

`make(npix)` returns ``(loss, residuals, x)``: the Poisson negative
log-likelihood of a simulated image, and the noise-weighted residuals with a
2% prior on the flat field (their Gauss-Newton matrix is the Fisher matrix).
"""

from __future__ import annotations

import dLux as dl
import dLux.utils as dlu
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

NZERN, NSTARS, WF_NPIX, DIAMETER = 12, 3, 64, 1.0


def _telescope(npix: int):
    coords = dlu.pixel_coords(WF_NPIX, DIAMETER)
    arms = dlu.spider(coords, 0.02, jnp.array([45.0, 135.0, 225.0, 315.0]))
    transmission = dlu.circle(coords, DIAMETER / 2) * arms
    basis = dlu.zernike_basis(list(range(2, 2 + NZERN)), coords, DIAMETER)
    optic = dl.BasisOptic(basis, transmission, jnp.zeros(NZERN), normalise=True)
    optics = dl.AngularOpticalSystem(WF_NPIX, DIAMETER, [("aperture", optic)], npix, 0.1)
    rng = np.random.default_rng(0)
    spread = npix * 0.1 * 0.3  # arcseconds: the stars within the inner 60% of the detector
    source = dl.PointSources(
        jnp.array([1e-6]),
        jnp.asarray(dlu.arcsec2rad(rng.uniform(-spread, spread, (NSTARS, 2))), jnp.float32),
        jnp.asarray(1e5 * (1 + rng.random(NSTARS)), jnp.float32),
    )
    detector = dl.LayeredDetector([("flat", dl.ApplyPixelResponse(jnp.ones((npix, npix))))])
    return dl.Telescope(optics, ("source", source), detector)


def make(npix: int = 64):
    tel = _telescope(npix)
    rng = np.random.default_rng(1)
    x = {
        "flat": jnp.asarray(1 + 0.02 * rng.standard_normal((npix, npix)), jnp.float32),
        "coeffs": jnp.asarray(0.05 * rng.standard_normal(NZERN), jnp.float32),
        "position": tel.source.position,
        "flux": tel.source.flux,
    }

    def image(p):
        t = eqx.tree_at(
            lambda t: (t.detector.layers["flat"].pixel_response, t.optics.layers["aperture"]
                       .coefficients, t.source.position, t.source.flux),
            tel, (p["flat"], p["coeffs"], p["position"], p["flux"]),
        )  # fmt: skip
        return t.model() + 10.0

    expected = np.asarray(image(x))
    data = jnp.asarray(np.random.default_rng(2).poisson(expected), jnp.float32)
    sigma = jnp.asarray(np.sqrt(expected), jnp.float32)

    def loss(p):
        model = image(p)
        return jnp.sum(model - data * jnp.log(model))

    def residuals(p):
        return jnp.concatenate([((image(p) - data) / sigma).ravel(),
                                ((p["flat"] - 1.0) / 0.02).ravel()])  # fmt: skip

    return loss, residuals, jax.tree_util.tree_map(jnp.asarray, x)
