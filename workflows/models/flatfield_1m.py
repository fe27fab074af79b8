"""The PSF fit with a 1024x1024 flat field (n = 1,048,600): the Fisher matrix
is 4.4 TB dense in float32, but each pixel couples only to itself and the 24
globals, so it is 25 products and about 25 million nonzeros
(workflows/fisher_1m.yaml)."""

from .psf import make_model

loss, best_fit, psf_model = make_model(npix=1024)
residuals = loss.residuals
