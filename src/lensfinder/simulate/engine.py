"""Stateful simulators: hold a preset's grid, PSF and constants on a device and render batches of
per-object parameter dicts (from ``population``) with the pure functions of ``render``."""

from __future__ import annotations

import numpy as np
import torch

from . import conventions as conv
from . import physics, render
from .presets import load_preset


ALIGN = 32  # grid sides are padded to multiples of this (see render.py on reproducibility)


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Base:
    def __init__(self, preset: dict, device: str, dtype: torch.dtype | None):
        self.preset = preset
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.num_pix = int(preset["num_pix"])
        self.pixel_scale_arcsec = float(preset["pixel_scale_arcsec"])
        self.supersampling = int(preset.get("supersampling", 1))
        n = self.num_pix * self.supersampling
        step = self.pixel_scale_arcsec / self.supersampling
        axis = conv.pixel_grid_arcsec(self.num_pix, self.pixel_scale_arcsec, self.supersampling)
        # padded grid: the same pixel centres continued past the edge, cropped after rendering
        padded = axis[0] + step * np.arange(_aligned(n))
        self._n = n
        axis_t = self._t(padded)
        self.y, self.x = torch.meshgrid(axis_t, axis_t, indexing="ij")  # image[j, i] = (x_i, y_j)
        self.axis = conv.pixel_grid_arcsec(self.num_pix, self.pixel_scale_arcsec)

    def _t(self, a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=self.dtype, device=self.device)

    def _kernels(self, fwhms_arcsec) -> torch.Tensor:
        ks = [conv.gaussian_kernel_1d(f, self.pixel_scale_arcsec, self.preset["psf_truncation_sigma"])
              for f in fwhms_arcsec]
        size = max(len(k) for k in ks)
        out = np.zeros((len(ks), size))
        for i, k in enumerate(ks):
            pad = (size - len(k)) // 2
            out[i, pad:pad + len(k)] = k
        return self._t(out)

    def _finish(self, surface_brightness: torch.Tensor) -> torch.Tensor:
        """Padded supersampled surface brightness (B, C, h, w) -> PSF-convolved flux per pixel."""
        return render.convolve_separable(self._pixel_flux(surface_brightness), self.kernels)

    def _pixel_flux(self, surface_brightness: torch.Tensor) -> torch.Tensor:
        sb = surface_brightness[..., :self._n, :self._n]
        flux = conv.surface_brightness_to_pixel_flux(sb, self.pixel_scale_arcsec, self.supersampling)
        return render.downsample_sum(flux, self.supersampling).contiguous()


class SubstructureSimulator(_Base):
    """Task 1: SIE + shear (+ point masses) lensing one elliptical Sersic source, single band."""

    def __init__(self, preset: str | dict, *, distances: str | None = None, device: str = "cpu",
                 dtype: torch.dtype | None = None):
        preset = load_preset(preset, task="substructure") if isinstance(preset, str) else preset
        super().__init__(preset, device, dtype)
        self.distances = distances or preset["distances"]
        cosmo = preset["cosmology"]
        self.distances_mpc = physics.lens_distances_mpc(preset["z_lens"], preset["z_source"], h0=cosmo["H0"],
                                                        om0=cosmo["Om0"], convention=self.distances)
        halo = preset["main_halo"]
        self.theta_e_arcsec = float(physics.theta_e_arcsec_from_mass(halo["mass_msun"], *self.distances_mpc))
        q, phi = conv.e1e2_to_q_phi(halo["e1"], halo["e2"])
        self.lens = {"q": float(q), "cos_phi": float(np.cos(phi)), "sin_phi": float(np.sin(phi)),
                     "rein": float(conv.sie_rein_caustics(self.theta_e_arcsec))}
        src = preset["source"]
        sq, sphi = conv.e1e2_to_q_phi(src["e1"], src["e2"])
        self.source = {"q": float(sq), "cos_phi": float(np.cos(sphi)), "sin_phi": float(np.sin(sphi)), "n": float(src["n_sersic"]), "amp": float(src["amp"]),
                       "re": float(conv.sersic_re_caustics(src["r_sersic_arcsec"], sq)),
                       "k": float(conv.sersic_b_n(src["n_sersic"]))}
        self.kernels = self._kernels([preset["psf_fwhm_arcsec"]])

    def render(self, params: list[dict]) -> torch.Tensor:
        """Noiseless images (B, 1, H, W) in the preset's flux units (before ``output_scale``)."""
        b = len(params)
        full = lambda v: torch.full((b,), v, dtype=self.dtype, device=self.device)  # noqa: E731
        zero = full(0.0)
        ax, ay = render.deflection_sie_shear(self.x, self.y, x0=zero, y0=zero, q=full(self.lens["q"]),
                                             cos_phi=full(self.lens["cos_phi"]), sin_phi=full(self.lens["sin_phi"]),
                                             rein=full(self.lens["rein"]),
                                             gamma1=full(self.preset["shear"]["gamma1"]),
                                             gamma2=full(self.preset["shear"]["gamma2"]))
        k = max(len(p["point_theta_e"]) for p in params)
        if k:
            pts = np.zeros((3, b, k))
            for i, p in enumerate(params):
                n = len(p["point_theta_e"])
                pts[:, i, :n] = p["point_x"], p["point_y"], p["point_theta_e"]
            pts = self._t(pts)
            px, py = render.deflection_points(self.x, self.y, x0=pts[0], y0=pts[1], rein=pts[2])
            ax, ay = ax + px, ay + py
        s = self.source
        centre = self._t([[p["source_x_arcsec"], p["source_y_arcsec"]] for p in params])
        col = lambda v: torch.full((b, 1), v, dtype=self.dtype, device=self.device)  # noqa: E731
        sb = render.sersic_profiles(self.x - ax, self.y - ay, x0=centre[:, :1], y0=centre[:, 1:], q=col(s["q"]),
                                    cos_phi=col(s["cos_phi"]), sin_phi=col(s["sin_phi"]), n=col(s["n"]),
                                    re=col(s["re"]), k=col(s["k"]))
        return self._finish(sb * s["amp"])

    def add_noise(self, image: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
        """One image (H, W) float64 -> noisy image, per the preset's noise model."""
        noise = self.preset["noise"]
        t = params["exposure_s"]
        if noise["kind"] == "deeplense-poisson":
            # DeepLenseSim simple_sim: counts = Poisson(t * (model + poisson + background))
            poisson = rng.standard_normal(image.shape) * np.sqrt(np.abs(image) / t)
            background = rng.standard_normal(image.shape) * noise["background_rms"]
            return rng.poisson(np.clip(t * (image + poisson + background), 0.0, None)).astype(np.float64)
        bkg = physics.background_sigma_cps(
            read_noise_e=noise["read_noise_e"], exposure_time_s=noise["exposure_time_s"],
            num_exposures=noise["num_exposures"], sky_brightness_mag=noise["sky_brightness_mag"],
            magnitude_zero_point=noise["magnitude_zero_point"], pixel_scale_arcsec=self.pixel_scale_arcsec)
        sigma = physics.noise_sigma_cps(image, background_sigma_cps=bkg, exposure_time_total_s=t)
        return image + rng.standard_normal(image.shape) * sigma


class LensfindingSimulator(_Base):
    """Task 2: 3-band cutouts of galaxies, some of them lenses, in nanomaggies."""

    def __init__(self, preset: str | dict, *, device: str = "cpu", dtype: torch.dtype | None = None):
        preset = load_preset(preset, task="lensfinding") if isinstance(preset, str) else preset
        super().__init__(preset, device, dtype)
        self.band_names = list(preset["bands"])
        bands = [preset["bands"][b] for b in self.band_names]
        self.kernels = self._kernels([b["seeing_arcsec"] for b in bands])
        self.psf_sigma_arcsec = np.array([b["seeing_arcsec"] * conv.FWHM_TO_SIGMA for b in bands])
        self.cps_per_nmgy = np.array([physics.cps_per_nanomaggy(b["magnitude_zero_point"]) for b in bands])
        self.t_total_s = np.array([b["exposure_time_s"] * b["num_exposures"] for b in bands])
        self.bkg_sigma_cps = np.array([physics.background_sigma_cps(
            read_noise_e=preset["read_noise_e"], exposure_time_s=b["exposure_time_s"],
            num_exposures=b["num_exposures"], sky_brightness_mag=b["sky_brightness_mag"],
            magnitude_zero_point=b["magnitude_zero_point"], pixel_scale_arcsec=self.pixel_scale_arcsec)
            for b in bands])

    def _slots(self, params: list[dict], key: str, kind: str) -> dict | None:
        """Stack per-object slot lists into (B, K) caustics-convention tensors, padding with
        zero-amplitude slots (finite values, so they add exact zeros)."""
        k = max(len(p[key]) for p in params)
        if k == 0:
            return None
        fields = (("x0", "y0", "q", "cos_phi", "sin_phi", "n", "re", "k") if kind == "sersic" else
                  ("x0", "y0", "q", "cos_phi", "sin_phi", "radius", "width", "cos_arc", "sin_arc", "arc_half_width"))
        b, c = len(params), len(self.band_names)
        arr = np.ones((len(fields), b, k))
        amps = np.zeros((b, k, c))
        for i, p in enumerate(params):
            for j, slot in enumerate(p[key]):
                vals = dict(slot, x0=slot["x"], y0=slot["y"], cos_phi=np.cos(slot["phi"]), sin_phi=np.sin(slot["phi"]))
                if kind == "sersic":
                    vals.update(re=conv.sersic_re_caustics(slot["r_eff"], slot["q"]), k=conv.sersic_b_n(slot["n"]))
                else:
                    vals.update(cos_arc=np.cos(slot["arc_angle"]), sin_arc=np.sin(slot["arc_angle"]))
                arr[:, i, j] = [vals[f] for f in fields]
                amps[i, j] = slot["amp"]
        out = {f: self._t(arr[n]) for n, f in enumerate(fields)}
        out["amp"] = self._t(amps)
        return out

    def _sersic(self, x, y, slots):
        prof = render.sersic_profiles(x, y, **{f: v for f, v in slots.items() if f != "amp"})
        return render.combine_bands(prof, slots["amp"])

    def render(self, params: list[dict]) -> dict[str, torch.Tensor]:
        """Noiseless model and the lensed source alone, (B, C, H, W) nanomaggies each, plus the
        unconvolved lensed source flux (B, C) inside the cutout."""
        b, c = len(params), len(self.band_names)
        h = self.x.shape[0]
        sb = torch.zeros((b, c, h, h), dtype=self.dtype, device=self.device)
        light = self._slots(params, "light", "sersic")
        if light is not None:
            sb = sb + self._sersic(self.x, self.y, light)
        rings = self._slots(params, "rings", "ring")
        if rings is not None:
            prof = render.ring_profiles(self.x, self.y, **{f: v for f, v in rings.items() if f != "amp"})
            sb = sb + render.combine_bands(prof, rings["amp"])
        src_sb = torch.zeros_like(sb)
        sources = self._slots(params, "sources", "sersic")
        if sources is not None:
            lens = np.array([[p["deflector_x_arcsec"], p["deflector_y_arcsec"],
                              p["mass_q"] if p["theta_e_arcsec"] > 0 else 1.0,
                              p["mass_phi_rad"] if p["theta_e_arcsec"] > 0 else 0.0, p["theta_e_arcsec"],
                              p["shear_gamma1"], p["shear_gamma2"]] for p in params]).T
            lt = self._t(lens)
            ax, ay = render.deflection_sie_shear(self.x, self.y, x0=lt[0], y0=lt[1], q=lt[2],
                                                 cos_phi=self._t(np.cos(lens[3])), sin_phi=self._t(np.sin(lens[3])),
                                                 rein=lt[4], gamma1=lt[5], gamma2=lt[6])
            src_sb = self._sersic(self.x - ax, self.y - ay, sources)
        src_flux = self._pixel_flux(src_sb)
        src_conv = render.convolve_separable(src_flux, self.kernels)
        model = self._finish(sb) + src_conv
        if any(p["stars"] for p in params):
            model = model + self._t(np.stack([self._stars(p["stars"]) for p in params]))
        return {"model": model, "source": src_conv, "source_flux": src_flux.sum(dim=(-1, -2))}

    def _stars(self, stars: list[dict]) -> np.ndarray:
        """Stars (C, H, W): Gaussian PSF sampled at pixel centres, normalised analytically (a star
        well inside sums to its flux; one near the edge loses what falls outside)."""
        out = np.zeros((len(self.band_names), self.num_pix, self.num_pix))
        sigma = self.psf_sigma_arcsec[:, None]
        norm = sigma * np.sqrt(2 * np.pi) / self.pixel_scale_arcsec
        for star in stars:
            gx = np.exp(-0.5 * ((self.axis - star["x"]) / sigma) ** 2) / norm
            gy = np.exp(-0.5 * ((self.axis - star["y"]) / sigma) ** 2) / norm
            out += star["flux"][:, None, None] * gy[:, :, None] * gx[:, None, :]
        return out

    def sigma_nmgy(self, model: np.ndarray) -> np.ndarray:
        """Per-pixel noise sigma (C, H, W) in nanomaggies for a model (C, H, W) in nanomaggies."""
        cps = model * self.cps_per_nmgy[:, None, None]
        var = self.bkg_sigma_cps[:, None, None] ** 2 + np.clip(cps, 0, None) / self.t_total_s[:, None, None]
        return np.sqrt(var) / self.cps_per_nmgy[:, None, None]

    def arc_snr(self, source: np.ndarray, model: np.ndarray) -> float:
        """Matched-filter S/N of the PSF-convolved lensed light alone, best band."""
        snr = np.sqrt(((source / self.sigma_nmgy(model)) ** 2).sum(axis=(-1, -2)))
        return float(snr.max())

    def add_noise(self, model: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sky, read and (Gaussian-approximated) Poisson noise, as lenstronomy's SimAPI."""
        return model + rng.standard_normal(model.shape) * self.sigma_nmgy(model)
