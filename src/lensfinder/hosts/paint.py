"""`paint_hosts`: the user's cutouts, PSF and units in; a painted lens-finding set out (what
`lensfinder simulate lensfinding --hosts DIR` runs)."""

from __future__ import annotations

from pathlib import Path

from ..simulate.paint import band_indices, gaussian_psf
from ..simulate.paint_writer import paint_lensfinding
from ..simulate.presets import load_preset
from ..survey.sources import check_pixel_scale
from ..validation import InputError
from .read import HostSet, read_psf, read_theta_e_catalogue

BASE_POPULATION = "lsst-gri"  # without --preset, the population (shared by every lens-finding preset) is read from it


def _floats(name: str, text: str | float | list | None) -> list[float] | None:
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return [float(text)]
    if isinstance(text, (list, tuple)):
        return [float(v) for v in text]
    try:
        return [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{name} {text!r}: expected a number or comma-separated numbers, one per band") from None


def paint_hosts(out_dir, hosts: Path, *, bands: list[str], preset: str | None = None,
                pixel_scale_arcsec: float | None = None, zero_point=None, psf: str | None = None, psf_fwhm_arcsec=None,
                catalogue: Path | None = None, theta_e_column: str | None = None, counts: dict[str, int] | None = None,
                seed: int = 0, batch_size: int = 64, workers: int = 1, progress: bool = True) -> Path:
    """Paint simulated lenses onto the cutouts in `hosts` (a folder or a cube; `bands` in channel order) and write
    the lens-finding layout to `out_dir` (``simulate.paint_writer.paint_lensfinding``). The hosts' pixel scale and
    zero point come from the flags or, when not given, from `preset` (its pixel scale; nanomaggies, zero point
    22.5). The PSF is `psf` (a folder of NAME_<band>.fits, or files in band order) or Gaussians of
    `psf_fwhm_arcsec` (one FWHM, or one per band). `catalogue` + `theta_e_column` give Einstein radii by host id
    or file name; the other lenses draw theta_E from the host relation of presets/_lensfinding.yaml."""
    try:
        band_indices(bands)
    except ValueError as err:
        raise InputError(f"--bands {','.join(bands)}: {err}; paint hosts whose bands are among them") from None
    population = load_preset(preset or BASE_POPULATION, task="lensfinding")
    if pixel_scale_arcsec is None:
        if preset is None:
            raise InputError("--hosts: say the hosts' pixel scale: --pixel-scale ARCSEC, or --preset NAME for a "
                             "lensfinder preset's (e.g. des-gri: 0.263 arcsec)")
        pixel_scale_arcsec = float(population["pixel_scale_arcsec"])
    zero_points = _floats("--zero-point", zero_point)
    if zero_points is None:
        if preset is None:
            raise InputError("--hosts: say the hosts' units: --zero-point ZP (the AB magnitude of a pixel value of 1, "
                             "one or one per band; 22.5 for nanomaggies), or --preset NAME for a lensfinder preset's")
        zero_points = [float(population["paint"]["zero_point"])]
    host_set = HostSet(Path(hosts), bands=bands)
    if host_set.pixel_scale_arcsec is not None:  # a cube that records its pixel scale
        check_pixel_scale(host_set.pixel_scale_arcsec, float(pixel_scale_arcsec), str(hosts), what="--pixel-scale/--preset")
    if (psf is None) == (psf_fwhm_arcsec is None):
        raise InputError("--hosts: give the survey's PSF once: --psf DIR (one FITS image per band, NAME_<band>.fits, "
                         "e.g. from `lensfinder psf`) or --psf-fwhm 1.0,0.9,0.85 (Gaussian FWHM in arcsec per band)")
    if psf is not None:
        psf_images, files = read_psf(psf, bands, host_size=host_set.shape[-1])
        psf_description = {"files": [str(Path(f).resolve()) for f in files]}
    else:
        fwhm = _floats("--psf-fwhm", psf_fwhm_arcsec)
        if len(fwhm) == 1:
            fwhm = fwhm * len(bands)
        if len(fwhm) != len(bands) or not all(f > 0 for f in fwhm):
            raise InputError(f"--psf-fwhm {psf_fwhm_arcsec}: expected one positive FWHM (arcsec) or one per band "
                             f"({len(bands)}: {','.join(bands)})")
        psf_images = gaussian_psf(fwhm, pixel_scale_arcsec=float(pixel_scale_arcsec),
                                  truncation_sigma=population["paint"]["psf_truncation_sigma"])
        if psf_images.shape[-1] > host_set.shape[-1]:
            raise InputError(f"--psf-fwhm {psf_fwhm_arcsec}: the PSF ({psf_images.shape[-1]} px) is larger than the "
                             f"hosts ({host_set.shape[-1]} px); check the FWHM is in arcsec and --pixel-scale")
        psf_description = {"gaussian_fwhm_arcsec": fwhm}
    theta_e, theta_e_description = None, None
    if (catalogue is None) != (theta_e_column is None):
        raise InputError("--catalogue and --theta-e-column go together: the table and the column of Einstein radii "
                         "(arcsec) in it")
    if catalogue is not None:
        theta_e = read_theta_e_catalogue(Path(catalogue), theta_e_column, host_set)
        theta_e_description = {"path": str(Path(catalogue).resolve()), "column": theta_e_column, "matched": len(theta_e)}
    return paint_lensfinding(out_dir, hosts=host_set, population=population, pixel_scale_arcsec=float(pixel_scale_arcsec),
                             zero_point=zero_points, psf=psf_images, psf_description=psf_description, preset=preset,
                             counts=counts, seed=seed, theta_e=theta_e, theta_e_description=theta_e_description,
                             batch_size=batch_size, workers=workers, progress=progress)
