"""Stateful simulators: hold a preset's grid, PSF and constants on a device and render batches of
per-object parameter dicts (from ``population``) with the pure functions of ``render``."""

from __future__ import annotations

import math

import numpy as np
import torch

from . import conventions as conv
from . import artefacts, kernels, physics, render
from .presets import load_preset


ALIGN = 32  # grid sides are padded to multiples of this (see render.py on reproducibility)
_SOFT2 = render.SOFTENING_ARCSEC ** 2
_SLOT_CHUNK_ELEMENTS = 32768  # slots x pixels per Task-2 Sersic chunk (keeps the buffers in L2)
_EXP_FLOOR = 60.0  # Sersic exponents are floored at -60 (see _sersic_into)


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
        self.source = {"q": float(sq), "cos_phi": float(np.cos(sphi)), "sin_phi": float(np.sin(sphi)),
                       "n": float(src["n_sersic"]), "amp": float(src["amp"]),
                       "re": float(conv.sersic_re_caustics(src["r_sersic_arcsec"], sq)),
                       "k": float(conv.sersic_b_n(src["n_sersic"]))}
        self.kernels = self._kernels([preset["psf_fwhm_arcsec"]])

    def _setup_fast_path(self) -> None:
        """Everything that does not change between Task-1 images, computed once: the main halo and
        shear are the same for every image, so their deflection (and, for images without point
        masses, the whole source-plane grid) is cached; per image only point masses, the Sersic
        source and the PSF remain."""
        n = self._n
        b1 = torch.ones(1, dtype=self.dtype, device=self.device)
        ax, ay = render.deflection_sie_shear(
            self.x, self.y, x0=0 * b1, y0=0 * b1, q=self.lens["q"] * b1, cos_phi=self.lens["cos_phi"] * b1,
            sin_phi=self.lens["sin_phi"] * b1, rein=self.lens["rein"] * b1,
            gamma1=self.preset["shear"]["gamma1"] * b1, gamma2=self.preset["shear"]["gamma2"] * b1)
        # pixels actually kept (n x n, cropped from the padded grid), flattened and padded to a
        # multiple of ALIGN**2 (extra entries repeat the last pixel and are dropped at the end)
        npix = -(-n * n // (ALIGN * ALIGN)) * ALIGN * ALIGN
        self._npix = npix

        def flat(t):
            t = t[0, :n, :n].reshape(-1) if t.dim() == 3 else t[:n, :n].reshape(-1)
            return torch.cat([t, t[-1:].expand(npix - n * n)]).contiguous()

        self._gx, self._gy = flat(self.x), flat(self.y)
        self._bx, self._by = flat(self.x - ax), flat(self.y - ay)
        s, src = self.source, self.preset["source"]
        # Sersic in lenstronomy terms: R = sqrt(q x'^2 + y'^2 / q) / R_sersic on the source plane,
        # I = amp * exp(-k (R^(1/n) - 1)); the rotation and scalings fold into 4 coefficients
        sq = float(np.sqrt(s["q"]))
        r_s = float(src["r_sersic_arcsec"])
        self._rot = (s["cos_phi"] * sq / r_s, s["sin_phi"] * sq / r_s,
                     -s["sin_phi"] / (sq * r_s), s["cos_phi"] / (sq * r_s))
        c = self._rot
        self._src_u0 = (self._bx * c[0] + self._by * c[1]).contiguous()
        self._src_v0 = (self._bx * c[2] + self._by * c[3]).contiguous()
        area = (self.pixel_scale_arcsec / self.supersampling) ** 2
        self._sersic_log_norm = float(s["k"] + np.log(s["amp"] * area))
        kern = self.kernels[0]
        self._taps = kern.cpu().numpy()

    def _point_deflection(self, xk: torch.Tensor, yk: torch.Tensor, t2: torch.Tensor):
        """Summed point-mass deflection (B, npix) on the kept pixels, accumulated mass by mass, in
        fixed order, with exact IEEE operations only (sub, mul, div, add), so the result is
        independent of the batch size. On CPU one compiled loop (kernels.py); elsewhere one tensor
        pass per operation and mass."""
        ax = torch.zeros((xk.shape[0], self._npix), dtype=self.dtype, device=self.device)
        ay = torch.zeros_like(ax)
        if self.device.type == "cpu":
            out = ax.numpy(), ay.numpy()
            kernels.point_deflection(self._gx.numpy(), self._gy.numpy(), xk.numpy(), yk.numpy(), t2.numpy(),
                                     out[0].dtype.type(_SOFT2), *out)
            return ax, ay
        dx, dy, f = torch.empty_like(ax), torch.empty_like(ax), torch.empty_like(ax)
        for j in range(xk.shape[1]):
            torch.sub(self._gx, xk[:, j:j + 1], out=dx)
            torch.sub(self._gy, yk[:, j:j + 1], out=dy)
            torch.mul(dx, dx, out=f)
            f.addcmul_(dy, dy).add_(_SOFT2)
            torch.div(t2[:, j:j + 1], f, out=f)
            ax.addcmul_(f, dx)
            ay.addcmul_(f, dy)
        return ax, ay

    def render(self, params: list[dict]) -> torch.Tensor:
        """Noiseless images (B, 1, H, W) in the preset's flux units (before ``output_scale``)."""
        if not hasattr(self, "_bx"):
            self._setup_fast_path()
        b = len(params)
        c = self._rot
        centre = np.array([[p["source_x_arcsec"], p["source_y_arcsec"]] for p in params], dtype=np.float64)
        u_off = self._t(centre[:, 0] * c[0] + centre[:, 1] * c[1])[:, None]
        v_off = self._t(centre[:, 0] * c[2] + centre[:, 1] * c[3])[:, None]
        k = max(len(p["point_theta_e"]) for p in params)
        if k:
            pts = np.zeros((3, b, k))
            pts[0], pts[1] = 1e3, 1e3  # padding slots: far away, zero mass (add exact zeros)
            for i, p in enumerate(params):
                n = len(p["point_theta_e"])
                pts[:, i, :n] = p["point_x"], p["point_y"], np.asarray(p["point_theta_e"]) ** 2
            pts = self._t(pts)
            px, py = self._point_deflection(pts[0], pts[1], pts[2])
            # source-plane coordinates minus the point deflections, rotated and scaled
            u = torch.add(self._src_u0, px, alpha=-c[0]).add_(py, alpha=-c[1])
            v = torch.add(self._src_v0, px, alpha=-c[2]).add_(py, alpha=-c[3])
            u.sub_(u_off)
            v.sub_(v_off)
        else:
            u = self._src_u0 - u_off
            v = self._src_v0 - v_off
        r = u.mul_(u).addcmul_(v, v).sqrt_()
        s = self.source
        if s["n"] != 1.0:
            r = r.pow_(1.0 / s["n"])
        sb = r.mul_(-s["k"]).add_(self._sersic_log_norm).exp_()
        return self._convolve(sb)[:, None]

    def _convolve(self, flux: torch.Tensor) -> torch.Tensor:
        """(B, npix) pixel fluxes (the n x n kept pixels, flattened) -> PSF-convolved (B, n, n):
        separable, edge replication (scipy mode "nearest"), taps summed in fixed order, image by
        image (no reduction across the batch): on CPU one compiled loop (kernels.py), elsewhere
        render.convolve_separable's tensor passes."""
        n, b = self._n, flux.shape[0]
        if self.device.type != "cpu":
            return render.convolve_separable(flux[:, :n * n].reshape(b, 1, n, n), self.kernels)[:, 0]
        out = torch.empty((b, n, n), dtype=self.dtype)
        kernels.convolve_nearest(flux.numpy(), n, self._taps, out.numpy())
        return out

    def add_noise(self, image: np.ndarray, params: dict, rng: np.random.Generator) -> np.ndarray:
        """One image (H, W) float64 -> noisy image, per the preset's noise model."""
        noise = self.preset["noise"]
        t = params["exposure_s"]
        if noise["kind"] == "deeplense-poisson":
            # DeepLenseSim simple_sim: counts = Poisson(t * (model + poisson + background)), with
            # poisson ~ N(0, sqrt(|model| / t)) and background ~ N(0, rms) independent, so their
            # sum is drawn as one Gaussian of the summed variance (the same distribution)
            out = np.empty(image.shape)
            kernels.deeplense_counts(np.ascontiguousarray(image, dtype=np.float64).reshape(-1), float(t),
                                     float(noise["background_rms"]), kernels.seed_state(rng), out.reshape(-1))
            return out
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
        self.bands = bands
        self.seeing_fwhm_arcsec = np.array([b["seeing_arcsec"] for b in bands])
        self.psf_sigma_arcsec = self.seeing_fwhm_arcsec * conv.FWHM_TO_SIGMA
        self.cps_per_nmgy = np.array([physics.cps_per_nanomaggy(b["magnitude_zero_point"]) for b in bands])
        self.t_total_s = np.array([b["exposure_time_s"] * b["num_exposures"] for b in bands])
        self.bkg_sigma_cps = self.observing([{}])["bkg_sigma_cps"][0]

    def observing(self, params: list[dict]) -> dict[str, np.ndarray]:
        """Per-object, per-band observing conditions (B, C) from each object's seeing_scale, depth_mag and
        sky_mag (absent: the preset's nominal survey): PSF sigma (arcsec), total exposure (s), background
        sigma (counts/s) and the sky sigma in nanomaggies. Depth: exposure time x 10^(0.8 depth_mag), so a
        background-limited 5-sigma depth moves by depth_mag."""
        scale = np.array([p.get("seeing_scale", 1.0) for p in params])[:, None]
        exposure = np.array([b["exposure_time_s"] for b in self.bands])[None] * 10.0 ** (
            0.8 * np.array([p.get("depth_mag", 0.0) for p in params]))[:, None]
        sky = np.array([b["sky_brightness_mag"] for b in self.bands])[None] + np.array([p.get("sky_mag", 0.0) for p in params])[:, None]
        n_exp = np.array([b["num_exposures"] for b in self.bands])[None]
        zp = np.array([b["magnitude_zero_point"] for b in self.bands])[None]
        t_tot = exposure * n_exp
        sky_cps = 10.0 ** (-0.4 * (sky - zp)) * self.pixel_scale_arcsec ** 2
        bkg = np.sqrt(n_exp * self.preset["read_noise_e"] ** 2 + t_tot * sky_cps) / t_tot  # physics.background_sigma_cps
        return {"psf_sigma_arcsec": self.psf_sigma_arcsec[None] * scale, "seeing_scale": scale[:, 0],
                "t_total_s": t_tot, "bkg_sigma_cps": bkg, "sky_sigma_nmgy": bkg / self.cps_per_nmgy[None]}

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

    # -------------------------------------------------------------- fast batched rendering
    def _setup_fast_path(self) -> None:
        """Flat grid (P,) and pixel area. The PSF is applied as one (n, n) matrix per band and object:
        a separable Gaussian with edge replication (scipy mode "nearest") is linear, so
        image -> K @ image @ K^T exactly (see ``_psf_matrices``); each product's reduction runs over one
        image row or column of fixed length, so the bytes do not depend on the batch size
        (tests/test_simulate_writer.py checks this)."""
        self._gx = self.x.reshape(-1).contiguous()
        self._gy = self.y.reshape(-1).contiguous()
        self._area = (self.pixel_scale_arcsec / self.supersampling) ** 2

    def _psf_matrix(self, seeing_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, K^T), each (C, n, n), with K @ image @ K^T = every band's truncated-Gaussian PSF at the
        band's FWHM times `seeing_scale` (cached: the population draws scales on a grid)."""
        cache = self.__dict__.setdefault("_psf_cache", {})
        if seeing_scale not in cache:
            n = self.num_pix
            kern = conv.gaussian_kernel_1d(self.seeing_fwhm_arcsec * seeing_scale, self.pixel_scale_arcsec,
                                           self.preset["psf_truncation_sigma"])             # (C, 2r + 1)
            r = kern.shape[-1] // 2
            rows = np.arange(n)
            mats = np.zeros((len(kern), n, n))
            for t in range(kern.shape[-1]):  # within one tap every (row, column) pair is distinct
                mats[:, rows, np.clip(rows + t - r, 0, n - 1)] += kern[:, t, None]
            psf = self._t(mats)
            cache[seeing_scale] = (psf, psf.transpose(1, 2).contiguous())
        return cache[seeing_scale]

    def _sersic_table(self, params: list[dict], key: str, objects=None):
        """Slots of ``key`` of each object, rank-major (every object's first slot, then every
        object's second, ...): object index per slot, rank boundaries, the folded coefficients
        (x0, y0, a, b, c, d, 0.5/n, k) with (u, v) = ((x - x0) a + (y - y0) b, (x - x0) c + (y - y0) d)
        and R / R_sersic = sqrt(u^2 + v^2) in lenstronomy conventions, and per-band fluxes per
        pixel at R_sersic."""
        objects = range(len(params)) if objects is None else objects
        lists = [params[i][key] for i in objects]
        return [t for t in (self._sersic_group(lists, True), self._sersic_group(lists, False)) if t is not None]

    def _sersic_group(self, lists, exponential: bool):
        """One table of ``_sersic_table``: the exponential (n = 1) slots, whose profile needs a
        square root instead of a log and an exp, or all the others."""
        depth = max((len(s) for s in lists), default=0)
        idx, bounds, coef, amps = [], [0], [], []
        for j in range(depth):
            for row, slots in enumerate(lists):
                if j < len(slots) and (slots[j]["n"] == 1.0) == exponential:
                    s = slots[j]
                    cp, sp = math.cos(s["phi"]), math.sin(s["phi"])
                    sq = math.sqrt(s["q"])
                    a, d = sq / s["r_eff"], 1.0 / (sq * s["r_eff"])
                    k = float(conv.sersic_b_n(s["n"]))
                    idx.append(row)
                    coef.append((s["x"], s["y"], cp * a, sp * a, -sp * d, cp * d, 0.5 / s["n"], k))
                    amps.append(s["amp"])
            bounds.append(len(idx))
        if not idx:
            return None
        coef = self._t(np.asarray(coef).T[:, :, None])
        amps = self._t(np.asarray(amps, dtype=np.float64) * self._area)
        return idx, bounds, coef, amps, exponential

    def _sersic_into(self, out: torch.Tensor, table, gx: torch.Tensor, gy: torch.Tensor) -> None:
        """Add unit Sersic profiles times per-band amplitudes into out (C, B, P), slot rank by
        slot rank (a fixed order of exact additions per object). gx, gy: (P,) or (M, P). Slots
        are evaluated in chunks of rows whose buffers stay in cache (element-wise work, so the
        chunking changes no bit)."""
        idx, bounds, c, amps, exponential = table
        m_all, npix = len(idx), out.shape[-1]
        rows = max(1, _SLOT_CHUNK_ELEMENTS // npix) if self.device.type == "cpu" else m_all
        m = min(rows, m_all)
        dx = torch.empty((m, npix), dtype=self.dtype, device=self.device)
        dy, u = torch.empty_like(dx), torch.empty_like(dx)
        f3 = torch.empty((out.shape[0], m, npix), dtype=self.dtype, device=self.device)
        amps = amps.T.contiguous()  # (C, M)
        index = torch.as_tensor(idx, device=self.device)
        for r0 in range(0, m_all, rows):
            r1 = min(m_all, r0 + rows)
            k = r1 - r0
            cc = c[:, r0:r1]
            ddx, ddy, uu, ff = dx[:k], dy[:k], u[:k], f3[:, :k]
            torch.sub(gx if gx.dim() == 1 else gx[r0:r1], cc[0], out=ddx)
            torch.sub(gy if gy.dim() == 1 else gy[r0:r1], cc[1], out=ddy)
            torch.mul(ddx, cc[2], out=uu).addcmul_(ddy, cc[3])
            ddx.mul_(cc[4]).addcmul_(ddy, cc[5])
            uu.mul_(uu).addcmul_(ddx, ddx)
            # I / amp = exp(k - k (R / R_sersic)^(1/n)), (R/R_s)^(1/n) = exp(log(r2) / (2n))
            if exponential:
                uu.sqrt_()
            else:
                uu.log_().mul_(cc[6]).exp_()
            # floor the exponent: tails below e^-60 of the amplitude (irrelevant) would otherwise
            # underflow into subnormal floats, which are many times slower in every later pass
            torch.addcmul(cc[7], uu, cc[7], value=-1.0, out=ddy).clamp_(min=-_EXP_FLOOR).exp_()
            torch.mul(ddy[None], amps[:, r0:r1, None], out=ff)
            for j in range(len(bounds) - 1):
                s0, s1 = max(bounds[j], r0), min(bounds[j + 1], r1)
                if s0 < s1:
                    out.index_add_(1, index[s0:s1], ff[:, s0 - r0:s1 - r0])

    def _psf_apply(self, flux: torch.Tensor, seeing_scales: np.ndarray) -> torch.Tensor:
        """(C, B, h, w) padded-grid pixel fluxes -> cropped, downsampled, PSF-convolved (C, B, n, n), each
        object at its own seeing: per seeing scale and band, one matrix product over all rows of those
        objects, then one batched product over their columns (band-major, contiguous stacks)."""
        img = render.downsample_sum(flux[..., :self._n, :self._n], self.supersampling).contiguous()
        out = torch.empty_like(img)
        n = self.num_pix
        for scale in np.unique(seeing_scales):
            idx = np.flatnonzero(seeing_scales == scale)
            psf, psf_t = self._psf_matrix(float(scale))
            sel = torch.as_tensor(idx, device=self.device)
            part = img.index_select(1, sel) if len(idx) < img.shape[1] else img
            res = torch.empty_like(part)
            for c in range(img.shape[0]):
                z = torch.matmul(part[c].reshape(-1, n), psf_t[c]).view(-1, n, n)
                torch.matmul(psf[c], z, out=res[c])
            out.index_copy_(1, sel, res)
        return out

    def render(self, params: list[dict]) -> dict[str, torch.Tensor]:
        """Noiseless model and the lensed source alone, (B, C, H, W) nanomaggies each, plus the
        unconvolved lensed source flux (B, C) inside the cutout."""
        if not hasattr(self, "_psf"):
            self._setup_fast_path()
        b, c = len(params), len(self.band_names)
        h = self.x.shape[0]
        npix = h * h
        obs = self.observing(params)
        lensed = [i for i, p in enumerate(params) if p["sources"]]
        # one buffer: the model of every object, then the lensed source alone of each lens
        buf = torch.zeros((c, b + len(lensed), npix), dtype=self.dtype, device=self.device)
        model = buf[:, :b]
        for table in self._sersic_table(params, "light"):
            self._sersic_into(model, table, self._gx, self._gy)
        ringed = [i for i, p in enumerate(params) if p["rings"]]
        if ringed:
            sub = [params[i] for i in ringed]
            rings = self._slots(sub, "rings", "ring")
            prof = render.ring_profiles(self.x, self.y, **{f: v for f, v in rings.items() if f != "amp"})
            rflux = render.combine_bands(prof, rings["amp"] * self._area).reshape(len(sub), c, npix)
            model.index_add_(1, torch.as_tensor(ringed, device=self.device), rflux.transpose(0, 1))
        source = torch.zeros((b, c, self.num_pix, self.num_pix), dtype=self.dtype, device=self.device)
        source_flux = torch.zeros((b, c), dtype=self.dtype, device=self.device)
        if lensed:
            lens = np.array([[params[i][k] for k in ("deflector_x_arcsec", "deflector_y_arcsec", "mass_q",
                                                     "theta_e_arcsec", "shear_gamma1", "shear_gamma2")]
                             for i in lensed]).T
            phi = np.array([params[i]["mass_phi_rad"] for i in lensed])
            lt = self._t(lens)
            g = self._gx[None, :]
            ax, ay = render.deflection_sie_shear(g, self._gy[None, :], x0=lt[0], y0=lt[1], q=lt[2],
                                                 cos_phi=self._t(np.cos(phi)), sin_phi=self._t(np.sin(phi)),
                                                 rein=lt[3], gamma1=lt[4], gamma2=lt[5])
            bx = (g - ax.reshape(len(lensed), npix))
            by = (self._gy[None, :] - ay.reshape(len(lensed), npix))
            src = buf[:, b:]
            for table in self._sersic_table(params, "sources", lensed):
                rows = torch.as_tensor(table[0], device=self.device)
                self._sersic_into(src, table, bx.index_select(0, rows), by.index_select(0, rows))
            index = torch.as_tensor(lensed, device=self.device)
            model.index_add_(1, index, src)
            both = self._psf_apply(buf.view(c, -1, h, h), np.concatenate([obs["seeing_scale"], obs["seeing_scale"][lensed]]))
            out, src_conv = both[:, :b], both[:, b:]
            source.index_copy_(0, index, src_conv.transpose(0, 1))
            src_pix = render.downsample_sum(src.reshape(c, -1, h, h)[..., :self._n, :self._n], self.supersampling)
            source_flux.index_copy_(0, index, src_pix.sum(dim=(-1, -2)).T)
        else:
            out = self._psf_apply(buf.view(c, b, h, h), obs["seeing_scale"])
        sigma = self._t(obs["psf_sigma_arcsec"])
        if any(p["stars"] for p in params):
            self._add_points(out, params, "stars", sigma)
        if any(p.get("points") for p in params):  # lensed quasar images: in the model and in the lensed light
            points = torch.zeros_like(out)
            self._add_points(points, params, "points", sigma)
            out += points
            source += points.transpose(0, 1)
        return {"model": out.transpose(0, 1).contiguous(), "source": source, "source_flux": source_flux}

    def _add_points(self, out: torch.Tensor, params: list[dict], key: str, sigma: torch.Tensor) -> None:
        """Add point sources (stars, or lensed quasar images) of each object's list `key` to out (C, B, n, n)
        in place, rank by rank: a Gaussian PSF of the object's per-band sigma (B, C) arcsec, sampled at
        pixel centres and normalised analytically (one near the edge loses what falls outside); each is
        separable, (C, n) along y times (C, n) along x."""
        axis = self._t(self.axis)
        depth = max(len(p.get(key, ())) for p in params)
        for j in range(depth):
            idx = [i for i, p in enumerate(params) if len(p.get(key, ())) > j]
            pts = [params[i][key][j] for i in idx]
            pos = self._t([[st["x"], st["y"]] for st in pts])           # (S, 2)
            flux = self._t(np.stack([st["flux"] for st in pts]))        # (S, C)
            sig = sigma[idx][:, None, :, None]                          # (S, 1, C, 1)
            d = (axis - pos[:, :, None, None]) / sig                     # (S, 2, C, n)
            g = d.mul_(d).mul_(-0.5).exp_().div_(sig * math.sqrt(2 * math.pi) / self.pixel_scale_arcsec)
            g.masked_fill_(g < 1e-15, 0.0)  # no subnormal products in the outer product below
            img = torch.matmul((g[:, 1] * flux[:, :, None])[..., None], g[:, 0, :, None, :])  # outer products
            out.index_add_(1, torch.as_tensor(idx, device=self.device), img.transpose(0, 1))

    def noisy_batch(self, model: torch.Tensor, source: torch.Tensor | None, is_lens, noise_rngs, params: list[dict]):
        """Noisy images (B, C, H, W) float32 (numpy) and arc S/N (B,) (0 for non-lenses) for a rendered
        batch, at each object's own depth and sky, in float32 on the batch at once: element-wise exact
        operations only, and each object's Gaussian draws from its own generator, so the bytes do not
        depend on the batch size. Then each object's artefacts are drawn in (``artefacts.apply``)."""
        obs = self.observing(params)
        f = lambda a: torch.as_tensor(a, dtype=torch.float32)[..., None, None]  # noqa: E731
        cps, bkg2, t = f(self.cps_per_nmgy), f(obs["bkg_sigma_cps"] ** 2), f(obs["t_total_s"])
        model = model.detach().to("cpu", torch.float32)
        sigma = model.mul(cps).clamp_(min=0.0).div_(t).add_(bkg2).sqrt_().div_(cps)
        shape = tuple(model.shape[1:])
        # standard normals from a torch generator seeded by the object's own noise generator
        # (torch's vectorised normal fill is faster than numpy's per-object draws)
        draws = torch.empty((len(noise_rngs),) + shape, dtype=torch.float32)
        gen = torch.Generator()
        for i, rng in enumerate(noise_rngs):
            gen.manual_seed(int(rng.integers(2**63)))
            torch.randn(shape, generator=gen, out=draws[i])
        images = draws.mul_(sigma).add_(model).numpy()
        snr = np.zeros(model.shape[0])
        lens = np.flatnonzero(is_lens)
        if len(lens):
            idx = torch.as_tensor(lens)
            src = source.detach().to("cpu", torch.float32).index_select(0, idx)
            ratio = src.div_(sigma.index_select(0, idx))
            snr[lens] = ratio.mul_(ratio).sum(dim=(-1, -2)).double().sqrt().amax(dim=-1).numpy()
        for i, p in enumerate(params):
            if p.get("artefacts"):
                images[i] = artefacts.apply(images[i], p["artefacts"], sky_sigma_nmgy=obs["sky_sigma_nmgy"][i],
                                            psf_sigma_arcsec=obs["psf_sigma_arcsec"][i],
                                            pixel_scale_arcsec=self.pixel_scale_arcsec)
        return images, snr
