"""Tiling large frames with overlaps, and stitching detections without seam duplicates.

A detection is kept by exactly one tile: the tile whose *core* (the tile minus half the overlap on
each interior side) contains its position. Cores partition the frame, so no seam deduplication by
distance is needed and no detection near a seam is lost, provided the overlap exceeds twice the
distance over which a detector's output depends on pixels (PSF and deblending footprints).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np
from astropy.table import Table, vstack


@dataclasses.dataclass(frozen=True)
class Tile:
    y0: int
    y1: int
    x0: int
    x1: int  # the tile, with overlap: data[y0:y1, x0:x1]
    cy0: float
    cy1: float
    cx0: float
    cx1: float  # its core in frame pixel coordinates, half-open [c0, c1)

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def in_core(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x >= self.cx0) & (x < self.cx1) & (y >= self.cy0) & (y < self.cy1)


def _axis_tiles(n: int, tile: int, overlap: int) -> list[tuple[int, int, float, float]]:
    if tile >= n:
        return [(0, n, -np.inf, np.inf)]
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"tile ({tile}) must exceed overlap ({overlap})")
    starts = list(range(0, n - tile, step)) + [n - tile]
    starts = sorted(set(starts))
    out = []
    for i, s in enumerate(starts):
        e = s + tile
        # Core boundaries halfway through each overlap; pixel centres at integers, so -0.5 edges.
        c0 = -np.inf if i == 0 else (s + starts[i - 1] + tile) / 2.0 - 0.5
        c1 = np.inf if i == len(starts) - 1 else (e + starts[i + 1]) / 2.0 - 0.5
        out.append((s, e, c0, c1))
    return out


def iter_tiles(shape: tuple[int, int], tile: int = 1024, overlap: int = 64) -> Iterator[Tile]:
    ny, nx = shape
    for y0, y1, cy0, cy1 in _axis_tiles(ny, tile, overlap):
        for x0, x1, cx0, cx1 in _axis_tiles(nx, tile, overlap):
            yield Tile(y0, y1, x0, x1, cy0, cy1, cx0, cx1)


def detect_tiled(
    shape: tuple[int, int],
    fn: Callable[[Tile], Table],
    tile: int = 1024,
    overlap: int = 64,
) -> Table:
    """Run ``fn`` on each tile (it returns detections in *frame* coordinates) and keep core detections."""
    parts = []
    for t in iter_tiles(shape, tile, overlap):
        cat = fn(t)
        if cat is None or len(cat) == 0:
            continue
        keep = t.in_core(np.asarray(cat["x"], float), np.asarray(cat["y"], float))
        parts.append(cat[keep])
    if not parts:
        return Table()
    return vstack(parts, metadata_conflicts="silent")
