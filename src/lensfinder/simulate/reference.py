"""The same images rendered by lenstronomy, one at a time (as its users run it), from the same
parameter dicts as the engine. Used by the agreement tests and the benchmark; lenstronomy is a
dev dependency, imported lazily."""

from __future__ import annotations

import numpy as np

from . import conventions as conv


def _image_model(num_pix, pixel_scale_arcsec, fwhm_arcsec, truncation, lens_models, source_models,
                 lens_light_models=(), supersampling=1):
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    half = (num_pix - 1) / 2.0 * pixel_scale_arcsec
    data = ImageData(image_data=np.zeros((num_pix, num_pix)), ra_at_xy_0=-half, dec_at_xy_0=-half,
                     transform_pix2angle=np.eye(2) * pixel_scale_arcsec)
    psf = PSF(psf_type="GAUSSIAN", fwhm=fwhm_arcsec, pixel_size=pixel_scale_arcsec, truncation=truncation)
    return ImageModel(data, psf, lens_model_class=LensModel(list(lens_models)),
                      source_model_class=LightModel(list(source_models)),
                      lens_light_model_class=LightModel(list(lens_light_models)) if lens_light_models else None,
                      kwargs_numerics={"supersampling_factor": supersampling, "supersampling_convolution": False})


def render_substructure(sim, params: dict) -> np.ndarray:
    """One noiseless Task-1 image (H, W) with lenstronomy for a ``SubstructureSimulator``'s preset."""
    pre = sim.preset
    n = len(params["point_theta_e"])
    halo, src = pre["main_halo"], pre["source"]
    kw_lens = [{"theta_E": sim.theta_e_arcsec, "e1": halo["e1"], "e2": halo["e2"], "center_x": 0.0, "center_y": 0.0},
               {"gamma1": pre["shear"]["gamma1"], "gamma2": pre["shear"]["gamma2"], "ra_0": 0.0, "dec_0": 0.0}]
    kw_lens += [{"theta_E": t, "center_x": x, "center_y": y}
                for t, x, y in zip(params["point_theta_e"], params["point_x"], params["point_y"])]
    kw_src = [{"amp": src["amp"], "R_sersic": src["r_sersic_arcsec"], "n_sersic": src["n_sersic"], "e1": src["e1"],
               "e2": src["e2"], "center_x": params["source_x_arcsec"], "center_y": params["source_y_arcsec"]}]
    model = _image_model(sim.num_pix, sim.pixel_scale_arcsec, pre["psf_fwhm_arcsec"], pre["psf_truncation_sigma"],
                         ["SIE", "SHEAR"] + ["POINT_MASS"] * n, ["SERSIC_ELLIPSE"], supersampling=sim.supersampling)
    return model.image(kw_lens, kw_src)


def _sersic_kwargs(slot, band: int) -> dict:
    e1, e2 = conv.q_phi_to_e1e2(slot["q"], slot["phi"])
    return {"amp": float(slot["amp"][band]), "R_sersic": slot["r_eff"], "n_sersic": slot["n"], "e1": float(e1),
            "e2": float(e2), "center_x": slot["x"], "center_y": slot["y"]}


def render_lens(sim, params: dict, band: int) -> np.ndarray:
    """One band (H, W) of a lens-finding cutout with lenstronomy: lensed source plus Sersic light
    for a lens, Sersic light alone for a non-lens (rings and stars are not lenstronomy profiles
    and are left out: pass params without them). The PSF is the band's seeing times the object's
    seeing_scale (1 when absent), as the engine draws it."""
    pre = sim.preset
    cx, cy = params["deflector_x_arcsec"], params["deflector_y_arcsec"]
    if params["theta_e_arcsec"] > 0:
        e1, e2 = conv.q_phi_to_e1e2(params["mass_q"], params["mass_phi_rad"])
        kw_lens = [{"theta_E": params["theta_e_arcsec"], "e1": float(e1), "e2": float(e2), "center_x": cx,
                    "center_y": cy},
                   {"gamma1": params["shear_gamma1"], "gamma2": params["shear_gamma2"], "ra_0": cx, "dec_0": cy}]
    else:  # a non-lens: galaxies' light only
        kw_lens = []
    kw_src = [_sersic_kwargs(s, band) for s in params["sources"]]
    kw_light = [_sersic_kwargs(s, band) for s in params["light"]]
    fwhm = pre["bands"][sim.band_names[band]]["seeing_arcsec"] * params.get("seeing_scale", 1.0)
    model = _image_model(sim.num_pix, sim.pixel_scale_arcsec, fwhm, pre["psf_truncation_sigma"],
                         ["SIE", "SHEAR"] if kw_lens else [],
                         ["SERSIC_ELLIPSE"] * len(kw_src), ["SERSIC_ELLIPSE"] * len(kw_light),
                         supersampling=sim.supersampling)
    return model.image(kw_lens, kw_src, kwargs_lens_light=kw_light or None)


def deeplense_noise(image: np.ndarray, exposure_s: float, background_rms: float, rng: np.random.Generator) -> np.ndarray:
    """DeepLenseSim ``simple_sim`` noise on one image, as its users run it (numpy, lenstronomy's
    ``image_util`` recipe): counts = Poisson(t * (model + N(0, sqrt(|model|/t)) + N(0, rms)))."""
    poisson = rng.standard_normal(image.shape) * np.sqrt(np.abs(image) / exposure_s)
    background = rng.standard_normal(image.shape) * background_rms
    return rng.poisson(np.clip(exposure_s * (image + poisson + background), 0.0, None)).astype(np.float64)
