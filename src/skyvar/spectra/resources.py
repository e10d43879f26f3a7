"""Reference data the spectra commands need, shipped inside the package (``skyvar/resources/spectra/``).

skyvar runs without the ``../shared`` reference folder: the simulator, the binary-star training, the
relative-RV precision study and the tests' fixtures read these compact files instead of the full
template sets and survey files. What is shipped (provenance and licences: the folder's README.md):

- ``redrock_lrs_R1800.npz``: the redrock STAR F, G, K, M PCA basis vectors (5 per class) broadened to
  R = 1800 and sampled at 5e-5 dex over 3600–9300 Å (vacuum, rest frame), float32, with every
  archetype's coefficients and its colour-based Teff (calibrated on the BOSZ models);
- ``lamost_lrs_noise.npz``: the relative counts per flux unit G(λ) on the LAMOST LRS grid, the median of
  ``flux * ivar`` over the 11 real LAMOST LRS files (the simulator's noise shape);
- ``rv_precision_templates.npz``: for the relative-RV precision study, one redrock archetype per class
  B, A, F, G, K, M (the one nearest its class median) at native resolution on 1e-5 dex grids over the
  MRS arms, the real LAMOST MRS co-add (both arms) and two BOSZ models (5750 K, 6750 K) divided by their
  continua;
- ``examples/``: one real LAMOST LRS file (a G3 star) for tutorials.

``python -m skyvar.spectra.resources build shared=../shared/data out=src/skyvar/resources/spectra``
rebuilds the files from the full sets (the command that made them).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

LRS_TEMPLATES = "redrock_lrs_R1800.npz"
LRS_NOISE = "lamost_lrs_noise.npz"
RV_TEMPLATES = "rv_precision_templates.npz"
EXAMPLE_LRS = "examples/spec-55859-F5902_sp05-172.fits.gz"
LRS_CLASSES = ("F", "G", "K", "M")
RV_CLASSES = ("B", "A", "F", "G", "K", "M")
LRS_RESOLUTION = 1800.0
LRS_DLOGLAM = 5e-5  # stored sampling; the R = 1800 line spread function is 6 samples wide (sigma)
LRS_RANGE = (3600.0, 9300.0)
RV_DLOGLAM = 1e-5
RV_RANGES = {"B": (4700.0, 5450.0), "R": (6200.0, 7050.0)}


def resource_dir() -> Path:
    """The folder of the packaged spectra resources (inside the installed package)."""
    from importlib.resources import files

    return Path(str(files("skyvar") / "resources" / "spectra"))


def resource_path(name: str) -> Path:
    """Path of one packaged resource; FileNotFoundError names it when the package lacks it."""
    p = resource_dir() / name
    if not p.exists():
        raise FileNotFoundError(f"packaged resource {p} is missing: reinstall skyvar or rebuild with "
                                "`python -m skyvar.spectra.resources build shared=<dir>`")
    return p


@functools.lru_cache(maxsize=4)
def _npz(name: str) -> dict:
    with np.load(resource_path(name), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def lrs_templates() -> dict:
    """The packaged R = 1800 redrock basis: ``loglam`` (stored grid, log10 Å) and per class X
    ``basis_X`` (5, n) float32, ``coeff_X`` (n_archetype, 5), ``teff_X`` (n_archetype,) [K]."""
    return _npz(LRS_TEMPLATES)


def lrs_noise_gain() -> tuple[np.ndarray, np.ndarray]:
    """(wavelength [Å, vacuum] of the LAMOST LRS grid, G(λ) with median 1 over 4000–5300 Å)."""
    z = _npz(LRS_NOISE)
    wave = 10 ** (float(z["loglam0"]) + float(z["dloglam"]) * np.arange(len(z["gain"])))
    return wave, z["gain"]


def rv_templates() -> dict:
    """The packaged inputs of the relative-RV precision study (see the module docstring)."""
    return _npz(RV_TEMPLATES)


def example_lrs_file() -> Path:
    """A real LAMOST DR7 LRS spectrum (G3 star, S/N_g 45) shipped with the package."""
    return resource_path(EXAMPLE_LRS)


# ----------------------------------------------------------------------------------------------- build
def build(shared: str | Path, out: str | Path) -> dict:
    """Rebuild every packaged file from the full reference data in ``shared`` (``../shared/data``)."""
    import shutil

    from skyvar.sim.spectra import lamost_wavelength, noise_gain_curve
    from skyvar.spectra.io import open_fits
    from skyvar.spectra.mrs import read_mrs
    from skyvar.spectra.resample import resample_linear
    from skyvar.spectra.templates import (
        build_stellar_library_from_files,
        load_redrock_template,
        typical_redrock_spectrum,
    )

    shared, out = Path(shared), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {}
    # 1. LRS templates: the exact library build on a 1e-5 dex grid, stored every 5th sample
    fine = np.arange(np.log10(LRS_RANGE[0]), np.log10(LRS_RANGE[1]), 1e-5)
    fine = fine[: (len(fine) - 1) // 5 * 5 + 1]
    arrays: dict[str, np.ndarray] = {"loglam": fine[::5], "resolution": np.array(LRS_RESOLUTION)}
    for st in LRS_CLASSES:
        lib = build_stellar_library_from_files(shared / "spectra" / "redrock", shared / "spectra" / "bosz",
                                               loglam=fine, resolution=LRS_RESOLUTION, subtypes=(st,),
                                               raw_blocks=True)
        arrays[f"basis_{st}"] = lib["basis"][:, ::5].astype(np.float32)
        arrays[f"coeff_{st}"] = lib["coeff"].astype(np.float32)
        arrays[f"teff_{st}"] = lib["teff"].astype(np.float32)
    np.savez_compressed(out / LRS_TEMPLATES, **arrays)
    # 2. noise shape of the real LAMOST LRS files
    wave = lamost_wavelength()
    G = noise_gain_curve(shared / "spectra" / "lamost_lrs", wave)
    np.savez_compressed(out / LRS_NOISE, loglam0=np.array(3.5682), dloglam=np.array(1e-4), gain=G.astype(np.float32))
    # 3. relative-RV precision study
    rv: dict[str, np.ndarray] = {}
    for st in RV_CLASSES:
        tpl = load_redrock_template(sorted((shared / "spectra" / "redrock").glob(f"rrtemplate-STAR-{st}-*.fits"))[-1])
        w, flux = typical_redrock_spectrum(tpl, 4600, 7150)
        for arm, (lo, hi) in RV_RANGES.items():
            ll = np.arange(np.log10(lo), np.log10(hi), RV_DLOGLAM)
            rv[f"redrock_{st}_{arm}"] = resample_linear(ll, np.log10(w), flux).astype(np.float32)
    for arm, (lo, hi) in RV_RANGES.items():
        rv[f"loglam_{arm}"] = np.arange(np.log10(lo), np.log10(hi), RV_DLOGLAM)
    mrs = sorted((shared / "spectra" / "lamost_mrs").glob("med-*.fits"))[0]
    for s in read_mrs(mrs, kind="coadd", times=False):
        a = s.meta["arm"]
        rv[f"mrs_loglam_{a}"] = np.log10(s.wavelength)
        rv[f"mrs_flux_{a}"] = s.flux.astype(np.float32)
        rv[f"mrs_good_{a}"] = ~s.mask
    for t in (5750, 6750):
        with open_fits(shared / "spectra" / "bosz" / f"amm03cp00op03t{t}g40v20modrt0b2000rs.fits") as h:
            tab = h[1].data
            w = np.asarray(tab["Wavelength"], float)
            m = (w > 4700) & (w < 7050)
            rv[f"bosz_{t}_wave"] = w[m]
            rv[f"bosz_{t}_norm"] = (np.asarray(tab["SpecificIntensity"], float)[m]
                                    / np.asarray(tab["Continuum"], float)[m]).astype(np.float32)
    np.savez_compressed(out / RV_TEMPLATES, **rv)
    # 4. one real LRS example file
    (out / "examples").mkdir(exist_ok=True)
    shutil.copy(shared / "spectra" / "lamost_lrs" / Path(EXAMPLE_LRS).name, out / EXAMPLE_LRS)
    for f in (LRS_TEMPLATES, LRS_NOISE, RV_TEMPLATES, EXAMPLE_LRS):
        sizes[f] = (out / f).stat().st_size
    _npz.cache_clear()
    return sizes


def main(argv: list[str] | None = None) -> int:
    from skyvar.utils.config import config_from_dotlist

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "build":
        print("usage: python -m skyvar.spectra.resources build shared=<../shared/data> out=<dir>", file=sys.stderr)
        return 2
    import dataclasses

    @dataclasses.dataclass
    class _Cfg:
        shared: str = "../shared/data"
        out: str = "src/skyvar/resources/spectra"

    cfg = config_from_dotlist(_Cfg, argv[1:])
    for k, v in build(cfg.shared, cfg.out).items():
        print(f"{k}: {v / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
