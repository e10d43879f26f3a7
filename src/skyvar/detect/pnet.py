"""PNet detector: target encoding, decoding to catalogues, and whole-frame inference.

Geometry (shared by :func:`encode_targets` and :func:`decode`): input pixel ``i`` has its centre at
``i`` (0-indexed) and covers [i − 0.5, i + 0.5). The output grid is ``u`` = ``upsample`` times finer:
fine cell ``j`` covers [j/u − 0.5, (j+1)/u − 0.5) with centre ``(j + 0.5)/u − 0.5``. A star at ``x``
lives in fine cell ``floor((x + 0.5) u)``.

Targets (CenterNet, adapted to dense fields):

- ``heat``: per star a Gaussian of width ``sigma_px`` centred on its fine cell (peak exactly 1 there),
  combined by maximum, as in CenterNet;
- ``offset`` (dx, dy in pixels from a fine cell's centre to the star), ``mag`` (−2.5 log10(flux/1000 e⁻))
  and their weight: not only at the centre cell but at every cell within ``reg_radius`` cells, owned
  by the nearest star. A peak that lands one cell off therefore still decodes to the right position
  and magnitude.

Decoding: 3 × 3 max-pool peaks of the fine heatmap (ties kept) above ``threshold``; position = cell
centre + offset; then peaks that decode to positions closer than ``min_separation_px`` (duplicates of
one star) are merged, keeping the higher score. With perfect targets this recovers every star except
those sharing a fine cell or closer than ``min_separation_px`` (the decoder ceiling, measured in
tests and ``docs/results/pnet.md``).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from astropy.table import Table

from skyvar.detect.base import FLAG_BLENDED, Detector
from skyvar.detect.tiling import iter_tiles
from skyvar.io.fits import Frame
from skyvar.models.components.pnet import MAG_REF_E, PNet, normalize_input
from skyvar.utils.log import get_logger

log = get_logger(__name__)

DEFAULT_CHECKPOINT = "pnet-csst"  # a release name (skyvar.models.registry)
CHECKPOINT_FORMAT = "skyvar-pnet-v1"
MAG_PER_LN = 2.5 / math.log(10.0)


# ---------------------------------------------------------------------------------------------- images
def estimate_background(image: np.ndarray, mask: np.ndarray | None = None, box: int = 64,
                        filter_size: int = 3) -> np.ndarray:
    """SExtractor-style mesh background (sep; ``box`` px meshes, ``filter_size`` median filter) in the
    image's units. Masked pixels (nonzero ``mask``) are excluded. Used identically in training and
    inference."""
    import sep

    d = np.ascontiguousarray(image, dtype=np.float32)
    m = None if mask is None or not np.any(mask) else np.ascontiguousarray(np.asarray(mask) != 0)
    b = int(min(box, max(d.shape)))
    return sep.Background(d, mask=m, bw=b, bh=b, fw=filter_size, fh=filter_size).back(dtype=np.float32)


def estimate_psf_fwhm(image: np.ndarray, mask: np.ndarray | None = None, saturate: float = np.inf,
                      min_sources: int = 5) -> float:
    """Median PSF width [px] of bright unsaturated sources: 2 x the half-light radius within 5 px
    (equals the FWHM for a Gaussian). NaN when fewer than ``min_sources`` qualify. The same estimator
    measures the training frames (checkpoint metadata) and new frames (the PSF-mismatch warning)."""
    import sep

    d = np.ascontiguousarray(image, dtype=np.float32)
    m = None if mask is None or not np.any(mask) else np.ascontiguousarray(np.asarray(mask) != 0)
    bkg = sep.Background(d, mask=m, bw=64, bh=64, fw=3, fh=3)
    sub = d - bkg.back(dtype=np.float32)
    rms = float(bkg.globalrms)
    try:
        obj = sep.extract(sub, 50.0, err=rms, mask=m, minarea=5, deblend_cont=0.005)
    except Exception as e:  # sep raises on pathological frames (too many pixels above threshold)
        log.debug("PSF width estimate failed: %s", e)
        return float("nan")
    ok = (obj["flag"] == 0) & (obj["peak"] < 0.5 * saturate)
    if ok.sum() < min_sources:
        return float("nan")
    r, flag = sep.flux_radius(sub, obj["x"][ok], obj["y"][ok], np.full(ok.sum(), 5.0), 0.5, subpix=5)
    r = r[(flag == 0) & np.isfinite(r) & (r > 0)]
    return float(2.0 * np.median(r)) if len(r) >= min_sources else float("nan")


# ---------------------------------------------------------------------------------------------- targets
def fine_cell(x: torch.Tensor, upsample: int, n: int) -> torch.Tensor:
    return torch.floor((x + 0.5) * upsample).long().clamp(0, n - 1)


def cell_centre(j: torch.Tensor, upsample: int) -> torch.Tensor:
    return (j.to(torch.float32) + 0.5) / upsample - 0.5


def encode_targets(xy: torch.Tensor, mag: torch.Tensor, use: torch.Tensor, shape: tuple[int, int], upsample: int = 2,
                   sigma_px: float = 0.5, reg_radius: int = 1, star_weight: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """Dense targets on the fine grid from padded truth.

    ``xy`` (B, N, 2) pixel positions, ``mag`` (B, N) the ``mag`` head's target, ``use`` (B, N) bool
    (stars that are detection targets). Returns ``heat`` (B, 1, uH, uW), ``offset`` (B, 2, uH, uW),
    ``mag`` (B, 1, uH, uW), ``weight`` (B, 1, uH, uW) (the owning star's ``star_weight``, default 1,
    where offset/mag are defined, else 0) and ``n_pos`` (number of centre cells).
    """
    B, N = use.shape
    H, W = shape
    u = int(upsample)
    Hf, Wf = u * H, u * W
    dev = xy.device
    x, y = xy[..., 0].float(), xy[..., 1].float()
    jx, jy = fine_cell(x, u, Wf), fine_cell(y, u, Hf)
    b_idx = torch.arange(B, device=dev)[:, None].expand(B, N)
    sel = use.bool()
    bs, jxs, jys, xs, ys, ms = b_idx[sel], jx[sel], jy[sel], x[sel], y[sel], mag[sel].float()
    ws = torch.ones_like(xs) if star_weight is None else star_weight[sel].float()

    # heatmap: Gaussians centred on the stars' fine cells, combined by max
    s = sigma_px * u
    r = max(1, int(math.ceil(3 * s)))
    d = torch.arange(-r, r + 1, device=dev)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    g = torch.exp(-(dx**2 + dy**2).float() / (2 * s * s))
    cx, cy = jxs[:, None] + dx[None], jys[:, None] + dy[None]
    inb = (cx >= 0) & (cx < Wf) & (cy >= 0) & (cy < Hf)
    flat = (bs[:, None] * Hf + cy) * Wf + cx
    heat = torch.zeros(B * Hf * Wf, device=dev)
    heat.scatter_reduce_(0, flat[inb], g[None].expand_as(cx)[inb], reduce="amax", include_self=True)

    # regression cells: (2R+1)^2 around each star's cell, owned by the nearest star
    d = torch.arange(-reg_radius, reg_radius + 1, device=dev)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    cx, cy = jxs[:, None] + dx[None], jys[:, None] + dy[None]
    inb = (cx >= 0) & (cx < Wf) & (cy >= 0) & (cy < Hf)
    ox = xs[:, None] - cell_centre(cx, u)
    oy = ys[:, None] - cell_centre(cy, u)
    dist = torch.sqrt(ox**2 + oy**2)
    flat = ((bs[:, None] * Hf + cy) * Wf + cx)[inb]
    dist, ox, oy = dist[inb], ox[inb], oy[inb]
    mm = ms[:, None].expand_as(cx)[inb]
    ww = ws[:, None].expand_as(cx)[inb]
    best = torch.full((B * Hf * Wf,), float("inf"), device=dev)
    best.scatter_reduce_(0, flat, dist, reduce="amin", include_self=True)
    own = dist <= best[flat]
    offset = torch.zeros(2, B * Hf * Wf, device=dev)
    magt = torch.zeros(B * Hf * Wf, device=dev)
    weight = torch.zeros(B * Hf * Wf, device=dev)
    offset[0, flat[own]] = ox[own]
    offset[1, flat[own]] = oy[own]
    magt[flat[own]] = mm[own]
    weight[flat[own]] = ww[own]
    return {
        "heat": heat.view(B, 1, Hf, Wf),
        "offset": offset.view(2, B, Hf, Wf).permute(1, 0, 2, 3).contiguous(),
        "mag": magt.view(B, 1, Hf, Wf),
        "weight": weight.view(B, 1, Hf, Wf),
        "n_pos": torch.unique((bs * Hf + jys) * Wf + jxs).numel(),
    }


def flux_to_magrel(flux_e: torch.Tensor) -> torch.Tensor:
    """The ``mag`` head's target, −2.5 log10(flux / 1000 e⁻)."""
    return -2.5 * torch.log10(flux_e.clamp(min=1e-3) / MAG_REF_E)


# ---------------------------------------------------------------------------------------------- decoding
@torch.no_grad()
def decode(out: dict[str, torch.Tensor], upsample: int = 2, threshold: float = 0.3, nms_kernel: int = 3,
           min_separation_px: float = 0.25, max_detections: int | None = None, logits: bool = True,
           refine_px: float = 0.3, refine_mag: bool = True) -> list[dict[str, np.ndarray]]:
    """Catalogues from network outputs (fine-grid maps, batch first). Returns per image a dict of numpy
    arrays ``x, y`` (input pixels), ``score``, ``magrel`` (−2.5 log10(flux/1000 e⁻)), ``mag_sigma``
    (mag) and ``cell_x, cell_y`` (the fine peak cells).

    ``refine_px`` > 0: every cell of the 3 x 3 block around a peak was trained to point at its nearest
    star, so the position is the heat-weighted mean of those cells' predictions that agree with the
    peak's within ``refine_px`` (neighbours pointing at another star are left out), and with
    ``refine_mag`` the magnitude is the same weighted mean; 0 keeps the peak cell's own prediction
    (CenterNet)."""
    heat = out["heat"]
    B, _, Hf, Wf = heat.shape
    u = int(upsample)
    prob = torch.sigmoid(heat) if logits else heat
    hmax = F.max_pool2d(prob, nms_kernel, stride=1, padding=nms_kernel // 2)
    keep = (prob >= hmax) & (prob >= threshold)
    res = []
    for b in range(B):
        iy, ix = torch.nonzero(keep[b, 0], as_tuple=True)
        score = prob[b, 0, iy, ix]
        if max_detections is not None and len(score) > max_detections:
            top = torch.topk(score, max_detections).indices
            iy, ix, score = iy[top], ix[top], score[top]
        x = cell_centre(ix, u) + out["offset"][b, 0, iy, ix]
        y = cell_centre(iy, u) + out["offset"][b, 1, iy, ix]
        mag = out["mag"][b, 0, iy, ix]
        if refine_px > 0 and len(ix):
            x, y, mag = _refine(out["offset"][b], out["mag"][b, 0], prob[b, 0], ix, iy, x, y, u, refine_px, refine_mag)
        lv = out["log_var"][b, 0, iy, ix] if "log_var" in out else torch.full_like(mag, float("nan"))
        d = {"x": x, "y": y, "score": score, "magrel": mag, "mag_sigma": torch.exp(0.5 * lv),
             "cell_x": ix, "cell_y": iy}
        d = {k: v.detach().float().cpu().numpy() if v.is_floating_point() else v.cpu().numpy() for k, v in d.items()}
        if min_separation_px > 0 and len(d["x"]) > 1:
            keep_idx = merge_duplicates(d["x"], d["y"], d["score"], min_separation_px)
            d = {k: v[keep_idx] for k, v in d.items()}
        res.append(d)
    return res


def _refine(offset, mag_map, prob, ix, iy, x, y, u, radius, with_mag):
    Hf, Wf = prob.shape
    d = torch.arange(-1, 2, device=prob.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    nx = (ix[:, None] + dx.reshape(1, -1)).clamp(0, Wf - 1)
    ny = (iy[:, None] + dy.reshape(1, -1)).clamp(0, Hf - 1)
    px = cell_centre(nx, u) + offset[0, ny, nx]
    py = cell_centre(ny, u) + offset[1, ny, nx]
    w = prob[ny, nx] * ((px - x[:, None]) ** 2 + (py - y[:, None]) ** 2 <= radius**2)
    ws = w.sum(1).clamp(min=1e-12)
    mag = (w * mag_map[ny, nx]).sum(1) / ws if with_mag else mag_map[iy, ix]
    return (w * px).sum(1) / ws, (w * py).sum(1) / ws, mag


def merge_duplicates(x: np.ndarray, y: np.ndarray, score: np.ndarray, radius: float) -> np.ndarray:
    """Indices to keep after greedy suppression (highest score first) of points within ``radius``."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.c_[x, y]).query_pairs(radius, output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(len(x))
    rank = np.empty(len(x), int)
    rank[np.argsort(-score, kind="stable")] = np.arange(len(x))
    # orient pairs (stronger, weaker) and process in order of the stronger member
    a, b = pairs[:, 0], pairs[:, 1]
    swap = rank[a] > rank[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    order = np.argsort(rank[a], kind="stable")
    removed = np.zeros(len(x), bool)
    for i, j in zip(a[order], b[order]):
        if not removed[i]:
            removed[j] = True
    return np.flatnonzero(~removed)


# ---------------------------------------------------------------------------------------------- checkpoints
def load_pnet(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[PNet, dict]:
    """Build the network from a released ``.pt`` (``export_pnet``) or a Lightning ``.ckpt`` without
    Hydra; returns (net in eval mode, metadata dict)."""
    from skyvar.models.registry import checkpoint_path

    try:
        path = checkpoint_path(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"PNet checkpoint {path} not found (train one with `skyvar train model=pnet` "
                                f"or pass detector.checkpoint=...): {e}") from None
    ck = torch.load(path, map_location=map_location, weights_only=False)
    if ck.get("format") == CHECKPOINT_FORMAT:
        net_kw, sd, meta = ck["net"], ck["state_dict"], dict(ck.get("meta", {}))
    elif "state_dict" in ck and "hyper_parameters" in ck:  # Lightning checkpoint of PNetModule
        net_kw = dict(ck["hyper_parameters"]["net"])
        net_kw.pop("_target_", None)
        sd = {k[len("net."):]: v for k, v in ck["state_dict"].items() if k.startswith("net.")}
        # the weight average (what validation measured) replaces the raw training weights
        sd.update(ck.get("pnet_ema", {}))
        meta = dict(ck.get("pnet_meta", {}))
        meta["ema"] = "pnet_ema" in ck
    else:
        raise ValueError(f"{path}: not a PNet checkpoint (no '{CHECKPOINT_FORMAT}' format or Lightning state)")
    net = PNet(**net_kw)
    net.load_state_dict(sd)
    net.eval()
    meta.setdefault("upsample", net.upsample)
    return net, meta


def export_pnet(net: PNet, net_kwargs: dict, meta: dict, path: str | os.PathLike) -> Path:
    """Write a slim release checkpoint (weights + constructor arguments + metadata, no optimiser)."""
    from skyvar.utils.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "net": dict(net_kwargs),
                    "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "meta": dict(meta)}, tmp)
    return path


# ---------------------------------------------------------------------------------------------- detector
class PNetDetector(Detector):
    """Run a trained PNet over a frame of any size: overlapping tiles (core ownership, so no seam
    duplicates), batched, on the GPU when available; returns the catalogue contract of
    :mod:`skyvar.detect.base` plus ``score`` (heatmap peak) and ``mag_inst`` columns.

    ``threshold``: heatmap score cut. Default: the value tuned on validation stamps for the best F1 at
    ``operating_radius`` (px; the checkpoint stores one per match radius). The default 1 px gives the
    complete catalogue that light curves need; 0.1 px (the paper's match radius) trades a quarter of
    the recall at 1 px for purity at 0.1 px (both operating points: ``docs/results/pnet.md``).
    ``mag_err`` is the network's predicted σ (its calibration on held-out frames is in
    ``docs/results/pnet.md``). Frames whose pixel scale or measured PSF width differ from the training
    set get a warning (``warn_tolerance``: allowed fractional excess beyond the training range).
    """

    name = "pnet"

    def __init__(self, checkpoint: str | None = None, device: str = "auto", tile: int = 512, overlap: int = 64,
                 batch_size: int = 4, threshold: float | None = None, min_separation_px: float = 0.25,
                 blend_radius_px: float = 1.5, background_box: int = 64, check_inputs: bool = True,
                 warn_tolerance: float = 0.15, tta: bool = False, refine_px: float = 0.3, name: str = "pnet",
                 operating_radius: float = 1.0):
        from skyvar.device import resolve_device

        self.name = name
        from skyvar.models.registry import checkpoint_path

        try:
            ck = checkpoint_path(checkpoint or DEFAULT_CHECKPOINT)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"PNet checkpoint {checkpoint} not found (train one with `skyvar train model=pnet` "
                                    f"or pass detector.checkpoint=...): {e}") from None
        self.checkpoint = ck
        self.device = torch.device(resolve_device(device))
        self.net, self.meta = load_pnet(ck, "cpu")
        self.net.to(self.device)
        if tile <= overlap:
            raise ValueError(f"tile ({tile}) must exceed overlap ({overlap})")
        self.tile, self.overlap, self.batch_size = int(tile), int(overlap), int(batch_size)
        if threshold is None:
            by_radius = self.meta.get("threshold_by_radius") or {}
            threshold = by_radius.get(f"{float(operating_radius):g}", self.meta.get("threshold", 0.3))
        self.threshold = float(threshold)
        self.min_separation_px = float(min_separation_px)
        self.blend_radius_px = float(blend_radius_px)
        self.background_box = int(background_box)
        self.input_scale = float(self.meta.get("input_scale_e", 10.0))
        # validation-fitted factor making the spread of (m - m_true)/mag_err one (PNetModule meta)
        self.mag_err_scale = float(self.meta.get("mag_err_scale", 1.0))
        self.check_inputs = check_inputs
        self.warn_tolerance = float(warn_tolerance)
        self.tta = bool(tta)
        self.refine_px = float(refine_px)

    def __repr__(self) -> str:
        return f"PNetDetector(checkpoint={str(self.checkpoint)!r}, threshold={self.threshold})"

    # ------------------------------------------------------------------ checks
    def input_warnings(self, frame: Frame) -> list[str]:
        msgs = []
        ps_train = self.meta.get("pixel_scale_arcsec")
        ps = _frame_pixel_scale(frame)
        if ps_train and ps and abs(ps / ps_train - 1) > 0.02:
            msgs.append(f"{frame.frame_id}: pixel scale {ps:.4f}\"/px differs from PNet's training "
                        f"{ps_train:.4f}\"/px; positions and magnitudes may be biased")
        rng = self.meta.get("psf_fwhm_px")
        if rng:
            fw = estimate_psf_fwhm(frame.data, frame.mask, frame.saturate)
            lo, hi = rng[0] * (1 - self.warn_tolerance), rng[1] * (1 + self.warn_tolerance)
            if np.isfinite(fw) and not lo <= fw <= hi:
                msgs.append(f"{frame.frame_id}: measured PSF width {fw:.2f} px is outside PNet's training range "
                            f"{rng[0]:.2f}-{rng[1]:.2f} px; detections and magnitudes may degrade")
        return msgs

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_maps(self, frame_data: np.ndarray, mask: np.ndarray, rdnoise: float) -> tuple[torch.Tensor, np.ndarray]:
        """Network input for a whole frame (1, 3, H, W) on CPU and its background map."""
        bkg = estimate_background(frame_data, mask, self.background_box)
        x = normalize_input(torch.from_numpy(np.ascontiguousarray(frame_data, np.float32))[None],
                            torch.from_numpy(bkg)[None], torch.from_numpy(np.ascontiguousarray(mask))[None],
                            float(rdnoise), self.input_scale)
        return x, bkg

    @torch.no_grad()
    def _detect(self, frame: Frame) -> Table:
        if self.check_inputs:
            for m in self.input_warnings(frame):
                warnings.warn(m, stacklevel=3)
                log.warning(m)
                frame.warnings.append(m)
        x, _ = self.predict_maps(frame.data, frame.mask, frame.rdnoise)
        cats = self.run_tiles(x)
        return self._to_table(cats, frame)

    @torch.no_grad()
    def run_tiles(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Detections (frame pixel coordinates) from a normalised frame ``x`` (1, 3, H, W)."""
        H, W = x.shape[-2:]
        tiles = list(iter_tiles((H, W), self.tile, self.overlap))
        parts: list[dict[str, np.ndarray]] = []
        by_shape: dict[tuple[int, int], list] = {}
        for t in tiles:
            by_shape.setdefault((t.y1 - t.y0, t.x1 - t.x0), []).append(t)
        for _, group in by_shape.items():
            for i0 in range(0, len(group), self.batch_size):
                chunk = group[i0 : i0 + self.batch_size]
                xb = torch.cat([x[..., t.y0 : t.y1, t.x0 : t.x1] for t in chunk]).to(self.device)
                out = self.forward(xb)
                dets = decode(out, self.net.upsample, self.threshold, min_separation_px=self.min_separation_px,
                              refine_px=self.refine_px)
                for t, d in zip(chunk, dets):
                    d["x"] = d["x"] + t.x0
                    d["y"] = d["y"] + t.y0
                    keep = t.in_core(d["x"], d["y"])
                    parts.append({k: v[keep] for k, v in d.items()})
        if not parts:
            return {k: np.zeros(0) for k in ("x", "y", "score", "magrel", "mag_sigma")}
        cat = {k: np.concatenate([p[k] for p in parts]) for k in ("x", "y", "score", "magrel", "mag_sigma")}
        if self.min_separation_px > 0 and len(cat["x"]) > 1:  # duplicates straddling a core boundary
            k = merge_duplicates(cat["x"], cat["y"], cat["score"], self.min_separation_px)
            cat = {n: v[k] for n, v in cat.items()}
        return cat

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Network maps; with ``tta`` the average over the 4 flips (maps flipped back, offsets negated
        along flipped axes; heat averaged as probabilities). The fine grid is mirror-symmetric, so
        flipping is exact."""
        if not self.tta:
            return self.net(x)
        acc: dict[str, torch.Tensor] = {}
        flips = [(), (-1,), (-2,), (-2, -1)]
        for dims in flips:
            o = self.net(x.flip(dims) if dims else x)
            o = {k: (v.flip(dims) if dims else v) for k, v in o.items()}
            off = o["offset"].clone()
            if -1 in dims:
                off[:, 0] = -off[:, 0]
            if -2 in dims:
                off[:, 1] = -off[:, 1]
            o["offset"] = off
            o["heat"] = torch.sigmoid(o["heat"])
            for k, v in o.items():
                acc[k] = acc[k] + v if k in acc else v
        acc = {k: v / len(flips) for k, v in acc.items()}
        p = acc["heat"].clamp(1e-6, 1 - 1e-6)
        acc["heat"] = torch.log(p / (1 - p))
        return acc

    def _to_table(self, cat: dict[str, np.ndarray], frame: Frame) -> Table:
        flux = MAG_REF_E * 10 ** (-0.4 * cat["magrel"].astype(np.float64))
        sig = cat["mag_sigma"].astype(np.float64) * self.mag_err_scale
        t = Table()
        t["x"], t["y"] = cat["x"].astype(np.float64), cat["y"].astype(np.float64)
        t["flux"] = flux
        t["flux_err"] = flux * sig / MAG_PER_LN
        flags = np.zeros(len(t), np.int32)
        if len(t) > 1 and self.blend_radius_px > 0:
            from scipy.spatial import cKDTree

            pairs = cKDTree(np.c_[t["x"], t["y"]]).query_pairs(self.blend_radius_px, output_type="ndarray")
            if len(pairs):
                flags[np.unique(pairs.ravel())] |= FLAG_BLENDED
        t["flags"] = flags
        t["score"] = cat["score"].astype(np.float32)
        t["mag_inst"] = cat["magrel"].astype(np.float64) - 2.5 * np.log10(MAG_REF_E)
        t["mag_inst"].description = "-2.5 log10(flux / e-)"
        return t


def _frame_pixel_scale(frame: Frame) -> float | None:
    v = frame.header.get("PIXSCALE")
    if v is not None:
        try:
            return float(v)
        except (TypeError, ValueError):
            pass
    if frame.wcs is not None and frame.wcs.has_celestial:
        from astropy.wcs.utils import proj_plane_pixel_scales

        return float(np.mean(proj_plane_pixel_scales(frame.wcs.celestial)) * 3600.0)
    return None


def detector_from_checkpoint(path: str, **kw: Any) -> PNetDetector:
    return PNetDetector(checkpoint=path, **kw)
