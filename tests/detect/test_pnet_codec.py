"""PNet target encoding and decoding: geometry, exact round trips, the decoder ceiling in a dense field."""

import numpy as np
import pytest
import torch
from pnet_helpers import single_thread  # noqa: F401 (fixture)

from skyvar.detect.pnet import (
    cell_centre,
    decode,
    encode_targets,
    fine_cell,
    flux_to_magrel,
    merge_duplicates,
)
from skyvar.evaluate.matching import match_catalogs
from skyvar.sim.field import FieldSimConfig, draw_catalogue

pytestmark = pytest.mark.usefixtures("single_thread")


def _perfect_outputs(t):
    h = t["heat"].clamp(1e-6, 1 - 1e-6)
    return {"heat": torch.log(h / (1 - h)), "offset": t["offset"], "mag": t["mag"],
            "log_var": torch.full_like(t["mag"], np.log(0.01**2))}


def test_fine_cell_geometry():
    # pixel i covers [i - 0.5, i + 0.5); with u = 2 its halves are cells 2i and 2i + 1
    x = torch.tensor([-0.5, -0.01, 0.0, 0.49, 0.5, 3.2])
    assert fine_cell(x, 2, 100).tolist() == [0, 0, 1, 1, 2, 7]
    assert cell_centre(torch.tensor([0, 1, 2, 7]), 2).tolist() == [-0.25, 0.25, 0.75, 3.25]
    assert fine_cell(torch.tensor([0.3]), 1, 10).tolist() == [0]
    assert cell_centre(torch.tensor([4]), 1).tolist() == [4.0]


def test_encode_single_star_hand_values():
    xy = torch.tensor([[[10.3, 5.9]]])
    t = encode_targets(xy, torch.tensor([[-1.5]]), torch.tensor([[True]]), (16, 16), upsample=2, sigma_px=0.5)
    # star cell: x: floor(10.8 * 2) = 21 (centre 10.25), y: floor(6.4 * 2) = 12 (centre 5.75)
    heat = t["heat"][0, 0]
    assert heat[12, 21] == 1.0 and int((heat == 1).sum()) == 1
    # Gaussian of sigma 0.5 px = 1 fine cell: the next cell holds exp(-1/2)
    assert float(heat[12, 22]) == pytest.approx(np.exp(-0.5), rel=1e-6)
    assert float(heat[13, 22]) == pytest.approx(np.exp(-1.0), rel=1e-6)
    w = t["weight"][0, 0]
    assert int(w.sum()) == 9 and bool(w[11:14, 20:23].all())
    # offsets from each regression cell's centre to the star
    assert float(t["offset"][0, 0, 12, 21]) == pytest.approx(10.3 - 10.25, abs=1e-6)
    assert float(t["offset"][0, 1, 12, 21]) == pytest.approx(5.9 - 5.75, abs=1e-6)
    assert float(t["offset"][0, 0, 11, 20]) == pytest.approx(10.3 - 9.75, abs=1e-6)
    assert float(t["mag"][0, 0, 13, 22]) == -1.5
    assert t["n_pos"] == 1


def test_nearest_star_owns_shared_regression_cells():
    xy = torch.tensor([[[10.0, 10.0], [10.9, 10.0]]])
    t = encode_targets(xy, torch.tensor([[0.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool), (20, 20), 2, 0.5)
    # cells 20..22 (x centres 9.75, 10.25, 10.75) around star A (cell 21) and 22..24 around B (cell 22)
    mag = t["mag"][0, 0, 21]
    assert float(mag[20]) == 0.0 and float(mag[21]) == 0.0  # nearer to A
    assert float(mag[22]) == 1.0 and float(mag[23]) == 1.0  # nearer to B (10.75 is 0.15 from B)


def test_decode_perfect_targets_round_trip():
    rng = np.random.default_rng(1)
    n = 40
    xy = torch.tensor(rng.uniform(2, 60, (1, n, 2)), dtype=torch.float32)
    # keep them well separated for an exact round trip
    keep = np.ones(n, bool)
    d = np.hypot(*(xy[0, :, None, :] - xy[0, None, :, :]).permute(2, 0, 1).numpy())
    np.fill_diagonal(d, 99)
    for i in range(n):
        if keep[i]:
            keep[(d[i] < 2.0) & (np.arange(n) > i)] = False
    xy = xy[:, torch.from_numpy(keep)]
    mags = torch.tensor(rng.uniform(-3, 0.5, (1, xy.shape[1])), dtype=torch.float32)
    use = torch.ones(1, xy.shape[1], dtype=torch.bool)
    t = encode_targets(xy, mags, use, (64, 64), 2, 0.5)
    cat = decode(_perfect_outputs(t), 2, threshold=0.5)[0]
    assert len(cat["x"]) == xy.shape[1]
    di, ti, dist = match_catalogs(np.c_[cat["x"], cat["y"]], xy[0].numpy(), 0.01)
    assert len(di) == xy.shape[1] and dist.max() < 1e-5
    np.testing.assert_allclose(cat["magrel"][di], mags[0].numpy()[ti], atol=1e-6)
    np.testing.assert_allclose(cat["mag_sigma"], 0.01, rtol=1e-5)


def test_merge_duplicates_is_greedy_by_score():
    x = np.array([0.0, 0.2, 0.4, 5.0])
    y = np.zeros(4)
    s = np.array([0.9, 0.5, 0.8, 0.1])
    # 0 suppresses 1 (0.2 away); 2 is 0.4 from 0 (kept) and was only close to the removed 1
    assert merge_duplicates(x, y, s, 0.25).tolist() == [0, 2, 3]


@pytest.mark.parametrize("upsample,ceiling", [(1, 0.990), (2, 0.997)])
def test_decoder_ceiling_dense_field(upsample, ceiling):
    """Perfect truth-rendered targets at the paper's density (0.025 stars/px to i = 26), decoded and matched
    within 0.1 px: the fraction of i < 25 stars recovered is the decoder's ceiling."""
    cfg = FieldSimConfig(size=384, seed=3)
    cat = draw_catalogue(cfg, np.random.default_rng([cfg.seed, 0]))
    x, y, m = np.asarray(cat["x"]), np.asarray(cat["y"]), np.asarray(cat["mag_input"])
    inside = (x >= -0.5) & (x < 383.5) & (y >= -0.5) & (y < 383.5)
    x, y, m = x[inside], y[inside], m[inside]
    tgt = m < 25.0
    flux = 300 * 10 ** (-0.4 * (m - 25.85))
    t = encode_targets(torch.tensor(np.c_[x, y][None], dtype=torch.float32), flux_to_magrel(torch.tensor(flux[None])),
                       torch.tensor(tgt[None]), (384, 384), upsample, 0.5)
    cat = decode(_perfect_outputs(t), upsample, threshold=0.5)[0]
    di, ti, _ = match_catalogs(np.c_[cat["x"], cat["y"]], np.c_[x, y], 0.1)
    recall = np.isin(np.flatnonzero(tgt), ti).mean()
    fp = len(cat["x"]) - len(di)
    assert recall >= ceiling, recall
    assert fp <= 0.001 * len(cat["x"])  # the 3x3 position refinement may pull a rare close pair apart


def test_star_weights_go_to_the_owned_regression_cells():
    xy = torch.tensor([[[4.0, 4.0], [12.0, 12.0]]])
    t = encode_targets(xy, torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), (16, 16), 2, 0.5,
                       star_weight=torch.tensor([[3.0, 1.0]]))
    w = t["weight"][0, 0]
    assert float(w.sum()) == 9 * 3.0 + 9 * 1.0 and float(w[int(2 * 4.5), int(2 * 4.5)]) == 3.0
