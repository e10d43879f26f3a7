"""Tiled association (skyvar.lightcurves.associate.associate_tiled): tile by tile with margins and
ownership by anchor position gives the untiled association's sources, ids and measurements, on the
sky and in pixels; a margin too small to hold the matches is detected and reported."""

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from skyvar.lightcurves.associate import TileGrid, associate_catalogs, unpack_tile
from skyvar.lightcurves.store import open_store, read_store

SCALE = 0.074  # arcsec / px


def _wcs(n):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [269.2125, -29.58]
    w.wcs.crpix = [n / 2, n / 2]
    w.wcs.cd = np.array([[-SCALE / 3600, 0], [0, SCALE / 3600]])
    return w


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """A crowded 192² field (0.06 stars/px², one in five with a neighbour within 2 px), 16 epochs:
    0.3 px position noise, 85 % detection probability, spurious detections, pointing offsets."""
    d = tmp_path_factory.mktemp("tiledcats")
    rng = np.random.default_rng(7)
    n = 192
    k = int(0.06 * n * n)
    x, y = rng.uniform(-0.5, n - 0.5, k), rng.uniform(-0.5, n - 0.5, k)
    # close pairs, many of them across tile borders (x = 47.5, 95.5 ...)
    m = k // 5
    x[:m] = rng.choice([47.5, 95.5, 143.5], m) + rng.normal(0, 1.5, m)
    x[m:2 * m] = x[:m] + rng.uniform(0.8, 2.0, m)
    y[m:2 * m] = y[:m] + rng.uniform(-0.5, 0.5, m)
    mag = rng.uniform(18, 24, k)
    w = _wcs(n)
    files = []
    for e in range(16):
        det = rng.random(k) < 0.85
        dx, dy = rng.normal(0, 0.4, 2)
        xe = x[det] + dx + rng.normal(0, 0.3, det.sum())
        ye = y[det] + dy + rng.normal(0, 0.3, det.sum())
        ns = 40
        xe = np.r_[xe, rng.uniform(0, n, ns)]
        ye = np.r_[ye, rng.uniform(0, n, ns)]
        me = np.r_[mag[det] + rng.normal(0, 0.02, det.sum()), rng.uniform(24, 25, ns)]
        order = rng.permutation(len(xe))
        xe, ye, me = xe[order], ye[order], me[order]
        me[::97] = np.nan  # unusable detections
        ra, dec = w.all_pix2world(xe, ye, 0)
        t = Table({"x": xe, "y": ye, "ra": ra, "dec": dec, "mag": me, "mag_err": np.full(len(xe), 0.02),
                   "flags": np.zeros(len(xe), np.int32)})
        t.meta.update(mjd=60000.0 + e / 288, filter="i", frame_id=f"f{e:03d}")
        files.append(d / f"f{e:03d}.parquet")
        t.write(files[-1])
    return files


def _pixel_only(files, d):
    out = []
    for f in files:
        t = Table.read(f)
        t["ra"] = np.nan
        t["dec"] = np.nan
        p = d / f.name
        t.write(p)
        out.append(p)
    return out


def _load(store):
    return read_store(store).sort_values(["source_id", "time"]).reset_index(drop=True)


@pytest.mark.parametrize("mode", ["sky", "pixel"])
def test_tiled_equals_untiled(catalogs, tmp_path, mode):
    files = catalogs if mode == "sky" else _pixel_only(catalogs, tmp_path)
    kw = dict(radius_arcsec=SCALE, pixel_scale=SCALE, radius_pix=1.0, n_partitions=4)
    a = associate_catalogs(files, tmp_path / "whole", **kw)
    b = associate_catalogs(files, tmp_path / "tiled", tile_px=48, **kw)
    assert a.mode == b.mode == mode and a.tiles is None
    assert b.tiles["n_tiles"] >= 16 and b.tiles["tile_conflicts"] == 0
    # no tile tracked more than its core plus margins: memory is bounded by a tile, not the field
    assert b.tiles["max_tracked_sources"] < 0.25 * len(a.sources)
    pd.testing.assert_frame_equal(a.sources, b.sources)
    pd.testing.assert_frame_equal(_load(a.store), _load(b.store))
    assert a.n_measurements == b.n_measurements and a.unmatched_detections == b.unmatched_detections > 0
    assert a.n_frames == b.n_frames == 16
    # every store partition holds complete light curves of one tile
    parts = open_store(b.store).partitions
    assert b.tiles["n_tiles"] * 0.7 <= len(parts) <= b.tiles["n_tiles"]  # one per tile owning a source
    seen = set()
    for p in parts:
        ids = set(p.load(["source_id"])["source_id"])
        assert not ids & seen
        seen |= ids
    assert len(seen) == len(a.sources)


def test_chain_longer_than_the_margin_is_detected(tmp_path):
    """A chain of matches reaching beyond the margin: P (x=61.0), then D (61.9) joins P, F (62.7) starts
    a source, G (63.6, across the border at 63.5) joins F. The right-hand tile with a 2 px margin never
    sees P, so it gives D a source of its own, F joins D, and G starts a source in its core: G is
    written twice. The check reports it (and the 16 px default margin gets it right)."""
    files = []
    for e, xs in enumerate([[61.0], [61.9], [62.7], [63.6]]):
        x = np.array([10.0, 100.0] + xs)
        t = Table({"x": x, "y": np.full(len(x), 10.0), "ra": np.full(len(x), np.nan), "dec": np.full(len(x), np.nan),
                   "mag": np.full(len(x), 20.0), "mag_err": np.full(len(x), 0.01), "flags": np.zeros(len(x), np.int32)})
        t.meta.update(mjd=60000.0 + e, filter="i")
        files.append(tmp_path / f"c{e}.parquet")
        t.write(files[-1])
    kw = dict(radius_pix=1.0, n_partitions=2)
    with pytest.raises(ValueError, match="two match radii"):
        associate_catalogs(files, tmp_path / "t0", tile_px=64, margin_px=1.0, **kw)
    a = associate_catalogs(files, tmp_path / "whole", **kw)
    assert len(a.sources) == 4 and a.n_measurements == 12  # P+D, F+G, and the two steady stars
    b = associate_catalogs(files, tmp_path / "narrow", tile_px=64, margin_px=2.0, **kw)
    assert len(b.sources) == 5 and b.n_measurements == 13  # G twice
    assert b.tiles["tile_conflicts"] > 0
    c = associate_catalogs(files, tmp_path / "default", tile_px=64, **kw)
    assert c.tiles["tile_conflicts"] == 0 and c.sources.equals(a.sources)


def test_single_tile_field_uses_one_pass(catalogs, tmp_path):
    b = associate_catalogs(catalogs, tmp_path / "s", tile_px=4096, radius_arcsec=SCALE, pixel_scale=SCALE)
    assert b.tiles is None and len(b.sources) > 0


def test_grid_memberships():
    g = TileGrid(mode="pixel", size=10.0, margin=2.0)
    u = np.array([5.0, 0.0, 8.0, 8.0, -3.0])
    v = np.array([5.0, 5.0, 5.0, 8.0, 5.0])
    idx, keys = g.memberships(u, v)
    got = {i: sorted(unpack_tile(k) for k in keys[idx == i]) for i in range(len(u))}
    assert got[0] == [(0, 0)]                    # deep in the core
    assert got[1] == [(-1, 0), (0, 0)]           # within 2 px of the left border (at -0.5)
    assert got[2] == [(0, 0), (1, 0)]            # within 2 px of the right border (at 9.5)
    assert got[3] == [(0, 0), (0, 1), (1, 0), (1, 1)]  # a corner: four tiles
    assert got[4] == [(-1, 0)]
    assert [unpack_tile(k) for k in g.cell(u, v)] == [(0, 0), (0, 0), (0, 0), (0, 0), (-1, 0)]


def test_associate_pipeline_tiles(catalogs, tmp_path):
    from skyvar.pipeline.associate import AssociatePipeline

    s = AssociatePipeline(input=[str(f) for f in catalogs], out_dir=str(tmp_path / "a"), radius_arcsec=SCALE,
                          pixel_scale=SCALE, tile_px=48, progress=False).run()
    assert s["tiles"]["n_tiles"] >= 16 and s["tiles"]["tile_conflicts"] == 0
    src = pd.read_parquet(tmp_path / "a/sources.parquet")
    assert src["n_measurements"].sum() == s["n_measurements"]
