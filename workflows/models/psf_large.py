"""The PSF fit at GPU scale: 256x256 pixels and 36 Zernike terms (n = 65575;
the float32 Hessian is 17.2 GB, so it goes through the pipeline)."""

from .psf import make_model

loss, best_fit, psf_model = make_model(npix=256, nzern=36)
