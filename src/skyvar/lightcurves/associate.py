"""From per-frame catalogues to light curves: cross-match every measurement to a source list.

Frames are taken in time order. A source is anchored at the position of its *first* detection (as
the WFST minute-cadence paper does, §2: with first-detection anchors a 1″ radius leaves ≈ 0.01 % of
measurements unmatched); later detections within ``radius`` of an anchor join that source, the rest
start new sources. Matching is one-to-one per frame: when two detections claim one source the closer
wins and the other tries its next candidate, then becomes a new source. Epochs where a source was
not detected stay missing: nothing is interpolated or invented.

Positions: on the sky (``ra, dec`` in degrees, chord distance on the unit sphere) with ``radius_arcsec``
(default 1″); catalogues without sky coordinates (NaN ``ra/dec``) are matched in pixels (frames
assumed registered) with ``radius_pix``, or ``radius_arcsec / pixel_scale``; without either the
radius falls back to 1 px with a warning.

Scale: KD-trees (scipy ``cKDTree``, multi-threaded queries) on the anchors with new anchors kept in a
small second tree until it is worth a rebuild, vectorised assignment, catalogues parsed in a
background thread, rows streamed into the partitioned store (:class:`~skyvar.lightcurves.store.StoreWriter`).

Catalogues are Parquet (as the field pipeline passes them), ECSV (as ``pipeline=detect`` writes them
for users) or FITS tables with the columns ``x y ra dec flux flux_err mag mag_err flags frame_id
detector`` and the table meta ``mjd``, ``frame_id``, ``filter`` (:mod:`skyvar.io.catalog`). A catalogue that cannot be read or lacks ``mjd`` is reported and skipped.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from skyvar.lightcurves.store import StoreWriter
from skyvar.utils.log import get_logger

log = get_logger(__name__)

CATALOG_SUFFIXES = (".ecsv", ".fits", ".fit", ".fits.gz", ".parquet")
_NEEDED = ("x", "y", "ra", "dec", "mag", "mag_err", "flags")


class CatalogError(ValueError):
    """A catalogue that cannot be used; the message names the file and the reason."""


@dataclasses.dataclass
class CatalogFrame:
    path: Path
    frame_id: str
    mjd: float
    band: str
    x: np.ndarray
    y: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    flags: np.ndarray
    pixel_scale: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.mag)

    @property
    def has_sky(self) -> bool:
        return bool(len(self.ra)) and bool(np.isfinite(self.ra).any() and np.isfinite(self.dec).any())


# ------------------------------------------------------------------------------------- reading
def _parse_meta(header_lines: list[str], colnames_line: str) -> dict:
    from astropy.table import Table

    # The ECSV header (YAML) with zero data rows parses in milliseconds; the data go through pandas.
    t = Table.read("".join(header_lines) + colnames_line, format="ascii.ecsv")
    return dict(t.meta)


def _read_ecsv(path: Path) -> tuple[pd.DataFrame, dict, list[str]]:
    warnings: list[str] = []
    header: list[str] = []
    colnames_line = ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                header.append(line)
            else:
                colnames_line = line
                break
    if not header or "%ECSV" not in header[0]:
        raise CatalogError(f"{path}: not an ECSV file (no '# %ECSV' header)")
    if not colnames_line.strip():
        raise CatalogError(f"{path}: ECSV header without a column-name line (truncated?)")
    meta = _parse_meta(header, colnames_line)
    names = colnames_line.split()
    use = [c for c in _NEEDED if c in names]
    df = pd.read_csv(path, sep=" ", skiprows=len(header), usecols=use, quotechar='"',
                     na_values=["", "nan", "NaN", "--"], keep_default_na=True)
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n" and len(df):
                # A file cut mid-row: its last row may hold a clipped number; drop it rather than trust it.
                df = df.iloc[:-1]
                warnings.append("file does not end with a newline (truncated?): last row dropped")
    return df, meta, warnings


def read_catalog(path: str | os.PathLike) -> CatalogFrame:
    """One per-frame catalogue (ECSV fast path, FITS/Parquet via astropy) as arrays plus meta."""
    path = Path(path)
    name = path.name.lower()
    warnings: list[str] = []
    try:
        if name.endswith(".ecsv"):
            try:
                df, meta, warnings = _read_ecsv(path)
            except CatalogError:
                raise
            except Exception as e:  # odd but valid ECSV (quoted multi-dim columns …): astropy reads it
                log.debug("fast ECSV read failed for %s (%s); using astropy", path, e)
                df, meta = _read_astropy(path)
        elif name.endswith(".parquet"):
            df, meta = _read_parquet(path)
        else:
            df, meta = _read_astropy(path)
    except CatalogError:
        raise
    except FileNotFoundError:
        raise
    except Exception as e:
        raise CatalogError(f"{path}: cannot read catalogue ({type(e).__name__}: {e})") from e

    meta = {str(k).lower(): v for k, v in meta.items()}
    mjd = meta.get("mjd", meta.get("mjd-obs", meta.get("mjd_obs")))
    try:
        mjd = float(mjd)
    except (TypeError, ValueError):
        mjd = float("nan")
    if not np.isfinite(mjd):
        raise CatalogError(f"{path}: no usable 'mjd' in the table meta (got {meta.get('mjd')!r}); "
                           "cannot place the frame in time")
    missing = [c for c in ("mag",) if c not in df.columns]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {missing}")
    if not ({"ra", "dec"} <= set(df.columns) or {"x", "y"} <= set(df.columns)):
        raise CatalogError(f"{path}: needs ra/dec or x/y positions; has {list(df.columns)}")
    band = meta.get("filter", meta.get("band", ""))
    if band in (None, ""):
        warnings.append("no 'filter' in the table meta: band set to ''")
        band = ""
    frame_id = str(meta.get("frame_id") or path.name.split(".")[0])
    n = len(df)

    def col(c, dtype=np.float64, fill=np.nan):
        if c in df.columns:
            return pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=dtype, na_value=fill) if dtype is np.float64 \
                else pd.to_numeric(df[c], errors="coerce").fillna(0).to_numpy().astype(dtype)
        return np.full(n, fill, dtype=dtype)

    ps = meta.get("pixel_scale")
    return CatalogFrame(
        path=path, frame_id=frame_id, mjd=mjd, band=str(band).strip(),
        x=col("x"), y=col("y"), ra=col("ra"), dec=col("dec"), mag=col("mag"), mag_err=col("mag_err"),
        flags=col("flags", np.int32, 0), pixel_scale=float(ps) if ps not in (None, "") else None,
        warnings=warnings,
    )


def _read_parquet(path: Path) -> tuple[pd.DataFrame, dict]:
    """Only the needed columns, and the meta from the schema (what the field pipeline passes on)."""
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    df = pq.read_table(path, columns=[c for c in _NEEDED if c in names]).to_pandas()
    return df, _parquet_meta(path)


def _read_astropy(path: Path) -> tuple[pd.DataFrame, dict]:
    from astropy.table import Table

    t = Table.read(path)
    cols = [c for c in _NEEDED if c in t.colnames]
    df = pd.DataFrame({c: np.asarray(t[c].filled(np.nan) if hasattr(t[c], "filled") else t[c]) for c in cols})
    return df, dict(t.meta)


def catalog_mjd(path: Path) -> float:
    """The frame time without reading the rows (ECSV header or FITS/Parquet metadata); NaN if absent."""
    try:
        name = path.name.lower()
        if name.endswith(".ecsv"):
            header, colnames = [], ""
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("#"):
                        header.append(line)
                    else:
                        colnames = line
                        break
            meta = _parse_meta(header, colnames)
        elif name.endswith(".parquet"):
            meta = _parquet_meta(path)
        else:
            from astropy.io import fits

            meta = dict(fits.getheader(path, 1))
        meta = {str(k).lower(): v for k, v in meta.items()}
        return float(meta.get("mjd", meta.get("mjd-obs", np.nan)))
    except Exception:
        return float("nan")


def _parquet_meta(path: Path) -> dict:
    from skyvar.io.catalog import catalog_meta

    return catalog_meta(path) or {}


# ------------------------------------------------------------------------------------ matching
def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    cd = np.cos(dec)
    return np.column_stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)])


class Associator:
    """Incremental first-detection-anchored cross-matcher. Feed frames in time order to :meth:`add`."""

    def __init__(self, radius_arcsec: float = 1.0, radius_pix: float | None = None,
                 pixel_scale: float | None = None, n_candidates: int = 3, workers: int = -1,
                 rebuild_fraction: float = 0.05):
        self.radius_arcsec = float(radius_arcsec)
        self.radius_pix = radius_pix
        self.pixel_scale = pixel_scale
        self.k = max(1, int(n_candidates))
        self.workers = workers
        self.rebuild_fraction = rebuild_fraction
        self.mode: str | None = None  # "sky" | "pixel", fixed by the first frame with detections
        self._pts = np.zeros((0, 3))
        self._n_main = 0
        self._main: cKDTree | None = None
        self._pend: cKDTree | None = None
        self._pend_n = -1
        # Per-source bookkeeping (anchors = first detection).
        self.anchor_ra: list[np.ndarray] = []
        self.anchor_dec: list[np.ndarray] = []
        self.anchor_x: list[np.ndarray] = []
        self.anchor_y: list[np.ndarray] = []
        self.first_mjd: list[np.ndarray] = []
        self.first_frame: list[np.ndarray] = []
        self.n_sources = 0
        self._radius: float | None = None

    # -- geometry
    def _positions(self, cat: CatalogFrame) -> tuple[np.ndarray, np.ndarray]:
        """(points, usable mask) of a catalogue in the associator's metric space."""
        if self.mode is None:
            self.mode = "sky" if cat.has_sky else "pixel"
            if self.mode == "sky":
                self._radius = 2 * np.sin(np.radians(self.radius_arcsec / 3600.0) / 2)  # chord on the unit sphere
            else:
                if self.radius_pix is not None:
                    r = float(self.radius_pix)
                elif (self.pixel_scale or cat.pixel_scale):
                    r = self.radius_arcsec / float(self.pixel_scale or cat.pixel_scale)
                else:
                    r = 1.0
                    log.warning("catalogues have no ra/dec and no pixel scale is known: matching in pixels "
                                "with a 1 px radius (set radius_pix or pixel_scale)")
                self._radius = r
                log.info("matching in pixel coordinates (frames assumed registered), radius %.3g px", r)
            self._pts = np.zeros((0, 3 if self.mode == "sky" else 2))
        if self.mode == "sky":
            if not cat.has_sky:
                raise CatalogError(f"{cat.path}: no ra/dec while earlier catalogues were matched on the sky")
            ok = np.isfinite(cat.ra) & np.isfinite(cat.dec)
            pts = np.zeros((len(cat), 3))
            pts[ok] = _unit_vectors(cat.ra[ok], cat.dec[ok])
        else:
            ok = np.isfinite(cat.x) & np.isfinite(cat.y)
            pts = np.column_stack([np.where(ok, cat.x, 0.0), np.where(ok, cat.y, 0.0)])
        return pts, ok

    @property
    def radius(self) -> float | None:
        return self._radius

    def fix_geometry(self, mode: str, radius: float) -> None:
        """Set the metric space and radius (as the first frame would), so that every tile of a tiled
        association matches in the space the whole field was matched in."""
        self.mode = mode
        self._radius = float(radius)
        self._pts = np.zeros((0, 3 if mode == "sky" else 2))

    def _candidates(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(dist, idx) of up to k anchors within the radius of each point, nearest first (inf/-1 = none)."""
        n = len(pts)
        dists, idxs = [], []
        r = self._radius
        if self._main is not None and self._n_main:
            d, i = self._main.query(pts, k=self.k, distance_upper_bound=r, workers=self.workers)
            d, i = d.reshape(n, -1), i.reshape(n, -1)
            dists.append(d)
            idxs.append(np.where(np.isfinite(d), i, -1))
        n_pend = self.n_sources - self._n_main
        if n_pend:
            if self._pend is None or self._pend_n != n_pend:
                self._pend = cKDTree(self._pts[self._n_main:self.n_sources])
                self._pend_n = n_pend
            d, i = self._pend.query(pts, k=self.k, distance_upper_bound=r, workers=self.workers)
            d, i = d.reshape(n, -1), i.reshape(n, -1)
            dists.append(d)
            idxs.append(np.where(np.isfinite(d), i + self._n_main, -1))
        if not dists:
            return np.full((n, 0), np.inf), np.full((n, 0), -1)
        d = np.concatenate(dists, 1)
        i = np.concatenate(idxs, 1)
        # the k nearest of both trees, nearest first, equal distances by source id (creation order):
        # neither the list nor its order may depend on which anchors happen to sit in the main or the
        # pending tree, so a tile of the field sees the candidates the whole field sees (tiled association)
        o = np.lexsort((np.where(i >= 0, i, np.iinfo(np.int64).max), d), axis=1)[:, : self.k]
        return np.take_along_axis(d, o, 1), np.take_along_axis(i, o, 1)

    def _add_sources(self, pts: np.ndarray, cat: CatalogFrame, sel: np.ndarray) -> np.ndarray:
        k = int(sel.sum())
        ids = np.arange(self.n_sources, self.n_sources + k, dtype=np.int64)
        if k:
            need = self.n_sources + k
            if need > len(self._pts):
                grow = np.zeros((max(need, 2 * len(self._pts), 1024), self._pts.shape[1]))
                grow[: self.n_sources] = self._pts[: self.n_sources]
                self._pts = grow
            self._pts[self.n_sources:need] = pts[sel]
            self.anchor_ra.append(cat.ra[sel])
            self.anchor_dec.append(cat.dec[sel])
            self.anchor_x.append(cat.x[sel])
            self.anchor_y.append(cat.y[sel])
            self.first_mjd.append(np.full(k, cat.mjd))
            self.first_frame.append(np.full(k, cat.frame_id, dtype=object))
            self.n_sources = need
            if self.n_sources - self._n_main > max(1000, self.rebuild_fraction * self._n_main):
                self._main = cKDTree(self._pts[: self.n_sources])
                self._n_main = self.n_sources
                self._pend, self._pend_n = None, -1
        return ids

    def add(self, cat: CatalogFrame) -> np.ndarray:
        """Source id of every detection of ``cat`` (-1 for detections without a usable position or mag)."""
        out = np.full(len(cat), -1, dtype=np.int64)
        if not len(cat):
            return out
        pts, ok = self._positions(cat)
        ok &= np.isfinite(cat.mag)
        det = np.flatnonzero(ok)
        if not len(det):
            return out
        dist, cand = self._candidates(pts[det])
        assigned = np.full(len(det), -1, dtype=np.int64)
        taken = np.zeros(self.n_sources, dtype=bool)
        ptr = np.zeros(len(det), dtype=np.int64)
        for _ in range(cand.shape[1]):
            # Each unassigned detection proposes its nearest free candidate; per source the closest wins.
            todo = np.flatnonzero((assigned < 0) & (ptr < cand.shape[1]))
            if not len(todo):
                break
            c = cand[todo, ptr[todo]]
            d = dist[todo, ptr[todo]]
            has = c >= 0
            free = np.zeros(len(todo), dtype=bool)
            free[has] = ~taken[c[has]]
            prop = todo[free]
            if not len(prop):
                ptr[todo] += 1
                continue
            pc, pd_ = c[free], d[free]
            order = np.lexsort((pd_, pc))
            first = np.ones(len(order), dtype=bool)
            first[1:] = pc[order][1:] != pc[order][:-1]
            win = order[first]
            assigned[prop[win]] = pc[win]
            taken[pc[win]] = True
            losers = np.setdiff1d(todo, prop[win], assume_unique=True)
            ptr[losers] += 1
        new = assigned < 0
        if new.any():
            sel = np.zeros(len(cat), dtype=bool)
            sel[det[new]] = True
            assigned[new] = self._add_sources(pts, cat, sel)
        out[det] = assigned
        return out

    def sources_table(self) -> pd.DataFrame:
        cat = lambda parts, dtype=float: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
        return pd.DataFrame({
            "source_id": np.arange(self.n_sources, dtype=np.int64),
            "ra": cat(self.anchor_ra), "dec": cat(self.anchor_dec),
            "x": cat(self.anchor_x), "y": cat(self.anchor_y),
            "first_mjd": cat(self.first_mjd), "first_frame": cat(self.first_frame, object).astype(str),
        })


# --------------------------------------------------------------------------------------- driver
@dataclasses.dataclass
class AssociationResult:
    store: Path
    sources: pd.DataFrame
    n_frames: int
    n_measurements: int
    failures: list[dict]
    unmatched_detections: int
    radius: float
    mode: str
    tiles: dict | None = None  # tiled association: n_tiles, tile_px, margin_px, tile_conflicts, task_stats


def _time_order(files: list[Path]) -> list[Path]:
    times = []
    for f in files:
        t = catalog_mjd(f)
        times.append(t if np.isfinite(t) else np.inf)  # unreadable ones fail properly when read
    order = np.argsort(np.asarray(times), kind="stable")
    return [files[i] for i in order]


def associate_catalogs(files: list[Path], store_path: str | os.PathLike, radius_arcsec: float = 1.0,
                       radius_pix: float | None = None, pixel_scale: float | None = None,
                       n_partitions: int = 16, n_candidates: int = 3, read_threads: int = 2,
                       flush_rows: int = 5_000_000, progress: bool = False, tile_px: float | None = None,
                       margin_px: float | None = None, client=None) -> AssociationResult:
    """Associate catalogue files into a partitioned light-curve store at ``store_path``.

    Frames are ordered by their meta ``mjd`` (read from headers first); a file that cannot be read or
    placed in time is reported in ``failures`` and skipped.

    ``tile_px`` (pixels): associate tile by tile (:func:`associate_tiled`; one Dask task per tile with
    ``client``) when the field is larger than one tile; ``None``: the whole field in one pass.
    """
    files = _time_order([Path(f) for f in files])
    if tile_px is not None:
        res = associate_tiled(files, store_path, tile_px=tile_px, margin_px=margin_px, radius_arcsec=radius_arcsec,
                              radius_pix=radius_pix, pixel_scale=pixel_scale, n_partitions=n_partitions,
                              n_candidates=n_candidates, flush_rows=flush_rows, progress=progress, client=client)
        if res is not None:
            return res
    failures: list[dict] = []

    assoc = Associator(radius_arcsec=radius_arcsec, radius_pix=radius_pix, pixel_scale=pixel_scale,
                       n_candidates=n_candidates)
    n_meas = 0
    unmatched = 0
    n_ok = 0
    last_mjd = -np.inf

    def load(f):
        try:
            return read_catalog(f), None
        except (CatalogError, OSError) as e:
            return None, e

    it = files
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(files, desc="associate", unit="frame")
    with StoreWriter(store_path, n_partitions=n_partitions, flush_rows=flush_rows) as writer, \
            ThreadPoolExecutor(max_workers=max(1, read_threads)) as pool:
        # Parsing runs ahead in threads (pandas releases the GIL) while the main thread matches.
        futures = [pool.submit(load, f) for f in files[: 2 * max(1, read_threads)]]
        nxt = len(futures)
        for f in it:
            cat, err = futures.pop(0).result()
            if nxt < len(files):
                futures.append(pool.submit(load, files[nxt]))
                nxt += 1
            if err is not None:
                log.error("skipping %s: %s", f, err)
                failures.append({"file": str(f), "stage": "read", "error": str(err)})
                continue
            for w in cat.warnings:
                log.warning("%s: %s", f, w)
            if cat.mjd < last_mjd:  # only when header and data disagree; order is by header mjd
                log.warning("%s: mjd %.6f earlier than the previous frame", f, cat.mjd)
            last_mjd = max(last_mjd, cat.mjd)
            try:
                sid = assoc.add(cat)
            except CatalogError as e:
                log.error("skipping %s: %s", f, e)
                failures.append({"file": str(f), "stage": "match", "error": str(e)})
                continue
            keep = sid >= 0
            unmatched += int((~keep).sum())
            k = int(keep.sum())
            n_ok += 1
            if not k:
                continue
            writer.append(pd.DataFrame({
                "source_id": sid[keep], "band": np.full(k, cat.band, dtype=object),
                "time": np.full(k, cat.mjd), "mag": cat.mag[keep], "mag_err": cat.mag_err[keep],
                "flag": cat.flags[keep].astype(np.int32),
            }))
            n_meas += k
    srcs = assoc.sources_table()
    return AssociationResult(store=Path(store_path), sources=srcs, n_frames=n_ok, n_measurements=n_meas,
                             failures=failures, unmatched_detections=unmatched,
                             radius=float(assoc.radius or 0.0), mode=assoc.mode or "none")



# ---------------------------------------------------------------------------------- tiled association
# A field too large for one process is cut into square tiles of the matching plane (pixels, or arcsec on
# the tangent plane for sky matching). Each tile is associated on its own, over all frames in time
# order, with the detections of its core *and a margin* around it; a source belongs to the tile whose
# core holds its anchor (its first detection, which never moves), and only owned sources are written.
# Cores partition the plane, so every source has exactly one owner (as in tiled detection,
# skyvar.detect.tiling). A detection matched to a source lies within one radius of its anchor, so the
# owner tile sees it; the margin (many radii) makes the owner see the same competing detections and
# anchors as the untiled association, so the assignments are the same. Source ids are then given in
# creation order (frame, row) over all tiles: the ids of the untiled run. Whether every detection was
# written exactly once is checked per frame and reported (``tile_conflicts``: 0 when the margin
# sufficed). Memory per tile task: its sources and detections; no process holds the field.
_TILE_OFF = 1 << 20


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """Square tiles of side ``size`` with overlap ``margin`` (plane units: px, or arcsec in sky mode).

    Tile ``(i, j)`` has the core ``[o + i*size, o + (i+1)*size)`` along each axis (``o`` the lattice
    origin: the first pixel's edge, or the tangent point at the centre of tile (0, 0) on the sky)."""

    mode: str  # "pixel" | "sky"
    size: float
    margin: float
    ra0: float = 0.0
    dec0: float = 0.0

    @property
    def origin(self) -> float:
        return -0.5 if self.mode == "pixel" else -0.5 * self.size

    def plane(self, x, y, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "pixel":
            return np.asarray(x, float), np.asarray(y, float)
        # gnomonic projection about (ra0, dec0), arcsec
        ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
        a0, d0 = np.radians(self.ra0), np.radians(self.dec0)
        cosc = np.sin(d0) * np.sin(dec) + np.cos(d0) * np.cos(dec) * np.cos(ra - a0)
        u = np.cos(dec) * np.sin(ra - a0) / cosc
        v = (np.cos(d0) * np.sin(dec) - np.sin(d0) * np.cos(dec) * np.cos(ra - a0)) / cosc
        k = np.degrees(1.0) * 3600.0
        return u * k, v * k

    def cell(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The packed key of the tile whose core holds each point."""
        i = np.floor((np.asarray(u) - self.origin) / self.size).astype(np.int64)
        j = np.floor((np.asarray(v) - self.origin) / self.size).astype(np.int64)
        return pack_tile(i, j)

    def memberships(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point index, tile key) for every tile whose core-plus-margin holds a point (1 to 4 each)."""
        fu = (np.asarray(u) - self.origin) / self.size
        fv = (np.asarray(v) - self.origin) / self.size
        i, j = np.floor(fu).astype(np.int64), np.floor(fv).astype(np.int64)
        m = self.margin / self.size
        ru, rv = fu - i, fv - j
        idx, keys = [], []
        n = np.arange(len(fu))
        for di, si in ((0, None), (-1, ru < m), (1, ru >= 1 - m)):
            for dj, sj in ((0, None), (-1, rv < m), (1, rv >= 1 - m)):
                sel = np.ones(len(fu), bool)
                if si is not None:
                    sel &= si
                if sj is not None:
                    sel &= sj
                idx.append(n[sel])
                keys.append(pack_tile(i[sel] + di, j[sel] + dj))
        return np.concatenate(idx), np.concatenate(keys)


def pack_tile(i, j) -> np.ndarray:
    return (np.asarray(i, np.int64) + _TILE_OFF) * (2 * _TILE_OFF) + (np.asarray(j, np.int64) + _TILE_OFF)


def unpack_tile(key: int) -> tuple[int, int]:
    key = int(key)
    return key // (2 * _TILE_OFF) - _TILE_OFF, key % (2 * _TILE_OFF) - _TILE_OFF


def tile_name(key: int) -> str:
    i, j = unpack_tile(key)
    return f"t{i}_{j}"


_SHARD_COLS = ("x", "y", "ra", "dec", "mag", "mag_err")


def shard_catalog(item: tuple[int, str], grid: TileGrid, shard_dir: str, stamp: str) -> dict:
    """Task: cut one catalogue into its tiles (with margins) -> ``shard_dir/<frame_idx>.parquet``, one
    row group per tile (its rows in catalogue order). Returns the frame's tiles and row counts, or the
    failure (``stage`` read|match) that the untiled association would report."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from skyvar.pipeline.distributed import task_stats
    from skyvar.utils.atomic import atomic_path

    c0, w0 = time.thread_time(), time.perf_counter()
    fidx, path = item
    out = Path(shard_dir) / f"{fidx:06d}.parquet"
    rec = {"frame_idx": fidx, "file": str(path), "shard": str(out)}
    if out.exists():
        try:
            md = pq.read_schema(out).metadata or {}
            if md.get(b"skyvar_shard_stamp", b"").decode() == stamp:
                return {**rec, **json.loads(md[b"skyvar_shard_info"].decode()), "stats": task_stats(c0, w0)}
        except Exception:
            pass
    try:
        cat = read_catalog(path)
    except (CatalogError, OSError) as e:
        return {**rec, "status": "failed", "stage": "read", "error": str(e), "stats": task_stats(c0, w0)}
    if grid.mode == "sky" and len(cat) and not cat.has_sky:
        err = f"{cat.path}: no ra/dec while earlier catalogues were matched on the sky"
        return {**rec, "status": "failed", "stage": "match", "error": err, "stats": task_stats(c0, w0)}
    if grid.mode == "sky":
        ok = np.isfinite(cat.ra) & np.isfinite(cat.dec)
    else:
        ok = np.isfinite(cat.x) & np.isfinite(cat.y)
    ok &= np.isfinite(cat.mag)
    rows = np.flatnonzero(ok)
    u, v = grid.plane(cat.x[rows], cat.y[rows], cat.ra[rows], cat.dec[rows])
    pi, keys = grid.memberships(u, v)
    order = np.lexsort((rows[pi], keys))
    pi, keys = pi[order], keys[order]
    r = rows[pi]
    table = pa.table({"tile": keys, "row": r.astype(np.int32), **{c: getattr(cat, c)[r] for c in _SHARD_COLS},
                      "flags": cat.flags[r].astype(np.int32)})
    ukeys, starts, counts = np.unique(keys, return_index=True, return_counts=True)
    core = grid.cell(u, v)
    n_core = dict(zip(*np.unique(core, return_counts=True))) if len(core) else {}
    # per tile: [row group, rows, rows in its core] (a tile with no core rows anywhere owns nothing)
    info = {"status": "done", "frame_id": cat.frame_id, "mjd": cat.mjd, "band": cat.band,
            "n_rows": len(cat), "n_unusable": int(len(cat) - len(rows)), "warnings": list(cat.warnings),
            "tiles": {str(int(k)): [g, int(c), int(n_core.get(k, 0))]
                      for g, (k, c) in enumerate(zip(ukeys, counts))}}
    md = {b"skyvar_shard_stamp": stamp.encode(), b"skyvar_shard_info": json.dumps(info).encode()}
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, table.schema.with_metadata(md), compression="zstd") as w:
            for st, c in zip(starts, counts):  # one row group per tile: a tile task reads only its own
                w.write_table(table.slice(int(st), int(c)), row_group_size=int(c) + 1)
    return {**rec, **info, "stats": task_stats(c0, w0)}


def associate_tile(key: int, frames: list[tuple[int, str, int]], grid: TileGrid, frame_info: dict,
                   n_candidates: int, radius: float, work_dir: str, flush_rows: int, stamp: str) -> dict:
    """Task: associate one tile over its frames ``[(frame_idx, shard path, row group)]`` in time order.

    Writes the measurements of the sources it owns (local ids) as Parquet chunks and their anchors to
    ``work_dir/<tile>/``; returns the files and the number of measurements written per frame."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from skyvar.pipeline.distributed import task_stats
    from skyvar.utils.atomic import atomic_path, write_json_atomic

    c0, w0 = time.thread_time(), time.perf_counter()
    d = Path(work_dir) / tile_name(key)
    done = d / "done.json"
    if done.exists():
        try:
            rec = json.loads(done.read_text())
            if rec.get("stamp") == stamp:
                return {**rec, "stats": task_stats(c0, w0)}
        except ValueError:
            pass
    d.mkdir(parents=True, exist_ok=True)
    assoc = Associator(n_candidates=n_candidates, workers=1)
    assoc.fix_geometry(grid.mode, radius)
    owned = np.zeros(0, dtype=bool)
    born_frame: list[np.ndarray] = []
    born_row: list[np.ndarray] = []
    born_key = np.zeros(0, np.int64)  # local id -> (frame, row) of the anchor, packed
    band_det: list[np.ndarray] = []
    band_anchor: list[np.ndarray] = []
    band_kind: list[np.ndarray] = []
    ti, tj = unpack_tile(key)
    mrel = grid.margin / grid.size
    buf: list[pd.DataFrame] = []
    n_buf = 0
    chunks: list[str] = []
    per_frame: dict[str, int] = {}

    def flush():
        nonlocal buf, n_buf
        if not buf:
            return
        p = d / f"chunk-{len(chunks):05d}.parquet"
        with atomic_path(p) as tmp:
            pq.write_table(pa.Table.from_pandas(pd.concat(buf, ignore_index=True), preserve_index=False), tmp)
        chunks.append(str(p))
        buf, n_buf = [], 0

    for fidx, shard, group in frames:
        t = pq.ParquetFile(shard).read_row_group(group).to_pandas()
        info = frame_info[str(fidx)]
        cat = CatalogFrame(path=Path(shard), frame_id=info["frame_id"], mjd=float(info["mjd"]), band=info["band"],
                           **{c: t[c].to_numpy(np.float64) for c in _SHARD_COLS}, flags=t["flags"].to_numpy(np.int32))
        n0 = assoc.n_sources
        sid = assoc.add(cat)
        new = sid >= n0
        rows = t["row"].to_numpy(np.int64)
        u, v = grid.plane(cat.x, cat.y, cat.ra, cat.dec)
        if new.any():
            # sources are created in row order, so their local ids follow (frame, row) as global ids do
            owned = np.concatenate([owned, grid.cell(u[new], v[new]) == key])
            born_frame.append(np.full(int(new.sum()), fidx, np.int64))
            born_row.append(rows[new])
            born_key = np.concatenate([born_key, (np.int64(fidx) << 32) | rows[new]])
        # Detections near a border are seen by two tiles. The tile whose core holds one sees all of
        # its surroundings within the margin; the owner of the source it joined writes it. Keep both
        # views (the anchor of the source) so they can be compared (tile_conflicts).
        fu = (u - grid.origin) / grid.size - ti
        fv = (v - grid.origin) / grid.size - tj
        core = (fu >= 0) & (fu < 1) & (fv >= 0) & (fv < 1)
        deep = (fu >= mrel) & (fu < 1 - mrel) & (fv >= mrel) & (fv < 1 - mrel)
        mine_ = (sid >= 0) & owned[np.clip(sid, 0, None)] if len(owned) else np.zeros(len(sid), bool)
        for sel, kind in ((core & ~deep & (sid >= 0), 0), (~core & mine_, 1)):
            if sel.any():
                band_det.append((np.int64(fidx) << 32) | rows[sel])
                band_anchor.append(born_key[sid[sel]])
                band_kind.append(np.full(int(sel.sum()), kind, np.int8))
        mine = (sid >= 0) & owned[np.clip(sid, 0, None)] if len(owned) else np.zeros(len(sid), bool)
        k = int(mine.sum())
        if not k:
            continue
        per_frame[str(fidx)] = k
        buf.append(pd.DataFrame({"local_id": sid[mine], "band": np.full(k, cat.band, dtype=object),
                                 "time": np.full(k, cat.mjd), "mag": cat.mag[mine], "mag_err": cat.mag_err[mine],
                                 "flag": cat.flags[mine].astype(np.int32)}))
        n_buf += k
        if n_buf >= flush_rows:
            flush()
    flush()
    srcs = assoc.sources_table()
    bf = np.concatenate(born_frame) if born_frame else np.zeros(0, np.int64)
    br = np.concatenate(born_row) if born_row else np.zeros(0, np.int64)
    keep = np.flatnonzero(owned)
    srcs = srcs.iloc[keep].rename(columns={"source_id": "local_id"}).reset_index(drop=True)
    srcs["born_frame"], srcs["born_row"], srcs["tile"] = bf[keep], br[keep], np.int64(key)
    sp = d / "sources.parquet"
    with atomic_path(sp) as tmp:
        pq.write_table(pa.Table.from_pandas(srcs, preserve_index=False), tmp)
    bp = d / "band.parquet"
    with atomic_path(bp) as tmp:
        cat_ = (lambda a: np.concatenate(a) if a else np.zeros(0, np.int64))  # noqa: E731
        pq.write_table(pa.table({"det": cat_(band_det), "anchor": cat_(band_anchor),
                                 "kind": np.concatenate(band_kind) if band_kind else np.zeros(0, np.int8)}), tmp)
    rec = {"key": int(key), "chunks": chunks, "sources": str(sp), "band": str(bp), "n_owned": len(srcs),
           "n_tracked": int(assoc.n_sources), "per_frame": per_frame, "stamp": stamp}
    write_json_atomic(done, rec)
    return {**rec, "stats": task_stats(c0, w0)}


def remap_tile(rec: dict, id_map_file: str, store_tmp: str, n_sub: int, neighbour_bands: list[str] = ()) -> dict:
    """Task: the tile's measurements with global source ids -> ``store_tmp/part=<tile>-<k>/``; and the
    border check of the tile's core: its own view of each detection near its border against the view
    of the neighbour that wrote it (``disagree``: detections where the two gave different sources)."""
    import pyarrow.parquet as pq

    from skyvar.lightcurves.store import _arrow_table, partition_of
    from skyvar.pipeline.distributed import task_stats

    c0, w0 = time.thread_time(), time.perf_counter()
    disagree = 0
    if neighbour_bands:
        mine = pq.read_table(rec["band"], filters=[("kind", "=", 0)]).to_pandas()
        for nb in neighbour_bands:
            theirs = pq.read_table(nb, filters=[("kind", "=", 1)]).to_pandas()
            both = mine.merge(theirs, on="det", suffixes=("_core", "_owner"))
            disagree += int((both["anchor_core"] != both["anchor_owner"]).sum())
    ids = np.load(id_map_file)
    n = 0
    for c, chunk in enumerate(rec["chunks"]):
        df = pq.read_table(chunk).to_pandas()
        df.insert(0, "source_id", ids[df.pop("local_id").to_numpy()])
        sub = partition_of(df["source_id"].to_numpy(), n_sub)
        for k in np.unique(sub):
            p = Path(store_tmp) / f"part={tile_name(rec['key'])}-{int(k):03d}"
            p.mkdir(parents=True, exist_ok=True)
            pq.write_table(_arrow_table(df[sub == k]), p / f"chunk-{c:05d}.parquet", compression="zstd")
        n += len(df)
    return {"n": n, "disagree": disagree, "stats": task_stats(c0, w0)}


def _first_catalog(files: list[Path]) -> CatalogFrame | None:
    for f in files:
        try:
            cat = read_catalog(f)
        except (CatalogError, OSError):
            continue
        if len(cat):
            return cat
    return None


def associate_tiled(files: list[Path], store_path: str | os.PathLike, tile_px: float, margin_px: float | None = None,
                    radius_arcsec: float = 1.0, radius_pix: float | None = None, pixel_scale: float | None = None,
                    n_partitions: int = 16, n_candidates: int = 3, flush_rows: int = 5_000_000,
                    progress: bool = False, client=None, work_dir: str | os.PathLike | None = None,
                    force: bool = False, rows_per_partition: int = 2_000_000) -> AssociationResult | None:
    """Tile-by-tile association (see the comment above :class:`TileGrid`) of time-ordered ``files``.

    ``tile_px`` / ``margin_px``: tile side and overlap in pixels (converted with the pixel scale when
    matching on the sky; margin default ``max(16 px, 16 radii)``). Returns None when the first
    catalogue fits in one tile and ``force`` is false: the untiled association is then the same work
    in one pass. Store partitions are ``part=t<i>_<j>-<k>`` (tile, then ``k`` of
    ``max(n_partitions / n_tiles, rows / rows_per_partition)`` hash sub-partitions)."""
    import shutil
    import tempfile

    from skyvar.pipeline.distributed import TaskFailed, run_tasks
    from skyvar.utils.config import stable_hash

    files = [Path(f) for f in files]
    first = _first_catalog(files)
    if first is None:
        return None
    # the geometry the untiled association would fix from the first frame with detections
    probe = Associator(radius_arcsec=radius_arcsec, radius_pix=radius_pix, pixel_scale=pixel_scale)
    probe._positions(first)
    mode, radius = probe.mode, float(probe.radius)
    if mode == "sky":
        scale = pixel_scale or first.pixel_scale
        if not scale:
            raise ValueError("tiled association on the sky needs the pixel scale (pixel_scale=, arcsec/px) to size "
                             "the tiles")
        r_plane = radius_arcsec
        ok = np.isfinite(first.ra) & np.isfinite(first.dec)
        ra0 = float(np.round(np.median(first.ra[ok]), 6))
        dec0 = float(np.round(np.median(first.dec[ok]), 6))
    else:
        scale, r_plane, ra0, dec0 = 1.0, radius, 0.0, 0.0
    margin = float(margin_px) * scale if margin_px is not None else max(16.0 * scale, 16.0 * r_plane)
    grid = TileGrid(mode=mode, size=float(tile_px) * scale, margin=margin, ra0=ra0, dec0=dec0)
    if grid.size <= 2 * grid.margin:
        raise ValueError(f"tile ({tile_px} px) must exceed twice the margin ({margin / scale:g} px)")
    if grid.margin < 2 * r_plane:
        # below that a tile does not even see the detections of its own sources across its border
        raise ValueError(f"margin ({margin / scale:g} px) must be at least two match radii")
    ok = np.isfinite(first.mag) & (np.isfinite(first.ra) & np.isfinite(first.dec) if mode == "sky"
                                   else np.isfinite(first.x) & np.isfinite(first.y))
    u, v = grid.plane(first.x[ok], first.y[ok], first.ra[ok], first.dec[ok])
    if not force and len(np.unique(grid.cell(u, v))) <= 1:
        return None

    store_path = Path(store_path)
    work = Path(work_dir) if work_dir else store_path.parent / f".{store_path.name}.tiles"
    shard_dir = work / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    gkey = stable_hash({"grid": dataclasses.asdict(grid), "radius": radius, "k": n_candidates})
    items, stamps = [], []
    for i, f in enumerate(files):
        try:
            st = f.stat()
            fp = [str(f), st.st_size, st.st_mtime_ns]
        except OSError:
            fp = [str(f), None, None]
        items.append((i, str(f)))
        stamps.append(stable_hash({"grid": gkey, "file": fp, "idx": i}))
    log.info("tiled association: %s matching, tiles of %g px with %g px margins, %d frames", mode, tile_px,
             margin / scale, len(files))
    # 1. shards: one task per frame
    res = run_tasks(_shard_item, list(zip(items, stamps)), grid, str(shard_dir), client=client, desc="associate-shard",
                    progress=progress)
    failures: list[dict] = []
    frame_info: dict[str, dict] = {}
    tiles: dict[int, list] = {}
    core_rows: dict[int, int] = {}
    n_usable = {}
    unusable = 0
    stats = []
    for (fidx, f), r in zip(items, res):
        if isinstance(r, TaskFailed):
            failures.append({"file": f, "stage": "read", "error": r.error})
            continue
        stats.append(r.get("stats", {}))
        if r["status"] != "done":
            log.error("skipping %s: %s", f, r["error"])
            failures.append({"file": f, "stage": r["stage"], "error": r["error"]})
            continue
        for w in r.get("warnings", []):
            log.warning("%s: %s", f, w)
        frame_info[str(fidx)] = {k: r[k] for k in ("frame_id", "mjd", "band")}
        unusable += r["n_unusable"]
        n_usable[str(fidx)] = r["n_rows"] - r["n_unusable"]
        for k, (g, _n, nc) in r["tiles"].items():
            tiles.setdefault(int(k), []).append((fidx, r["shard"], g))
            core_rows[int(k)] = core_rows.get(int(k), 0) + nc
    # 2. association: one task per tile that can own a source (one with a detection in its core)
    keys = sorted(k for k in tiles if core_rows.get(k, 0))
    tstamp = {k: stable_hash({"grid": gkey, "frames": [stamps[fi] for fi, _, _ in tiles[k]],
                              "flush": flush_rows}) for k in keys}
    tile_dir = work / "tiles"
    tres = run_tasks(_tile_item, [(k, tiles[k], tstamp[k]) for k in keys], grid, frame_info, n_candidates, radius,
                     str(tile_dir), flush_rows, client=client, desc="associate-tile", progress=progress)
    bad = [(k, r) for k, r in zip(keys, tres) if isinstance(r, TaskFailed)]
    if bad:
        # a tile that cannot be associated loses its sources: fail the stage rather than write a field
        # with a hole in it (a rerun resumes the tiles that finished)
        k, r = bad[0]
        raise RuntimeError(f"tiled association: tile {tile_name(k)} failed ({len(bad)} tiles in all): {r.error}")
    stats += [r.get("stats", {}) for r in tres]
    # 3. global ids in creation order (frame, row): the untiled association's ids
    src = pd.concat([pq_read(r["sources"]) for r in tres], ignore_index=True)
    order = np.lexsort((src["born_row"].to_numpy(), src["born_frame"].to_numpy()))
    gid = np.empty(len(src), np.int64)
    gid[order] = np.arange(len(src), dtype=np.int64)
    dup = pd.DataFrame({"f": src["born_frame"], "r": src["born_row"]}).duplicated().sum()
    written = {}
    for r in tres:
        for f, c in r["per_frame"].items():
            written[f] = written.get(f, 0) + c
    # the check: every detection written exactly once, and every detection two tiles saw given the same
    # source (the same anchor) by both
    miscounted = int(sum(written.get(f, 0) != n for f, n in n_usable.items())) + int(dup)
    # store partitions: about n_partitions in all, and none above rows_per_partition measurements (a
    # feature task loads one partition: its memory is bounded by this, not by the tile or the epochs)
    n_sub_min = max(1, int(round(n_partitions / max(len(keys), 1))))
    store_tmp = Path(tempfile.mkdtemp(prefix=f".{store_path.name}.tmp-", dir=store_path.parent))
    id_files, remap_items = [], []
    start = 0
    for k, r in zip(keys, tres):
        n = r["n_owned"]
        p = Path(tile_dir) / tile_name(k) / "ids.npy"
        full = np.full(r["n_tracked"], -1, np.int64)  # local id (every source the tile tracked) -> global
        full[src["local_id"].to_numpy()[start:start + n]] = gid[start:start + n]
        np.save(p, full)
        start += n
        n_rows = sum(r["per_frame"].values())
        remap_items.append((r, max(n_sub_min, int(np.ceil(n_rows / max(rows_per_partition, 1))))))
        id_files.append(str(p))
    band_of = {k: r["band"] for k, r in zip(keys, tres)}
    nbrs = []
    for k in keys:
        i, j = unpack_tile(k)
        nbrs.append([band_of[int(q)] for q in (pack_tile(i + a, j + b) for a in (-1, 0, 1) for b in (-1, 0, 1)
                                                if a or b) if int(q) in band_of])
    rres = run_tasks(_remap_item, [(it, f, nb) for it, f, nb in zip(remap_items, id_files, nbrs)], str(store_tmp),
                     client=client, desc="associate-store", progress=progress)
    bad = [r for r in rres if isinstance(r, TaskFailed)]
    if bad:
        shutil.rmtree(store_tmp, ignore_errors=True)
        raise RuntimeError(f"tiled association: writing the store failed: {bad[0].error}")
    # the check: every detection written exactly once (per-frame counts), and every detection near a
    # border given the same source by the tile whose core holds it and the tile that wrote it
    disagree = int(sum(r["disagree"] for r in rres))
    conflicts = miscounted + disagree
    if conflicts:
        log.warning("tiled association: the tiles disagree on %d detection(s) near tile borders and %d frame "
                    "count(s); the result may differ from the untiled association: increase associate.margin_px "
                    "(now %g px)", disagree, miscounted, margin / scale)
    n_meas = int(sum(r["n"] for r in rres))
    if store_path.exists():
        old = store_path.with_name(f".{store_path.name}.old-{os.getpid()}")
        os.replace(store_path, old)
        os.replace(store_tmp, store_path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(store_tmp, store_path)
    src["source_id"] = gid
    src = src.sort_values("source_id").reset_index(drop=True)
    sources = src[["source_id", "ra", "dec", "x", "y", "first_mjd", "first_frame"]].copy()
    shutil.rmtree(work, ignore_errors=True)
    info = {"n_tiles": len(keys), "tile_px": float(tile_px), "margin_px": margin / scale,
            "tile_conflicts": conflicts, "max_tracked_sources": int(max(r["n_tracked"] for r in tres)),
            "task_stats": stats + [r.get("stats", {}) for r in rres]}
    return AssociationResult(store=store_path, sources=sources, n_frames=len(frame_info), n_measurements=n_meas,
                             failures=failures, unmatched_detections=int(unusable), radius=radius, mode=mode,
                             tiles=info)


def pq_read(path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas()


def _shard_item(item, grid, shard_dir):
    (fidx_path, stamp) = item
    return shard_catalog(fidx_path, grid, shard_dir, stamp)


def _tile_item(item, grid, frame_info, n_candidates, radius, work_dir, flush_rows):
    key, frames, stamp = item
    return associate_tile(key, frames, grid, frame_info, n_candidates, radius, work_dir, flush_rows, stamp)


def _remap_item(item, store_tmp):
    (rec, n_sub), id_file, neighbour_bands = item
    return remap_tile(rec, id_file, store_tmp, n_sub, neighbour_bands)
