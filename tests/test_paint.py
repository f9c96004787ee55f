"""Bring your own survey (issue 16): simulated lensed sources painted onto the user's cutouts
(`lensfinder simulate lensfinding --hosts`), PSF images from the stars in them (`lensfinder psf`), and
fine-tuning from the shipped weights on the result (`lensfinder train --init shipped`)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from lensfinder.simulate import conventions as conv
from lensfinder.simulate import paint
from lensfinder.simulate.cli import app as simulate_app
from lensfinder.validation import InputError
from conftest import sigkill_part_way_then_resume

PIXEL = 0.2  # arcsec, the tests' hosts
SKY = np.array([0.01, 0.012, 0.02])  # the hosts' sky noise per band (their units: nanomaggies, zero point 22.5)


# ----------------------------------------------------------------------------- helpers
def _source(x, y, *, r_eff, mag, n=1.0, zero_point=22.5):
    """A round Sersic source slot of total magnitude `mag` in every band (population slot format)."""
    flux = 10.0 ** (-0.4 * (mag - zero_point))
    return {"x": x, "y": y, "q": 1.0, "phi": 0.0, "n": n, "r_eff": r_eff,
            "amp": np.full(3, flux) / conv.sersic_total_flux(1.0, r_eff, n)}


def _sis(theta_e, x=0.0, y=0.0, sources=()):
    return {"theta_e_arcsec": theta_e, "mass_q": 1.0, "mass_phi_rad": 0.0, "shear_gamma1": 0.0, "shear_gamma2": 0.0,
            "deflector_x_arcsec": x, "deflector_y_arcsec": y, "sources": list(sources), "points": []}


def _paint(params, psf, *, num_pix, pixel=PIXEL, zero_point=22.5, support_floor=1e-9):
    return paint.painted_light(params, psf, num_pix=num_pix, pixel_scale_arcsec=pixel, zero_point=zero_point,
                               supersampling=4, support_floor=support_floor, band_index=[0, 1, 2])


def _centroid(plane, pixel):
    axis = conv.pixel_grid_arcsec(plane.shape[-1], pixel)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return (plane * xx).sum() / plane.sum(), (plane * yy).sum() / plane.sum()


def _host(rng, size, *, mag=19.5, offset=(0.0, 0.0), stars=()):
    """A host cutout (3, size, size) float32 in nanomaggies: an exponential galaxy, Gaussian stars, sky noise."""
    axis = conv.pixel_grid_arcsec(size, PIXEL)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    r = np.hypot(xx - offset[0], yy - offset[1])
    galaxy = np.exp(-r / 0.4)
    galaxy /= galaxy.sum()
    image = np.stack([galaxy * 10 ** (-0.4 * (mag + c - 22.5)) for c in (1.2, 0.5, 0.0)])
    for sx, sy, smag, sigma_arcsec in stars:
        star = np.exp(-0.5 * ((xx - sx) ** 2 + (yy - sy) ** 2) / sigma_arcsec**2)
        image += np.stack([star / star.sum() * 10 ** (-0.4 * (smag - 22.5))] * 3)
    return (image + rng.normal(0.0, 1.0, image.shape) * SKY[:, None, None]).astype(np.float32)


def _hosts_folder(folder: Path, n: int, *, size=48, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        np.save(folder / f"host_{i:04d}.npy", _host(rng, size, mag=rng.uniform(18.0, 21.0),
                                                    offset=rng.uniform(-0.3, 0.3, 2)))
    return folder


def _invoke(args):
    result = CliRunner().invoke(simulate_app, ["lensfinding", *map(str, args)])
    return result


def _paint_cli(hosts, out, *extra):
    result = _invoke(["--hosts", hosts, "--out", out, "--pixel-scale", PIXEL, "--zero-point", 22.5,
                      "--psf-fwhm", "0.9,0.8,0.75", "--workers", 1, *extra])
    assert result.exit_code == 0, result.output
    return out


def _manifest(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "simulation.yaml"}


# ----------------------------------------------------------------------------- the physics
def test_painted_arc_lands_where_the_lens_equation_puts_it_with_the_magnified_flux():
    """A compact source 1.5" behind an SIS of theta_E 0.5" (off the cutout centre): its one image lies at
    beta + theta_E along the same direction, magnified (beta + theta_E) / beta = 4/3, in every band."""
    angle, beta, theta_e, lens_xy = math.radians(30), 1.5, 0.5, (0.2, -0.1)
    source = _source(lens_xy[0] + beta * math.cos(angle), lens_xy[1] + beta * math.sin(angle), r_eff=0.05, mag=22.0)
    psf = paint.gaussian_psf([0.3, 0.4, 0.5], pixel_scale_arcsec=0.05, truncation_sigma=5)
    light, extra = _paint(_sis(theta_e, *lens_xy, [source]), psf, num_pix=129, pixel=0.05)
    expected_xy = (lens_xy[0] + (beta + theta_e) * math.cos(angle), lens_xy[1] + (beta + theta_e) * math.sin(angle))
    expected_flux = 10 ** (-0.4 * (22.0 - 22.5)) * (beta + theta_e) / beta
    for plane in light:
        x, y = _centroid(plane, 0.05)
        assert math.hypot(x - expected_xy[0], y - expected_xy[1]) < 0.005
        assert plane.sum() == pytest.approx(expected_flux, rel=5e-3)
    assert extra["magnification"] == pytest.approx(4 / 3, rel=5e-3)
    # a source right behind the lens makes a ring centred on it, far more magnified
    ring, _ = _paint(_sis(theta_e, *lens_xy, [_source(*lens_xy, r_eff=0.05, mag=22.0)]), psf, num_pix=129, pixel=0.05)
    x, y = _centroid(ring[2], 0.05)
    assert math.hypot(x - lens_xy[0], y - lens_xy[1]) < 0.005 and ring[2].sum() > 10 * expected_flux


def test_the_psf_applied_is_the_one_given():
    """A point-like source whose image falls on a pixel centre comes out as the given PSF image, orientation
    included (an asymmetric PSF, band by band), scaled by its flux."""
    size, k = 65, 15
    yy, xx = np.mgrid[-(k // 2):k // 2 + 1, -(k // 2):k // 2 + 1]
    psf = np.stack([np.exp(-0.5 * (xx**2 / 2.0**2 + yy**2 / 1.2**2)) + 0.4 * np.exp(-0.5 * ((xx - 3) ** 2 + (yy + 2) ** 2)),
                    np.exp(-0.5 * (xx**2 + yy**2) / 1.5**2) + 0.3 * (np.abs(xx) <= 3) * (yy == 4),
                    np.exp(-0.5 * ((xx - yy) ** 2 / 4.0 + (xx + yy) ** 2 / 1.0))])
    psf /= psf.sum(axis=(1, 2), keepdims=True)
    axis = conv.pixel_grid_arcsec(size, PIXEL)
    image_x, theta_e = axis[45], 0.3  # on the x axis, y = 0 is the middle row's centre
    light, _ = _paint(_sis(theta_e, sources=[_source(image_x - theta_e, 0.0, r_eff=0.004, mag=21.0)]), psf, num_pix=size)
    for b in range(3):
        stamp = light[b, 32 - k // 2:32 + k // 2 + 1, 45 - k // 2:45 + k // 2 + 1]
        np.testing.assert_allclose(stamp / light[b].sum(), psf[b], atol=2e-3 * psf[b].max())
        assert not np.allclose(stamp / light[b].sum(), psf[b][::-1, :], atol=0.05 * psf[b].max())


def test_host_pixels_outside_the_painted_light_are_unchanged_bit_for_bit():
    rng = np.random.default_rng(3)
    host = _host(rng, 64)
    host[0, 5, 5], host[1, 60, 2] = -0.0, np.float32(1e-30)  # bytes that adding 0.0 would change or keep
    psf = paint.gaussian_psf([0.9, 0.8, 0.75], pixel_scale_arcsec=PIXEL, truncation_sigma=5)
    params = _sis(0.8, 0.1, 0.05, [_source(0.3, 0.2, r_eff=0.2, mag=21.0, n=1.5)])
    light, _ = _paint(params, psf, num_pix=64, support_floor=1e-3 * SKY)
    painted = paint.add_to_host(host, light)
    pad = psf.shape[-1] // 2
    flux, _ = paint.lensed_source_nmgy(params, num_pix=64 + 2 * pad, pixel_scale_arcsec=PIXEL, supersampling=4,
                                       band_index=[0, 1, 2])
    flux = paint.truncate_support(flux, 1e-3 * SKY)  # nanomaggies are these hosts' units
    for b in range(3):  # the support of the source, dilated by the PSF's footprint
        support = ndimage.binary_dilation(flux[b] != 0, structure=psf[b] != 0)[pad:-pad, pad:-pad]
        assert (light[b] != 0).sum() > 50 and not (light[b][~support] != 0).any()
        assert (~support).mean() > 0.3
        assert painted[b][~support].tobytes() == host[b][~support].tobytes()
        assert (painted[b][support] != host[b][support]).any()
    assert painted.dtype == np.float32 and np.signbit(painted[0, 5, 5])


def test_units_follow_the_zero_point():
    """The same source painted onto hosts of zero point 22.5 (nanomaggies) and 27.0: the added light scales by
    10^(0.4 (27 - 22.5)) pixel by pixel, and a source of magnitude m adds 10^(-0.4 (m - zp)) times its
    magnification; per-band zero points apply band by band."""
    psf = paint.gaussian_psf([0.9, 0.8, 0.75], pixel_scale_arcsec=PIXEL, truncation_sigma=5)
    beta, theta_e, mag = 2.0, 0.4, 21.3
    params = _sis(theta_e, sources=[_source(beta, 0.0, r_eff=0.15, mag=mag)])
    nmgy, _ = _paint(params, psf, num_pix=64, zero_point=22.5, support_floor=0.0)
    counts, _ = _paint(params, psf, num_pix=64, zero_point=27.0, support_floor=0.0)
    np.testing.assert_allclose(counts, nmgy * 10 ** (0.4 * 4.5), rtol=1e-12)
    assert counts[1].sum() == pytest.approx(10 ** (-0.4 * (mag - 27.0)) * (beta + theta_e) / beta, rel=5e-3)
    per_band, _ = _paint(params, psf, num_pix=64, zero_point=[22.5, 25.0, 30.0], support_floor=0.0)
    for b, zp in enumerate((22.5, 25.0, 30.0)):
        np.testing.assert_allclose(per_band[b], nmgy[b] * 10 ** (0.4 * (zp - 22.5)), rtol=1e-12)


def test_sky_noise_light_peak_and_arc_snr_are_measured_on_the_host():
    rng = np.random.default_rng(7)
    host = _host(rng, 64, mag=18.5, offset=(0.35, -0.25), stars=[(-4.0, 3.5, 17.0, 0.35)])
    median, sigma = paint.sky_background(host, clip_sigma=3.0, max_iters=5)
    np.testing.assert_allclose(sigma, SKY, rtol=0.06)  # the galaxy and the star are clipped away
    x, y = paint.light_peak_arcsec(host, median, sigma, pixel_scale_arcsec=PIXEL, search_radius_arcsec=1.0)
    assert math.hypot(x - 0.35, y + 0.25) < 0.03  # the galaxy, not the brighter star 5" away
    mags = paint.aperture_magnitudes(host, median, np.full(3, 22.5), x_arcsec=x, y_arcsec=y, pixel_scale_arcsec=PIXEL,
                                     radius_arcsec=2.0)
    enclosed = 1.0 - 6.0 * math.exp(-5.0)  # an exponential of scale 0.4" inside 2"
    np.testing.assert_allclose(mags, np.array([18.5 + 1.2, 18.5 + 0.5, 18.5]) - 2.5 * math.log10(enclosed), atol=0.04)
    light = np.zeros_like(host, dtype=np.float64)
    light[:, 30:34, 30:34] = 0.05
    assert paint.arc_snr(light, sigma) == pytest.approx(np.sqrt(16) * 0.05 / SKY.min(), rel=0.06)


def test_theta_e_relation_follows_brightness_and_colour_within_its_range():
    from lensfinder.simulate.presets import load_preset

    relation = load_preset("lsst-gri", task="lensfinding")["paint"]["theta_e"]
    mid = paint.theta_e_from_host({"g": 20.2, "i": 19.0}, relation, 0.0)
    assert mid == pytest.approx(relation["theta_e_ref_arcsec"])
    assert paint.theta_e_from_host({"g": 18.2, "i": 17.0}, relation, 0.0) > mid  # brighter: larger
    assert paint.theta_e_from_host({"g": 19.7, "i": 19.0}, relation, 0.0) < mid  # bluer: smaller
    assert paint.theta_e_from_host({"g": 20.2, "i": 19.0}, relation, 1.0) == pytest.approx(
        mid * 10 ** relation["scatter_dex"])
    assert paint.theta_e_from_host({"i": 5.0}, relation, 0.0) == relation["range_arcsec"][1]
    assert paint.theta_e_from_host({}, relation, 0.0) == pytest.approx(mid)  # nothing known: the reference


# ----------------------------------------------------------------------------- the writer
def test_painted_set_layout_manifest_and_host_bookkeeping(tmp_path):
    hosts = _hosts_folder(tmp_path / "hosts", 40)
    out = _paint_cli(hosts, tmp_path / "painted", "--seed", 2)
    from lensfinder.data.layouts import discover

    splits = discover(out, "lensfinding")  # what `lensfinder train --task lensfinding --data OUT` reads
    assert {k: len(v) for k, v in splits.items()} == {"train": 32, "test": 8}
    rows = _manifest(out)
    assert [r["folder"] for r in rows].count("train_lenses") == 16 and [r["folder"] for r in rows].count("test_lenses") == 4
    used = [r["host_id"] for r in rows]
    assert len(set(used)) == len(used) == 40  # each host once: a lens host is never also a non-lens
    train = {r["host_id"] for r in rows if r["split"] == "train"}
    assert not train & {r["host_id"] for r in rows if r["split"] == "test"}
    for r in rows:
        image, host = np.load(out / r["path"]), np.load(hosts / r["host_file"])
        assert image.dtype == np.float32 and image.shape == host.shape
        if r["label"] == "nonlens":
            assert image.tobytes() == host.tobytes() and float(r["theta_e_arcsec"]) == 0.0
        else:
            assert 0.4 <= float(r["theta_e_arcsec"]) <= 3.0 and r["theta_e_from"] == "host relation"
            assert float(r["arc_snr"]) > 0 and math.isfinite(float(r["source_mag_i"]))
            assert (image != host).any() and (image >= host).all()  # light added, none taken
            # the lens sits on the host's light peak (the galaxy was put within 0.3" of the centre)
            assert math.hypot(float(r["deflector_x_arcsec"]), float(r["deflector_y_arcsec"])) < 0.5
        for band, sigma in zip("gri", SKY):
            assert float(r[f"sky_sigma_{band}"]) == pytest.approx(sigma, rel=0.15)
    # explicit counts; more than there are hosts is refused
    _paint_cli(hosts, tmp_path / "few", "--train-lenses", 5, "--train-nonlenses", 10, "--test-lenses", 2,
               "--test-nonlenses", 3)
    assert len(_manifest(tmp_path / "few")) == 20
    too_many = _invoke(["--hosts", hosts, "--out", tmp_path / "x", "--pixel-scale", PIXEL, "--zero-point", 22.5,
                        "--psf-fwhm", 0.9, "--train-lenses", 30, "--train-nonlenses", 30])
    assert too_many.exit_code == 2 and "40 host(s)" in too_many.output


def test_same_seed_same_bytes_other_seed_other_hosts_and_arcs(tmp_path):
    hosts = _hosts_folder(tmp_path / "hosts", 24)
    a = _paint_cli(hosts, tmp_path / "a", "--seed", 4, "--batch-size", 5)
    b = _paint_cli(hosts, tmp_path / "b", "--seed", 4, "--batch-size", 64)
    assert _bytes(a) == _bytes(b)
    c = _paint_cli(hosts, tmp_path / "c", "--seed", 5)
    assert [r["host_id"] for r in _manifest(c)] != [r["host_id"] for r in _manifest(a)]


def test_fits_bands_psf_images_and_catalogue_theta_e(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(1)
    hosts = tmp_path / "fits"
    hosts.mkdir()
    cube = {}
    for i in range(12):
        image = _host(rng, 48)
        cube[f"obj{i:02d}"] = image
        for b, band in enumerate("gri"):
            fits.PrimaryHDU(image[b]).writeto(hosts / f"obj{i:02d}_{band}.fits")
    psf_dir = tmp_path / "psf"
    psf_dir.mkdir()
    psf = paint.gaussian_psf([0.9, 0.8, 0.75], pixel_scale_arcsec=PIXEL, truncation_sigma=4)
    for b, band in enumerate("gri"):
        fits.PrimaryHDU(psf[b] * 3.0).writeto(psf_dir / f"psf_{band}.fits")  # normalised when read
    catalogue = tmp_path / "theta.csv"
    catalogue.write_text("id,theta_e\n" + "".join(f"obj{i:02d},{1.0 + 0.1 * i}\n" for i in range(0, 12, 2)) + "nobody,2.0\n")
    result = _invoke(["--hosts", hosts, "--out", tmp_path / "painted", "--pixel-scale", PIXEL, "--zero-point", 22.5,
                      "--psf", psf_dir, "--catalogue", catalogue, "--theta-e-column", "theta_e", "--workers", 1,
                      "--train-lenses", 8, "--train-nonlenses", 4, "--test-lenses", 0, "--test-nonlenses", 0])
    assert result.exit_code == 0, result.output
    rows = _manifest(tmp_path / "painted")
    for r in rows:
        host = np.stack([fits.getdata(hosts / f) for f in r["host_file"].split(";")])
        np.testing.assert_array_equal(host, cube[r["host_id"]])
        if r["label"] == "lens":
            index = int(r["host_id"][3:])
            if index % 2 == 0:
                assert r["theta_e_from"] == "catalogue" and float(r["theta_e_arcsec"]) == pytest.approx(1.0 + 0.1 * index)
            else:
                assert r["theta_e_from"] == "host relation"
    # the same hosts as an HDF5 cube: the same ids, the same painted bytes
    import h5py

    with h5py.File(tmp_path / "hosts.h5", "w") as handle:
        handle["images"] = np.stack([cube[k] for k in sorted(cube)])
        handle["id"] = np.array(sorted(cube), dtype=h5py.string_dtype())
    result = _invoke(["--hosts", tmp_path / "hosts.h5", "--out", tmp_path / "from-cube", "--pixel-scale", PIXEL,
                      "--zero-point", 22.5, "--psf", psf_dir, "--catalogue", catalogue, "--theta-e-column", "theta_e",
                      "--workers", 1, "--train-lenses", 8, "--train-nonlenses", 4, "--test-lenses", 0,
                      "--test-nonlenses", 0])
    assert result.exit_code == 0, result.output
    cube_rows = _manifest(tmp_path / "from-cube")
    assert [r["host_id"] for r in cube_rows] == [r["host_id"] for r in rows]
    for r in cube_rows:
        assert np.load(tmp_path / "from-cube" / r["path"]).tobytes() == np.load(tmp_path / "painted" / r["path"]).tobytes()


def test_resume_after_sigkill_gives_the_same_bytes(tmp_path):
    hosts = _hosts_folder(tmp_path / "hosts", 300, size=32)

    def command(out):
        return [sys.executable, "-m", "lensfinder", "simulate", "lensfinding", "--hosts", str(hosts), "--out", str(out),
                "--pixel-scale", str(PIXEL), "--zero-point", "22.5", "--psf-fwhm", "0.8", "--seed", "1",
                "--batch-size", "8", "--workers", "1"]

    subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True)
    killed = tmp_path / "killed"
    sigkill_part_way_then_resume(command, killed, pattern="*/*.npy", at_least=30, total=300)
    assert _bytes(killed) == _bytes(tmp_path / "whole")
    assert not list(killed.rglob(".*"))


def test_bad_inputs_are_refused_naming_the_file(tmp_path):
    from lensfinder.hosts.paint import paint_hosts

    hosts = _hosts_folder(tmp_path / "hosts", 6)
    common = dict(bands=["g", "r", "i"], pixel_scale_arcsec=PIXEL, zero_point=22.5, progress=False)
    two_band = _hosts_folder(tmp_path / "two", 3)
    np.save(two_band / "host_0001.npy", np.zeros((2, 48, 48), np.float32))
    with pytest.raises(InputError, match=r"host_0001\.npy: expected 3 band\(s\) \(g,r,i\), found 2"):
        paint_hosts(tmp_path / "o1", two_band, psf_fwhm_arcsec=0.9, **common)
    psf_dir = tmp_path / "psf"
    psf_dir.mkdir()
    psf = paint.gaussian_psf([0.9], pixel_scale_arcsec=PIXEL, truncation_sigma=4)[0]
    for band in "gr":
        np.save(psf_dir / f"psf_{band}.npy", psf)
    with pytest.raises(InputError, match=r"psf: no PSF file for band\(s\) i"):
        paint_hosts(tmp_path / "o2", hosts, psf=str(psf_dir), **common)
    np.save(psf_dir / "psf_i.npy", np.ones((10, 10)))
    with pytest.raises(InputError, match=r"psf_i\.npy: expected a square PSF image with odd sides.*found shape \(10, 10\)"):
        paint_hosts(tmp_path / "o3", hosts, psf=str(psf_dir), **common)
    broken = _hosts_folder(tmp_path / "broken", 3)
    (broken / "host_0002.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match=r"host_0002\.npy: unreadable or truncated"):
        paint_hosts(tmp_path / "o4", broken, psf_fwhm_arcsec=0.9, **common)
    with pytest.raises(InputError, match="--psf DIR.*or --psf-fwhm"):
        paint_hosts(tmp_path / "o5", hosts, **common)
    with pytest.raises(InputError, match="--pixel-scale ARCSEC, or --preset"):
        paint_hosts(tmp_path / "o6", hosts, bands=["g", "r", "i"], zero_point=22.5, psf_fwhm_arcsec=0.9)
    with pytest.raises(InputError, match="band.*z.*g, r, i only"):
        paint_hosts(tmp_path / "o7", hosts, psf_fwhm_arcsec=0.9, **dict(common, bands=["g", "r", "z"]))
    assert not (tmp_path / "o3").exists()  # the inputs are checked before anything is written
    # a host found unreadable part-way stops the run; once it is replaced, the same call finishes the set
    np.save(broken / "host_0002.npy", np.load(broken / "host_0001.npy"))
    paint_hosts(tmp_path / "o4", broken, psf_fwhm_arcsec=0.9, **common)
    assert len(_manifest(tmp_path / "o4")) == 3


# ----------------------------------------------------------------------------- PSF from the stars
def test_psf_is_built_from_compact_unsaturated_isolated_stars(tmp_path):
    """Cutouts with Gaussian stars (sigma 0.3", at sub-pixel positions), a galaxy at the centre of each, one
    saturated star and one close pair: the PSF comes from the single unsaturated stars, centred, summing to 1,
    with their FWHM; painting accepts it as --psf."""
    from lensfinder.hosts.psf import build_psf
    from lensfinder.hosts.read import HostSet

    rng = np.random.default_rng(5)
    folder = tmp_path / "cutouts"
    folder.mkdir()
    sigma_arcsec = 0.3
    for i in range(30):
        sx, sy = rng.uniform(2.5, 3.0) * rng.choice([-1, 1]), rng.uniform(2.5, 3.0) * rng.choice([-1, 1])
        image = _host(rng, 64, mag=20.0, stars=[(sx, sy, rng.uniform(17.0, 18.5), sigma_arcsec)])
        if i == 0:  # saturated: clipped flat
            image = np.minimum(_host(rng, 64, stars=[(-2.5, 2.5, 14.0, sigma_arcsec)]), np.float32(20.0))
        if i == 1:  # a pair 8 pixels apart: each outside the other's core, inside its stamp
            image = _host(rng, 64, stars=[(-2.0, 2.5, 17.5, sigma_arcsec), (-0.4, 2.5, 18.0, sigma_arcsec)])
        np.save(folder / f"c{i:02d}.npy", image)
    result = build_psf(HostSet(folder, bands=["g", "r", "i"]), tmp_path / "psf", size=15)
    used = {s["host_id"] for s in result.stars}
    assert "c00" not in used and "c01" not in used and len(used) >= 20
    expected_fwhm = 2.3548 * sigma_arcsec / PIXEL
    np.testing.assert_allclose(result.fwhm_pix, expected_fwhm, rtol=0.05)
    from astropy.io import fits

    for path in result.files:
        image = fits.getdata(path)
        assert image.shape == (15, 15) and image.sum() == pytest.approx(1.0)
        yy, xx = np.mgrid[-7:8, -7:8]
        assert abs((image * xx).sum()) < 0.05 and abs((image * yy).sum()) < 0.05
    run = CliRunner().invoke(simulate_app, ["lensfinding", "--hosts", str(folder), "--out", str(tmp_path / "painted"),
                                            "--pixel-scale", str(PIXEL), "--zero-point", "22.5", "--psf",
                                            str(tmp_path / "psf"), "--workers", "1"])
    assert run.exit_code == 0, run.output
    assert len(_manifest(tmp_path / "painted")) == 30


# ----------------------------------------------------------------------------- fine-tuning on painted data
def test_init_loads_the_parent_first_step_loss_is_the_parents_on_that_batch(tmp_path, monkeypatch):
    """`train --init shipped` on a painted set: the loss of the first training step equals the shipped model's
    loss on the same batch (weights, normalisation and class weights as the run has them), and differs from a
    freshly initialised model's."""
    import torch
    import torch.nn.functional as F

    from lensfinder.config import TrainConfig
    from lensfinder.evaluate.shipped import shipped_weights
    from lensfinder.train.module import LensModule
    from lensfinder.train.run import load_model, train

    hosts = _hosts_folder(tmp_path / "hosts", 40, size=64)
    data = _paint_cli(hosts, tmp_path / "painted", "--train-lenses", 16, "--train-nonlenses", 24,
                      "--test-lenses", 0, "--test-nonlenses", 0)
    seen = {}
    original = LensModule.training_step

    def recording_step(self, batch, batch_idx):
        rng_state = torch.get_rng_state()  # the head's dropout draws from it
        loss = original(self, batch, batch_idx)
        if not seen:
            seen.update(x=batch[0].detach().clone(), y=batch[1].detach().clone(), loss=float(loss), rng=rng_state,
                        weight=None if self.class_weight is None else self.class_weight.clone())
        return loss

    monkeypatch.setattr(LensModule, "training_step", recording_step)
    train(TrainConfig(task="lensfinding", data=str(data), out=str(tmp_path / "run"), epochs=1, batch_size=16,
                      progress=False, init="shipped", augment=False))
    parent = load_model(shipped_weights("lensfinding"))
    fresh = LensModule(**{**parent.hparams, "calibration": None, "parent": None})
    losses = []
    for model in (parent, fresh):
        model.train()  # batch norms on the batch's statistics and the same dropout draws, as in the first step
        torch.set_rng_state(seen["rng"])
        with torch.no_grad():
            losses.append(float(F.cross_entropy(model(seen["x"]), seen["y"], weight=seen["weight"])))
    parent_loss, fresh_loss = losses
    assert seen["loss"] == pytest.approx(parent_loss, rel=1e-5, abs=1e-6)
    assert abs(fresh_loss - parent_loss) > 1e-3
