"""Augmentations of truth-noise light curves with measured-curve systematics (skyvar.data.measured_lightcurves)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from skyvar.data.measured_lightcurves import AugmentConfig, MeasuredViewsDataModule, augment_batch
from skyvar.lightcurves.batch import LightCurveBatch


def _batch(n=400, t=1000):
    time = np.tile(60000 + np.arange(t) * 300 / 86400, (n, 1))
    return LightCurveBatch(source_id=np.arange(n), band=np.full(n, "i"), time=time, mag=np.full((n, t), 20.0),
                           mag_err=np.full((n, t), 0.01), mask=np.ones((n, t), bool))


def test_augment_adds_jitter_gaps_outliers_reproducibly():
    b = _batch()
    cfg = AugmentConfig(zp_jitter_max=0.02, p_gaps=1.0, max_gaps=2, gap_min=10, gap_max=20, p_outliers=1.0,
                        outlier_frac_max=0.02)
    a1 = augment_batch(b, cfg, np.random.default_rng(1))
    a2 = augment_batch(b, cfg, np.random.default_rng(1))
    np.testing.assert_array_equal(a1.mag, a2.mag)
    np.testing.assert_array_equal(a1.mask, a2.mask)
    assert np.all(b.mag == 20.0) and b.mask.all()  # the input is untouched
    missing = (~a1.mask).sum(1)
    assert missing.min() >= 10 and missing.max() <= 40  # 1-2 gaps of 10-20 epochs each
    # every curve lost whole blocks, not scattered points
    runs = np.diff(a1.mask.astype(int), axis=1)
    assert np.all((runs == -1).sum(1) <= 2)
    d = a1.mag - 20.0
    big = np.abs(d) > 0.1
    assert 0 < big.mean() < 0.02
    rms = np.sqrt(np.mean(np.where(big, 0, d) ** 2, axis=1))
    assert rms.max() <= 0.021 and np.ptp(rms) > 0.01  # per-curve jitter drawn from U(0, 0.02)


def test_no_augmentation_changes_nothing():
    b = _batch(20, 200)
    cfg = AugmentConfig(zp_jitter_max=0.0, p_gaps=0.0, p_outliers=0.0)
    a = augment_batch(b, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(a.mag, b.mag)
    assert dataclasses.asdict(cfg)["seed"] == 0


def test_measured_datamodule_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="fields"):
        MeasuredViewsDataModule(data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="easy_negative_fraction"):
        MeasuredViewsDataModule(data_dir=str(tmp_path), fields=[{"seed": 1}], easy_negative_fraction=0.0)


def test_measured_datamodule_builds_labels_views_and_region_splits(tmp_path):
    """A tiny field series through pipeline=field (sep reference + forced photometry), labelled by
    truth, mixed with augmented truth-noise curves: origins, labels, region splits, resumable cache."""
    fields = [{"seed": 3, "size": 160, "n_epochs": 60, "variability": {"frac_eb": 0.3, "frac_transit": 0.2}}]
    mix = {"seed": 4, "n_stars": 150, "field": {"n_epochs": 60, "variability": {"frac_eb": 0.3}}}
    kw = dict(data_dir=str(tmp_path / "m"), fields=fields, detector="sep", mix=mix, augment={"seed": 1},
              region_px=40, views={"min_points": 30, "period_min": 0.05, "vetting": True, "num_threads": 1},
              splits=(0.6, 0.2, 0.2), seed=5, mask_flags=["saturated", "edge"], progress=False,
              easy_negative_fraction=0.5)
    dm = MeasuredViewsDataModule(**kw)
    tab = dm.load()
    assert set(tab["origin"]) == {"field-3", "sim"}
    f = tab[tab["origin"] == "field-3"]
    assert len(f) > 50 and f["label"].sum() > 0 and (f["var_type"] == "unmatched").sum() >= 0
    assert f["snr_lc_total"].notna().any()
    # region split: every 40-px cell lies in one split only
    cell = (np.floor(f["x"] / 40).astype(int).astype(str) + "_" + np.floor(f["y"] / 40).astype(int).astype(str))
    assert (f.groupby(cell)["split"].nunique() == 1).all()
    assert dm._arrays["local_view"].shape[1:] == (4, 61) and dm._arrays["aux"].shape[1] == 9
    dm.setup()
    tr = dm.datasets["train"]
    assert 0 < len(tr) <= int(((tab["split"] == "train") & (tab["view_flag"] == 0)).sum())
    # a second module of the same config reuses the caches (no pipeline rerun) and gives the same table
    dm2 = MeasuredViewsDataModule(**kw)
    pd.testing.assert_frame_equal(dm2.load(), tab)


def test_a_missing_reused_series_is_a_clear_error(tmp_path):
    from skyvar.data.measured_lightcurves import build_measured_field

    with pytest.raises(FileNotFoundError, match="sim_dir=.*no truth.ecsv and frames"):
        build_measured_field({"sim_dir": str(tmp_path / "nope"), "seed": 1}, tmp_path / "out")
