"""CSST-like 128 x 128 training stamps with their truth, cut from simulated dense-field frames.

Frames come from :mod:`skyvar.sim.field` and are simulated on first use into
``<data_dir>/<config-hash>/`` (one ``.npz`` per frame: the noise-free star image in electrons, the
truth positions and fluxes, the frame's noise model and PSF), then cached. Splits come from disjoint
fields: every frame has its own ``region`` and ``seed`` (train: region 1000 + k, val 2000 + k, test
3000 + k; seeds likewise offset), so no star is shared between train, val and test. Held-out
evaluation frames for the README use seeds below 1000 and regions below 1000.

What varies, and where:

- per training frame (simulated once, :class:`FrameVariation`): PSF model (Airy / GalSim OpticalPSF
  with random aberrations / Moffat), PSF dilation and jitter width, PSF variation across the frame,
  star density and clustering;
- per training stamp (on the fly, :class:`StampAugment`): a new Poisson + read-noise realisation of
  the noise-free image (every epoch sees new noise), the sky level, a global flux scale (truth
  magnitudes shift by −2.5 log10 k, so the target set changes consistently), the 8 flips/rotations
  (truth positions transformed with the pixels), random bad pixels and columns (masked, as
  :func:`skyvar.io.fits.read_frame` masks NaNs), and saturation at the frame's full well.

Validation and test stamps are a fixed grid of non-overlapping crops of the default-configuration
frames with a fixed noise realisation per stamp.

Background: estimated as at inference (:func:`skyvar.detect.pnet.estimate_background`, 64 px meshes,
3 x 3 median filter), on a noisy window of the frame around the stamp (``background_context`` px on
each side, aligned to the frame's 64 px mesh grid) and then cut to the stamp, so a stamp's background
is the frame's, not that of a 128 px stamp with 2 x 2 meshes (which differed from the whole-frame
estimate by 2.3 e⁻ rms, ≈ 0.04 mag at i = 24). ``background_context=0`` gives the old per-stamp estimate.

Targets: every star brighter than ``detect_mag_max`` (default 26: every rendered star, S/N ≥ 5) is a
detection target of the heatmap (``truth_detect``), so faint stars are found and can be subtracted as
neighbours; ``truth_target`` (mag < ``target_mag_max`` = 25) marks the stars that evaluation counts,
and ``magrel_target_max`` is that limit in the network's magnitude unit (−2.5 log10(flux/1000 e⁻)), so
validation counts only detections whose predicted magnitude is brighter (the catalogue's target flag).

Each item is a dict of tensors: ``image`` (1, S, S) electrons with masked pixels 0, ``mask`` (1, S, S)
uint8 (:data:`skyvar.io.fits.MASK_SATURATED` | ``MASK_BAD``), ``background`` (1, S, S) electrons,
``rdnoise`` electrons, ``magrel_target_max``, and the truth of every star whose centre lies in the
stamp, padded to ``max_truth`` rows: ``truth_xy`` (0-indexed stamp pixels), ``truth_flux`` (electrons
drawn), ``truth_mag`` (AB, frame ZP), ``truth_target`` (mag < ``target_mag_max``), ``truth_detect``
(mag < ``detect_mag_max``) and ``truth_valid``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from skyvar.io.fits import MASK_BAD, MASK_SATURATED
from skyvar.sim.field import FieldSimConfig, FieldSimulation
from skyvar.sim.psf import PSFConfig
from skyvar.sim.variability import VariabilityConfig
from skyvar.utils.atomic import atomic_path, write_json_atomic
from skyvar.utils.config import stable_hash
from skyvar.utils.log import get_logger

log = get_logger(__name__)

SPLITS = {"train": 1000, "val": 2000, "test": 3000}  # region (and seed) offsets per split
NO_VARIABLES = VariabilityConfig(frac_eb=0.0, frac_transit=0.0, frac_pulsator=0.0, frac_flare=0.0)


@dataclasses.dataclass
class FrameVariation:
    """Ranges (uniform) of what differs between training frames; val/test frames use the defaults."""

    # Centred on the nominal CSST PSF (Airy 770 nm / 2 m + 0.06" jitter, FWHM 2.30 px): the FWHM of the
    # drawn mix has median 2.33 px and 10-90 % range 1.9-2.7 px (the earlier mix, dilation 0.85-1.3 and
    # broader Moffats, had median 2.67 px: the nominal PSF sat at the narrow end of training).
    psf_models: dict = dataclasses.field(default_factory=lambda: {"airy": 0.55, "optical": 0.35, "moffat": 0.10})
    dilate: tuple[float, float] = (0.78, 1.17)
    jitter_sigma_arcsec: tuple[float, float] = (0.045, 0.075)
    aberration_sigma_waves: float = 0.04  # OpticalPSF: each Zernike term ~ N(0, σ)
    moffat_beta: tuple[float, float] = (2.5, 4.5)
    moffat_fwhm_arcsec: tuple[float, float] = (0.08, 0.13)
    psf_variation: tuple[float, float] = (0.0, 0.2)
    density_scale: tuple[float, float] = (0.6, 1.5)
    clustering: tuple[float, float] = (0.0, 0.3)


@dataclasses.dataclass
class StampAugment:
    """On-the-fly augmentation of training stamps (all keep the truth consistent)."""

    sky_scale: tuple[float, float] = (0.7, 1.5)  # log-uniform factor on sky + dark
    flux_scale_mag: float = 0.4  # uniform shift in [−x, x] mag of every star (fluxes × 10^(−0.4 Δm))
    rot_flip: bool = True
    bad_pixel_prob: float = 0.3  # probability that a stamp gets random bad pixels
    bad_pixel_frac: float = 0.002
    bad_column_prob: float = 0.1


# ----------------------------------------------------------------------------------------------------
def frame_configs(split: str, n: int, size: int, seed: int = 0, vary: bool = False,
                  variation: FrameVariation | None = None) -> list[FieldSimConfig]:
    """Simulator configs of the ``n`` frames of ``split`` (disjoint regions and seeds per split)."""
    off = SPLITS[split]
    out = []
    var = variation or FrameVariation()
    for k in range(n):
        s = 100_000 * seed + off + k
        kw: dict[str, Any] = dict(size=size, seed=s, region=off + k, systematic_floor=0.0, variability=NO_VARIABLES,
                                  out_dir="unused")
        if vary:
            rng = np.random.default_rng([seed, off, k, 7])
            names = list(var.psf_models)
            p = np.asarray([var.psf_models[m] for m in names], float)
            model = names[int(rng.choice(len(names), p=p / p.sum()))]
            psf = dict(model=model, dilate=float(rng.uniform(*var.dilate)),
                       jitter_sigma_arcsec=float(rng.uniform(*var.jitter_sigma_arcsec)))
            if model == "optical":
                for z in ("defocus", "astig1", "astig2", "coma1", "coma2", "spher"):
                    psf[z] = float(rng.normal(0.0, var.aberration_sigma_waves))
            elif model == "moffat":
                psf["moffat_beta"] = float(rng.uniform(*var.moffat_beta))
                psf["moffat_fwhm_arcsec"] = float(rng.uniform(*var.moffat_fwhm_arcsec))
            kw["psf"] = PSFConfig(**psf)
            kw["density"] = FieldSimConfig.density * float(rng.uniform(*var.density_scale))
            kw["clustering"] = float(rng.uniform(*var.clustering))
            kw["psf_variation"] = float(rng.uniform(*var.psf_variation))
        out.append(FieldSimConfig(**kw))
    return out


def simulate_stamp_frame(cfg: FieldSimConfig) -> dict[str, np.ndarray]:
    """Noise-free star image (electrons, no sky) and truth of one frame, with its noise model."""
    sim = FieldSimulation(cfg)
    stars = sim.renderer.render(sim.flux_model).astype(np.float32)
    truth = sim.truth_table()
    from skyvar.detect.pnet import estimate_psf_fwhm

    # the PSF width as the detector will measure it on real frames (noisy image, same estimator)
    rng = np.random.default_rng([cfg.seed, 99])
    noisy = rng.poisson(stars.astype(np.float64) + cfg.sky_e_per_pixel + cfg.dark_e_s * cfg.exptime)
    noisy = noisy + rng.normal(0.0, np.sqrt(cfg.read_var), noisy.shape)
    fwhm = estimate_psf_fwhm(noisy.astype(np.float32), saturate=cfg.saturation_e)
    return {
        "stars": stars,
        "x": np.asarray(truth["x"], np.float64), "y": np.asarray(truth["y"], np.float64),
        "flux": np.asarray(truth["flux"], np.float64), "mag": np.asarray(truth["mag"], np.float64),
        "sky_e": np.float64(cfg.sky_e_per_pixel + cfg.dark_e_s * cfg.exptime),
        "read_var": np.float64(cfg.read_var), "saturation_e": np.float64(cfg.saturation_e),
        "zp": np.float64(cfg.zp), "exptime": np.float64(cfg.exptime), "pixel_scale": np.float64(cfg.pixel_scale),
        "psf_fwhm_px": np.float64(fwhm),
    }


def load_or_simulate(cfg: FieldSimConfig, cache_dir: Path) -> dict[str, np.ndarray]:
    path = cache_dir / f"frame_{cfg.seed}_{stable_hash(cfg)}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            log.warning("cached frame %s unreadable (%s); re-simulating", path, e)
    t0 = time.perf_counter()
    d = simulate_stamp_frame(cfg)
    with atomic_path(path) as tmp:
        np.savez(tmp, **d)
    log.info("simulated frame seed=%d %dx%d psf=%s (FWHM %.2f px) -> %s in %.1f s", cfg.seed, cfg.size, cfg.size,
             cfg.psf.model, float(d["psf_fwhm_px"]), path.name, time.perf_counter() - t0)
    return d


# ----------------------------------------------------------------------------------------------------
def transform_positions(x: np.ndarray, y: np.ndarray, size: int, k_rot: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positions after ``np.rot90(np.fliplr(a) if flip else a, k_rot)`` of a (size, size) array ``a``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = size - 1
    if flip:
        x = n - x
    for _ in range(k_rot % 4):
        # np.rot90 (counter-clockwise): new[i, j] = old[j, n - i] -> old (x, y) lands at (y, n - x)
        x, y = y, n - x
    return x, y


def transform_image(a: np.ndarray, k_rot: int, flip: bool) -> np.ndarray:
    if flip:
        a = np.fliplr(a)
    return np.ascontiguousarray(np.rot90(a, k_rot % 4))


def add_noise(expected_e: np.ndarray, read_var: float, saturation_e: float, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """The simulator's noise model (:meth:`FieldSimulation.render_epoch`, gain 1): Poisson + read noise,
    integer electrons, saturation clipped and flagged."""
    img = rng.poisson(np.clip(expected_e, 0, None)).astype(np.float64)
    img += rng.normal(0.0, np.sqrt(read_var), img.shape)
    over = (img >= saturation_e) | (expected_e >= saturation_e)
    img[over] = saturation_e
    mask = np.where(over, MASK_SATURATED, 0).astype(np.uint8)
    return np.round(img).astype(np.float32), mask


def context_window(x0: int, y0: int, S: int, H: int, W: int, context: int, box: int = 64) -> tuple[int, int, int, int]:
    """(wy0, wy1, wx0, wx1): the stamp [y0, y0+S) x [x0, x0+S) grown by ``context`` px per side, its
    edges moved outwards onto the frame's ``box``-px mesh grid and clipped to the frame."""
    if context <= 0:
        return y0, y0 + S, x0, x0 + S
    wx0 = max(0, ((x0 - context) // box) * box)
    wy0 = max(0, ((y0 - context) // box) * box)
    wx1 = min(W, -(-(x0 + S + context) // box) * box)
    wy1 = min(H, -(-(y0 + S + context) // box) * box)
    return wy0, wy1, wx0, wx1


class _StampBase(Dataset):
    def __init__(self, frames: list[dict], stamp_size: int, target_mag_max: float, max_truth: int,
                 detect_mag_max: float | None = None, background_context: int = 128):
        self.frames = frames
        self.S = int(stamp_size)
        self.target_mag_max = float(target_mag_max)
        self.detect_mag_max = float(target_mag_max if detect_mag_max is None else detect_mag_max)
        self.background_context = int(background_context)
        self.max_truth = int(max_truth)
        for f in frames:
            if min(f["stars"].shape) < self.S:
                raise ValueError(f"frame {f['stars'].shape} smaller than the stamp size {self.S}")

    def _truth_in(self, f: dict, x0: int, y0: int):
        S = self.S
        x = f["x"] - x0
        y = f["y"] - y0
        sel = (x >= -0.5) & (x < S - 0.5) & (y >= -0.5) & (y < S - 0.5)
        return x[sel], y[sel], f["flux"][sel], f["mag"][sel]

    def _noisy_stamp(self, f: dict, x0: int, y0: int, k: float, sky: float, rng: np.random.Generator):
        """Image, mask and background of the stamp at (x0, y0): noise is drawn over the context window
        and the background is estimated there (as on a whole frame), then both are cut to the stamp."""
        from skyvar.detect.pnet import estimate_background

        S = self.S
        H, W = f["stars"].shape
        wy0, wy1, wx0, wx1 = context_window(x0, y0, S, H, W, self.background_context)
        win = f["stars"][wy0:wy1, wx0:wx1].astype(np.float64) * k + sky
        img, mask = add_noise(win, float(f["read_var"]), float(f["saturation_e"]), rng)
        bkg = estimate_background(img, mask)
        cut = (slice(y0 - wy0, y0 - wy0 + S), slice(x0 - wx0, x0 - wx0 + S))
        return img[cut].copy(), mask[cut].copy(), np.asarray(bkg[cut], np.float32).copy()

    def _magrel_limit(self, f: dict) -> float:
        """``target_mag_max`` in the network's unit −2.5 log10(flux / 1000 e⁻) for frame ``f``."""
        from skyvar.models.components.pnet import MAG_REF_E

        return float(self.target_mag_max - float(f["zp"]) - 2.5 * np.log10(float(f["exptime"]) / MAG_REF_E))

    def _item(self, img, mask, x, y, flux, mag, rdnoise, bkg, magrel_max) -> dict[str, torch.Tensor]:
        n = len(x)
        if n > self.max_truth:
            raise ValueError(f"{n} stars in a stamp exceed max_truth={self.max_truth}; raise data.max_truth")
        N = self.max_truth
        xy = np.zeros((N, 2), np.float32)
        xy[:n, 0], xy[:n, 1] = x, y
        tf = np.zeros(N, np.float32)
        tm = np.full(N, 99.0, np.float32)
        tf[:n], tm[:n] = flux, mag
        valid = np.zeros(N, bool)
        valid[:n] = True
        return {
            "image": torch.from_numpy(img[None]), "mask": torch.from_numpy(mask[None]),
            "background": torch.from_numpy(bkg[None].astype(np.float32)),
            "rdnoise": torch.tensor(rdnoise, dtype=torch.float32),
            "truth_xy": torch.from_numpy(xy), "truth_flux": torch.from_numpy(tf), "truth_mag": torch.from_numpy(tm),
            "truth_target": torch.from_numpy(valid & (tm < self.target_mag_max)),
            "truth_detect": torch.from_numpy(valid & (tm < self.detect_mag_max)), "truth_valid": torch.from_numpy(valid),
            "magrel_target_max": torch.tensor(magrel_max, dtype=torch.float32),
        }


class TrainStamps(_StampBase):
    """Random crops with on-the-fly noise and augmentation; ``length`` stamps per epoch."""

    def __init__(self, frames: list[dict], stamp_size: int = 128, length: int = 2048, target_mag_max: float = 25.0,
                 max_truth: int = 1024, augment: StampAugment | None = None, seed: int = 0,
                 detect_mag_max: float | None = None, background_context: int = 128):
        super().__init__(frames, stamp_size, target_mag_max, max_truth, detect_mag_max, background_context)
        self.length = int(length)
        self.aug = augment or StampAugment()
        self.seed = seed
        area = np.array([f["stars"].size for f in frames], float)
        self.p_frame = area / area.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        # torch's RNG is seeded per worker, rank and epoch by Lightning/DataLoader; the index separates
        # items (and DDP ranks, whose samplers hand out different indices)
        rng = np.random.default_rng([self.seed, int(torch.randint(0, 2**62, (1,)).item()), i])
        a, S = self.aug, self.S
        f = self.frames[int(rng.choice(len(self.frames), p=self.p_frame))]
        H, W = f["stars"].shape
        x0, y0 = int(rng.integers(0, W - S + 1)), int(rng.integers(0, H - S + 1))
        x, y, flux, mag = self._truth_in(f, x0, y0)
        dm = float(rng.uniform(-a.flux_scale_mag, a.flux_scale_mag)) if a.flux_scale_mag > 0 else 0.0
        k = 10 ** (-0.4 * dm)
        flux, mag = flux * k, mag + dm
        lo, hi = np.log(a.sky_scale[0]), np.log(a.sky_scale[1])
        sky = float(f["sky_e"]) * float(np.exp(rng.uniform(lo, hi)))
        img, mask, bkg = self._noisy_stamp(f, x0, y0, k, sky, rng)
        if a.rot_flip:
            kr, fl = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            img, mask, bkg = (transform_image(v, kr, fl) for v in (img, mask, bkg))
            x, y = transform_positions(x, y, S, kr, fl)
        if a.bad_pixel_prob > 0 and rng.random() < a.bad_pixel_prob:
            bad = rng.random((S, S)) < a.bad_pixel_frac
            if rng.random() < a.bad_column_prob / max(a.bad_pixel_prob, 1e-9):
                c = int(rng.integers(0, S))
                r0 = int(rng.integers(0, S))
                bad[r0 : r0 + int(rng.integers(8, S)), c] = True
            mask[bad] |= MASK_BAD
            img[bad] = 0.0
        return self._item(img, mask, x, y, flux, mag, float(np.sqrt(f["read_var"])), bkg, self._magrel_limit(f))


class GridStamps(_StampBase):
    """Non-overlapping crops on a grid, fixed noise per stamp (validation / test)."""

    def __init__(self, frames: list[dict], stamp_size: int = 128, target_mag_max: float = 25.0,
                 max_truth: int = 1024, seed: int = 0, detect_mag_max: float | None = None,
                 background_context: int = 128):
        super().__init__(frames, stamp_size, target_mag_max, max_truth, detect_mag_max, background_context)
        self.seed = seed
        self.index = []
        for fi, f in enumerate(frames):
            H, W = f["stars"].shape
            for y0 in range(0, H - self.S + 1, self.S):
                for x0 in range(0, W - self.S + 1, self.S):
                    self.index.append((fi, x0, y0))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        fi, x0, y0 = self.index[i]
        f = self.frames[fi]
        rng = np.random.default_rng([self.seed, 5, i])
        img, mask, bkg = self._noisy_stamp(f, x0, y0, 1.0, float(f["sky_e"]), rng)
        x, y, flux, mag = self._truth_in(f, x0, y0)
        return self._item(img, mask, x, y, flux, mag, float(np.sqrt(f["read_var"])), bkg, self._magrel_limit(f))


# ----------------------------------------------------------------------------------------------------
class CSSTStampDataModule(L.LightningDataModule):
    """Stamps from simulated CSST-like frames (see the module docstring). Frames are simulated once
    into ``data_dir/<hash>/`` by :meth:`prepare_data` (rank 0) and loaded by :meth:`setup`."""

    def __init__(self, data_dir: str = "datasets/csst_stamps", frame_size: int = 1024, n_train_frames: int = 16,
                 n_val_frames: int = 2, n_test_frames: int = 2, stamp_size: int = 128,
                 train_stamps_per_epoch: int = 2048, batch_size: int = 16, eval_batch_size: int | None = None,
                 num_workers: int = 0, target_mag_max: float = 25.0, max_truth: int = 1024, seed: int = 0,
                 variation: dict | FrameVariation | None = None, augment: dict | StampAugment | None = None,
                 vary_train_frames: bool = True, pin_memory: bool = False, detect_mag_max: float | None = 26.0,
                 background_context: int = 128):
        super().__init__()
        self.variation = _as_dc(FrameVariation, variation)
        self.augment = _as_dc(StampAugment, augment)
        self.save_hyperparameters(ignore=["variation", "augment"])
        self.hparams["variation"] = dataclasses.asdict(self.variation)
        self.hparams["augment"] = dataclasses.asdict(self.augment)
        self.frames: dict[str, list[dict]] = {}

    # -------------------------------------------------------------- frames
    def frame_configs(self) -> dict[str, list[FieldSimConfig]]:
        h = self.hparams
        return {
            "train": frame_configs("train", h.n_train_frames, h.frame_size, h.seed, h.vary_train_frames, self.variation),
            "val": frame_configs("val", h.n_val_frames, h.frame_size, h.seed),
            "test": frame_configs("test", h.n_test_frames, h.frame_size, h.seed),
        }

    @property
    def cache_dir(self) -> Path:
        key = {s: [stable_hash(c) for c in cs] for s, cs in self.frame_configs().items()}
        return Path(self.hparams.data_dir) / stable_hash(key)

    def prepare_data(self) -> None:
        d = self.cache_dir
        d.mkdir(parents=True, exist_ok=True)
        cfgs = self.frame_configs()
        for cs in cfgs.values():
            for c in cs:
                load_or_simulate(c, d)
        write_json_atomic(d / "frames.json", {s: [dataclasses.asdict(c) for c in cs] for s, cs in cfgs.items()})

    def _load(self, split: str) -> list[dict]:
        if split not in self.frames:
            self.frames[split] = [load_or_simulate(c, self.cache_dir) for c in self.frame_configs()[split]]
        return self.frames[split]

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        kw = dict(detect_mag_max=h.detect_mag_max, background_context=h.background_context)
        if stage in (None, "fit"):
            self.train_set = TrainStamps(self._load("train"), h.stamp_size, h.train_stamps_per_epoch,
                                         h.target_mag_max, h.max_truth, self.augment, seed=h.seed, **kw)
        if stage in (None, "fit", "validate"):
            self.val_set = GridStamps(self._load("val"), h.stamp_size, h.target_mag_max, h.max_truth, seed=h.seed + 1, **kw)
        if stage in (None, "test"):
            self.test_set = GridStamps(self._load("test"), h.stamp_size, h.target_mag_max, h.max_truth, seed=h.seed + 2, **kw)

    def training_meta(self) -> dict:
        """What the model was trained on (stored in its checkpoint; :class:`PNetDetector` warns when a
        frame differs): pixel scale, the measured PSF FWHM range, noise ranges."""
        fr = self._load("train")
        fw = np.array([float(f["psf_fwhm_px"]) for f in fr])
        fw = fw[np.isfinite(fw)]
        return {
            "pixel_scale_arcsec": float(fr[0]["pixel_scale"]),
            "psf_fwhm_px": [float(fw.min()), float(fw.max())] if len(fw) else None,
            "sky_e": [float(min(f["sky_e"] for f in fr) * self.augment.sky_scale[0]),
                      float(max(f["sky_e"] for f in fr) * self.augment.sky_scale[1])],
            "target_mag_max": float(self.hparams.target_mag_max),
            "detect_mag_max": float(self.hparams.detect_mag_max or self.hparams.target_mag_max),
            "background_context": int(self.hparams.background_context),
            "stamp_size": int(self.hparams.stamp_size),
            "data_hash": self.cache_dir.name,
            "n_train_frames": len(fr),
            "frame_size": int(self.hparams.frame_size),
        }

    def _loader(self, ds, shuffle: bool, batch_size: int) -> DataLoader:
        h = self.hparams
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=h.num_workers,
                          pin_memory=h.pin_memory, persistent_workers=h.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.hparams.eval_batch_size or self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.hparams.eval_batch_size or self.hparams.batch_size)


def _as_dc(cls, v):
    if v is None:
        return cls()
    if isinstance(v, cls):
        return v
    from omegaconf import OmegaConf

    if OmegaConf.is_config(v):
        v = OmegaConf.to_container(v, resolve=True)
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = set(v) - fields
    if bad:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(bad)}; valid: {sorted(fields)}")
    return cls(**{k: (tuple(x) if isinstance(x, list) else x) for k, x in v.items()})
