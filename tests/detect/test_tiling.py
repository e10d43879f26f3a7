import numpy as np
from astropy.table import Table

from skyvar.detect.tiling import detect_tiled, iter_tiles


def test_cores_partition_the_frame():
    shape = (300, 517)
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, shape[1] - 0.5, 5000)
    y = rng.uniform(-0.5, shape[0] - 0.5, 5000)
    owners = np.zeros(len(x), int)
    for t in iter_tiles(shape, tile=128, overlap=24):
        owners += t.in_core(x, y)
        assert t.x1 - t.x0 <= 128 and t.y1 - t.y0 <= 128
    assert (owners == 1).all()


def test_detect_tiled_keeps_each_source_once():
    shape = (256, 256)
    pts = np.array([[10.0, 10.0], [127.4, 128.6], [200.2, 50.5], [63.9, 64.1]])

    def fn(t):
        s = (pts[:, 0] >= t.x0) & (pts[:, 0] < t.x1) & (pts[:, 1] >= t.y0) & (pts[:, 1] < t.y1)
        return Table({"x": pts[s, 0], "y": pts[s, 1]})

    out = detect_tiled(shape, fn, tile=100, overlap=30)
    assert len(out) == len(pts)
    assert sorted(np.round(out["x"], 1)) == sorted(np.round(pts[:, 0], 1))
