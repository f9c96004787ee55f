"""Per-object parameter samplers. Every object's random numbers come from its own
``numpy.random.SeedSequence([seed, task, split, class, index])``, never from a batch-level
generator, so files do not depend on batch size, worker count or resumption."""

from __future__ import annotations

import math

import numpy as np

from . import physics

TASK_CODES = {"substructure": 1, "lensfinding": 2}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "stream": 9}
SUBSTRUCTURE_CLASSES = ("no", "sphere", "vort")
LENSFINDING_CLASSES = ("nonlens", "lens")


def object_rngs(seed: int, task: str, split: str, class_index: int, index: int, worker: int = 0):
    """Two independent generators for one object: (parameters, noise)."""
    entropy = [seed, TASK_CODES[task], SPLIT_CODES[split], worker, class_index, index]
    # the two children of SeedSequence(entropy).spawn(2), built directly (the same streams)
    return (np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(0,)))),
            np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy, spawn_key=(1,)))))


# ----------------------------------------------------------------------------- substructure
def sample_substructure(rng: np.random.Generator, cls: str, preset: dict, *,
                        distances_mpc: tuple[float, float, float]) -> dict:
    """Parameters of one Task-1 image in lenstronomy conventions (plus point-mass lists)."""
    src = preset["source"]
    cx, cy = rng.uniform(-src["center_max_arcsec"], src["center_max_arcsec"], 2)
    p = {"source_x_arcsec": cx, "source_y_arcsec": cy, "n_subhalos": 0,
         "subhalo_mass_total_msun": 0.0, "subhalo_mass_min_msun": np.nan,
         "subhalo_mass_max_msun": np.nan, "subhalo_mass_median_msun": np.nan,
         "axion_mass_ev": np.nan, "vortex_half_length_arcsec": np.nan, "vortex_angle_rad": np.nan,
         "point_x": np.zeros(0), "point_y": np.zeros(0), "point_theta_e": np.zeros(0),
         "point_mass": np.zeros(0)}
    if cls == "sphere":
        sph = preset["sphere"]
        n = int(sph["n_subhalos"])
        masses = physics.subhalo_mass_msun_from_uniform(
            rng.uniform(0.0, 1.0, n), mass_min_msun=sph["mass_min_msun"],
            mass_max_msun=sph["mass_max_msun"], slope=sph["mass_slope"])
        radius = rng.uniform(sph["r_min_arcsec"], sph["r_max_arcsec"], n)
        angle = rng.uniform(0.0, 2.0 * np.pi, n)
        p.update(point_x=radius * np.cos(angle), point_y=radius * np.sin(angle), point_mass=masses)
    elif cls == "vort":
        vort = preset["vort"]
        log_m = rng.uniform(np.log10(vort["axion_mass_min_ev"]), np.log10(vort["axion_mass_max_ev"]))
        m_a = 10.0**log_m
        half_length = float(physics.vortex_half_length_arcsec(m_a, coeff_arcsec_ev=vort["length_coeff_arcsec_ev"]))
        angle = rng.uniform(0.0, 2.0 * np.pi)
        n = int(vort["n_points"])
        px, py = physics.vortex_positions_arcsec(half_length, angle, n)
        p.update(point_x=px, point_y=py, point_mass=np.full(n, vort["total_mass_msun"] / n),
                 axion_mass_ev=m_a, vortex_half_length_arcsec=half_length, vortex_angle_rad=angle)
    elif cls != "no":
        raise ValueError(f"unknown substructure class {cls!r}; expected one of {SUBSTRUCTURE_CLASSES}")
    if len(p["point_mass"]):
        m = p["point_mass"]
        s = np.sort(m)  # min, max and median (the values np.min / np.max / np.median give, faster)
        p.update(point_theta_e=physics.theta_e_arcsec_from_mass(m, *distances_mpc), n_subhalos=len(m),
                 subhalo_mass_total_msun=float(m.sum()), subhalo_mass_min_msun=float(s[0]),
                 subhalo_mass_max_msun=float(s[-1]),
                 subhalo_mass_median_msun=float(0.5 * (s[(len(s) - 1) // 2] + s[len(s) // 2])))
    noise = preset["noise"]
    if noise["kind"] == "deeplense-poisson":
        p["exposure_s"] = 10.0 ** rng.uniform(noise["log10_exposure_min"], noise["log10_exposure_max"])
    else:
        p["exposure_s"] = noise["exposure_time_s"] * noise["num_exposures"]
    return p


# ----------------------------------------------------------------------------- lens finding
N_LIGHT_SLOTS = 6    # central bulge, central disk, confuser companion, 3 neighbours
N_RING_SLOTS = 1     # ring galaxy / tidal arc
N_SOURCE_SLOTS = 4   # source + 3 clumps
N_STAR_SLOTS = 2


def _colour_fluxes(mag_i: float, g_r: float, r_i: float) -> np.ndarray:
    """Fluxes (g, r, i) in nanomaggies from an i magnitude and two colours."""
    mag_r = mag_i + r_i
    zp = physics.AB_NANOMAGGY_ZERO_POINT  # physics.mag_to_nanomaggies, on three scalars
    return np.array([10.0 ** (-0.4 * (mag_r + g_r - zp)), 10.0 ** (-0.4 * (mag_r - zp)), 10.0 ** (-0.4 * (mag_i - zp))])


def _u(rng, bounds):
    return rng.uniform(bounds[0], bounds[1])


def _unit_sersic_flux(r_eff: float, n: float) -> float:
    """``conv.sersic_total_flux(1, r_eff, n)`` for scalars, with the math module (fast)."""
    b = max(1.9992 * n - 0.3271, 1e-5)
    return 2.0 * math.pi * n * r_eff * r_eff * math.exp(b) * b ** (-2.0 * n) * math.gamma(2.0 * n)


def _sersic_slot(x, y, q, phi, n, r_eff, fluxes):
    """A Sersic light slot in lenstronomy conventions with per-band total fluxes."""
    return {"x": x, "y": y, "q": q, "phi": phi, "n": n, "r_eff": r_eff,
            "amp": np.asarray(fluxes) / _unit_sersic_flux(r_eff, n)}


def _galaxy(rng, kind: str, pop: dict, mag_i: float, x: float, y: float) -> tuple[list, dict]:
    """Slots of an elliptical or disk galaxy; returns (slots, summary)."""
    phi = rng.uniform(0.0, math.pi)
    if kind == "elliptical":
        e = pop["elliptical"]
        q, n, r_eff = _u(rng, e["q"]), _u(rng, e["n"]), _u(rng, e["r_eff_arcsec"])
        fluxes = _colour_fluxes(mag_i, _u(rng, e["g_r"]), _u(rng, e["r_i"]))
        return [_sersic_slot(x, y, q, phi, n, r_eff, fluxes)], {"q": q, "phi": phi, "r_eff": r_eff}
    d = pop["disk"]
    edge_on = rng.uniform() < d["edge_on_fraction"]
    q = rng.uniform(0.1, 0.25) if edge_on else rng.uniform(0.4, 1.0)
    r_eff = _u(rng, pop["elliptical"]["r_eff_arcsec"])
    bulge_frac = _u(rng, d["bulge_fraction"])
    total = _colour_fluxes(mag_i, _u(rng, d["g_r"]), _u(rng, d["r_i"]))
    bulge_col = _colour_fluxes(mag_i, 0.8, 0.4)  # bulges are red: same i flux, red colours
    bulge = bulge_col / bulge_col[2] * total[2] * bulge_frac
    disk = np.maximum(total - bulge, total * 0.05)
    slots = [_sersic_slot(x, y, min(1.0, q + 0.3), phi, d["bulge_n"], 0.3 * r_eff, bulge),
             _sersic_slot(x, y, q, phi, 1.0, r_eff, disk)]
    return slots, {"q": q, "phi": phi, "r_eff": r_eff, "edge_on": edge_on}


def sample_lensfinding(rng: np.random.Generator, is_lens: bool, preset: dict) -> dict:
    """Parameters of one Task-2 cutout: light slots, ring/arc slot, lens, source, stars."""
    pop = preset
    half = preset["num_pix"] * preset["pixel_scale_arcsec"] / 2.0
    light, rings, sources, stars = [], [], [], []
    gx, gy = (float(v) for v in rng.uniform(-0.1, 0.1, 2))
    mag_i = _u(rng, pop["central_mag_i"])
    if is_lens:
        mix = pop["lens_deflector_mix"]
        kind = "elliptical" if rng.uniform() < mix["elliptical"] else "disk"
    else:
        mix = pop["nonlens_mix"]
        u = rng.uniform()
        kind = ("elliptical" if u < mix["elliptical"] else
                "disk" if u < mix["elliptical"] + mix["disk"] else "confuser")
    confuser_kind = ""
    if kind == "confuser":
        confuser_kind = str(rng.choice(pop["confuser_kinds"]))
        host = "disk" if confuser_kind == "ring" else "elliptical"
        slots, gal = _galaxy(rng, host, pop, mag_i, gx, gy)
        light += slots
        ang = rng.uniform(0.0, 2.0 * math.pi)
        if confuser_kind == "merger":  # a similar galaxy 0.6-1.6 arcsec away
            sep = rng.uniform(0.6, 1.6)
            comp, _ = _galaxy(rng, "elliptical", pop, mag_i + rng.uniform(0.0, 1.5),
                              gx + sep * math.cos(ang), gy + sep * math.sin(ang))
            light += comp
        elif confuser_kind == "blue_companion":  # compact blue knot 0.5-2 arcsec away
            sep = rng.uniform(0.5, 2.0)
            fluxes = _colour_fluxes(rng.uniform(21.0, 24.0), rng.uniform(-0.1, 0.3), rng.uniform(-0.1, 0.2))
            light.append(_sersic_slot(gx + sep * math.cos(ang), gy + sep * math.sin(ang),
                                      rng.uniform(0.5, 1.0), rng.uniform(0, math.pi), 1.0,
                                      rng.uniform(0.1, 0.3), fluxes))
        else:  # blue ring (full) or tidal arc (partial) around the galaxy
            radius = rng.uniform(1.0, 2.5)
            width = rng.uniform(0.1, 0.3)
            full = confuser_kind == "ring"
            arc_half = np.inf if full else rng.uniform(0.3, 1.2)
            fluxes = _colour_fluxes(rng.uniform(20.5, 23.5), rng.uniform(-0.1, 0.4), rng.uniform(-0.1, 0.3))
            ring_q = rng.uniform(0.6, 1.0)
            angular = 2 * math.pi if full else arc_half * math.sqrt(2 * math.pi)
            norm = radius * angular * width * math.sqrt(2 * math.pi)  # approx. integral of unit profile
            rings.append({"x": gx, "y": gy, "q": ring_q, "phi": rng.uniform(0, math.pi),
                          "radius": radius, "width": width, "arc_angle": ang,
                          "arc_half_width": arc_half, "amp": fluxes / norm})
    else:
        slots, gal = _galaxy(rng, kind, pop, mag_i, gx, gy)
        light += slots
    p = {"deflector_type": kind, "confuser_kind": confuser_kind, "deflector_mag_i": mag_i,
         "deflector_x_arcsec": gx, "deflector_y_arcsec": gy, "deflector_q": gal["q"],
         "deflector_r_eff_arcsec": gal["r_eff"]}

    # neighbours anywhere in the field, avoiding the central 1.5 arcsec
    n_neigh = int(rng.integers(0, pop["neighbours"]["max"] + 1))
    for _ in range(n_neigh):
        r = rng.uniform(1.5 * 1.5, half**2) ** 0.5
        ang = rng.uniform(0, 2 * math.pi)
        slots, _ = _galaxy(rng, "elliptical" if rng.uniform() < 0.5 else "disk", pop,
                           _u(rng, pop["neighbours"]["mag_i"]), r * math.cos(ang), r * math.sin(ang))
        light += slots
    n_stars = int(rng.integers(0, pop["stars"]["max"] + 1))
    for _ in range(n_stars):
        sx, sy = rng.uniform(-half, half, 2)
        fluxes = _colour_fluxes(_u(rng, pop["stars"]["mag_i"]), rng.uniform(0.3, 1.4), rng.uniform(0.1, 0.6))
        stars.append({"x": sx, "y": sy, "flux": fluxes})
    p.update(n_neighbours=n_neigh, n_stars=n_stars)

    if is_lens:
        theta_e = math.exp(rng.uniform(*(math.log(v) for v in pop["theta_e_arcsec"])))
        q_mass = float(min(1.0, max(0.3, gal["q"] + rng.normal(0.0, pop["mass_q_scatter"]))))
        gamma = rng.uniform(0.0, pop["shear_max"])
        gamma_ang = rng.uniform(0.0, math.pi)
        s = pop["source"]
        r_off = theta_e * s["max_offset_theta_e"] * math.sqrt(rng.uniform())
        a_off = rng.uniform(0, 2 * math.pi)
        sx, sy = gx + r_off * math.cos(a_off), gy + r_off * math.sin(a_off)
        mag_src = _u(rng, s["mag_i"])
        g_r, r_i = _u(rng, s["g_r"]), _u(rng, s["r_i"])
        src_r = _u(rng, s["r_eff_arcsec"])
        n_clumps = int(rng.integers(0, s["max_clumps"] + 1))
        clump_frac = rng.uniform(0.05, 0.2, n_clumps)
        total = _colour_fluxes(mag_src, g_r, r_i)
        main = total * max(0.3, 1.0 - clump_frac.sum())
        sources.append(_sersic_slot(sx, sy, _u(rng, s["q"]), rng.uniform(0, math.pi), _u(rng, s["n"]), src_r, main))
        for frac in clump_frac:  # compact, bluer star-forming knots inside the source
            cr = src_r * math.sqrt(rng.uniform())
            ca = rng.uniform(0, 2 * math.pi)
            bluer = _colour_fluxes(mag_src, g_r - 0.2, r_i - 0.1)
            sources.append(_sersic_slot(sx + cr * math.cos(ca), sy + cr * math.sin(ca), rng.uniform(0.6, 1.0),
                                        rng.uniform(0, math.pi), 1.0, rng.uniform(0.03, 0.08),
                                        bluer / bluer[2] * total[2] * frac))
        p.update(theta_e_arcsec=theta_e, mass_q=q_mass, mass_phi_rad=gal["phi"],
                 shear_gamma1=gamma * math.cos(2 * gamma_ang), shear_gamma2=gamma * math.sin(2 * gamma_ang),
                 source_x_arcsec=sx, source_y_arcsec=sy, source_offset_theta_e=r_off / theta_e,
                 source_mag_i=mag_src, source_r_eff_arcsec=src_r, n_clumps=n_clumps,
                 source_flux_i_nmgy=float(sum(sl["amp"][2] * _unit_sersic_flux(sl["r_eff"], sl["n"])
                                              for sl in sources)))
    else:
        p.update(theta_e_arcsec=0.0, mass_q=np.nan, mass_phi_rad=np.nan, shear_gamma1=0.0, shear_gamma2=0.0,
                 source_x_arcsec=np.nan, source_y_arcsec=np.nan, source_offset_theta_e=np.nan,
                 source_mag_i=np.nan, source_r_eff_arcsec=np.nan, n_clumps=0, source_flux_i_nmgy=0.0)
    p.update(light=light, rings=rings, sources=sources, stars=stars)
    return p
