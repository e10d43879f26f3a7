"""Association of per-frame catalogues into light curves (first-detection anchors, one-to-one)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from skyvar.lightcurves.associate import Associator, CatalogError, associate_catalogs, read_catalog
from skyvar.lightcurves.store import read_store

ARCSEC = 1 / 3600.0


def _write_cat(path, ra, dec, mag, mjd, band="g", x=None, y=None, frame_id=None, meta=True):
    n = len(mag)
    t = Table()
    t["x"] = np.arange(n, dtype=float) if x is None else x
    t["y"] = np.zeros(n) if y is None else y
    t["ra"], t["dec"] = ra, dec
    t["flux"] = 10 ** (-0.4 * (np.asarray(mag) - 25))
    t["flux_err"] = np.sqrt(t["flux"])
    t["mag"], t["mag_err"] = mag, np.full(n, 0.02)
    t["flags"] = np.zeros(n, np.int32)
    t["frame_id"] = np.full(n, frame_id or path.stem)
    t["detector"] = np.full(n, "sep")
    if meta:
        t.meta.update(frame_id=frame_id or path.stem, mjd=mjd, filter=band, detector="sep")
    t.write(path, format="ascii.ecsv", overwrite=True)
    return path


def _field(tmp_path, n_stars=150, n_frames=12, p_det=0.85, jitter_arcsec=0.12, seed=0):
    """Stars in a 0.05 deg field; each frame detects ~85 % with jitter, plus spurious detections."""
    rng = np.random.default_rng(seed)
    # A jittered 10" grid: no two stars (or a star and a spurious detection) within 4", so every
    # confusion the test could see is the matcher's fault.
    side = int(np.ceil(np.sqrt(n_stars)))
    gx, gy = np.divmod(rng.permutation(side * side)[:n_stars], side)
    ra0 = 150 + (gx * 10 + rng.uniform(-2, 2, n_stars)) * ARCSEC
    dec0 = 2 + (gy * 10 + rng.uniform(-2, 2, n_stars)) * ARCSEC
    mag0 = 14 + 0.02 * np.arange(n_stars)  # the magnitude encodes the star: 0.02 mag apart
    truth_rows = []
    d = tmp_path / "cats"
    d.mkdir()
    mjds = 60000 + np.sort(rng.uniform(0, 30, n_frames))
    for k in rng.permutation(n_frames):  # written in shuffled order: the file names do not sort by time
        det = rng.random(n_stars) < p_det
        idx = np.flatnonzero(det)
        ra = ra0[idx] + rng.normal(0, jitter_arcsec, len(idx)) * ARCSEC / np.cos(np.radians(dec0[idx]))
        dec = dec0[idx] + rng.normal(0, jitter_arcsec, len(idx)) * ARCSEC
        n_fake = 3
        ra = np.r_[ra, 150 + (rng.integers(0, side, n_fake) * 10 + 5) * ARCSEC]  # between grid rows
        dec = np.r_[dec, 2 + (rng.integers(0, side, n_fake) * 10 + 5) * ARCSEC]
        mag = np.r_[mag0[idx] + rng.uniform(-0.005, 0.005, len(idx)), rng.uniform(30, 31, n_fake)]
        band = "g" if k % 2 else "r"
        _write_cat(d / f"f{rng.integers(1e6):07d}_{k:03d}.ecsv", ra, dec, mag, mjds[k], band=band)
        truth_rows.append(pd.DataFrame({"star": idx, "time": mjds[k], "band": band}))
    return d, pd.concat(truth_rows, ignore_index=True), (ra0, dec0)


def test_association_recovers_stars_and_keeps_missing_epochs_missing(tmp_path):
    d, truth, _ = _field(tmp_path)
    files = sorted(d.glob("*.ecsv"))
    res = associate_catalogs(files, tmp_path / "store", n_partitions=3)
    assert res.failures == [] and res.n_frames == 12 and res.mode == "sky"
    store = read_store(tmp_path / "store")
    assert len(store) == res.n_measurements == len(truth) + 12 * 3
    # Every source holds one star (or one spurious detection), and every star is one source.
    star = np.rint((store.mag.to_numpy() - 14) / 0.02).astype(int)
    store["star"] = np.where(store.mag < 29, star, -1)  # spurious ones may repeat a spot: one label
    assert store.groupby("source_id").star.nunique().eq(1).all()
    assert store[store.star >= 0].groupby("star").source_id.nunique().eq(1).all()
    # Missing epochs stay missing: each star's (band -> count) equals its detections.
    got = store[store.star >= 0].groupby(["star", "band"]).size().sort_index()
    want = truth.groupby(["star", "band"]).size().sort_index()
    pd.testing.assert_series_equal(got, want, check_names=False)
    # Anchors are first detections: each anchor's time is the source's earliest measurement.
    src = res.sources.set_index("source_id")
    first = store.groupby("source_id").time.min()
    np.testing.assert_allclose(src.first_mjd.to_numpy(), first.reindex(src.index).to_numpy())


def test_anchor_is_first_detection_not_the_mean(tmp_path):
    # A source whose measured position creeps by 0.4" per frame: frames 0-2 stay within 1" of the
    # first detection (0, .4, .8), frame 3 at 1.2" starts a new source; an averaged anchor would not split.
    files = []
    for k in range(5):
        files.append(_write_cat(tmp_path / f"c{k}.ecsv", [150 + 0.4 * k * ARCSEC], [2.0], [15.0], 60000 + k))
    res = associate_catalogs(files, tmp_path / "store", n_partitions=1)
    store = read_store(tmp_path / "store")
    assert store.groupby("source_id").time.apply(list).tolist() == [[60000.0, 60001.0, 60002.0],
                                                                     [60003.0, 60004.0]]
    assert res.sources.ra.iloc[0] == 150.0


def test_one_to_one_closest_wins():
    a = Associator(radius_arcsec=1.0)

    class C:  # minimal CatalogFrame stand-in
        def __init__(self, ra, dec, mjd):
            self.ra, self.dec = np.asarray(ra, float), np.asarray(dec, float)
            self.x = self.y = np.full(len(self.ra), np.nan)
            self.mag = np.full(len(self.ra), 15.0)
            self.mag_err = np.full(len(self.ra), 0.01)
            self.flags = np.zeros(len(self.ra), np.int32)
            self.mjd, self.frame_id, self.band, self.pixel_scale, self.path = mjd, "f", "g", None, "mem"

        def __len__(self):
            return len(self.ra)

        has_sky = True

    first = a.add(C([150.0, 150.01], [2.0, 2.0], 1.0))
    assert first.tolist() == [0, 1]
    # Two detections near source 0 (0.3" and 0.6"): the closer takes it, the other is a new source.
    ids = a.add(C([150.0 + 0.6 * ARCSEC, 150.0 + 0.3 * ARCSEC], [2.0, 2.0], 2.0))
    assert ids.tolist() == [2, 0]
    assert a.n_sources == 3


def test_pixel_mode_and_bad_catalogues_are_skipped(tmp_path):
    d = tmp_path / "cats"
    d.mkdir()
    nan = np.full(3, np.nan)
    for k in range(4):
        _write_cat(d / f"p{k}.ecsv", nan, nan, [15.0, 16.0, 17.0], 60000 + k,
                   x=np.array([10.0, 50.0, 90.0]) + 0.3 * k, y=np.array([10.0, 20.0, 30.0]))
    _write_cat(d / "nomjd.ecsv", nan[:1], nan[:1], [15.0], 0, meta=False)
    good = (d / "p0.ecsv").read_text()
    (d / "truncated.ecsv").write_text(good[: good.index("%ECSV") + 30])
    (d / "garbage.ecsv").write_text("this is not a catalogue\n")
    cut = good[:-25]  # last data row cut in the middle of a number
    (d / "cut.ecsv").write_text(cut.replace("mjd: 60000", "mjd: 60010"))
    files = sorted(d.glob("*.ecsv"))
    res = associate_catalogs(files, tmp_path / "store", radius_pix=1.0, n_partitions=2)
    failed = sorted(f["file"].split("/")[-1] for f in res.failures)
    assert failed == ["garbage.ecsv", "nomjd.ecsv", "truncated.ecsv"]
    assert res.mode == "pixel" and res.radius == 1.0
    store = read_store(tmp_path / "store")
    # 0.3 px drift per frame stays inside 1 px of the first detection for 4 frames (max 0.9 px).
    per = store.groupby("source_id").size()
    assert len(per) == 3 and per.tolist() == [5, 5, 4]  # the cut file lost its clipped last row
    with pytest.raises(CatalogError, match="nomjd.ecsv.*mjd"):
        read_catalog(d / "nomjd.ecsv")


def run_infer(overrides):
    """``python infer.py <overrides>`` in-process (same config composition, no interpreter start-up)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "src" / "skyvar" / "conf"), version_base="1.3"):
        cfg = compose("infer", overrides=overrides)
    return instantiate(cfg.pipeline, _convert_="partial").run()


def test_infer_associate_then_store(tmp_path):
    d, truth, _ = _field(tmp_path, n_stars=40, n_frames=5)
    out = tmp_path / "out"
    summary = run_infer(["pipeline=associate", f"input={d}", f"out_dir={out}", "pipeline.progress=false"])
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["n_frames"] == 5 and summary["n_failed"] == 0
    src = pd.read_parquet(out / "sources.parquet")
    store = read_store(out / "store")
    assert src.n_measurements.sum() == len(store) == summary["n_measurements"]
    assert (out / "store").is_dir() and any(p.name.startswith("part=") for p in (out / "store").iterdir())
