"""Bring your own survey: the user's cutouts (a folder of .npy / FITS files or a cube) in; hosts to paint
simulated lensed arcs on (``read``) and PSF images built from the stars in them (``psf``) out. Uses the cutout
readers of evaluate.predict and survey.sources and the painting physics of simulate.paint."""
