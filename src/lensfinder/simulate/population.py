"""Per-object parameter samplers. Every object's random numbers come from its own
``numpy.random.SeedSequence([seed, task, split, class, index])``, never from a batch-level
generator, so files do not depend on batch size, worker count or resumption."""

from __future__ import annotations

import math

import numpy as np

from ..data.layouts import LENSFINDING_CLASSES  # the layout's class list, the one the files are read with
from ..validation import InputError
from . import conventions as conv
from . import physics, render

TASK_CODES = {"substructure": 1, "lensfinding": 2}
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "stream": 9}
SUBSTRUCTURE_CLASSES = ("no", "sphere", "vort")


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
        raise InputError(f"unknown substructure class {cls!r}; expected one of {SUBSTRUCTURE_CLASSES}")
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
# Every number below comes from the preset (presets/_lensfinding.yaml and the survey's file); this
# module only turns those ranges into one object's slots.


def _colour_fluxes(mag_i: float, g_r: float, r_i: float) -> np.ndarray:
    """Fluxes (g, r, i) in nanomaggies from an i magnitude and two colours."""
    mag_r = mag_i + r_i
    zp = physics.AB_NANOMAGGY_ZERO_POINT  # physics.mag_to_nanomaggies, on three scalars
    return np.array([10.0 ** (-0.4 * (mag_r + g_r - zp)), 10.0 ** (-0.4 * (mag_r - zp)), 10.0 ** (-0.4 * (mag_i - zp))])


def _u(rng, bounds):
    return rng.uniform(bounds[0], bounds[1])


def _count(rng, bounds) -> int:
    """An integer uniform in [lo, hi], both included."""
    return int(rng.integers(int(bounds[0]), int(bounds[1]) + 1))


def _log_u(rng, bounds) -> float:
    return math.exp(rng.uniform(math.log(bounds[0]), math.log(bounds[1])))


def _pick(rng, mix: dict) -> str:
    """A key of `mix` drawn with probability proportional to its value."""
    keys = list(mix)
    weights = np.array([float(mix[k]) for k in keys])
    return keys[int(np.searchsorted(np.cumsum(weights) / weights.sum(), rng.uniform(), side="right"))]


def _colours(rng, spec: dict) -> tuple[float, float]:
    return _u(rng, spec["g_r"]), _u(rng, spec["r_i"])


def _unit_sersic_flux(r_eff: float, n: float) -> float:
    """``conv.sersic_total_flux(1, r_eff, n)`` for scalars, with the math module (fast)."""
    b = float(conv.sersic_b_n(n))
    return 2.0 * math.pi * n * r_eff * r_eff * math.exp(b) * b ** (-2.0 * n) * math.gamma(2.0 * n)


def _sersic_slot(x, y, q, phi, n, r_eff, fluxes):
    """A Sersic light slot in lenstronomy conventions with per-band total fluxes."""
    return {"x": x, "y": y, "q": q, "phi": phi, "n": n, "r_eff": r_eff,
            "amp": np.asarray(fluxes) / _unit_sersic_flux(r_eff, n)}


def _galaxy(rng, kind: str, pop: dict, mag_i: float, x: float, y: float, *, edge_on: bool | None = None) -> tuple[list, dict]:
    """Slots of an elliptical or disk galaxy; returns (slots, summary). `edge_on` forces a disk's inclination."""
    phi = rng.uniform(0.0, math.pi)
    if kind == "elliptical":
        e = pop["elliptical"]
        q, n, r_eff = _u(rng, e["q"]), _u(rng, e["n"]), _u(rng, e["r_eff_arcsec"])
        fluxes = _colour_fluxes(mag_i, *_colours(rng, e))
        return [_sersic_slot(x, y, q, phi, n, r_eff, fluxes)], {"q": q, "phi": phi, "r_eff": r_eff, "kind": kind}
    d = pop["disk"]
    if edge_on is None:
        edge_on = rng.uniform() < d["edge_on_fraction"]
    q = _u(rng, d["edge_on_q"] if edge_on else d["face_on_q"])
    r_eff = _u(rng, pop["elliptical"]["r_eff_arcsec"])
    bulge_frac = _u(rng, d["bulge_fraction"])
    total = _colour_fluxes(mag_i, *_colours(rng, d))
    bulge_col = _colour_fluxes(mag_i, d["bulge_g_r"], d["bulge_r_i"])  # bulges are red: same i flux
    bulge = bulge_col / bulge_col[2] * total[2] * bulge_frac
    disk = np.maximum(total - bulge, total * 0.05)
    slots = [_sersic_slot(x, y, min(1.0, q + 0.3), phi, d["bulge_n"], 0.3 * r_eff, bulge),
             _sersic_slot(x, y, q, phi, 1.0, r_eff, disk)]
    return slots, {"q": q, "phi": phi, "r_eff": r_eff, "kind": kind, "edge_on": edge_on, "flux": total}


def _polar(rng, bounds, x: float, y: float) -> tuple[float, float, float]:
    """A point at a distance drawn from `bounds` and a random angle around (x, y): (x, y, angle)."""
    r, a = _u(rng, bounds), rng.uniform(0.0, 2.0 * math.pi)
    return x + r * math.cos(a), y + r * math.sin(a), a


def _knot(rng, x, y, spec: dict, fluxes) -> dict:
    return _sersic_slot(x, y, rng.uniform(0.6, 1.0), rng.uniform(0.0, math.pi), 1.0, _u(rng, spec["r_eff_arcsec"]), fluxes)


def _ring_component(rng, spec: dict, host: dict, gx: float, gy: float) -> tuple[list, list]:
    """Rings or arcs (and knots on them) around a host: (ring slots, light slots)."""
    rings, light = [], []
    n = _count(rng, spec["count"])
    cx, cy, _ = _polar(rng, spec["offset_arcsec"], gx, gy)
    q, phi = _u(rng, spec["q"]), rng.uniform(0.0, math.pi)
    for _ in range(n):
        radius, width = _u(rng, spec["radius_arcsec"]), _u(rng, spec["width_arcsec"])
        full = "arc_half_rad" not in spec
        arc_half = math.inf if full else _u(rng, spec["arc_half_rad"])
        fluxes = _colour_fluxes(_u(rng, spec["mag_i"]), *_colours(rng, spec))
        angles = [rng.uniform(0.0, 2.0 * math.pi)]
        if spec.get("mirror"):
            angles.append(angles[0] + math.pi)
        for ang in angles:
            angular = 2 * math.pi if full else arc_half * math.sqrt(2 * math.pi)
            norm = radius * angular * width * math.sqrt(2 * math.pi)  # approx. integral of the unit profile
            rings.append({"x": cx, "y": cy, "q": q, "phi": phi, "radius": radius, "width": width,
                          "arc_angle": ang, "arc_half_width": arc_half, "amp": fluxes / len(angles) / norm})
            for _ in range(_count(rng, spec.get("knots", [0, 0]))):  # star-forming clumps on the ring
                t = ang + (rng.uniform(-math.pi, math.pi) if full else rng.normal(0.0, arc_half))
                kx, ky = radius * math.cos(t - phi), radius * math.sin(t - phi)  # on the ellipse, host frame
                kx, ky = kx / math.sqrt(q), ky * math.sqrt(q)
                light.append(_knot(rng, cx + kx * math.cos(phi) - ky * math.sin(phi),
                                   cy + kx * math.sin(phi) + ky * math.cos(phi),
                                   {"r_eff_arcsec": [0.03, 0.12]}, fluxes * rng.uniform(0.05, 0.2)))
    return rings, light


def _companion_component(rng, spec: dict, host: dict, gx: float, gy: float, host_mag: float) -> list:
    light = []
    for _ in range(_count(rng, spec["count"])):
        x, y, _ = _polar(rng, spec["separation_arcsec"], gx, gy)
        mag = _u(rng, spec["mag_i"]) if "mag_i" in spec else host_mag + _u(rng, spec["mag_offset"])
        fluxes = _colour_fluxes(mag, *_colours(rng, spec))
        light.append(_sersic_slot(x, y, _u(rng, spec["q"]), rng.uniform(0.0, math.pi), _u(rng, spec["n"]),
                                  _u(rng, spec["r_eff_arcsec"]), fluxes))
    return light


def _knots_component(rng, spec: dict, host: dict, gx: float, gy: float) -> list:
    light = []
    cx, cy, _ = _polar(rng, spec["offset_arcsec"], gx, gy)
    n, extent = _count(rng, spec["count"]), _u(rng, spec["extent_arcsec"])
    ang = rng.uniform(0.0, math.pi)
    for k in range(n):
        if spec["layout"] == "line":  # a chain: evenly spaced along a line, with a little scatter
            t = (k / max(n - 1, 1) - 0.5) * extent
            x, y = cx + t * math.cos(ang) + rng.normal(0, 0.05), cy + t * math.sin(ang) + rng.normal(0, 0.05)
        else:  # clumpy: uniform in a disk of radius extent
            r, a = extent * math.sqrt(rng.uniform()), rng.uniform(0.0, 2.0 * math.pi)
            x, y = cx + r * math.cos(a), cy + r * math.sin(a)
        light.append(_knot(rng, x, y, spec, _colour_fluxes(_u(rng, spec["mag_i"]), *_colours(rng, spec))))
    return light


def _dust_lane(rng, spec: dict, host: dict, gx: float, gy: float, host_flux: np.ndarray) -> list:
    """Negative light along the host's major axis: a thin exponential that removes a fraction of its flux."""
    removed = host_flux * _u(rng, spec["flux_fraction"])
    return [_sersic_slot(gx, gy, _u(rng, spec["q"]), host["phi"], 1.0, host["r_eff"] * _u(rng, spec["r_eff_scale"]),
                         -removed)]


def _confuser(rng, family: str, pop: dict, mag_i: float, gx: float, gy: float) -> tuple[list, list, dict]:
    """One confuser family around its host: (light slots, ring slots, host summary)."""
    spec = pop["confusers"][family]
    host_kind = _pick(rng, spec.get("hosts", pop["hosts"]))
    dusty = any(c["type"] == "dust_lane" for c in spec["components"])
    light, gal = _galaxy(rng, host_kind, pop, mag_i, gx, gy, edge_on=True if dusty and host_kind == "disk" else None)
    host_flux = gal.get("flux", _colour_fluxes(mag_i, 0.8, 0.4))
    rings: list = []
    for comp in spec["components"]:
        kind = comp["type"]
        if kind == "ring":
            r, extra = _ring_component(rng, comp, gal, gx, gy)
            rings += r
            light += extra
        elif kind == "companion":
            light += _companion_component(rng, comp, gal, gx, gy, mag_i)
        elif kind == "knots":
            light += _knots_component(rng, comp, gal, gx, gy)
        elif kind == "dust_lane":
            light += _dust_lane(rng, comp, gal, gx, gy, host_flux)
        else:
            raise InputError(f"confuser family {family!r}: unknown component type {kind!r} "
                             "(expected ring, companion, knots or dust_lane)")
    return light, rings, gal


def _group(rng, pop: dict, mag_i: float, gx: float, gy: float) -> tuple[list, dict]:
    """A group-scale deflector: a bright elliptical and members around it."""
    g = pop["group"]
    light, gal = _galaxy(rng, "elliptical", pop, mag_i, gx, gy)
    for _ in range(_count(rng, g["members"])):
        x, y, _ = _polar(rng, g["member_separation_arcsec"], gx, gy)
        member, _ = _galaxy(rng, "elliptical", pop, mag_i + _u(rng, g["member_mag_offset"]), x, y)
        light += member
    return light, dict(gal, kind="group")


def _artefacts(rng, pop: dict, half: float) -> list[dict]:
    """Image artefacts of one object, each kind with its preset probability (see ``artefacts.apply``)."""
    out = []
    for kind, a in pop.get("artefacts", {}).items():
        if rng.uniform() >= a["probability"]:
            continue
        if kind == "cosmic_ray":
            for _ in range(_count(rng, a["count"])):
                out.append({"kind": kind, "band": int(rng.integers(0, len(pop["bands"]))),
                            "x": rng.uniform(-half, half), "y": rng.uniform(-half, half),
                            "length_pix": _u(rng, a["length_pix"]), "angle": rng.uniform(0.0, math.pi),
                            "amplitude_sigma": _log_u(rng, a["amplitude_sigma"])})
        elif kind == "satellite_trail":
            out.append({"kind": kind, "band": -1 if rng.uniform() < a["all_bands"] else int(rng.integers(0, len(pop["bands"]))),
                        "offset": rng.uniform(-half, half), "angle": rng.uniform(0.0, math.pi),
                        "width_pix": _u(rng, a["width_pix"]), "amplitude_sigma": _log_u(rng, a["amplitude_sigma"])})
        elif kind == "bright_star":
            x, y, _ = _polar(rng, a["distance_arcsec"], 0.0, 0.0)
            out.append({"kind": kind, "x": x, "y": y, "flux": _colour_fluxes(_u(rng, a["mag_i"]), *_colours(rng, a)),
                        "spike_fraction": _u(rng, a["spike_fraction"]), "spike_width_pix": _u(rng, a["spike_width_pix"]),
                        "spike_angle": rng.uniform(0.0, math.pi / 2), "saturation_sigma": _u(rng, a["saturation_sigma"])})
        elif kind == "bad_pixels":
            out.append({"kind": kind, "band": -1 if rng.uniform() < a["all_bands"] else int(rng.integers(0, len(pop["bands"]))),
                        "columns": [float(v) for v in rng.uniform(-half, half, _count(rng, a["columns"]))],
                        "block": bool(rng.uniform() < a["block_fraction"]),
                        "block_xy": [float(v) for v in rng.uniform(-half, half, 2)], "block_size": rng.uniform(0.5, 3.0)})
        elif kind == "sky_residual":
            x, y, _ = _polar(rng, [0.0, half], 0.0, 0.0)
            out.append({"kind": kind, "x": x, "y": y, "amplitude_sigma": _u(rng, a["amplitude_sigma"]),
                        "scale_arcsec": _u(rng, a["scale_arcsec"])})
        else:
            raise InputError(f"unknown artefact kind {kind!r} in the preset (expected cosmic_ray, satellite_trail, "
                             "bright_star, bad_pixels or sky_residual)")
    return out


def _lensed_source(rng, pop: dict, theta_e: float, gx: float, gy: float) -> tuple[list, dict]:
    """An extended lensed source (Sersic + star-forming clumps): (source slots, manifest values)."""
    s = pop["source"]
    r_off = theta_e * s["max_offset_theta_e"] * math.sqrt(rng.uniform())
    a_off = rng.uniform(0, 2 * math.pi)
    sx, sy = gx + r_off * math.cos(a_off), gy + r_off * math.sin(a_off)
    mag_src = _u(rng, s["mag_i"])
    g_r, r_i = _colours(rng, s)
    src_r = _u(rng, s["r_eff_arcsec"])
    n_clumps = _count(rng, [0, s["max_clumps"]])
    clump_frac = rng.uniform(0.05, 0.2, n_clumps)
    total = _colour_fluxes(mag_src, g_r, r_i)
    sources = [_sersic_slot(sx, sy, _u(rng, s["q"]), rng.uniform(0, math.pi), _u(rng, s["n"]), src_r,
                            total * max(0.3, 1.0 - clump_frac.sum()))]
    for frac in clump_frac:  # compact, bluer star-forming knots inside the source
        cr, ca = src_r * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        bluer = _colour_fluxes(mag_src, g_r - 0.2, r_i - 0.1)
        sources.append(_sersic_slot(sx + cr * math.cos(ca), sy + cr * math.sin(ca), rng.uniform(0.6, 1.0),
                                    rng.uniform(0, math.pi), 1.0, rng.uniform(0.03, 0.08), bluer / bluer[2] * total[2] * frac))
    return sources, {"source_x_arcsec": sx, "source_y_arcsec": sy, "source_offset_theta_e": r_off / theta_e,
                     "source_mag_i": mag_src, "source_r_eff_arcsec": src_r, "n_clumps": n_clumps}


def _quasar(rng, pop: dict, lens: dict, gx: float, gy: float) -> tuple[list, list, dict]:
    """A lensed quasar: point images from the lens equation (doubles, quads) and its faint host galaxy.
    Returns (host slots to lens, point images (unlensed positions solved), manifest values)."""
    qs = pop["quasar"]
    theta_e = lens["theta_e_arcsec"]
    r_off = theta_e * qs["max_offset_theta_e"] * math.sqrt(rng.uniform())
    a_off = rng.uniform(0, 2 * math.pi)
    sx, sy = gx + r_off * math.cos(a_off), gy + r_off * math.sin(a_off)
    mag_q = _u(rng, qs["mag_i"])
    flux = _colour_fluxes(mag_q, *_colours(rng, qs))
    xs, ys, mu = render.point_images(beta_x=sx, beta_y=sy, x0=gx, y0=gy, q=lens["mass_q"], phi=lens["mass_phi_rad"],
                                     theta_e=theta_e, gamma1=lens["shear_gamma1"], gamma2=lens["shear_gamma2"])
    points = [{"x": float(x), "y": float(y), "flux": flux * abs(float(m))} for x, y, m in zip(xs, ys, mu)]
    s = pop["source"]
    host_mag = mag_q + _u(rng, qs["host_mag_offset"])
    host_r = _u(rng, s["r_eff_arcsec"])
    host = [_sersic_slot(sx, sy, _u(rng, s["q"]), rng.uniform(0, math.pi), 1.0, host_r,
                         _colour_fluxes(host_mag, *_colours(rng, s)))]
    return host, points, {"source_x_arcsec": sx, "source_y_arcsec": sy, "source_offset_theta_e": r_off / theta_e,
                          "source_mag_i": mag_q, "source_r_eff_arcsec": host_r, "n_clumps": 0, "n_images": len(points)}


def confuser_families(preset: dict) -> list[str]:
    """The look-alike families a lens-finding preset draws, in preset order: the confuser families, then
    the artefact kinds."""
    return list(preset["confusers"]) + list(preset.get("artefacts", {}))


def select_confusers(preset: dict, spec: list[str] | None) -> dict:
    """The preset with only the chosen families (confuser families and artefact kinds alike): `spec`
    lists names, or ``all``, and names prefixed with ``-`` leave a family out (``["all", "-shells"]``, or
    just ``["-shells"]``). None keeps every family. Unknown names raise ValueError listing the known ones."""
    if spec is None:
        return preset
    known = confuser_families(preset)
    names = [n.strip() for n in spec if n.strip()]
    unknown = [n for n in names if n.lstrip("-") not in known and n != "all"]
    if unknown:
        raise InputError(f"unknown confuser famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                         f"known: {', '.join(known)} (or all; prefix a name with - to leave it out)")
    include = [n for n in names if not n.startswith("-")]
    chosen = set(known) if not include or "all" in include else set(include)
    chosen -= {n[1:] for n in names if n.startswith("-")}
    out = dict(preset)
    out["confusers"] = {k: v for k, v in preset["confusers"].items() if k in chosen}
    out["artefacts"] = {k: v for k, v in preset.get("artefacts", {}).items() if k in chosen}
    return out


def sample_lensfinding(rng: np.random.Generator, is_lens: bool, preset: dict) -> dict:
    """Parameters of one Task-2 cutout: light slots, ring/arc slots, lens, source, quasar images, stars,
    observing conditions and artefacts."""
    pop = preset
    half = preset["num_pix"] * preset["pixel_scale_arcsec"] / 2.0
    light, rings, sources, stars, points = [], [], [], [], []
    gx, gy = (float(v) for v in rng.uniform(-0.1, 0.1, 2))
    mag_i = _u(rng, pop["central_mag_i"])
    confuser_kind = ""
    if is_lens:
        kind = _pick(rng, pop["lens_deflector_mix"])
    else:
        kind = _pick(rng, pop["nonlens_mix"])
        if kind == "confuser" and not pop["confusers"]:
            kind = "elliptical"  # a population with every family left out
    if kind == "confuser":
        confuser_kind = _pick(rng, {f: v["weight"] for f, v in pop["confusers"].items()})
        light, rings, gal = _confuser(rng, confuser_kind, pop, mag_i, gx, gy)
    elif kind == "group":
        light, gal = _group(rng, pop, mag_i, gx, gy)
    else:
        light, gal = _galaxy(rng, kind, pop, mag_i, gx, gy)
    obs = pop["observing"]
    p = {"deflector_type": gal["kind"], "confuser_kind": confuser_kind, "deflector_mag_i": mag_i,
         "deflector_x_arcsec": gx, "deflector_y_arcsec": gy, "deflector_q": gal["q"],
         "deflector_r_eff_arcsec": gal["r_eff"],
         "seeing_scale": round(_u(rng, obs["seeing_scale"]) / obs["seeing_scale_step"]) * obs["seeing_scale_step"],
         "depth_mag": _u(rng, obs["depth_mag"]), "sky_mag": _u(rng, obs["sky_mag"])}

    # neighbours anywhere in the field, avoiding the central 1.5 arcsec
    n_neigh = _count(rng, [0, pop["neighbours"]["max"]])
    for _ in range(n_neigh):
        r = rng.uniform(1.5 * 1.5, half**2) ** 0.5
        ang = rng.uniform(0, 2 * math.pi)
        slots, _ = _galaxy(rng, "elliptical" if rng.uniform() < 0.5 else "disk", pop,
                           _u(rng, pop["neighbours"]["mag_i"]), r * math.cos(ang), r * math.sin(ang))
        light += slots
    n_stars = _count(rng, [0, pop["stars"]["max"]])
    for _ in range(n_stars):
        sx, sy = rng.uniform(-half, half, 2)
        stars.append({"x": sx, "y": sy, "flux": _colour_fluxes(_u(rng, pop["stars"]["mag_i"]), *_colours(rng, pop["stars"]))})
    p.update(n_neighbours=n_neigh, n_stars=n_stars)

    if is_lens:
        g = pop["group"] if kind == "group" else pop
        theta_e = _log_u(rng, g["theta_e_arcsec"])
        gamma, gamma_ang = rng.uniform(0.0, pop["shear_max"]), rng.uniform(0.0, math.pi)
        lens = {"theta_e_arcsec": theta_e, "mass_q": float(min(1.0, max(0.3, gal["q"] + rng.normal(0.0, pop["mass_q_scatter"])))),
                "mass_phi_rad": gal["phi"], "shear_gamma1": gamma * math.cos(2 * gamma_ang),
                "shear_gamma2": gamma * math.sin(2 * gamma_ang)}
        p.update(lens)
        if rng.uniform() < pop["quasar"]["fraction"]:
            sources, points, src = _quasar(rng, pop, lens, gx, gy)
            p.update(src, source_kind="quasar")
        else:
            sources, src = _lensed_source(rng, pop, theta_e, gx, gy)
            p.update(src, source_kind="galaxy", n_images=0)
        p["source_flux_i_nmgy"] = float(sum(sl["amp"][2] * _unit_sersic_flux(sl["r_eff"], sl["n"]) for sl in sources))
    else:
        p.update(theta_e_arcsec=0.0, mass_q=np.nan, mass_phi_rad=np.nan, shear_gamma1=0.0, shear_gamma2=0.0,
                 source_x_arcsec=np.nan, source_y_arcsec=np.nan, source_offset_theta_e=np.nan, source_kind="",
                 source_mag_i=np.nan, source_r_eff_arcsec=np.nan, n_clumps=0, n_images=0, source_flux_i_nmgy=0.0)
    artefacts = _artefacts(rng, pop, half)
    p.update(light=light, rings=rings, sources=sources, stars=stars, points=points, artefacts=artefacts,
             artefact_kinds=";".join(sorted({a["kind"] for a in artefacts})))
    return p
