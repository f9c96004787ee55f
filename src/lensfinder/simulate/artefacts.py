"""Image artefacts drawn into noisy lens-finding cutouts (pure functions, numpy in, numpy out).

Each artefact is a dict made by ``population._artefacts`` from the preset's ``artefacts`` table;
amplitudes are in units of the band's sky sigma, so one table serves every survey. They are applied
after the noise (they are in the data, not in the sky) and to lenses and non-lenses alike.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = ("cosmic_ray", "satellite_trail", "bright_star", "bad_pixels", "sky_residual")


def _bands(art: dict, n_bands: int) -> list[int]:
    return list(range(n_bands)) if art.get("band", -1) < 0 else [art["band"]]


def apply(image: np.ndarray, artefacts: list[dict], *, sky_sigma_nmgy: np.ndarray, psf_sigma_arcsec: np.ndarray,
          pixel_scale_arcsec: float) -> np.ndarray:
    """A copy of `image` (C, H, W) in nanomaggies with the artefacts drawn in, in list order.
    `sky_sigma_nmgy` and `psf_sigma_arcsec` are per band (C,) for this object."""
    out = np.array(image, dtype=np.float32, copy=True)
    c, h, w = out.shape
    axis = (np.arange(w) - (w - 1) / 2.0) * pixel_scale_arcsec
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    for art in artefacts:
        kind = art["kind"]
        if kind == "cosmic_ray":  # a sharp streak of a few pixels in one band: never convolved with the PSF
            n = max(2, int(4 * art["length_pix"]))
            t = np.linspace(-0.5, 0.5, n) * art["length_pix"]
            cx = (art["x"] / pixel_scale_arcsec + (w - 1) / 2.0) + t * math.cos(art["angle"])
            cy = (art["y"] / pixel_scale_arcsec + (h - 1) / 2.0) + t * math.sin(art["angle"])
            ix, iy = np.rint(cx).astype(int), np.rint(cy).astype(int)
            keep = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
            pix = np.unique(np.stack([iy[keep], ix[keep]]), axis=1)
            for b in _bands(art, c):
                out[b, pix[0], pix[1]] += art["amplitude_sigma"] * sky_sigma_nmgy[b]
        elif kind == "satellite_trail":  # a straight line across the cutout
            d = (xx * math.sin(art["angle"]) - yy * math.cos(art["angle"]) - art["offset"]) / pixel_scale_arcsec
            profile = np.exp(-0.5 * (d / art["width_pix"]) ** 2)
            for b in _bands(art, c):
                out[b] += (art["amplitude_sigma"] * sky_sigma_nmgy[b] * profile).astype(np.float32)
        elif kind == "bright_star":  # PSF core and halo, diffraction spikes, flat saturated top
            dx, dy = xx - art["x"], yy - art["y"]
            r2 = dx * dx + dy * dy
            ca, sa = math.cos(art["spike_angle"]), math.sin(art["spike_angle"])
            u, v = dx * ca + dy * sa, dy * ca - dx * sa
            width = art["spike_width_pix"] * pixel_scale_arcsec
            for b in range(c):
                s = psf_sigma_arcsec[b]
                area = pixel_scale_arcsec ** 2
                core = np.exp(-0.5 * r2 / s**2) / (2 * math.pi * s**2) * area
                halo = np.exp(-0.5 * r2 / (4 * s) ** 2) / (2 * math.pi * (4 * s) ** 2) * area
                length = 10.0 * s
                spikes = (np.exp(-0.5 * (v / width) ** 2 - np.abs(u) / length)
                          + np.exp(-0.5 * (u / width) ** 2 - np.abs(v) / length)) / (2 * 2 * length * width * math.sqrt(2 * math.pi)) * area
                f = art["flux"][b]
                star = f * (0.9 * core + 0.1 * halo) + f * art["spike_fraction"] * spikes
                out[b] = np.minimum(out[b] + star.astype(np.float32), art["saturation_sigma"] * sky_sigma_nmgy[b])
        elif kind == "bad_pixels":  # dead columns and a masked block, set to zero
            for b in _bands(art, c):
                for x in art["columns"]:
                    out[b, :, int(np.clip(round(x / pixel_scale_arcsec + (w - 1) / 2.0), 0, w - 1))] = 0.0
                if art["block"]:
                    bx, by = art["block_xy"]
                    half = art["block_size"] / 2.0
                    out[b, (np.abs(yy - by) <= half) & (np.abs(xx - bx) <= half)] = 0.0
        elif kind == "sky_residual":  # a smooth over- or under-subtraction of the sky
            blob = np.exp(-0.5 * ((xx - art["x"]) ** 2 + (yy - art["y"]) ** 2) / art["scale_arcsec"] ** 2)
            for b in range(c):
                out[b] += (art["amplitude_sigma"] * sky_sigma_nmgy[b] * blob).astype(np.float32)
        else:
            raise ValueError(f"unknown artefact kind {kind!r}; expected one of {KINDS}")
    return out
