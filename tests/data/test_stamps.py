"""The stamp data set: disjoint splits, caching, augmentation that keeps image and truth consistent."""

import numpy as np
import pytest
import torch
from pnet_helpers import gaussian_frame, single_thread, tiny_datamodule, tiny_stamp_dir  # noqa: F401 (fixture)

from skyvar.data.stamps import (
    SPLITS,
    FrameVariation,
    GridStamps,
    StampAugment,
    TrainStamps,
    add_noise,
    frame_configs,
    transform_image,
    transform_positions,
)
from skyvar.detect.pnet import decode, encode_targets, flux_to_magrel

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("k_rot", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_transform_positions_follow_the_pixels(k_rot, flip):
    a = np.zeros((16, 16))
    a[5, 3] = 1.0  # x = 3, y = 5
    b = transform_image(a, k_rot, flip)
    yb, xb = np.unravel_index(np.argmax(b), b.shape)
    xt, yt = transform_positions(np.array([3.0]), np.array([5.0]), 16, k_rot, flip)
    assert (xt[0], yt[0]) == (xb, yb)


def test_augmented_targets_decode_to_transformed_catalogue():
    """Rotate/flip a stamp's truth -> encoded targets -> decoded catalogue = the transformed catalogue."""
    rng = np.random.default_rng(4)
    S = 32
    x, y = rng.uniform(0, S - 1, 12), rng.uniform(0, S - 1, 12)
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None]) + np.eye(12) * 99
    keep = np.ones(12, bool)
    for i in range(12):
        if keep[i]:
            keep[(d[i] < 1.5) & (np.arange(12) > i)] = False
    x, y = x[keep], y[keep]
    mag = rng.uniform(-2, 0.5, len(x))

    def cat(xs, ys):
        t = encode_targets(torch.tensor(np.c_[xs, ys][None], dtype=torch.float32), torch.tensor(mag[None], dtype=torch.float32),
                           torch.ones(1, len(xs), dtype=torch.bool), (S, S), 2, 0.5)
        h = t["heat"].clamp(1e-6, 1 - 1e-6)
        out = {"heat": torch.log(h / (1 - h)), "offset": t["offset"], "mag": t["mag"], "log_var": torch.zeros_like(t["mag"])}
        c = decode(out, 2, 0.5)[0]
        o = np.lexsort((c["magrel"],))
        return c["x"][o], c["y"][o], c["magrel"][o]

    x0, y0, m0 = cat(x, y)
    for k_rot in range(4):
        for flip in (False, True):
            xt, yt = transform_positions(x, y, S, k_rot, flip)
            x1, y1, m1 = cat(xt, yt)
            xe, ye = transform_positions(x0, y0, S, k_rot, flip)
            np.testing.assert_allclose(m1, m0, atol=1e-6)
            np.testing.assert_allclose(x1, xe, atol=1e-4)
            np.testing.assert_allclose(y1, ye, atol=1e-4)


def test_train_stamps_keep_image_and_truth_consistent():
    """After random crops, flips/rotations and flux scaling, each bright star still sits on its image peak
    and its flux scales with the truth."""
    f = gaussian_frame(n=96)
    aug = StampAugment(sky_scale=(1.0, 1.0), flux_scale_mag=0.4, rot_flip=True, bad_pixel_prob=0.0)
    ds = TrainStamps([f], stamp_size=64, length=40, target_mag_max=30.0, max_truth=16, augment=aug, seed=1)
    seen = 0
    for i in range(40):
        it = ds[i]
        img = (it["image"][0] - it["background"][0]).numpy()
        v = it["truth_valid"].numpy()
        for (xs, ys), fl in zip(it["truth_xy"].numpy()[v], it["truth_flux"].numpy()[v]):
            ix, iy = int(round(xs)), int(round(ys))
            if not (3 <= ix < 61 and 3 <= iy < 61):
                continue
            win = img[iy - 3 : iy + 4, ix - 3 : ix + 4]
            py, px = np.unravel_index(np.argmax(win), win.shape)
            assert abs(px - 3) <= 1 and abs(py - 3) <= 1
            # the 7x7 sum of a sigma = 1 px Gaussian holds ~99.7 % of the flux (plus noise)
            assert win.sum() == pytest.approx(0.997 * fl, rel=0.1)
            seen += 1
    assert seen > 20


def test_flux_scaling_shifts_magnitudes_and_the_target_set():
    f = gaussian_frame(n=96, stars=((30.0, 30.0, 700.0), (60.0, 60.0, 50000.0)))
    aug = StampAugment(sky_scale=(1.0, 1.0), flux_scale_mag=0.5, rot_flip=False, bad_pixel_prob=0.0)
    ds = TrainStamps([f], stamp_size=96, length=60, target_mag_max=25.0, max_truth=4, augment=aug, seed=0)
    m_faint = f["mag"][0]  # ~24.9: a target only when scaled up
    n_t = []
    for i in range(60):
        it = ds[i]
        dm = float(it["truth_mag"][1] - f["mag"][1])
        assert float(it["truth_mag"][0]) == pytest.approx(m_faint + dm, abs=1e-4)
        assert float(it["truth_flux"][0]) == pytest.approx(700.0 * 10 ** (-0.4 * dm), rel=1e-5)
        n_t.append(bool(it["truth_target"][0]))
        assert bool(it["truth_target"][0]) == (float(it["truth_mag"][0]) < 25.0)
    assert 0 < sum(n_t) < 60


def test_bad_pixels_are_masked_and_zeroed():
    f = gaussian_frame(n=96)
    aug = StampAugment(bad_pixel_prob=1.0, bad_pixel_frac=0.05, bad_column_prob=0.0)
    it = TrainStamps([f], 64, 1, augment=aug, max_truth=16)[0]
    bad = (it["mask"][0].numpy() & 2) > 0
    assert bad.sum() > 50 and np.all(it["image"][0].numpy()[bad] == 0)


def test_noise_model_and_saturation():
    rng = np.random.default_rng(0)
    exp = np.full((200, 200), 400.0)
    exp[0, 0] = 1e6
    img, mask = add_noise(exp, read_var=50.0, saturation_e=180000.0, rng=rng)
    assert np.var(img[1:]) == pytest.approx(450.0, rel=0.05)  # Poisson + read noise
    assert img[0, 0] == 180000.0 and mask[0, 0] == 1 and mask.sum() == 1
    assert np.all(img == np.round(img))


def test_split_configs_are_disjoint_and_varied():
    cfgs = {s: frame_configs(s, 4, 256, seed=0, vary=(s == "train")) for s in SPLITS}
    seeds = [c.seed for cs in cfgs.values() for c in cs]
    regions = [c.region for cs in cfgs.values() for c in cs]
    assert len(set(seeds)) == len(seeds) and len(set(regions)) == len(regions)
    assert all(c.seed >= 1000 and c.region >= 1000 for c in (x for cs in cfgs.values() for x in cs))
    tr = cfgs["train"]
    assert len({round(c.psf.dilate, 4) for c in tr}) == 4 and len({c.density for c in tr}) == 4
    assert all(c.psf.model == "airy" and c.psf.dilate == 1.0 for c in cfgs["val"] + cfgs["test"])
    # the same inputs give the same frames
    assert [c.psf for c in frame_configs("train", 4, 256, vary=True, variation=FrameVariation())] == [c.psf for c in tr]


def test_datamodule_caches_frames_and_yields_batches(tiny_stamp_dir):  # noqa: F811 (pytest fixture)
    dm = tiny_datamodule(tiny_stamp_dir)
    files = sorted(dm.cache_dir.glob("frame_*.npz"))
    assert len(files) == 3 and (dm.cache_dir / "frames.json").exists()
    mtimes = [p.stat().st_mtime for p in files]
    dm.prepare_data()  # cached: nothing re-simulated
    assert [p.stat().st_mtime for p in files] == mtimes
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 1, 64, 64) and b["truth_xy"].shape == (4, 256, 2)
    assert torch.isfinite(b["image"]).all() and (b["truth_target"] <= b["truth_valid"]).all()
    # the truth magnitudes are the frame ZP magnitudes of the drawn fluxes
    v = b["truth_valid"]
    np.testing.assert_allclose(b["truth_mag"][v], 25.85 - 2.5 * torch.log10(b["truth_flux"][v] / 300.0), atol=2e-3)
    assert len(dm.val_set) == 4 and isinstance(dm.val_set, GridStamps)
    meta = dm.training_meta()
    assert meta["pixel_scale_arcsec"] == 0.074 and meta["psf_fwhm_px"][0] > 1.5
    # a grid stamp is deterministic
    a, b2 = dm.val_set[1], dm.val_set[1]
    assert torch.equal(a["image"], b2["image"])
    assert float(flux_to_magrel(torch.tensor([1000.0]))) == 0.0


def test_unknown_variation_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown FrameVariation keys"):
        tiny_datamodule(tmp_path, variation={"dilatte": [1, 2]})
