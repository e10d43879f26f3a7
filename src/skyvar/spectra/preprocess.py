"""Preparing low-resolution spectra for the binary-star CNN (Jing et al.; normalisation of Ho et al. 2017).

Steps (all vectorised over spectra; the smoothing is one matrix product, on GPU when asked):

1. **Mask** bad pixels: ivar <= 0, ANDMASK (optionally ORMASK), non-finite values, the blue/red
   dichroic overlap, strong night-sky emission lines and the telluric O2 A band (LAMOST spectra are not
   telluric-corrected).
2. **Resample** onto a common log10-λ grid (vacuum Å; default 3900–8800 Å at 1e-4 dex, aligned with
   LAMOST's own pixels so that real spectra are not re-interpolated). Air wavelengths are converted to
   vacuum first. Linear interpolation; variances propagate; a pixel is bad if a neighbour used is bad.
3. **Reject** spectra with too many bad pixels on the grid, a grid not covered by the spectrum, or
   non-positive flux (message per spectrum, :class:`SpectrumRejected`).
4. **Normalise** by the inverse-variance weighted Gaussian-smoothed flux (Ho et al. 2017, eq. 3)::

       f_s(λ) = Σ_i f_i ivar_i w_i(λ) / Σ_i ivar_i w_i(λ),   w_i(λ) = exp(-(λ - λ_i)² / L²)

   ``smooth_L`` is L in Å. Ho et al. use L = 50 Å (a Gaussian of standard deviation L/√2 ≈ 35 Å);
   Jing et al. write "σ = 35 nm" for the same formula, i.e. L = 350 Å. The default is Ho et al.'s;
   ``smooth_L=350`` reproduces the literal reading (see docs/results/binary_spectra.md for the effect).

The normalised flux has masked pixels set to ``fill_value`` (1, the continuum) and is clipped to
``clip`` so that cosmic rays and residual sky lines cannot dominate a convolution.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np

from skyvar.spectra.io import SpectrumError
from skyvar.spectra.resample import resample_linear
from skyvar.spectra.spectrum import Spectrum

# Vacuum wavelengths [Å]: [O I] 5577.3, [O I] 6300.3, [O I] 6363.8 (air values + ~1.6–1.8 Å).
SKY_LINES_VACUUM = (5578.9, 6302.0, 6365.5)


class SpectrumRejected(SpectrumError):
    """A spectrum that was read but cannot be used by the model (message says why)."""


@dataclasses.dataclass
class PreprocessConfig:
    wave_min: float = 3900.0  # Å, vacuum
    wave_max: float = 8800.0
    dloglam: float = 1e-4  # log10 step (LAMOST LRS pixel)
    loglam_anchor: float = 3.5682  # grid passes through this log10 λ (LAMOST COEFF0)
    smooth_L: float = 50.0  # Å; w = exp(-Δλ²/L²) (Ho et al. 2017: 50 Å; literal Jing et al.: 350 Å)
    smooth_truncate: float = 4.0  # kernel set to 0 beyond truncate * L
    max_masked_fraction: float = 0.2  # reject above this fraction of bad grid pixels
    # [lo, hi] Å vacuum: LAMOST dichroic overlap (blue arm ends, red arm starts) and telluric O2 A band;
    # conf/data/lamost_lrs.yaml adds the O2 B and H2O bands (LAMOST LRS spectra are not telluric-corrected).
    mask_ranges: list = dataclasses.field(default_factory=lambda: [[5750.0, 6000.0], [7580.0, 7700.0]])
    sky_lines: list = dataclasses.field(default_factory=lambda: list(SKY_LINES_VACUUM))
    sky_halfwidth: float = 6.0  # Å
    use_ormask: bool = False  # ORMASK flags pixels bad in *any* exposure; off by default (ANDMASK is used)
    fill_value: float = 1.0
    clip: tuple = (0.0, 2.0)
    to_vacuum: bool = True
    # Also return log10(continuum / its median) (the smooth spectral shape the normalisation divides out) as a
    # second model input: the colour of a composite of two temperatures is not that of its line spectrum.
    continuum_channel: bool = False


def air_to_vacuum(wave_air) -> np.ndarray:
    """Air to vacuum wavelength [Å] (Piskunov's inversion of the Morton 2000 / Ciddor 1996 formula, as in VALD).

    Valid above 2000 Å; Hα 6562.80 Å (air) -> 6564.61 Å (vacuum).
    """
    wave_air = np.asarray(wave_air, dtype=float)
    s2 = (1e4 / wave_air) ** 2
    n = 1 + 8.336624212083e-5 + 2.408926869968e-2 / (130.1065924522 - s2) + 1.599740894897e-4 / (38.92568793293 - s2)
    return wave_air * n


def vacuum_to_air(wave_vac) -> np.ndarray:
    """Vacuum to air wavelength [Å] (Morton 2000, IAU standard; Ciddor 1996 refractivity)."""
    wave_vac = np.asarray(wave_vac, dtype=float)
    s2 = (1e4 / wave_vac) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    return wave_vac / n


def common_grid(cfg: PreprocessConfig) -> np.ndarray:
    """The model's wavelength grid [Å, vacuum]: log10-uniform, through ``loglam_anchor``."""
    k0 = np.ceil((np.log10(cfg.wave_min) - cfg.loglam_anchor) / cfg.dloglam - 1e-9)
    k1 = np.floor((np.log10(cfg.wave_max) - cfg.loglam_anchor) / cfg.dloglam + 1e-9)
    return 10 ** (cfg.loglam_anchor + cfg.dloglam * np.arange(k0, k1 + 1))


def region_mask(wave, cfg: PreprocessConfig) -> np.ndarray:
    """True at pixels inside the configured bad regions (dichroic, telluric, sky lines)."""
    wave = np.asarray(wave)
    bad = np.zeros(wave.shape, dtype=bool)
    for lo, hi in cfg.mask_ranges:
        bad |= (wave >= lo) & (wave <= hi)
    for line in cfg.sky_lines:
        bad |= np.abs(wave - line) <= cfg.sky_halfwidth
    return bad


def smoothing_matrix(wave, L: float, truncate: float = 4.0):
    """Dense kernel ``W[j, i] = exp(-(λ_j - λ_i)² / L²)`` (zero beyond truncate * L), float32 torch tensor."""
    import torch

    w = torch.as_tensor(np.asarray(wave, dtype=np.float64))
    d = (w[:, None] - w[None, :]) / L
    k = torch.exp(-(d**2))
    k[d.abs() > truncate] = 0.0
    return k.to(torch.float32)


def smooth_continuum(flux, ivar, W, chunk: int = 4096):
    """Ho et al. (2017) continuum ``Σ f ivar w / Σ ivar w`` for rows of ``flux``; also returns Σ ivar w.

    ``W`` from :func:`smoothing_matrix` (any torch device); numpy in, numpy out (float32).
    """
    import torch

    flux = np.asarray(flux, dtype=np.float32)
    ivar = np.asarray(ivar, dtype=np.float32)
    cont = np.empty_like(flux)
    wsum = np.empty_like(flux)
    Wt = W.T
    for s in range(0, len(flux), chunk):
        f = torch.from_numpy(flux[s:s + chunk]).to(W.device)
        iv = torch.from_numpy(ivar[s:s + chunk]).to(W.device)
        num = (f * iv) @ Wt
        den = iv @ Wt
        cont[s:s + chunk] = (num / den.clamp_min(1e-30)).cpu().numpy()
        wsum[s:s + chunk] = den.cpu().numpy()
    return cont, wsum


@dataclasses.dataclass
class PreprocessedBatch:
    wavelength: np.ndarray  # (npix,) Å vacuum
    flux: np.ndarray  # (n, npix) float32 normalised flux, masked pixels = fill_value
    ivar: np.ndarray  # (n, npix) float32 inverse variance of the normalised flux (0 where masked)
    mask: np.ndarray  # (n, npix) bool, True = bad
    index: np.ndarray  # (n,) index of each kept spectrum in the input sequence
    failures: list  # [{"index", "stage": "preprocess", "error"}] for rejected inputs
    logcont: np.ndarray | None = None  # (n, npix) float32 log10(continuum / median), 0 where undefined

    def __len__(self) -> int:
        return len(self.index)

    def to_specutils(self):
        """The batch as one ``specutils.Spectrum`` with 2-D flux (n, npix): normalised (dimensionless) flux on
        the model's vacuum Å grid, ``InverseVariance`` uncertainty, mask True = bad. Needs specutils."""
        try:
            import specutils
            from astropy import units as u
            from astropy.nddata import InverseVariance
        except ImportError as e:  # pragma: no cover
            raise ImportError("PreprocessedBatch.to_specutils() needs specutils: pip install specutils") from e
        cls = getattr(specutils, "Spectrum", None) or specutils.Spectrum1D
        return cls(spectral_axis=np.asarray(self.wavelength, float) * u.AA,
                   flux=np.asarray(self.flux, float) * u.dimensionless_unscaled,
                   uncertainty=InverseVariance(np.asarray(self.ivar, float)), mask=np.asarray(self.mask, bool),
                   meta={"index": self.index.tolist(), "vacuum": True, "normalised": True})

    def model_input(self) -> np.ndarray:
        """(n, channels, npix) float32 network input: normalised flux - 1 (0 at masked pixels), then the
        log-continuum when it was computed (``continuum_channel``)."""
        x = (self.flux - 1.0)[:, None, :]
        if self.logcont is not None:
            x = np.concatenate([x, self.logcont[:, None, :]], axis=1)
        return x.astype(np.float32)


def preprocess_spectra(spectra, config: PreprocessConfig | dict | None = None, device: str = "cpu",
               names=None) -> PreprocessedBatch:
    """Prepare spectra for the binary-star CNN: masks, resampling onto the log-λ grid [Å, vacuum] and the
    Ho et al. (2017) normalisation (see the module docstring); rejected spectra are listed in
    ``failures`` with the reason. The entry point of the public API (``skyvar.spectra.preprocess_spectra``);
    for many batches build one :class:`Preprocessor` and call it (its smoothing kernel is reused)."""
    return Preprocessor(config, device=device)(list(spectra), names=names)


class Preprocessor:
    """Callable applying :class:`PreprocessConfig` to Spectrum objects or to arrays on one native grid."""

    def __init__(self, cfg: PreprocessConfig | dict | None = None, device: str = "cpu"):
        if cfg is None:
            cfg = PreprocessConfig()
        elif not isinstance(cfg, PreprocessConfig):  # dict, OmegaConf DictConfig (checkpoint hparams)
            from omegaconf import OmegaConf

            cfg = PreprocessConfig(**(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg)
                                      else dict(cfg)))
        self.cfg = cfg
        self.wavelength = common_grid(cfg)
        self.region_bad = region_mask(self.wavelength, cfg)
        self.device = device
        self._W = None

    @property
    def npix(self) -> int:
        return len(self.wavelength)

    @property
    def W(self):
        if self._W is None:
            self._W = smoothing_matrix(self.wavelength, self.cfg.smooth_L, self.cfg.smooth_truncate).to(self.device)
        return self._W

    # ------------------------------------------------------------------ arrays
    def from_arrays(self, wave, flux, ivar, mask, vacuum: bool = True, names: Sequence[str] | None = None
                    ) -> PreprocessedBatch:
        """Preprocess rows ``flux[n, m]`` sharing the native grid ``wave[m]`` (simulations, one LAMOST plan)."""
        wave = np.asarray(wave, dtype=float)
        if not vacuum and self.cfg.to_vacuum:
            wave = air_to_vacuum(wave)
        flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
        ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
        mask = np.atleast_2d(np.asarray(mask, dtype=bool))
        finite = np.isfinite(flux) & np.isfinite(ivar)
        mask = mask | ~finite | ~(ivar > 0)
        flux = np.where(finite, flux, 0.0)
        ivar = np.where(mask, 0.0, ivar)
        f, iv, m = resample_linear(self.wavelength, wave, flux, ivar, mask)
        covered = np.array([(self.wavelength >= wave[0]).mean(), (self.wavelength <= wave[-1]).mean()]).min()
        return self._finish(f, iv, m, covered=np.full(len(f), covered), names=names)

    # ------------------------------------------------------------------ Spectrum objects
    def __call__(self, spectra: Sequence[Spectrum], names: Sequence[str] | None = None) -> PreprocessedBatch:
        n = len(spectra)
        f = np.zeros((n, self.npix))
        iv = np.zeros((n, self.npix))
        m = np.ones((n, self.npix), dtype=bool)
        covered = np.zeros(n)
        # Spectra on the same native grid (most LAMOST files of a data release) are resampled together.
        groups: dict[tuple, list[int]] = {}
        for k, s in enumerate(spectra):
            w = s.wavelength
            groups.setdefault((len(w), float(w[0]), float(w[-1]), bool(s.vacuum)), []).append(k)
        for (_, _, _, vac), members in groups.items():
            wave = np.asarray(spectra[members[0]].wavelength, dtype=float)
            same = [k for k in members if np.array_equal(spectra[k].wavelength, wave)]
            for k in members:  # equal ends but different interior: its own group of one
                if k not in same:
                    self._resample_group([k], spectra, np.asarray(spectra[k].wavelength, float), vac, f, iv, m, covered)
            self._resample_group(same, spectra, wave, vac, f, iv, m, covered)
        return self._finish(f, iv, m, covered=covered, names=names)

    def _resample_group(self, idx, spectra, wave, vacuum, f, iv, m, covered):
        if not vacuum and self.cfg.to_vacuum:
            wave = air_to_vacuum(wave)
        flux = np.stack([spectra[k].flux for k in idx]).astype(float)
        ivar = np.stack([spectra[k].ivar for k in idx]).astype(float)
        bad = np.stack([spectra[k].mask for k in idx]).astype(bool) | ~np.isfinite(flux) | ~(ivar > 0)
        if self.cfg.use_ormask:
            orm = np.stack([np.asarray(spectra[k].meta.get("ormask", np.zeros(len(wave)))) for k in idx])
            bad |= orm != 0
        flux = np.where(np.isfinite(flux), flux, 0.0)
        ivar = np.where(bad, 0.0, ivar)
        f[idx], iv[idx], m[idx] = resample_linear(self.wavelength, wave, flux, ivar, bad)
        covered[idx] = ((self.wavelength >= wave[0]) & (self.wavelength <= wave[-1])).mean()

    # ------------------------------------------------------------------ shared tail
    def _finish(self, f, iv, m, covered, names=None) -> PreprocessedBatch:
        cfg = self.cfg
        name = (lambda k: names[k]) if names is not None else (lambda k: f"spectrum {k}")
        m = m | self.region_bad[None, :]
        iv = np.where(m, 0.0, iv)
        failures = []
        # masked fraction among the pixels the fixed regions leave (so that adding telluric/sky regions to
        # mask_ranges does not reject spectra); with the default regions this differs little from m.mean()
        free = ~self.region_bad
        frac_bad = (m[:, free]).mean(axis=1) if free.any() else m.mean(axis=1)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-masked rows give NaN medians
            med = np.nanmedian(np.where(m, np.nan, f), axis=1)
        out_of_range = covered < 0.9
        too_masked = ~out_of_range & (frac_bad > cfg.max_masked_fraction)
        non_positive = ~out_of_range & ~too_masked & ~(med > 0)
        for k in np.flatnonzero(out_of_range):
            failures.append({"index": int(k), "stage": "preprocess", "error":
                             f"{name(k)}: wavelength grid outside the model's range "
                             f"{cfg.wave_min:.0f}-{cfg.wave_max:.0f} Å (covers {100 * covered[k]:.0f} %)"})
        for k in np.flatnonzero(too_masked):
            failures.append({"index": int(k), "stage": "preprocess", "error":
                             f"{name(k)}: {100 * frac_bad[k]:.0f} % of pixels masked "
                             f"(limit {100 * cfg.max_masked_fraction:.0f} %)"})
        for k in np.flatnonzero(non_positive):
            failures.append({"index": int(k), "stage": "preprocess", "error":
                             f"{name(k)}: non-positive flux (median of good pixels {med[k]:.3g})"})
        keep = ~(out_of_range | too_masked | non_positive)
        idx = np.flatnonzero(keep)
        f, iv, m = f[idx], iv[idx], m[idx]
        if len(idx):
            cont, wsum = smooth_continuum(f, iv, self.W)
            # Where the kernel saw no good pixel, or the continuum is not positive, there is no normalisation.
            no_cont = ~(wsum > 0) | ~(cont > 0)
            m = m | no_cont
            with np.errstate(divide="ignore", invalid="ignore"):
                norm = np.where(m, cfg.fill_value, f / np.where(cont > 0, cont, 1.0))
                nivar = np.where(m, 0.0, iv * cont.astype(np.float64) ** 2)
            norm = np.clip(norm, *cfg.clip)
            logcont = None
            if cfg.continuum_channel:
                with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    lc = np.log10(np.where(cont > 0, cont, np.nan))
                    lc = lc - np.nanmedian(np.where(m, np.nan, lc), axis=1, keepdims=True)
                logcont = np.where(np.isfinite(lc), lc, 0.0).astype(np.float32)
            # A continuum failing over much of the grid (e.g. mostly negative flux) is a rejection too.
            frac_bad = (m[:, free]).mean(axis=1) if free.any() else m.mean(axis=1)
            late = frac_bad > cfg.max_masked_fraction
            for j in np.flatnonzero(late):
                failures.append({"index": int(idx[j]), "stage": "preprocess", "error":
                                 f"{name(idx[j])}: {100 * frac_bad[j]:.0f} % of pixels masked after "
                                 f"normalisation (non-positive smoothed flux)"})
            ok = ~late
            idx, norm, nivar, m = idx[ok], norm[ok], nivar[ok], m[ok]
            if logcont is not None:
                logcont = logcont[ok]
        else:
            norm = np.zeros((0, self.npix))
            nivar = np.zeros((0, self.npix))
            logcont = np.zeros((0, self.npix), np.float32) if cfg.continuum_channel else None
        failures.sort(key=lambda d: d["index"])
        return PreprocessedBatch(wavelength=self.wavelength, flux=norm.astype(np.float32),
                                 ivar=nivar.astype(np.float32), mask=m.astype(bool), index=idx, failures=failures,
                                 logcont=logcont)
